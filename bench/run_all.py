"""Run every benchmark, print each figure against its target, and append the results to BENCHMARKS.md.

    .venv/bin/python bench/run_all.py          (what `make bench` runs; ~10 minutes on two CPU cores)

Benchmarks, each in its own process (their output is shown as they print it):
1. bench_pairs.py    pair generation on the CPU recipe's model vs bare vLLM; prefix-cache share
2. bench_builder.py  the dataset writer vs pyarrow.parquet.write_table on 317,200 synthetic pairs
3. bench_sampling.py census read + sample of the paper's 1,586 personas from 3.42 M records
4. bench_server.py   output tokens/s through a vLLM server vs the in-process engine, same requests
5. bench_ray.py      the Ray executor vs the local engine (only if the file exists)
then the paper recipe's GPU-hours, as `persona plan --recipe configs/paper.toml` prints them.

A missed target is printed as MISSED and listed at the end; the exit code is 1 only when a
benchmark could not run. The machine may be shared: the load average is recorded around each run.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = ROOT / "BENCHMARKS.md"
SHARED = Path(os.environ.get("PERSONA_SHARED_DATA", ROOT.parent / "shared" / "data"))
CENSUS = SHARED / "census" / "acs-pums-2024-1yr"
PY = sys.executable
TIMEOUT = 90 * 60  # per benchmark (the rehearsal and the one-tenth run are the long ones): a hung run must not hang `make bench`



def git(*args: str) -> str:
    """A git answer, or "" where there is none (not a checkout, no git): it only labels the results."""
    try:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0)

    from builder.manifest import package_versions  # the same lookup the dataset manifest records

    v = {k: x or "not installed" for k, x in package_versions().items()}
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": cpu, "ram_gib": round(mem_kb / 2**20, 1),
            **{k: v[k] for k in ("python", "vllm", "torch", "pyarrow", "datasets")},
            "commit": git("rev-parse", "--short", "HEAD") + (" (+ local changes)" if git("status", "--porcelain", "--untracked-files=no") else "")}


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f}/{five:.1f}/{fifteen:.1f}"


def run(name: str, cmd: list[str]) -> dict:
    """Run one benchmark, echoing its stdout; vLLM's logging is turned down, stderr kept for failures."""
    print(f"\n=== {name}: {' '.join(str(c) for c in cmd[1:])}", flush=True)
    before, t0 = load(), time.perf_counter()
    env = dict(os.environ, VLLM_LOGGING_LEVEL="ERROR", TQDM_DISABLE="1", PYTHONWARNINGS="ignore")
    lines = []
    with tempfile.TemporaryFile("w+") as err:
        try:
            proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err,
                                    text=True)
            for line in proc.stdout:
                print(line, end="", flush=True)
                lines.append(line.rstrip("\n"))
            rc = proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "timeout"
        err.seek(0)
        tail = err.read()[-3000:]
    seconds = time.perf_counter() - t0
    if rc != 0:
        print(f"{name}: FAILED (exit {rc})\n{tail}", flush=True)
    return {"name": name, "cmd": " ".join(str(c) for c in cmd[1:]), "rc": rc, "seconds": seconds, "out": lines,
            "load_before": before, "load_after": load(), "stderr_tail": tail if rc != 0 else ""}


def projection() -> tuple[list[str], float]:
    """GPU-hours of configs/paper.toml: exactly what `persona plan --recipe configs/paper.toml` prints (the one
    formula, builder.plan.gpu_hours). Its ceiling, not lengths measured here: the models benchmarked here
    (SmolLM2-135M, a tiny random Llama) write answers of other lengths than the paper's 72B model."""
    from builder.plan import plan, render
    from builder.recipe import load_recipe

    pl = plan(load_recipe(ROOT / "configs" / "paper.toml"), None)
    return ["```", *render(pl).splitlines(), "```", "",
            "- Ceiling: every answer at max_tokens. A pilot of the paper recipe on its GPU gives measured lengths "
            "and rate: `persona plan --recipe configs/paper.toml --measured <pilot> --tokens-per-s <its rate>`."], \
        pl["gpu_hours"]


def results_json(tmp: Path, hours: float | None, info: dict, started) -> list[dict]:
    """bench/results.json: one entry per figure with its target and whether it was met."""
    rows = json.loads((tmp / "rehearsal.json").read_text()) if (tmp / "rehearsal.json").is_file() else []
    if (tmp / "rehearsal_hard.json").is_file():  # rehearsal_hard_*: wall, ms/request, RSS, resume, faults reported
        rows += json.loads((tmp / "rehearsal_hard.json").read_text())
    if (tmp / "tenth.json").is_file():
        t = json.loads((tmp / "tenth.json").read_text())
        run = f"{t['pairs']:,} pairs ({t['pairs_made']:,} made) on {t['model']}"
        rows += [{"name": "engine_feed_ratio", "value": round(t["ratio"], 3), "unit": "x", "target": 0.95,
                  "met": t["ratio"] >= 0.95, "note": f"whole pair stage vs bare all-at-once vLLM, {run}"},
                 {"name": "prefix_cache_vs_optimal", "value": round(t["prefix_vs_optimal"], 3), "unit": "x",
                  "target": 0.95, "met": t["prefix_vs_optimal"] >= 0.95,
                  "note": f"cached prompt tokens / the order-optimal share in whole KV blocks, {run}"}]
    if (tmp / "pairs.json").is_file():
        t = json.loads((tmp / "pairs.json").read_text())
        rows.append({"name": "engine_feed_ratio_smollm2", "value": round(t["ratio"], 3), "unit": "x", "target": 0.95,
                     "met": t["ratio"] >= 0.95})
    if hours is not None:
        rows.append({"name": "paper_gpu_hours", "value": round(hours), "unit": "H100-hours", "target": None, "met": None})
    stamp = {"date": f"{started:%Y-%m-%d}", "commit": info["commit"]}
    return [{**r, **stamp} for r in rows]


