"""The orb's scripts, function by function: notify.sh's decision and tfship arguments,
run_stage.sh's splitting of extra_args; then each script run whole, as CircleCI runs a step,
against a stand-in `tfship` that records what it was given.

A test sources a script with $0 set to the scripts' ORB_TEST_ENV marker, so the functions are
defined and main does not run (the slack orb's pattern)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

SCRIPTS = ROOT / "orb" / "src" / "scripts"
NOTIFY = SCRIPTS / "notify.sh"
RUN_STAGE = SCRIPTS / "run_stage.sh"
MARKER = "tfship-orb-test"
# Prints a bash array's words NUL-terminated: unlike `printf '%s\0' "${a[@]}"`, nothing for an
# empty array, and a word holding a newline stays one word.
PRINT_WORDS = 'for w in "${%s[@]}"; do printf "%%s\\0" "$w"; done'


def _env(tmp_path: Path, **params: str) -> dict[str, str]:
    """The test's environment without any PARAM_* or TFSHIP_* of its own, plus ``params``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARAM_", "TFSHIP_", "MODEL_"))}
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    env["TFSHIP_STUB_LOG"] = str(tmp_path / "tfship-called.json")
    env.update(params)
    return env


def _source(script: Path, body: str, *args: str, env: dict[str, str] | None = None, cwd=None):
    """Source ``script`` as the tests do ($0 holds the marker) and run ``body`` with ``args``."""
    return subprocess.run(
        ["bash", "-c", f'source "{script}"; {body}', MARKER, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
    )


def _words(stdout: str) -> list[str]:
    assert stdout == "" or stdout.endswith("\0"), repr(stdout)
    return stdout.split("\0")[:-1]


@pytest.fixture
def stub_tfship(tmp_path: Path):
    """A `tfship` first on PATH that records its arguments, folder and environment; returns a
    function giving that record, or None if it was not called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "tfship"
    stub.write_text(
        "#!/usr/bin/env python3\n"
        "import json, os, sys\n"
        "known = os.environ.get('DEPLOY_SERVER_KNOWN_HOSTS')\n"
        "record = {'argv': sys.argv[1:], 'cwd': os.getcwd(), 'env': dict(os.environ),\n"
        "          'known_hosts': open(known).read() if known else None}\n"
        "json.dump(record, open(os.environ['TFSHIP_STUB_LOG'], 'w'))\n"
        "sys.exit(int(os.environ.get('STUB_EXIT', '0')))\n"
    )
    stub.chmod(0o755)
    log = tmp_path / "tfship-called.json"
    return lambda: json.loads(log.read_text()) if log.exists() else None


def _run_as_circleci(script: Path, env: dict[str, str], cwd: Path):
    """Run the script's text the way CircleCI runs a step's command (the default shell)."""
    return subprocess.run(
        ["/bin/bash", "-eo", "pipefail", "-c", script.read_text()],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
    )


# --------------------------------------------------------------------------------------------
# notify.sh
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "wanted", "sent"),
    [
        ("pass", "fail", None),
        ("pass", "pass", "pass"),
        ("pass", "always", "pass"),
        ("pass", "approval", "approval"),
        ("fail", "fail", "fail"),
        ("fail", "pass", None),
        ("fail", "always", "fail"),
        ("fail", "approval", None),  # a failed retrain leaves nothing to approve
    ],
)
def test_notify_decides_which_event_to_send_for_each_status(status, wanted, sent):
    r = _source(NOTIFY, 'event_to_send "$1" "$2"', status, wanted)
    if sent is None:
        assert (r.returncode, r.stdout) == (1, "")
    else:
        assert (r.returncode, r.stdout) == (0, f"{sent}\n")


def test_notify_arguments_leave_out_empty_optional_parameters(tmp_path):
    # CircleCI passes a parameter left at its "" default as an empty variable.
    env = _env(
        tmp_path,
        PARAM_WEBHOOK_ENV="TEAM_HOOK",
        PARAM_FORMAT="json",
        PARAM_STAGE="",
        PARAM_MESSAGE="",
        PARAM_EVIDENCE="",
    )
    r = _source(NOTIFY, f'build_notify_args "$1"; {PRINT_WORDS % "notify_args"}', "pass", env=env)
    assert r.returncode == 0, r.stderr
    assert _words(r.stdout) == [
        "notify",
        "--event",
        "pass",
        "--webhook-env",
        "TEAM_HOOK",
        "--format",
        "json",
    ]


def test_notify_arguments_keep_values_with_spaces_whole(tmp_path):
    env = _env(
        tmp_path,
        PARAM_WEBHOOK_ENV="TFSHIP_WEBHOOK_URL",
        PARAM_FORMAT="slack",
        PARAM_STAGE="retrain",
        PARAM_MESSAGE="A challenger is waiting for approval (job hold).",
        PARAM_EVIDENCE="my workspace/retrain/report.md",
    )
    r = _source(
        NOTIFY, f'build_notify_args "$1"; {PRINT_WORDS % "notify_args"}', "approval", env=env
    )
    assert r.returncode == 0, r.stderr
    assert _words(r.stdout)[6:] == [
        "slack",
        "--stage",
        "retrain",
        "--message",
        "A challenger is waiting for approval (job hold).",
        "--evidence",
        "my workspace/retrain/report.md",
    ]


def _notify_env(tmp_path, **params):
    # What the notify command passes when its optional parameters are left at their defaults.
    defaults = {
        "PARAM_WEBHOOK_ENV": "TFSHIP_WEBHOOK_URL",
        "PARAM_FORMAT": "slack",
        "PARAM_STAGE": "",
        "PARAM_MESSAGE": "",
        "PARAM_EVIDENCE": "",
    }
    return _env(tmp_path, **{**defaults, **params})


def test_notify_step_sends_a_failure_with_its_message(tmp_path, stub_tfship):
    app = tmp_path / "app dir"
    app.mkdir()
    env = _notify_env(
        tmp_path,
        PARAM_EVENT="fail",
        TFSHIP_JOB_STATUS="fail",
        PARAM_STAGE="test",
        PARAM_MESSAGE="gate missed, see the report",
        PARAM_APP_DIR=str(app),
    )
    r = _run_as_circleci(NOTIFY, env, tmp_path)
    assert r.returncode == 0, r.stderr
    called = stub_tfship()
    assert called["argv"] == [
        "notify",
        "--event",
        "fail",
        "--webhook-env",
        "TFSHIP_WEBHOOK_URL",
        "--format",
        "slack",
        "--stage",
        "test",
        "--message",
        "gate missed, see the report",
    ]
    assert called["cwd"] == str(app)


def test_notify_step_without_a_recorded_failure_reports_a_pass(tmp_path, stub_tfship):
    r = _run_as_circleci(NOTIFY, _notify_env(tmp_path, PARAM_EVENT="always"), tmp_path)
    assert r.returncode == 0, r.stderr
    assert stub_tfship()["argv"][:3] == ["notify", "--event", "pass"]


def test_notify_step_stays_quiet_when_the_status_is_not_wanted(tmp_path, stub_tfship):
    env = _notify_env(tmp_path, PARAM_EVENT="fail", TFSHIP_JOB_STATUS="pass")
    r = _run_as_circleci(NOTIFY, env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert stub_tfship() is None
    assert r.stdout == "notify: job status is pass, notifying on fail only\n"


def test_notify_step_never_fails_the_job(tmp_path, stub_tfship):
    env = _notify_env(tmp_path, PARAM_EVENT="fail", TFSHIP_JOB_STATUS="fail", STUB_EXIT="7")
    r = _run_as_circleci(NOTIFY, env, tmp_path)
    assert stub_tfship() is not None
    assert r.returncode == 0
    assert "notify: could not notify (the job's result stands)" in r.stdout


def test_notify_arguments_pass_mentions_and_the_branch_pattern(tmp_path):
    env = _notify_env(
        tmp_path, PARAM_MENTIONS="U012AB3CD, S0614TZR7", PARAM_BRANCH_PATTERN="main|release/.*"
    )
    r = _source(NOTIFY, f'build_notify_args "$1"; {PRINT_WORDS % "notify_args"}', "fail", env=env)
    assert r.returncode == 0, r.stderr
    assert _words(r.stdout)[7:] == [
        "--mentions",
        "U012AB3CD, S0614TZR7",
        "--branch-pattern",
        "main|release/.*",
    ]


def _without_tfship(tmp_path: Path, tools: tuple[str, ...], **params: str) -> dict[str, str]:
    """The environment of a job whose install step failed: a PATH holding only ``tools``."""
    bin_dir = tmp_path / "bare-bin"
    bin_dir.mkdir(exist_ok=True)
    real = {"python3": os.path.realpath(sys.executable), "curl": shutil.which("curl")}
    for tool in tools:
        if not real[tool]:
            pytest.skip(f"{tool} is not installed here")
        (bin_dir / tool).symlink_to(real[tool])
    job = {
        "CIRCLE_JOB": "retrain",
        "CIRCLE_BUILD_URL": "https://circleci.com/gh/acme/models/77",
        "TFSHIP_JOB_STATUS": "fail",  # the install step failed
    }
    env = _notify_env(tmp_path, **{**job, **params})
    env["PATH"] = str(bin_dir)
    return env


@pytest.mark.parametrize("tool", ["python3", "curl"])
def test_an_install_failure_still_posts_a_minimal_message(tmp_path, webhook, tool):
    url, bodies = webhook
    env = _without_tfship(tmp_path, (tool,), PARAM_EVENT="fail", TFSHIP_WEBHOOK_URL=url)
    r = _run_as_circleci(NOTIFY, env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "notify: tfship is not installed; minimal message sent\n"
    assert url not in r.stdout + r.stderr  # the webhook URL is a secret
    assert bodies == [
        {
            "text": ":red_circle: tfship retrain failed: tfship is not installed "
            "(failed step: install tfship)\n<https://circleci.com/gh/acme/models/77|build>"
        }
    ]


@pytest.mark.parametrize("tool", ["python3", "curl"])
def test_the_minimal_message_in_the_generic_json_format(tmp_path, webhook, tool):
    url, bodies = webhook
    env = _without_tfship(
        tmp_path, (tool,), PARAM_EVENT="always", PARAM_FORMAT="json", TFSHIP_WEBHOOK_URL=url
    )
    assert _run_as_circleci(NOTIFY, env, tmp_path).returncode == 0
    [body] = bodies
    assert (body["event"], body["job"], body["stage"]) == ("fail", "retrain", "install")
    assert body["build_url"] == "https://circleci.com/gh/acme/models/77"


def test_the_minimal_message_keeps_to_the_branch_pattern(tmp_path, webhook):
    url, bodies = webhook
    env = _without_tfship(
        tmp_path,
        ("python3",),
        PARAM_EVENT="fail",
        PARAM_BRANCH_PATTERN="main|release/.*",
        CIRCLE_BRANCH="main-old",
        TFSHIP_WEBHOOK_URL=url,
    )
    r = _run_as_circleci(NOTIFY, env, tmp_path)
    assert r.returncode == 0 and bodies == []
    assert "branch 'main-old' does not match the branch pattern 'main|release/.*'" in r.stdout
    env["CIRCLE_BRANCH"] = "release/3"
    assert _run_as_circleci(NOTIFY, env, tmp_path).returncode == 0 and len(bodies) == 1


def test_without_tfship_there_is_no_approval_to_announce(tmp_path, webhook):
    url, bodies = webhook
    env = _without_tfship(
        tmp_path,
        ("python3",),
        PARAM_EVENT="approval",
        TFSHIP_JOB_STATUS="pass",
        TFSHIP_WEBHOOK_URL=url,
    )
    r = _run_as_circleci(NOTIFY, env, tmp_path)
    assert (r.returncode, r.stdout, bodies) == (0, "", [])


def test_an_unreachable_webhook_without_tfship_does_not_fail_the_job(tmp_path):
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/services/T0/B0/secret-part"
    env = _without_tfship(tmp_path, ("python3",), PARAM_EVENT="fail", TFSHIP_WEBHOOK_URL=url)
    r = _run_as_circleci(NOTIFY, env, tmp_path)
    assert r.returncode == 0 and "secret-part" not in r.stdout + r.stderr
    assert "the minimal message could not be sent (the job's result stands)" in r.stdout


# --------------------------------------------------------------------------------------------
# run_stage.sh
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", []),
        ("   ", []),
        ("--batch-size 64  --seed 7", ["--batch-size", "64", "--seed", "7"]),
        ('--message "two words"', ["--message", "two words"]),
        ("--data 'my data/new snapshot.npz'", ["--data", "my data/new snapshot.npz"]),
        (
            r"--data my\ data.npz --model-fn=pkg.mod:fn",
            ["--data", "my data.npz", "--model-fn=pkg.mod:fn"],
        ),
        ('--message "it\'s one\nparagraph"', ["--message", "it's one\nparagraph"]),
        # Nothing is expanded or run: no eval, no globbing, no variables.
        ('--message "$(touch ran)" $HOME *', ["--message", "$(touch ran)", "$HOME", "*"]),
    ],
)
def test_extra_args_split_by_shell_quoting_rules(tmp_path, text, words):
    (tmp_path / "a-file").touch()  # something for an unquoted * to match, were it globbed
    r = _source(RUN_STAGE, f'split_args "$1"; {PRINT_WORDS % "extra_args"}', text, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _words(r.stdout) == words
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('--message "two words', "No closing quotation"),
        ("--data 'a b", "No closing quotation"),
        ("--seed 7 \\", "No escaped character"),
    ],
)
def test_malformed_extra_args_fail_with_one_line_naming_the_parameter(text, reason):
    r = _source(RUN_STAGE, 'split_args "$1"; echo "not reached"', text)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("run_stage: PARAM_EXTRA_ARGS ")
    assert reason in r.stderr


def _stage_env(tmp_path, **params):
    defaults = {
        "PARAM_WORKSPACE": "workspace",
        "PARAM_APP_DIR": ".",
        "PARAM_MODEL_NAME": "",
        "PARAM_EXTRA_ARGS": "",
    }
    return _env(tmp_path, **{**defaults, **params})


def test_stage_step_runs_tfship_with_quoted_extra_args_and_settings(tmp_path, stub_tfship):
    app = tmp_path / "app"
    app.mkdir()
    env = _stage_env(
        tmp_path,
        PARAM_STAGE="train",
        PARAM_APP_DIR=str(app),
        PARAM_MODEL_NAME="digits",
        PARAM_EPOCHS="3",
        PARAM_EXTRA_ARGS="--model-fn 'my models:build' --batch-size 8",
    )
    r = _run_as_circleci(RUN_STAGE, env, tmp_path)
    assert r.returncode == 0, r.stderr
    called = stub_tfship()
    assert called["argv"] == ["train", "--model-fn", "my models:build", "--batch-size", "8"]
    assert called["cwd"] == str(app)
    assert {
        k: called["env"].get(k) for k in ("TFSHIP_WORKSPACE", "MODEL_NAME", "TFSHIP_EPOCHS")
    } == {
        "TFSHIP_WORKSPACE": "workspace",
        "MODEL_NAME": "digits",
        "TFSHIP_EPOCHS": "3",
    }
    # The log line shows the words as tfship gets them, quoted where needed.
    assert r.stdout.splitlines()[0] == r"tfship train --model-fn my\ models:build --batch-size 8"


def test_stage_step_without_extra_args_runs_the_bare_stage(tmp_path, stub_tfship):
    r = _run_as_circleci(RUN_STAGE, _stage_env(tmp_path, PARAM_STAGE="build"), tmp_path)
    assert r.returncode == 0, r.stderr
    called = stub_tfship()
    assert called["argv"] == ["build"]
    assert "MODEL_NAME" not in called["env"]  # empty parameters leave tfship's defaults


def test_stage_step_names_the_known_hosts_variable_for_tfship_to_read(tmp_path, stub_tfship):
    # tfship reads the lines from the variable in memory: no known_hosts file is written.
    env = _stage_env(
        tmp_path,
        PARAM_STAGE="deploy",
        PARAM_KNOWN_HOSTS_ENV="HOSTS_LINES",
        PARAM_SSH_KEY_ENV="DEPLOY_KEY",
        HOSTS_LINES="deploy.example.com ssh-ed25519 AAAAC3Nza",
    )
    r = _run_as_circleci(RUN_STAGE, env, tmp_path)
    assert r.returncode == 0, r.stderr
    called = stub_tfship()
    assert called["known_hosts"] is None
    assert called["env"]["TFSHIP_KNOWN_HOSTS_ENV"] == "HOSTS_LINES"
    assert called["env"]["TFSHIP_SSH_KEY_ENV"] == "DEPLOY_KEY"


@pytest.mark.parametrize(("param", "project", "seen"), [
    ("true", None, "true"),
    ("false", None, None),
    ("false", "true", "true"),  # set in the project or a context: the parameter keeps it
])  # fmt: skip
def test_stage_step_sets_the_serving_tunnel_only_when_asked(
    tmp_path, stub_tfship, param, project, seen
):
    env = _stage_env(tmp_path, PARAM_STAGE="test-deployed", PARAM_SERVING_TUNNEL=param)
    if project:
        env["TFSHIP_SERVING_TUNNEL"] = project
    r = _run_as_circleci(RUN_STAGE, env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert stub_tfship()["env"].get("TFSHIP_SERVING_TUNNEL") == seen


@pytest.mark.parametrize(("stage", "param", "seen"), [
    ("retrain", "", None),  # the workspace's snapshot, which build resolved, not the project's
    ("retrain", "s3://b/new/", "s3://b/new/"),  # the job's own parameter wins
    ("build", "", "s3://b/snapshots/"),  # build reads the project's setting
])  # fmt: skip
def test_retrain_uses_the_workspace_snapshot_not_a_project_wide_tfship_data(
    tmp_path, stub_tfship, stage, param, seen
):
    env = _stage_env(tmp_path, PARAM_STAGE=stage, PARAM_DATA=param)
    env["TFSHIP_DATA"] = "s3://b/snapshots/"  # set in the project or a context, for build
    r = _run_as_circleci(RUN_STAGE, env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert stub_tfship()["env"].get("TFSHIP_DATA") == seen


def test_stage_step_fails_on_malformed_extra_args_before_running_tfship(tmp_path, stub_tfship):
    env = _stage_env(tmp_path, PARAM_STAGE="test", PARAM_EXTRA_ARGS='--min-accuracy "0.9')
    r = _run_as_circleci(RUN_STAGE, env, tmp_path)
    assert r.returncode == 2
    assert stub_tfship() is None
    assert r.stderr.count("\n") == 1 and "PARAM_EXTRA_ARGS" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


# --------------------------------------------------------------------------------------------
# install.sh
# --------------------------------------------------------------------------------------------

INSTALL = SCRIPTS / "install.sh"
UV_DIR = ROOT / ".tools" / "uv" / "bin"  # tools/setup.sh's uv
LOCKED = ["sync", "--locked", "--no-dev"]
SLIM = ["--python", "python3"]  # Python writes the bytecode of what a command imports
TRAIN = ["--python", "python3", "--compile-bytecode"]  # else each TensorFlow import compiles


def _project(folder: Path, *, lock: bool = True, train_extra: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    extras = (
        '[project.optional-dependencies]\ntrain = ["tensorflow"]\ncuda = ["tensorflow[and-cuda]"]\n'
        if train_extra
        else ""
    )
    (folder / "pyproject.toml").write_text(f'[project]\nname = "team"\n{extras}')
    if lock:
        (folder / "uv.lock").write_text("version = 1\n")
    return folder


@pytest.mark.parametrize(
    ("params", "lock", "train_extra", "words"),
    [
        ({"PARAM_TRAIN": "false"}, True, True, [*LOCKED, *SLIM]),
        ({"PARAM_TRAIN": "true"}, True, True, [*LOCKED, "--extra", "train", *TRAIN]),
        ({"PARAM_TRAIN": "true"}, True, False, [*LOCKED, *TRAIN]),
        ({"PARAM_TRAIN": "false"}, False, True, ["--constraint", "PINS", "tfship"]),
        ({"PARAM_TRAIN": "true"}, False, True, ["--constraint", "PINS", "tfship[train]"]),
        ({"PARAM_TRAIN": "false", "PARAM_PACKAGE": "tfship==0.2.0"}, True, True, ["tfship==0.2.0"]),
        (
            {"PARAM_TRAIN": "true", "PARAM_PACKAGE": "./dist/tfship-0.2.0-py3-none-any.whl"},
            False,
            True,
            ["./dist/tfship-0.2.0-py3-none-any.whl", "tfship[train]"],
        ),
        (
            {"PARAM_TRAIN": "true", "PARAM_CUDA": "true"},
            True,
            True,
            [*LOCKED, "--extra", "cuda", *TRAIN],
        ),
        # cuda implies training, whatever train says
        ({"PARAM_CUDA": "true"}, False, True, ["--constraint", "PINS", "tfship[cuda]"]),
    ],
    ids=[
        "lock-slim",
        "lock-train",
        "lock-without-train-extra",
        "release-slim",
        "release-train",
        "package-slim",
        "package-train",
        "lock-cuda",
        "release-cuda",
    ],
)
def test_install_chooses_lock_release_or_package_and_the_extra(
    tmp_path, params, lock, train_extra, words
):
    app = _project(tmp_path / "app", lock=lock, train_extra=train_extra)
    body = f"install_command VENV PINS && {PRINT_WORDS % 'INSTALL'}"
    r = _source(INSTALL, body, env=_env(tmp_path, **params), cwd=app)
    assert r.returncode == 0, r.stderr
    got = _words(r.stdout)
    if got[0] == "pip":  # a requirement: into the venv, bytecode compiled, then what was asked
        assert got[:4] == ["pip", "install", "--python", "VENV/bin/python"]
        compiled = "true" in (params.get("PARAM_TRAIN"), params.get("PARAM_CUDA"))
        assert (got[4] == "--compile-bytecode") == compiled
        got = got[4 + compiled :]
    assert got == words
    noted = lock and not train_extra and params.get("PARAM_TRAIN") == "true"
    assert ("declares no 'train' extra" in r.stderr) == noted, r.stderr


@pytest.mark.parametrize(("on_path", "used"), [
    ("0.13.9", True),  # the pinned release
    ("0.13.10", True),  # newer (compared as versions, not as text)
    ("0.21.0", True),  # an image's latest (cimg/python ships uv)
    ("0.12.4", False),  # older: pip installs the pinned one
    (None, False),  # none on PATH
])  # fmt: skip
def test_install_uses_an_images_uv_at_the_pinned_release_or_newer(tmp_path, on_path, used):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if on_path:
        fake = bin_dir / "uv"
        fake.write_text(f"#!/bin/sh\necho 'uv {on_path} (x86_64-unknown-linux-gnu)'\n")
        fake.chmod(0o755)
    env = _env(tmp_path, PARAM_UV_VERSION="0.13.9")
    env["PATH"] = f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"
    r = _source(INSTALL, "usable_uv", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (f"{bin_dir / 'uv'}\n" if used else "")


def test_install_step_skips_when_this_checkout_is_already_installed(tmp_path):
    # `tfship ci local` and warm self-hosted runners: the project's .venv imports this tfship.
    env = _env(tmp_path, PARAM_APP_DIR=str(ROOT), PARAM_UV_VERSION="0.0.0", PARAM_TRAIN="true")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["BASH_ENV"] = str(tmp_path / "bash_env")
    r = _run_as_circleci(INSTALL, env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("tfship from this checkout is already installed\n")
    assert not (tmp_path / "bash_env").exists()  # PATH left as it is


def test_install_step_installs_the_locked_slim_tfship_into_the_projects_venv(tmp_path):
    # Offline, from uv's cache (tools/setup.sh filled it from the same lock): the whole step
    # as CircleCI runs it, minus the registry.
    app = tmp_path / "project"
    app.mkdir()
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy2(ROOT / name, app / name)
    shutil.copytree(ROOT / "ml", app / "ml", ignore=shutil.ignore_patterns("__pycache__"))
    uv_version = (ROOT / "tools" / "uv-requirements.txt").read_text().split("==")[1].split()[0]
    env = _env(
        tmp_path,
        PARAM_APP_DIR=str(app),
        PARAM_TRAIN="false",
        PARAM_UV_VERSION=uv_version,
        PARAM_CONSTRAINTS=(SCRIPTS / "install_constraints.txt").read_text(),
        BASH_ENV=str(tmp_path / "bash_env"),
        UV_OFFLINE="1",
    )
    env.pop("VIRTUAL_ENV", None)
    # uv at the pinned version first on PATH (no bootstrap), and a python3 with no tfship.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(Path(sys._base_executable).resolve())
    (bin_dir / "uv").symlink_to(UV_DIR / "uv")
    r = _run_as_circleci(INSTALL, env, app)
    assert r.returncode == 0, r.stderr
    assert "uv sync --locked --no-dev --python python3\n" in r.stdout
    assert r.stdout.rstrip().endswith("tfship, version 0.1.0"), r.stdout
    venv = app / ".venv"
    assert (tmp_path / "bash_env").read_text() == f'export PATH="{venv}/bin:$PATH"\n'
    probe = "import importlib.util as u; print(u.find_spec('tensorflow'), u.find_spec('numpy'))"
    out = subprocess.run([venv / "bin" / "python", "-c", probe], capture_output=True, text=True)
    assert out.stdout.startswith("None ModuleSpec"), out  # slim: NumPy, no TensorFlow


# --------------------------------------------------------------------------------------------
# The guard: sourced by a test, a script defines its functions and runs nothing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "params"),
    [
        (NOTIFY, {"PARAM_EVENT": "always", "PARAM_WEBHOOK_ENV": "X", "PARAM_FORMAT": "slack"}),
        (RUN_STAGE, {"PARAM_STAGE": "build"}),
        (INSTALL, {"PARAM_UV_VERSION": "0.13.9", "PARAM_TRAIN": "true"}),
    ],
    ids=["notify", "run_stage", "install"],
)
def test_sourcing_a_script_with_the_marker_runs_nothing(tmp_path, stub_tfship, script, params):
    r = _source(script, "true", env=_env(tmp_path, **params), cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert stub_tfship() is None
