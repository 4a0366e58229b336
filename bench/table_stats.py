"""Benchmark: throughput of the statistics pass over a CSV, as a ratio to pyarrow's reader.

Run by hand (`python bench/table_stats.py`); writes bench/results/table_stats.json and the
table_stats section of BENCHMARKS.md. On one generated CSV (``table_memory.write_csv``,
~150 MiB), in one process and interleaved (A, B, C, D, A, B, ...):

- A, the baseline: ``pyarrow.csv.open_csv`` on the path (1 MiB blocks, every column read as
  a string as ``table_io`` reads it), iterating all batches;
- B, ours: ``tfship.tables.table_stats(path)`` (read, sha256 and statistics in one pass);
- C, D, where B's time goes: ``table_io.read_table`` alone, with and without the sha256.

Reported: the median of each, and B's throughput as a ratio to A's: the median over rounds
of A time / B time; the same ratio in CPU time (all threads), which a shared machine's
other load disturbs far less than wall time; and the machine's load average meanwhile.
Goal: >= 0.5x.

The time is proportional to the file's size (a pass is a loop over 1 MiB blocks), so a
smaller file (``--size 40``) gives the same ratios in a quarter of the time; the section
says which size was measured.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save  # noqa: E402
from table_memory import MIB, write_csv  # noqa: E402

GOAL = 0.5


def pyarrow_only(path: Path) -> int:
    """Read every batch with pyarrow alone, all columns as strings (table_io's options)."""
    import pyarrow as pa
    from pyarrow import csv as pacsv

    header = path.open().readline().strip().split(",")
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=1 << 20),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.string()),
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )
    return sum(batch.num_rows for batch in reader)


def ours(path: Path) -> int:
    from tfship.tables import table_stats

    stats, _ = table_stats(path)
    return stats.rows


def read_only(path: Path, digest: bool) -> int:
    from tfship.table_io import read_table

    rows = 0
    for _, cols in read_table([path], hashlib.sha256() if digest else None):
        rows += len(next(iter(cols.values())))
    return rows


