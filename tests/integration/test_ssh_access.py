"""SSH as CircleCI provides it, against a real OpenSSH sshd on loopback.

Keys from ``add_ssh_keys`` (a real ssh-agent, ``~/.ssh/id_rsa_<fingerprint>``), key text or its
base64 in a variable, known_hosts lines in a variable; and TF Serving reached through an SSH
tunnel (``--serving-tunnel``) while it listens on the host's loopback only. ``tfship status``
is the probe: it logs in, lists the base path and asks TF Serving, and changes nothing.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import requests
from helpers import SSHD, Served, Sshd, free_port, keygen, make_version, run_cli, serve_model

pytestmark = pytest.mark.timeout(300)  # the first test using `packaged` trains it


def status(sshd: Sshd, tmp: Path, *args: str, **env: str):
    """``tfship status --json`` on ``sshd`` with the given environment (None drops a name)."""
    base = tmp / "models"
    (base / "digits").mkdir(parents=True, exist_ok=True)
    e = sshd.env(DEPLOY_SERVER_PATH=str(base), TF_SERVING_URL=f"http://127.0.0.1:{free_port()}")
    for k, v in env.items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return run_cli("status", "--json", *args, cwd=tmp, env=e)


def bare(tmp: Path, **env: str | None) -> dict[str, str | None]:
    """No key file, no agent, an empty HOME: only what the test gives is there to use."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    return {"DEPLOY_SERVER_SSH_KEY_FILE": None, "SSH_AUTH_SOCK": None, "HOME": str(home), **env}


@pytest.fixture
def agent(tmp_path):
    """A real ssh-agent on its own socket: ``add(key)`` is what CircleCI's add_ssh_keys does."""
    sock = tmp_path / "agent.sock"
    out = subprocess.run(
        ["ssh-agent", "-s", "-a", str(sock)], capture_output=True, text=True, check=True
    ).stdout
    pid = int(re.search(r"SSH_AGENT_PID=(\d+)", out).group(1))

    class Agent:
        socket = str(sock)

        def add(self, key: Path) -> None:
            env = {**os.environ, "SSH_AUTH_SOCK": self.socket}
            subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True, capture_output=True)

    yield Agent()
    os.kill(pid, signal.SIGTERM)


# --- keys ------------------------------------------------------------------------------------


def test_the_agent_add_ssh_keys_filled_is_used_when_no_key_is_given(sshd, tmp_path, agent):
    r = status(sshd, tmp_path, **bare(tmp_path, SSH_AUTH_SOCK=agent.socket))
    assert r.code == 9, r.err  # the agent is empty: nothing to log in with
    assert "ssh-agent (0 keys)" in r.err_lines[-1] and "~/.ssh keys (none)" in r.err_lines[-1]
    agent.add(sshd.client_key)
    r = status(sshd, tmp_path, **bare(tmp_path, SSH_AUTH_SOCK=agent.socket))
    assert r.code == 0, r.err
    assert json.loads(r.out)["hosts"][0]["state"] == "nothing serving"


def test_a_wrong_key_in_the_agent_fails_naming_every_source_tried(sshd, tmp_path, agent):
    agent.add(keygen(tmp_path / "stranger"))
    r = status(sshd, tmp_path, **bare(tmp_path, SSH_AUTH_SOCK=agent.socket))
    assert r.code == 9 and len(r.err_lines) == 1, r.err
    line = r.err_lines[0]
    assert "authentication failed" in line and "ssh-agent (1 keys)" in line
    assert "~/.ssh keys (none)" in line and "$DEPLOY_SERVER_SSH_KEY (unset)" in line


def test_the_key_file_add_ssh_keys_writes_in_home_is_used(sshd, tmp_path):
    ssh_dir = tmp_path / "home" / ".ssh"
    ssh_dir.mkdir(parents=True)
    # add_ssh_keys names the file after the key's fingerprint; paramiko's own search would
    # look only for id_rsa, id_ecdsa, id_ed25519.
    shutil.copy(sshd.client_key, ssh_dir / "id_rsa_0123456789abcdef0123456789abcdef")
    (ssh_dir / "id_rsa_0123456789abcdef0123456789abcdef").chmod(0o600)
    r = status(sshd, tmp_path, **bare(tmp_path))
    assert r.code == 0, r.err


