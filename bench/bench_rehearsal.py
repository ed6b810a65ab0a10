"""The paper-size rehearsal: the real pipeline at configs/paper.toml's sizes (1,586 personas x 200 prompts =
317,200 pairs, ~640k model requests, the shared census and PRISM prompts) with the engine double
(bench/double.py) answering instantly, so what is measured is our own code.

    python bench/bench_rehearsal.py [--json results.json] [--work DIR]

1. A full build: wall time, our own time per request (wall minus the double's own time, per request),
   peak RSS, store and output size; `persona verify`; `load_dataset` reads every preference row.
2. The same build killed with SIGKILL at about half of its requests, then run again in the same
   folders: SHA256SUMS identical to 1., no request stored twice, and how many were answered twice
   (bounded by what was in flight or not yet committed at the kill).
Targets: <= 10 min wall, <= 1 ms per request, <= 4 GB peak RSS.

--hard: the same with the hard double (bench/hard_double.py: 70B-sized texts in real tokenizer tokens,
injected faults, a fixed number of slots with simulated service times scaled by --time-scale), killed at
a seeded random point instead of the middle, and one more check: the manifest reports exactly the faults
the double injected. Targets: <= 15 min wall, <= 1 ms per request, <= 4 GB peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PERSONA_SHARED_DATA", ROOT.parent / "shared" / "data"))
TARGETS = {"rehearsal_wall_s": 600.0, "pipeline_ms_per_request": 1.0, "rehearsal_peak_rss_gb": 4.0}
HARD_WALL_S = 900.0


def recipe(folder: Path, personas: int) -> Path:
    """configs/paper.toml with local sources, and a model folder that holds no model (the double needs none)."""
    text = (ROOT / "configs" / "paper.toml").read_text()
    data = tomllib.loads(text)
    model = folder / "no-model"
    model.mkdir(parents=True, exist_ok=True)
    # the model revision is this folder's digest: a config.json is all it needs
    (model / "config.json").write_text('{"note": "the rehearsal engine double answers; there is no model here"}\n')
    lines = []
    for line in text.splitlines():
        key = line.split("=")[0].strip()
        if key == "source" and "census.gov" in line:
            line = f'source = "{SHARED / "census" / "acs-pums-2024-1yr"}"'
        elif key == "source" and "hf://" in line:
            line = f'source = "{SHARED / "prism" / "prism_opening_prompts.json"}"'
        elif key == "personas":
            line = f"personas = {personas}"
        elif key == "text_field":
            continue
        elif key == "revision":
            line = f'path = "{model}"'
        lines.append(line)
    assert "qwen72" in data["models"]
    out = folder / "paper-rehearsal.toml"
    out.write_text("\n".join(lines) + "\n")
    return out


def child(recipe_path: str, out: str, work: str, log: str, stats: str, hard: str = "", slots: str = "64",
          time_scale: str = "0.001") -> None:
    """One build with the double; its own peak RSS and the double's time go to `stats` (with --hard, also
    the faults the double injected and what the manifest must report of them)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from double import Double
    from hard_double import HardDouble

    from builder.pipeline import build

    base = HardDouble if hard else Double

    class Logged(base):
        """Appends every answered request id to `log` (to count answers given twice across a kill)."""
        spent = 0.0

        def submit(self, requests):
            t0 = time.perf_counter()
            super().submit(requests)
            Logged.spent += time.perf_counter() - t0

        def poll(self):  # the hard double waits here for its simulated slots: the engine's time, not ours
            t0 = time.perf_counter()
            done = super().poll()
            with open(log, "a") as f:  # answered = handed to the runner
                f.write("".join(r.id + "\n" for r in done))
            Logged.spent += time.perf_counter() - t0
            return done

    if hard:
        double = Logged(SHARED / "prism" / "prism_opening_prompts.json", max_model_len=8192, slots=int(slots),
                        time_scale=float(time_scale))
    else:
        double = Logged()
    t0 = time.perf_counter()
    manifest = build(recipe_path, out=out, work=work, backend_for=lambda m: double)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    st = {"wall_s": wall, "double_s": Logged.spent, "answered": double.answered, "peak_rss_gb": ru.ru_maxrss / 2**20,
          "cpu_s": ru.ru_utime + ru.ru_stime}  # on a shared machine, CPU time says more than wall time
    if hard:
        from hard_double import mismatches
        expected = double.expected()
        st.update(double_cpu_s=double.cpu_s, double_wait_s=double.wait_s, simulated_s=double.simulated_s,
                  slots=double.slots, time_scale=double.time_scale, faults=double.faults(), expected=expected,
                  mismatches=mismatches(manifest, expected))
    Path(stats).write_text(json.dumps(st))


def start(args: list) -> subprocess.Popen:
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, __file__, "child", *map(str, args)], cwd=ROOT, env=env)


