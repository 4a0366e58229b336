"""Shared fixtures: the CLI runner and one trained package per session."""

from __future__ import annotations

import http.server
from pathlib import Path

import pytest
from helpers import FAST_TRAIN, loopback_http, run_cli, start_sshd


@pytest.fixture
def cli(tmp_path):
    """``cli(*args)`` runs the CLI in a fresh folder."""

    def _run(*args: str, **kw):
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
        ["test"],  # the default gates: FAST_TRAIN clears them with margin
        ["package", "--version", "1000"],
    ):
        r = run_cli(*stage, cwd=root)
        assert r.code == 0, f"{stage}: {r.err}"
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
