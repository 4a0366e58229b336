"""Stage 1 for tables: the bundled tabular sets, a streaming CSV reader, and ``build_table``.

Bundled, offline (they ship inside scikit-learn, read by its own loaders):
``breast_cancer`` (binary classification, label ``target``: malignant/benign), ``wine``
(3 classes, label ``target``) and ``diabetes`` (regression, label ``target``: disease
progression after a year), each written as a CSV with a header row. ``reviews`` is generated
(seeded, so the same every time): short product reviews (text), the channel they came
from (categorical) and a star count (number), labelled positive/negative.

A CSV is read in batches of rows (``read_csv``): the file is never held in memory whole, and
its sha256 is computed from the same bytes in the same pass (``table_stats``), so statistics
and the content hash cost one read. A second pass writes the split.

``--data`` (``_resolve``) is a bundled set, a file, a folder of snapshots, a glob of shards, an
https URL with its sha256, the same in a bucket (``s3://bucket/key``: downloaded into a
temporary folder, hashed as it streams, then read as local files; see ``sources.in_bucket``),
or a file on an SSH host (``ssh://user@host/path``, ``sources.over_ssh``). Any of them may end
in ``#sha256=<hex>`` (the grammar of ``sources.data_uri``): the bytes read are checked.

``build_table`` (what ``tfship build --label COLUMN`` does): statistics and hash; the task
from the label (``--task`` to override); the schema (``schema.pbtxt``, TFDV's format) read
from beside the data and every anomaly refused (exit 2), or inferred and written there on
the first build; then a stratified, seeded split into ``train.csv``/``val.csv``/``test.csv``,
``stats.json`` and ``manifest.json``. Nothing is written unless every check passed.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np

from tfship import config, s3
from tfship import schema as sch
from tfship.errors import DataError
from tfship.extras import lazy_module
from tfship.settings import setting
from tfship.sources import (
    GLOB_CHARS,
    MAX_DATA_BYTES,
    TABLE_SUFFIXES,
    SshUri,
    bucket_snapshot,
    downloaded,
    expected_sha256,
    in_bucket,
    newest_in_folder,
    over_ssh,
    shown_url,
    split_sha256,
)
from tfship.stats import BYTES, FLOAT, TableStats, number_keys
from tfship.table_io import FORMATS, read_table, table_format
from tfship.workspace import Workspace, write_json

if TYPE_CHECKING:
    from tfship.targets import SSHAccess

# pyarrow is in the train extra: deploy and verify import this module for its settings and
# helpers, and must start on the slim install (tfship.extras).
pa = lazy_module("pyarrow")
pc = lazy_module("pyarrow.compute")
pacsv = lazy_module("pyarrow.csv")

TABULAR_SETS = {
    "breast_cancer": "load_breast_cancer",
    "wine": "load_wine",
    "diabetes": "load_diabetes",
    "reviews": "generated",
}
REVIEW_ROWS = 600
LABEL = "target"
BATCH_ROWS = 4096
MAX_CLASS_INTEGERS = 20  # an integer label with at most this many values is a class
CLASSIFICATION, REGRESSION = "classification", "regression"


@dataclass
class TableSettings:
    """Stage 1 for tables: which column is the target, the task, and the schema."""

    label: str | None = setting(
        None,
        "TFSHIP_LABEL",
        "Target column of a table (CSV). Given, the data is read as a table; "
        "the bundled tabular sets use 'target'.",
    )
    task: str | None = setting(
        None,
        "TFSHIP_TASK",
        "Override the task inferred from the label (strings, or integers with few values: "
        "classification; other numbers: regression).",
        choices=(CLASSIFICATION, REGRESSION),
    )
    schema: str | None = setting(
        None,
        "TFSHIP_SCHEMA",
        "schema.pbtxt (TFDV's format) to check the data against. Default: schema.pbtxt "
        "beside the data, inferred and written there on the first build.",
        kind="file",
    )


def is_table(data: str, label: str | None) -> bool:
    """Whether ``--data``/``--label`` name a table (else images, as before)."""
    return label is not None or data in TABULAR_SETS


def write_bundled(name: str, path: Path) -> Path:
    """Write the bundled set ``name`` as a CSV at ``path`` (label column ``target``; class
    names for classification sets, as the team's own CSV would have them)."""
    if name == "reviews":
        return write_reviews(path)
    import sklearn.datasets  # heavy (~1 s): only when a bundled set is asked for

    bunch = getattr(sklearn.datasets, TABULAR_SETS[name])(
        **({"scaled": False} if name == "diabetes" else {})
    )
    names = [re.sub(r"[^A-Za-z0-9_.-]", "_", str(n)) for n in bunch.feature_names]
    target = bunch.target
    if "target_names" in bunch:
        target = np.asarray(bunch.target_names)[target]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*names, LABEL])
        for row, y in zip(bunch.data.tolist(), target.tolist(), strict=True):
            w.writerow([*(f"{v:.10g}" for v in row), y])
    return path