def main() -> int:
    info = machine()
    started = dt.datetime.now(dt.UTC)
    print(f"persona benchmarks, {started:%Y-%m-%d %H:%M} UTC on {info['nproc']} x {info['cpu']}, {info['ram_gib']} GiB RAM; "
          f"load {load()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="persona_bench_"))
    pairs_json = tmp / "pairs.json"
    plan = [("pair generation (bench_pairs.py)", [PY, BENCH / "bench_pairs.py", "--json", pairs_json]),
            ("dataset writer (bench_builder.py)", [PY, BENCH / "bench_builder.py"]),
            ("paper-size rehearsal, engine double (bench_rehearsal.py)",
             [PY, BENCH / "bench_rehearsal.py", "--json", tmp / "rehearsal.json"]),
            ("paper-size rehearsal, hard engine double (bench_rehearsal.py --hard)",
             [PY, BENCH / "bench_rehearsal.py", "--hard", "--json", tmp / "rehearsal_hard.json"]),
            ("one tenth of the paper, tiny model on vLLM (bench_pairs.py --tiny)",
             [PY, BENCH / "bench_pairs.py", "--tiny", "--personas", "159", "--per-persona", "200", "--pool", "3868",
              "--json", tmp / "tenth.json"])]
    skipped = []
    if CENSUS.is_dir():
        plan.append(("census sampling (bench_sampling.py)", [PY, BENCH / "bench_sampling.py", "--census", CENSUS]))
    else:
        skipped.append(f"bench_sampling.py: census folder {CENSUS} is absent (set PERSONA_SHARED_DATA)")
    plan.append(("vLLM server backend (bench_server.py)", [PY, BENCH / "bench_server.py"]))
    if (BENCH / "bench_ray.py").is_file():
        plan.append(("Ray executor (bench_ray.py)", [PY, BENCH / "bench_ray.py"]))
    else:
        skipped.append("bench_ray.py: not in this checkout")

    results = [run(name, cmd) for name, cmd in plan]
    proj, hours = projection()
    print("\n=== paper-scale projection\n" + "\n".join(proj), flush=True)
    minutes = (dt.datetime.now(dt.UTC) - started).total_seconds() / 60

    missed = [f"{r['name']}: {line.strip()}" for r in results for line in r["out"] if "MISSED" in line]
    failed = [r for r in results if r["rc"] != 0]
    md = [f"\n## {started:%Y-%m-%d %H:%M} UTC\n",
          f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gib']} GiB RAM, {platform.system()} {platform.release()}",
          f"- versions: python {info['python']}, vllm {info['vllm']}, torch {info['torch']}, pyarrow {info['pyarrow']}, "
          f"datasets {info['datasets']}; persona at {info['commit'] or 'unknown commit'}",
          f"- total {minutes:.1f} min; load average (1/5/15 min) is shown around each benchmark: the machine may be shared",
          f"- targets missed: {len(missed)}" + "".join(f"\n  - MISSED {m}" for m in missed),
          ]
    for r in results:
        status = "ok" if r["rc"] == 0 else f"FAILED (exit {r['rc']})"
        md += [f"\n### {r['name']}: {status}, {r['seconds']:.0f} s, load {r['load_before']} -> {r['load_after']}\n",
               "```", *[line for line in r["out"] if not line.startswith("{")], "```"]
        if r["rc"] != 0:
            md += ["stderr (last lines):", "```", r["stderr_tail"].strip(), "```"]
    if proj:
        md += ["\n### paper-scale projection\n", *proj]
    for s in skipped:
        md.append(f"- skipped: {s}")
    rows = results_json(tmp, hours, info, started)
    (BENCH / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    md += ["\n### bench/results.json\n", "| name | value | unit | target | met |", "|---|---:|---|---:|---|"]
    md += [f"| {r['name']} | {r['value']} | {r['unit']} | {r['target']} | "
           f"{'-' if r['met'] is None else 'yes' if r['met'] else 'MISSED'} |" for r in rows]
    if not RESULTS.exists():
        RESULTS.write_text(HEADER)
    with RESULTS.open("a") as f:
        f.write("\n".join(md) + "\n")
    print(f"\n{len(missed)} target(s) MISSED" + "".join(f"\n  {m}" for m in missed) if missed else "\nall targets met")
    print(f"appended to {RESULTS} ({minutes:.1f} min)")
    return 1 if failed else 0


HEADER = """# Benchmarks

Appended by `make bench` (`bench/run_all.py`), newest at the bottom; each entry records the date, the
machine, the package versions and the load average around each run (build machines are shared, so
wall times vary). What each benchmark measures and why is in the docstring of its script in `bench/`.
A target that is not met says MISSED.
"""

if __name__ == "__main__":
    sys.exit(main())
