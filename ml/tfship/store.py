"""Where model versions live: a local folder, an SSH host or a bucket, behind one interface.

:class:`Host` is the file-level protocol (list, atomic mkdir/rename, upload a tree, hash a
tree). :class:`LocalHost` implements it on this machine; ``tfship.ssh.SSHHost`` implements it
over SSH, ``tfship.s3.S3Host`` on a bucket. :class:`ArtifactStore` and the deploy logic are
written against :class:`Host` only, so they do not care which one they hold.

Store layout: ``<root>/<model>/<version>/`` (a TF Serving version folder) ; versions arrive
via ``<root>/<model>/.incoming-<version>-<random>`` and one rename, so a reader (or TF
Serving polling the folder) never sees a half-written version. A bucket has no rename: the
"rename" copies ``saved_model.pb`` last, so a version folder without it is a placement that
was cut off (never loadable: TF Serving needs that file), which the next placement completes
in place, and which :meth:`ArtifactStore.versions` does not count.

The store of record also keeps ``<root>/<model>/.history/``: one immutable JSON object per
event (packaged, deployed, rolled back, rejected), written with an exclusive create, never
rewritten: ``tfship history`` prints it, and the last deploy or rollback in it names the
version serving, which retention (``--store-keep``) never deletes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from tfship import config, s3
from tfship.errors import ConfigError, StoreError
from tfship.log import event
from tfship.settings import Setting, setting
from tfship.workspace import tree_hashes

MANIFEST = "assets.extra/tfship.json"
VERSION_RE = re.compile(r"^[0-9]{1,19}$")

MODEL_NAME = Setting("digits", "MODEL_NAME", "Model name in TF Serving and in the store.")
STORE = Setting(
    "store",
    "TFSHIP_STORE",
    "Artifact store of record: a local folder or s3://bucket/prefix "
    "(<store>/<model>/<version>/, with <model>/.history/).",
)
HISTORY = ".history"
SAVED_MODEL_PB = "saved_model.pb"
# Events of the store's history, in the words `tfship history` prints.
PACKAGED, DEPLOYED, ROLLED_BACK, REJECTED = "packaged", "deployed", "rolled-back", "rejected"


@dataclass
class StoreSettings:
    """Which model, and where its versions are kept."""

    model_name: str = MODEL_NAME.field()
    store: str = STORE.field()
    store_keep: int = setting(
        0,
        "TFSHIP_STORE_KEEP",
        "Versions kept in the store (0: all). Never deletes the version serving (the last "
        "deploy or rollback in the store's history).",
        min=0,
    )


def check_model_name(name: str) -> str:
    """Model names reach paths and remote commands: allow only a safe alphabet."""
    if not config.MODEL_NAME_RE.match(name or ""):
        raise ConfigError(
            f"model name {name!r} is not allowed",
            hint="use letters, digits, '.', '_' and '-' (max 64), starting with a letter or digit",
        )
    return name


LABEL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


def check_label(label: str) -> str:
    """A TF Serving version label (it becomes part of a URL path): a safe alphabet only."""
    if not LABEL_RE.match(label or ""):
        raise ConfigError(
            f"version label {label!r} is not allowed",
            hint="use letters, digits, '_' and '-' (max 64), starting with a letter",
        )
    return label


def check_version(version: int | str) -> int:
    """A TF Serving version: a positive int64."""
    text = str(version)
    if not VERSION_RE.match(text) or not 0 < int(text) < 2**63:
        raise ConfigError(f"version {version!r} is not a positive integer (TF Serving needs one)")
    return int(text)


def numeric_versions(names: list[str]) -> list[int]:
    """The children TF Serving treats as versions: whole name is an integer. Sorted."""
    return sorted(int(n) for n in names if n.isdigit())


class Host(Protocol):
    """File operations on the machine that holds models (all paths POSIX strings)."""

    name: str

    def listdir(self, path: str) -> list[str]: ...
    def exists(self, path: str) -> bool: ...
    def makedirs(self, path: str) -> None: ...
    def mkdir(self, path: str) -> None:
        """Create one folder; raise FileExistsError if it exists (used as a lock)."""

    def rename(self, src: str, dst: str) -> None:
        """Atomic rename on one filesystem; must fail if ``dst`` exists."""

    def remove_tree(self, path: str) -> None: ...
    def put_tree(
        self, local: Path, remote: str, progress: Callable[[int], None] | None = None
    ) -> int:
        """Copy a local folder to ``remote`` (which must not exist); return bytes sent."""

    def get_tree(self, remote: str, local: Path) -> None: ...
    def hash_tree(self, path: str) -> dict[str, str]:
        """sha256 of every file below ``path``, keyed by relative POSIX path."""

    def read_text(self, path: str) -> str: ...
    def read_bytes(self, path: str) -> bytes: ...
    def write_text(self, path: str, text: str) -> None: ...
    def create(self, path: str, data: bytes) -> None:
        """Write a new file whole; FileExistsError if it exists (the history's records)."""

    def close(self) -> None: ...


class LocalHost:
    """:class:`Host` on this machine's filesystem."""

    name = "local"

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def rename(self, src: str, dst: str) -> None:
        if os.path.exists(dst):
            raise FileExistsError(dst)
        os.rename(src, dst)

    def remove_tree(self, path: str) -> None:
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)

    def put_tree(
        self, local: Path, remote: str, progress: Callable[[int], None] | None = None
    ) -> int:
        if os.path.exists(remote):
            raise FileExistsError(remote)
        shutil.copytree(local, remote)
        sent = sum(p.stat().st_size for p in Path(remote).rglob("*") if p.is_file())
        if progress:
            progress(sent)
        return sent

    def get_tree(self, remote: str, local: Path) -> None:
        shutil.copytree(remote, local)

    def hash_tree(self, path: str) -> dict[str, str]:
        return tree_hashes(Path(path))

    def read_text(self, path: str) -> str:
        return Path(path).read_text()

    def read_bytes(self, path: str) -> bytes:
        return Path(path).read_bytes()

    def write_text(self, path: str, text: str) -> None:
        tmp = f"{path}.tmp-{secrets.token_hex(4)}"
        Path(tmp).write_text(text)
        os.replace(tmp, path)

    def create(self, path: str, data: bytes) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{secrets.token_hex(4)}"
        Path(tmp).write_bytes(data)
        try:
            os.link(tmp, path)  # whole, and only if nothing is there
        finally:
            os.remove(tmp)

    def close(self) -> None:
        pass


