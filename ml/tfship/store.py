"""Where model versions live: a local folder or an SSH host, behind one small interface.

:class:`Host` is the file-level protocol (list, atomic mkdir/rename, upload a tree, hash a
tree). :class:`LocalHost` implements it on this machine; ``tfship.ssh.SSHHost`` implements it
over SSH. :class:`ArtifactStore` and the deploy logic are written against :class:`Host` only,
so they do not care which one they hold.

Store layout: ``<root>/<model>/<version>/`` (a TF Serving version folder) ; versions arrive
via ``<root>/<model>/.incoming-<version>-<random>`` and one rename, so a reader (or TF
Serving polling the folder) never sees a half-written version.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from tfship import config
from tfship.errors import ConfigError, StoreError
from tfship.settings import Setting
from tfship.workspace import tree_hashes

MANIFEST = "assets.extra/tfship.json"
VERSION_RE = re.compile(r"^[0-9]{1,19}$")

MODEL_NAME = Setting("digits", "MODEL_NAME", "Model name in TF Serving and in the store.")
STORE = Setting(
    "store", "TFSHIP_STORE", "Artifact store: a local folder (<store>/<model>/<version>/)."
)


@dataclass
class StoreSettings:
    """Which model, and where its versions are kept."""

    model_name: str = MODEL_NAME.field()
    store: str = STORE.field()


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
) -> tuple[str | None, int]:
    """Upload ``local`` next to ``<base>/<model>/<version>``, hash-checked, not yet visible.

    Returns (the ``.incoming-*`` folder to rename into place, bytes sent), or (None, 0) when an
    identical version is already there. A version with other content is never rewritten.
    TF Serving ignores names that are not numbers, so a staged upload is never loaded.
    """
    check_model_name(model)
    check_version(version)
    model_dir = str(PurePosixPath(base) / model)
    final = f"{model_dir}/{version}"
    if host.exists(final):
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
        sent = host.put_tree(local, incoming, progress)
        verify_tree(host.hash_tree(incoming), manifest, f"{host.name}:{incoming}")
    except BaseException:
        discard_staged(host, incoming)
        raise
    return incoming, sent


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
    """Packaged versions on a :class:`Host`: ``<root>/<model>/<version>/``."""

    def __init__(self, host: Host, root: str) -> None:
        self.host = host
        self.root = str(root)

    @property
    def uri(self) -> str:
        return self.root if self.host.name == "local" else f"{self.host.name}:{self.root}"

    def versions(self, model: str) -> list[int]:
        """Stored versions of ``model``, oldest first."""
        return numeric_versions(self.host.listdir(f"{self.root}/{check_model_name(model)}"))

    def put(self, model: str, version: int, local: Path, manifest: dict) -> str:
        """Store a package folder; idempotent for identical content."""
        state, _ = install_version(self.host, self.root, model, version, local, manifest)
        return state

    def get(self, model: str, version: int, local: Path) -> Path:
        """Copy a stored version to ``local`` (which must not exist)."""
        src = f"{self.root}/{check_model_name(model)}/{check_version(version)}"
        if not self.host.exists(src):
            raise StoreError(f"version {version} of {model} is not in the store {self.uri}")
        self.host.get_tree(src, local)
        return local

    def manifest(self, model: str, version: int) -> dict:
        """The package manifest of a stored version."""
        import json

        path = f"{self.root}/{check_model_name(model)}/{check_version(version)}/{MANIFEST}"
        if not self.host.exists(path):
            raise StoreError(f"version {version} of {model} has no manifest in {self.uri}")
        return json.loads(self.host.read_text(path))


def local_store(root: str | Path) -> ArtifactStore:
    """The default artifact store: a folder on this machine."""
    root = Path(root).expanduser().absolute()
    return ArtifactStore(LocalHost(), str(root))
