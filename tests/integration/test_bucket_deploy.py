"""Stage 5 to an ``s3://`` model base path that two TF Serving replicas read (a real S3
service, SeaweedFS, and two `tfship serve --model_base_path s3://...` on loopback).

The deploy uploads to ``.incoming-*`` (not a version: TF Serving ignores it), checks every
object's hash, copies ``saved_model.pb`` last, verifies through each replica, and rolls back
by moving the version to ``.rejected/`` until the previous one answers everywhere. The store
of record in the same bucket keeps the history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from helpers import Served, Weed, make_version, run_cli, start_serve
from tfship import s3

pytestmark = pytest.mark.timeout(300)
FAST = ["--latency-requests", "5", "--max-p95-ms", "5000", "--wait-seconds", "40", "--json"]


@dataclass
class Bucket:
    weed: Weed
    name: str
    replicas: list[Served]
    pkgs: Path

    def env(self, **extra: str) -> dict[str, str]:
        return self.weed.env(
            DEPLOY_SERVER_PATH=f"s3://{self.name}/models",
            TF_SERVING_URL=",".join(r.rest for r in self.replicas),
            TFSHIP_STORE=f"s3://{self.name}/registry",
            **extra,
        )

    def cli(self, *args: str, env: dict | None = None):
        return run_cli(*args, cwd=self.pkgs, env=env or self.env())

    def deploy(self, version: int, *args: str):
        return self.cli("deploy", "--package", str(self.pkgs / str(version)), *FAST, *args)

    def serving(self) -> list[int]:
        out = []
        for r in self.replicas:
            doc = requests.get(f"{r.rest}/v1/models/digits", timeout=5).json()
            states = doc["model_version_status"]
            out.append(max(int(v["version"]) for v in states if v["state"] == "AVAILABLE"))
        return out

    def keys(self, prefix: str) -> list[str]:
        return sorted(o["Key"] for o in s3.S3Host(self.name).keys(prefix))

    def numeric(self) -> list[int]:
        names = s3.S3Host(self.name).listdir("models/digits")
        return sorted(int(n) for n in names if n.isdigit())


@pytest.fixture
def buck(weed, bucket, packaged, tmp_path):
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    for v in (2000, 3000, 4000):
        make_version(packaged, pkgs, v)
    replicas = [
        start_serve(
            tmp_path,
            "--model_name",
            "digits",
            "--model_base_path",
            f"s3://{bucket}/models/digits",
            "--file_system_poll_wait_seconds",
            "0.5",
            # a replica that lists the version mid-copy (before saved_model.pb, copied last)
            # fails that load and retries it, as TF Serving does: retries must be on
            "--max_num_load_retries",
            "3",
            "--load_retry_interval_micros",
            "500000",
            wait=False,
        )
        for _ in range(2)
    ]
    yield Bucket(weed, bucket, replicas, pkgs)
    for r in replicas:
        r.stop()


def test_a_bucket_deploy_serves_on_every_replica_and_is_recorded(buck):
    r = buck.deploy(2000)
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["state"] == "deployed" and result["previous"] is None
    # every replica's own checks, in TF_SERVING_URL's order
    assert [f["url"] for f in result["replicas"]] == [x.rest for x in buck.replicas]
    assert all(f["golden_max_abs_diff"] <= 1e-4 for f in result["replicas"])
    assert buck.serving() == [2000, 2000]
    objects = buck.keys("models/digits")
    assert objects and all(k.startswith("models/digits/2000/") for k in objects)  # no leftovers
    r = buck.deploy(3000)
    assert r.code == 0, r.err
    assert buck.serving() == [3000, 3000]
    assert json.loads(r.out)["previous"] == 2000
    history = json.loads(buck.cli("history", "--json").out)["history"]
    assert [(e["event"], e["version"]) for e in history] == [("deployed", 2000), ("deployed", 3000)]
    assert history[1]["previous"] == 2000

    r = buck.cli("rollback", "--wait-seconds", "40", "--json")
    assert r.code == 0, r.err
    assert buck.serving() == [2000, 2000]
    assert buck.numeric() == [2000]
    assert any(k.startswith("models/digits/.rejected/3000-") for k in buck.keys("models/digits"))
    history = json.loads(buck.cli("history", "--json").out)["history"]
    assert (history[-1]["event"], history[-1]["version"]) == ("rolled-back", 2000)


def test_a_version_that_fails_to_load_is_rejected_and_the_previous_keeps_serving(buck, packaged):
    assert buck.deploy(2000).code == 0
    make_version(packaged, buck.pkgs, 4000, corrupt=True)
    r = buck.deploy(4000)
    assert r.code == 4, r.err
    assert "rolled back" in r.err_lines[-1] and "Serving now: version 2000" in r.err_lines[-1]
    assert buck.serving() == [2000, 2000]
    assert buck.numeric() == [2000]
    history = json.loads(buck.cli("history", "--json").out)["history"]
    assert history[-1]["event"] == "rejected" and history[-1]["version"] == 4000
    assert "failed" in history[-1]["reason"]


def test_a_bucket_target_needs_the_replicas_urls(buck):
    env = buck.env()
    del env["TF_SERVING_URL"]
    r = buck.cli("deploy", "--package", str(buck.pkgs / "2000"), env=env)
    assert r.code == 2 and "TF_SERVING_URL" in r.err and len(r.err_lines) == 1


def test_wrong_credentials_or_a_missing_bucket_stop_a_deploy_in_one_line(buck):
    """Through `tfship deploy` to a bucket, as a CircleCI job with a wrong secret or a typo in
    the bucket's name meets them: one line naming the problem and the fix, its exit code,
    the secret never printed, nothing placed or recorded."""
    assert buck.deploy(2000).code == 0
    before = buck.keys("")
    env = buck.env(AWS_SECRET_ACCESS_KEY="wrong-secret-value")
    r = buck.cli("deploy", "--package", str(buck.pkgs / "3000"), *FAST, env=env)
    assert r.code == 2, r.err
    assert "refused the credentials" in r.err_lines[-1] and "AWS_SECRET_ACCESS_KEY" in r.err
    assert "wrong-secret-value" not in r.out + r.err and "Traceback" not in r.err
    env = {**buck.env(), "DEPLOY_SERVER_PATH": "s3://no-such-deploy-bucket/models"}
    r = buck.cli("deploy", "--package", str(buck.pkgs / "3000"), *FAST, env=env)
    assert r.code == 8 and "the bucket does not exist" in r.err_lines[-1], r.err
    assert "Traceback" not in r.err
    assert buck.keys("") == before and buck.serving() == [2000, 2000]
