"""Builds through an OpenAI-compatible server (generation/backends/server.py) against a real `vllm` server.

The server runs the tiny random-weight Llama, started with `serve_command` (the in-process engine's
settings), and must give the same dataset bytes as the in-process engine; a build killed with -9 resumes
to the same bytes; a server killed mid-build and restarted on the same port only delays the build.
The retry / redaction / prompt-too-long logic is also tested against a small local HTTP server
(http.server: real HTTP, scripted answers)."""
from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from generation.backends import PROMPT_TOO_LONG, ChatRequest
from generation.backends.engine import ModelSpec
from generation.backends.server import ServerBackend, ServerError, ServerSpec, serve_command

from .helpers import (
    ROOT,
    build,
    edited,
    env,
    kill_when,
    load_toml,
    one_line_error,
    recipe_data,
    start_build,
    stored,
    write_recipe,
)

KEY = "sk-test-5ecret-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------ a scripted local HTTP server

class Scripted(http.server.ThreadingHTTPServer):
    """Answers each POST with the next (status, body) of `script` (the last one repeats) and records the
    paths and Authorization headers it saw."""

    def __init__(self, script: list[tuple[int, dict]], tokenize: dict | None = None):
        self.script, self.tokenize, self.seen = list(script), tokenize, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # /v1/models, as vLLM answers it
                outer.seen.append((self.path, self.headers.get("Authorization")))
                self._send(200, {"data": [{"id": "test/model", "root": "org/weights", "max_model_len": 64}]})

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                auth = self.headers.get("Authorization")
                outer.seen.append((self.path, auth))
                if self.path == "/tokenize" and outer.tokenize is not None:
                    return self._send(200, outer.tokenize)
                status, body = outer.script.pop(0) if len(outer.script) > 1 else outer.script[0]
                # a careless server echoing the credentials it got: the client must not repeat them
                self._send(status, {**body, "echo": auth} if status != 200 else body)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


