"""Where models are deployed: TF Serving hosts, one type for one host or a fleet.

A :class:`Target` is one TF Serving host: its model base path (on a :class:`~tfship.store.Host`,
a local folder or an SSH host) and the URL TF Serving answers on. A :class:`Fleet` is what
every command holds: one target or several (a single host is a fleet of one), opened from
:class:`TargetSettings` by :func:`open_fleet` and closed (every SSH link) when the ``with``
block ends.

- Hosts: ``DEPLOY_SERVER_HOSTNAME`` (one host, or a comma-separated list: same user, port and
  base path; serving URL ``http://<host>:8501``), or ``--hosts-file`` with one
  ``user@host:port base_path serving_url`` per line (``#`` comments allowed). Without either,
  the target is a local folder served by ``tfship serve``.
- A bucket: ``DEPLOY_SERVER_PATH=s3://bucket/prefix`` (no hostname) is a model base path TF
  Serving replicas read (``--model_base_path=s3://bucket/prefix/<model>``); ``TF_SERVING_URL``
  lists every replica, comma-separated, and each one is waited for and verified.
- A fleet serves one version: :meth:`Fleet.serving_version` refuses a mixed fleet, and a
  target refuses replicas that answer with different versions.
- A tunnel (``TFSHIP_SERVING_TUNNEL``): each SSH target's TF Serving is reached through its
  SSH connection, from a local port (:meth:`tfship.ssh.SSHHost.forward`); ``serving_url`` is
  then that local end, and the URL the settings give is the address as the host sees it
  (default ``http://127.0.0.1:8501``). Deploy, status and retrain use ``Target.clients()`` and
  do not know the difference; ``test-deployed`` gets its URL from :func:`reach_serving`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from tfship import config, s3
from tfship.errors import ConfigError, DeployError, HostError, TfshipError
from tfship.log import event
from tfship.serving import HOSTNAME, ServingClient, ServingSettings, ServingUnreachable
from tfship.settings import setting
from tfship.store import Host, LocalHost, check_model_name, numeric_versions

if TYPE_CHECKING:
    from tfship.ssh import Forward, SSHHost

PASSWORD_ENV = "DEPLOY_SERVER_PASSWORD"  # read only from the environment: a secret


@dataclass
class SSHAccess:
    """How tfship authenticates to SSH hosts: deploy targets and ssh:// snapshot sources."""

    ssh_key_file: Path | None = setting(
        None, "DEPLOY_SERVER_SSH_KEY_FILE", "Private key file.", kind="file"
    )
    ssh_key_env: str = setting(
        "DEPLOY_SERVER_SSH_KEY",
        "TFSHIP_SSH_KEY_ENV",
        "Name of the variable holding the private key's text, or its base64 (`base64 -w0 "
        "KEY`: CircleCI variables lose newlines easily). Read in memory, never written to "
        "disk. With no key here nor in a file: the ssh-agent, then ~/.ssh/id_* (what "
        "CircleCI's add_ssh_keys sets up).",
    )
    known_hosts: Path | None = setting(
        None, "DEPLOY_SERVER_KNOWN_HOSTS", "Default: ~/.ssh/known_hosts.", kind="file"
    )
    known_hosts_env: str = setting(
        "DEPLOY_SERVER_KNOWN_HOSTS_LINES",
        "TFSHIP_KNOWN_HOSTS_ENV",
        "Name of the variable holding known_hosts lines (`ssh-keyscan -p PORT HOST`'s output), "
        "read in memory; trusted with the known_hosts file.",
    )
    accept_unknown_host_key: bool = setting(
        False,
        None,
        "Connect to a host whose key is not in known_hosts (prints a warning; a CHANGED key "
        "is still refused).",
        switch=True,
    )
    ssh_timeout: float = setting(10.0, "TFSHIP_SSH_TIMEOUT", "Connect timeout, seconds.", min=0.1)

    def ssh(self) -> dict:
        """``SSHSettings`` keywords (the secrets are read from the environment, in memory)."""
        return {
            "key_file": str(self.ssh_key_file) if self.ssh_key_file else None,
            "key_text": os.environ.get(self.ssh_key_env) if self.ssh_key_env else None,
            "key_text_name": self.ssh_key_env or "--ssh-key-env (empty)",
            "password": os.environ.get(PASSWORD_ENV),
            "known_hosts": str(self.known_hosts) if self.known_hosts else None,
            "known_hosts_lines": (
                os.environ.get(self.known_hosts_env) if self.known_hosts_env else None
            ),
            "known_hosts_lines_name": self.known_hosts_env or "--known-hosts-env (empty)",
            "accept_unknown_host": self.accept_unknown_host_key,
            "connect_timeout": self.ssh_timeout,
        }


