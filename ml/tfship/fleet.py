"""Deploy to a fleet of TF Serving hosts: canary first, then batches, all or nothing.

- Targets: ``DEPLOY_SERVER_HOSTNAME`` as a comma-separated list (same user, port, base path;
  serving URL ``http://<host>:8501``), or ``--hosts-file`` with one
  ``user@host:port base_path serving_url`` per line (``#`` comments allowed).
- Preflight: every host is reached (``require_all``, the default, stops before any change if
  one is not) and the fleet must serve one version (mixed versions block until resolved).
- Rollout: the canary gets the full deploy (stage 7 checks) plus a soak of ``canary_seconds``
  with the checks repeated; then the rest in parallel batches of ``max_parallel``. Any host
  failing stops the rollout and every host already moved is rolled back, in parallel.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tfship import config
from tfship.deploy import (
    DeploySettings,
    Staged,
    Target,
    abandon,
    commit,
    load_package,
    make_target,
    on_disk,
    reject,
    stage,
    wait_serving,
)
from tfship.errors import ConfigError, DeployError, HostError, TfshipError
from tfship.log import event
from tfship.report import failed, summary
from tfship.verify import load_test_split, verify_version


@dataclass
class HostSpec:
    """Where one TF Serving host is."""

    hostname: str
    username: str | None
    port: int
    base: str
    serving_url: str

    @property
    def label(self) -> str:
        return f"{self.username + '@' if self.username else ''}{self.hostname}:{self.port}"


def parse_hosts(
    hostnames: str | None,
    hosts_file: Path | None,
    username: str | None,
    port: int,
    base: str,
    serving_url: str | None,
) -> list[HostSpec]:
    """The fleet from the comma-separated list or the hosts file."""
    specs = []
    if hosts_file:
        for n, line in enumerate(Path(hosts_file).read_text().splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 3:
                raise ConfigError(
                    f"{hosts_file}:{n}: expected 'user@host:port base_path "
                    f"serving_url', got {line!r}"
                )
            addr, host_base, url = parts
            user, _, hostport = addr.rpartition("@")
            host, _, p = hostport.partition(":")
            if not host or (p and not p.isdigit()):
                raise ConfigError(f"{hosts_file}:{n}: bad address {addr!r}")
            specs.append(HostSpec(host, user or username, int(p or port), host_base, url))
    elif hostnames:
        for host in (h.strip() for h in hostnames.split(",")):
            if host:
                url = serving_url if serving_url and "," not in hostnames else None
                specs.append(
                    HostSpec(host, username, port, base, url or f"http://{host}:{config.REST_PORT}")
                )
    if not specs:
        raise ConfigError("no deploy hosts: set DEPLOY_SERVER_HOSTNAME or --hosts-file")
    return specs


def connect(
    specs: list[HostSpec], ssh: dict, transport: str, require_all: bool
) -> tuple[list[Target], list[str]]:
    """Reach every host (in parallel); return targets and the unreachable hosts' errors."""

    def one(spec: HostSpec):
        try:
            return make_target(
                spec.hostname,
                spec.base,
                spec.serving_url,
                transport,
                {**ssh, "username": spec.username, "port": spec.port},
            ), None
        except (HostError, ConfigError) as exc:
            return None, f"{spec.label}: {exc}"

    with ThreadPoolExecutor(max(1, len(specs))) as pool:
        results = list(pool.map(one, specs))
    targets = [t for t, _ in results if t is not None]
    errors = [e for _, e in results if e is not None]
    if errors and require_all:
        for t in targets:
            t.host.close()
        raise HostError(
            "not every host is reachable; nothing was changed: " + "; ".join(errors),
            hint="fix the hosts or pass --no-require-all to deploy to the rest",
        )
    return targets, errors