_GOOD = [
    "great",
    "love",
    "excellent",
    "works",
    "perfect",
    "fast",
    "happy",
    "recommend",
    "solid",
    "sturdy",
]
_BAD = [
    "broken",
    "slow",
    "refund",
    "poor",
    "awful",
    "cheap",
    "returned",
    "disappointed",
    "flimsy",
    "late",
]
_PLAIN = [
    "the",
    "it",
    "this",
    "product",
    "item",
    "arrived",
    "box",
    "and",
    "was",
    "very",
    "my",
    "for",
    "with",
    "a",
]


def write_reviews(path: Path, rows: int = REVIEW_ROWS, seed: int = 7) -> Path:
    """The generated text set: each review mixes plain words with two to four good or bad
    ones (one in twenty from the wrong side, so it is not trivial); stars and channel add weak
    signal."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["review", "channel", "stars", LABEL])
        for _ in range(rows):
            positive = bool(rng.random() < 0.5)
            own, other = (_GOOD, _BAD) if positive else (_BAD, _GOOD)
            words = list(rng.choice(_PLAIN, rng.integers(4, 9)))
            words += [
                str(rng.choice(other if rng.random() < 0.05 else own))
                for _ in range(rng.integers(2, 5))
            ]
            rng.shuffle(words)
            stars = int(np.clip(rng.normal(4 if positive else 2, 1.2), 1, 5))
            channel = str(rng.choice(["web", "app", "store"], p=[0.5, 0.3, 0.2]))
            w.writerow([" ".join(words), channel, stars, "positive" if positive else "negative"])
    return path


def read_csv(
    path: Path, batch_rows: int = BATCH_ROWS, digest: object | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """The CSV at ``path`` (a split) as batches of exactly ``batch_rows`` rows (the last one
    shorter) of string columns (``""`` = missing). ``digest`` sees every byte of the file."""
    pending: list[pa.RecordBatch] = []
    have = 0
    for _, cols in read_table([path], digest):
        pending.append(pa.RecordBatch.from_pydict(cols))
        have += len(pending[-1])
        while have >= batch_rows:
            table = pa.Table.from_batches(pending)
            yield _numpy(table.slice(0, batch_rows))
            rest = table.slice(batch_rows)
            pending, have = rest.to_batches(), len(rest)
    if have:
        yield _numpy(pa.Table.from_batches(pending))


def _numpy(table: pa.Table) -> dict[str, np.ndarray]:
    return {
        name: np.asarray(col.fill_null("").to_numpy(zero_copy_only=False), dtype=str)
        for name, col in zip(table.column_names, table.columns, strict=True)
    }


def table_stats(paths: Path | list[Path], seed: int = 0) -> tuple[TableStats, str]:
    """Statistics of every column and the content's sha256 (shards in order), one pass."""
    paths = [paths] if isinstance(paths, Path) else paths
    digest = hashlib.sha256()
    stats = TableStats(seed=seed)
    for _, batch in read_table(paths, digest):
        stats.update(batch)
    if not stats.rows:
        raise DataError(f"{_shown(paths)}: no data rows")
    return stats.finish(), digest.hexdigest()