@dataclass
class TargetSettings:
    """Where the deploy target is (the CircleCI sample's DEPLOY_SERVER_* names)."""

    hostname: str | None = HOSTNAME.field()
    username: str | None = setting(None, "DEPLOY_SERVER_USERNAME", "SSH user.")
    base_path: str = setting(
        "serving",
        "DEPLOY_SERVER_PATH",
        "Models root on the host; TF Serving's --model_base_path is <this>/<model>.",
    )
    ssh_port: int = setting(22, "DEPLOY_SERVER_PORT", "SSH port.", min=1, max=65535)
    access: SSHAccess = field(default_factory=SSHAccess)
    hosts_file: Path | None = setting(
        None,
        "TFSHIP_HOSTS_FILE",
        "One 'user@host:port base_path serving_url' per line (a fleet).",
        kind="existing-file",
    )
    serving: ServingSettings = field(default_factory=ServingSettings)
    serving_tunnel: bool = setting(
        False,
        "TFSHIP_SERVING_TUNNEL",
        "Reach TF Serving through the SSH connection (a local port forwarded to the host), so "
        "its ports need not be open to the network (install_server.sh --tunnel binds them to "
        "the host's 127.0.0.1). TF_SERVING_URL is then the address as the host sees it; "
        "default http://127.0.0.1:8501 (gRPC: 127.0.0.1:8500).",
    )

    def ssh(self) -> dict:
        """SSH settings shared by every host (the secrets are read from the environment)."""
        return self.access.ssh()

    @property
    def several(self) -> bool:
        """Whether the settings name a fleet (a hosts file, or several hostnames)."""
        return bool(self.hosts_file) or bool(self.hostname and "," in self.hostname)