def test_no_key_anywhere_is_one_line_naming_the_sources(sshd, tmp_path):
    r = status(sshd, tmp_path, **bare(tmp_path))
    assert r.code == 9 and len(r.err_lines) == 1, r.err
    line = r.err_lines[0]
    assert "no SSH key" in line and "SSH_AUTH_SOCK unset" in line and "add_ssh_keys" in line
    assert "Traceback" not in r.err


@pytest.mark.parametrize("shape", ["base64", "base64-wrapped", "spaces", "literal-newlines"])
def test_key_text_as_circleci_variables_keep_it_is_accepted(sshd, tmp_path, shape):
    key = sshd.client_key.read_text()
    text = {
        "base64": base64.b64encode(key.encode()).decode(),
        "base64-wrapped": base64.encodebytes(key.encode()).decode(),  # `base64 KEY`, 76 columns
        "spaces": key.replace("\n", " "),
        "literal-newlines": key.replace("\n", "\\n"),
    }[shape]
    r = status(sshd, tmp_path, **bare(tmp_path, DEPLOY_SERVER_SSH_KEY=text))
    assert r.code == 0, r.err
    body = key.strip().splitlines()[1]
    assert body not in r.out and body not in r.err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not-a-key but a secret", "is neither a private key's text"),
        (base64.b64encode(b"hunter2 is my password").decode(), "is neither a private key's text"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----", "not a"),
    ],
    ids=["plain-text", "base64-of-text", "broken-key"],
)
def test_key_text_that_is_no_key_is_one_line_naming_the_variable(sshd, tmp_path, text, message):
    r = status(sshd, tmp_path, **bare(tmp_path, MY_KEY=text, TFSHIP_SSH_KEY_ENV="MY_KEY"))
    assert r.code == 2 and len(r.err_lines) == 1, r.err
    assert "MY_KEY" in r.err_lines[0] and message in r.err_lines[0]
    assert text not in r.err and "hunter2" not in r.err


# --- known_hosts -----------------------------------------------------------------------------


def test_known_hosts_lines_from_a_variable_are_trusted_in_memory(sshd, tmp_path):
    lines = sshd.known_hosts.read_text()
    r = status(
        sshd,
        tmp_path,
        DEPLOY_SERVER_KNOWN_HOSTS=None,
        HOME=str(tmp_path),  # no ~/.ssh/known_hosts
        DEPLOY_SERVER_KNOWN_HOSTS_LINES="# from ssh-keyscan\n" + lines,
    )
    assert r.code == 0, r.err
    assert not (tmp_path / ".ssh").exists()  # nothing was written for it


def test_known_hosts_lines_with_another_key_are_refused(sshd, tmp_path):
    other = keygen(tmp_path / "other")
    kind, blob = Path(f"{other}.pub").read_text().split()[:2]
    r = status(
        sshd,
        tmp_path,
        DEPLOY_SERVER_KNOWN_HOSTS=None,
        HOME=str(tmp_path),
        DEPLOY_SERVER_KNOWN_HOSTS_LINES=f"[127.0.0.1]:{sshd.port} {kind} {blob}",
    )
    assert r.code == 9 and "host key CHANGED" in r.err_lines[-1], r.err


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (None, "no known_hosts to check the host key against"),
        ("127.0.0.1 ssh-ed25519 !!!notbase64", "line 1 is not a known_hosts line"),
        ("# comment\njust-a-hostname", "line 2 is not a known_hosts line"),
    ],
    ids=["none", "bad-base64", "short-line"],
)
def test_missing_or_malformed_known_hosts_is_one_line(sshd, tmp_path, lines, message):
    r = status(
        sshd,
        tmp_path,
        DEPLOY_SERVER_KNOWN_HOSTS=None,
        HOME=str(tmp_path),
        DEPLOY_SERVER_KNOWN_HOSTS_LINES=lines,
    )
    assert r.code in (2, 9) and len(r.err_lines) == 1, r.err
    assert message in r.err_lines[0] and "DEPLOY_SERVER_KNOWN_HOSTS_LINES" in r.err_lines[0]


