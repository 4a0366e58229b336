"""The shell tools: shellcheck-clean, and the TF Serving installer builds the right command."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from helpers import ROOT

SCRIPTS = sorted(
    p for p in [*ROOT.glob("tools/*.sh"), ROOT / ".ci" / "run", *ROOT.glob("orb/src/scripts/*.sh")]
)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_scripts_pass_shellcheck(script):
    assert shutil.which("shellcheck"), "shellcheck must be installed (tools/setup.sh --test)"
    r = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def _install(*args: str):
    return subprocess.run(
        ["bash", str(ROOT / "tools" / "install_server.sh"), "--dry-run", *args],
        capture_output=True,
        text=True,
    )


def test_install_server_puts_server_flags_after_the_image():
    r = _install("--model-name", "digits", "--poll-seconds", "2", "--deploy-user", "ci")
    assert r.returncode == 0, r.stderr
    docker = next(line for line in r.stdout.splitlines() if line.startswith("+ docker run"))
    words = docker.split()
    image = words.index("tensorflow/serving:2.21.0")
    assert words[image + 1 :] == ["--file_system_poll_wait_seconds=2"]
    assert "MODEL_NAME=digits" in docker
    assert "type=bind\\,source=/models/digits\\,target=/models/digits" in docker
    assert "+ chown ci /models/digits" in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-name", "../etc"], "not allowed"),
        (["--base-path", "models"], "must be absolute"),
        (["--bogus"], "unknown option"),
    ],
)
def test_install_server_refuses_bad_settings(args, message):
    r = _install(*args)
    assert r.returncode == 2 and message in r.stderr