@dataclass
class Target:
    """One TF Serving host: where its model base path is and how to query it."""

    host: Host
    base: str  # the models root; TF Serving's --model_base_path is <base>/<model>
    serving_url: str
    transport: str = "rest"
    replicas: tuple[str, ...] = ()  # more servers reading the same base path (a bucket)
    tunnel: Forward | None = None  # serving_url is its local end (TFSHIP_SERVING_TUNNEL)
    shown_url: str | None = None  # serving_url as people know it (a tunnel's far end)

    def close(self) -> None:
        """Close the tunnel, then the host's link."""
        if self.tunnel is not None:
            self.tunnel.close()
        self.host.close()

    def model_dir(self, model: str) -> str:
        return str(PurePosixPath(self.base) / check_model_name(model))

    @property
    def urls(self) -> list[str]:
        """Every server that reads this base path."""
        return [self.serving_url, *self.replicas]

    def client(self, model: str) -> ServingClient:
        return self.clients(model)[0]

    def clients(self, model: str) -> list[ServingClient]:
        """One client per server reading this base path: each is waited for and verified."""
        shown = [self.shown_url, *self.replicas]
        return [
            ServingClient(u, model, transport=self.transport, shown=where)
            for u, where in zip(self.urls, shown, strict=True)
        ]

    def versions(self, model: str) -> list[int]:
        """The version folders on the host."""
        return numeric_versions(self.host.listdir(self.model_dir(model)))

    def serving_version(self, model: str) -> int | None:
        """The version TF Serving answers with now; None on a fresh host.

        ``tensorflow_model_server`` opens no port until every model has a version AVAILABLE
        (``model_servers/server.cc``): a server that does not answer while the model's base
        path holds no version is a fresh host waiting for its first deploy, not a failure.
        With versions on disk, silence means the server is down or still loading.
        """
        answers = {c.shown: self._serving_version(c, model) for c in self.clients(model)}
        if len(set(answers.values())) > 1:
            listing = ", ".join(f"{url}={v}" for url, v in answers.items())
            raise DeployError(
                f"the servers reading {self.host.name}:{self.model_dir(model)} serve "
                f"different versions ({listing})",
                hint="wait for their next poll of the base path, or check the one behind",
            )
        return next(iter(answers.values()))

    def _serving_version(self, client: ServingClient, model: str) -> int | None:
        try:
            return client.serving_version()
        except ServingUnreachable as exc:
            versions = self.versions(model)
            if not versions:
                event(
                    "deploy",
                    "TF Serving is not listening and no version is on the host: a fresh "
                    "server opens its ports once the first version has loaded",
                    host=self.host.name,
                )
                return None
            raise ServingUnreachable(
                f"{client.shown} does not answer, but {self.model_dir(model)} holds versions "
                f"{', '.join(map(str, versions))}",
                hint="is TF Serving running? A server still loading (or retrying) a version "
                "keeps its ports closed; its log says why",
            ) from exc


def host_side_url(transport: str) -> str:
    """Where TF Serving answers as seen from its host (a tunnel's default far end)."""
    if transport == "grpc":
        return f"127.0.0.1:{config.GRPC_PORT}"
    return f"http://127.0.0.1:{config.REST_PORT}"


def tunnel_url(host: SSHHost, url: str, transport: str) -> tuple[Forward, str]:
    """Forward a local port to ``url``'s address as the host sees it; return the forward and
    the same URL pointing at its local end."""
    has_scheme = "//" in url
    parts = urlsplit(url if has_scheme else f"//{url}")
    try:
        port = parts.port or (config.GRPC_PORT if transport == "grpc" else config.REST_PORT)
    except ValueError as exc:
        raise ConfigError(f"TF_SERVING_URL {url}: {exc}") from exc
    if not parts.hostname:
        raise ConfigError(
            f"TF_SERVING_URL {url} names no host",
            hint="with a tunnel it is the address as the deploy host sees it, e.g. "
            + host_side_url(transport),
        )
    forward = host.forward(parts.hostname, port)
    local = f"127.0.0.1:{forward.port}"
    return forward, urlunsplit(parts._replace(netloc=local)) if has_scheme else local


def make_target(
    hostname: str | None,
    base: str,
    serving_url: str | None,
    transport: str,
    ssh: dict,
    tunnel: bool = False,
) -> Target:
    """A local folder (no hostname: the embedded default), a bucket, or an SSH host.

    ``tunnel``: reach an SSH host's TF Serving through the SSH link; ``serving_url`` is then
    the address as the host sees it.
    """
    if tunnel and not hostname:
        raise ConfigError(
            "--serving-tunnel goes through the deploy host's SSH connection, and no "
            "DEPLOY_SERVER_HOSTNAME is set",
            hint="set DEPLOY_SERVER_HOSTNAME, or drop TFSHIP_SERVING_TUNNEL",
        )
    if s3.is_s3(base):
        if hostname:
            raise ConfigError(
                f"DEPLOY_SERVER_PATH {base} is a bucket, but DEPLOY_SERVER_HOSTNAME is set",
                hint="unset DEPLOY_SERVER_HOSTNAME: TF Serving reads the bucket itself",
            )
        if not serving_url:
            raise ConfigError(
                f"{base}: a bucket has no TF Serving of its own",
                hint="set TF_SERVING_URL to the servers reading it (comma-separated)",
            )
        uri = s3.S3Uri.parse(base)
        urls = [u.strip() for u in serving_url.split(",") if u.strip()]
        return Target(s3.S3Host(uri.bucket), uri.key, urls[0], transport, tuple(urls[1:]))
    if not hostname:
        url = serving_url or ServingSettings().resolved_url(base)
        return Target(LocalHost(), str(Path(base).expanduser().absolute()), url, transport)
    from tfship.ssh import SSHHost, SSHSettings  # paramiko: only SSH targets pay for it

    host = SSHHost(SSHSettings(hostname=hostname, **ssh)).connect()
    if not tunnel:
        return Target(host, base, serving_url or f"http://{hostname}:{config.REST_PORT}", transport)
    far = serving_url or host_side_url(transport)
    try:
        forward, local = tunnel_url(host, far, transport)
    except BaseException:
        host.close()
        raise
    shown = f"{far} on {host.name} (SSH tunnel)"
    return Target(host, base, local, transport, tunnel=forward, shown_url=shown)


