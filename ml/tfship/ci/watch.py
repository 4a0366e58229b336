"""``tfship ci watch-data``: trigger the retrain once per new data snapshot.

A source is a folder (its newest snapshot by name), an https listing (``<url> <sha256>`` per
line), ``ssh://user@host/path`` or ``s3://bucket/prefix`` (its newest snapshot by name, as
``tfship build --data`` takes it: see :func:`_newest_in_bucket`); or one snapshot itself (a
file, a glob of shards, an object, an ``ssh://`` file, a URL with its ``#sha256=``). A
``.zip``/``.tar.gz`` of an image folder is a snapshot file like an ``.npz``; an image folder
(local, or a bucket prefix) is one snapshot, hashed over its images' paths, sizes and bytes.
:func:`newest_snapshot` resolves it to a location and the sha256 of its bytes, and
:attr:`Snapshot.data_uri` writes them in the one grammar ``tfship build --data`` reads
(``sources.data_uri``): what watch-data triggers and ``tfship ci plan`` continues with builds.
A folder's location is a path on the machine that resolved it: it suits a self-hosted runner
or a shared mount; a cloud job reads s3://, https:// and ssh:// snapshots. The state file is the
record of what was triggered (the CircleCI API cannot say which parameters a pipeline got):
a trigger is written there as pending before it is sent, so after a crash the next poll
finds that pipeline instead of triggering again; one poll holds an exclusive lock on
``<state>.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import re
import shlex
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tfship.ci.api import AmbiguousTrigger, CircleCI, Mark, Ref, check_parameters
from tfship.ci.settings import WatchSettings
from tfship.errors import ApiError, ConfigError, DataError
from tfship.log import event
from tfship.s3 import is_s3
from tfship.sources import (
    GLOB_CHARS,
    SNAPSHOT_SUFFIXES,
    SshUri,
    data_uri,
    find_in_bucket,
    hash_files,
    hash_image_folder,
    hash_in_bucket,
    image_classes,
    image_folder_in_bucket,
    newest_in_folder,
    split_sha256,
)
from tfship.targets import SSHAccess


@dataclass
class Snapshot:
    """One snapshot: where it is (what ``tfship build --data`` reads) and its bytes' sha256."""

    uri: str
    sha256: str
    identity: str | None = None  # a bucket snapshot's key, size and ETag (see below)

    @property
    def data_uri(self) -> str:
        """``<uri>#sha256=<hex>``: the ``--data`` value that reads and checks exactly it."""
        return data_uri(self.uri, self.sha256)


def newest_snapshot(
    source: str, access: SSHAccess | None = None, hashed: Mapping[str, str] | None = None
) -> Snapshot | None:
    """The newest snapshot at ``source``: a folder, an https listing, ssh://user@host/path
    (reached with ``access``, the deploy hosts' SSH settings) or s3://bucket/prefix (a
    snapshot whose identity is in ``hashed`` is not downloaded again); or a snapshot named
    outright (a file, a glob of shards, an ssh:// file, a URL ending in ``#sha256=<hex>``)."""
    source, given = split_sha256(source)
    if is_s3(source):
        snap = _newest_in_bucket(source, hashed or {})
        return _checked(snap, given)
    if source.startswith(("https://", "http://")) and given:
        return Snapshot(source, given)  # a data URI already: nothing to resolve or download
    if source.startswith(("https://", "http://")):
        import requests  # only https listings pay for it

        try:
            resp = requests.get(source, timeout=30)
        except requests.RequestException as exc:
            raise ApiError(f"{source}: {type(exc).__name__}", hint="is the listing up?") from None
        if resp.status_code != 200:
            raise ApiError(f"{source}: HTTP {resp.status_code}")
        lines = [ln.split() for ln in resp.text.splitlines() if ln.strip()]
        entries = [
            (u[0], u[1] if len(u) > 1 else None) for u in lines if u[0].endswith(SNAPSHOT_SUFFIXES)
        ]
        if not entries:
            return None
        uri, digest = sorted(entries)[-1]
        if digest is None:
            raise ApiError(
                f"{source}: listing line for {uri} has no sha256",
                hint="list snapshots as '<url> <sha256>' lines",
            )
        if not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise ApiError(
                f"{source}: listing line for {uri}: {digest!r} is not a sha256",
                hint="list snapshots as '<url> <sha256>' lines (64 hex digits)",
            )
        # lower case, as manifests record it: else the same data would look new every night
        return Snapshot(uri, digest.lower())
    if source.startswith("ssh://"):
        return _checked(_newest_over_ssh(source, access or SSHAccess()), given)
    local = source.removeprefix("file://")
    if any(c in local for c in GLOB_CHARS):
        files = sorted(Path(p).absolute() for p in glob.glob(local) if Path(p).is_file())
        found = (files, str(Path(local).absolute())) if files else None
    elif Path(local).is_file():
        found = [Path(local).absolute()], str(Path(local).absolute())
    elif (classes := image_classes(Path(local))) is not None:  # as `tfship build` reads it
        folder = Path(local).absolute()
        return _checked(Snapshot(str(folder), hash_image_folder(folder, classes)), given)
    elif Path(local).is_dir():
        found = newest_in_folder(Path(local).absolute())
    else:
        raise ConfigError(
            f"{source}: not a folder, file, glob, https listing, s3:// or ssh:// URL",
            hint="point it at where snapshots arrive",
        )
    if found is None:
        return None
    return _checked(Snapshot(found[1], hash_files(found[0])), given)


