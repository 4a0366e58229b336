"""Stage 5: ship a packaged version to TF Serving with no downtime, and roll back on failure.

Unlike the original CircleCI sample (stop the container, delete and copy version ``1``,
restart), a deploy here never stops TF Serving:

1. take a per-model lock on the host (atomic ``mkdir``; a stale lock may be broken);
2. upload to ``<base>/<model>/.incoming-<version>-<random>`` (TF Serving ignores it), check
   every file's sha256 on the host against the manifest, rename to ``<base>/<model>/<version>``
   in one step (an identical version already there is not uploaded again);
3. wait (bounded) until TF Serving reports the version AVAILABLE;
4. run the stage 7 checks against that version;
5. on any failure after the rename: move the version to ``<model>/.rejected/``, wait until the
   previous version answers again, and fail naming what failed and what is serving;
6. keep the newest K versions on the host, never removing the one serving.

:func:`rollback` moves back to the previous (or a named) kept version with the same checks.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfship.errors import (
    DeployError,
    HostError,
    ServingError,
    StaleChampion,
    StoreError,
    TfshipError,
)
from tfship.log import event
from tfship.report import failed, summary
from tfship.serving import ServingClient
from tfship.settings import setting
from tfship.store import (
    MANIFEST,
    Host,
    check_model_name,
    check_version,
    discard_staged,
    publish_staged,
    stage_version,
)
from tfship.targets import Target
from tfship.verify import VerifySettings, load_test_split, verify_version

LOCK = ".tfship-lock"
REJECTED = ".rejected"


@dataclass
class DeploySettings:
    """Knobs of a deploy and a rollback."""

    keep: int = setting(
        3, "TFSHIP_KEEP_VERSIONS", "Versions kept on the host (never the one serving).", min=1
    )
    lock_stale_seconds: float = setting(
        900.0,
        "TFSHIP_LOCK_STALE_SECONDS",
        "A lock older than this is broken, with a warning.",
        min=0,
    )
    lock_wait_seconds: float = setting(
        60.0, "TFSHIP_LOCK_WAIT_SECONDS", "How long to wait for another deploy.", min=0
    )
    force: bool = setting(
        False,
        None,
        "Deploy (or roll back) even if the version serving is not the one retrain compared "
        "with, or if the new version takes another pixel range than the one serving.",
        switch=True,
    )
    expect_serving: int | None = None  # stale-approval guard (retrain records it)
    verify: VerifySettings = field(default_factory=VerifySettings)


@dataclass
class DeployResult:
    model: str
    version: int
    host: str
    state: str  # deployed | already-deployed
    bytes_sent: int
    previous: int | None
    seconds: dict[str, float]
    verification: dict  # the first server's checks (TF_SERVING_URL's order)
    removed: list[int]
    # every server's, when several read the base path (a bucket's replicas), in that order
    replicas: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return self.__dict__.copy()

    def summary(self) -> str:
        on = f" on {len(self.replicas)} replicas" if self.replicas else ""
        return (
            f"{self.state}: {self.model} version {self.version} on {self.host} "
            f"(was {self.previous}); verified{on} in {self.seconds['total']:.1f} s"
        )


@dataclass
class RollbackResult:
    """A rollback on one host."""

    model: str
    version: int
    previous: int | None
    moved_aside: list[int]
    verification: dict

    def to_dict(self) -> dict:
        return self.__dict__.copy()

    def summary(self) -> str:
        return (
            f"rolled back {self.model} to version {self.version} (was {self.previous}); "
            f"moved aside: {self.moved_aside}"
        )


@dataclass
class RollbackSettings:
    """``tfship rollback``: which version to serve again."""

    to: int | None = setting(
        None,
        "TFSHIP_ROLLBACK_TO",
        "Version to serve. Default: the newest kept version older than the one serving.",
        value_type=int,
    )


# --------------------------------------------------------------------------------------------
# Lock
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def model_lock(
    target: Target, model: str, stale_seconds: float, wait_seconds: float, purpose: str
) -> Iterator[None]:
    """Hold ``<model_dir>/.tfship-lock`` (atomic mkdir) for the duration of a deploy."""
    model_dir = target.model_dir(model)
    target.host.makedirs(model_dir)
    lock = f"{model_dir}/{LOCK}"
    owner = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "time": time.time(),
        "purpose": purpose,
        "build": os.environ.get("CIRCLE_BUILD_URL"),
    }
    deadline = time.monotonic() + wait_seconds
    announced = False
    while True:
        try:
            target.host.mkdir(lock)
            break
        except FileExistsError:
            holder = _lock_owner(target.host, lock)
            age = time.time() - float(holder.get("time", 0))
            if _dead_local_owner(holder):
                event(
                    "deploy",
                    f"WARNING: breaking the lock of deploy process {holder['pid']}"
                    ", which died on this machine",
                    host=target.host.name,
                )
                target.host.remove_tree(lock)
                continue
            if age > stale_seconds:
                event(
                    "deploy",
                    f"WARNING: breaking a stale lock ({age:.0f} s old, held by "
                    f"{holder.get('host')}:{holder.get('pid')} for "
                    f"{holder.get('purpose')})",
                    host=target.host.name,
                )
                target.host.remove_tree(lock)
                continue
            if time.monotonic() > deadline:
                raise DeployError(
                    f"{target.host.name}: another deploy of {model} holds the lock "
                    f"({holder.get('purpose')} by {holder.get('host')}:{holder.get('pid')}, "
                    f"{age:.0f} s ago)",
                    hint="wait for it, raise --lock-wait-seconds, or lower "
                    "--lock-stale-seconds to break a dead one",
                ) from None
            if not announced:
                event(
                    "deploy",
                    "waiting for another deploy's lock",
                    host=target.host.name,
                    held_by=f"{holder.get('host')}:{holder.get('pid')}",
                )
                announced = True
            time.sleep(0.3)
    try:
        target.host.write_text(f"{lock}/owner.json", json.dumps(owner))
        yield
    finally:
        with contextlib.suppress(Exception):
            target.host.remove_tree(lock)


def _dead_local_owner(holder: dict) -> bool:
    """The lock was taken on this machine by a process that no longer exists."""
    if holder.get("host") != socket.gethostname() or not str(holder.get("pid", "")).isdigit():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _lock_owner(host: Host, lock: str) -> dict:
    try:
        return json.loads(host.read_text(f"{lock}/owner.json"))
    except (OSError, ValueError, HostError):
        # Created but not yet described (or crashed in between): age it from "now" so a
        # concurrent deploy waits rather than breaking it.
        return {"time": time.time(), "host": "?", "pid": "?", "purpose": "?"}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def clean_incoming(target: Target, model: str) -> list[str]:
    """Remove leftover ``.incoming-*`` folders (we hold the lock: nobody else is uploading)."""
    model_dir = target.model_dir(model)
    leftovers = [n for n in target.host.listdir(model_dir) if n.startswith(".incoming-")]
    for name in leftovers:
        target.host.remove_tree(f"{model_dir}/{name}")
        event("deploy", "removed an interrupted upload", host=target.host.name, path=name)
    return leftovers


def reject(target: Target, model: str, version: int) -> str:
    """Move a version out of TF Serving's sight, to ``<model>/.rejected/<version>-<time>``."""
    model_dir = target.model_dir(model)
    target.host.makedirs(f"{model_dir}/{REJECTED}")
    dest = f"{model_dir}/{REJECTED}/{version}-{int(time.time())}-{secrets.token_hex(2)}"
    target.host.rename(f"{model_dir}/{version}", dest)
    event(
        "deploy",
        "moved version out of the base path",
        host=target.host.name,
        version=version,
        to=dest,
    )
    return dest


