"""Same data + same seed + the locked versions = the same model, and the stages speak quietly."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from helpers import FAST_TRAIN, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# What a stage may print to stderr: tfship's own event lines, nothing from TensorFlow's C++
# logging (absl, oneDNN, cudart, cpu_feature_guard) and no Python warnings.
EVENT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \[(build|train|test)\] ")


def assert_quiet(err: str) -> None:
    noise = [line for line in err.splitlines() if line.strip() and not EVENT.match(line)]
    assert noise == [], noise


def train_and_test(root, *args: str) -> tuple[bytes, dict]:
    for stage in (["train", *FAST_TRAIN, *args], ["test"]):
        r = run_cli(*stage, cwd=root)
        assert r.code == 0, r.err
        assert_quiet(r.err)
    metrics = (root / "workspace" / "eval" / "metrics.json").read_bytes()
    return metrics, json.loads((root / "workspace" / "model" / "train.json").read_text())


def test_two_trainings_with_one_seed_give_identical_metrics_and_model(tmp_path):
    r = run_cli("build", cwd=tmp_path)
    assert r.code == 0 and r.err == "", r.err  # no TensorFlow at all in stage 1
    first_metrics, first = train_and_test(tmp_path)
    keras_bytes = (tmp_path / "workspace" / "model" / "model.keras").read_bytes()
    shutil.rmtree(tmp_path / "workspace" / "model")
    shutil.rmtree(tmp_path / "workspace" / "eval")
    again_metrics, again = train_and_test(tmp_path)
    assert again_metrics == first_metrics  # byte for byte
    assert (tmp_path / "workspace" / "model" / "model.keras").read_bytes() == keras_bytes
    assert again["model_sha256"] == first["model_sha256"]
    assert first["settings"]["seed"] == 42

    _, other = train_and_test(tmp_path, "--seed", "7")
    assert other["settings"]["seed"] == 7
    assert other["model_sha256"] != first["model_sha256"]  # the seed is honoured


def test_debug_shows_what_the_quiet_default_hides(tmp_path):
    assert run_cli("build", cwd=tmp_path).code == 0
    quiet = run_cli("train", "--epochs", "1", cwd=tmp_path)
    assert quiet.code == 0, quiet.err
    assert_quiet(quiet.err)
    loud = run_cli("--debug", "train", "--epochs", "1", cwd=tmp_path)
    assert loud.code == 0, loud.err
    # TensorFlow always logs something while it loads (which lines depends on the machine).
    assert [line for line in loud.err.splitlines() if not EVENT.match(line)]
