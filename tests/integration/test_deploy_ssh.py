"""Stage 5 over a real OpenSSH sshd on loopback, with `tfship serve` as TF Serving."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from helpers import Served, Sshd, clean_env, make_version, run_cli, serve_model

pytestmark = pytest.mark.timeout(240)
FAST = ["--latency-requests", "5", "--wait-seconds", "30", "--json"]


@dataclass
class Env:
    sshd: Sshd
    served: Served
    base: Path
    pkgs: Path

    @property
    def model_dir(self) -> Path:
        return self.base / "digits"

    def env(self, **extra: str) -> dict[str, str]:
        return self.sshd.env(
            DEPLOY_SERVER_PATH=str(self.base), TF_SERVING_URL=self.served.rest, **extra
        )

    def deploy(self, version: int, *args: str, env: dict | None = None):
        return run_cli(
            "deploy",
            "--package",
            str(self.pkgs / str(version)),
            *FAST,
            *args,
            cwd=self.pkgs,
            env=env or self.env(),
        )

    def serving(self) -> int:
        doc = requests.get(f"{self.served.rest}/v1/models/digits", timeout=5).json()
        return max(
            int(v["version"]) for v in doc["model_version_status"] if v["state"] == "AVAILABLE"
        )

    def numeric(self) -> list[int]:
        return sorted(int(p.name) for p in self.model_dir.iterdir() if p.name.isdigit())


@pytest.fixture
def env(sshd, packaged, tmp_path):
    base = tmp_path / "models"
    (base / "digits").mkdir(parents=True)
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    for v in (2000, 3000, 4000, 5000):
        make_version(packaged, pkgs, v)
    served = serve_model(tmp_path, base / "digits")
    yield Env(sshd, served, base, pkgs)
    served.stop()


def test_deploy_serves_and_verifies_the_new_version(env):
    # A fresh host: like tensorflow_model_server, `tfship serve` on an empty base path has
    # not opened its ports (server.cc); the first deploy must not take that for a failure.
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{env.served.rest}/v1/models/digits", timeout=2)
    r = env.deploy(2000)
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["state"] == "deployed" and result["previous"] is None
    assert result["bytes_sent"] > 0 and result["verification"]["golden_max_abs_diff"] <= 1e-4
    assert env.serving() == 2000
    assert [p.name for p in env.model_dir.iterdir()] == ["2000"]  # no .incoming, no lock
    log = "\n".join(r.err_lines)
    assert f"host={env.sshd.user}@127.0.0.1:{env.sshd.port}" in log and "version=2000" in log
    assert "a fresh server opens its ports once the first version has loaded" in log

    again = env.deploy(2000)
    assert again.code == 0, again.err
    assert json.loads(again.out)["state"] == "already-deployed"
    assert json.loads(again.out)["bytes_sent"] == 0


def test_outputs_that_differ_from_the_manifest_are_rolled_back(env, packaged):
    assert env.deploy(2000).code == 0
    make_version(packaged, env.pkgs, 3000, golden_shift=0.5)
    r = env.deploy(3000)
    assert r.code == 4
    line = r.err_lines[-1]
    assert "version 3000 failed and was rolled back" in line
    assert "golden outputs max abs diff" in line and "Serving now: version 2000" in line
    assert env.numeric() == [2000] and env.serving() == 2000
    assert [p.name.split("-")[0] for p in (env.model_dir / ".rejected").iterdir()] == ["3000"]


def test_a_model_that_fails_to_load_is_rolled_back(env, packaged):
    assert env.deploy(2000).code == 0
    make_version(packaged, env.pkgs, 4000, corrupt=True)
    r = env.deploy(4000)
    assert r.code == 4
    assert "version 4000 of digits failed to load" in r.err_lines[-1]
    assert "Serving now: version 2000" in r.err_lines[-1]
    assert env.numeric() == [2000]


def test_a_load_tf_serving_keeps_retrying_is_a_bounded_wait_then_a_rollback(
    sshd, packaged, tmp_path
):
    """loader_harness.cc: a failed load is retried (5 x 60 s by default) and the version shows
    LOADING meanwhile; deploy waits --wait-seconds, says so, and rolls back."""
    base, pkgs = tmp_path / "models", tmp_path / "pkgs"
    (base / "digits").mkdir(parents=True)
    pkgs.mkdir()
    make_version(packaged, pkgs, 2000)
    make_version(packaged, pkgs, 4000, corrupt=True)
    served = serve_model(tmp_path, base / "digits", retries="5")  # upstream's default
    try:
        site = Env(sshd, served, base, pkgs)
        assert site.deploy(2000).code == 0
        r = run_cli(
            "deploy",
            "--package",
            str(pkgs / "4000"),
            "--latency-requests",
            "5",
            "--wait-seconds",
            "3",
            cwd=pkgs,
            env=site.env(),
        )
        assert r.code == 4, r.err
        line = r.err_lines[-1]
        assert "version 4000 of digits not AVAILABLE after 3 s (last state: LOADING)" in line
        assert "--max_num_load_retries" in line and "Serving now: version 2000" in line
        assert site.numeric() == [2000]
        assert site.serving() == 2000
    finally:
        served.stop()


def test_unknown_and_changed_host_keys_are_refused(env, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    r = env.deploy(2000, env=env.env(DEPLOY_SERVER_KNOWN_HOSTS=str(empty)))
    assert r.code == 9 and "unknown host key" in r.err_lines[-1]
    other = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True
    )
    assert other.returncode == 0
    pub = (tmp_path / "other.pub").read_text().split()
    changed = tmp_path / "changed_known_hosts"
    changed.write_text(f"[127.0.0.1]:{env.sshd.port} {pub[0]} {pub[1]}\n")
    r = env.deploy(2000, env=env.env(DEPLOY_SERVER_KNOWN_HOSTS=str(changed)))
    assert r.code == 9 and "host key CHANGED" in r.err_lines[-1]
    assert env.numeric() == []


def test_wrong_client_key_is_refused(env, tmp_path):
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True
    )
    r = env.deploy(2000, env=env.env(DEPLOY_SERVER_SSH_KEY_FILE=str(tmp_path / "k")))
    assert r.code == 9 and "authentication failed" in r.err_lines[-1]


def test_key_text_from_the_environment_works_and_is_never_printed(env):
    key = env.sshd.client_key.read_text()
    e = env.env(DEPLOY_SERVER_SSH_KEY=key)
    del e["DEPLOY_SERVER_SSH_KEY_FILE"]
    r = env.deploy(2000, env=e)
    assert r.code == 0, r.err
    body = key.strip().splitlines()[1]
    assert body not in r.out and body not in r.err


def test_a_connection_killed_mid_upload_leaves_no_version_and_a_rerun_succeeds(env, packaged):
    from tfship.deploy import DeploySettings, deploy
    from tfship.ssh import SSHHost
    from tfship.targets import make_target

    make_version(packaged, env.pkgs, 5000, filler_bytes=6 * 1024 * 1024)
    original = SSHHost.put_tree

    def dying_put_tree(self, local, remote, progress=None):
        def kill_after_first_chunk(sent):
            if sent > 1024 * 1024:
                self._client.get_transport().close()

        return original(self, local, remote, kill_after_first_chunk)

    target = make_target(
        "127.0.0.1",
        str(env.base),
        env.served.rest,
        "rest",
        {
            "username": env.sshd.user,
            "port": env.sshd.port,
            "key_file": str(env.sshd.client_key),
            "known_hosts": str(env.sshd.known_hosts),
        },
    )
    SSHHost.put_tree = dying_put_tree
    try:
        with pytest.raises(Exception):  # noqa: B017 - whatever paramiko raises on a dead link
            deploy(target, env.pkgs / "5000", DeploySettings())
    finally:
        SSHHost.put_tree = original
        target.host.close()
    assert env.numeric() == []
    assert not (env.model_dir / ".tfship-lock").exists()  # released on the way out
    r = env.deploy(5000)
    assert r.code == 0, r.err
    assert env.numeric() == [5000] and env.serving() == 5000
    assert not [p for p in env.model_dir.iterdir() if p.name.startswith(".incoming-")]


def test_two_deploys_at_once_are_serialized_by_the_lock(env):
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tfship", "deploy", "--package", str(env.pkgs / "2000"), *FAST],
            cwd=env.pkgs,
            env=env.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    states = sorted(json.loads(o)["state"] for o, _ in outs)
    assert states == ["already-deployed", "deployed"]
    assert any("waiting for another deploy's lock" in e for _, e in outs)


def test_a_held_lock_fails_clearly_and_a_stale_one_is_broken(env):
    lock = env.model_dir / ".tfship-lock"
    lock.mkdir()
    (lock / "owner.json").write_text(
        json.dumps({"time": time.time(), "host": "ci-box", "pid": 42, "purpose": "deploy 1"})
    )
    r = env.deploy(2000, "--lock-wait-seconds", "0")
    assert r.code == 4 and "holds the lock (deploy 1 by ci-box:42" in r.err_lines[-1]
    (lock / "owner.json").write_text(
        json.dumps({"time": time.time() - 3600, "host": "ci-box", "pid": 42, "purpose": "deploy 1"})
    )
    r = env.deploy(2000, "--lock-stale-seconds", "60")
    assert r.code == 0, r.err
    assert "breaking a stale lock" in r.err and not lock.exists()


def test_retention_keeps_k_and_rollback_serves_the_previous_version(env):
    for v in (2000, 3000, 4000, 5000):
        r = env.deploy(v, "--keep", "3")
        assert r.code == 0, r.err
    assert env.numeric() == [3000, 4000, 5000] and env.serving() == 5000
    r = run_cli(
        "rollback",
        "--model-name",
        "digits",
        "--latency-requests",
        "5",
        "--json",
        cwd=env.pkgs,
        env=env.env(),
    )
    assert r.code == 0, r.err
    assert json.loads(r.out)["version"] == 4000 and env.serving() == 4000
    assert env.numeric() == [3000, 4000]
    r = run_cli("rollback", "--model-name", "digits", "--to", "2000", cwd=env.pkgs, env=env.env())
    assert r.code == 4 and "version 2000 of digits is not on the host" in r.err_lines[-1]


def test_deploying_a_version_older_than_the_host_has_is_refused(env):
    assert env.deploy(3000).code == 0
    r = env.deploy(2000)
    assert r.code == 4 and "older than version 3000" in r.err_lines[-1]


def test_no_request_fails_while_versions_swap(env):
    assert env.deploy(2000).code == 0
    failures, stop = [], threading.Event()

    def load():
        s = requests.Session()
        while not stop.is_set():
            r = s.post(
                f"{env.served.rest}/v1/models/digits:predict",
                json={"instances": [[[[0.0]] * 8] * 8]},
                timeout=5,
            )
            if r.status_code != 200:
                failures.append(r.text)

    t = threading.Thread(target=load)
    t.start()
    try:
        assert env.deploy(3000).code == 0
        assert env.deploy(4000).code == 0
    finally:
        stop.set()
        t.join()
    assert failures == [] and env.serving() == 4000


def test_deploy_without_hostname_targets_a_local_folder(env):
    e = clean_env(DEPLOY_SERVER_PATH=str(env.base), TF_SERVING_URL=env.served.rest)
    r = env.deploy(2000, env=e)
    assert r.code == 0, r.err
    assert json.loads(r.out)["host"] == "local" and env.serving() == 2000


def test_a_version_taking_another_pixel_range_is_refused_until_forced(env):
    """Version 2000 is packaged as before tfship served 0-255 (no input_range: [0, 1]);
    replacing it, or rolling back to it, would change what every client sends."""
    manifest_path = env.pkgs / "2000" / "assets.extra" / "tfship.json"
    old = json.loads(manifest_path.read_text())
    del old["input_range"]
    manifest_path.write_text(json.dumps(old))
    assert env.deploy(2000).code == 0
    r = env.deploy(3000)
    assert r.code == 4, r.err
    assert (
        "version 3000 takes pixels in [0.0, 255.0], version 2000 (serving) in [0.0, 1.0]"
        in (r.err_lines[-1])
    )
    assert env.serving() == 2000 and env.numeric() == [2000]
    assert env.deploy(3000, "--force").code == 0 and env.serving() == 3000
    r = run_cli("rollback", "--model-name", "digits", cwd=env.pkgs, env=env.env())
    assert r.code == 4 and "rolling back, every client would have to change" in r.err_lines[-1]
    assert env.serving() == 3000
    r = run_cli("rollback", "--model-name", "digits", "--force", cwd=env.pkgs, env=env.env())
    assert r.code == 0, r.err
    assert env.serving() == 2000
