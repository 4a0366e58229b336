"""Shared fixtures: the CLI runner and one trained package per session."""

from __future__ import annotations

import fcntl
import http.server
import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import FAST_TRAIN, loopback_http, run_cli, start_sshd

# TensorFlow reads this once, when the first test in a worker imports it (a test module may
# import tensorflow before tfship's log.quiet_tensorflow has set it). Set here, a training
# run in-process gives the same numbers whatever ran before it in this worker, as the CLI's
# processes do: with oneDNN's reordered sums, test_gate_margin measured other margins in CI
# (class_drop +0.023) than in a fresh process (+0.041).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


@pytest.fixture
def cli(tmp_path):
    """``cli(*args)`` runs the CLI in a fresh folder."""

    def _run(*args: str, **kw):
        kw.setdefault("cwd", tmp_path)
        return run_cli(*args, **kw)

    return _run


def _package_into(root: Path) -> None:
    """Stages 1-4 in ``root``: build, train, test, package version 1000."""
    for stage in (
        ["build"],
        ["train", *FAST_TRAIN],
        ["test"],  # the default gates: FAST_TRAIN clears them with margin
        ["package", "--version", "1000"],
    ):
        r = run_cli(*stage, cwd=root)
        assert r.code == 0, f"{stage}: {r.err}"


@pytest.fixture(scope="session")
def packaged(tmp_path_factory, worker_id) -> Path:
    """A folder whose workspace/ and store/ hold a trained, tested, packaged model (stages 1-4).

    Under pytest-xdist the workers share one training (the first worker to ask trains, under
    a lock, in the run's common temp folder) and each gets its own copy, as each had its own
    folder before: a test that changes its copy changes nothing another worker sees.
    """
    root = tmp_path_factory.mktemp("pipeline")
    if worker_id == "master":  # not under xdist
        _package_into(root)
        return root
    shared = tmp_path_factory.getbasetemp().parent / "packaged"
    with open(tmp_path_factory.getbasetemp().parent / "packaged.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (shared / ".complete").exists():
            shutil.rmtree(shared, ignore_errors=True)
            shared.mkdir()
            _package_into(shared)
            (shared / ".complete").touch()
    shutil.copytree(shared, root, dirs_exist_ok=True, symlinks=True)
    (root / ".complete").unlink()
    return root


@pytest.fixture
def http_dir(tmp_path):
    """Serve ``tmp_path/www`` on a loopback port; yield (base_url, folder)."""
    www = tmp_path / "www"
    www.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(www), **kw)

        def log_message(self, *a):
            pass

    with loopback_http(Handler) as base:
        yield base, www


@pytest.fixture
def webhook():
    """A Slack-like incoming webhook on loopback: yields (url, bodies), each POST's JSON body
    recorded; it answers 200 "ok" as Slack does. The URL's path holds a secret part, as
    Slack's do: tests check that it is never printed."""
    bodies: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *a) -> None:
            pass

    with loopback_http(Handler) as base:
        yield f"{base}/services/T0000/B0000/secret-part", bodies


@pytest.fixture
def api():
    """The CircleCI API v2 stand-in on loopback; a request off the OpenAPI spec fails the test."""
    from circleci_standin import StandIn

    s = StandIn()
    yield s
    s.close()
    assert s.state.violations == [], s.state.violations


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """OpenSSH sshd on a loopback port with generated keys, one per test module."""
    s = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def weed(tmp_path_factory):
    """A real S3 service (SeaweedFS `weed server -s3`) on loopback, one per test session."""
    from helpers import start_weed

    w = start_weed(tmp_path_factory.mktemp("weed"))
    yield w
    w.stop()


@pytest.fixture
def bucket(weed, request, monkeypatch):
    """A fresh bucket for one test, with this process's environment pointing at the service."""
    import re
    import secrets

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = weed.make_bucket(f"{name}-{secrets.token_hex(3)}")
    for key, value in weed.env().items():
        if key.startswith(("S3_", "AWS_")):
            monkeypatch.setenv(key, value)
    return name