def expected_hashes(manifest: dict) -> dict[str, str]:
    """The files a package must hold: the manifest's list (the manifest itself excluded)."""
    return dict(manifest["files"])


def verify_tree(actual: dict[str, str], manifest: dict, where: str) -> None:
    """Every file the manifest names, with its hash; no extra or missing file."""
    expected = expected_hashes(manifest)
    actual = {k: v for k, v in actual.items() if k != MANIFEST}
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    wrong = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])
    if missing or extra or wrong:
        parts = []
        for label, items in (
            ("missing", missing),
            ("unexpected", extra),
            ("sha256 differs", wrong),
        ):
            if items:
                parts.append(
                    f"{label}: {', '.join(items[:3])}" + (" ..." if len(items) > 3 else "")
                )
        raise StoreError(f"{where}: files do not match the manifest ({'; '.join(parts)})")


def stage_version(
    host: Host,
    base: str,
    model: str,
    version: int,
    local: Path,
    manifest: dict,
    progress: Callable[[int], None] | None = None,
    slot: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[str | None, int]:
    """Upload ``local`` next to ``<base>/<model>/<version>``, hash-checked, not yet visible.

    ``slot``: entered around the transfer alone (a fleet's limit on uploads at once); the
    checks before it and the hash check after it run outside it.

    Returns (the ``.incoming-*`` folder to rename into place, bytes sent), or (None, 0) when an
    identical version is already there. A version with other content is never rewritten.
    TF Serving ignores names that are not numbers, so a staged upload is never loaded.
    """
    check_model_name(model)
    check_version(version)
    model_dir = str(PurePosixPath(base) / model)
    final = f"{model_dir}/{version}"
    if interrupted(host, final):
        event("store", "completing an interrupted placement", host=host.name, path=final)
    elif host.exists(final):
        try:
            verify_tree(host.hash_tree(final), manifest, f"{host.name}:{final}")
        except StoreError as exc:
            raise StoreError(
                f"version {version} of {model} already exists on {host.name} with other content",
                hint="versions are never rewritten; package a new version",
            ) from exc
        return None, 0
    host.makedirs(model_dir)
    incoming = f"{model_dir}/.incoming-{version}-{secrets.token_hex(4)}"
    try:
        with slot():
            sent = host.put_tree(local, incoming, progress)
        verify_tree(host.hash_tree(incoming), manifest, f"{host.name}:{incoming}")
    except BaseException:
        discard_staged(host, incoming)
        raise
    return incoming, sent


def interrupted(host: Host, version_dir: str) -> bool:
    """A bucket's copy into ``version_dir`` cut off before ``saved_model.pb`` (never loadable):
    the next placement completes it in place, so a TF Serving that listed it keeps retrying
    the same version and loads it once whole (removing it would end that version's retries
    with an error the server keeps reporting)."""
    return host.exists(version_dir) and not complete(host, version_dir)


def complete(host: Host, version_dir: str) -> bool:
    """Whether a version folder is whole: always on a host whose rename is atomic; on a
    bucket, once its ``saved_model.pb`` (copied last) is there."""
    if getattr(host, "atomic_rename", True):
        return True
    return host.exists(f"{version_dir}/{SAVED_MODEL_PB}")


def discard_staged(host: Host, incoming: str | None) -> None:
    """Remove a staged upload (best effort: the next deploy cleans what is left)."""
    if incoming:
        with contextlib.suppress(Exception):
            host.remove_tree(incoming)


def publish_staged(host: Host, incoming: str, base: str, model: str, version: int) -> None:
    """Rename a staged upload to its version folder: one atomic step TF Serving then sees."""
    final = str(PurePosixPath(base) / check_model_name(model) / str(check_version(version)))
    try:
        host.rename(incoming, final)
    except BaseException:
        discard_staged(host, incoming)
        raise


def install_version(
    host: Host,
    base: str,
    model: str,
    version: int,
    local: Path,
    manifest: dict,
    progress: Callable[[int], None] | None = None,
) -> tuple[str, int]:
    """Put ``local`` at ``<base>/<model>/<version>`` atomically; return (state, bytes sent).

    state is ``"uploaded"`` or ``"present"`` (an identical version is already there: nothing is
    sent).
    """
    incoming, sent = stage_version(host, base, model, version, local, manifest, progress)
    if incoming is None:
        return "present", 0
    publish_staged(host, incoming, base, model, version)
    return "uploaded", sent


class ArtifactStore:
    """Packaged versions on a :class:`Host`: ``<root>/<model>/<version>/``, and their history.

    ``keep`` (0: all): after each :meth:`put`, the newest ``keep`` versions stay, and the one
    serving (:meth:`serving`) whatever its age.
    """

    def __init__(self, host: Host, root: str, keep: int = 0) -> None:
        self.host = host
        self.root = str(root)
        self.keep = keep

    @property
    def uri(self) -> str:
        if isinstance(self.host, s3.S3Host):
            return str(s3.S3Uri(self.host.bucket, s3.join(self.root)))
        return self.root if self.host.name == "local" else f"{self.host.name}:{self.root}"

    def _model_dir(self, model: str) -> str:
        return str(PurePosixPath(self.root) / check_model_name(model))

    def versions(self, model: str) -> list[int]:
        """Stored versions of ``model``, oldest first (whole ones only)."""
        model_dir = self._model_dir(model)
        found = numeric_versions(self.host.listdir(model_dir))
        return [v for v in found if complete(self.host, f"{model_dir}/{v}")]

    def put(self, model: str, version: int, local: Path, manifest: dict) -> str:
        """Store a package folder; idempotent for identical content. Records it in the
        history and applies ``keep``."""
        state, _ = install_version(self.host, self.root, model, version, local, manifest)
        if state == "uploaded":
            self.record(model, PACKAGED, version)
        self.retain(model)
        return state

    def get(self, model: str, version: int, local: Path) -> Path:
        """Copy a stored version to ``local`` (which must not exist)."""
        src = f"{self._model_dir(model)}/{check_version(version)}"
        if version not in self.versions(model):
            raise StoreError(f"version {version} of {model} is not in the store {self.uri}")
        self.host.get_tree(src, local)
        return local

    def manifest(self, model: str, version: int) -> dict:
        """The package manifest of a stored version."""
        path = f"{self._model_dir(model)}/{check_version(version)}/{MANIFEST}"
        if not self.host.exists(path):
            raise StoreError(f"version {version} of {model} has no manifest in {self.uri}")
        return json.loads(self.host.read_text(path))

    # -- history ------------------------------------------------------------------------

    def record(self, model: str, what: str, version: int | None, **facts: object) -> dict:
        """Append one event to ``<model>/.history/`` (an object never rewritten): when, by
        which build (CircleCI's variables), from which machine, and ``facts``."""
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{now % 1:.6f}"[1:] + "Z"
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "event": what,
            "model": model,
            "version": version,
            "build_url": os.environ.get("CIRCLE_BUILD_URL"),
            "pipeline": os.environ.get("CIRCLE_PIPELINE_ID"),
            "by": os.environ.get("CIRCLE_USERNAME") or socket.gethostname(),
            **{k: v for k, v in facts.items() if v is not None},
        }
        name = f"{stamp}-{what}-{version if version is not None else 'none'}"
        path = f"{self._model_dir(model)}/{HISTORY}/{name}-{secrets.token_hex(3)}.json"
        self.host.create(path, (json.dumps(entry, sort_keys=True) + "\n").encode())
        return entry

    def history(self, model: str) -> list[dict]:
        """Every recorded event of ``model``, oldest first."""
        folder = f"{self._model_dir(model)}/{HISTORY}"
        names = [n for n in self.host.listdir(folder) if n.endswith(".json")]
        return [json.loads(self.host.read_text(f"{folder}/{n}")) for n in sorted(names)]

    def serving(self, model: str) -> int | None:
        """The version serving as the history knows it: the last deployed or rolled back."""
        moves = [e for e in self.history(model) if e["event"] in (DEPLOYED, ROLLED_BACK)]
        return moves[-1]["version"] if moves else None

    def retain(self, model: str, keep: int | None = None) -> list[int]:
        """Delete all but the newest ``keep`` versions (0: none), never the one serving."""
        keep = self.keep if keep is None else keep
        if keep <= 0:
            return []
        versions = self.versions(model)
        serving = self.serving(model)
        doomed = [v for v in versions[:-keep] if v != serving]
        for v in doomed:
            self.host.remove_tree(f"{self._model_dir(model)}/{v}")
        if doomed:
            event("store", "retention removed versions", store=self.uri, versions=doomed)
        return doomed


