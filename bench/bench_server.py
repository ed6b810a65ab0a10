"""Benchmark: the same chat requests through a vLLM server (generation/backends/server.py) and through the
in-process engine (tiny random-weight Llama on CPU).

    .venv/bin/python bench/bench_server.py [--requests 128] [--max-tokens 128] [--passes 2] [--model DIR]
                                           [--serve REPLICAS]

The server is started with `serve_command` (the in-process engine's settings), or with --serve as a Ray
Serve LLM app of REPLICAS replicas (`persona serve`, builder/serve.py, the client keeping REPLICAS x 128
requests in flight), then killed before the in-process engine starts, so the two never share the CPU. Start-up and one warm-up batch are not timed;
the timed part is generate() on all requests, repeated --passes times with the persona prompts changed
per pass (cold prefix cache each time), best pass kept. Reported: output tokens/s of each, their ratio,
and whether the texts are identical (they must be: same settings, per-request seeds, fp32).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generation.backends import ChatRequest  # noqa: E402
from generation.backends.engine import Engine, ModelSpec  # noqa: E402
from generation.backends.server import ServerBackend, ServerSpec, serve_command  # noqa: E402


def requests(n: int, max_tokens: int, tag: str) -> list[ChatRequest]:
    return [ChatRequest(id=f"{tag}-{i}", messages=[{"role": "system", "content": f"You are persona {tag}-{i // 8}."},
                                                   {"role": "user", "content": f"Question number {i}: tell me more."}],
                        seed=1000 + i, temperature=0.8, max_tokens=max_tokens) for i in range(n)]


def timed(backend, args) -> tuple[float, list[str]]:
    backend.generate(requests(16, args.max_tokens, "warm"))
    best, texts = 0.0, None
    for p in range(args.passes):
        reqs = requests(args.requests, args.max_tokens, f"p{p}")
        t0 = time.perf_counter()
        out = backend.generate(reqs)
        rate = sum(r.output_tokens for r in out) / (time.perf_counter() - t0)
        best, texts = max(best, rate), texts or [r.text for r in out]
    return best, texts


def start_server(spec: ModelSpec, port: int, replicas: int | None, tmp: Path) -> subprocess.Popen:
    """`vllm serve` (serve_command), or `persona serve --replicas N` for a recipe of the model alone."""
    if replicas is None:
        cmd, env = serve_command(spec, "tiny", port=port), None
    else:
        from tests.helpers import recipe_data, write_recipe
        data = recipe_data(spec.path)
        data["models"]["m"].update(id="tiny", max_model_len=spec.max_model_len, kv_cache_gib=spec.kv_cache_gib)
        recipe = write_recipe(tmp / "recipe.toml", data)
        cmd = [sys.executable, "-m", "builder.cli", "serve", "--recipe", str(recipe), "--replicas", str(replicas),
               "--port", str(port)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": tempfile.mkdtemp(prefix="bench-ray-"),
               "RAY_ADDRESS": ""}
    with open(tmp / "server.log", "wb") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--serve", type=int, metavar="REPLICAS", help="a Ray Serve LLM app (persona serve) instead")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_server_"))
    if args.model is None:
        from generation.tiny import make_tiny_llama
        args.model = make_tiny_llama(tmp / "tiny")
    spec = ModelSpec(path=str(args.model), dtype="float32", max_model_len=4096, kv_cache_gib=0.5)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    proc = start_server(spec, port, args.serve, tmp)
    t0 = time.perf_counter()
    try:
        for _ in range(3600):
            try:
                urllib.request.urlopen(url + "/models", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
                time.sleep(0.5)
        started = time.perf_counter() - t0
        in_flight = 128 * (args.serve or 1)
        server_rate, server_texts = timed(ServerBackend(ServerSpec(urls=(url,), model="tiny", in_flight=in_flight)), args)
    finally:
        if args.serve:  # Ctrl-C: the app is deleted and Ray stopped, as a user stops it
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=120)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    engine_rate, engine_texts = timed(Engine(spec), args)
    what = f"a Ray Serve LLM app of {args.serve} replica(s)" if args.serve else "a vLLM server"
    print(f"{what}: up in {started:.0f} s; output tokens/s through it vs the in-process engine on the same requests "
          f"({args.requests} requests x max {args.max_tokens} tokens, model {args.model.name}, best of {args.passes}): "
          f"server {server_rate:,.0f}, in-process {engine_rate:,.0f} (server/in-process {server_rate / engine_rate:.2f}); "
          f"texts identical: {server_texts == engine_texts}; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
