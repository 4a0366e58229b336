"""``tfship run``: the main job, every stage in one process on the embedded defaults."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tfship import config
from tfship.data import Checks
from tfship.evaluate import Gates
from tfship.log import event


@dataclass
class RunSettings:
    """What ``tfship run`` needs; every field has the same default as the stage commands."""

    workspace: Path = Path("workspace")
    store: Path = Path("store")
    model_name: str = config.DEFAULT_MODEL_NAME
    data: str = config.DEFAULT_DATA
    data_sha256: str | None = None
    checks: Checks = field(default_factory=Checks)
    gates: Gates = field(default_factory=Gates)
    epochs: int = config.EPOCHS
    seed: int = config.DEFAULT_SEED
    version: int | None = None


def run_all(s: RunSettings) -> dict:
    """build -> train -> test -> package; returns each stage's result and timings."""
    from tfship.data import build
    from tfship.evaluate import evaluate
    from tfship.package import package
    from tfship.store import local_store
    from tfship.train import TrainSettings, train

    timings: dict[str, float] = {}
    results: dict[str, dict] = {}

    def step(name: str, fn, *args) -> dict:
        started = time.monotonic()
        event("run", f"stage {name} starting")
        results[name] = fn(*args)
        timings[name] = round(time.monotonic() - started, 2)
        return results[name]

    step("build", build, s.workspace, s.data, s.checks, s.seed, s.data_sha256)
    step("train", train, s.workspace, TrainSettings(epochs=s.epochs, seed=s.seed))
    step("test", evaluate, s.workspace, s.gates)
    step("package", package, s.workspace, local_store(s.store), s.model_name, s.version)
    return {"results": results, "timings": timings}
