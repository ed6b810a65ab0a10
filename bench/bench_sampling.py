"""Benchmark: read the census, sample the paper's 1,586 people, impute CA/TX, label them.

    .venv/bin/python bench/bench_sampling.py --census ../shared/data/census/acs-pums-2024-1yr [--n 1586] [--seed 20240725]

Prints wall and CPU seconds per stage (load = read + validate every code against the dictionary;
sample = systematic PPS + hot-deck imputation; label) and the process's peak RSS, against the targets:
load + sample + label <= 5 s wall, peak RSS <= 2 GB. The fidelity report is timed too (not a target).
CPU time is printed because wall time suffers when other jobs share the machine.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generation.census import label_people, read_census  # noqa: E402
from generation.sampling import PAPER_N, PAPER_SEED, fidelity_report, sample_people, state_shares  # noqa: E402

TARGET_SECONDS = 5.0
TARGET_RSS_BYTES = 2_000_000_000


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--census", required=True, type=Path, help="folder of p_<FIPS>.parquet (or csv_pus.zip)")
    p.add_argument("--dictionary", type=Path, help="PUMS data dictionary CSV (default: the one in --census)")
    p.add_argument("--n", type=int, default=PAPER_N)
    p.add_argument("--seed", type=int, default=PAPER_SEED)
    args = p.parse_args()
    dictionary = args.dictionary or next(iter(sorted(args.census.glob("PUMS_Data_Dictionary_*.csv"))), None)
    if dictionary is None:
        p.error(f"no PUMS_Data_Dictionary_*.csv in {args.census}; pass --dictionary")

    frame, t_load, c_load = timed(lambda: read_census(args.census, dictionary=dictionary))
    sample, t_sample, c_sample = timed(lambda: sample_people(frame, args.n, args.seed))
    labelled, t_label, c_label = timed(lambda: label_people(sample, frame.dictionary))
    report, t_fid, c_fid = timed(lambda: fidelity_report(frame, sample))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # KiB on Linux

    total, total_cpu = t_load + t_sample + t_label, c_load + c_sample + c_label
    print(f"census: {len(frame):,} records from {len(frame.sources)} files; sample n={len(labelled):,} seed={args.seed}")
    print(f"  load              {t_load:6.2f} s wall  {c_load:6.2f} s cpu")
    print(f"  sample + impute   {t_sample:6.2f} s wall  {c_sample:6.2f} s cpu")
    print(f"  label             {t_label:6.2f} s wall  {c_label:6.2f} s cpu")
    print(f"  total             {total:6.2f} s wall  {total_cpu:6.2f} s cpu   target <= {TARGET_SECONDS:.0f} s: "
          f"{'ok' if total <= TARGET_SECONDS else 'MISSED'}")
    print(f"  (fidelity report  {t_fid:6.2f} s wall  {c_fid:6.2f} s cpu, not a target)")
    print(f"  peak RSS          {rss / 1e9:6.2f} GB   target <= {TARGET_RSS_BYTES / 1e9:.0f} GB: "
          f"{'ok' if rss <= TARGET_RSS_BYTES else 'MISSED'}")
    shares = state_shares(sample)
    print(f"  CA {shares.get('CA', 0):.2%}  TX {shares.get('TX', 0):.2%} of the sample; "
          f"max TVD {max(report['tvd'].values()):.4f} ({', '.join(f'{k} {v:.4f}' for k, v in report['tvd'].items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
