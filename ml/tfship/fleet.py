"""Deploy and roll back on a :class:`~tfship.targets.Fleet`: one host, or many.

:func:`deploy_workspace` is stage 5 as the commands run it: it honours retrain's decision (no
new data: nothing to deploy; a challenger: refuse if the champion it was compared with no
longer serves, unless ``--force``), then :func:`ship` deploys to one host
(:func:`tfship.deploy.deploy`) or rolls out to a fleet:

- Preflight: every host is reached (``--require-all``, the default, stops before any change
  if one is not) and the fleet must serve one version (mixed versions block until resolved).
- Rollout: every host stages the version (upload and hash check under a name TF Serving
  ignores), ``max_parallel`` at a time, the canary first; the canary is committed (renamed into
  place) and gets the full checks plus a soak of ``canary_seconds``; only then are the others
  committed, each once its upload is done, ``max_parallel`` at a time. Any host failing stops
  the rollout: every host already moved is rolled back in parallel, staged uploads removed.

:func:`rollback_fleet` serves an older version again on every host of the fleet.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from tfship.deploy import (
    DeploySettings,
    RollbackResult,
    Staged,
    abandon,
    commit,
    deploy,
    load_package,
    reject,
    rollback,
    stage,
    wait_serving,
)
from tfship.errors import DeployError, TfshipError
from tfship.log import event
from tfship.report import failed, summary
from tfship.retrain import approved_champion, skipped
from tfship.settings import setting
from tfship.store import DEPLOYED, REJECTED, ROLLED_BACK, ArtifactStore
from tfship.targets import Fleet, Target, one_version
from tfship.verify import load_test_split, verify_version
from tfship.workspace import Workspace, read_json


@dataclass
class FleetSettings:
    """How a fleet rolls out (one host ignores them)."""

    canary_seconds: float = setting(
        30.0,
        "TFSHIP_CANARY_SECONDS",
        "Fleet: soak time on the canary host, with the checks repeated.",
        min=0,
    )
    max_parallel: int = setting(
        2,
        "TFSHIP_MAX_PARALLEL",
        "Fleet: hosts uploading at once (the canary's upload among them), and hosts switched "
        "and checked at once after the canary passed.",
        min=1,
    )
    require_all: bool = setting(
        True,
        None,
        "Fleet: stop before any change if a host is unreachable.",
        switch=True,
        flag="--require-all/--no-require-all",
    )


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
    # seconds from the rollout's start: upload hash-checked, commit began (the rename into
    # place follows), checks passed; they show the order the canary guarantees
    staged_s: float | None = None
    placed_s: float | None = None
    verified_s: float | None = None
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

    def summary(self) -> str:
        return self.table()

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


class RolloutStopped(Exception):
    """A host waiting for an upload slot when the rollout stopped: it stays untouched."""


class UploadSlots:
    """At most ``n`` transfers at once, begun in the hosts' order (the canary first).

    Host ``i`` may start once ``i - n + 1`` hosts are done with their slot (their transfer
    ended, or they will not transfer: a failure, a version already there), so whichever hosts
    are transferring number at most ``n``, and a host whose checks before the upload were slow
    does not lose its turn. A host that is waiting when ``stop`` is set raises
    :class:`RolloutStopped`.
    """

    def __init__(self, n: int, stop: threading.Event) -> None:
        self.n, self.stop = max(1, n), stop
        self.done: set[int] = set()
        self.cond = threading.Condition()

    @contextmanager
    def slot(self, i: int) -> Iterator[None]:
        """Wait for host ``i``'s turn, hold a slot for the transfer, free it after."""
        with self.cond:
            while i >= len(self.done) + self.n:
                if self.stop.is_set():
                    raise RolloutStopped
                self.cond.wait(0.25)  # woken by a freed slot; the timeout notices a stop
        try:
            yield
        finally:
            self.release(i)

    def release(self, i: int) -> None:
        """Host ``i`` is done with its slot (or never takes one); idempotent."""
        with self.cond:
            if i not in self.done:
                self.done.add(i)
                self.cond.notify_all()