def sums(out: Path) -> str:
    return (out / "SHA256SUMS").read_text()


def killed_run(r: Path, kill: Path, extra: list, target: int) -> tuple[int, int, int, bool]:
    """A build killed with SIGKILL once `target` answers are stored, then run again in the same folders:
    (stored at the kill, target, answers handed over twice, resumed ok)."""
    from builder.store import RequestStore
    p = start([r, kill / "out", kill / "work", kill / "answered.log", kill / "stats.json", *extra])
    count = kill / "work" / "persona" / "requests.sqlite.count"
    while p.poll() is None:
        try:
            if int(count.read_text()) >= target:
                p.send_signal(signal.SIGKILL)
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    p.wait()
    at_kill = RequestStore(kill / "work" / "persona" / "requests.sqlite").count()
    first = set((kill / "answered.log").read_text().split())
    (kill / "answered.log").rename(kill / "answered-1.log")
    p = start([r, kill / "out", kill / "work", kill / "answered.log", kill / "stats.json", *extra])
    resumed_ok = p.wait() == 0
    twice = len(first & set((kill / "answered.log").read_text().split()))
    return at_kill, target, twice, resumed_ok


def main() -> int:
    # this checkout's packages, as in the child builds (PYTHONPATH): not whichever one the venv installed, whose
    # RequestStore may migrate the store under the children (it did: a newer main added a column mid-run)
    sys.path.insert(0, str(ROOT))
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path)
    ap.add_argument("--work", type=Path, default=ROOT / ".bench-rehearsal")
    ap.add_argument("--personas", type=int, default=1586, help="fewer for a quick try (200 prompts each)")
    ap.add_argument("--hard", action="store_true", help="the hard double (bench/hard_double.py)")
    ap.add_argument("--slots", type=int, default=64, help="--hard: sequences the simulated engine runs at once")
    ap.add_argument("--time-scale", type=float, default=0.001,
                    help="--hard: simulated service times x this (1 = a 72B AWQ model on one H100)")
    ap.add_argument("--seed", type=int, default=20240725, help="--hard: where the kill falls")
    ap.add_argument("--parallel", action="store_true",
                    help="run the killed-and-resumed build while the full build runs (two processes), not after it")
    ap.add_argument("--adopt-full", action="store_true",
                    help="a full build of this script is already running in WORK/full: wait for it instead of starting one")
    ap.add_argument("--no-kill", action="store_true", help="only the full build (no kill -9 and resume)")
    a = ap.parse_args()
    if a.adopt_full:  # never remove the running full build's folders
        if not a.no_kill:
            shutil.rmtree(a.work / "killed", ignore_errors=True)
        r = a.work / "paper-rehearsal.toml"
    else:
        if a.work.exists():
            shutil.rmtree(a.work)
        a.work.mkdir(parents=True)
        r = recipe(a.work, a.personas)
    want = 200 * a.personas
    extra = ["hard", a.slots, a.time_scale] if a.hard else []
    prefix = "rehearsal_hard_" if a.hard else "rehearsal_"
    load0 = os.getloadavg()

    # 1. the full build (2. may run at the same time: --parallel)
    full, kill = a.work / "full", a.work / "killed"
    p = None if a.adopt_full else start([r, full / "out", full / "work", full / "answered.log", full / "stats.json", *extra])
    frac = random.Random(a.seed).uniform(0.15, 0.85) if a.hard else 0.5
    if (a.parallel or a.adopt_full) and not a.no_kill:  # the full build's request count is not known yet: ~2 per pair
        killed = killed_run(r, kill, extra, int(frac * 2 * want))
    while (p.poll() is None) if p else not (full / "stats.json").exists():
        time.sleep(1)
    if (p and p.returncode != 0) or not (full / "stats.json").exists():
        print("rehearsal: the full build failed")
        return 1
    load1 = os.getloadavg()
    st = json.loads((full / "stats.json").read_text())
    from builder.manifest import verify_folder
    from builder.store import RequestStore
    store = RequestStore(full / "work" / "persona" / "requests.sqlite")
    n_req = store.count()
    problems = verify_folder(full / "out")
    from datasets import load_dataset
    pairs = sum(len(s) for s in load_dataset(str(full / "out"), "preferences").values())
    manifest = json.loads((full / "out" / "manifest.json").read_text())
    made = sum(manifest["counts"]["pairs"].values())
    size = lambda d: sum(f.stat().st_size for f in d.rglob("*") if f.is_file())  # noqa: E731
    ms = (st["wall_s"] - st["double_s"]) * 1000 / max(n_req, 1)
    store_mb, out_mb = size(full / "work") / 1e6, size(full / "out") / 1e6
    print(f"full build: {pairs:,} preference rows, {n_req:,} requests ({st['answered']:,} answers with retries) in "
          f"{st['wall_s']:.0f} s ({ms:.3f} ms of our own time per request; the double took {st['double_s']:.0f} s), "
          f"peak RSS {st['peak_rss_gb']:.2f} GB; store {store_mb:,.0f} MB, output {out_mb:,.0f} MB; "
          f"verify: {'ok' if not problems else problems[:3]}; load average {load0[0]:.1f} at the start, "
          f"{load1[0]:.1f} (5 min {load1[1]:.1f}) at the end")
    if "cpu_s" in st:  # the double's CPU: all of its time (plain), its answer writing (hard: it also sleeps)
        own_cpu = (st["cpu_s"] - st.get("double_cpu_s", st["double_s"])) * 1000 / max(n_req, 1)
        print(f"CPU time of the build process: {st['cpu_s']:.0f} s, {own_cpu:.3f} ms of our own per request "
              f"(wall {st['wall_s']:.0f} s: the process had {st['cpu_s'] / st['wall_s']:.0%} of a core)")
    if a.hard:
        print(f"hard double: {st['double_cpu_s']:.0f} s writing answers, {st['double_wait_s']:.0f} s waiting for "
              f"{st['slots']} simulated slots ({st['simulated_s']:.0f} slot-seconds at time scale {st['time_scale']:g}: "
              f"{st['simulated_s'] / st['time_scale'] / st['slots'] / 3600:,.1f} h of a real engine)")
        print("faults injected (attempts):", json.dumps(st["faults"]))
        print("manifest vs double:", "exactly the injected counts" if not st["mismatches"] else st["mismatches"])
        print("requests by role (manifest):", json.dumps({k: {x: v[x] for x in ("requests", "ok", "retries", "rejects")}
                                                          for k, v in manifest["counts"]["requests"].items()}))

    # 2. killed at a seeded random point (--hard) or about half of the requests, then resumed
    identical = final = twice = None
    if not a.no_kill:
        if not (a.parallel or a.adopt_full):
            killed = killed_run(r, kill, extra, int(frac * n_req))
        at_kill, target, twice, resumed_ok = killed
        identical = resumed_ok and sums(kill / "out") == sums(full / "out")
        if resumed_ok and not identical:
            a_, b_ = set(sums(full / "out").splitlines()), set(sums(kill / "out").splitlines())
            print("files that differ:", sorted(line.split()[-1] for line in a_ - b_))
        final = RequestStore(kill / "work" / "persona" / "requests.sqlite").count()
        print(f"kill -9 at {at_kill:,} stored answers of {n_req:,} (seeded target {target:,}); resumed: "
              f"{'ok' if resumed_ok else 'FAILED'}; SHA256SUMS {'identical' if identical else 'DIFFERENT'}; store rows "
              f"{final:,} (no duplicates: {'yes' if final == n_req else 'NO'}); answered twice: {twice:,} (handed to "
              f"the runner but not yet committed at the kill; bound: chunk_size or commit_s worth of answers)"
              + ("; ran beside the full build (--parallel)" if a.parallel or a.adopt_full else ""))

    wall_target = HARD_WALL_S if a.hard else TARGETS["rehearsal_wall_s"]
    note = (f"{a.personas} personas; load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end of the full "
            f"build; store {store_mb:,.0f} MB, output {out_mb:,.0f} MB")
    results = [
        (prefix + "pairs", pairs, "pairs", made if a.hard else want, pairs == (made if a.hard else want)),
        (prefix + "wall_s", round(st["wall_s"], 1), "s", wall_target, st["wall_s"] <= wall_target),
        ((prefix + "ms_per_request") if a.hard else "pipeline_ms_per_request", round(ms, 4), "ms", 1.0, ms <= 1.0),
        (prefix + "peak_rss_gb", round(st["peak_rss_gb"], 2), "GB", 4.0, st["peak_rss_gb"] <= 4.0),
        *([] if a.no_kill else [
            (prefix + "resume_identical", identical and final == n_req and not problems, "bool", True,
             identical and final == n_req and not problems),
            (prefix + "answered_twice", twice, "requests", None, None)]),
        (prefix + "requests", n_req, "requests", None, None),
    ]
    if a.hard:
        results.append((prefix + "faults_reported", not st["mismatches"], "bool", True, not st["mismatches"]))
    for name, value, unit, tgt, met in results:
        flag = "" if met is None else (" ok" if met else f" MISSED (target {tgt} {unit})")
        print(f"{name}: {value} {unit}{flag}")
    if a.json:
        a.json.write_text(json.dumps([{"name": n, "value": v, "unit": u, "target": t, "met": m, "note": note}
                                      for n, v, u, t, m in results]))
    if identical and not a.adopt_full:  # otherwise kept for a look
        shutil.rmtree(a.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child(*sys.argv[2:])
    else:
        sys.exit(main())
