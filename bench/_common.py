"""Helpers shared by the benchmarks: machine description and BENCHMARKS.md sections."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BENCHMARKS = ROOT / "BENCHMARKS.md"


def machine() -> str:
    """One line naming the machine the figures were taken on."""
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def save(
    name: str,
    figures: dict,
    markdown: str,
    date: str | None = None,
    on: str | None = None,
) -> None:
    """Write ``bench/results/<name>.json`` and replace the ``name`` section of BENCHMARKS.md.

    ``date`` and ``on`` (the machine): those of the measurement when a section is written
    again from saved figures; by default today and this machine."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = date or time.strftime("%Y-%m-%d", time.gmtime())
    where = on or machine()
    doc = {"date": stamp, "machine": where, **figures}
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    section = (
        f"<!-- bench:{name} -->\n{markdown.strip()}\n\n"
        f"_Measured {stamp} on {where}; raw figures in `bench/results/{name}.json`._\n"
        f"<!-- /bench:{name} -->"
    )
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
    text = pattern.sub(section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    BENCHMARKS.write_text(text.rstrip() + "\n")


def demo_package(work: Path) -> Path:
    """Train and package the demo model in ``work`` (`tfship run`, serving stopped after)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tfship",
            "run",
            "--epochs",
            "3",
            "--min-accuracy",
            "0",
            "--min-class-recall",
            "0",
            "--stop-serving",
        ],
        cwd=work,
        check=True,
        capture_output=True,
    )
    return next(p for p in (work / "store" / "digits").iterdir() if p.name.isdigit())
