"""Stage 1: validate the data a source gave (``tfship.sources``), split it, describe it.

Pixel values are integers 0-255 or floats 0.0-1.0; they are stored as float32 in [0, 255],
the range of a decoded image: that is what the served model takes (it rescales inside its
graph, ``tfship.model``), so a client sends the pixels it has.
Before anything is written the build checks dtype and shape, NaN/inf, pixel range, labels,
rows per class and train/test drift; each snapshot gets a content hash (the same data has
the same hash whatever its file format: that is how retraining knows data is new).
Nothing here imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tfship import config, rows
from tfship import schema as sch
from tfship.errors import DataError
from tfship.s3 import is_s3
from tfship.settings import Setting, setting
from tfship.sources import (
    DATA,
    DATA_SHA256,
    MAX_DATA_BYTES,
    RawData,
    load_source,
    schema_in_bucket,
    split_sha256,
)
from tfship.tables import TableBuild, TableSettings, atomic_text, build_table, is_table
from tfship.targets import SSHAccess
from tfship.workspace import Workspace, write_json

SEED = Setting(
    42,
    "TFSHIP_SEED",
    "Seeds the split, the weights and the shuffle: the same data and seed give the same model.",
)


@dataclass
class Checks:
    """Thresholds for validation."""

    num_classes: int = setting(10, "TFSHIP_NUM_CLASSES", "Labels are 0..N-1.", min=2, max=10_000)
    min_rows_per_class: int = setting(
        5, "TFSHIP_MIN_ROWS_PER_CLASS", "Rows every class needs, in the whole snapshot.", min=1
    )
    max_label_drift: float = setting(
        0.10,
        "TFSHIP_MAX_LABEL_DRIFT",
        "Max total variation distance of train vs test label histograms.",
        min=0,
        max=1,
    )
    max_pixel_drift: float = setting(
        0.10,
        "TFSHIP_MAX_PIXEL_DRIFT",
        "Max total variation distance of train vs test pixel histograms.",
        min=0,
        max=1,
    )
    max_bytes: int = MAX_DATA_BYTES.field()


@dataclass
class DataSettings:
    """Stage 1: where the data comes from, how it is checked, and the split's seed."""

    data: str | None = DATA.field()
    data_sha256: str | None = DATA_SHA256.field()
    seed: int = SEED.field()
    checks: Checks = field(default_factory=Checks)
    table: TableSettings = field(default_factory=TableSettings)
    access: SSHAccess = field(default_factory=SSHAccess)  # for ssh:// data


