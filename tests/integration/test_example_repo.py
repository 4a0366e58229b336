"""The example team repository (examples/team_repo) end to end, as CircleCI would run it:
`tfship ci local` with the orb it references by version resolved from orb/src, its own
trainer and table, against real sshd and `tfship serve`.

New data: the setup config's plan continues, the retrain trains the team's model (a cold
start: nothing serves yet), the hold is approved, the package is deployed and verified; the
next day's snapshot fine-tunes that champion and its version serves next. The same data
again: the plan ends the pipeline green and nothing else runs. A broken snapshot (one
customer, half of the rows churned: no model is right about more than half of them, so the
0.9 gate fails by construction): nothing is deployed, the champion still serves.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests
from helpers import ROOT, start_serve, start_sshd

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

EXAMPLE = ROOT / "examples" / "team_repo"
MODEL = "churn"  # the model_name of every job in the example's configs
EPOCHS = "3"  # the team's data is apart by a margin: epoch 1 already separates it
CONTINUED = ["build", "retrain", "hold", "package", "deploy", "test_deployment"]


class Team:
    """The team's serving host (sshd + `tfship serve`) and where their snapshots arrive."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.sshd = start_sshd(tmp / "sshd")
        self.base = tmp / "models"
        (self.base / MODEL).mkdir(parents=True)
        self.served = start_serve(  # a fresh host: it listens once a first version loads
            tmp,
            "--model_name",
            MODEL,
            "--model_base_path",
            str(self.base / MODEL),
            "--file_system_poll_wait_seconds",
            "0.2",
            "--max_num_load_retries",
            "0",
            wait=False,
        )
        self.snapshots = tmp / "snapshots"  # TFSHIP_DATA: the data team drops CSVs here
        self.runs = 0

    def snapshot(self, path, *args: str):
        """A snapshot written by the team's own generator (churn_model.snapshot)."""
        subprocess.run(
            [sys.executable, "-m", "churn_model.snapshot", str(path), *args],
            cwd=EXAMPLE,
            check=True,
            capture_output=True,
        )
        return path

    def pipeline(self, *args: str, data_uri: str | None = None):
        """One pipeline of the team's repository, as the nightly schedule triggers it
        (retrain=true, data_uri: the snapshots folder, or ``data_uri``): its setup config,
        then what it continued with. (process, the --json document, every job's status).

        Every job here sees this one environment; in CircleCI a job sees its contexts only,
        and TFSHIP_DATA (context churn-data) would reach build but not retrain, which reads
        what build left in the workspace. So the snapshots' place comes with the trigger."""
        self.runs += 1
        env = self.sshd.env(
            DEPLOY_SERVER_PATH=str(self.base),
            TF_SERVING_URL=self.served.rest,
            TFSHIP_EPOCHS=EPOCHS,
        )
        args = ("--param", f"data_uri={data_uri or self.snapshots}", *args)
        p = subprocess.run(
            [sys.executable, "-m", "tfship", "ci", "local"]
            + ["--orb", f"tfship/tfship={ROOT / 'orb' / 'src'}", "--branch", "main"]
            + ["--param", "retrain=true", "--out", str(self.tmp / f"ci-{self.runs}"), "--json"]
            + list(args),
            cwd=EXAMPLE,
            env=env,
            capture_output=True,
            text=True,
            timeout=800,
        )
        doc = json.loads(p.stdout) if p.stdout.strip().startswith("{") else {}
        runs = [doc, *((doc.get("continued") or {}).get("workflows") or [])]
        statuses = {k: v["status"] for run in runs for k, v in run.get("jobs", {}).items()}
        return p, doc, statuses

    def serving(self) -> int:
        doc = requests.get(f"{self.served.rest}/v1/models/{MODEL}", timeout=5).json()
        return max(
            int(v["version"]) for v in doc["model_version_status"] if v["state"] == "AVAILABLE"
        )

    def churn_score(self, row: dict) -> float:
        """What the served model says of one customer: the score of class "yes"."""
        r = requests.post(
            f"{self.served.rest}/v1/models/{MODEL}:predict", json={"instances": [row]}, timeout=10
        )
        r.raise_for_status()
        (pred,) = r.json()["predictions"]
        return dict(zip(pred["classes"], pred["scores"], strict=True))["yes"]

    def stop(self):
        self.served.stop()
        self.sshd.stop()


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    t = Team(tmp_path_factory.mktemp("team"))
    t.snapshot(t.snapshots / "churn-2026-12-01.csv", "--seed", "1")
    t.first = t.pipeline("--approve", "hold")  # the expensive first deploy, shared
    t.first_version = t.serving() if t.first[0].returncode == 0 else None
    t.snapshot(t.snapshots / "churn-2026-12-02.csv", "--seed", "2")  # the next day's
    t.second = t.pipeline("--approve", "hold")
    yield t
    t.stop()


