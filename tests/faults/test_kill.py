"""`tfship deploy` killed with SIGKILL at any moment: nothing half-served, the next run recovers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import requests
from helpers import FAST_TRAIN, clean_env, make_version, run_cli, serve_model, start_sshd
from tfship.retrain import DECISION_FILE
from tfship.store import MANIFEST, verify_tree
from tfship.workspace import tree_hashes

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]


def _versions_are_whole(model_dir) -> list[int]:
    """Every numeric version folder holds exactly its manifest's files (else raises)."""
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    for v in versions:
        manifest = json.loads((model_dir / str(v) / MANIFEST).read_text())
        verify_tree(tree_hashes(model_dir / str(v)), manifest, str(v))
    return versions


def test_sigkill_at_any_point_of_a_deploy(packaged, tmp_path):
    sshd = start_sshd(tmp_path / "sshd")
    base = tmp_path / "models"
    (base / "digits").mkdir(parents=True)
    served = serve_model(tmp_path, base / "digits")
    env = sshd.env(DEPLOY_SERVER_PATH=str(base), TF_SERVING_URL=served.rest)
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    fast = ["--latency-requests", "3", "--wait-seconds", "20"]
    try:
        assert (
            run_cli(
                "deploy",
                "--package",
                str(make_version(packaged, pkgs, 2000)),
                *fast,
                cwd=tmp_path,
                env=env,
            ).code
            == 0
        )
        outcomes = []
        for i, delay in enumerate([0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.7, 2.0]):
            version = 3000 + i
            pkg = make_version(packaged, pkgs, version)
            proc = subprocess.Popen(
                [sys.executable, "-m", "tfship", "deploy", "--package", str(pkg), *fast],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            err = proc.stderr.read()
            outcomes.append(err.strip().splitlines()[-1][:80] if err.strip() else "(no output)")
            # Whatever moment it died at: no half version, and a whole one answers.
            versions = _versions_are_whole(base / "digits")
            doc = requests.get(f"{served.rest}/v1/models/digits", timeout=5).json()
            answering = max(
                int(s["version"]) for s in doc["model_version_status"] if s["state"] == "AVAILABLE"
            )
            assert answering in versions
            # The next run recovers: a dead process's lock is broken, leftovers cleaned.
            r = run_cli("deploy", "--package", str(pkg), *fast, cwd=tmp_path, env=env)
            assert r.code == 0, (delay, r.err)
            assert not [
                p
                for p in (base / "digits").iterdir()
                if p.name.startswith((".incoming-", ".tfship-lock"))
            ]
        assert len(set(outcomes)) > 2  # the kills landed at different steps
    finally:
        served.stop()
        sshd.stop()


def test_sigkill_at_any_point_of_a_retrain(packaged, tmp_path):
    """Killed anywhere, a retrain leaves no decision without its model, nothing half-written."""
    import shutil

    root = tmp_path / "site"
    shutil.copytree(packaged, root)
    served = serve_model(tmp_path, root / "store" / "digits")
    env = clean_env(TF_SERVING_URL=served.rest)
    args = ["retrain", "--data", "snaps/new.npz", *FAST_TRAIN]
    try:
        assert run_cli("snapshot", "snaps/new.npz", "--seed", "3", cwd=root, env=env).code == 0
        decisions = []
        for delay in (1.0, 4.0, 6.0, 8.0, 10.0, 14.0):
            proc = subprocess.Popen(
                [sys.executable, "-m", "tfship", *args],
                cwd=root,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            ws = root / "workspace"
            decision = ws / "retrain" / DECISION_FILE
            if decision.exists():  # a decision is only ever there with what it speaks of
                d = json.loads(decision.read_text())
                decisions.append(d["decision"])
                assert (ws / "model").exists() == (d["decision"] != "keep-champion"), d
            stored = (root / "store" / "digits").iterdir()
            assert sorted(p.name for p in stored if p.name != ".history") == ["1000"]
            assert _versions_are_whole(root / "store" / "digits") == [1000]
        assert decisions, "no kill landed after a decision was written"
        r = run_cli(*args, "--json", cwd=root, env=env)
        assert r.code == 0, r.err
        assert json.loads(r.out)["decision"] == "deploy-challenger"
        ws = root / "workspace"
        assert (ws / "model").exists()
        assert not [p.name for p in ws.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    finally:
        served.stop()