@dataclass
class Split:
    """A validated, normalised split: images float32 (N, H, W, C) in [0, 255], labels int64."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Prepared:
    """The result of stage 1."""

    train: Split
    val: Split
    test: Split
    data_hash: str
    origin: str
    num_classes: int
    drift: dict[str, float] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def normalise(
    images: np.ndarray,
    labels: np.ndarray,
    origin: str,
    checks: Checks,
    scale: float | None = None,
    what: str = "images",
) -> Split:
    """Check dtype, shape, finiteness, range and labels; return float32 images in [0, 255]."""
    if images.size == 0 or labels.size == 0:
        raise DataError(f"{origin}: {what} are empty (0 rows)")
    if images.dtype.kind not in "uif":
        raise DataError(f"{origin}: {what} have dtype {images.dtype}, expected numbers")
    if labels.dtype.kind not in "uif":
        raise DataError(f"{origin}: labels have dtype {labels.dtype}, expected integers")
    if images.ndim == 3:  # grey images without their channel axis
        images = (
            images.with_shape((*images.shape, 1))
            if rows.on_disk(images)
            else images[..., np.newaxis]
        )
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(
            f"{origin}: {what} have shape {images.shape}, expected (N, H, W) or (N, H, W, 1|3)"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{origin}: {labels.shape[0] if labels.ndim else 0} labels for {images.shape[0]} images"
            f" (labels shape {labels.shape})"
        )
    lo, hi, bad = np.inf, -np.inf, 0  # one pass over the pixels (they may be on disk)
    for c in rows.chunks(images):
        if images.dtype.kind == "f":
            finite = np.isfinite(c)
            bad += int(finite.size - np.count_nonzero(finite))
            c = c[finite]
        if c.size:
            lo, hi = min(lo, float(c.min())), max(hi, float(c.max()))
    if bad:
        raise DataError(f"{origin}: {what} contain {bad} NaN or infinite values")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)):
            raise DataError(f"{origin}: labels contain NaN or infinite values")
        if not np.all(labels == np.round(labels)):
            raise DataError(f"{origin}: labels are not whole numbers")
    labels = labels.astype(np.int64)
    if scale is None:
        scale = 255.0 if images.dtype.kind in "ui" else 1.0
    if lo < 0 or hi > scale:
        raise DataError(
            f"{origin}: pixel values span [{lo:g}, {hi:g}], expected [0, {scale:g}]",
            hint="integers 0-255 or floats 0.0-1.0",
        )
    out_of_range = labels[(labels < 0) | (labels >= checks.num_classes)]
    if out_of_range.size:
        raise DataError(
            f"{origin}: {out_of_range.size} labels outside 0..{checks.num_classes - 1}"
            f" (e.g. {int(out_of_range[0])})",
            hint="fix the labels or set --num-classes",
        )
    if images.dtype == np.float32 and scale == config.PIXEL_MAX:
        return Split(images, labels)  # already pixels 0-255 (an image folder's): no copy
    factor = config.PIXEL_MAX / scale
    pixels = rows.convert(images, np.float32, factor, clip=config.PIXEL_MAX)
    return Split(pixels, labels)


def check_classes(split: Split, origin: str, checks: Checks) -> None:
    """Every class 0..K-1 needs at least ``min_rows_per_class`` rows; one class is no task."""
    counts = np.bincount(split.labels, minlength=checks.num_classes)
    present = np.flatnonzero(counts)
    if present.size < 2:
        raise DataError(
            f"{origin}: only {present.size} class present ({', '.join(map(str, present))}),"
            " a classifier needs at least 2"
        )
    short = [(c, int(n)) for c, n in enumerate(counts) if n < checks.min_rows_per_class]
    if short:
        listed = ", ".join(f"class {c}: {n}" for c, n in short[:5])
        raise DataError(
            f"{origin}: too few rows per class ({listed}; need {checks.min_rows_per_class})",
            hint="add data or lower --min-rows-per-class",
        )


def tvd(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance between two histograms (0 = same, 1 = disjoint)."""
    p = p / max(p.sum(), 1)
    q = q / max(q.sum(), 1)
    return float(0.5 * np.abs(p - q).sum())


def drift(a: Split, b: Split, num_classes: int) -> dict[str, float]:
    """Label and pixel-intensity distribution distance between two splits."""
    return split_drift(a, b, pixel_summary(a.images), pixel_summary(b.images), num_classes)


def split_drift(
    a: Split, b: Split, pa: PixelSummary, pb: PixelSummary, num_classes: int
) -> dict[str, float]:
    """:func:`drift` from the splits' pixel summaries (computed once, used twice)."""
    return {
        "label_tvd": tvd(
            np.bincount(a.labels, minlength=num_classes).astype(float),
            np.bincount(b.labels, minlength=num_classes).astype(float),
        ),
        "pixel_tvd": tvd(pa.histogram, pb.histogram),
    }


@dataclass
class PixelSummary:
    """One pass over a split's pixels: their histogram (PIXEL_BINS buckets over 0-255), and
    each channel's sum, sum of squares and count (for means and standard deviations)."""

    histogram: np.ndarray
    sums: np.ndarray
    squares: np.ndarray
    count: int


def pixel_summary(images: np.ndarray) -> PixelSummary:
    """:class:`PixelSummary` of ``images``, a chunk at a time."""
    edges = np.linspace(0.0, config.PIXEL_MAX, config.PIXEL_BINS + 1)
    channels = images.shape[-1]
    out = PixelSummary(np.zeros(config.PIXEL_BINS), np.zeros(channels), np.zeros(channels), 0)
    for c in rows.chunks(images):
        out.histogram += np.histogram(c, edges)[0]
        flat = c.reshape(-1, channels).astype(np.float64)
        out.sums += flat.sum(axis=0)
        out.squares += (flat**2).sum(axis=0)
        out.count += len(flat)
    return out


def check_drift(d: dict[str, float], origin: str, checks: Checks) -> None:
    """Fail when train and test differ more than the thresholds allow."""
    if d["label_tvd"] > checks.max_label_drift:
        raise DataError(
            f"{origin}: train/test label distribution drift {d['label_tvd']:.3f}"
            f" > {checks.max_label_drift}",
            hint="the test set does not look like the training set; raise --max-label-drift",
        )
    if d["pixel_tvd"] > checks.max_pixel_drift:
        raise DataError(
            f"{origin}: train/test pixel distribution drift {d['pixel_tvd']:.3f}"
            f" > {checks.max_pixel_drift}",
            hint="the test set does not look like the training set; raise --max-pixel-drift",
        )