def completion(text="hello", finish="stop") -> dict:
    return {"model": "test/model", "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}}}


REQ = ChatRequest(id="r1", messages=[{"role": "user", "content": "hi"}], seed=3)


def client(url: str, timeout_s: float = 10.0) -> ServerBackend:
    return ServerBackend(ServerSpec(urls=(url,), model="test/model", api_key=KEY, timeout_s=timeout_s))


def test_429_and_503_are_retried_with_backoff_then_answered():
    srv = Scripted([(429, {"error": "busy"}), (503, {"error": "loading"}), (200, completion())])
    try:
        [res] = client(srv.url).generate([REQ])
    finally:
        srv.shutdown()
    assert (res.text, res.prompt_tokens, res.output_tokens, res.cached_tokens, res.finish_reason) == \
        ("hello", 7, 2, 4, "stop")
    assert srv.seen == [("/v1/chat/completions", f"Bearer {KEY}")] * 3


def test_a_server_that_keeps_failing_stops_at_the_bound_without_the_key():
    srv = Scripted([(500, {"error": "boom"})])
    try:
        with pytest.raises(ServerError) as e:
            client(srv.url, timeout_s=1.0).generate([REQ])
    finally:
        srv.shutdown()
    msg = str(e.value)
    assert srv.url in msg and "timeout_s = 1 s" in msg and "HTTP 500" in msg
    assert "***" in msg and KEY not in msg  # the server echoed the key; the error does not
    assert len(srv.seen) >= 2  # retried before giving up


def test_other_4xx_are_real_errors_at_once_and_redacted():
    srv = Scripted([(401, {"error": "bad key"})])
    try:
        with pytest.raises(ServerError) as e:
            client(srv.url).generate([REQ])
    finally:
        srv.shutdown()
    assert "HTTP 401" in str(e.value) and KEY not in str(e.value) and len(srv.seen) == 1


@pytest.mark.parametrize("message", [
    "This model's maximum context length is 64 tokens. However, your prompt contains 99 input tokens, which exceeds this limit",
    "max_tokens must be at least 1, got 0.",  # Ray Serve LLM 2.60: the context left to the answer was 0 tokens
])
def test_prompt_too_long_is_a_result_counted_by_tokenize(message):
    too_long = {"error": {"message": message, "code": 400}}
    srv = Scripted([(400, too_long)], tokenize={"count": 98})
    try:
        [res] = client(srv.url).generate([REQ])
    finally:
        srv.shutdown()
    assert (res.finish_reason, res.prompt_tokens, res.text, res.output_tokens) == (PROMPT_TOO_LONG, 98, "", 0)
    assert [p for p, _ in srv.seen] == ["/v1/chat/completions", "/tokenize"]


def test_connection_refused_is_retried_until_the_bound():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(ServerError, match="no answer within timeout_s = 1 s"):
        client(url, timeout_s=1.0).check()
    assert time.monotonic() - t0 >= 1.0


def test_a_server_model_without_revision_is_reported_unpinned(tmp_path, shared_data, capsys, monkeypatch):
    from builder.backends import backend_settings, resolve_revisions
    from builder.recipe import load_recipe
    srv = Scripted([(200, completion())])
    monkeypatch.setenv("PERSONA_TEST_KEY", KEY)
    path = write_recipe(tmp_path / "r.toml", edited(recipe_data(tmp_path, max_model_len=64), {
        "models.m.path": None, "models.m.server": srv.url, "models.m.api_key_env": "PERSONA_TEST_KEY"}))
    try:
        recipe = load_recipe(path)
        assert resolve_revisions(recipe) == {"m": None}
        assert backend_settings(recipe.models["m"]) == {
            "server": {"id": "test/model", "root": "org/weights", "max_model_len": 64}}
    finally:
        srv.shutdown()
    assert srv.seen == [("/v1/models", f"Bearer {KEY}")]  # checked once, with the key from the environment
    err = capsys.readouterr().err
    assert f"model test/model is unpinned and its current commit is unknown (served by {srv.url}, whose " \
           "/v1/models reports no revision)" in err and 'revision = "<commit>" under [models.m]' in err


def test_requests_are_spread_over_servers_and_a_dead_one_is_passed_over():
    a, b = Scripted([(200, completion("a"))]), Scripted([(200, completion("b"))])
    dead = f"http://127.0.0.1:{free_port()}/v1"
    reqs = [ChatRequest(id=f"r{i}", messages=[{"role": "system", "content": f"persona {i}"},
                                              {"role": "user", "content": "hi"}], seed=i) for i in range(8)]
    try:
        both = ServerBackend(ServerSpec(urls=(a.url, b.url), model="test/model", timeout_s=5.0))
        assert both.check()["root"] == "org/weights"
        texts = [r.text for r in both.generate(reqs)]
        assert set(texts) == {"a", "b"}  # each persona's requests go to one server, both get some
        assert [r.text for r in both.generate(reqs)] == texts  # the same persona, the same server
        with_dead = ServerBackend(ServerSpec(urls=(dead, a.url), model="test/model", timeout_s=1.0))
        assert {r.text for r in with_dead.generate(reqs)} == {"a"}  # requests meant for the dead one move on
        with pytest.raises(ServerError, match=f"{dead}/models: no answer within"):
            with_dead.check()  # but start-up checks every server
    finally:
        a.shutdown()
        b.shutdown()


# ------------------------------------------------------------------------------------ recipe checks

def recipe_error(tmp_path, changes: dict) -> str:
    from builder.recipe import RecipeError, load_recipe
    path = write_recipe(tmp_path / "r.toml", edited(recipe_data(tmp_path), {"models.m.path": None, **changes}))
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    return str(e.value)


def test_recipe_server_fields_are_checked_when_read(tmp_path, shared_data):
    from builder.recipe import load_recipe
    ok = write_recipe(tmp_path / "ok.toml", edited(recipe_data(tmp_path), {
        "models.m.path": None, "models.m.server": ["http://a:8000/v1/", "https://b/v1"], "models.m.api_key_env": "VLLM_KEY"}))
    assert load_recipe(ok).models["m"].servers == ("http://a:8000/v1", "https://b/v1")

    msg = recipe_error(tmp_path, {"models.m.server": "http://user:hunter2@host:8000/v1"})
    assert "models.m.server: http://host: no credentials in the URL" in msg and "hunter2" not in msg
    assert "models.m.server[1]: must be an http:// or https:// URL" in recipe_error(
        tmp_path, {"models.m.server": ["http://a/v1", "ftp://b/v1"]})
    assert "models.m.server: must be a URL with a host" in recipe_error(tmp_path, {"models.m.server": "http:///v1"})
    assert "models.m.server: must be distinct URLs" in recipe_error(tmp_path, {"models.m.server": ["http://a/v1", "http://a/v1/"]})
    msg = recipe_error(tmp_path, {"models.m.server": "http://a/v1", "models.m.api_key_env": KEY})
    assert "models.m.api_key_env: must name an environment variable" in msg and KEY not in msg
    assert "models.m.api_key_env: must be unset without server" in recipe_error(tmp_path, {"models.m.api_key_env": "K"})
    assert "models.m.path: a model with server is loaded by the server" in recipe_error(
        tmp_path, {"models.m.server": "http://a/v1", "models.m.path": str(tmp_path)})
    assert "models.m.timeout_s: must be > 0 seconds" in recipe_error(
        tmp_path, {"models.m.server": "http://a/v1", "models.m.timeout_s": 0})
    for bad in (0, 10**6):
        assert "models.m.in_flight: must be a whole number from 1 to 8,192" in recipe_error(
            tmp_path, {"models.m.server": "http://a/v1", "models.m.in_flight": bad})
    assert "models.m.in_flight: expected int, got float 2.5" in recipe_error(
        tmp_path, {"models.m.server": "http://a/v1", "models.m.in_flight": 2.5})
    assert "models.m.in_flight: must be unset without server" in recipe_error(
        tmp_path, {"models.m.path": str(tmp_path), "models.m.in_flight": 256})


def test_in_flight_bounds_the_calls_per_server():
    """A `persona serve` URL fronts several replicas: the recipe's in_flight (per URL) sets how many calls
    the client keeps open there, one thread each; the default is PER_SERVER."""
    from builder.backends import server_backend
    from builder.recipe import ModelConfig
    from generation.backends.server import PER_SERVER
    srv, other = Scripted([(200, completion())]), Scripted([(200, completion())])
    try:
        backend = ServerBackend(ServerSpec(urls=(srv.url, other.url), model="test/model", in_flight=3))
        assert backend.capacity == 6
        backend.submit([ChatRequest(id=f"r{i}", messages=REQ.messages, seed=i) for i in range(20)])
        assert len(backend.workers) == 6
        got = []
        while len(got) < 20:
            got += backend.poll()
        assert sorted(r.id for r in got) == sorted(f"r{i}" for i in range(20))
        assert server_backend(ModelConfig(id="test/model", server=srv.url)).capacity == PER_SERVER
        assert server_backend(ModelConfig(id="test/model", server=srv.url, in_flight=512)).capacity == 512
    finally:
        srv.shutdown()
        other.shutdown()


# ------------------------------------------------------------------------------- a real vLLM server

SPEC = dict(dtype="float32", max_model_len=8192, kv_cache_gib=0.25)  # the crash recipe's model entry


class VllmServer:
    """`serve_command` for the tiny model, in its own process group (the API server and its engine core
    process are killed together)."""

    def __init__(self, model: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.cmd = serve_command(ModelSpec(path=str(model), **SPEC), "test/model", port=self.port)
        self.log, self.proc = log, None

    def launch(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def start(self) -> None:
        self.launch()
        self.wait()

    def wait(self, timeout: float = 600) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"the server exited: {self.log.read_text()[-3000:]}"
            try:
                urllib.request.urlopen(self.url + "/models", timeout=2).read()
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"the server did not come up in {timeout} s: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture(scope="module")
def setup(request, tmp_path_factory, tiny_model):
    """The server, and the reference: the crash tests' recipe built with the in-process engine
    (tests/conftest.py shared_build; built while the server starts if no test built it before)."""
    srv = VllmServer(tiny_model, tmp_path_factory.mktemp("server") / "server.log")
    srv.launch()
    try:
        reference = request.getfixturevalue("shared_build")
        srv.wait()
        yield srv, reference
    finally:
        if srv.proc.poll() is None:
            srv.kill()


@pytest.fixture(scope="module")
def server(setup):
    return setup[0]


@pytest.fixture(scope="module")
def reference(setup):
    return setup[1]


def server_recipe(path: Path, reference, url: str, **model) -> Path:
    """The reference recipe with its model on the server. Its revision is pinned to the digest the
    in-process build recorded for the folder, so the `*_model` columns are the same (request ids differ:
    a server model's engine fingerprint holds no vLLM version, so nothing is reused across the two)."""
    from generation.models import model_revision
    data = load_toml(reference["recipe"])
    m = data["models"]["m"]
    changes = {"models.m.path": None, "models.m.server": url, "models.m.revision": model_revision(m["path"])}
    return write_recipe(path, edited(data, {**changes, **{f"models.m.{k}": v for k, v in model.items()}}))


def shard_lines(out: Path) -> list[str]:
    """SHA256SUMS without README.md and manifest.json: those hold the recipe text, which names the server."""
    lines = (out / "SHA256SUMS").read_text().splitlines()
    data = [line for line in lines if line.split()[-1] not in ("README.md", "manifest.json")]
    assert len(data) == len(lines) - 2 and any(line.endswith(".parquet") for line in data), lines
    return data


def no_answer_twice(work: Path) -> int:
    [db] = work.glob("*/requests.sqlite")
    with sqlite3.connect(db) as c:
        twice = c.execute("SELECT role, key, count(*) FROM results GROUP BY role, key HAVING count(*) > 1").fetchall()
        assert twice == [], f"the same ask stored twice: {twice[:3]}"
        return c.execute("SELECT count(*) FROM results").fetchone()[0]


@pytest.mark.slow
def test_build_through_the_server_killed_and_resumed_equals_the_in_process_build(server, reference, tmp_path):
    recipe = server_recipe(tmp_path / "recipe.toml", reference, server.url)
    out, work = tmp_path / "persona", tmp_path / "work"
    kill_when(start_build(recipe, out, work), lambda: stored(work, "responder") > 0, "responder answers were stored")
    at_kill = no_answer_twice(work)
    assert not out.exists()
    build(recipe, out, work, check=True)
    assert no_answer_twice(work) > at_kill  # killed mid-stream: the rerun had answers left to get
    assert shard_lines(out) == shard_lines(reference["out"])
    no_answer_twice(work)
    manifest = json.loads((out / "manifest.json").read_text())
    served = manifest["models"]["responder"]
    # the folder the server loaded, by name only: the manifest records no path of the build machine
    assert served["server"] == {"id": "test/model", "root": ".../tiny", "max_model_len": 8192} and "engine" not in served
    assert served["revision"].startswith("sha256:")


@pytest.mark.slow
def test_a_server_killed_mid_build_and_restarted_only_delays_it(server, reference, tmp_path):
    recipe = server_recipe(tmp_path / "recipe.toml", reference, server.url)
    out, work = tmp_path / "persona", tmp_path / "work"
    proc = start_build(recipe, out, work, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while stored(work, "persona_filler") == 0 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the build ended before the server could be killed"
    server.kill()
    time.sleep(2)  # requests in flight fail and back off; the build must wait, not stop
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    server.start()
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    assert shard_lines(out) == shard_lines(reference["out"])
    no_answer_twice(work)


@pytest.mark.slow
def test_a_server_serving_another_model_is_refused_in_one_line(server, reference, tmp_path):
    recipe = server_recipe(tmp_path / "recipe.toml", reference, server.url, id="other/model")
    line = one_line_error(build(recipe, tmp_path / "persona", tmp_path / "work"))
    assert f"{server.url}: serves test/model, not the recipe's model 'other/model'" in line


@pytest.mark.slow
def test_no_server_at_start_is_one_line(reference, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    recipe = server_recipe(tmp_path / "recipe.toml", reference, url, timeout_s=1.0)
    line = one_line_error(build(recipe, tmp_path / "persona", tmp_path / "work"))
    assert f"{url}/models: no answer within timeout_s = 1 s" in line