def breakdown(path: Path) -> dict[str, float]:
    """One more pass of ours with ``FeatureStats``' steps clocked (CPU seconds, all columns):
    where the statistics' time goes."""
    from tfship import stats as st

    spent: dict[str, float] = {}
    steps = {
        "parse strings to numbers (FeatureStats._parse)": "_parse",
        "number counts (FeatureStats._count_numbers)": "_count_numbers",
        "string counts and tokens (FeatureStats._count_strings)": "_count_strings",
        "percentile sample (FeatureStats._reservoir)": "_reservoir",
        "statistics in all (FeatureStats.update)": "update",
    }
    originals = {name: getattr(st.FeatureStats, name) for name in steps.values()}

    def clocked(label: str, fn: object) -> object:
        def run(self: object, *a: object, **k: object) -> object:
            start = time.thread_time()  # columns run on several threads: each clocks its own
            try:
                return fn(self, *a, **k)
            finally:
                spent[label] = spent.get(label, 0.0) + time.thread_time() - start

        return run

    for label, name in steps.items():
        setattr(st.FeatureStats, name, clocked(label, originals[name]))
    try:
        start = time.process_time()
        ours(path)
        spent["the whole pass (tables.table_stats)"] = time.process_time() - start
    finally:
        for name, fn in originals.items():
            setattr(st.FeatureStats, name, fn)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=150, help="CSV size in MiB (default 150)")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of ours")
    parser.add_argument("--no-save", action="store_true", help="print only (for a trial run)")
    args = parser.parse_args()
    runs = {
        "pyarrow": pyarrow_only,
        "ours": ours,
        "read_table+sha256": lambda p: read_only(p, True),
        "read_table": lambda p: read_only(p, False),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tfship-bench-stats-", dir="/tmp") as tmp:
        path = Path(tmp) / "data.csv"
        rows = write_csv(path, args.size * MIB)
        mib = path.stat().st_size / MIB
        print(f"{mib:.0f} MiB, {rows} rows", flush=True)
        ours(path)  # imports and page cache warm for everyone
        for i in range(args.repeat):
            for name, fn in runs.items():
                start, cpu_start = time.perf_counter(), time.process_time()
                got = fn(path)
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - cpu_start)
                assert got == rows, (name, got, rows)
            print(
                f"round {i + 1}: "
                + ", ".join(f"{k} {v[-1]:.2f} s ({cpu[k][-1]:.2f} s CPU)" for k, v in times.items())
            )
        spent = breakdown(path)
        profile = ""
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(ours, path)
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
            profile = out.getvalue()
            print(profile)
    load = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    med = {k: statistics.median(v) for k, v in times.items()}
    pairs = [a / b for a, b in zip(times["pyarrow"], times["ours"], strict=True)]
    ratio = statistics.median(pairs)  # per round: the two ran side by side
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    cpu_ratio = cpu_med["pyarrow"] / cpu_med["ours"]
    met = ratio >= GOAL
    stats_s = med["ours"] - med["read_table+sha256"]
    figures = {
        "csv_mib": round(mib, 1),
        "rows": rows,
        "repeat": args.repeat,
        "times_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "cpu_s": {k: [round(t, 3) for t in v] for k, v in cpu.items()},
        "median_cpu_s": {k: round(v, 3) for k, v in cpu_med.items()},
        "pair_ratios": [round(r, 3) for r in pairs],
        "throughput_ratio": round(ratio, 3),
        "throughput_ratio_cpu": round(cpu_ratio, 3),
        "goal_ratio": GOAL,
        "goal_met": met,
        "breakdown_cpu_s": {k: round(v, 3) for k, v in spent.items()},
        "load_average_1min": load,
        "cores": os.cpu_count(),
    }
    whole = spent["the whole pass (tables.table_stats)"]
    steps = "\n".join(f"| {k} | {v:.2f} s | {v / whole:.0%} |" for k, v in spent.items())
    table = "\n".join(
        f"| {label} | {med[k]:.2f} s | {mib / med[k]:.0f} MiB/s | {med['pyarrow'] / med[k]:.2f}x "
        f"| {cpu_med[k]:.2f} s | {cpu_med['pyarrow'] / cpu_med[k]:.2f}x |"
        for k, label in (
            ("pyarrow", "pyarrow `open_csv`, all batches (baseline)"),
            ("read_table", "`table_io.read_table` (the same read, through tfship)"),
            ("read_table+sha256", "`read_table` + sha256"),
            ("ours", "**`tables.table_stats`** (read + sha256 + statistics)"),
        )
    )
    md = f"""## Table statistics pass (CSV, {mib:.0f} MiB)

`tfship.tables.table_stats` on a generated CSV ({rows:,} rows: 6 numeric columns, 2
categorical, a 0/1 label) against pyarrow's streaming reader alone on the same file (1 MiB
blocks, every column as a string), {args.repeat} interleaved rounds in one process (medians;
the ratio is the median of the rounds' pyarrow / ours, {min(pairs):.2f}x-{max(pairs):.2f}x):

| pass | median wall | throughput | vs pyarrow | median CPU | vs pyarrow (CPU) |
|---|---|---|---|---|---|
{table}

**Throughput ratio (pyarrow time / ours): {ratio:.2f}x** (goal >= {GOAL}x):
**{"met" if met else "not met"}**.

In CPU time (all of the process's threads; less sensitive to other load on a shared
machine) the ratio is {cpu_ratio:.2f}x. The machine's 1-minute load average was {load[0]}
before and {load[1]} after the run, on {os.cpu_count()} cores: wall times here are those of
a process that got a share of the cores, and the rounds' ratios spread accordingly.

Where the time goes: the read itself (through a Python file that feeds the sha256) is
{med["read_table+sha256"]:.2f} s of the pass's {med["ours"]:.2f} s; the statistics take the
rest ({stats_s / med["ours"]:.0%}). One more pass with `FeatureStats`' steps clocked (CPU
of the thread each ran on, all columns; the steps nest in `update`; the whole pass is the
process's CPU, the reader's threads included):

| step | CPU | share of the pass |
|---|---|---|
{steps}

How the pass keeps up (`stats.py`): each batch's strings are parsed to numbers once
(`pyarrow.compute.cast`, checked on 64 values first, since a failing cast costs 50 times a
good one); a number is counted only until it has more than 1,000 distinct values (then it is
`many`, its counts are dropped: its schema and drift use its range and percentiles); strings
are counted by their distinct values (`value_counts`, then trimming and tokens per distinct
value); the percentile sample drops a batch's values whose random key cannot enter it before
any merge; a batch's columns are folded in on a few threads. The parse (string to number) is
the floor: pyarrow's reader hands every cell over as a string, and only the whole pass may
decide a column's type.
"""
    print(md)
    if not args.no_save:
        save("table_stats", figures, md)


if __name__ == "__main__":
    main()
