"""Shared fixtures: run the real CLI in a subprocess; one trained package per session."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CONFORMANCE = SHARED / "conformance" / "tf-serving"

# Tiny training for tests: the default data, few epochs, a gate the tiny model can meet.
FAST_TRAIN = ["--epochs", "6"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        """stderr lines that are ours (TF's C++ logger writes a banner we do not control)."""
        return [
            line
            for line in self.err.splitlines()
            if line.strip()
            and not line.startswith(("WARNING: All log messages", "I0000", "E0000", "W0000"))
        ]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus any tfship/deploy settings of the developer's shell."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TFSHIP_", "DEPLOY_SERVER_", "CIRCLE_")) and k != "MODEL_NAME"
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 240,
    script: str | None = None,
) -> Result:
    """Run ``python -m tfship ARGS`` (or ``python ml/<script> ARGS``) in ``cwd``."""
    cmd = (
        [sys.executable, str(ROOT / "ml" / script)] if script else [sys.executable, "-m", "tfship"]
    )
    proc = subprocess.run(
        [*cmd, *args],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(tmp_path):
    """``cli(*args)`` runs the CLI in a fresh folder."""

    def _run(*args: str, **kw) -> Result:
        kw.setdefault("cwd", tmp_path)
        return run_cli(*args, **kw)

    return _run


@pytest.fixture(scope="session")
def packaged(tmp_path_factory) -> Path:
    """A folder whose workspace/ and store/ hold a trained, tested, packaged model (stages 1-4)."""
    root = tmp_path_factory.mktemp("pipeline")
    for stage in (
        ["build"],
        ["train", *FAST_TRAIN],
        ["test", "--min-accuracy", "0.5", "--min-class-recall", "0"],
        ["package", "--version", "1000"],
    ):
        r = run_cli(*stage, cwd=root)
        assert r.code == 0, f"{stage}: {r.err}"
    return root


def write_npz(path: Path, images, labels, **extra) -> Path:
    np.savez(path, images=np.asarray(images), labels=np.asarray(labels), **extra)
    return path


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from tfship.data import load_digits

    raw = load_digits()
    # digits are 0..16; x15 puts them on the 0..255 scale our loaders expect of uint8 data.
    return (raw.images * 15).astype(np.uint8), raw.labels