def _shown(paths: list[Path]) -> str:
    return str(paths[0]) if len(paths) == 1 else f"{paths[0].parent}/ ({len(paths)} shards)"


# --------------------------------------------------------------------------------------------
# Stage 1 for tables
# --------------------------------------------------------------------------------------------


@dataclass
class TableBuild:
    """What stage 1 wrote for a table: the data manifest."""

    manifest: dict

    def to_dict(self) -> dict:
        return self.manifest

    def summary(self) -> str:
        m, rows = self.manifest, self.manifest["rows"]
        what = m["task"] + (f", {len(m['classes'])} classes" if m.get("classes") else "")
        return (
            f"data {m['data_hash'][:23]} from {m.get('source') or m['origin']} "
            f"({what}, label {m['label']!r}): "
            f"{rows['train']} train / {rows['val']} val / {rows['test']} test rows; "
            f"schema {m['schema']['status']} ({m['schema']['path']})"
        )


def infer_task(label: str, stats: TableStats, override: str | None) -> str:
    """classification for string labels or integers with few values; else regression."""
    f = stats.features[label]
    if override:
        if override == REGRESSION and f.type == BYTES:
            raise DataError(
                f"--task regression: label {label!r} holds strings",
                hint="regression needs a numeric label",
            )
        return override
    if f.type == BYTES or (f.type != FLOAT and not f.many and f.distinct <= MAX_CLASS_INTEGERS):
        return CLASSIFICATION
    return REGRESSION


@dataclass
class Source:
    """What ``--data`` resolved to: the files to read (one, or a snapshot's shards in name
    order), the folder its schema lives in (None: no schema beside it), what was read (for
    lineage: a path, a URL, s3://bucket/key) and how to name a local path to a person."""

    files: list[Path]
    home: Path | None
    source: str
    shown: Callable[[str], str] = str
    expected: str | None = None  # the sha256 the files' bytes must have (#sha256=, --data-sha256)


def _resolve(
    spec: str,
    work: Path,
    stack: ExitStack,
    sha256: str | None,
    max_bytes: int,
    access: SSHAccess | None = None,
) -> Source:
    """``--data`` is a bundled set, an https URL with its sha256 (downloaded into ``work``),
    an s3:// object, prefix of snapshots or glob (downloaded into ``work``), a file on an SSH
    host (read with ``access`` into ``work``), a glob of shards, a folder of snapshots (the
    newest by name: a file, or a sub-folder of shards), or a file; each may end in
    ``#sha256=<hex>``, checked against the bytes read (:attr:`Source.expected`)."""
    if spec in TABULAR_SETS:
        return Source([write_bundled(spec, work / f"{spec}.csv")], None, spec)
    spec, sha256 = expected_sha256(spec, sha256)
    scheme = urlsplit(spec).scheme
    if scheme in ("http", "https"):
        suffixes = tuple(FORMATS)
        got = stack.enter_context(downloaded(spec, sha256, work, max_bytes, suffixes))
        return Source([got], None, shown_url(spec), expected=sha256)
    if s3.is_s3(spec):
        return replace(_from_bucket(spec, work, stack, sha256, max_bytes), expected=sha256)
    if scheme == "ssh":
        got = stack.enter_context(over_ssh(spec, access, work, max_bytes, sha256, tuple(FORMATS)))
        where = SshUri.parse(spec).join(str(Path(SshUri.parse(spec).path).parent)) + "/"
        return Source(
            [got],
            None,
            shown_url(spec),
            lambda text: text.replace(f"{got.parent}/", where),
            expected=sha256,
        )
    if len(scheme) > 1 and scheme != "file":
        raise DataError(
            f"--data {shown_url(spec)}: tables are read from files, folders, globs, "
            f"https://, s3:// and ssh:// URLs, not {scheme}://",
            hint="copy the data to a local path first",
        )
    raw = spec.removeprefix("file://")
    if any(c in raw for c in GLOB_CHARS):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(raw)) if Path(p).is_file())
        if not files:
            raise DataError(f"--data {raw}: no file matches this pattern")
        home = Path(os.path.expanduser(raw)).parent
        while any(c in str(home) for c in GLOB_CHARS):
            home = home.parent
        return Source(_one_format(files, raw), home, raw, expected=sha256)
    path = Path(raw).expanduser()
    if not path.exists():
        raise DataError(f"--data {path}: not found")
    if path.is_file():
        return Source(_one_format([path], str(path)), path.parent, str(path), expected=sha256)
    found = newest_in_folder(path, tuple(FORMATS), shards=True)  # as watch-data resolves it
    if found is None:
        raise DataError(
            f"--data {path}: no .csv, .parquet or .tfrecord[.gz] snapshot in this folder"
        )
    files, location = found
    newest = files[0] if location == str(files[0]) else files[0].parent
    return Source(_one_format(files, str(newest)), path, str(newest), expected=sha256)


