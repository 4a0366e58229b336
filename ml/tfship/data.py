"""Stage 1 building blocks: get data from a source, validate it, split it, describe it.

Sources (``--data``):

- ``digits`` (default, offline): the 8x8 handwritten digits that ship inside scikit-learn.
- ``fashion_mnist``: Keras' Fashion-MNIST loader (downloads once into ``$KERAS_HOME``).
- a local ``.npz`` (``images``/``labels``, or ``x``/``y``; optional ``x_test``/``y_test``),
  a local ``.csv`` (a ``label`` column or the first column, then one column per pixel of a
  square image), or a folder of such snapshots (the one whose name sorts last is used).
- an ``https://`` URL of an ``.npz`` or ``.csv``, with its sha256 (``#sha256=<hex>`` or
  ``--data-sha256``).

Pixel values are integers 0-255 or floats 0.0-1.0; they are stored as float32 in [0, 1].
Nothing here imports TensorFlow.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import os
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from tfship import config
from tfship.errors import DataError

SNAPSHOT_SUFFIXES = (".npz", ".csv")
TOO_BIG = "split the snapshot or raise --max-data-bytes (TFSHIP_MAX_DATA_BYTES)"
RESAVE = "write snapshots with np.savez(path, images=..., labels=...)"


@dataclass
class RawData:
    """Arrays as a source gave them, before validation. ``origin`` names them in errors."""

    images: np.ndarray
    labels: np.ndarray
    origin: str
    scale: float | None = None  # known divisor to reach [0, 1] (digits: 16)
    test_images: np.ndarray | None = None
    test_labels: np.ndarray | None = None


@dataclass
class Checks:
    """Thresholds for validation, all configurable from the CLI."""

    num_classes: int = config.DEFAULT_NUM_CLASSES
    min_rows_per_class: int = config.MIN_ROWS_PER_CLASS
    max_label_drift: float = config.MAX_LABEL_DRIFT
    max_pixel_drift: float = config.MAX_PIXEL_DRIFT
    max_bytes: int = config.MAX_DATA_BYTES  # a file, a download, or what an .npz unpacks to


@dataclass
class Split:
    """A validated, normalised split: images float32 (N, H, W, C) in [0, 1], labels int64."""

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


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def load_source(
    spec: str,
    sha256: str | None = None,
    cache_dir: Path | None = None,
    max_bytes: int = config.MAX_DATA_BYTES,
) -> RawData:
    """Resolve ``--data`` to raw arrays. Raises :class:`DataError` for anything unusable.

    ``max_bytes`` bounds a local file, a download, and what an ``.npz`` unpacks to.
    """
    if spec in ("digits", "default"):
        return load_digits()
    if spec == "fashion_mnist":
        return load_fashion_mnist()
    scheme = urlsplit(spec).scheme
    if scheme in ("http", "https"):
        return load_url(spec, sha256, cache_dir, max_bytes)
    if scheme and len(scheme) > 1 and scheme != "file":
        raise DataError(
            f"--data {shown_url(spec)}: unsupported scheme {scheme}://",
            hint="use digits, fashion_mnist, a local path, or an https:// URL",
        )
    path = Path(spec[7:] if spec.startswith("file://") else spec).expanduser()
    raw = load_path(path, max_bytes)
    if sha256:
        _check_sha256(snapshot_path(path), sha256)
    return raw


def load_digits() -> RawData:
    """The 1797 8x8 digit images bundled with scikit-learn, read without importing sklearn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("scikit-learn is not installed", hint="pip install scikit-learn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    images = table[:, :-1].reshape(-1, 8, 8)
    labels = table[:, -1].astype(np.int64)
    return RawData(images=images, labels=labels, origin=f"digits ({path.name})", scale=16.0)


def load_fashion_mnist() -> RawData:
    """Keras' Fashion-MNIST loader; it reads the cached copy under ``$KERAS_HOME`` if present."""
    from tfship.log import quiet_tensorflow

    quiet_tensorflow()
    try:
        from keras.datasets import fashion_mnist

        (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
    except Exception as exc:  # network, truncated gzip, wrong sizes: all bad input here
        raise DataError(
            f"fashion_mnist: could not load ({type(exc).__name__}: {exc})",
            hint="check the network, or put the four .gz files in"
            " $KERAS_HOME/datasets/fashion-mnist",
        ) from exc
    return RawData(x_train, y_train, "fashion_mnist", test_images=x_test, test_labels=y_test)


def snapshot_path(path: Path) -> Path:
    """A file is its own snapshot; a folder's snapshot is the data file whose name sorts last."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in SNAPSHOT_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"{path}: no .npz or .csv snapshot in this folder")
        return files[-1]
    return path


def load_path(path: Path, max_bytes: int = config.MAX_DATA_BYTES) -> RawData:
    """Load a local ``.npz`` or ``.csv`` file, or the newest snapshot in a folder."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder", hint="check --data")
    path = snapshot_path(path)
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: file is empty")
    if size > max_bytes:
        raise DataError(f"{path}: {size} bytes is over the {max_bytes} byte limit", hint=TOO_BIG)
    if path.suffix == ".npz":
        return _load_npz(path, max_bytes)
    if path.suffix == ".csv":
        return _load_csv(path)
    raise DataError(
        f"{path}: unknown format {path.suffix or '(no suffix)'}", hint="use .npz or .csv"
    )


def _check_npz_members(path: Path, max_bytes: int) -> None:
    """An ``.npz`` is a zip archive: refuse members named outside it, links, and zip bombs.

    NumPy reads members by name and never extracts them, but a snapshot carrying such
    members was not written by ``np.savez``: it is refused rather than half-trusted.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable NPZ file ({exc})") from exc
    total = 0
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or ":" in name:
            raise DataError(
                f"{path}: archive member {name!r} points outside the archive", hint=RESAVE
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DataError(f"{path}: archive member {name!r} is a symbolic link", hint=RESAVE)
        total += info.file_size
    if total > max_bytes:
        raise DataError(
            f"{path}: unpacks to {total} bytes, over the {max_bytes} byte limit", hint=TOO_BIG
        )


def _load_npz(path: Path, max_bytes: int = config.MAX_DATA_BYTES) -> RawData:
    _check_npz_members(path, max_bytes)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(
                f"{path}: an array holds Python objects (ragged images or mixed types?),"
                " not numbers",
                hint="stack images of one shape into a numeric array before np.savez",
            ) from exc
        raise DataError(f"{path}: not a readable NPZ file ({exc})") from exc
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable NPZ file ({exc})") from exc
    images = _pick(arrays, ("images", "x", "x_train"), path)
    labels = _pick(arrays, ("labels", "y", "y_train"), path)
    test_x = next((arrays[k] for k in ("x_test", "test_images") if k in arrays), None)
    test_y = next((arrays[k] for k in ("y_test", "test_labels") if k in arrays), None)
    if (test_x is None) != (test_y is None):
        raise DataError(f"{path}: has a test image array or a test label array, not both")
    return RawData(images, labels, str(path), test_images=test_x, test_labels=test_y)


def _pick(arrays: dict[str, np.ndarray], keys: tuple[str, ...], path: Path) -> np.ndarray:
    for k in keys:
        if k in arrays:
            return arrays[k]
    raise DataError(
        f"{path}: no array named {' or '.join(keys)} (found: {', '.join(arrays) or 'none'})",
        hint="save with np.savez(path, images=..., labels=...)",
    )


def _load_csv(path: Path) -> RawData:
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text CSV file ({exc.reason})") from exc
    rows = list(csv.reader(io.StringIO(text)))
    has_header = bool(rows and rows[0] and not _is_number(rows[0][0]))
    label_col = 0
    if has_header:
        header = [h.strip().lower() for h in rows.pop(0)]
        label_col = header.index("label") if "label" in header else 0
    if not any(rows):
        raise DataError(f"{path}: no data rows")
    width = len(rows[0])
    values = []
    for n, row in enumerate(rows, start=2 if has_header else 1):
        if not row:
            continue
        if len(row) != width:
            raise DataError(f"{path}: line {n} has {len(row)} columns, the first row has {width}")
        try:
            values.append([float(v) for v in row])
        except ValueError as exc:
            raise DataError(f"{path}: line {n}: {exc}") from exc
    table = np.asarray(values, dtype=np.float64)
    labels = table[:, label_col]
    pixels = np.delete(table, label_col, axis=1)
    side = int(round(np.sqrt(pixels.shape[1])))
    if side * side != pixels.shape[1] or side == 0:
        raise DataError(
            f"{path}: {pixels.shape[1]} pixel columns is not a square image",
            hint="CSV rows are label + H*W pixels with H == W; use NPZ for other shapes",
        )
    if np.all(np.isfinite(pixels)) and np.all(pixels == np.round(pixels)):
        pixels = pixels.astype(np.int64)
    return RawData(pixels.reshape(-1, side, side), labels, str(path))


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def load_url(
    url: str,
    sha256: str | None,
    cache_dir: Path | None = None,
    max_bytes: int = config.MAX_DATA_BYTES,
) -> RawData:
    """Download an ``.npz``/``.csv`` over HTTP(S), check its size and sha256, then load it.

    A body over ``max_bytes`` (declared or streamed) is refused; one shorter than its
    Content-Length is a truncated download. Errors and the manifest show the URL without
    ``user:password@`` and without its query string (signed URLs carry secrets there).
    """
    import requests  # imported here: only URL sources pay for it

    parts = urlsplit(url)
    shown = shown_url(url)
    expected = sha256
    if parts.fragment.startswith("sha256="):
        expected = parts.fragment.split("=", 1)[1]
    if not expected:
        raise DataError(
            f"{shown}: no checksum given",
            hint="append #sha256=<hex> to the URL or pass --data-sha256",
        )
    suffix = Path(parts.path).suffix
    if suffix not in SNAPSHOT_SUFFIXES:
        raise DataError(
            f"{shown}: unknown format {suffix or '(no suffix)'}", hint="use .npz or .csv"
        )
    tmpdir = Path(tempfile.mkdtemp(prefix="tfship-dl-", dir=cache_dir))
    target = tmpdir / f"snapshot{suffix}"
    try:
        try:
            resp = requests.get(parts._replace(fragment="").geturl(), stream=True, timeout=(10, 60))
        except requests.RequestException as exc:
            raise DataError(
                f"{shown}: download failed ({type(exc).__name__})",
                hint="check the URL and that the host is reachable",
            ) from exc
        with resp:
            if resp.status_code != 200:
                raise DataError(f"{shown}: HTTP {resp.status_code} {resp.reason}")
            declared = _content_length(resp.headers.get("Content-Length"))
            if declared is not None and declared > max_bytes:
                raise DataError(
                    f"{shown}: {declared} bytes is over the {max_bytes} byte limit", hint=TOO_BIG
                )
            got = 0
            try:
                with open(target, "wb") as fh:
                    for chunk in resp.iter_content(1 << 20):
                        got += len(chunk)
                        if got > max_bytes:
                            raise DataError(
                                f"{shown}: more than the {max_bytes} byte limit", hint=TOO_BIG
                            )
                        fh.write(chunk)
            except requests.RequestException as exc:
                raise _truncated(shown, got, declared, type(exc).__name__) from exc
            if declared is not None and resp.raw.tell() != declared:
                raise _truncated(shown, resp.raw.tell(), declared, "short body")
        _check_sha256(target, expected, name=shown)
        raw = load_path(target, max_bytes)
        raw.origin = shown
        return raw
    finally:
        for p in tmpdir.glob("*"):
            p.unlink()
        tmpdir.rmdir()


def shown_url(url: str) -> str:
    """``url`` as errors and manifests show it: no ``user:password@``, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _content_length(value: str | None) -> int | None:
    """The declared body length, or None when absent or not a plain number."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _truncated(shown: str, got: int, declared: int | None, why: str) -> DataError:
    of = f" of {declared}" if declared is not None else ""
    return DataError(
        f"{shown}: truncated download: the transfer ended after {got}{of} bytes ({why})",
        hint="retry; if it keeps happening the server or a proxy is cutting it short",
    )


def _check_sha256(path: Path, expected: str, name: str | None = None) -> None:
    h = hashlib.sha256(path.read_bytes()).hexdigest()
    if h != expected.lower():
        raise DataError(
            f"{name or path}: sha256 mismatch: expected {expected}, got {h}",
            hint="the file changed or the checksum is wrong",
        )


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
    """Check dtype, shape, finiteness, range and labels; return float32 images in [0, 1]."""
    if images.size == 0 or labels.size == 0:
        raise DataError(f"{origin}: {what} are empty (0 rows)")
    if images.dtype.kind not in "uif":
        raise DataError(f"{origin}: {what} have dtype {images.dtype}, expected numbers")
    if labels.dtype.kind not in "uif":
        raise DataError(f"{origin}: labels have dtype {labels.dtype}, expected integers")
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(
            f"{origin}: {what} have shape {images.shape}, expected (N, H, W) or (N, H, W, 1|3)"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{origin}: {labels.shape[0] if labels.ndim else 0} labels for {images.shape[0]} images"
            f" (labels shape {labels.shape})"
        )
    if images.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(images)))
        if bad:
            raise DataError(f"{origin}: {what} contain {bad} NaN or infinite values")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)):
            raise DataError(f"{origin}: labels contain NaN or infinite values")
        if not np.all(labels == np.round(labels)):
            raise DataError(f"{origin}: labels are not whole numbers")
    labels = labels.astype(np.int64)
    lo, hi = float(images.min()), float(images.max())
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
    return Split((images / scale).astype(np.float32), labels)


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
    edges = np.linspace(0.0, 1.0, config.PIXEL_BINS + 1)
    return {
        "label_tvd": tvd(
            np.bincount(a.labels, minlength=num_classes).astype(float),
            np.bincount(b.labels, minlength=num_classes).astype(float),
        ),
        "pixel_tvd": tvd(
            np.histogram(a.images, edges)[0].astype(float),
            np.histogram(b.images, edges)[0].astype(float),
        ),
    }


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
            h.update(np.ascontiguousarray(arr).tobytes())
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
        out.append(Split(s.images[idx], s.labels[idx]))
    return out


def prepare(raw: RawData, checks: Checks, seed: int = config.DEFAULT_SEED) -> Prepared:
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
    d = drift(train, test, checks.num_classes)
    check_drift(d, raw.origin, checks)
    return Prepared(train, val, test, data_hash, raw.origin, checks.num_classes, d)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def save_split(path: Path, s: Split) -> None:
    """Write a split as an uncompressed NPZ (fast to read back)."""
    np.savez(path, images=s.images, labels=s.labels)


def load_split(path: Path) -> Split:
    """Read a split the build stage wrote."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return Split(npz["images"], npz["labels"])
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
        "checks": {
            "min_rows_per_class": checks.min_rows_per_class,
            "max_label_drift": checks.max_label_drift,
            "max_pixel_drift": checks.max_pixel_drift,
        },
        "created_by": os.environ.get("CIRCLE_BUILD_URL") or "local",
    }