def fleet_deploy(
    targets: list[Target], package_dir: Path, s: DeploySettings, fs: FleetSettings
) -> FleetResult:
    """Stage everywhere, commit the canary, soak, commit the rest; undo all on any failure.

    Staging (lock, upload, sha256 check into ``.incoming-*``, which TF Serving ignores) starts
    on the canary and the other hosts at once: ``max_parallel`` uploads at a time, begun in the
    hosts' order, the canary first (:class:`UploadSlots`), while the next hosts take their lock
    and run the checks before an upload meanwhile, and the finished ones their sha256 check:
    on real links the upload is most of a deploy, and a staged upload changes nothing a
    server can load. Committing (the rename into place, the wait, the checks) is what the
    canary guards: no other host is committed before the canary passed its checks and soak.
    After that each host is committed as soon as its upload is done, at most ``max_parallel``
    at once. Any failure (an upload, a commit) stops every commit not yet started; the hosts
    already moved are rolled back and every staged upload is removed.
    """
    canary_seconds, max_parallel = fs.canary_seconds, max(1, fs.max_parallel)
    started = time.monotonic()
    manifest = load_package(package_dir)
    model, version = manifest["model_name"], int(manifest["version"])
    rows = Fleet(targets, True).state(model)
    broken = [r for r in rows if r["state"].startswith("error")]
    if broken:
        raise DeployError(
            "cannot read the fleet's state: "
            + "; ".join(f"{r['host']}: {r['state']}" for r in broken)
        )
    if not s.force:
        one_version(rows)
    old = {r["host"]: r["serving"] for r in rows}
    result = FleetResult(
        model, version, [HostResult(t.host.name, old[t.host.name], version) for t in targets]
    )
    by_host = {h.host: h for h in result.hosts}
    staged: dict[str, Staged] = {}
    moved: list[Target] = []
    # Set by the first failure anywhere, before its future completes: a commit that has not
    # started yet sees it and leaves its host untouched.
    stop = threading.Event()
    errors: list[BaseException] = []

    def failed_with(exc: BaseException) -> None:
        errors.append(exc)
        stop.set()

    slots = UploadSlots(max_parallel, stop)

    def stage_one(i: int, t: Target) -> None:
        h = by_host[t.host.name]
        try:
            if stop.is_set():  # the rollout already stopped: do not upload for nothing
                return
            st = stage(t, package_dir, s, slot=lambda: slots.slot(i))
        except RolloutStopped:
            return  # it stopped while this host waited for a slot: untouched
        except Exception as exc:
            # An unexpected error (an SFTP permission error, a full disk) fails this host as a
            # TfshipError does: the rollout stops and is reverted, and the user reads one line.
            err = _as_deploy_error(t, exc)
            h.result, h.checks, h.error = "failed before any change", "not run", str(err)
            failed_with(err)
            raise err from None if err is exc else exc
        except BaseException as exc:
            failed_with(exc)
            raise
        finally:
            slots.release(i)  # a host that failed or skipped its transfer frees its turn
        staged[t.host.name] = st
        h.upload_s = st.times.get("upload")
        h.staged_s = round(time.monotonic() - started, 3)

    def commit_one(t: Target, soak: float = 0.0) -> None:
        h = by_host[t.host.name]
        if stop.is_set():  # another host failed: this one stays as it was
            return
        h.placed_s = round(time.monotonic() - started, 3)
        try:
            r = commit(staged.pop(t.host.name), s)
            h.to_available_s = r.seconds.get("to_available")
            moved.append(t)
            if soak > 0:
                _soak(t, package_dir, manifest, version, soak, s)
            h.result, h.checks = r.state, "passed"
            h.verified_s = round(time.monotonic() - started, 3)
        except Exception as exc:
            err = _as_deploy_error(t, exc)
            # commit() rolls its own host back when its checks fail; a failed soak does not.
            undone = t not in moved and "did not complete" not in str(err)
            h.result = "failed, rolled back" if undone else "failed"
            h.checks, h.error = "failed", str(err)
            failed_with(err)
            raise err from None if err is exc else exc
        except BaseException as exc:
            failed_with(exc)
            raise

    canary, rest = targets[0], targets[1:]
    event("fleet", "canary", host=canary.host.name, version=version)
    # Twice the uploads' threads: the next hosts lock and check while the others transfer.
    uploading = ThreadPoolExecutor(min(len(targets), 2 * max_parallel), thread_name_prefix="stage")
    committing = ThreadPoolExecutor(max_parallel, thread_name_prefix="commit")
    # in order: the canary first
    uploads = [uploading.submit(stage_one, i, t) for i, t in enumerate(targets)]
    commits: list[Future] = []
    try:
        uploads[0].result()
        if errors:  # another host's upload failed already: change nothing anywhere
            raise errors[0]
        if canary.host.name not in staged:  # cannot happen: nothing stopped the rollout
            raise DeployError(f"{canary.host.name}: the canary's upload did not run")
        commit_one(canary, canary_seconds)
        if errors:
            raise errors[0]
        result.canary_s = round(time.monotonic() - started, 3)
        event("fleet", "canary passed", host=canary.host.name, version=version, s=result.canary_s)
        host_of = {f: t for f, t in zip(uploads[1:], rest, strict=True)}
        for f in as_completed(host_of):
            f.result()  # an upload that failed stops the rollout here
            commits.append(committing.submit(commit_one, host_of[f]))
        _first_error(commits)
        if errors:
            raise errors[0]
    except TfshipError as exc:
        result.ok = False
        stop.set()
        _settle(uploads, commits)  # let running uploads finish before their folders go
        _revert(moved, model, version, old, s, by_host)
        result.total_s = round(time.monotonic() - started, 3)  # rollback included
        lines = ", ".join(f"{h.host}: {h.result}" for h in result.hosts)
        raise FleetFailed(
            f"fleet rollout of {model} version {version} stopped: {exc}. Hosts: {lines}", result
        ) from exc
    finally:
        stop.set()
        _settle(uploads, commits)
        uploading.shutdown(wait=True)
        committing.shutdown(wait=True)
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