def _from_bucket(
    spec: str, work: Path, stack: ExitStack, sha256: str | None, max_bytes: int
) -> Source:
    """An s3:// source, resolved as a local one (object, newest of a prefix, glob), its
    objects downloaded into ``work`` and hashed as they stream. A ``schema.pbtxt`` beside
    the snapshot in the bucket is read and checked; one inferred is never written to the
    bucket (data buckets are read-only to a build): upload workspace/data/schema.pbtxt there
    to check later snapshots against it."""
    spec, fragment = split_sha256(spec)
    snap = bucket_snapshot(spec, TABLE_SUFFIXES, shards=True)
    schema_key = s3.join(snap.home, sch.SCHEMA_FILE)
    got = stack.enter_context(
        in_bucket(snap, work, max_bytes, fragment or sha256, extra=(schema_key,))
    )
    local_schema = got.root.joinpath(*schema_key.split("/"))
    home = local_schema.parent if local_schema.exists() else None
    return Source(_one_format(got.paths, snap.uri), home, snap.uri, got.shown)


def _one_format(files: list[Path], shown: str) -> list[Path]:
    formats = {table_format(p) for p in files}
    if None in formats:
        bad = next(p for p in files if table_format(p) is None)
        raise DataError(
            f"{bad}: a table is a .csv, .parquet or .tfrecord[.gz] file",
            hint="images come as .npz, .csv of pixels or an image folder (without --label)",
        )
    if len(formats) > 1:
        raise DataError(
            f"--data {shown}: shards in more than one format ({', '.join(sorted(formats))})"
        )
    return files


def atomic_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temporary file, then a rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _check_label(path: Path, stats: TableStats, label: str) -> None:
    if label not in stats.features:
        cols = ", ".join(list(stats.features)[:12])
        raise DataError(
            f"{path}: no column {label!r} (columns: {cols})", hint="set --label to the target"
        )
    f = stats.features[label]
    if f.missing:
        raise DataError(
            f"{path}: label {label!r} is empty in {f.missing} of {f.count} rows",
            hint="drop the unlabelled rows or fill them",
        )


def _check_classes(path: Path, f: object, min_rows: int) -> list[str]:
    if f.many:  # more distinct values than stats.MAX_DISTINCT
        raise DataError(f"{path}: label {f.name!r} has too many classes to count")
    if f.distinct < 2:
        raise DataError(f"{path}: label {f.name!r} has one class only ({next(iter(f.counts))!r})")
    small = {k: c for k, c in f.counts.items() if c < min_rows}
    if small:
        k, c = min(small.items(), key=lambda kv: kv[1])
        raise DataError(
            f"{path}: class {k!r} has {c} rows, every class needs >= {min_rows}",
            hint="add rows or lower --min-rows-per-class",
        )
    return sorted(f.counts)