def _checked(snap: Snapshot | None, given: str | None) -> Snapshot | None:
    """``snap``, whose bytes must hash to ``given`` when a ``#sha256=`` was named with it."""
    if snap is not None and given and snap.sha256 != given:
        raise DataError(
            f"{snap.uri}: sha256 mismatch: expected {given}, got {snap.sha256}",
            hint="the data changed or the checksum is wrong",
        )
    return snap


def _newest_in_bucket(source: str, hashed: Mapping[str, str]) -> Snapshot | None:
    """The newest snapshot below an s3:// prefix, resolved as ``tfship build --data`` resolves
    it (a file, or a sub-folder of shards: then its URI is the glob of those shards; or the
    prefix itself when it is an image folder, its classes as sub-prefixes), with the sha256
    of its content.

    Whether a snapshot is new is decided by its identity: the key, size and ETag of each
    object, which the listing gives for free. Its sha256 needs the bytes, so it is computed
    only for an identity not seen before (``hashed``, kept in the state file), by streaming
    the objects through the hash once (nothing written to disk); a poll of an unchanged
    bucket costs one listing, not a download of the snapshot. The trigger still carries the
    sha256, not the ETag: an ETag is no content hash (multipart uploads), and the build checks
    the bytes it reads against the sha256 it was sent. Content re-uploaded under a new key
    hashes the same and is not triggered again."""
    snap = image_folder_in_bucket(source) or find_in_bucket(source)  # as `tfship build`
    if snap is None:
        return None
    sha = hashed.get(snap.identity) or hash_in_bucket(snap)
    return Snapshot(snap.uri, sha, snap.identity)


def _newest_over_ssh(source: str, access: SSHAccess) -> Snapshot | None:
    """The newest snapshot file of an SSH folder (or the file named), hashed on the host."""
    uri = SshUri.parse(source)
    host = uri.connect(access)
    try:
        if uri.path.endswith(SNAPSHOT_SUFFIXES):
            path = uri.path  # one snapshot named outright
        else:
            # Files only: `tfship build` reads one ssh:// file (no shards over SSH).
            names = [n for n in host.listdir(uri.path) if n.endswith(SNAPSHOT_SUFFIXES)]
            names = [n for n in names if not n.startswith(".")]
            if not names:
                return None
            path = f"{uri.path.rstrip('/')}/{sorted(names)[-1]}"
        out = host.check(f"sha256sum -- {shlex.quote(path)}", f"hash {path}")
        return Snapshot(uri.join(path), out.split()[0].decode())
    finally:
        host.close()