def wait_serving(client: ServingClient, version: int | None, timeout: float) -> None:
    """Wait until requests without a version are answered by ``version``."""
    deadline = time.monotonic() + timeout
    current = None
    while time.monotonic() < deadline:
        with contextlib.suppress(ServingError):
            current = client.serving_version()
            if current == version:
                return
        time.sleep(0.25)
    raise ServingError(
        f"version {version} is not answering after {timeout:g} s (serving: {current})"
    )


def retain(target: Target, model: str, keep: int, serving: int | None) -> list[int]:
    """Delete all but the newest ``keep`` versions; never the serving one."""
    versions = target.versions(model)
    doomed = [v for v in versions[:-keep] if v != serving] if keep > 0 else []
    for v in doomed:
        target.host.remove_tree(f"{target.model_dir(model)}/{v}")
    if doomed:
        event(
            "deploy",
            "retention removed old versions",
            host=target.host.name,
            versions=",".join(map(str, doomed)),
            keep=keep,
        )
    return doomed


def load_package(package_dir: Path) -> dict:
    """The manifest of a local package folder."""
    try:
        return json.loads((Path(package_dir) / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise StoreError(
            f"{package_dir}: no {MANIFEST}; not a tfship package", hint="run `tfship package` first"
        ) from exc


# --------------------------------------------------------------------------------------------
# Deploy
# --------------------------------------------------------------------------------------------


@dataclass
class Staged:
    """A version uploaded to a host's ``.incoming-*`` folder under the lock, not yet renamed.

    :func:`commit` makes it visible to TF Serving and verifies it; :func:`abandon` removes it.
    Either releases the lock.
    """

    target: Target
    package_dir: Path
    manifest: dict
    model: str
    version: int
    previous: int | None
    incoming: str | None  # None: an identical version is already on the host
    sent: int
    times: dict[str, float]
    started: float
    lock: contextlib.ExitStack
    done: bool = False


def stage(
    target: Target,
    package_dir: Path,
    s: DeploySettings,
    slot: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Staged:
    """Lock, check, upload and hash-check ``package_dir`` on the host; nothing is served yet.

    ``slot``: entered around the transfer alone (see :func:`~tfship.store.stage_version`); the
    time spent waiting for it is ``times["wait_for_upload"]``, not part of ``times["upload"]``.
    """
    manifest = load_package(package_dir)
    model = check_model_name(manifest["model_name"])
    version = check_version(manifest["version"])
    host = target.host.name
    times: dict[str, float] = {}
    t0 = time.monotonic()
    lock = contextlib.ExitStack()
    lock.enter_context(
        model_lock(target, model, s.lock_stale_seconds, s.lock_wait_seconds, f"deploy {version}")
    )
    try:
        times["lock"] = round(time.monotonic() - t0, 3)
        clean_incoming(target, model)
        previous = target.serving_version(model)
        if s.expect_serving is not None and previous != s.expect_serving and not s.force:
            raise StaleChampion(
                f"{model}: the retrain compared against version {s.expect_serving}, but "
                f"{previous} is serving now; the approval was for another champion",
                hint="retrain again, or pass --force to deploy anyway",
            )
        if previous is not None and previous != version and not s.force:
            change = input_change(served_manifest(target, model, previous), manifest)
            if change:
                raise DeployError(
                    f"{model}: version {version} takes pixels in {change[1]}, version "
                    f"{previous} (serving) in {change[0]}: every client would have to change",
                    hint="pass --force once every client sends what the new version takes",
                )
        existing = target.versions(model)
        if existing and version < max(existing) and version not in existing:
            raise DeployError(
                f"{host}: version {version} is older than version {max(existing)} on the host; "
                "TF Serving serves the highest version, so it would never answer",
                hint="package a new version (the default version is the current time)",
            )
        event("deploy", "uploading", model=model, version=version, host=host, serving=previous)
        waited = 0.0

        @contextlib.contextmanager
        def timed_slot() -> Iterator[None]:
            nonlocal waited
            start = time.monotonic()
            with slot():
                waited = time.monotonic() - start
                yield

        t = time.monotonic()
        incoming, sent = stage_version(
            target.host, target.base, model, version, Path(package_dir), manifest, slot=timed_slot
        )
        times["upload"] = round(time.monotonic() - t - waited, 3)
        if waited:
            times["wait_for_upload"] = round(waited, 3)
    except BaseException:
        lock.close()
        raise
    return Staged(
        target,
        Path(package_dir),
        manifest,
        model,
        version,
        previous,
        incoming,
        sent,
        times,
        t0,
        lock,
    )


def abandon(st: Staged) -> None:
    """Drop a staged upload that will not be committed, and release the lock."""
    if st.done:
        return
    st.done = True
    discard_staged(st.target.host, st.incoming)
    st.lock.close()


def commit(st: Staged, s: DeploySettings) -> DeployResult:
    """Rename the staged version into place, wait, verify; roll back on failure."""
    if st.done:
        raise DeployError(f"{st.target.host.name}: this staged upload was already used")
    target, model, version, manifest = st.target, st.model, st.version, st.manifest
    host, times = target.host.name, st.times
    try:
        images, labels = load_test_split(st.package_dir)
        if st.incoming is not None:
            publish_staged(target.host, st.incoming, target.base, model, version)
        event(
            "deploy",
            "installed" if st.incoming is not None else "already on host",
            model=model,
            version=version,
            host=host,
            bytes=st.sent,
        )
        try:
            t = time.monotonic()
            found = _verify_every_server(target, model, manifest, version, images, labels, s)
            facts = found[0]
            times["verify"] = round(time.monotonic() - t, 3)
            times["to_available"] = max(f.get("seconds_to_available", 0.0) for f in found)
        except (TfshipError, OSError, ValueError) as exc:
            raise _rolled_back(target, model, version, st.previous, exc, s) from exc
        except BaseException as exc:  # Ctrl-C / SIGTERM mid-verification: leave no half state
            _rolled_back(target, model, version, st.previous, exc, s)
            raise
        removed = retain(target, model, s.keep, version)
    finally:
        st.done = True
        st.lock.close()
    times["total"] = round(time.monotonic() - st.started, 3)
    event(
        "deploy", "deployed and verified", model=model, version=version, host=host, s=times["total"]
    )
    return DeployResult(
        model,
        version,
        host,
        "deployed" if st.incoming is not None else "already-deployed",
        st.sent,
        st.previous,
        times,
        facts,
        removed,
        found if len(found) > 1 else [],
    )


def _verify_every_server(
    target: Target,
    model: str,
    manifest: dict,
    version: int,
    images: np.ndarray,
    labels: np.ndarray,
    s: DeploySettings,
) -> list[dict]:
    """Stage 7 checks on every server reading the base path; each one's facts, in order.

    Replicas reading one bucket each load the version on their own (each downloads it), so
    they are waited for and checked at once rather than one after the other; one server is
    checked in this thread, so Ctrl-C interrupts its checks at once.
    """

    def one(client: ServingClient) -> dict:
        checks, facts = verify_version(
            client, manifest, version, images, labels, s.verify, stage="deploy"
        )
        where = f" on {client.shown}" if target.replicas else ""
        if failed(checks):
            raise DeployError(f"verification failed{where}: {summary(checks)}")
        if client.serving_version() != version:
            raise DeployError(
                f"version {version} is AVAILABLE{where} but version "
                f"{client.serving_version()} still answers by default"
            )
        return facts

    clients = target.clients(model)
    if len(clients) == 1:
        return [one(clients[0])]
    with ThreadPoolExecutor(len(clients), thread_name_prefix="verify") as pool:
        futures = [pool.submit(one, c) for c in clients]
        errors = [f.exception() for f in futures]
    for e in errors:  # the first failing replica, in the order TF_SERVING_URL lists them
        if e is not None:
            raise e
    return [f.result() for f in futures]


def deploy(target: Target, package_dir: Path, s: DeploySettings) -> DeployResult:
    """Install, wait, verify; roll back automatically on failure after the rename."""
    return commit(stage(target, package_dir, s), s)


def _rolled_back(
    target: Target,
    model: str,
    version: int,
    previous: int | None,
    cause: Exception,
    s: DeploySettings,
) -> DeployError:
    """Undo a failed deploy; return the error to raise (it says what is serving now)."""
    host = target.host.name
    event("deploy", f"FAILED: {cause}; rolling back", model=model, version=version, host=host)
    if previous == version:
        return DeployError(
            f"{host}: version {version} failed verification again: {cause}",
            hint="it was already serving; nothing was changed",
        )
    try:
        reject(target, model, version)
        if previous is not None:
            for client in target.clients(model):
                wait_serving(client, previous, s.verify.wait_seconds)
        now = target.serving_version(model)
    except TfshipError as exc:
        return DeployError(
            f"{host}: deploy of {model} version {version} failed ({cause}) and the rollback "
            f"did not complete ({exc})",
            hint="run `tfship rollback` and check the host",
        )
    return DeployError(
        f"{host}: deploy of {model} version {version} failed and was rolled back: {cause}. "
        f"Serving now: version {now}",
    )


# --------------------------------------------------------------------------------------------
# Rollback
# --------------------------------------------------------------------------------------------


def input_range(manifest: dict | None) -> list[float] | None:
    """The pixel range an image package's model takes (a package from before tfship served
    0-255 has none: it took [0, 1]); None for a table or an unknown package."""
    if not manifest or manifest.get("kind") == "table" or "golden" not in manifest:
        return None
    return [float(x) for x in manifest.get("input_range", [0.0, 1.0])]


def input_change(serving: dict | None, new: dict | None) -> tuple[list, list] | None:
    """(serving's, new's) pixel ranges when ``new`` replacing ``serving`` would change what
    clients send (a pure rule); None when nothing changes or it is unknown (a table, a
    package that is not tfship's)."""
    old_range, new_range = input_range(serving), input_range(new)
    if old_range is None or new_range is None or old_range == new_range:
        return None
    return old_range, new_range


def served_manifest(target: Target, model: str, version: int) -> dict | None:
    """A version's package manifest on the host, or None if it has none (not tfship's)."""
    path = f"{target.model_dir(model)}/{version}/{MANIFEST}"
    if not target.host.exists(path):
        return None
    return json.loads(target.host.read_text(path))


def rollback(target: Target, model: str, to: int | None, s: DeploySettings) -> RollbackResult:
    """Serve an older kept version again: move the newer ones aside, wait, verify."""
    check_model_name(model)
    with model_lock(target, model, s.lock_stale_seconds, s.lock_wait_seconds, "rollback"):
        clean_incoming(target, model)
        serving = target.serving_version(model)
        versions = target.versions(model)
        if to is None:
            older = [v for v in versions if serving is None or v < serving]
            if not older:
                raise DeployError(
                    f"{target.host.name}: no older version of {model} is kept "
                    f"to roll back to (on host: {versions or 'none'})"
                )
            to = older[-1]
        to = check_version(to)
        if to not in versions:
            raise DeployError(
                f"{target.host.name}: version {to} of {model} is not on the host "
                f"(kept: {versions or 'none'})"
            )
        if serving is not None and serving != to and not s.force:
            change = input_change(
                served_manifest(target, model, serving), served_manifest(target, model, to)
            )
            if change:
                raise DeployError(
                    f"{model}: version {to} takes pixels in {change[1]}, version {serving} "
                    f"(serving) in {change[0]}: rolling back, every client would have to change",
                    hint="pass --force once every client sends what the older version takes",
                )
        moved = [v for v in versions if v > to]
        for v in moved:
            reject(target, model, v)
        event(
            "rollback",
            "waiting for the older version",
            model=model,
            version=to,
            host=target.host.name,
        )
        clients = target.clients(model)
        for client in clients:
            wait_serving(client, to, s.verify.wait_seconds)
        manifest = json.loads(target.host.read_text(f"{target.model_dir(model)}/{to}/{MANIFEST}"))
        with np.load(
            io.BytesIO(
                target.host.read_bytes(f"{target.model_dir(model)}/{to}/assets.extra/test.npz")
            )
        ) as npz:
            images, labels = npz["images"], npz["labels"]
        for client in clients:
            checks, facts = verify_version(
                client, manifest, to, images, labels, s.verify, stage="rollback"
            )
            if failed(checks):
                raise DeployError(
                    f"rolled back to {to}, but it fails verification on {client.shown}: "
                    f"{summary(checks)}"
                )
    event("rollback", "done", model=model, version=to, previous=serving, host=target.host.name)
    return RollbackResult(model, to, serving, moved, facts)
