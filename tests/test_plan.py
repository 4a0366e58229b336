"""`tfship ci plan`: a setup workflow continues the pipeline only when the data is new.

The rule (:func:`tfship.ci.plan.decide`) alone, then the command against real components: a
champion packaged by `tfship package` and served by `tfship serve`, the store of record, and
the CircleCI stand-in's continuePipeline (checked against the OpenAPI document).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import clean_env, run_cli, serve_model, write_npz
from tfship.ci.plan import CONTINUE, END, FINISH_CONFIG, ChampionData, decide
from tfship.ci.watch import Snapshot

pytestmark = pytest.mark.timeout(240)

SHA_A, SHA_B = "a" * 64, "b" * 64
SNAP = Snapshot("s3://data/snaps/2026-11-02.csv", SHA_A)

# ---- the rule -------------------------------------------------------------------------------


def test_new_data_continues_with_retrain_and_the_data_uri():
    plan = decide(SNAP, ChampionData(3, SHA_B), "s3://data/snaps/")
    assert plan.action == CONTINUE
    assert plan.parameters == {"new_data_uri": f"{SNAP.uri}#sha256={SHA_A}"}
    assert "differs from the champion's (v3, sha256 bbbbbbbbbbbbbbbb...)" in plan.reason


def test_the_champions_own_data_ends_the_pipeline_saying_so():
    plan = decide(SNAP, ChampionData(3, SHA_A), "s3://data/snaps/")
    assert plan.action == END and plan.parameters == {}
    assert plan.reason == "no new data since the champion (v3, sha256 aaaaaaaaaaaaaaaa...)"


def test_no_champion_yet_continues():
    plan = decide(SNAP, None, "s3://data/snaps/")
    assert plan.action == CONTINUE and plan.parameters["new_data_uri"] == SNAP.data_uri


def test_a_champion_without_a_recorded_data_sha256_continues_and_retrain_compares():
    plan = decide(SNAP, ChampionData(2, None), "s3://data/snaps/")
    assert plan.action == CONTINUE and "does not record its data's sha256" in plan.reason


def test_no_snapshot_at_all_ends():
    plan = decide(None, ChampionData(3, SHA_A), "s3://data/snaps/")
    assert plan.action == END and plan.reason.startswith("no snapshot at s3://data/snaps/")


# ---- the command, against real components ---------------------------------------------------

SETUP_PIPELINE = "5034460f-c7c4-4c43-9457-de07e2029e7b"
CONTINUE_YML = """\
version: 2.1
parameters:
  retrain: {type: boolean, default: false}
  data_uri: {type: string, default: ""}
  new_data_uri: {type: string, default: ""}
jobs:
  retrain:
    docker: [{image: cimg/python:3.11}]
    steps: [{run: {name: retrain, command: "echo << pipeline.parameters.new_data_uri >>"}}]
workflows:
  retrain-deploy:
    when: << pipeline.parameters.retrain >>
    jobs: [retrain]
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_npz(path, rng.integers(0, 255, (40, 8, 8), dtype=np.uint8), np.arange(40) % 4)


@pytest.fixture(scope="module")
def champion(packaged, tmp_path_factory):
    """Version 7 of digits, packaged by `tfship package` from a workspace whose data came from
    snaps/2026-11-01.npz, in the store of record and served by `tfship serve`."""
    root = tmp_path_factory.mktemp("plan")
    first = snapshot(root / "snaps" / "2026-11-01.npz", 1)
    shutil.copytree(packaged / "workspace", root / "workspace")
    data_manifest = root / "workspace" / "data" / "manifest.json"
    manifest = json.loads(data_manifest.read_text())
    data_manifest.write_text(json.dumps({**manifest, "data_sha256": sha256(first)}))
    r = run_cli("package", "--version", "7", "--store", "store", cwd=root)
    assert r.code == 0, r.err
    shutil.copytree(root / "store" / "digits" / "7", root / "serving" / "digits" / "7")
    served = serve_model(root, root / "serving" / "digits")
    yield root, served
    served.stop()


def plan(root: Path, served, *args: str, **env: str):
    settings = {
        "TFSHIP_DATA": str(root / "snaps"),
        "TFSHIP_STORE": "store",
        "DEPLOY_SERVER_PATH": "serving",
        "TF_SERVING_URL": served.rest,
    }
    cmd = [sys.executable, "-X", "importtime", "-m", "tfship", "ci", "plan", "--json", *args]
    proc = subprocess.run(
        cmd, cwd=root, env=clean_env(**settings, **env), capture_output=True, text=True, timeout=60
    )
    assert "tensorflow" not in proc.stderr and "keras" not in proc.stderr  # never imported
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("import time:")]
    return proc.returncode, proc.stdout, lines