def _split_slots(seed: int, key: str) -> np.ndarray:
    """A seeded pattern of 20 slots (0 train, 1 val, 2 test) in the split's proportions:
    the n-th row of a class goes to slot n mod 20, so each class is split in proportion
    while the rows stream by."""
    n_val, n_test = round(20 * config.VAL_FRACTION), round(20 * config.TEST_FRACTION)
    slots = np.array([1] * n_val + [2] * n_test + [0] * (20 - n_val - n_test))
    rng = np.random.default_rng([seed, int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)])
    return rng.permutation(slots)


def _label_keys(col: pa.Array) -> pa.Array:
    """A label column's values as the strings the class list holds (``3``, not ``3.0``)."""
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        nums = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
        return pa.array(number_keys(nums), pa.string()).filter(pc.is_valid(col))
    return pc.utf8_trim_whitespace(col.cast(pa.string()))


def _write_split(
    paths: list[Path], out: Path, header: list[str], label: str, task: str, seed: int
) -> dict[str, int]:
    """Stream the rows into ``train.csv``/``val.csv``/``test.csv`` (every column written as
    text, the label as its class name), each class split in proportion, seeded."""
    names = ("train", "val", "test")
    seen: dict[str, int] = {}
    patterns: dict[str, np.ndarray] = {}
    rows = dict.fromkeys(names, 0)
    schema = pa.schema([(h, pa.string()) for h in header])
    writers = [pacsv.CSVWriter(str(out / f"{n}.csv"), schema) for n in names]
    try:
        for _, batch in read_table(paths):
            n = len(next(iter(batch.values())))
            cols = [
                (batch[h].cast(pa.string()) if h in batch else pa.nulls(n, pa.string()))
                for h in header
            ]
            if task == CLASSIFICATION:
                cols[header.index(label)] = _label_keys(batch[label])
            keys = cols[header.index(label)].to_numpy(zero_copy_only=False)
            if task != CLASSIFICATION:
                keys = np.full(n, "")
            slots = np.empty(n, dtype=np.int64)
            uniq, inverse = np.unique(keys, return_inverse=True)
            for i, key in enumerate(uniq.tolist()):
                idx = np.flatnonzero(inverse == i)
                if key not in patterns:
                    patterns[key] = _split_slots(seed, key)
                start = seen.get(key, 0)
                slots[idx] = patterns[key][(start + np.arange(len(idx))) % 20]
                seen[key] = start + len(idx)
            rb = pa.RecordBatch.from_arrays(cols, schema=schema)
            for slot, w in enumerate(writers):
                mask = slots == slot
                if mask.any():
                    w.write_batch(rb.filter(pa.array(mask)))
                    rows[names[slot]] += int(mask.sum())
    finally:
        for w in writers:
            w.close()
    return rows


