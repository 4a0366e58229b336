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


def test_install_server_tunnel_publishes_the_ports_on_loopback_only():
    r = _install("--model-name", "digits", "--rest-port", "9501", "--tunnel")
    assert r.returncode == 0, r.stderr
    docker = next(line for line in r.stdout.splitlines() if line.startswith("+ docker run"))
    published = [w for w in docker.split() if w.startswith(("127.0.0.1:", "0.0.0.0:"))]
    assert published == ["127.0.0.1:9501:8501", "127.0.0.1:8500:8500"]
    assert "--serving-tunnel" in r.stdout
    plain = _install("--model-name", "digits")
    assert "-p 8501:8501 -p 8500:8500" in plain.stdout and "127.0.0.1:" not in plain.stdout


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


def test_ci_runs_exactly_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    commands = [line.split("#", 1)[0].strip() for line in block]
    assert commands[0] == "tools/setup.sh && .venv/bin/tfship run"
    assert commands[1] == "tools/setup.sh --test && .venv/bin/python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == commands[1]


def test_the_orb_installs_with_the_same_uv_as_setup():
    import yaml

    pinned = next(
        line.split("==")[1].split()[0]
        for line in (ROOT / "tools" / "uv-requirements.txt").read_text().splitlines()
        if line.startswith("uv==")
    )
    install = yaml.safe_load((ROOT / "orb" / "src" / "commands" / "install.yml").read_text())
    assert install["parameters"]["uv_version"]["default"] == pinned


@pytest.mark.parametrize(
    ("python", "message"),
    [
        ("no-such-python3", "no no-such-python3 on PATH"),
        ("false", "is not supported: TensorFlow 2.21 needs Python 3.11-3.13"),
    ],
)
def test_setup_refuses_a_python_it_cannot_use_with_one_line(python, message, tmp_path):
    r = subprocess.run(
        ["bash", str(ROOT / "tools" / "setup.sh")],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHON": python, "HOME": str(tmp_path)},
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