def state(targets: list[Target], model: str) -> list[dict]:
    """Per host: versions on disk, version serving."""

    def one(t: Target) -> dict:
        row = {"host": t.host.name, "serving_url": t.serving_url}
        try:
            row["on_disk"] = on_disk(t, model)
            row["serving"] = t.serving_version(model)
            row["state"] = "ok" if row["serving"] is not None else "nothing serving"
        except TfshipError as exc:
            row.update(on_disk=row.get("on_disk", []), serving=None, state=f"error: {exc}")
        return row

    with ThreadPoolExecutor(max(1, len(targets))) as pool:
        return list(pool.map(one, targets))


def serving_version(rows: list[dict]) -> int | None:
    """The one version the fleet serves; DeployError if the fleet is mixed."""
    versions = {r["serving"] for r in rows}
    if len(versions) > 1:
        listing = ", ".join(f"{r['host']}={r['serving']}" for r in rows)
        raise DeployError(
            f"the fleet serves mixed versions ({listing})",
            hint="resolve with `tfship rollback --to VERSION` on the fleet, or "
            "a deploy with --force",
        )
    return versions.pop() if versions else None


@dataclass
class HostResult:
    host: str
    old: int | None
    new: int
    # untouched | deployed | already-deployed | failed before any change | failed |
    # failed, rolled back | rolled-back | ROLLBACK FAILED
    result: str = "untouched"
    upload_s: float | None = None
    to_available_s: float | None = None
    checks: str = ""
    error: str | None = None


@dataclass
class FleetResult:
    model: str
    version: int
    hosts: list[HostResult] = field(default_factory=list)
    ok: bool = True
    canary_s: float | None = None  # start to canary passed (deploy, checks and soak)
    total_s: float | None = None

    def table(self) -> str:
        rows = [
            "| host | old version | new version | upload s | to AVAILABLE s | checks | result |",
            "|---|---|---|---|---|---|---|",
        ]
        for h in self.hosts:
            rows.append(
                f"| {h.host} | {h.old} | {h.new} | "
                f"{'' if h.upload_s is None else f'{h.upload_s:.2f}'} | "
                f"{'' if h.to_available_s is None else f'{h.to_available_s:.2f}'} | "
                f"{h.checks} | {h.result} |"
            )
        if self.total_s is not None:
            canary = (
                f"canary passed after {self.canary_s:.1f} s"
                if self.canary_s is not None
                else "canary did not pass"
            )
            rows.append(f"\n{canary}; whole rollout {self.total_s:.1f} s")
        return "\n".join(rows)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "version": self.version,
            "ok": self.ok,
            "canary_s": self.canary_s,
            "total_s": self.total_s,
            "hosts": [h.__dict__ for h in self.hosts],
        }


def _soak(
    target: Target,
    package_dir: Path,
    manifest: dict,
    version: int,
    seconds: float,
    s: DeploySettings,
) -> None:
    """Repeat the stage 7 checks on the canary for ``seconds``."""
    images, labels = load_test_split(package_dir)
    client = target.client(manifest["model_name"])
    deadline = time.monotonic() + seconds
    rounds = 0
    while True:
        checks, _ = verify_version(
            client, manifest, version, images, labels, s.verify, stage="canary"
        )
        rounds += 1
        if failed(checks):
            raise DeployError(f"canary soak round {rounds} failed: {summary(checks)}")
        if time.monotonic() >= deadline:
            break
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    event("fleet", "canary soak passed", host=target.host.name, rounds=rounds, s=seconds)