def _settle(*groups: list[Future]) -> None:
    """Cancel what has not started; wait for what has (its outcome is already recorded)."""
    for futures in groups:
        for f in futures:
            if not f.cancel():
                f.exception()


def _as_deploy_error(t: Target, exc: Exception) -> TfshipError:
    """``exc`` itself if it is tfship's; else a DeployError naming the host and the error."""
    if isinstance(exc, TfshipError):
        return exc
    return DeployError(f"{t.host.name}: {type(exc).__name__}: {exc}")


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


@dataclass
class PackageChoice:
    """``tfship deploy --package``: which version folder to deploy."""

    package: Path | None = setting(
        None,
        "TFSHIP_PACKAGE",
        "A version folder to deploy. Default: the one in workspace/package/.",
        kind="dir",
    )


def ship(fleet: Fleet, package_dir: Path, s: DeploySettings, fs: FleetSettings):
    """Deploy ``package_dir`` to the fleet: one host directly, several canary-first."""
    if not fleet.several:
        return deploy(fleet.single, package_dir, s)
    return fleet_deploy(fleet.targets, package_dir, s, fs)


def deploy_workspace(
    ws_root: Path,
    fleet: Fleet,
    s: DeploySettings,
    fs: FleetSettings,
    package_dir: Path | None = None,
    store: ArtifactStore | None = None,
):
    """Stage 5 as the commands run it, honouring what retrain decided.

    - retrain found no new data: nothing to deploy (a :class:`~tfship.retrain.Skipped`);
    - retrain accepted a challenger: it compared it with the version serving then; if
      another one serves by now the approval was for another champion (StaleChampion,
      unless ``--force``).
    Without ``package_dir`` the workspace's package is deployed. With a ``store``, the
    outcome goes into its history: deployed, or rejected (rolled back) with the reason.
    """
    ws = Workspace(ws_root)
    if package_dir is None:
        if skip := skipped(ws_root, "deploy"):
            return skip
        info = read_json(ws.require(ws.package / "package.json", "package"))
        package_dir = ws.package / str(info["version"])
    s = replace(s, expect_serving=approved_champion(ws_root))
    if store is None:
        return ship(fleet, package_dir, s, fs)
    manifest = load_package(package_dir)
    model, version = manifest["model_name"], manifest["version"]
    hosts = [t.host.name for t in fleet.targets]
    try:
        result = ship(fleet, package_dir, s, fs)
    except DeployError as exc:  # refused, or failed and rolled back: the reason is kept
        store.record(model, REJECTED, version, hosts=hosts, reason=str(exc).splitlines()[0])
        raise
    previous = getattr(result, "previous", None)
    if previous is None and isinstance(result, FleetResult):
        previous = next((h.old for h in result.hosts), None)
    store.record(model, DEPLOYED, version, hosts=hosts, previous=previous)
    return result


