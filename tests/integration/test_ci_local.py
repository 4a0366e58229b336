"""`tfship ci local` runs the project's own configs and orb against real sshd and tfship serve:
the setup config (.circleci/config.yml) continuing with .circleci/continue.yml, and that
config's workflows by name."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests
from helpers import FIXTURES, ROOT, TRAIN_EPOCHS, serve_model, start_sshd

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


class Site:
    def __init__(self, tmp):
        self.tmp = tmp
        self.sshd = start_sshd(tmp / "sshd")
        self.base = tmp / "models"
        (self.base / "digits").mkdir(parents=True)
        self.served = serve_model(tmp, self.base / "digits")
        self.runs = 0

    def local(self, workflow: str | None, *args: str, **env: str):
        """Run a workflow of continue.yml by name, or (None) the setup config as CircleCI
        does: its setup workflow, then what it continued with. Statuses are the jobs' of
        the named workflow, or of the setup workflow and every continued one together."""
        self.runs += 1
        out = self.tmp / f"ci-{self.runs}"
        e = self.sshd.env(
            DEPLOY_SERVER_PATH=str(self.base),
            TF_SERVING_URL=self.served.rest,
            TFSHIP_EPOCHS=str(TRAIN_EPOCHS),
            **env,
        )
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "tfship",
                "ci",
                "local",
                *([workflow, "--config", ".circleci/continue.yml"] if workflow else []),
                "--branch",
                "main",
                "--out",
                str(out),
                "--json",
                *args,
            ],
            cwd=ROOT,
            env=e,
            capture_output=True,
            text=True,
            timeout=500,
        )
        doc = json.loads(p.stdout) if p.stdout.strip().startswith("{") else {}
        runs = [doc, *((doc.get("continued") or {}).get("workflows") or [])]
        statuses = {k: v["status"] for run in runs for k, v in run.get("jobs", {}).items()}
        self.last = doc
        return p, statuses, out

    def serving(self) -> int:
        doc = requests.get(f"{self.served.rest}/v1/models/digits", timeout=5).json()
        return max(
            int(v["version"]) for v in doc["model_version_status"] if v["state"] == "AVAILABLE"
        )

    def stop(self):
        self.served.stop()
        self.sshd.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = Site(tmp_path_factory.mktemp("cilocal"))
    p, statuses, out = s.local(None)  # a push: the setup config continues with build-deploy
    s.first = (p, statuses, out, s.last)
    yield s
    s.stop()


def test_a_push_continues_with_build_deploy_which_leaves_the_model_served_and_verified(site):
    p, statuses, out, doc = site.first
    assert p.returncode == 0, p.stderr[-3000:]
    assert doc["workflow"] == "continue" and doc["setup"] is True
    assert doc["continued"]["parameters"] == {}  # no trigger parameters; the job sent none
    assert [w["workflow"] for w in doc["continued"]["workflows"]] == ["build-deploy"]
    assert statuses == dict.fromkeys(
        ["continue", "build", "train", "test", "package", "deploy", "test_deployment"], "success"
    )
    assert "serial-group local/project/deploy" in p.stderr
    out = out / "continued" / "build-deploy"
    package = json.loads(
        next(
            (out / "jobs" / "package" / "project" / "workspace" / "package").glob("package.json")
        ).read_text()
    )
    assert site.serving() == package["version"]
    assert (out / "test-results" / "test" / "junit.xml").exists()
    assert (out / "test-results" / "test_deployment" / "junit.xml").exists()
    assert (out / "artifacts" / "test").rglob("report.md")
    assert "Executors are not containers here" in p.stderr


def test_the_nightly_plan_retrains_on_new_data_and_ends_green_on_the_same_data(site, tmp_path):
    champion = site.serving()
    snap = tmp_path / "snap.npz"
    subprocess.run(
        [sys.executable, "-m", "tfship", "snapshot", str(snap), "--seed", "4"],
        check=True,
        capture_output=True,
    )
    nightly = ("--param", "retrain=true", "--param", f"data_uri={snap}", "--approve", "hold")
    p, statuses, _ = site.local(None, *nightly)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = site.last
    assert doc["workflow"] == "plan" and doc["setup"] is True
    sent = doc["continued"]["parameters"]
    # The trigger's carry over; the plan job sent only the snapshot it resolved.
    assert sent["retrain"] is True and sent["data_uri"] == str(snap)
    assert sent["new_data_uri"].startswith(f"{snap}#sha256=")
    assert [w["workflow"] for w in doc["continued"]["workflows"]] == ["retrain-deploy"]
    assert set(statuses.values()) == {"success"} and "hold" in statuses
    challenger = site.serving()
    assert challenger > champion

    p, statuses, _ = site.local(None, *nightly)  # the same snapshot again
    assert p.returncode == 0, p.stderr[-3000:]
    assert statuses == {"plan": "success"}  # no build, no retrain, no hold
    assert site.last["continued"]["workflows"] == [] and site.last["continued"]["finished"]
    assert f"no new data since the champion (v{challenger}" in p.stderr
    assert site.serving() == challenger


def test_reject_deploys_nothing_and_no_decision_leaves_the_hold_on_hold(site, tmp_path):
    before = site.serving()
    snap = tmp_path / "snap.npz"
    subprocess.run(
        [sys.executable, "-m", "tfship", "snapshot", str(snap), "--seed", "6"],
        check=True,
        capture_output=True,
    )
    args = ("--param", "retrain=true", "--param", f"new_data_uri={snap}")
    loose = {"TFSHIP_RETRAIN_TOLERANCE": "0.05"}  # this test is about the hold, not the gate
    p, statuses, _ = site.local("retrain-deploy", *args, "--reject", "hold", **loose)
    assert p.returncode == 0, p.stderr[-3000:]
    assert statuses["hold"] == "canceled"
    assert [statuses[j] for j in ("package", "deploy", "test_deployment")] == ["not_run"] * 3
    assert site.serving() == before
    p, statuses, _ = site.local("retrain-deploy", *args, **loose)
    assert p.returncode == 0
    assert statuses["hold"] == "on_hold" and statuses["package"] == "blocked"
    assert site.serving() == before


def test_a_failed_gate_stops_the_workflow_and_the_hook_reports_it(site, webhook):
    url, received = webhook
    before = site.serving()
    p, statuses, _ = site.local(  # a model that always answers 0: fails by construction
        "build-deploy",
        TFSHIP_MODEL_FN="user_models:always_class_zero",
        PYTHONPATH=str(FIXTURES),
        TFSHIP_WEBHOOK_URL=url,
        MODEL_NAME="digits",
    )
    assert p.returncode == 11, p.stderr[-3000:]
    assert statuses.get("test") == "failed", (statuses, p.stdout[-2000:], p.stderr[-3000:])
    assert [statuses[j] for j in ("package", "deploy", "test_deployment")] == ["not_run"] * 3
    assert "job(s) failed: test" in p.stderr.splitlines()[-1]
    assert len(received) == 1
    text = received[0]["text"]
    assert "tfship test failed" in text and "accuracy: 0." in text
    assert ">= 0.9 FAILED (missed by" in text
    assert site.serving() == before
