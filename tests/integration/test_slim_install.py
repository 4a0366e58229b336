"""The slim install (`pip install tfship`, no TensorFlow): what the orb's deploy, verify, notify
and plan jobs get. Every command that does not train runs on it; deploy and REST verification
work against a real `tfship serve`; training commands and gRPC say in one line to install
`tfship[train]`, exit 2.

The slim venv is built from uv.lock with `uv sync --no-dev --offline`: the wheels are the ones
tools/setup.sh has just put in uv's cache, so this takes seconds and needs no network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, Result, clean_env, serve_model

pytestmark = pytest.mark.timeout(240)

UV = ROOT / ".tools" / "uv" / "bin" / "uv"
TRAIN_ONLY = ("tensorflow", "tensorflow_serving", "keras", "sklearn", "matplotlib", "pyarrow")


@pytest.fixture(scope="module")
def slim(tmp_path_factory) -> Path:
    """A venv holding tfship and only its base dependencies, exactly as locked."""
    venv = tmp_path_factory.mktemp("slim") / "venv"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)}
    r = subprocess.run(
        [str(UV), "sync", "--locked", "--no-dev", "--offline", "--quiet", "--python",
         sys.executable, "--no-python-downloads"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, f"uv sync of the slim install failed (run tools/setup.sh): {r.stderr}"
    python = venv / "bin" / "python"
    # The premise of every test here: nothing of the train extra is importable.
    probe = "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in sys.argv[1:]))"
    assert subprocess.run([python, "-c", probe, *TRAIN_ONLY]).returncode == 0
    return venv


def run_slim(venv: Path, *args: str, cwd: Path) -> Result:
    """`tfship ARGS` from the slim venv."""
    p = subprocess.run(
        [str(venv / "bin" / "tfship"), *args],
        cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return Result(p.returncode, p.stdout, p.stderr)


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["deploy"],
        ["test-deployed"],
        ["status"],
        ["rollback"],
        ["history"],
        ["notify"],
        ["ci"],
        ["ci", "trigger"],
        ["ci", "approve"],
        ["ci", "watch-data"],
        ["ci", "local"],
        ["build"],
        ["train"],
        ["retrain"],
    ],
    ids=lambda c: " ".join(c) or "tfship",
)
def test_every_command_shows_its_help_without_the_train_extra(slim, tmp_path, command):
    r = run_slim(slim, *command, "--help", cwd=tmp_path)
    assert r.code == 0, r.err
    assert "Usage: tfship" in r.out


def test_commands_that_read_the_store_run_without_the_train_extra(slim, packaged, tmp_path):
    r = run_slim(slim, "history", "--store", str(packaged / "store"), cwd=tmp_path)
    assert r.code == 0, r.err
    assert "1000" in r.out
    assert run_slim(slim, "config", cwd=tmp_path).code == 0


@pytest.mark.parametrize(
    "command", [["build"], ["train", "--epochs", "1"], ["test"], ["package"], ["serve"]]
)
def test_a_training_command_names_the_extra_in_one_line(slim, packaged, tmp_path, command):
    shutil.copytree(packaged / "workspace", tmp_path / "workspace")  # past "run build first"
    r = run_slim(slim, *command, cwd=tmp_path)
    assert r.code == 2, r.err
    assert r.err_lines == [r.err_lines[0]] and "Traceback" not in r.err
    assert r.err_lines[0].startswith(f"tfship {command[0]}: not installed: ")
    assert "tfship's train extra" in r.err_lines[0]
    assert 'pip install "tfship[train]"' in r.err_lines[0]


def test_deploy_and_rest_verification_work_gRPC_names_the_extra(slim, packaged, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(packaged / "workspace", work / "workspace")
    base = tmp_path / "models" / "digits"
    base.mkdir(parents=True)
    served = serve_model(tmp_path, base)  # TF Serving's stand-in runs where TF is installed
    try:
        base_path = str(base.parent)
        r = run_slim(slim, "deploy", "--base-path", base_path, "--url", served.rest, cwd=work)
        assert r.code == 0, r.err  # deploy verifies the served version over REST
        assert (base / "1000").is_dir()
        r = run_slim(slim, "test-deployed", "--url", served.rest, cwd=work)
        assert r.code == 0, r.err
        r = run_slim(slim, "test-deployed", "--url", served.grpc, "--transport", "grpc", cwd=work)
        assert r.code == 2, r.err
        assert len(r.err_lines) == 1 and "Traceback" not in r.err
        line = r.err_lines[0]
        assert line.startswith("tfship test-deployed: not installed: gRPC needs")
        assert 'pip install "tfship[train]"' in line and "--transport rest" in line
    finally:
        served.stop()
