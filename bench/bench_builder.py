"""Benchmark: our dataset writer vs a plain `pq.write_table`, on a full-size preferences config.

    .venv/bin/python bench/bench_builder.py [--rows 317200] [--batch 2000] [--keep DIR]

Each variant runs in its own subprocess so their peak RSS are separate. Both see the same seeded rows
(persona ~1.5 KB, question ~100 B, chosen/rejected ~1.5 KB, critique ~1 KB), sliced from a random
Zipf-word corpus so that no two strings are identical (identical strings would compress unrealistically).
- ours: batches are generated on the fly and streamed into write_config, then finalize writes the plot,
  card, manifest.json and SHA256SUMS; the time spent generating batches is subtracted.
- baseline: the whole table must be in memory for `pq.write_table(table, path, compression="zstd")`;
  only the write is timed.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_RATIO = 1.3
TARGET_RSS_BYTES = 1_000_000_000
SEED = 20240725
# mean bytes per field, roughly what the real pipeline produces
MEAN_BYTES = {"persona": 1500, "question": 100, "chosen": 1500, "rejected": 1500, "critique": 1000}


def preference_features():
    from datasets import Features, List, Value

    messages = List({"role": Value("string"), "content": Value("string")})
    return Features({
        "pair_id": Value("string"), "persona_id": Value("string"), "prompt_id": Value("string"),
        "persona": Value("string"), "question": Value("string"), "chosen": messages, "rejected": messages,
        "critique": Value("string"), "chosen_tokens": Value("int32"), "rejected_tokens": Value("int32"),
    })


class Corpus:
    """A seeded ASCII text corpus of Zipf-distributed pseudo-words; strings are random slices of it."""

    def __init__(self, seed: int, words: int = 4_000_000, vocab: int = 8000):
        rng = np.random.default_rng(seed)
        letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
        stems = [rng.choice(letters, rng.integers(1, 11)).tobytes() for _ in range(vocab)]
        lexicon = stems + [w + b"," for w in stems] + [w + b"." for w in stems]  # some punctuation
        zipf = 1 / np.arange(1, vocab + 1) ** 1.1
        weights = np.concatenate([zipf * 0.8, zipf * 0.1, zipf * 0.1])
        picks = rng.choice(len(lexicon), words, p=weights / weights.sum())
        step = 500_000  # joined in pieces: a Python list of all 4M words would cost ~0.3 GB
        self.text = b" ".join(b" ".join([lexicon[i] for i in picks[k:k + step].tolist()])
                              for k in range(0, words, step))
        self.view = memoryview(self.text)

    def strings(self, rng: np.random.Generator, n: int, mean: int) -> pa.Array:
        lengths = np.clip(rng.normal(mean, mean / 3, n), mean / 10, None).astype(np.int64)
        starts = rng.integers(0, len(self.text) - lengths.max(), n)
        data = b"".join([self.view[s:s + k] for s, k in zip(starts.tolist(), lengths.tolist())])
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data))


def batches(rows: int, batch: int):
    """Yield RecordBatches of the preferences config, deterministically from SEED."""
    corpus = Corpus(SEED)
    rng = np.random.default_rng(SEED + 1)
    struct = pa.struct([("role", pa.string()), ("content", pa.string())])
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        ids = np.arange(start, start + n)
        text = {k: corpus.strings(rng, n, mean) for k, mean in MEAN_BYTES.items()}

        def conversation(answer, text=text, ids=ids, start=start, n=n):  # [user: question, assistant: answer]
            contents = pa.concat_arrays([text["question"], answer]).take(np.stack([ids - start, ids - start + n], 1).ravel())
            roles = pa.array(["user", "assistant"] * n)
            values = pa.StructArray.from_arrays([roles, contents], fields=list(struct))
            return pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)), values)

        yield pa.RecordBatch.from_pydict({
            "pair_id": pa.array([f"{i:016x}" for i in ids]),
            "persona_id": pa.array([f"{i // 200:08x}" for i in ids]),
            "prompt_id": pa.array([f"{i % 3868:08x}" for i in ids]),
            "persona": text["persona"], "question": text["question"],
            "chosen": conversation(text["chosen"]), "rejected": conversation(text["rejected"]),
            "critique": text["critique"],
            "chosen_tokens": pa.array(rng.integers(50, 600, n), pa.int32()),
            "rejected_tokens": pa.array(rng.integers(50, 600, n), pa.int32()),
        })


def run_ours(rows: int, batch: int, out: Path) -> dict:
    from builder.manifest import finalize
    from builder.shards import write_config

    generating = cpu_generating = 0.0

    def timed(stream):  # time spent producing input is not the writer's
        nonlocal generating, cpu_generating
        it = iter(stream)
        while True:
            t, c = time.perf_counter(), time.process_time()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                generating += time.perf_counter() - t
                cpu_generating += time.process_time() - c
            yield item

    t0, c0 = time.perf_counter(), time.process_time()
    shards = write_config(out, "preferences", "train", timed(batches(rows, batch)), preference_features())
    t_write = time.perf_counter() - t0 - generating
    t1 = time.perf_counter()
    fidelity = [{"attribute": a, "category": c, "population_share": p, "sample_share": s}
                for a, c, p, s in [("sex", "female", 0.507, 0.499), ("sex", "male", 0.493, 0.501),
                                   ("age", "18-44", 0.46, 0.47), ("age", "45+", 0.54, 0.53)]]
    finalize(out, shards=shards, name="persona", recipe=f"seed = {SEED}\n", seed=SEED,
             models={"respond": {"id": "bench/none", "revision": "none", "dtype": "none"}}, sources={},
             counts={"pairs": {"train": rows}}, rejects={}, fidelity=fidelity, lengths={}, demo=True)
    t_finish = time.perf_counter() - t1
    return {"seconds": t_write + t_finish, "cpu_seconds": time.process_time() - c0 - cpu_generating, "write_seconds": t_write, "finish_seconds": t_finish,
            "generate_seconds": generating, "shards": len(shards),
            "bytes": sum(s["bytes"] for s in shards), "peak_rss": peak_rss()}


def run_baseline(rows: int, batch: int, out: Path) -> dict:
    import pyarrow.parquet as pq

    t = time.perf_counter()
    table = pa.Table.from_batches(list(batches(rows, batch)))  # write_table needs it all in memory
    generating = time.perf_counter() - t
    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    pq.write_table(table, out / "train.parquet", compression="zstd")
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "cpu_seconds": time.process_time() - c0, "generate_seconds": generating, "table_bytes": table.nbytes,
            "bytes": (out / "train.parquet").stat().st_size, "peak_rss": peak_rss()}


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=317_200)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--keep", help="write outputs here and keep them (default: a temporary folder)")
    ap.add_argument("--variant", choices=["ours", "baseline"], help=argparse.SUPPRESS)  # child process
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.variant:
        run = run_ours if args.variant == "ours" else run_baseline
        print(json.dumps(run(args.rows, args.batch, Path(args.out))))
        return

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_builder_"))
    results = {}
    try:
        for variant in ("ours", "baseline"):
            cmd = [sys.executable, __file__, "--variant", variant, "--rows", str(args.rows),
                   "--batch", str(args.batch), "--out", str(root / variant)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    ours, base = results["ours"], results["baseline"]
    ratio = ours["seconds"] / base["seconds"]
    cpu_ratio = ours["cpu_seconds"] / base["cpu_seconds"]
    gb = 1e9
    print(f"rows: {args.rows:,} pairs, batches of {args.batch:,}; uncompressed table {base['table_bytes'] / gb:.2f} GB")
    print(f"ours:     {ours['seconds']:.1f} s wall, {ours['cpu_seconds']:.1f} s CPU (write_config {ours['write_seconds']:.1f} s + plot/card/manifest/"
          f"SHA256SUMS {ours['finish_seconds']:.1f} s; generating input {ours['generate_seconds']:.1f} s not counted), "
          f"{ours['shards']} shards, {ours['bytes'] / gb:.2f} GB, peak RSS {ours['peak_rss'] / gb:.2f} GB")
    print(f"baseline: {base['seconds']:.1f} s wall, {base['cpu_seconds']:.1f} s CPU (pq.write_table zstd; building the table {base['generate_seconds']:.1f} s "
          f"not counted), {base['bytes'] / gb:.2f} GB, peak RSS {base['peak_rss'] / gb:.2f} GB "
          f"(holds the whole table)")
    ok_ratio = ratio <= TARGET_RATIO
    ok_rss = ours["peak_rss"] <= TARGET_RSS_BYTES
    print(f"time ratio ours/baseline: {ratio:.2f}x wall (target <= {TARGET_RATIO}x) {'ok' if ok_ratio else 'MISSED'}; "
          f"{cpu_ratio:.2f}x CPU (wall time is noisy on a shared machine)")
    print(f"peak RSS ours: {ours['peak_rss'] / gb:.2f} GB (target <= {TARGET_RSS_BYTES / gb:.0f} GB) "
          f"{'ok' if ok_rss else 'MISSED'}")


if __name__ == "__main__":
    main()
