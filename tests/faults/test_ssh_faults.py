"""SSH faults during a deploy: the link dropped at the rename and during the wait, a full disk on
the host, and a deploy user without rights on the base path.

After each: no numeric version folder that is incomplete, a verified version serving, the lock
released, one clear line, and a re-run (after the fault is fixed) that succeeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest
import requests
from helpers import Served, Sshd, make_version, run_cli, serve_model, start_sshd
from tfship.store import MANIFEST, verify_tree
from tfship.workspace import tree_hashes

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
FAST = ["--latency-requests", "3", "--wait-seconds", "20"]


@dataclass
class Site:
    sshd: Sshd
    served: Served
    base: Path
    pkgs: Path

    @property
    def model_dir(self) -> Path:
        return self.base / "digits"

    def target(self, tunnel: bool = False):
        """The target; with ``tunnel``, TF Serving is reached through the SSH link."""
        from tfship.targets import make_target

        return make_target(
            "127.0.0.1",
            str(self.base),
            self.served.rest,
            "rest",
            {
                "username": self.sshd.user,
                "port": self.sshd.port,
                "key_file": str(self.sshd.client_key),
                "known_hosts": str(self.sshd.known_hosts),
            },
            tunnel=tunnel,
        )

    def deploy_cli(self, version: int, sshd: Sshd | None = None):
        env = (sshd or self.sshd).env(
            DEPLOY_SERVER_PATH=str(self.base), TF_SERVING_URL=self.served.rest
        )
        return run_cli(
            "deploy", "--package", str(self.pkgs / str(version)), *FAST, cwd=self.pkgs, env=env
        )

    def serving(self) -> int:
        doc = requests.get(f"{self.served.rest}/v1/models/digits", timeout=5).json()
        return max(
            int(v["version"]) for v in doc["model_version_status"] if v["state"] == "AVAILABLE"
        )

    def assert_clean(self, versions: list[int]) -> None:
        """Only whole numeric versions, no upload left over, no lock held."""
        names = sorted(p.name for p in self.model_dir.iterdir())
        assert not [n for n in names if n.startswith(".incoming-")], names
        assert ".tfship-lock" not in names, names
        found = sorted(int(n) for n in names if n.isdigit())
        assert found == versions, names
        for v in found:
            manifest = json.loads((self.model_dir / str(v) / MANIFEST).read_text())
            verify_tree(tree_hashes(self.model_dir / str(v)), manifest, str(v))


def _site(sshd: Sshd, packaged: Path, base: Path, pkgs: Path) -> Site:
    (base / "digits").mkdir(parents=True, exist_ok=True)
    pkgs.mkdir(exist_ok=True)
    for v in (2000, 3000):
        make_version(packaged, pkgs, v)
    served = serve_model(pkgs, base / "digits")
    site = Site(sshd, served, base, pkgs)
    r = site.deploy_cli(2000)
    assert r.code == 0, r.err
    return site


@pytest.fixture
def site(sshd, packaged, tmp_path):
    s = _site(sshd, packaged, tmp_path / "models", tmp_path / "pkgs")
    yield s
    s.served.stop()


def _deploy(site: Site, version: int, tunnel: bool = False):
    from tfship.deploy import DeploySettings, deploy
    from tfship.verify import VerifySettings

    target = site.target(tunnel)
    try:
        return deploy(
            target,
            site.pkgs / str(version),
            DeploySettings(verify=VerifySettings(latency_requests=3, wait_seconds=20)),
        )
    finally:
        target.close()


@pytest.mark.parametrize("when", ["before the host got it", "after the host did it"])
def test_the_link_dropped_at_the_rename_is_recovered_in_the_same_run(site, monkeypatch, when):
    original = paramiko.SFTPClient.rename
    calls = []

    def dropping_rename(self, src, dst):
        calls.append(dst)
        if len(calls) > 1 or not src.rsplit("/", 1)[-1].startswith(".incoming-"):
            return original(self, src, dst)
        transport = self.sock.get_transport()
        if when == "before the host got it":
            transport.close()
            return original(self, src, dst)  # fails as paramiko does on a dead link
        original(self, src, dst)
        transport.close()
        raise paramiko.SSHException("Server connection dropped: ")  # the answer is lost

    monkeypatch.setattr(paramiko.SFTPClient, "rename", dropping_rename)
    result = _deploy(site, 3000)
    assert result.state == "deployed" and result.version == 3000
    assert len(calls) >= 1 and calls[0].endswith("/3000")
    assert site.serving() == 3000
    site.assert_clean([2000, 3000])


@pytest.fixture
def drop_in_the_wait(monkeypatch):
    """Every SSH link the deploy opened is closed as it starts waiting for AVAILABLE."""
    from tfship.serving import ServingClient
    from tfship.ssh import SSHHost

    hosts: list[SSHHost] = []
    original_connect, original_wait = SSHHost.connect, ServingClient.wait_available

    def remember(self):
        hosts.append(self)
        return original_connect(self)

    def wait_after_a_drop(self, version, *a, **kw):
        for h in hosts:
            if h._client is not None:
                h._client.get_transport().close()
        return original_wait(self, version, *a, **kw)

    monkeypatch.setattr(SSHHost, "connect", remember)
    monkeypatch.setattr(ServingClient, "wait_available", wait_after_a_drop)


def test_the_link_dropped_during_the_wait_still_verifies_and_cleans_up(site, drop_in_the_wait):
    result = _deploy(site, 3000)
    assert result.state == "deployed" and site.serving() == 3000
    site.assert_clean([2000, 3000])


def test_a_tunnel_reopens_the_link_dropped_during_the_wait(site, drop_in_the_wait):
    # TF Serving reached only through the SSH link: once it drops, the tunnel's next
    # connection must bring up a new link, or the wait and the checks could not succeed.
    result = _deploy(site, 3000, tunnel=True)
    assert result.state == "deployed" and site.serving() == 3000
    site.assert_clean([2000, 3000])


def test_a_bad_version_is_rolled_back_over_a_new_link_after_a_drop_in_the_wait(
    site, packaged, drop_in_the_wait
):
    from tfship.errors import DeployError

    make_version(packaged, site.pkgs, 3000, golden_shift=0.5)
    with pytest.raises(DeployError, match="rolled back.*Serving now: version 2000"):
        _deploy(site, 3000)
    assert site.serving() == 2000
    site.assert_clean([2000])
    assert [p.name.split("-")[0] for p in (site.model_dir / ".rejected").iterdir()] == ["3000"]


@pytest.fixture
def small_disk(sshd, packaged):
    """The host's base path on a 4 MiB filesystem of its own (tmpfs: the tests run as root)."""
    mount = Path(tempfile.mkdtemp(prefix="tfship-small-disk-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tfship-test", str(mount)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"cannot mount a small tmpfs (needs root): {done.stderr}"
    site = None
    try:
        site = _site(sshd, packaged, mount / "models", mount.parent / f"{mount.name}-pkgs")
        yield site, mount
    finally:
        if site:
            site.served.stop()
        subprocess.run(["umount", "-l", str(mount)], check=False)
        subprocess.run(["rm", "-rf", str(mount), f"{mount}-pkgs"], check=False)


def test_a_full_disk_on_the_host_leaves_the_old_version_serving(small_disk, packaged):
    site, mount = small_disk
    make_version(packaged, site.pkgs, 3000, filler_bytes=6 * 1024 * 1024)
    r = site.deploy_cli(3000)
    assert r.code == 9, r.err
    line = r.err_lines[-1]
    assert "No space left on device" in line and "free space" in line, line
    assert "Traceback" not in r.err
    site.assert_clean([2000])
    assert site.serving() == 2000
    # Fixed (a bigger disk): the same command succeeds.
    subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
    again = site.deploy_cli(3000)
    assert again.code == 0, again.err
    assert site.serving() == 3000
    site.assert_clean([2000, 3000])


@pytest.fixture
def unprivileged(packaged, tmp_path):
    """A host whose SSH sessions run as `nobody`, and a base path that only root may write."""
    base = Path(tempfile.mkdtemp(prefix="tfship-perm-"))
    try:
        base.chmod(0o755)
        nobody = start_sshd(tmp_path / "sshd-nobody", run_as_uid=65534)
        root = start_sshd(tmp_path / "sshd-root")
        site = _site(root, packaged, base / "models", tmp_path / "pkgs")
        for p in (base / "models", base / "models" / "digits"):
            os.chmod(p, 0o755)
        yield site, nobody
        site.served.stop()
        nobody.stop()
        root.stop()
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_permission_denied_on_the_base_path_changes_nothing(unprivileged):
    site, nobody = unprivileged
    r = site.deploy_cli(3000, sshd=nobody)
    assert r.code == 9, r.err
    line = r.err_lines[-1]
    assert "Permission denied" in line and "DEPLOY_SERVER_PATH" in line, line
    assert "Traceback" not in r.err
    site.assert_clean([2000])
    assert site.serving() == 2000
    # Fixed (a user with rights): the same deploy succeeds.
    again = site.deploy_cli(3000)
    assert again.code == 0, again.err
    site.assert_clean([2000, 3000])


@pytest.mark.parametrize(
    ("name", "link_to"),
    [("weights", "/etc/passwd"), ("variables", "../../../outside")],
)
def test_a_copy_from_the_host_with_an_escaping_link_is_refused(sshd, tmp_path, name, link_to):
    """Retrain fetches the champion from the host when the store lacks it: a version folder
    there holding a link out of itself is refused, and nothing half-copied is left."""
    from tfship.errors import HostError
    from tfship.targets import make_target

    version = tmp_path / "models" / "digits" / "7"
    (version / "assets.extra").mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"pb")
    (version / name).symlink_to(link_to)
    target = make_target(
        "127.0.0.1",
        str(tmp_path / "models"),
        "http://127.0.0.1:9",
        "rest",
        {
            "username": sshd.user,
            "port": sshd.port,
            "key_file": str(sshd.client_key),
            "known_hosts": str(sshd.known_hosts),
        },
    )
    dest = tmp_path / "fetched"
    try:
        with pytest.raises(HostError) as caught:
            target.host.get_tree(str(version), dest)
    finally:
        target.host.close()
    assert "refused the copy" in str(caught.value) and name in str(caught.value)
    assert not dest.exists()