def build(
    ws_root: Path,
    spec: str,
    checks: Checks,
    seed: int = config.DEFAULT_SEED,
    sha256: str | None = None,
) -> dict:
    """Stage 1: load ``spec``, validate, split, and write ``<workspace>/data/``."""
    from tfship.workspace import Workspace, write_json

    ws = Workspace(ws_root)
    prepared = prepare(load_source(spec, sha256, max_bytes=checks.max_bytes), checks, seed)
    info = manifest(prepared, seed, checks)
    with ws.stage_output("build") as out:
        for name in ("train", "val", "test"):
            save_split(out / f"{name}.npz", getattr(prepared, name))
        write_json(out / "manifest.json", info)
    return info


def make_snapshot(out: Path, kind: str = "shift", seed: int = 0, source: str = "digits") -> dict:
    """Write a new data snapshot (NPZ, uint8 0-255) derived from ``source``.

    ``shift``: the same images moved one pixel and dimmed a little, with a seed-dependent
    sample: new data a retrain should learn from. ``poisoned``: labels shuffled independently
    of the images, the failure the original CircleCI sample simulates; the gate must reject it.
    """
    raw = load_source(source)
    full = normalise(raw.images, raw.labels, raw.origin, Checks(), raw.scale)
    rng = np.random.default_rng(seed)
    images, labels = full.images[..., 0], full.labels.copy()
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