# --- the tunnel ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(sshd, packaged, tmp_path_factory):
    """`tfship serve` on 127.0.0.1 with version 2000 of the session's package."""
    tmp = tmp_path_factory.mktemp("tunnel")
    base = tmp / "models"
    make_version(packaged, base / "digits", 2000)
    s = serve_model(tmp, base / "digits")
    s.base = base
    yield s
    s.stop()


def sshd_children(sshd: Sshd) -> set[int]:
    """The pids of the sshd's session processes (the ones that open forwarded connections)."""
    out = subprocess.run(
        ["ps", "-e", "-o", "pid=,ppid=,comm="], capture_output=True, text=True, check=True
    ).stdout
    rows = [line.split(None, 2) for line in out.splitlines()]
    parents = {int(p): int(pp) for p, pp, _ in rows}
    found = set()
    for pid in parents:
        p = pid
        while p > 1 and p in parents:
            if p == sshd.proc.pid and pid != p:
                found.add(pid)
                break
            p = parents[p]
    return found


def connections_to(port: int) -> dict[int, set[int]]:
    """pid -> its established TCP sockets whose peer is 127.0.0.1:``port`` (from /proc)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[2].split(":")[1], 16) == port and f[3] == "01":  # 01: ESTABLISHED
            inodes.add(int(f[9]))
    owners: dict[int, set[int]] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                    owners.setdefault(int(proc.name), set()).add(int(target[8:-1]))
        except OSError:
            continue  # a process that ended meanwhile
    return owners


def tunnel_settings(sshd: Sshd, served: Served, **serving):
    from tfship.serving import ServingSettings
    from tfship.targets import SSHAccess, TargetSettings

    return TargetSettings(
        hostname="127.0.0.1",
        username=sshd.user,
        ssh_port=sshd.port,
        base_path=str(served.base),
        access=SSHAccess(ssh_key_file=sshd.client_key, known_hosts=sshd.known_hosts),
        serving=ServingSettings(**serving),
        serving_tunnel=True,
    )


def test_the_tunnel_carries_requests_from_the_sshd_side_and_closes_clean(sshd, served):
    from tfship.targets import open_fleet

    before = {t.ident for t in threading.enumerate()}
    rest_port = int(served.rest.rsplit(":", 1)[1])
    with open_fleet(tunnel_settings(sshd, served, url=served.rest)) as fleet:
        target = fleet.single
        local = target.serving_url
        assert local != served.rest and local.startswith("http://127.0.0.1:")
        assert target.serving_version("digits") == 2000
        with requests.Session() as session:  # keep-alive: the far connection stays open
            assert session.get(f"{local}/v1/models/digits", timeout=10).status_code == 200
            owners = connections_to(rest_port)
            # TF Serving's peer is an sshd session process, never this process: the request
            # went through the SSH connection.
            assert owners and set(owners) <= sshd_children(sshd), owners
            assert os.getpid() not in owners
        assert target.tunnel.connections >= 2
    leftover = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert not [t for t in leftover if t.name.startswith("tfship-tunnel")], leftover
    with pytest.raises(requests.ConnectionError):  # the local port is closed
        requests.get(f"{local}/v1/models/digits", timeout=2)


def test_the_tunnel_reaches_grpc_too(sshd, served):
    pytest.importorskip("tensorflow_serving")
    from tfship.targets import open_fleet

    s = tunnel_settings(sshd, served, url=served.grpc, transport="grpc")
    with open_fleet(s) as fleet:
        assert fleet.single.serving_url != served.grpc
        assert fleet.single.serving_version("digits") == 2000


def test_deploy_status_and_test_deployed_through_the_tunnel(sshd, served, packaged, tmp_path):
    make_version(packaged, tmp_path / "pkgs", 3000)
    env = sshd.env(
        DEPLOY_SERVER_PATH=str(served.base),
        TF_SERVING_URL=served.rest,  # as the host sees it
        TFSHIP_SERVING_TUNNEL="true",
        # What is tested is the route, not the speed: the latency gate stays out of the way
        # on shared CI cores (the other checks, golden outputs included, still apply).
        TFSHIP_MAX_P95_MS="10000",
    )
    r = run_cli(
        "deploy",
        "--package",
        str(tmp_path / "pkgs" / "3000"),
        "--latency-requests",
        "5",
        "--wait-seconds",
        "30",
        "--json",
        cwd=tmp_path,
        env=env,
    )
    assert r.code == 0, r.err
    assert json.loads(r.out)["state"] == "deployed"
    assert "tunnel 127.0.0.1:" in r.err
    r = run_cli("status", "--json", cwd=tmp_path, env=env)
    assert r.code == 0 and json.loads(r.out)["hosts"][0]["serving"] == 3000, r.err
    r = run_cli(
        "test-deployed",
        "--manifest",
        str(tmp_path / "pkgs" / "3000" / "assets.extra" / "tfship.json"),
        "--latency-requests",
        "5",
        "--json",
        cwd=tmp_path,
        env=env,
    )
    assert r.code == 0, r.err
    # The report names the server as the host knows it, not the tunnel's ephemeral local end.
    assert json.loads(r.out)["passed"]
    where = f"{sshd.user}@127.0.0.1:{sshd.port}"
    assert json.loads(r.out)["url"] == f"{served.rest} on {where} (SSH tunnel)", r.out


def test_with_forwarding_off_in_sshd_the_tunnel_fails_as_unreachable(sshd, served, tmp_path):
    # The same settings against an sshd that refuses port forwarding: TF Serving is then out
    # of reach, which proves the tunnel (not a direct connection) carried the traffic above.
    port = free_port()
    conf = (sshd.root / "sshd_config").read_text()
    conf = re.sub(r"(?m)^Port \d+$", f"Port {port}", conf)
    conf = re.sub(r"(?m)^PidFile .*$", f"PidFile {tmp_path}/sshd.pid", conf)
    (tmp_path / "sshd_config").write_text(conf + "AllowTcpForwarding no\n")
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(tmp_path / "sshd_config")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        known = tmp_path / "known_hosts"
        known.write_text(sshd.known_hosts.read_text().replace(f"]:{sshd.port} ", f"]:{port} "))
        wait_port(port, proc)
        env = sshd.env(
            DEPLOY_SERVER_PORT=str(port),
            DEPLOY_SERVER_KNOWN_HOSTS=str(known),
            DEPLOY_SERVER_PATH=str(served.base),
            TF_SERVING_URL=served.rest,
            TFSHIP_SERVING_TUNNEL="true",
        )
        r = run_cli("status", "--json", cwd=tmp_path, env=env)
        assert r.code == 0, r.err
        row = json.loads(r.out)["hosts"][0]
        assert row["serving"] is None and "does not answer" in row["state"], row
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def wait_port(port: int, proc: subprocess.Popen) -> None:
    """Until sshd accepts connections (bounded; fails if it exits)."""
    import socket
    import time

    deadline = time.monotonic() + 15
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert proc.poll() is None and time.monotonic() < deadline, "sshd did not start"
        time.sleep(0.05)


def test_a_tunnel_without_an_ssh_host_is_one_line(tmp_path):
    r = run_cli("status", "--serving-tunnel", "--base-path", str(tmp_path), cwd=tmp_path, env=None)
    assert r.code == 2 and len(r.err_lines) == 1 and "DEPLOY_SERVER_HOSTNAME" in r.err, r.err


def test_a_fleet_through_tunnels_asks_each_host_for_its_own_loopback():
    from tfship.serving import ServingSettings
    from tfship.targets import TargetSettings, parse_hosts

    tunnelled = TargetSettings(hostname="a.example,b.example", serving_tunnel=True)
    assert [h.serving_url for h in parse_hosts(tunnelled)] == ["http://127.0.0.1:8501"] * 2
    grpc = TargetSettings(
        hostname="a.example", serving_tunnel=True, serving=ServingSettings(transport="grpc")
    )
    assert [h.serving_url for h in parse_hosts(grpc)] == ["127.0.0.1:8500"]
    direct = TargetSettings(hostname="a.example,b.example")
    assert [h.serving_url for h in parse_hosts(direct)] == [
        "http://a.example:8501",
        "http://b.example:8501",
    ]
