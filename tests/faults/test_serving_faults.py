"""Serving faults during a deploy and in stage 7: 503s (bounded retries, then rollback), a model
that answers NaN, a model that answers the wrong shape.

A proxy in front of a real `tfship serve` breaks the answers of the version being deployed only,
so what is checked is the client and the verification, with TF Serving's own wire format.
"""

from __future__ import annotations

import json

import pytest
import requests
from fault_proxy import FaultProxy
from helpers import clean_env, make_version, run_cli, serve_model
from tfship.store import MANIFEST

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
FAST = ["--latency-requests", "5", "--wait-seconds", "20"]


@pytest.fixture
def site(packaged, tmp_path):
    base = tmp_path / "models"
    (base / "digits").mkdir(parents=True)
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    for v in (2000, 3000):
        make_version(packaged, pkgs, v)
    served = serve_model(tmp_path, base / "digits")
    proxies: list[FaultProxy] = []

    class Site:
        def proxy(self, mode: str) -> FaultProxy:
            p = FaultProxy(served.rest, 3000, mode)
            proxies.append(p)
            return p

        def deploy(self, version: int, url: str, *args: str):
            env = clean_env(DEPLOY_SERVER_PATH=str(base), TF_SERVING_URL=url)
            return run_cli(
                "deploy",
                "--package",
                str(pkgs / str(version)),
                *FAST,
                *args,
                cwd=tmp_path,
                env=env,
            )

        def serving(self) -> int:
            doc = requests.get(f"{served.rest}/v1/models/digits", timeout=5).json()
            return max(
                int(v["version"]) for v in doc["model_version_status"] if v["state"] == "AVAILABLE"
            )

        def numeric(self) -> list[int]:
            return sorted(int(p.name) for p in (base / "digits").iterdir() if p.name.isdigit())

    s = Site()
    r = s.deploy(2000, served.rest)
    assert r.code == 0, r.err
    yield s
    for p in proxies:
        p.close()
    served.stop()


def test_intermittent_503s_are_retried_and_the_deploy_succeeds(site):
    proxy = site.proxy("503 every 3")
    # A retried request includes its backoff (0.2 s, then 0.4 s): a latency gate sees it.
    r = site.deploy(3000, proxy.url, "--max-p95-ms", "2000")
    assert r.code == 0, r.err
    assert proxy.broken >= 3  # the faults were really there
    assert site.serving() == 3000 and site.numeric() == [2000, 3000]


def test_persistent_503s_end_in_a_rollback(site):
    proxy = site.proxy("503 always")
    r = site.deploy(3000, proxy.url)
    assert r.code == 4, r.err
    line = r.err_lines[-1]
    assert "rolled back" in line and "503" in line and "Serving now: version 2000" in line, line
    assert proxy.broken == 4  # one request and 3 retries: bounded
    assert site.serving() == 2000 and site.numeric() == [2000]


@pytest.mark.parametrize(
    ("mode", "needle"),
    [
        ("nan", "outputs are NaN or infinite"),
        ("shape", "outputs of shape [8, 9], expected [8, 10]"),
    ],
)
def test_a_model_answering_nan_or_the_wrong_shape_is_caught_and_rolled_back(site, mode, needle):
    proxy = site.proxy(mode)
    r = site.deploy(3000, proxy.url)
    assert r.code == 4, r.err
    line = r.err_lines[-1]
    assert needle in line and "rolled back" in line and "Traceback" not in r.err, line
    assert proxy.broken >= 1
    assert site.serving() == 2000 and site.numeric() == [2000]


@pytest.mark.parametrize("mode", ["nan", "shape"])
def test_stage_7_reports_nan_or_wrong_shape_answers_as_a_failed_verification(
    site, packaged, tmp_path, mode
):
    direct = site.proxy("none")
    assert site.deploy(3000, direct.url).code == 0
    proxy = site.proxy(mode)
    manifest = tmp_path / "pkgs" / "3000" / MANIFEST
    r = run_cli(
        "test-deployed",
        "--manifest",
        str(manifest),
        "--latency-requests",
        "3",
        cwd=tmp_path,
        env=clean_env(TF_SERVING_URL=proxy.url),
    )
    assert r.code == 6, r.err
    assert "deployed model failed verification" in r.err_lines[-1]
    assert "Traceback" not in r.err
    report = json.loads((tmp_path / "workspace" / "deployed" / "verify.json").read_text())
    failed = {c["name"] for c in report["checks"] if not c["passed"]}
    assert {"golden outputs max abs diff", "served accuracy"} <= failed