# --------------------------------------------------------------------------------------------
# Split and hash
# --------------------------------------------------------------------------------------------


def content_hash(*splits: Split) -> str:
    """Hash of the normalised content: the same data hashes the same whatever its file format."""
    h = hashlib.sha256()
    for s in splits:
        for arr in (s.images, s.labels):
            h.update(str(arr.shape).encode())
            for c in rows.chunks(arr):
                h.update(np.ascontiguousarray(c).tobytes())
    return "sha256:" + h.hexdigest()


def stratified_split(s: Split, fractions: tuple[float, ...], seed: int) -> list[Split]:
    """Split each class by ``fractions`` (the remainder is the first part), seeded."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(s.labels):
        idx = rng.permutation(np.flatnonzero(s.labels == c))
        n = idx.size
        start = n
        for i, frac in reversed(list(enumerate(fractions, start=1))):
            k = max(1, int(round(n * frac))) if n >= len(fractions) + 1 else 0
            parts[i].append(idx[start - k : start])
            start -= k
        parts[0].append(idx[:start])
    out = []
    for chunks in parts:
        idx = np.sort(np.concatenate(chunks)) if chunks else np.array([], dtype=np.int64)
        idx = rng.permutation(idx)
        out.append(Split(rows.gather(s.images, idx), s.labels[idx]))
    return out


def prepare(raw: RawData, checks: Checks, seed: int = SEED.default) -> Prepared:
    """Validate, normalise and split raw data. Raises :class:`DataError` before any write."""
    full = normalise(raw.images, raw.labels, raw.origin, checks, raw.scale)
    check_classes(full, raw.origin, checks)
    if raw.test_images is not None:
        test = normalise(
            raw.test_images, raw.test_labels, raw.origin, checks, raw.scale, what="test images"
        )
        if test.images.shape[1:] != full.images.shape[1:]:
            raise DataError(
                f"{raw.origin}: test images have shape {test.images.shape[1:]},"
                f" train images {full.images.shape[1:]}"
            )
        train, val = stratified_split(full, (config.VAL_FRACTION,), seed)
        data_hash = content_hash(full, test)
    else:
        train, val, test = stratified_split(full, (config.VAL_FRACTION, config.TEST_FRACTION), seed)
        data_hash = content_hash(full)
    summaries = [pixel_summary(s.images) for s in (train, val, test)]
    d = split_drift(train, test, summaries[0], summaries[2], checks.num_classes)
    check_drift(d, raw.origin, checks)
    labels = np.concatenate([s.labels for s in (train, val, test)])
    stats = image_stats(summaries, labels, checks.num_classes, raw.class_names)
    return Prepared(train, val, test, data_hash, raw.origin, checks.num_classes, d, stats)


def image_stats(
    summaries: list[PixelSummary],
    labels: np.ndarray,
    num_classes: int,
    names: list[str] | None = None,
) -> dict:
    """Statistics per feature of the whole snapshot (its splits' pixel summaries and
    labels), stored with the data manifest (what a later retrain measures drift against):
    ``image``, the pixel histogram (PIXEL_BINS buckets over 0-255) and each channel's mean
    and standard deviation; ``label``, the rows per class (by name: ``names``, else the
    label's number)."""
    total = sum(p.histogram for p in summaries)
    n = max(sum(p.count for p in summaries), 1)
    mean = sum(p.sums for p in summaries) / n
    std = np.sqrt(np.maximum(sum(p.squares for p in summaries) / n - mean**2, 0.0))
    counts = np.bincount(labels, minlength=num_classes)
    names = names or [str(c) for c in range(num_classes)]
    return {
        sch.IMAGE_FEATURE: {
            "histogram": [int(x) for x in total],
            "mean": [round(float(x), 4) for x in mean],
            "std": [round(float(x), 4) for x in std],
        },
        sch.LABEL_FEATURE: {"counts": dict(zip(names, map(int, counts), strict=True))},
    }


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def save_split(path: Path, s: Split) -> None:
    """Write a split as an uncompressed NPZ (read back a batch at a time: :func:`load_split`)."""
    rows.save_npz(path, images=s.images, labels=s.labels)


def load_split(path: Path) -> Split:
    """Read a split the build stage wrote: its images as :class:`tfship.rows.Rows` (read
    from the file as they are used, never all in memory), its labels into memory."""
    try:
        images = rows.npz_rows(path, "images")
        with np.load(path, allow_pickle=False) as npz:
            return Split(npz["images"] if images is None else images, npz["labels"])
    except FileNotFoundError as exc:
        raise DataError(f"{path} not found", hint="run `tfship build` first") from exc
    except (zipfile.BadZipFile, ValueError, KeyError, OSError) as exc:
        raise DataError(f"{path}: not a split written by `tfship build` ({exc})") from exc


def manifest(p: Prepared, seed: int, checks: Checks) -> dict:
    """The data manifest: where the data came from, its hash, and what each split holds."""
    return {
        "origin": p.origin,
        "data_hash": p.data_hash,
        "num_classes": p.num_classes,
        "image_shape": list(p.train.images.shape[1:]),
        "seed": seed,
        "rows": {"train": len(p.train), "val": len(p.val), "test": len(p.test)},
        "class_counts": {
            name: np.bincount(s.labels, minlength=p.num_classes).tolist()
            for name, s in (("train", p.train), ("val", p.val), ("test", p.test))
        },
        "drift": p.drift,
        "stats": p.stats,
        "checks": {
            "min_rows_per_class": checks.min_rows_per_class,
            "max_label_drift": checks.max_label_drift,
            "max_pixel_drift": checks.max_pixel_drift,
        },
        "created_by": os.environ.get("CIRCLE_BUILD_URL") or "local",
    }


@dataclass
class BuildResult:
    """What stage 1 wrote: the data manifest."""

    manifest: dict

    def to_dict(self) -> dict:
        return self.manifest

    def summary(self) -> str:
        m, rows = self.manifest, self.manifest["rows"]
        return (
            f"data {m['data_hash'][:23]} from {m['origin']}: "
            f"{rows['train']} train / {rows['val']} val / {rows['test']} test rows"
        )


def build(ws_root: Path, s: DataSettings) -> BuildResult | TableBuild:
    """Stage 1: load ``s.data``, validate, split, and write ``<workspace>/data/``."""
    if is_table(s.data or DATA.default, s.table.label):
        return build_table(
            ws_root,
            s.data or DATA.default,
            s.table,
            s.seed,
            s.checks.min_rows_per_class,
            sha256=s.data_sha256,
            max_bytes=s.checks.max_bytes,
            access=s.access,
        )
    ws = Workspace(ws_root)
    data = s.data or DATA.default
    schema_path = Path(s.table.schema) if s.table.schema else schema_home(data)
    spec, schema_where = None, str(schema_path or ws.data / sch.SCHEMA_FILE)
    if schema_path is not None and schema_path.exists():
        spec = image_schema(schema_path.read_text(), schema_where)
    elif s.table.schema:
        raise DataError(f"--schema {s.table.schema}: not found", hint="omit it to infer one")
    elif is_s3(data) and (found := schema_in_bucket(data, sch.SCHEMA_FILE)) is not None:
        schema_where, text = found  # beside the snapshot in the bucket: checked, never written
        spec = image_schema(text, schema_where)
    raw = load_source(
        data,
        s.data_sha256,
        max_bytes=s.checks.max_bytes,
        access=s.access,
        image_shape=spec.shape if spec else None,
    )
    checks = s.checks
    if spec is not None:
        check_schema(raw, spec, schema_where)
        checks = replace(checks, num_classes=spec.num_classes)
    elif raw.class_names is not None:  # an image folder: its sub-folders are the classes
        checks = replace(checks, num_classes=len(raw.class_names))
    prepared = prepare(raw, checks, s.seed)
    shape = tuple(int(d) for d in prepared.train.images.shape[1:])
    inferred = spec is None
    spec = spec or sch.ImageSpec(shape, checks.num_classes, raw.class_names)  # type: ignore[arg-type]
    text = sch.schema_text(sch.infer_image_schema(spec, config.PIXEL_MAX))
    info = manifest(prepared, s.seed, checks)
    if spec.names is not None:
        info["classes"] = spec.names
    info["data_sha256"] = raw.sha256  # of the file read: what `ci plan` compares snapshots with
    info["schema"] = {
        "status": "inferred" if inferred else "checked",
        "path": schema_where,
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
    }
    with ws.stage_output("build") as out:
        for name in ("train", "val", "test"):
            save_split(out / f"{name}.npz", getattr(prepared, name))
        (out / sch.SCHEMA_FILE).write_text(text)
        write_json(out / "manifest.json", info)
    if inferred and schema_path is not None:
        atomic_text(schema_path, text)  # last: only a build that passed leaves one
    return BuildResult(info)


def class_names(manifest: dict) -> list[str]:
    """The class names an image model answers with (its data manifest's): an image folder's
    sub-folder names, else the labels' numbers as text ("0", "1", ...)."""
    return manifest.get("classes") or [str(c) for c in range(manifest["num_classes"])]


def schema_home(data: str) -> Path | None:
    """Where a local image snapshot's ``schema.pbtxt`` lives, as a table's does: in the
    folder (of snapshots, or of class sub-folders), or beside the file. None for the bundled
    sets and remote data: a bucket's is read from beside the snapshot
    (:func:`tfship.sources.schema_in_bucket`), never written; otherwise the workspace keeps
    it (``data/schema.pbtxt``; pass it back with --schema to check later snapshots)."""
    spec, _ = split_sha256(data)
    if spec in ("digits", "default", "fashion_mnist") or "://" in spec.removeprefix("file://"):
        return None
    path = Path(spec.removeprefix("file://")).expanduser()
    if path.is_dir():
        return path / sch.SCHEMA_FILE
    return path.parent / sch.SCHEMA_FILE if path.is_file() else None


def image_schema(text: str, where: str) -> sch.ImageSpec:
    """The image schema in ``text`` (read from ``where``, a path or an s3:// URI); DataError
    (exit 2) naming what is wrong in it."""
    try:
        return sch.image_spec(sch.parse_schema(text, where), where)
    except sch.SchemaError as exc:
        raise DataError(str(exc), hint="fix the file, or delete it to infer it again") from exc


def check_schema(raw: RawData, spec: sch.ImageSpec, where: str) -> None:
    """Refuse a snapshot that breaks its schema (DataError, exit 2, nothing written); an image
    folder's labels follow the schema's class order (the model's outputs do)."""
    shape = raw.images.shape[1:] + ((1,) if raw.images.ndim == 3 else ())
    labels = raw.labels
    top = int(labels.max()) if labels.size and labels.dtype.kind in "ui" else -1
    anomalies = sch.validate_images(spec, shape, raw.class_names, top, where)
    if anomalies:
        more = f" (+{len(anomalies) - 3} more)" if len(anomalies) > 3 else ""
        raise DataError(
            f"{raw.origin} breaks {where}: " + "; ".join(str(a) for a in anomalies[:3]) + more
        )
    if raw.class_names is not None and spec.names is not None:
        order = np.array([spec.names.index(n) for n in raw.class_names], dtype=np.int64)
        raw.labels, raw.class_names = order[raw.labels], list(spec.names)


@dataclass
class SnapshotSettings:
    """``tfship snapshot``: drill snapshots derived from the bundled data."""

    kind: str = setting(
        "shift",
        "TFSHIP_SNAPSHOT_KIND",
        "shift: moved and dimmed images (new data a retrain should accept). poisoned: labels "
        "shuffled independently of the images (the gate must reject it).",
        choices=("shift", "poisoned"),
    )
    seed: int = setting(1, "TFSHIP_SNAPSHOT_SEED", "Seed of the sample and of the shift.")


def make_snapshot(
    out: Path, kind: str = "shift", seed: int = 0, source: str = DATA.default
) -> dict:
    """Write a new data snapshot (NPZ, uint8 0-255) derived from ``source``.

    ``shift``: the same images moved one pixel and dimmed a little, with a seed-dependent
    sample: new data a retrain should learn from. ``poisoned``: labels shuffled independently
    of the images, the failure the original CircleCI sample simulates; the gate must reject it.
    """
    raw = load_source(source)
    full = normalise(raw.images, raw.labels, raw.origin, Checks(), raw.scale)
    rng = np.random.default_rng(seed)
    images, labels = full.images[..., 0] / config.PIXEL_MAX, full.labels.copy()
    if kind == "shift":
        keep = rng.random(labels.size) < 0.9
        images, labels = images[keep], labels[keep]
        moved = np.roll(images, shift=1 if seed % 2 == 0 else -1, axis=2)
        some = rng.random(labels.size) < 0.3
        images = np.where(some[:, None, None], moved, images) * 0.95
    elif kind == "poisoned":
        labels = rng.permutation(labels)
    else:
        raise DataError(f"unknown snapshot kind {kind!r}", hint="use shift or poisoned")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez_compressed(
        tmp,
        images=np.round(np.clip(images, 0, 1) * 255).astype(np.uint8),
        labels=labels.astype(np.int64),
    )
    tmp.replace(out)
    return {"path": str(out), "kind": kind, "rows": int(labels.size)}