def fleet_deploy(
    targets: list[Target],
    package_dir: Path,
    s: DeploySettings,
    canary_seconds: float = 30.0,
    max_parallel: int = 2,
    force: bool = False,
) -> FleetResult:
    """Canary, soak, batches; roll back every moved host if any fails."""
    started = time.monotonic()
    manifest = load_package(package_dir)
    model, version = manifest["model_name"], int(manifest["version"])
    rows = state(targets, model)
    broken = [r for r in rows if r["state"].startswith("error")]
    if broken:
        raise DeployError(
            "cannot read the fleet's state: "
            + "; ".join(f"{r['host']}: {r['state']}" for r in broken)
        )
    if not force:
        serving_version(rows)
    old = {r["host"]: r["serving"] for r in rows}
    result = FleetResult(
        model, version, [HostResult(t.host.name, old[t.host.name], version) for t in targets]
    )
    by_host = {h.host: h for h in result.hosts}
    staged: dict[str, Staged] = {}
    moved: list[Target] = []

    def stage_one(t: Target) -> None:
        h = by_host[t.host.name]
        try:
            st = stage(t, package_dir, s)
        except TfshipError as exc:
            h.result, h.checks, h.error = "failed before any change", "not run", str(exc)
            raise
        staged[t.host.name] = st
        h.upload_s = st.times.get("upload")

    def commit_one(t: Target, soak: float = 0.0) -> None:
        h = by_host[t.host.name]
        try:
            r = commit(staged.pop(t.host.name), s)
            h.to_available_s = r.seconds.get("to_available")
            moved.append(t)
            if soak > 0:
                _soak(t, package_dir, manifest, version, soak, s)
            h.result, h.checks = r.state, "passed"
        except TfshipError as exc:
            # commit() rolls its own host back when its checks fail; a failed soak does not.
            undone = t not in moved and "did not complete" not in str(exc)
            h.result = "failed, rolled back" if undone else "failed"
            h.checks, h.error = "failed", str(exc)
            raise

    canary, rest = targets[0], targets[1:]
    event("fleet", "canary", host=canary.host.name, version=version)
    pool = ThreadPoolExecutor(max(1, len(rest)))
    uploads = []
    try:
        stage_one(canary)
        # The others upload (hash-checked, not yet visible) while the canary is checked, so
        # after it passes each host only renames, waits and verifies.
        uploads = [pool.submit(stage_one, t) for t in rest]
        commit_one(canary, canary_seconds)
        result.canary_s = round(time.monotonic() - started, 3)
        _first_error(uploads)
        for i in range(0, len(rest), max(1, max_parallel)):
            batch = rest[i : i + max(1, max_parallel)]
            event("fleet", "batch", hosts=",".join(t.host.name for t in batch))
            _first_error([pool.submit(commit_one, t) for t in batch])
    except TfshipError as exc:
        result.ok = False
        for f in uploads:  # let running uploads finish before their folders are removed
            f.exception()
        _revert(moved, model, version, old, s, by_host)
        result.total_s = round(time.monotonic() - started, 3)  # rollback included
        lines = ", ".join(f"{h.host}: {h.result}" for h in result.hosts)
        raise FleetFailed(
            f"fleet rollout of {model} version {version} stopped: {exc}. Hosts: {lines}", result
        ) from exc
    finally:
        for f in uploads:
            f.cancel()
        pool.shutdown(wait=True)
        for st in list(staged.values()):
            abandon(st)
    result.total_s = round(time.monotonic() - started, 3)
    event(
        "fleet",
        "rollout complete",
        model=model,
        version=version,
        hosts=len(targets),
        canary_s=result.canary_s,
        s=result.total_s,
    )
    return result


def _first_error(futures: list) -> None:
    """Wait for every future; raise the first error among them."""
    errors = [f.exception() for f in futures]
    for e in errors:
        if e is not None:
            raise e


class FleetFailed(DeployError):
    """The rollout stopped; ``result`` holds every host's state."""

    def __init__(self, message: str, result: FleetResult) -> None:
        super().__init__(message)
        self.result = result


def _revert(
    moved: list[Target], model: str, version: int, old: dict, s: DeploySettings, by_host: dict
) -> None:
    """Take ``version`` back off every moved host, in parallel, and wait for the old one."""

    def one(t: Target) -> None:
        h = by_host[t.host.name]
        if h.result == "failed, rolled back" or old[t.host.name] == version:
            return
        try:
            reject(t, model, version)
            wait_serving(t.client(model), old[t.host.name], s.verify.wait_seconds)
            h.result = "rolled-back"
        except TfshipError as exc:
            h.result, h.error = "ROLLBACK FAILED", str(exc)

    with ThreadPoolExecutor(max(1, len(moved))) as pool:
        list(pool.map(one, moved))


def status_table(rows: list[dict]) -> str:
    """`tfship status`: host, versions on disk, version serving, state."""
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