def build_table(
    ws_root: Path,
    data: str,
    s: TableSettings,
    seed: int,
    min_rows_per_class: int,
    sha256: str | None = None,
    max_bytes: int = MAX_DATA_BYTES.default,
    access: SSHAccess | None = None,
) -> TableBuild:
    """Stage 1 for a table: stats + hash, task, schema check (or inference), split, write.
    ``access``: the SSH settings an ``ssh://`` source is read with."""
    label = s.label or LABEL
    with tempfile.TemporaryDirectory(prefix="tfship-table-") as tmp, ExitStack() as stack:
        src = _resolve(data, Path(tmp), stack, sha256, max_bytes, access)
        paths, home = src.files, src.home
        path = Path(_shown(paths))
        stats, sha = table_stats(paths, seed)
        if src.expected and sha != src.expected:
            raise DataError(
                f"{src.shown(str(path))}: sha256 mismatch: expected {src.expected}, got {sha}",
                hint="the data changed or the checksum is wrong",
            )
        _check_label(path, stats, label)
        task = infer_task(label, stats, s.task)
        classes = (
            _check_classes(path, stats.features[label], min_rows_per_class)
            if task == CLASSIFICATION
            else None
        )
        schema_path = Path(s.schema) if s.schema else (home / sch.SCHEMA_FILE if home else None)
        if schema_path is not None and schema_path.exists():
            try:
                schema = sch.read_schema(schema_path)
                anomalies = sch.validate(stats, schema, str(schema_path))
            except sch.SchemaError as exc:
                raise DataError(
                    str(exc), hint="fix the file, or delete it to infer it again"
                ) from exc
            if anomalies:
                more = f" (+{len(anomalies) - 3} more)" if len(anomalies) > 3 else ""
                raise DataError(
                    f"{path} breaks {schema_path}: "
                    + "; ".join(str(a) for a in anomalies[:3])
                    + more
                )
            status = "checked"
        elif s.schema:
            raise DataError(f"--schema {s.schema}: not found", hint="omit it to infer one")
        else:
            schema, status = sch.infer_schema(stats), "inferred"
        text = sch.schema_text(schema)
        ws = Workspace(ws_root)
        with ws.stage_output("build") as out:
            split_rows = _write_split(paths, out, list(stats.features), label, task, seed)
            (out / sch.SCHEMA_FILE).write_text(text)
            write_json(out / "stats.json", stats.to_dict())
            info = {
                "kind": "table",
                "origin": data,
                "source": src.source,
                "data_hash": "sha256:" + sha,
                "data_sha256": sha,  # of the bytes read: what `ci plan` compares a snapshot with
                "label": label,
                "task": task,
                "classes": classes,
                "seed": seed,
                "rows": split_rows,
                "schema": {
                    "status": status,
                    "path": src.shown(str(schema_path or ws.data / sch.SCHEMA_FILE)),
                    "sha256": hashlib.sha256(text.encode()).hexdigest(),
                },
                "created_by": os.environ.get("CIRCLE_BUILD_URL") or "local",
            }
            write_json(out / "manifest.json", info)
        if status == "inferred" and schema_path is not None:
            atomic_text(schema_path, text)  # last: only a build that passed leaves one
    return TableBuild(info)


def numeric_means(stats: TableStats, kinds: dict[str, str]) -> dict[str, float]:
    """The training mean of each numeric input: what a missing number becomes, in training
    (tf.data) and in the rows the package and retrain send to the model."""
    return {n: float(stats.features[n].mean) for n, k in kinds.items() if k == "numeric"}


def typed_rows(
    path: Path,
    kinds: dict[str, str],
    means: dict[str, float],
    label: str,
    classes: list[str] | None,
    limit: int | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A split's rows as the served model takes them: one array per input (float32 numbers,
    a missing one filled with the training mean as in training; strings as they are), and the
    labels (class indices, or float targets). ``limit``: the first rows only (read no more)."""
    cols: dict[str, list[np.ndarray]] = {name: [] for name in kinds}
    ys: list[np.ndarray] = []
    got = 0
    for batch in read_csv(path, batch_rows=min(BATCH_ROWS, limit or BATCH_ROWS)):
        for name in kinds:
            v = np.char.strip(batch[name])
            if name in means:
                v = np.where(v == "", str(means[name]), v).astype(np.float32)
            cols[name].append(v)
        y = np.char.strip(batch[label])
        ys.append(
            np.array([classes.index(c) for c in y.tolist()]) if classes else y.astype(np.float32)
        )
        got += len(y)
        if limit is not None and got >= limit:
            break
    return {k: np.concatenate(v)[:limit] for k, v in cols.items()}, np.concatenate(ys)[:limit]


def take(inputs: dict[str, np.ndarray] | np.ndarray, idx: object) -> object:
    """Rows ``idx`` of a model's inputs: one array, or a dict of columns."""
    if isinstance(inputs, dict):
        return {k: v[idx] for k, v in inputs.items()}
    return inputs[idx]