@dataclass
class HostSpec:
    """Where one TF Serving host of a fleet is."""

    hostname: str
    username: str | None
    port: int
    base: str
    serving_url: str

    @property
    def label(self) -> str:
        return f"{self.username + '@' if self.username else ''}{self.hostname}:{self.port}"


def parse_hosts(s: TargetSettings) -> list[HostSpec]:
    """The fleet from the hosts file or the comma-separated hostnames."""
    specs = []
    if s.hosts_file:
        for n, line in enumerate(Path(s.hosts_file).read_text().splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 3:
                raise ConfigError(
                    f"{s.hosts_file}:{n}: expected 'user@host:port base_path serving_url', "
                    f"got {line!r}"
                )
            addr, host_base, url = parts
            user, _, hostport = addr.rpartition("@")
            host, _, p = hostport.partition(":")
            if not host or (p and not p.isdigit()):
                raise ConfigError(f"{s.hosts_file}:{n}: bad address {addr!r}")
            specs.append(HostSpec(host, user or s.username, int(p or s.ssh_port), host_base, url))
    elif s.hostname:
        names = [h.strip() for h in s.hostname.split(",") if h.strip()]
        for host in names:
            url = s.serving.url if s.serving.url and len(names) == 1 else None
            if s.serving_tunnel:  # every host's TF Serving as the host itself sees it
                url = s.serving.url or host_side_url(s.serving.transport)
            specs.append(
                HostSpec(
                    host,
                    s.username,
                    s.ssh_port,
                    s.base_path,
                    url or f"http://{host}:{config.REST_PORT}",
                )
            )
    if not specs:
        raise ConfigError("no deploy hosts: set DEPLOY_SERVER_HOSTNAME or --hosts-file")
    return specs


class Fleet:
    """The deploy target: one host or several. A context manager: it closes every link."""

    def __init__(self, targets: list[Target], several: bool) -> None:
        self.targets = targets
        self.several = several  # named as a fleet (a single host is a fleet of one)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for t in self.targets:
            t.close()

    @property
    def single(self) -> Target:
        """The one target of a single-host (or local) deploy."""
        return self.targets[0]

    def state(self, model: str) -> list[dict]:
        """Per host: versions on disk, version serving (or the error reading them)."""

        def one(t: Target) -> dict:
            row = {"host": t.host.name, "serving_url": t.serving_url}
            try:
                row["on_disk"] = t.versions(model)
                row["serving"] = t.serving_version(model)
                row["state"] = "ok" if row["serving"] is not None else "nothing serving"
            except TfshipError as exc:
                row.update(on_disk=row.get("on_disk", []), serving=None, state=f"error: {exc}")
            return row

        with ThreadPoolExecutor(max(1, len(self.targets))) as pool:
            return list(pool.map(one, self.targets))

    def serving_version(self, model: str) -> int | None:
        """The one version the fleet serves; DeployError if the fleet is mixed."""
        if not self.several:
            return self.single.serving_version(model)
        return one_version(self.state(model))


def one_version(rows: list[dict]) -> int | None:
    """The one version the rows (hosts) serve; DeployError naming each host if mixed."""
    versions = {r["serving"] for r in rows}
    if len(versions) > 1:
        listing = ", ".join(f"{r['host']}={r['serving']}" for r in rows)
        raise DeployError(
            f"the fleet serves mixed versions ({listing})",
            hint="resolve with `tfship rollback --to VERSION` on the fleet, or a deploy with "
            "--force",
        )
    return versions.pop() if versions else None


def open_fleet(s: TargetSettings, require_all: bool = True) -> Fleet:
    """Reach the target(s) the settings name; for a fleet, every host in parallel.

    With ``require_all`` an unreachable host stops everything before any change; without
    it, unreachable hosts are skipped with a warning.
    """
    if not s.several:
        if s.serving_tunnel:
            url = s.serving.url or host_side_url(s.serving.transport)
        elif s3.is_s3(s.base_path):
            url = s.serving.url
        else:
            url = s.serving.resolved_url(s.base_path)
        ssh = {**s.ssh(), "username": s.username, "port": s.ssh_port}
        target = make_target(
            s.hostname, s.base_path, url, s.serving.transport, ssh, tunnel=s.serving_tunnel
        )
        return Fleet([target], False)
    specs = parse_hosts(s)

    def one(spec: HostSpec) -> tuple[Target | None, str | None]:
        ssh = {**s.ssh(), "username": spec.username, "port": spec.port}
        try:
            target = make_target(
                spec.hostname,
                spec.base,
                spec.serving_url,
                s.serving.transport,
                ssh,
                tunnel=s.serving_tunnel,
            )
            target.transport = s.serving.transport
            return target, None
        except (HostError, ConfigError) as exc:
            return None, f"{spec.label}: {exc}"

    with ThreadPoolExecutor(max(1, len(specs))) as pool:
        results = list(pool.map(one, specs))
    targets = [t for t, _ in results if t is not None]
    errors = [e for _, e in results if e is not None]
    if errors and require_all:
        for t in targets:
            t.close()
        raise HostError(
            "not every host is reachable; nothing was changed: " + "; ".join(errors),
            hint="fix the hosts or pass --no-require-all to deploy to the rest",
        )
    for e in errors:
        event("fleet", f"WARNING: skipping unreachable host {e}")
    return Fleet(targets, True)


@contextmanager
def reach_serving(s: TargetSettings) -> Iterator[tuple[ServingSettings, str | None]]:
    """The serving settings to query TF Serving with, for commands that only talk to it
    (``test-deployed``): as given, or, with a tunnel, pointing at the tunnel's local end for
    as long as the ``with`` block lasts; and how reports name that server (None: its URL)."""
    if not s.serving_tunnel:
        yield s.serving, None
        return
    if s.several:
        raise ConfigError(
            "a tunnel reaches one host's TF Serving here, and the settings name a fleet",
            hint="set DEPLOY_SERVER_HOSTNAME to the one host to verify",
        )
    with open_fleet(s) as fleet:
        yield replace(s.serving, url=fleet.single.serving_url), fleet.single.shown_url


def status_table(rows: list[dict]) -> str:
    """``tfship status``: host, versions on disk, version serving, state."""
    versions = {r["serving"] for r in rows}
    lines = ["| host | versions on disk | serving | state |", "|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['host']} | {', '.join(map(str, r['on_disk'])) or '-'} | "
            f"{r['serving']} | {r['state']} |"
        )
    verdict = (
        "consistent"
        if len(versions) == 1
        else f"MIXED: {', '.join(str(v) for v in sorted(versions, key=str))}"
    )
    return "\n".join(lines) + f"\n\nfleet: {verdict}"
