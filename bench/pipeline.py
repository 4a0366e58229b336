"""Benchmark: wall time of each stage, of stages 1-4 together, and of CLI start-up.

Run by hand (`python bench/pipeline.py`); writes bench/results/pipeline.json and the
pipeline section of BENCHMARKS.md. Targets on 2 cores: stages 1-4 < 40 s; `tfship --help`
and every command that neither trains nor loads a model < 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save  # noqa: E402

STAGES = [["build"], ["train"], ["test"], ["package"]]


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5, help="start-up timing repeats")
    args = parser.parse_args()
    tfship = [sys.executable, "-m", "tfship"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stages = {s[0]: round(timed([*tfship, *s], work), 2) for s in STAGES}
        total = round(sum(stages.values()), 2)
        t = time.perf_counter()
        proc = subprocess.run(
            [
                *tfship,
                "run",
                "retrain",
                "--json",
                "--stop-serving",
                "--workspace",
                "ws2",
                "--store",
                "st2",
                "--serving",
                "sv2",
            ],
            cwd=work,
            check=True,
            capture_output=True,
            text=True,
        )
        run_total = round(time.perf_counter() - t, 2)
        timings = json.loads(proc.stdout)["timings"]
        startup = {}
        for name, cmd in (
            ("--help", ["--help"]),
            ("build --help", ["build", "--help"]),
            ("build (default data)", ["build", "--workspace", "ws3"]),
        ):
            startup[name] = round(
                statistics.median(timed([*tfship, *cmd], work) for _ in range(args.repeat)), 3
            )
    first = {k: v for k, v in timings.items() if not k.startswith(("retrain", "snapshot"))}
    cycle = {k: v for k, v in timings.items() if k not in first}
    first_s, cycle_s = sum(first.values()), sum(cycle.values())
    figures = {
        "stages_s": stages,
        "stages_1_4_s": total,
        "run_retrain_total_s": run_total,
        "first_run_stages_s": first,
        "retrain_cycle_stages_s": cycle,
        "startup_s": startup,
    }

    def shares(part: dict, whole: float) -> str:
        return ", ".join(f"{k} {v:.1f} s ({v / whole:.0%})" for k, v in part.items())

    rows = "\n".join(f"| `tfship {k}` | {v:.2f} s |" for k, v in stages.items())
    starts = "\n".join(
        f"| `tfship {k}` | {v * 1000:.0f} ms | < 500 ms |" for k, v in startup.items()
    )
    md = f"""## Pipeline (stages 1-4, default data)

| stage (own process) | wall time |
|---|---|
{rows}
| **stages 1-4, separate processes** | **{total:.2f} s** (target < 40 s) |

`tfship run retrain` (one process, local serving, deploy and verify included):
{run_total:.1f} s wall in all, of which the first run's stages {first_s:.1f} s (target < 60 s)
and the retrain cycle's {cycle_s:.1f} s (target < 45 s); the rest is start-up and the local
`tfship serve` start.

- first run: {shares(first, first_s)}
- retrain cycle: {shares(cycle, cycle_s)}

| command without TensorFlow | median wall time | target |
|---|---|---|
{starts}
"""
    save("pipeline", figures, md)
    print(md)


if __name__ == "__main__":
    main()
