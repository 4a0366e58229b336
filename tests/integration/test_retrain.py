"""Stage 6 and `tfship run` against `tfship serve`: the champion is what is actually serving."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from helpers import FAST_TRAIN, Served, clean_env, run_cli, serve_model

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
TINY = FAST_TRAIN  # clears the default gates with margin (tests/test_gate_margin.py)
VERIFY = ["--latency-requests", "5"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """A folder after `tfship run`: workspace, store and serving/ with one deployed version."""
    root = tmp_path_factory.mktemp("first")
    r = run_cli("run", *TINY, "--stop-serving", cwd=root)
    assert r.code == 0, r.err
    return root


@dataclass
class Site:
    root: Path
    served: Served

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(TF_SERVING_URL=self.served.rest, **extra)

    def cli(self, *args: str):
        return run_cli(*args, cwd=self.root, env=self.env())

    def serving(self) -> int:
        doc = requests.get(f"{self.served.rest}/v1/models/digits", timeout=5).json()
        return max(
            int(v["version"]) for v in doc["model_version_status"] if v["state"] == "AVAILABLE"
        )

    def stored(self) -> list[int]:
        return sorted(
            int(p.name) for p in (self.root / "store" / "digits").iterdir() if p.name.isdigit()
        )


@pytest.fixture
def site(first_run, tmp_path):
    root = tmp_path / "site"
    shutil.copytree(first_run, root, ignore=shutil.ignore_patterns("serve.json", "*.log"))
    served = serve_model(tmp_path, root / "serving" / "digits")
    yield Site(root, served)
    served.stop()


def test_a_new_snapshot_passes_the_gate_and_is_served(site):
    champion = site.serving()
    assert site.cli("snapshot", "snaps/new.npz", "--seed", "3").code == 0
    r = site.cli("retrain", "--data", "snaps/new.npz", *TINY, "--json")
    assert r.code == 0, r.err
    decision = json.loads(r.out)
    assert decision["decision"] == "deploy-challenger"
    assert decision["champion_version"] == champion and decision["strategy"] == "fine-tune"
    report = (site.root / "workspace" / "retrain" / "report.md").read_text()
    assert f"| metric | champion (v{champion}) | challenger | delta |" in report
    # Drift since the champion's training data, for the person at the approval hold: the
    # shifted snapshot is dimmed (pixels) and sampled (classes); reported, not gated.
    drift = decision["drift"]
    assert drift["image"][0] == "JS" and 0 < drift["image"][1] < 1
    assert drift["label"][0] == "L-inf" and 0 < drift["label"][1] < 1
    assert "### Drift: champion's training data vs the new snapshot" in report
    assert "| image | JS |" in report and "| label | L-inf |" in report
    for stage in (["test"], ["package"], ["deploy", *VERIFY], ["test-deployed", *VERIFY]):
        r = site.cli(*stage)
        assert r.code == 0, (stage, r.err)
    assert site.serving() > champion


def test_max_drift_rejects_a_snapshot_whose_pixels_moved_further(site):
    champion = site.serving()
    assert site.cli("snapshot", "snaps/new.npz", "--seed", "3").code == 0
    r = site.cli("retrain", "--data", "snaps/new.npz", *TINY, "--max-drift", "0.0001")
    assert r.code == 3, r.err
    line = r.err_lines[-1]
    assert "drift[image] (JS): 0." in line and "FAILED" in line, line
    assert site.serving() == champion


def test_a_poisoned_snapshot_is_rejected_and_the_champion_keeps_serving(site):
    champion = site.serving()
    stored = site.stored()
    assert site.cli("snapshot", "snaps/bad.npz", "--kind", "poisoned").code == 0
    r = site.cli("retrain", "--data", "snaps/bad.npz", *TINY)
    assert r.code == 3
    line = r.err_lines[-1]
    assert line.startswith("tfship retrain: gate failed: challenger rejected:")
    assert "challenger accuracy (absolute): 0." in line and "FAILED (missed by" in line
    assert "the champion keeps serving" in line
    assert not (site.root / "workspace" / "model").exists()
    r = site.cli("package")
    assert r.code == 2  # nothing to package: the challenger was not kept
    assert site.stored() == stored and site.serving() == champion
    decision = json.loads((site.root / "workspace" / "retrain" / "retrain.json").read_text())
    assert decision["decision"] == "keep-champion"


def test_the_same_data_as_the_champion_is_no_new_data(site):
    champion = site.serving()
    stored = site.stored()
    r = site.cli("retrain", "--data", "digits", *TINY)
    assert r.code == 0, r.err
    assert r.out.startswith("no new data, nothing to do")
    for stage in ("test", "package", "deploy", "test-deployed"):
        r = site.cli(stage)
        assert r.code == 0, r.err
        assert r.out.startswith(f"no new data since version {champion}")
    assert site.stored() == stored and site.serving() == champion


def test_deploy_refuses_when_the_champion_changed_since_the_retrain(site):
    champion = site.serving()
    assert site.cli("snapshot", "snaps/new.npz", "--seed", "5").code == 0
    assert site.cli("retrain", "--data", "snaps/new.npz", *TINY).code == 0
    assert site.cli("test").code == 0
    assert site.cli("package").code == 0
    # Meanwhile someone else ships another version.
    other = site.root / "other"
    pkg = site.root / "store" / "digits" / str(champion)
    shutil.copytree(pkg, other / "1")
    manifest = json.loads((other / "1" / "assets.extra" / "tfship.json").read_text())
    newer = (
        int(
            json.loads((site.root / "workspace" / "package" / "package.json").read_text())[
                "version"
            ]
        )
        - 1
    )
    os.rename(other / "1", other / str(newer))
    manifest["version"] = newer
    (other / str(newer) / "assets.extra" / "tfship.json").write_text(json.dumps(manifest))
    assert site.cli("deploy", "--package", str(other / str(newer)), *VERIFY).code == 0
    assert site.serving() == newer
    r = site.cli("deploy", *VERIFY)
    assert r.code == 10
    assert f"compared against version {champion}, but {newer} is serving now" in r.err_lines[-1]
    assert "--force" in r.err_lines[-1]
    r = site.cli("deploy", "--force", *VERIFY)
    assert r.code == 0, r.err
    assert site.serving() > newer


def test_nothing_serving_needs_allow_cold_start(tmp_path):
    (tmp_path / "serving" / "digits").mkdir(parents=True)
    # Nothing deployed: like TF Serving, the server waits with its ports closed.
    served = serve_model(tmp_path, tmp_path / "serving" / "digits")
    try:
        env = clean_env(TF_SERVING_URL=served.rest)
        assert run_cli("build", cwd=tmp_path, env=env).code == 0
        r = run_cli("retrain", *TINY, cwd=tmp_path, env=env)
        assert r.code == 5 and "no version of digits is serving" in r.err_lines[-1]
        assert "--allow-cold-start" in r.err_lines[-1]
        r = run_cli("retrain", "--allow-cold-start", *TINY, "--json", cwd=tmp_path, env=env)
        assert r.code == 0, r.err
        assert json.loads(r.out)["strategy"] == "from-scratch"
    finally:
        served.stop()


def test_tfship_run_retrain_completes_from_a_clean_folder(tmp_path):
    # A fixed snapshot: the default one is seeded from the clock (new data every run), and
    # with 6-epoch models whether a challenger passes the per-class gate varies with it.
    assert run_cli("snapshot", "snap.npz", "--seed", "4", cwd=tmp_path).code == 0
    r = run_cli(
        "run",
        "retrain",
        *TINY,
        "--stop-serving",
        "--retrain-data",
        "snap.npz",
        cwd=tmp_path,
    )
    assert r.code == 0, r.err
    assert "serving: digits version" in r.out and "(stopped)" in r.out
    assert (
        "reports: workspace/eval/report.md, workspace/retrain/report.md, "
        "workspace/deployed/report.md" in r.out
    )
    versions = sorted(
        int(p.name) for p in (tmp_path / "serving" / "digits").iterdir() if p.name.isdigit()
    )
    assert len(versions) == 2  # the first model and the retrained challenger
    state = json.loads((tmp_path / "serving" / "serve.json").read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # SIGTERM was sent; it exits within moments
        try:
            os.kill(state["pid"], 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the local serving is still running after --stop-serving")
    assert not list(tmp_path.glob("workspace/.tmp-*"))