@dataclass
class FleetRollback:
    """A rollback on every host of a fleet."""

    model: str
    hosts: dict[str, RollbackResult | str]

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "hosts": {
                h: r.to_dict() if hasattr(r, "to_dict") else r for h, r in self.hosts.items()
            },
        }

    def summary(self) -> str:
        return "\n".join(
            f"{h}: {r.summary() if hasattr(r, 'summary') else r}" for h, r in self.hosts.items()
        )


def rollback_fleet(
    fleet: Fleet,
    model: str,
    to: int | None,
    s: DeploySettings,
    store: ArtifactStore | None = None,
):
    """:func:`rollback_hosts`, and with a ``store`` the rollback goes into its history."""
    result = rollback_hosts(fleet, model, to, s)
    if store is not None:
        if isinstance(result, RollbackResult):
            version, previous = result.version, result.previous
        else:
            done = [r for r in result.hosts.values() if isinstance(r, RollbackResult)]
            version, previous = done[0].version, done[0].previous
        hosts = [t.host.name for t in fleet.targets]
        store.record(model, ROLLED_BACK, version, hosts=hosts, previous=previous)
    return result


def rollback_hosts(fleet: Fleet, model: str, to: int | None, s: DeploySettings):
    """Serve an older kept version again: on one host, or on every host of the fleet.

    On a fleet the version is the same everywhere: ``to``, else the newest kept version
    older than the one the fleet serves (a mixed fleet needs ``--to``).
    """
    if not fleet.several:
        return rollback(fleet.single, model, to, s)
    if to is None:
        serving = one_version(fleet.state(model))
        kept = set.intersection(*(set(t.versions(model)) for t in fleet.targets))
        older = sorted(v for v in kept if serving is None or v < serving)
        if not older:
            raise DeployError(
                f"no older version of {model} is kept on every host of the fleet",
                hint="name one with --to",
            )
        to = older[-1]
    results: dict[str, RollbackResult | str] = {}

    def one(t: Target) -> None:
        try:
            results[t.host.name] = rollback(t, model, to, s)
        except TfshipError as exc:
            results[t.host.name] = f"FAILED: {exc}"

    with ThreadPoolExecutor(max(1, len(fleet.targets))) as pool:
        list(pool.map(one, fleet.targets))
    out = FleetRollback(model, results)
    failures = [h for h, r in results.items() if isinstance(r, str)]
    if failures:
        raise DeployError(
            f"rollback of {model} to {to} failed on {', '.join(failures)}: " + out.summary()
        )
    return out