def test_new_data_is_retrained_approved_deployed_and_verified(team):
    p, doc, statuses = team.first
    assert p.returncode == 0, p.stderr[-4000:]
    assert doc["setup"] is True and doc["workflow"] == "plan"
    sent = doc["continued"]["parameters"]
    assert sent["new_data_uri"].startswith(f"{team.snapshots / 'churn-2026-12-01.csv'}#sha256=")
    assert [w["workflow"] for w in doc["continued"]["workflows"]] == ["retrain-deploy"]
    assert statuses == dict.fromkeys(["plan", *CONTINUED], "success")
    assert "no champion serving yet: retrain on" in p.stderr
    # The orb came from orb/src; nothing was installed (this orb's release is importable).
    assert "(this orb's release) is already installed" in p.stderr
    assert "trainer=churn_model.trainer" in p.stderr  # the team's model, not the default
    assert "[hold] approved" in p.stderr
    assert "serial-group local/project/deploy-churn" in p.stderr
    out = team.tmp / "ci-1" / "continued" / "retrain-deploy"
    (manifest,) = (out / "jobs" / "package" / "project" / "workspace" / "package").glob(
        "package.json"
    )
    assert team.first_version == json.loads(manifest.read_text())["version"]
    assert (out / "test-results" / "test_deployment" / "junit.xml").exists()
    # TF Serving is sent the raw columns; the served model tells a churner from a stayer.
    leaving = {"tenure_months": 2, "monthly_charges": 99.0, "support_calls": 10, "plan": "basic"}
    staying = {"tenure_months": 70, "monthly_charges": 30.0, "support_calls": 0, "plan": "premium"}
    assert team.churn_score(leaving) > 0.5 > team.churn_score(staying)


def test_the_next_snapshot_fine_tunes_the_champion_and_the_new_version_serves(team):
    p, doc, statuses = team.second
    assert p.returncode == 0, p.stderr[-4000:]
    assert statuses == dict.fromkeys(["plan", *CONTINUED], "success")
    assert f"differs from the champion's (v{team.first_version}" in p.stderr
    assert "churn-2026-12-02.csv" in doc["continued"]["parameters"]["new_data_uri"]
    # Fine-tuned from the champion TF Serving served (its saved model, no trainer import).
    assert f"[retrain] champion model={MODEL} version={team.first_version}" in p.stderr
    out = team.tmp / "ci-2" / "continued" / "retrain-deploy" / "jobs" / "retrain" / "project"
    decision = json.loads((out / "workspace" / "retrain" / "retrain.json").read_text())
    assert decision["strategy"] == "fine-tune"
    assert team.serving() > team.first_version


def test_the_same_data_again_ends_the_pipeline_green_with_nothing_else_run(team):
    champion = team.serving()
    p, doc, statuses = team.pipeline()  # no decision given: a hold would show as on_hold
    assert p.returncode == 0, p.stderr[-4000:]
    assert statuses == {"plan": "success"}  # no build, no retrain, no hold
    assert doc["continued"]["finished"] is True and doc["continued"]["workflows"] == []
    assert f"no new data since the champion (v{champion}, sha256" in p.stderr
    assert "approval" not in p.stderr.lower()
    assert team.serving() == champion


def test_a_challenger_that_fails_its_gates_deploys_nothing_and_the_champion_serves(team):
    champion = team.serving()
    broken = team.snapshot(team.tmp / "trigger" / "churn-broken.csv", "--broken")
    # The data team's trigger names the snapshot (data_uri) instead of the folder.
    p, doc, statuses = team.pipeline("--approve", "hold", data_uri=str(broken))
    assert p.returncode == 11, p.stderr[-4000:]
    assert doc["continued"]["parameters"]["new_data_uri"].startswith(f"{broken}#sha256=")
    assert statuses["plan"] == statuses["build"] == "success"
    assert statuses["retrain"] == "failed", statuses
    assert [statuses[j] for j in CONTINUED[2:]] == ["not_run"] * 4  # no hold, no deploy
    assert "job(s) failed: retrain-deploy/retrain" in p.stderr.splitlines()[-1]
    assert "challenger accuracy (absolute)" in p.stderr
    assert "[hold] approved" not in p.stderr
    assert team.serving() == champion
