"""A bucket deploy under faults (a real S3 service behind a proxy that fails chosen requests).

The link dropped mid-upload, and a SIGKILL at every step of a bucket deploy (the lock, the
upload, the hash read-back, the copy into place before and at saved_model.pb, the clean-up,
the verification, a rollback's move to .rejected/): whatever happened, nothing half-placed is
ever loadable, the previous version keeps serving (until a whole new one is placed), and a
re-run settles it and leaves nothing behind.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from urllib.parse import unquote

import pytest
import requests
from helpers import make_version, run_cli, start_serve
from s3_proxy import S3FaultProxy
from tfship import s3
from tfship.store import MANIFEST, verify_tree

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]
# latency is not what these tests judge (a loaded machine would fail its gate)
FAST = ["--latency-requests", "3", "--max-p95-ms", "5000", "--wait-seconds", "40"]


@pytest.fixture
def site(weed, bucket, packaged, tmp_path):
    proxy = S3FaultProxy(("127.0.0.1", weed.port))
    replica = start_serve(
        tmp_path,
        "--model_name",
        "digits",
        "--model_base_path",
        f"s3://{bucket}/models/digits",
        "--file_system_poll_wait_seconds",
        "0.5",
        # TF Serving retries a failed load (default 5 x 60 s): a version listed mid-copy, or
        # left half-copied by a kill, loads once a re-run completes it within that window
        "--max_num_load_retries",
        "100",
        "--load_retry_interval_micros",
        "500000",
        wait=False,
    )
    env = weed.env(
        S3_ENDPOINT=proxy.endpoint,  # the deploy goes through the proxy, the replica does not
        DEPLOY_SERVER_PATH=f"s3://{bucket}/models",
        TF_SERVING_URL=replica.rest,
        TFSHIP_STORE=str(tmp_path / "store"),
    )
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    yield proxy, replica, env, pkgs, bucket
    proxy.close()
    replica.stop()


def _serving(replica) -> int:
    doc = requests.get(f"{replica.rest}/v1/models/digits", timeout=5).json()
    return max(int(s["version"]) for s in doc["model_version_status"] if s["state"] == "AVAILABLE")


def _loadable_versions_are_whole(bucket: str) -> list[int]:
    """Every numeric version with a saved_model.pb (what TF Serving can load) is whole."""
    host = s3.S3Host(bucket)
    whole = []
    for name in host.listdir("models/digits"):
        if name.isdigit() and host.is_file(f"models/digits/{name}/saved_model.pb"):
            manifest = json.loads(host.read_text(f"models/digits/{name}/{MANIFEST}"))
            verify_tree(host.hash_tree(f"models/digits/{name}"), manifest, name)
            whole.append(int(name))
    return sorted(whole)


def _leftovers(bucket: str) -> list[str]:
    names = s3.S3Host(bucket).listdir("models/digits")
    return [n for n in names if n.startswith((".incoming-", ".tfship-lock"))]


def test_the_link_dropped_mid_upload_changes_nothing_and_a_rerun_succeeds(site, packaged):
    proxy, replica, env, pkgs, bucket = site
    first = run_cli(
        "deploy", "--package", str(make_version(packaged, pkgs, 2000)), *FAST, env=env, cwd=pkgs
    )
    assert first.code == 0, first.err
    uploads = []

    def dies_after_two_uploads(method, path, headers):
        if method == "PUT" and ".incoming-" in path and "x-amz-copy-source" not in headers:
            uploads.append(path)
            return "drop" if len(uploads) > 2 else "pass"
        return "pass"

    proxy.rule = dies_after_two_uploads
    pkg = make_version(packaged, pkgs, 3000)
    r = run_cli("deploy", "--package", str(pkg), *FAST, env=env, cwd=pkgs)
    assert r.code == 8, r.err  # a store error: the link failed
    assert len(r.err_lines) and "Traceback" not in r.err
    assert "run it again" in r.err_lines[-1]
    assert _loadable_versions_are_whole(bucket) == [2000]
    assert _serving(replica) == 2000
    proxy.release()
    r = run_cli("deploy", "--package", str(pkg), *FAST, env=env, cwd=pkgs)
    assert r.code == 0, r.err
    assert _serving(replica) == 3000 and _leftovers(bucket) == []


def _deploy_in_background(pkg, env, pkgs) -> tuple[subprocess.Popen, list[str]]:
    """`tfship deploy` running, its stderr lines collected as they come."""
    import threading

    proc = subprocess.Popen(
        [sys.executable, "-m", "tfship", "deploy", "--package", str(pkg), *FAST],
        cwd=pkgs,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    return proc, lines


STEPS = {
    "lock": lambda m, p, h: m == "PUT" and "/.tfship-lock/" in p,
    "upload": lambda m, p, h: m == "PUT" and "/.incoming-" in p and "x-amz-copy-source" not in h,
    "hash read-back": lambda m, p, h: m == "GET" and "/.incoming-" in p,
    "copy, before saved_model.pb": lambda m, p, h: (
        "x-amz-copy-source" in h and "variables" in unquote(p)
    ),
    "copy of saved_model.pb": lambda m, p, h: (
        "x-amz-copy-source" in h and unquote(p).split("?")[0].endswith("/saved_model.pb")
    ),
    "clean-up": lambda m, p, h: m == "POST" and "delete" in p,
}


def test_a_sigkill_at_every_step_of_a_bucket_deploy_leaves_nothing_loadable_half_placed(
    site, packaged
):
    proxy, replica, env, pkgs, bucket = site
    first = run_cli(
        "deploy", "--package", str(make_version(packaged, pkgs, 2000)), *FAST, env=env, cwd=pkgs
    )
    assert first.code == 0, first.err
    serving = 2000
    for i, (step, matches) in enumerate(STEPS.items()):
        version = 3000 + i
        pkg = make_version(packaged, pkgs, version)
        proxy.rule = lambda m, p, h, matches=matches: "hold" if matches(m, p, h) else "pass"
        proc, lines = _deploy_in_background(pkg, env, pkgs)
        try:
            assert proxy.held.wait(120), f"{step}: the deploy never reached it: {lines}"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proxy.release()
        # killed at this step: what can load is whole, and a whole version answers
        whole = _loadable_versions_are_whole(bucket)
        assert serving in whole, step
        assert _serving(replica) in whole, step
        r = run_cli("deploy", "--package", str(pkg), *FAST, env=env, cwd=pkgs)
        assert r.code == 0, (step, r.err[-2000:])
        serving = version
        assert _serving(replica) == version, step
        assert _leftovers(bucket) == [], step


def test_a_sigkill_while_verifying_or_rolling_back_leaves_whole_versions_and_a_rerun_settles(
    site, packaged
):
    """The two steps after placement. Killed while the placed version is verified: it is
    whole (it may serve), and a re-run verifies it and ends deployed. Killed while a version
    that fails to load is moved to .rejected/: the previous keeps serving, and a re-run of
    the same deploy fails again, rolls back and leaves nothing behind."""
    import time

    proxy, replica, env, pkgs, bucket = site
    assert run_cli("deploy", "--package", str(make_version(packaged, pkgs, 2000)), *FAST,
                   env=env, cwd=pkgs).code == 0  # fmt: skip

    pkg = make_version(packaged, pkgs, 3000)
    proc, lines = _deploy_in_background(pkg, env, pkgs)
    try:
        deadline = time.monotonic() + 120
        while not any("[deploy] installed" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, lines
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    whole = _loadable_versions_are_whole(bucket)
    assert 3000 in whole and _serving(replica) in whole
    r = run_cli("deploy", "--package", str(pkg), *FAST, env=env, cwd=pkgs)
    assert r.code == 0, r.err[-2000:]
    assert _serving(replica) == 3000 and _leftovers(bucket) == []

    bad = make_version(packaged, pkgs, 4000, corrupt=True)
    proxy.rule = lambda m, p, h: (
        "hold" if "x-amz-copy-source" in h and "/.rejected/" in unquote(p) else "pass"
    )
    proc, lines = _deploy_in_background(bad, env, pkgs)
    try:
        assert proxy.held.wait(180), lines
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proxy.release()
    assert _serving(replica) == 3000
    assert 3000 in _loadable_versions_are_whole(bucket)
    r = run_cli("deploy", "--package", str(bad), *FAST, env=env, cwd=pkgs)
    assert r.code == 4 and "Serving now: version 3000" in r.err_lines[-1], r.err[-2000:]
    assert _serving(replica) == 3000 and _leftovers(bucket) == []
    assert 4000 not in _loadable_versions_are_whole(bucket)