def watch_once(
    api: CircleCI,
    slug: str,
    source: str,
    state_file: Path,
    branch: str = "main",
    extra: dict | None = None,
    access: SSHAccess | None = None,
) -> dict:
    """One poll: trigger retrain-deploy for a snapshot not triggered before; return what happened.

    The state file is the record (the API cannot say which data a pipeline was given):
    ``triggered`` maps a snapshot's sha256 to its pipeline; ``hashed`` maps a bucket
    snapshot's identity (keys, sizes, ETags) to its sha256; ``pending`` holds a trigger being
    sent, written before the POST with the :class:`Mark` taken just before it. A poll that
    finds a pending entry (a crash between sending and recording) looks its pipeline up
    (:meth:`CircleCI.find_triggered`) and records it instead of triggering again. An
    exclusive lock on ``<state>.lock`` makes an overlapping poll (cron) skip rather than
    trigger the same snapshot too. Losing the state file loses the record: the newest
    snapshot is then triggered again.
    """
    with _locked(state_file) as held:
        if not held:
            return {"action": "none", "reason": f"another poll holds {_lock_path(state_file)}"}
        state = _load_state(state_file)
        found = _resolve_pending(api, slug, state, state_file)
        snap = newest_snapshot(source, access, state["hashed"])
        if snap is None:
            return {"action": "none", "reason": "no snapshot yet"}
        if snap.identity and state["hashed"].get(snap.identity) != snap.sha256:
            state["hashed"][snap.identity] = snap.sha256
            _save_state(state_file, state)
        done = state["triggered"].get(snap.sha256)
        if done is not None and snap.sha256 not in found:
            return {
                "action": "none",
                "reason": "already triggered",
                "sha256": snap.sha256,
                "pipeline": done,
            }
        if done is not None:
            event("ci", "watch-data: already-triggered-found", pipeline=done.get("number"))
            return {
                "action": "already-triggered-found",
                "sha256": snap.sha256,
                "data_uri": snap.data_uri,
                "pipeline": done,
            }
        params = {"retrain": True, "data_uri": snap.data_uri, **(extra or {})}
        check_parameters(params)
        mark = api.mark(slug)
        state["pending"][snap.sha256] = {
            "data_uri": snap.data_uri,
            "branch": branch,
            **mark.to_json(),
        }
        _save_state(state_file, state)
        pipeline = api.trigger(slug, branch=branch, parameters=params, mark=mark)
        _record(state, snap.sha256, pipeline, snap.data_uri)
        _save_state(state_file, state)
        event("ci", "watch-data: triggered", pipeline=pipeline.get("number"), data=snap.uri)
        return {
            "action": "triggered",
            "sha256": snap.sha256,
            "data_uri": snap.data_uri,
            "pipeline": pipeline,
        }


def _resolve_pending(api: CircleCI, slug: str, state: dict, state_file: Path) -> set[str]:
    """Settle the pending entries a crashed poll left; return the shas whose pipeline was found.

    A pending entry with no pipeline was never triggered: it is dropped (the newest snapshot
    is then triggered as usual). One that could be several pipelines stops the poll.
    """
    found = set()
    for sha, entry in list(state["pending"].items()):
        ref = Ref.of(entry.get("branch"), None)
        try:
            pipeline = api.find_triggered(slug, ref, Mark.from_json(entry))
        except AmbiguousTrigger as exc:
            raise ApiError(
                f"watch-data: {exc.message}",
                hint=f"{state_file} holds this trigger as pending; once you know its pipeline, "
                'move the entry under "triggered" with that id (or delete it to trigger again)',
            ) from exc
        if pipeline is None:
            del state["pending"][sha]
            event(
                "ci",
                "watch-data: a pending trigger made no pipeline; dropped",
                data=entry["data_uri"],
            )
        else:
            _record(state, sha, pipeline, entry["data_uri"])
            found.add(sha)
            event(
                "ci", "watch-data: a pending trigger had been sent", pipeline=pipeline.get("number")
            )
        _save_state(state_file, state)
    return found


def _record(state: dict, sha: str, pipeline: dict, data_uri: str) -> None:
    state["pending"].pop(sha, None)
    state["triggered"][sha] = {
        "id": pipeline["id"],
        "number": pipeline.get("number"),
        "data_uri": data_uri,
    }


def _load_state(state_file: Path) -> dict:
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    state.setdefault("triggered", {})
    state.setdefault("pending", {})
    state.setdefault("hashed", {})
    return state


def _save_state(state_file: Path, state: dict) -> None:
    # Write then rename: a crash leaves the old record or the new one, never half of one.
    tmp = state_file.with_name(f".{state_file.name}.tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, state_file)


def _lock_path(state_file: Path) -> Path:
    return state_file.with_name(f"{state_file.name}.lock")


@contextlib.contextmanager
def _locked(state_file: Path) -> Iterator[bool]:
    """Hold an exclusive lock on the state file's sidecar lock file; yield False if another
    process holds it. (A sidecar, because the state file itself is replaced on every write.)
    """
    with open(_lock_path(state_file), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def watch(api: CircleCI, s: WatchSettings, source: str) -> list[dict]:
    """``s.max_polls`` polls of ``source``, ``s.interval`` seconds apart; what each did."""
    results = []
    for n in range(s.max_polls):
        results.append(watch_once(api, s.project, source, s.state, s.branch, access=s.access))
        if n + 1 < s.max_polls:
            time.sleep(s.interval)
    return results
