"""The workspace: what each stage reads and writes, and how it writes it atomically.

Layout (default ``./workspace``; CircleCI persists it between jobs)::

    data/       build    train.npz val.npz test.npz schema.pbtxt manifest.json (a table:
                         train.csv val.csv test.csv schema.pbtxt stats.json)
    model/      train    model.keras history.json history.png train.json
    eval/       test     metrics.json junit.xml report.md confusion_matrix.png (a table:
                         roc.png calibration.png, or residuals.png predicted_vs_actual.png)
    package/    package  package.json (+ the exported version folder, before it is stored)
    retrain/    retrain  retrain.json (champion, challenger, decision)
    deployed/   test-deployed  verify.json junit.xml report.md

A stage builds its output in ``.tmp-<stage>-*`` beside the target and renames it into place
only when everything succeeded, so a failed or interrupted stage leaves nothing a later stage
could pick up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tfship.errors import DataError
from tfship.settings import Setting

WORKSPACE = Setting(
    Path("workspace"),
    "TFSHIP_WORKSPACE",
    "Folder the stages read and write (CircleCI persists it between jobs).",
    kind="dir",
)


@dataclass
class WorkspaceSettings:
    """Where the stages meet."""

    workspace: Path = WORKSPACE.field()


STAGE_DIRS = {
    "build": "data",
    "train": "model",
    "test": "eval",
    "package": "package",
    "retrain": "retrain",
    "test-deployed": "deployed",
}


@dataclass(frozen=True)
class Workspace:
    """Paths of one workspace."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def package(self) -> Path:
        return self.root / "package"

    @property
    def retrain(self) -> Path:
        return self.root / "retrain"

    @property
    def deployed(self) -> Path:
        return self.root / "deployed"

    def require(self, path: Path, made_by: str) -> Path:
        """Return ``path`` or fail with the stage to run first."""
        if not path.exists():
            raise DataError(
                f"{path} not found",
                hint=f"run `tfship {made_by}` first, with the same --workspace",
            )
        return path

    @contextlib.contextmanager
    def stage_output(self, stage: str) -> Iterator[Path]:
        """Yield a fresh temporary folder; on success it replaces the stage's folder."""
        target = self.root / STAGE_DIRS[stage]
        self.root.mkdir(parents=True, exist_ok=True)
        recover_dir(target, f".tmp-{stage}-")
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{stage}-", dir=self.root))
        try:
            yield tmp
            replace_dir(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def recover_dir(target: Path, tmp_prefix: str) -> None:
    """Undo what a process killed inside :func:`replace_dir` or a stage left behind.

    Killed between its two renames, the previous output sits at ``.old-<name>-<pid>`` and
    ``target`` is missing: it is put back. Unfinished ``<tmp_prefix>*`` folders are removed.
    """
    parent = target.parent
    if not parent.exists():
        return
    for old in sorted(parent.glob(f".old-{target.name}-*")):
        if not target.exists():
            os.replace(old, target)
        else:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in parent.glob(f"{tmp_prefix}*"):
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``; the old ``target`` is removed only after the swap."""
    old = None
    if target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, obj: object) -> None:
    """Write JSON atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    """Read a JSON file the project wrote; a broken one is bad input, not a crash."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise DataError(f"{path} not found") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from exc


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_hashes(root: Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file below ``root``, keyed by POSIX relative path, sorted."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in exclude:
            out[rel] = sha256_file(p)
    return out