def history_table(entries: list[dict]) -> str:
    """``tfship history``: one row per event, oldest first."""
    if not entries:
        return "no history yet: nothing was packaged or deployed with this store"
    lines = ["| time | event | version | by | build | details |", "|---|---|---|---|---|---|"]
    for e in entries:
        details = "; ".join(
            f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in e.items()
            if k in ("previous", "hosts", "champion", "reason") and v is not None
        )
        lines.append(
            f"| {e['time']} | {e['event']} | {e['version'] if e['version'] is not None else '-'} "
            f"| {e.get('by') or '-'} | {e.get('build_url') or '-'} | {details or '-'} |"
        )
    return "\n".join(lines)


def local_store(root: str | Path, keep: int = 0) -> ArtifactStore:
    """The default artifact store: a folder on this machine."""
    root = Path(root).expanduser().absolute()
    return ArtifactStore(LocalHost(), str(root), keep)


def open_store(spec: str | Path, keep: int = 0) -> ArtifactStore:
    """The store ``--store`` names: ``s3://bucket/prefix`` or a local folder."""
    if s3.is_s3(str(spec)):
        uri = s3.S3Uri.parse(str(spec))
        return ArtifactStore(s3.S3Host(uri.bucket), uri.key, keep)
    return local_store(spec, keep)


def store_of(settings: StoreSettings) -> ArtifactStore:
    """The store the settings name, with their retention."""
    return open_store(settings.store, settings.store_keep)
