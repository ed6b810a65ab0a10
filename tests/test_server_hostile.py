"""The server backend (generation/backends/server.py) against hostile OpenAI-compatible servers: a stdlib
http.server in a thread that redirects, echoes the API key, answers as another model, sends too much,
drips its answer, answers out of schema, or is restarted with other weights. Each must end in one line
naming the URL (or be refused before anything is recorded), never reach the store or the manifest, and
never hold the process. Fast: no model, no vLLM."""
from __future__ import annotations

import http.server
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from builder.recipe import ModelConfig, RoleConfig
from builder.runner import RunnerConfig, StoreRunner
from builder.store import RequestStore
from generation.backends import ChatRequest
from generation.backends.server import ACCEPT_CHANGE, ServerBackend, ServerError, ServerSpec
from generation.errors import redact
from generation.flow import Ask
from generation.log import log

from .helpers import ROOT, edited, env, recipe_data, write_recipe

KEY = "sk-hostile-5ecret-0123456789abcdef"
MODEL = "test/model"


class Reply:
    """A raw HTTP reply: status, body bytes, extra headers."""

    def __init__(self, status: int, body: bytes | dict | list | None = b"", headers: dict | None = None):
        self.status, self.headers = status, headers or {}
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()


def completion(text="hello", model=MODEL, prompt=7, completion_tokens=2, finish="stop") -> dict:
    return {"model": model, "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion_tokens}}


class Hostile(http.server.ThreadingHTTPServer):
    """An OpenAI-compatible server whose answers the test scripts. `models()` is the /v1/models reply
    (default: MODEL from `root`); `chat(handler, body)` answers a chat request: a JSON value (HTTP 200), a
    Reply, or None when it wrote the reply itself. `seen` records (method, path, Authorization)."""
    daemon_threads = True

    def __init__(self, chat: Callable | None = None, root="org/weights", models: Callable | None = None):
        self.chat = chat or (lambda handler, body: completion())
        self.root = root
        self.models = models or (lambda: {"data": [{"id": MODEL, "root": self.root, "max_model_len": 4096}]})
        self.seen: list[tuple[str, str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, reply):
                if reply is None:
                    return
                reply = reply if isinstance(reply, Reply) else Reply(200, reply)
                self.send_response(reply.status)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(reply.body)),
                             **reply.headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(reply.body)

            def do_GET(self):
                outer.seen.append(("GET", self.path, self.headers.get("Authorization")))
                self.send(outer.models())

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.seen.append(("POST", self.path, self.headers.get("Authorization")))
                self.send(outer.chat(self, body))

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


def client(url: str, timeout_s: float = 10.0, key: str | None = KEY, *more: str) -> ServerBackend:
    return ServerBackend(ServerSpec(urls=(url, *more), model=MODEL, api_key=key, timeout_s=timeout_s))


def req(i: int = 0, text: str = "hi", max_tokens: int = 16) -> ChatRequest:
    return ChatRequest(id=f"r{i}", messages=[{"role": "user", "content": text}], seed=i, max_tokens=max_tokens)


def fails(backend: ServerBackend, requests: list[ChatRequest] | None = None) -> str:
    """The one-line ServerError that generating `requests` (default: one) raises; it never holds the key."""
    with pytest.raises(ServerError) as e:
        backend.generate(requests or [req()])
    msg = str(e.value)
    assert "\n" not in msg and KEY not in msg, msg
    return msg


def hang(handler, body) -> bool:
    """Never answer; True once the client has hung up (its read gets EOF), False after 5 minutes."""
    handler.close_connection = True
    handler.connection.settimeout(300)
    try:
        return handler.rfile.read(1) == b""
    except OSError:
        return False


# ------------------------------------------------------------------------------------------- H5

def test_a_redirect_is_never_followed_and_the_key_goes_nowhere_else():
    with Hostile() as elsewhere:
        target = f"{elsewhere.url}/chat/completions?k={KEY}"
        with Hostile(chat=lambda h, b: Reply(302, b"", {"Location": target})) as srv:
            msg = fails(client(srv.url))
            assert f"{srv.url}/chat/completions: HTTP 302 redirects to {elsewhere.url}/chat/completions?k=***" in msg
            assert "never followed" in msg
        with Hostile(models=lambda: Reply(301, b"", {"Location": elsewhere.url + "/models"})) as srv:
            with pytest.raises(ServerError, match="HTTP 301 redirects to"):
                client(srv.url).check()
        assert elsewhere.seen == []  # neither the request nor the key reached the other server


# ------------------------------------------------------------------------------------------- H6

def test_a_server_echoing_the_key_in_its_model_card_is_refused_before_it_is_recorded():
    with Hostile(root=f"/models/{KEY}") as srv:
        with pytest.raises(ServerError) as e:
            client(srv.url).check()
    assert "reports the API key as the root of 'test/model'" in str(e.value) and KEY not in str(e.value)


def test_an_answer_echoing_the_key_is_refused_and_the_key_is_redacted_where_text_leaves(capsys):
    with Hostile(chat=lambda h, b: completion(f"your key is {KEY}")) as srv:
        backend = client(srv.url)
        assert "contains the API key" in fails(backend)
    # every error and log line of the process, whatever raised or logged it
    assert redact(f"x{KEY}y") == "x***y"
    log.warning(f"the server said {KEY}")
    assert KEY not in capsys.readouterr().err


def test_the_manifest_records_no_key(tmp_path, monkeypatch):
    from builder.backends import _SERVERS, backend_settings
    monkeypatch.setenv("PERSONA_HOSTILE_KEY", KEY)
    with Hostile(root=f"/srv/{KEY}/w") as srv:
        m = ModelConfig(id=MODEL, server=srv.url, api_key_env="PERSONA_HOSTILE_KEY")
        with pytest.raises(ServerError, match="API key"):
            backend_settings(m)
        srv.root = "org/weights"
        assert backend_settings(m) == {"server": {"id": MODEL, "root": "org/weights", "max_model_len": 4096}}
    _SERVERS.clear()


# ------------------------------------------------------------------------------------------- H7

def test_an_answer_from_another_model_is_refused():
    with Hostile(chat=lambda h, b: completion(model="evil/other-model")) as srv:
        msg = fails(client(srv.url))
    assert msg == f"{srv.url}/chat/completions: answered as model \"evil/other-model\", not the requested 'test/model'"


# ------------------------------------------------------------------------------------------- M1

def served(tmp_path, srv, **env_) -> ServerBackend:
    """A runner's backend for `srv`, as a build gets it (checked against what the store recorded)."""
    roles = {"responder": RoleConfig(model="m", max_tokens=16)}
    cfg = RunnerConfig(seed=1, models={"m": ModelConfig(id=MODEL, server=srv.url)}, roles=roles)
    backend = client(srv.url)
    backend.check()
    runner = StoreRunner(cfg, RequestStore(tmp_path / "requests.sqlite"), lambda m: backend, {"m": None})
    return runner.backend("m")


def test_a_resume_on_a_server_with_other_weights_is_refused_unless_accepted(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(ACCEPT_CHANGE, raising=False)
    with Hostile() as srv:
        served(tmp_path, srv)
        srv.root = "org/other-weights"
        with pytest.raises(ServerError) as e:
            served(tmp_path, srv)
        msg = str(e.value)
        assert "\n" not in msg and '"root": "org/other-weights"' in msg and '"root": "org/weights"' in msg
        assert f"{ACCEPT_CHANGE}=1" in msg
        monkeypatch.setenv(ACCEPT_CHANGE, "1")
        served(tmp_path, srv)  # accepted, with a warning, and recorded
        assert "mixing them" in capsys.readouterr().err
        monkeypatch.delenv(ACCEPT_CHANGE)
        served(tmp_path, srv)


def test_a_server_back_with_other_weights_mid_run_is_refused():
    calls = []

    def chat(handler, body):
        calls.append(1)
        if len(calls) == 1:
            srv.root = "org/other-weights"  # a restart: a 503 while loading, then the other model
            return Reply(503, b"loading")
        return completion()

    with Hostile(chat=chat) as srv:
        backend = client(srv.url)
        backend.check()
        msg = fails(backend)
    assert f"{srv.url}: now serves 'test/model' from 'org/other-weights'" in msg and "not from 'org/weights'" in msg


# ------------------------------------------------------------------------------------------- M2

@pytest.mark.parametrize("answer, says", [
    (completion("x" * (256 * 16 + 1), completion_tokens=16), "characters for max_tokens = 16"),
    (completion(completion_tokens=17), "completion_tokens = 17, not a count from 0 to 16"),
    (Reply(200, b" " * (2 << 20)), "a reply of more than"),
])
def test_an_answer_too_long_for_its_max_tokens_is_refused(answer, says):
    with Hostile(chat=lambda h, b: answer) as srv:
        assert says in fails(client(srv.url))


# ------------------------------------------------------------------------------------------- M3

def test_timeout_s_bounds_a_whole_call_against_a_dripping_server():
    finished = []

    def drip(handler, body):  # status line, headers and body one byte at a time, 0.05 s apart (~20 s)
        data = json.dumps(completion()).encode()
        raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(data) + data
        try:
            for i in range(len(raw)):
                handler.wfile.write(raw[i:i + 1])
                handler.wfile.flush()
                time.sleep(0.05)
            finished.append(True)
        except OSError:  # the client hung up
            pass
        handler.close_connection = True

    with Hostile(chat=drip) as srv:
        msg = fails(client(srv.url, timeout_s=1.0))
    assert "no answer within timeout_s = 1 s" in msg and "no whole answer within timeout_s = 1 s" in msg
    assert finished == []  # the client gave up long before the server was done


# ------------------------------------------------------------------------------------------- M4

def test_an_error_cuts_the_calls_in_flight():
    cut = threading.Event()

    def chat(handler, body):
        if body["messages"][0]["content"] == "bad":
            time.sleep(0.3)  # the others are in flight by now
            return Reply(401, {"error": "bad key"})
        if hang(handler, body):
            cut.set()

    with Hostile(chat=chat) as srv:
        fails(client(srv.url, timeout_s=600), [req(0, "bad"), req(1), req(2)])
        assert cut.wait(30), "the calls in flight were left hanging after the error"


PROCESS = """
import sys
from generation.backends import ChatRequest
from generation.backends.server import ServerBackend, ServerError, ServerSpec
backend = ServerBackend(ServerSpec(urls=(sys.argv[1],), model="test/model", timeout_s=600))
reqs = [ChatRequest(id=f"r{i}", messages=[{"role": "user", "content": t}], seed=i) for i, t in enumerate(sys.argv[2:])]
try:
    backend.generate(reqs)
except ServerError as e:
    print("error:", e)
"""


def test_a_process_ends_at_once_after_an_error():
    def chat(handler, body):
        if body["messages"][0]["content"] == "bad":
            time.sleep(0.3)
            return Reply(401, {"error": "bad key"})
        hang(handler, body)

    with Hostile(chat=chat) as srv:  # the call in flight would hang for timeout_s = 600 s
        p = subprocess.run([sys.executable, "-c", PROCESS, srv.url, "bad", "hang"], cwd=ROOT, env=env(),
                           capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "HTTP 401" in p.stdout, p.stderr[-2000:]


def test_ctrl_c_mid_build_is_one_line(tmp_path, census_small):
    with Hostile(chat=hang) as srv:  # every chat request hangs
        proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "build", "--recipe",
                                 server_recipe(tmp_path, srv.url, census_small), "--out", tmp_path / "out",
                                 "--work", tmp_path / "work"], cwd=ROOT, env=env(PYTHONFAULTHANDLER="1"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while not any(m == "POST" for m, _, _ in srv.seen) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:  # seen when the suite ran with SIGINT ignored (tests/conftest.py): show every thread
            proc.send_signal(signal.SIGABRT)  # faulthandler prints each thread's stack on SIGABRT
            raise AssertionError("no exit 120 s after Ctrl-C:\n" + proc.communicate(timeout=60)[1][-8000:]) from None
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("persona: interrupted"), err[-2000:]


def server_recipe(tmp_path, url: str, census):
    data = edited(recipe_data(tmp_path, max_model_len=4096, census=census), {"models.m.path": None, "models.m.server": url,
                                                             "models.m.revision": "pinned"})
    return write_recipe(tmp_path / "recipe.toml", data)


# ------------------------------------------------------------------------------------------- M5

BAD = [
    ([1, 2], "[1, 2] is not a JSON object"),
    (Reply(200, b"null"), "null is not a JSON object"),
    (completion(text=5), "the content 5 is not a string"),
    (completion(prompt=2**70), "usage prompt_tokens = 1180591620717411303424, not a count from 0 to 4096"),
    (completion(completion_tokens=-1), "usage completion_tokens = -1, not a count"),
    (completion(prompt=7.0), "usage prompt_tokens = 7.0, not a count"),
    (completion(finish="\x1b[31mevil"), 'finish_reason "\\u001b[31mevil" is not one of stop, length'),
    (completion(text="\ud800"), "lone surrogate"),
    ({**completion(), "choices": []}, "choices is not one choice with a message"),
    ({k: v for k, v in completion().items() if k != "usage"}, "no token counts"),
]


@pytest.mark.parametrize("answer, says", BAD, ids=[s.split(",")[0][:30] for _, s in BAD])
def test_a_reply_out_of_schema_is_one_line_naming_the_url(answer, says):
    with Hostile(chat=lambda h, b: answer) as srv:
        backend = client(srv.url)
        backend.check()
        msg = fails(backend)
    assert msg.startswith(f"{srv.url}/chat/completions: not a chat completion for request r0: ") and says in msg, msg


@pytest.mark.parametrize("data", [5, [5], "x"])
def test_a_model_list_out_of_schema_is_one_line(data):
    with Hostile(models=lambda: {"data": data}) as srv:
        with pytest.raises(ServerError, match=f"{srv.url}/models: not a model list"):
            client(srv.url).check()


def test_the_answers_checked_before_a_bad_reply_are_committed(tmp_path):
    good = threading.Semaphore(0)

    def chat(handler, body):
        if body["messages"][0]["content"] == "bad":
            for _ in range(5):
                good.acquire(timeout=30)
            time.sleep(0.5)  # after the good answers are in
            return completion(prompt=2**70)  # too big for SQLite: once, the whole commit window was lost
        good.release()
        return completion()

    roles = {"responder": RoleConfig(model="m", max_tokens=16)}
    cfg = RunnerConfig(seed=1, models={"m": ModelConfig(id=MODEL)}, roles=roles, chunk_size=1000)
    store = RequestStore(tmp_path / "requests.sqlite")
    asks = [Ask(key=f"k{i}", messages=[{"role": "user", "content": "bad" if i == 5 else f"q{i}"}]) for i in range(6)]
    with Hostile(chat=chat) as srv:
        backend = client(srv.url)
        backend.check()
        run = StoreRunner(cfg, store, lambda m: backend, {"m": None}, commit_s=600)
        with pytest.raises(ServerError, match="prompt_tokens = 1180591620717411303424"):
            run("responder", asks)
    assert store.count() == 5