def test_plan_ends_on_the_champions_data_and_continues_on_a_new_snapshot(champion, api):
    root, served = champion
    code, out, err = plan(root, served)
    assert code == 0, err
    done = json.loads(out)
    assert done["action"] == "end" and done["champion"]["version"] == 7
    assert done["reason"].startswith("no new data since the champion (v7, sha256 ")

    newest = snapshot(root / "snaps" / "2026-11-02.npz", 2)
    try:
        code, out, err = plan(root, served)
        assert code == 0, err
        done = json.loads(out)
        assert done["action"] == "continue"
        assert done["parameters"] == {"new_data_uri": f"{newest}#sha256={sha256(newest)}"}
    finally:
        newest.unlink()


def test_plan_continue_sends_the_config_and_the_data_uri_and_never_prints_the_key(champion, api):
    root, served = champion
    config = root / ".circleci" / "continue.yml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(CONTINUE_YML)
    newest = snapshot(root / "snaps" / "2026-11-03.npz", 3)
    uri = f"{newest}#sha256={sha256(newest)}"
    key = api.state.continuation_key(SETUP_PIPELINE)
    try:
        code, out, err = plan(
            root, served, "--continue", CIRCLE_CONTINUATION_KEY=key, CIRCLECI_API_URL=api.url
        )
    finally:
        newest.unlink()
    assert code == 0, err
    assert key not in out and all(key not in line for line in err)
    assert json.loads(out)["continued"] == "retrain"
    assert api.state.continued[SETUP_PIPELINE] == {
        "configuration": CONTINUE_YML,
        "parameters": {"new_data_uri": uri},
    }


def test_plan_continue_on_unchanged_data_finishes_the_pipeline_green(champion, api):
    root, served = champion
    key = api.state.continuation_key(SETUP_PIPELINE)
    code, out, err = plan(
        root, served, "--continue", CIRCLE_CONTINUATION_KEY=key, CIRCLECI_API_URL=api.url
    )
    assert code == 0, err
    assert json.loads(out)["continued"] == "finished"
    # the continuation orb's `finish`: a configuration with no workflow, no parameters
    assert api.state.continued[SETUP_PIPELINE] == {"configuration": FINISH_CONFIG, "parameters": {}}


def test_plan_refuses_a_continue_config_that_does_not_declare_new_data_uri(champion, api, tmp_path):
    root, served = champion
    config = tmp_path / "continue.yml"
    config.write_text(CONTINUE_YML.replace('  new_data_uri: {type: string, default: ""}\n', ""))
    newest = snapshot(root / "snaps" / "2026-11-04.npz", 4)
    key = api.state.continuation_key(SETUP_PIPELINE)
    try:
        code, out, err = plan(
            root,
            served,
            "--continue",
            "--continue-config",
            str(config),
            CIRCLE_CONTINUATION_KEY=key,
            CIRCLECI_API_URL=api.url,
        )
    finally:
        newest.unlink()
    assert code == 2
    assert "declares no pipeline parameter new_data_uri" in err[-1] and len(err) <= 2, err
    assert api.state.continued == {}  # nothing sent: the key is still good


def test_plan_with_nothing_serving_yet_continues(tmp_path):
    snap = snapshot(tmp_path / "snaps" / "2026-11-01.npz", 1)
    r = run_cli(
        "ci",
        "plan",
        "--json",
        "--data",
        str(tmp_path / "snaps"),
        "--base-path",
        str(tmp_path / "empty-serving"),
        cwd=tmp_path,
        env=clean_env(TF_SERVING_URL="http://127.0.0.1:9"),  # no server: a fresh host
        timeout=60,
    )
    assert r.code == 0, r.err
    done = json.loads(r.out)
    assert done["action"] == "continue" and done["champion"] is None
    assert done["parameters"]["new_data_uri"] == f"{snap}#sha256={sha256(snap)}"


def test_plan_continue_outside_a_setup_workflow_is_one_line(tmp_path):
    r = run_cli("ci", "plan", "--continue", "--data", str(tmp_path), cwd=tmp_path, timeout=60)
    assert r.code == 2
    assert (
        r.err_lines == [r.err_lines[-1]] and "CIRCLE_CONTINUATION_KEY is not set" in r.err_lines[-1]
    )


def test_plan_without_a_data_source_says_where_to_set_it(tmp_path):
    r = run_cli("ci", "plan", cwd=tmp_path, timeout=60)
    assert r.code == 2 and "set TFSHIP_DATA (or --data)" in r.err_lines[-1], r.err
