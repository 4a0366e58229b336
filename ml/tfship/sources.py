"""Stage 1, getting the data: resolve ``--data`` to raw arrays, from wherever it is.

Sources (``--data``):

- ``digits`` (default, offline): the 8x8 handwritten digits that ship inside scikit-learn.
- ``fashion_mnist``: Keras' Fashion-MNIST loader (downloads once into ``$KERAS_HOME``).
- a local ``.npz`` (``images``/``labels``, or ``x``/``y``; optional ``x_test``/``y_test``),
  a local ``.csv`` (a ``label`` column or the first column, then one column per pixel of a
  square image), a ``.zip``/``.tar.gz`` of an image folder, or a folder of such snapshots
  (the one whose name sorts last is used).
- an image folder: one sub-folder per class (the names are the classes), as Keras'
  ``image_dataset_from_directory`` reads them; its sha256 covers each image's path below
  it, size and bytes (:func:`hash_image_folder`, as a bucket's).

Tables (``--label``: CSV, Parquet, TFRecord, globs of shards) are read by ``tables.py``.
- an ``https://`` URL of an ``.npz`` or ``.csv``, or of a ``.zip``/``.tar.gz`` of an image
  folder, with its sha256 (``#sha256=<hex>`` or ``--data-sha256``).
- ``s3://bucket/key``: an object, a prefix of snapshots (the newest by name, as a folder), an
  image folder (a prefix whose sub-prefixes are the classes) or a glob of shards, downloaded
  into a temporary folder and hashed as it streams (see :func:`in_bucket`); ``#sha256=<hex>``
  or ``--data-sha256`` is checked when given.
- ``ssh://user@host[:port]/path/file``: one file (an ``.npz``, a ``.csv``, or a ``.zip`` or
  ``.tar.gz`` of an image folder) read over SFTP with the SSH settings of the deploy hosts
  (``--ssh-key-env``, ``--known-hosts``), bounded and hashed as it streams.

One grammar for every source (see "Data URIs" below): a location, then optionally
``#sha256=<hex>`` (checked against the bytes read). :func:`data_uri` writes it,
:func:`split_sha256` reads it; ``tfship ci watch-data`` and ``tfship ci plan`` send exactly
what ``tfship build --data`` takes.

Downloads and what they unpack to are bounded by ``--max-data-bytes``; local data is streamed
from disk (``tfship.rows``) and not bounded.
Nothing here imports TensorFlow (but for ``fashion_mnist``).
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import importlib.util
import itertools
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from tfship import s3
from tfship.errors import DataError, MissingExtra
from tfship.extras import INSTALL_TRAIN
from tfship.log import quiet_tensorflow
from tfship.rows import CHUNK_BYTES, Rows, RowWriter, npy_rows_header, npz_rows
from tfship.settings import Setting

if TYPE_CHECKING:
    from tfship.targets import SSHAccess

DATA = Setting(
    "digits",
    "TFSHIP_DATA",
    "digits (bundled, offline) | fashion_mnist | breast_cancer | wine | diabetes | reviews "
    "| PATH: images .npz/.csv or an image folder packed as .zip/.tar.gz, tables "
    ".csv/.parquet/.tfrecord[.gz] (with --label) "
    "| FOLDER of snapshots (newest by name) or of class sub-folders of images "
    "| 'GLOB' of shards | https://URL#sha256=HEX (a file, or a .zip/.tar.gz of an image folder) "
    "| s3://BUCKET/KEY: a file, a PREFIX/ of snapshots (newest by name) or of class "
    "sub-prefixes of images, or a 'GLOB' "
    "| ssh://USER@HOST[:PORT]/PATH of a file. Any of them may end in #sha256=HEX (checked)",
)
DATA_SHA256 = Setting(
    None,
    "TFSHIP_DATA_SHA256",
    "Expected sha256 of the data file (required for URLs unless in the #fragment).",
)
MAX_DATA_BYTES = Setting(
    512 * 1024 * 1024,
    "TFSHIP_MAX_DATA_BYTES",
    "Refuse a download (https, ssh, s3) bigger than this, or one that unpacks (.npz, .zip, "
    ".tar.gz) to more. Local files and folders are streamed from disk, not capped.",
    flag="--max-data-bytes",
    min=1,
)

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz")  # an image folder, packed
SNAPSHOT_SUFFIXES = (".npz", ".csv", ".parquet", ".tfrecord", ".tfrecord.gz", *ARCHIVE_SUFFIXES)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")  # image_dataset_from_directory's
GREY_MODES = ("1", "L", "I", "I;16")  # Pillow modes read as one channel
TOO_BIG = f"split the snapshot or raise {MAX_DATA_BYTES.flag} ({MAX_DATA_BYTES.env})"
RESAVE = "write snapshots with np.savez(path, images=..., labels=...)"


@dataclass
class RawData:
    """Arrays as a source gave them, before validation. ``origin`` names them in errors."""

    images: np.ndarray | Rows  # Rows: on disk (an image folder, a local .npz or .csv)
    labels: np.ndarray
    origin: str
    scale: float | None = None  # the pixels' full scale (digits: 16; an image folder: 255)
    class_names: list[str] | None = None  # an image folder's sub-folder names
    test_images: np.ndarray | Rows | None = None
    test_labels: np.ndarray | None = None
    sha256: str | None = None  # of the snapshot's bytes (an image folder's: hash_image_folder)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def load_source(
    spec: str,
    sha256: str | None = None,
    cache_dir: Path | None = None,
    max_bytes: int = MAX_DATA_BYTES.default,
    access: SSHAccess | None = None,
    image_shape: tuple[int, int, int] | None = None,
) -> RawData:
    """Resolve ``--data`` to raw arrays. Raises :class:`DataError` for anything unusable.

    ``max_bytes`` bounds a download and what it unpacks to; local files are streamed from
    disk, a chunk at a time, and not capped.
    ``access``: the SSH settings an ``ssh://`` source is read with. ``image_shape``: the
    (height, width, channels) an image folder's images are resized to (the schema's).
    """
    if spec in ("digits", "default"):
        return load_digits()
    if spec == "fashion_mnist":
        return load_fashion_mnist()
    spec, sha256 = expected_sha256(spec, sha256)
    scheme = urlsplit(spec).scheme
    if scheme in ("http", "https"):
        return load_url(spec, sha256, cache_dir, max_bytes, image_shape)
    if s3.is_s3(spec):
        return load_bucket(spec, sha256, cache_dir, max_bytes, image_shape)
    if scheme == "ssh":
        suffixes = (".npz", ".csv", *ARCHIVE_SUFFIXES)
        with over_ssh(spec, access, cache_dir, max_bytes, sha256, suffixes) as got:
            # checked as it streamed
            raw = load_downloaded(got, max_bytes, sha256, image_shape, shown_url(spec))
        raw.origin = shown_url(spec)
        return raw
    if scheme and len(scheme) > 1 and scheme != "file":
        raise DataError(
            f"--data {shown_url(spec)}: unsupported scheme {scheme}://",
            hint="use digits, fashion_mnist, a local path, an https://, s3:// or ssh:// URL",
        )
    path = Path(spec[7:] if spec.startswith("file://") else spec).expanduser()
    raw = load_path(path, None, image_shape=image_shape)  # local: streamed, not capped
    if sha256:  # an image folder's is of its images' paths, sizes and bytes
        where = path if image_classes(path) is not None else snapshot_path(path)
        check_sha256(where, sha256, got=raw.sha256)
    return raw


def load_digits() -> RawData:
    """The 1797 8x8 digit images bundled with scikit-learn, read without importing sklearn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtra(
            "the bundled digits need tfship's train extra (scikit-learn is not installed)",
            hint=INSTALL_TRAIN,
        )
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    images = table[:, :-1].reshape(-1, 8, 8)
    labels = table[:, -1].astype(np.int64)
    return RawData(images=images, labels=labels, origin=f"digits ({path.name})", scale=16.0)


def load_fashion_mnist() -> RawData:
    """Keras' Fashion-MNIST loader; it reads the cached copy under ``$KERAS_HOME`` if present."""
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


def is_snapshot(path: Path) -> bool:
    """Whether ``path`` is a data file tfship reads (by its name)."""
    return path.name.endswith(SNAPSHOT_SUFFIXES) and path.is_file()


def snapshot_path(path: Path) -> Path:
    """A file is its own snapshot; a folder's snapshot is the data file whose name sorts last."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if is_snapshot(p))
        if not files:
            raise DataError(
                f"{path}: no snapshot in this folder ({', '.join(SNAPSHOT_SUFFIXES)}) "
                "and no class sub-folders of images"
            )
        return files[-1]
    return path


def image_classes(path: Path) -> list[Path] | None:
    """The class sub-folders of an image folder (one per class, images directly inside, as
    Keras' ``image_dataset_from_directory`` reads them), or None if ``path`` is not one."""
    if not path.is_dir() or any(is_snapshot(p) for p in path.iterdir()):
        return None
    subs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subs and all(
        any(
            f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
            for f in d.iterdir()
            if f.is_file()
        )
        for d in subs
    ):
        return subs
    return None


def image_files(classes: list[Path]) -> list[tuple[int, Path]]:
    """(class index, file) of each image in the class sub-folders, by class then name."""
    return [
        (i, f)
        for i, d in enumerate(classes)
        for f in sorted(d.iterdir())
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
    ]


def hash_image_folder(folder: Path, classes: list[Path]) -> str:
    """sha256 of an image folder, streamed: for each image in path order, its path below the
    folder and its size, then its bytes. The same as a bucket's image folder hashes to
    (:func:`object_header`): an image moved to another class is new data, and one folder
    read locally or from a bucket is one snapshot."""
    digest = hashlib.sha256()
    for rel, f in sorted((f.relative_to(folder).as_posix(), f) for _, f in image_files(classes)):
        digest.update(f"{rel}\0{f.stat().st_size}\0".encode())
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def load_image_folder(
    path: Path,
    classes: list[Path],
    image_shape: tuple[int, int, int] | None = None,
) -> RawData:
    """One sub-folder per class (sorted names are the classes, as Keras orders them), images
    decoded with Pillow. Images of another size are resized (bilinear) to ``image_shape``
    (the schema's) or else the most common size, as ``image_dataset_from_directory`` resizes
    to one ``image_size``; grey images stay one channel, colour ones three (RGB), unless
    ``image_shape`` says which.

    Streamed: a first pass reads each file's header only (size and mode), the second
    decodes one image at a time into a temporary file of float32 pixels 0-255 (read back as
    :class:`tfship.rows.Rows`): however many images, one is in memory at a time.
    """
    from PIL import Image, UnidentifiedImageError  # Pillow: only image folders pay for it

    files = image_files(classes)
    unreadable = (UnidentifiedImageError, OSError, Image.DecompressionBombError)

    def opened(f: Path) -> Image.Image:
        try:
            return Image.open(f)
        except unreadable as exc:
            raise DataError(f"{f}: not an image Pillow can read ({exc})") from exc

    if image_shape is None:
        sizes: dict[tuple[int, int], int] = {}
        colour = False
        for _, f in files:  # headers only: Pillow decodes on load()
            with opened(f) as im:
                sizes[im.size] = sizes.get(im.size, 0) + 1
                colour = colour or im.mode not in GREY_MODES
        size = max(sizes, key=lambda sz: (sizes[sz], sz))
        image_shape = (size[1], size[0], 3 if colour else 1)  # Pillow's size is (width, height)
    height, width, channels = image_shape
    mode = "RGB" if channels == 3 else "L"
    out = RowWriter((height, width, channels), np.float32)
    for _, f in files:
        with opened(f) as im:
            try:
                im.load()
                im = im.convert("L" if im.mode in GREY_MODES else "RGB").convert(mode)
            except unreadable as exc:
                raise DataError(f"{f}: not an image Pillow can read ({exc})") from exc
            if im.size != (width, height):
                im = im.resize((width, height), Image.Resampling.BILINEAR)
            out.write(np.asarray(im, dtype=np.float32).reshape(1, height, width, channels))
    return RawData(
        images=out.rows(),
        labels=np.asarray([i for i, _ in files], dtype=np.int64),
        origin=f"{path} (image folder)",
        scale=255.0,
        class_names=[d.name for d in classes],
    )


def load_path(
    path: Path,
    max_bytes: int | None = MAX_DATA_BYTES.default,
    known_sha256: str | None = None,
    image_shape: tuple[int, int, int] | None = None,
    shown: str | None = None,
) -> RawData:
    """Load a local ``.npz`` or ``.csv`` file, an image folder, a ``.zip``/``.tar.gz`` of
    one, or the newest snapshot in a folder. ``known_sha256``: the file's sha256, already
    checked (a download's), not computed again. ``image_shape``: what an image folder's
    images are resized to. ``shown``: what errors call an archive (its URL, when
    downloaded)."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder", hint="check --data")
    classes = image_classes(path)
    if classes is not None:
        raw = load_image_folder(path, classes, image_shape)
        raw.sha256 = known_sha256.lower() if known_sha256 else hash_image_folder(path, classes)
        return raw
    path = snapshot_path(path)
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: file is empty")
    if max_bytes is not None and size > max_bytes:
        raise DataError(f"{path}: {size} bytes is over the {max_bytes} byte limit", hint=TOO_BIG)
    if path.suffix in (".npz", ".csv"):
        raw = _load_npz(path, max_bytes) if path.suffix == ".npz" else _load_csv(path)
    elif path.name.endswith(ARCHIVE_SUFFIXES):
        with tempfile.TemporaryDirectory(prefix="tfship-unpack-") as tmp:
            unpacked = Path(tmp) / "unpacked"
            folder = extract_image_folder(path, unpacked, max_bytes, shown or path.name)
            raw = load_image_folder(folder, image_classes(folder) or [], image_shape)
    else:
        raise DataError(
            f"{path}: images come as .npz, .csv, an image folder or a .zip/.tar.gz of one, "
            f"not {path.suffix or 'no suffix'}",
            hint="a table (Parquet, TFRecord) needs --label COLUMN",
        )
    raw.sha256 = known_sha256.lower() if known_sha256 else hash_files([path])
    return raw


def _check_npz_members(path: Path, max_bytes: int | None) -> None:
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
        if leaves_archive(name):
            raise DataError(
                f"{path}: archive member {name!r} points outside the archive", hint=RESAVE
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DataError(f"{path}: archive member {name!r} is a symbolic link", hint=RESAVE)
        total += info.file_size
    if max_bytes is not None and total > max_bytes:
        raise DataError(
            f"{path}: unpacks to {total} bytes, over the {max_bytes} byte limit", hint=TOO_BIG
        )


def _load_npz(path: Path, max_bytes: int | None = MAX_DATA_BYTES.default) -> RawData:
    """An ``.npz`` of images and labels (optionally test images and labels), never whole in
    memory: an array ``np.savez`` stored is read in place (:func:`tfship.rows.npz_rows`),
    one ``np.savez_compressed`` deflated is inflated to a temporary file a chunk at a time;
    labels (one number per image) are read whole. ``max_bytes``: what it may unpack to (a
    download's bound; None for a local file)."""
    _check_npz_members(path, max_bytes)
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n[: -len(".npy")] for n in zf.namelist() if n.endswith(".npy")]
        images = _npz_array(path, _pick(names, ("images", "x", "x_train"), path))
        labels = np.asarray(_npz_array(path, _pick(names, ("labels", "y", "y_train"), path)))
        test_x = next((k for k in ("x_test", "test_images") if k in names), None)
        test_y = next((k for k in ("y_test", "test_labels") if k in names), None)
        if (test_x is None) != (test_y is None):
            raise DataError(f"{path}: has a test image array or a test label array, not both")
        tx = _npz_array(path, test_x) if test_x else None
        ty = np.asarray(_npz_array(path, test_y)) if test_y else None
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise DataError(
                f"{path}: an array holds Python objects (ragged images or mixed types?),"
                " not numbers",
                hint="stack images of one shape into a numeric array before np.savez",
            ) from exc
        raise DataError(f"{path}: not a readable NPZ file ({exc})") from exc
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable NPZ file ({exc})") from exc
    return RawData(images, labels, str(path), test_images=tx, test_labels=ty)


def _npz_array(path: Path, name: str) -> np.ndarray | Rows:
    """Member ``name`` of an ``.npz``: in place when stored, else inflated to a temporary file
    a chunk at a time. A Fortran-ordered or 0-d array is read whole by NumPy (rare: what
    ``np.savez`` writes of a transposed array), as is one of Python objects, which NumPy
    refuses without pickles (a ValueError)."""
    stored = npz_rows(path, name)
    if stored is not None:
        return stored
    with zipfile.ZipFile(path) as zf, zf.open(f"{name}.npy") as fh:
        header = npy_rows_header(fh)
        if header is not None:
            shape, dtype = header
            out = RowWriter(shape[1:], dtype)
            row_bytes = max(int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize, 1)
            per = max(1, CHUNK_BYTES // row_bytes)
            for start in range(0, shape[0], per):
                n = min(per, shape[0] - start)
                data = fh.read(n * row_bytes)
                if len(data) != n * row_bytes:
                    raise EOFError(f"member {name} ends after {start} of {shape[0]} rows")
                out.write(np.frombuffer(data, dtype).reshape(n, *shape[1:]))
            return out.rows()
    with np.load(path, allow_pickle=False) as npz:
        return npz[name]


def _pick(names: list[str], keys: tuple[str, ...], path: Path) -> str:
    """The first of ``keys`` among the archive's array ``names``."""
    for k in keys:
        if k in names:
            return k
    raise DataError(
        f"{path}: no array named {' or '.join(keys)} (found: {', '.join(names) or 'none'})",
        hint="save with np.savez(path, images=..., labels=...)",
    )


def _load_csv(path: Path) -> RawData:
    """A CSV of images: a ``label`` column (or the first), then H*W pixel columns of a square
    image. Streamed: parsed a block of rows at a time into a temporary file of float64
    pixels, never whole in memory. Whole-number pixels are 0-255, others 0.0-1.0 (as NumPy
    would type them: integers, else floats)."""
    labels: list[float] = []
    block: list[list[float]] = []
    out: RowWriter | None = None
    whole, label_col, side = True, 0, 0

    def flush() -> None:
        nonlocal whole
        table = np.asarray(block, dtype=np.float64)
        labels.extend(table[:, label_col].tolist())
        pixels = np.delete(table, label_col, axis=1)
        whole = whole and bool(np.all(np.isfinite(pixels)) and np.all(pixels == np.round(pixels)))
        out.write(pixels.reshape(-1, side, side))  # type: ignore[union-attr]
        block.clear()

    try:
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            first = next(reader, None)
            has_header = bool(first and first[0] and not _is_number(first[0]))
            if has_header:
                header = [h.strip().lower() for h in first]  # type: ignore[union-attr]
                label_col = header.index("label") if "label" in header else 0
            rest = reader if has_header or first is None else itertools.chain([first], reader)
            width = 0
            for n, row in enumerate(rest, start=2 if has_header else 1):
                if not row:
                    continue
                if out is None:
                    width = len(row)
                    side = int(round(np.sqrt(width - 1)))
                    if side * side != width - 1 or side == 0:
                        raise DataError(
                            f"{path}: {width - 1} pixel columns is not a square image",
                            hint="CSV rows are label + H*W pixels with H == W; use NPZ for "
                            "other shapes",
                        )
                    out = RowWriter((side, side), np.float64)
                    per = max(1, CSV_BLOCK_BYTES // (width * 8))
                if len(row) != width:
                    raise DataError(
                        f"{path}: line {n} has {len(row)} columns, the first row has {width}"
                    )
                try:
                    block.append([float(v) for v in row])
                except ValueError as exc:
                    raise DataError(f"{path}: line {n}: {exc}") from exc
                if len(block) >= per:
                    flush()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text CSV file ({exc.reason})") from exc
    if out is None:
        raise DataError(f"{path}: no data rows")
    if block:
        flush()
    # the scale the values' type says: whole numbers are 0-255, as NumPy's int64 were
    return RawData(out.rows(), np.asarray(labels), str(path), scale=255.0 if whole else None)


CSV_BLOCK_BYTES = 1 << 20  # pixels parsed at a time (as Python floats: ~4x that in memory)


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
    max_bytes: int = MAX_DATA_BYTES.default,
    image_shape: tuple[int, int, int] | None = None,
) -> RawData:
    """Download an ``.npz``/``.csv``, or a ``.zip``/``.tar.gz`` of an image folder, over
    HTTP(S), check its size and sha256, then load it."""
    suffixes = (".npz", ".csv", *ARCHIVE_SUFFIXES)
    with downloaded(url, sha256, cache_dir, max_bytes, suffixes) as target:
        # ``downloaded`` checked the bytes against ``sha256`` as they streamed in
        raw = load_downloaded(target, max_bytes, sha256, image_shape, shown_url(url))
        raw.origin = shown_url(url)
        return raw


def load_downloaded(
    target: Path,
    max_bytes: int,
    known_sha256: str | None,
    image_shape: tuple[int, int, int] | None = None,
    shown: str | None = None,
) -> RawData:
    """A file fetched into a temporary folder: an ``.npz``/``.csv``, or a ``.zip``/``.tar.gz``
    of an image folder. ``known_sha256``: its bytes' sha256, already checked, not computed
    again. ``shown``: its URL, which errors name instead of the temporary copy."""
    try:
        return load_path(target, max_bytes, known_sha256, image_shape, shown)
    except DataError as exc:
        if shown:
            exc.message = exc.message.replace(str(target), shown)
            exc.args = (exc.message,)
        raise


def extract_image_folder(
    archive: Path, dest: Path, max_bytes: int | None, shown: str | None = None
) -> Path:
    """Unpack a ``.zip`` or ``.tar.gz`` of an image folder into ``dest`` and return the
    folder whose sub-folders are the classes (``dest`` itself, or the one folder the archive
    holds). Members that would leave ``dest`` (absolute, ``..``), links and devices are
    refused; more than ``max_bytes`` unpacked (None: no bound, a local archive) is refused
    before it is written. ``shown``:
    what errors call the archive (its URL), else its file name."""
    import tarfile

    shown = shown or archive.name
    dest.mkdir()
    if archive.name.endswith(".zip"):
        try:
            with zipfile.ZipFile(archive) as zf:
                members = [m for m in zf.infolist() if not _packing_junk(m.filename)]
                if max_bytes is not None and sum(m.file_size for m in members) > max_bytes:
                    raise DataError(
                        f"{shown}: unpacks to more than {max_bytes} bytes", hint=TOO_BIG
                    )
                for m in members:
                    m.filename = m.filename.replace("\\", "/")  # a Windows zip's separators
                    _check_member(shown, m.filename, stat.S_ISLNK(m.external_attr >> 16))
                    zf.extract(m, dest)
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, EOFError) as exc:
            raise DataError(f"{shown}: not a .zip archive tfship can unpack ({exc})") from exc
    else:
        try:
            with tarfile.open(archive, "r:gz") as tf:
                members = [m for m in tf.getmembers() if not _packing_junk(m.name)]
                unpacked = sum(m.size for m in members if m.isfile())
                if max_bytes is not None and unpacked > max_bytes:
                    raise DataError(
                        f"{shown}: unpacks to more than {max_bytes} bytes", hint=TOO_BIG
                    )
                for m in members:
                    _check_member(shown, m.name, not (m.isfile() or m.isdir()))
                tf.extractall(dest, members=members, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{shown}: not a .tar.gz archive tfship can unpack ({exc})") from exc
    inside = [p for p in dest.iterdir() if not p.name.startswith(".")]
    folder = inside[0] if len(inside) == 1 and image_classes(dest) is None else dest
    if image_classes(folder) is None:
        raise DataError(
            f"{shown}: no image folder inside (one sub-folder of images per class)",
            hint="pack the folder whose sub-folders are the classes",
        )
    return folder


def _packing_junk(name: str) -> bool:
    """What macOS adds to an archive (``__MACOSX/``, ``._name`` AppleDouble files)."""
    parts = name.replace("\\", "/").split("/")
    return parts[0] == "__MACOSX" or parts[-1].startswith("._")


def _check_member(archive: str, name: str, special: bool) -> None:
    if leaves_archive(name) or special:
        raise DataError(f"{archive}: member {name!r} is a link, a device or leaves the folder")


WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def leaves_archive(name: str) -> bool:
    """Whether an archive member's name points outside the folder it would unpack into:
    absolute (``/x``, ``\\x``, a Windows drive ``C:x``) or climbing out through a ``..``
    part, with either separator. The one rule for every archive tfship opens (an ``.npz``, a
    ``.zip`` or ``.tar.gz`` of an image folder); a ``:`` further in (``12:30.png``) is part
    of a name."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or WINDOWS_DRIVE.match(posix):
        return True
    return ".." in PurePosixPath(posix).parts


@contextmanager
def downloaded(
    url: str,
    sha256: str | None,
    cache_dir: Path | None,
    max_bytes: int,
    suffixes: tuple[str, ...],
) -> Iterator[Path]:
    """The file at ``url``, downloaded into a temporary folder (removed after), its size and
    sha256 checked (``#sha256=<hex>`` in the URL, or ``sha256``).

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
    suffix = next((x for x in suffixes if parts.path.endswith(x)), None)
    if suffix is None:
        got = Path(parts.path).suffix or "(no suffix)"
        raise DataError(f"{shown}: unknown format {got}", hint="use " + " or ".join(suffixes))
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
            got, digest = 0, hashlib.sha256()
            try:
                with open(target, "wb") as fh:
                    for chunk in resp.iter_content(1 << 20):
                        got += len(chunk)
                        if got > max_bytes:
                            raise DataError(
                                f"{shown}: more than the {max_bytes} byte limit", hint=TOO_BIG
                            )
                        digest.update(chunk)  # hashed as it streams: the file is not read again
                        fh.write(chunk)
            except requests.RequestException as exc:
                raise _truncated(shown, got, declared, type(exc).__name__) from exc
            if declared is not None and resp.raw.tell() != declared:
                raise _truncated(shown, resp.raw.tell(), declared, "short body")
        check_sha256(target, expected, name=shown, got=digest.hexdigest())
        yield target
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)  # an archive's unpacked folder too


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


def check_sha256(
    path: Path, expected: str, name: str | None = None, got: str | None = None
) -> None:
    """Refuse ``path`` unless its sha256 (``got`` when already computed, else streamed from
    the file, never read whole) is ``expected``."""
    h = got or hash_files([path])
    if h != expected.lower():
        raise DataError(
            f"{name or path}: sha256 mismatch: expected {expected}, got {h}",
            hint="the file changed or the checksum is wrong",
        )


# --------------------------------------------------------------------------------------------
# Buckets: s3://bucket/key
# --------------------------------------------------------------------------------------------

TABLE_SUFFIXES = tuple(x for x in SNAPSHOT_SUFFIXES if x not in (".npz", *ARCHIVE_SUFFIXES))
GLOB_CHARS = "*?["
_SHA256_FRAGMENT = re.compile(r"#sha256=([0-9a-fA-F]{64})$")
_CHANGED = ("PreconditionFailed", "412", "NoSuchKey", "404", "NotFound")


def split_sha256(spec: str) -> tuple[str, str | None]:
    """``spec`` without a trailing ``#sha256=<hex>``, and that hex (None when absent).

    Only that exact form is a fragment: ``#`` is a legal character in an object key."""
    m = _SHA256_FRAGMENT.search(spec)
    return (spec[: m.start()], m.group(1).lower()) if m else (spec, None)


@dataclass(frozen=True)
class BucketSnapshot:
    """One snapshot in a bucket, found by listing alone: one object, or the shards of a
    sub-folder or of a glob, in name order."""

    host: s3.S3Host = field(compare=False, repr=False)  # its bucket (one client for all)
    objects: tuple[dict, ...]  # Key, Size, ETag: as the listing (or a HEAD) gave them
    uri: str  # what `tfship build --data` takes to read exactly these objects again
    home: str  # the key prefix the snapshot sits in: its schema.pbtxt lives there
    image_folder: bool = False  # objects are home/<class>/<image>: an image folder

    @property
    def bucket(self) -> str:
        return self.host.bucket

    @property
    def size(self) -> int:
        return sum(int(o["Size"]) for o in self.objects)

    @property
    def identity(self) -> str:
        """The snapshot's URI and a digest of each object's key, size and ETag: it changes
        whenever an object is replaced, and costs a listing, not a download. (Not a content
        hash: a multipart upload's ETag is not the MD5 of the bytes.)"""
        lines = "\n".join(f"{o['Key']} {o['Size']} {o['ETag']}" for o in self.objects)
        return f"{self.uri} {hashlib.sha256(lines.encode()).hexdigest()}"


def find_in_bucket(
    spec: str, suffixes: tuple[str, ...] = SNAPSHOT_SUFFIXES, shards: bool = True
) -> BucketSnapshot | None:
    """Resolve ``s3://bucket/key`` by listing, as a local path resolves: an object (a key
    ending in a data file's suffix), a glob of shards (``*?[`` in the key, one key level per
    pattern level, as ``glob`` matches paths), or a prefix of snapshots whose newest entry by
    name is taken: a file ending in one of ``suffixes``, or (``shards``) a sub-folder whose
    table files are the shards (its URI is then the glob of them, ``prefix/*.parquet``).
    None when the prefix holds no snapshot; a missing object is a :class:`DataError`, a
    missing bucket or refused credentials the errors of :func:`tfship.s3.errors`."""
    uri = s3.S3Uri.parse(spec)
    host = s3.S3Host(uri.bucket)
    if any(c in uri.key for c in GLOB_CHARS):
        return _glob_in_bucket(host, uri, spec)
    parent = uri.key.rpartition("/")[0]
    if uri.key.endswith(SNAPSHOT_SUFFIXES):
        obj = _head(host, uri.key)
        if obj is None:
            raise DataError(f"{uri}: no such object", hint="check the key, or name its prefix/")
        return BucketSnapshot(host, (obj,), str(uri), parent)
    base = f"{uri.key}/" if uri.key else ""
    files: dict[str, dict] = {}
    folders: dict[str, list[dict]] = {}
    for o in host.keys(uri.key):
        name, sep, rest = o["Key"][len(base) :].partition("/")
        if not name or name.startswith("."):
            continue  # hidden (tfship's own .dir markers), or an empty key part
        if not sep:
            files[name] = o
        elif shards:
            inside = folders.setdefault(name, [])
            if rest.endswith(TABLE_SUFFIXES) and "/" not in rest and not rest.startswith("."):
                inside.append(o)
    entries = sorted([n for n in files if n.endswith(suffixes)] + list(folders))
    if not entries:
        obj = _head(host, uri.key) if uri.key else None
        if obj is not None:  # an object without a data suffix: its reader says what it is
            return BucketSnapshot(host, (obj,), str(uri), parent)
        return None
    newest = entries[-1]
    where = str(uri.join(newest))
    if newest in files:
        return BucketSnapshot(host, (files[newest],), where, uri.key)
    objects = tuple(sorted(folders[newest], key=lambda o: o["Key"]))
    if not objects:
        raise DataError(f"{where}/: the newest snapshot folder holds no table files")
    kinds = {next(x for x in TABLE_SUFFIXES if o["Key"].endswith(x)) for o in objects}
    pattern = f"{where}/*{kinds.pop() if len(kinds) == 1 else ''}"  # its shards, as a glob
    return BucketSnapshot(host, objects, pattern, uri.key)


def _head(host: s3.S3Host, key: str) -> dict | None:
    """The object at ``key`` as a listing shows it, or None if there is none (in a bucket
    that exists: a HEAD's 404 does not say which is missing, a listing does)."""
    with s3.errors(f"{host.name}/{key}"):
        try:
            head = host.s3.head_object(Bucket=host.bucket, Key=key)
        except Exception as exc:
            if s3.error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
                raise
            host.s3.list_objects_v2(Bucket=host.bucket, Prefix=key, MaxKeys=1)
            return None
    return {"Key": key, "Size": head["ContentLength"], "ETag": head["ETag"]}


def _glob_in_bucket(host: s3.S3Host, uri: s3.S3Uri, spec: str) -> BucketSnapshot:
    parts = uri.key.split("/")
    first = next(i for i, p in enumerate(parts) if any(c in p for c in GLOB_CHARS))
    home = "/".join(parts[:first])

    def matches(key: str) -> bool:
        names = key.split("/")
        return len(names) == len(parts) and all(
            fnmatch.fnmatchcase(n, p) and (p.startswith(".") or not n.startswith("."))
            for n, p in zip(names[first:], parts[first:], strict=True)
        )

    objects = tuple(o for o in host.keys(home) if matches(o["Key"]))
    if not objects:
        raise DataError(f"--data {spec}: no object matches this pattern")
    return BucketSnapshot(host, objects, str(uri), home)


def bucket_chunks(snap: BucketSnapshot, obj: dict) -> Iterator[bytes]:
    """The bytes of one listed object, streamed in chunks: exactly the version listed (a GET
    conditional on its ETag), and exactly its listed size (else a truncated download)."""
    host = snap.host
    where = f"s3://{snap.bucket}/{obj['Key']}"
    changed = DataError(
        f"{where}: changed or deleted while being read", hint="retry once the upload is done"
    )
    got = 0
    with s3.errors(where):
        try:
            body = host.s3.get_object(Bucket=snap.bucket, Key=obj["Key"], IfMatch=obj["ETag"])
        except Exception as exc:
            if s3.error_code(exc) in _CHANGED:
                raise changed from exc
            raise
        with body["Body"] as stream:
            while chunk := stream.read(s3.CHUNK):
                got += len(chunk)
                yield chunk
    if got != int(obj["Size"]):
        raise _truncated(where, got, int(obj["Size"]), "short body")


def hash_in_bucket(snap: BucketSnapshot) -> str:
    """sha256 of a snapshot's objects in name order, streamed (nothing kept): what
    ``tfship build`` computes of the same files read locally."""
    digest = hashlib.sha256()
    for obj in snap.objects:
        digest.update(object_header(snap, obj))
        for chunk in bucket_chunks(snap, obj):
            digest.update(chunk)
    return digest.hexdigest()


def object_header(snap: BucketSnapshot, obj: dict) -> bytes:
    """What the sha256 of an image folder sees before each object's bytes: its key below the
    folder and its size, so that an image moved to another class (a new label, the same
    bytes) is new data. Nothing for other snapshots: their hash is the files' bytes, the
    same as read locally."""
    if not snap.image_folder:
        return b""
    return f"{obj['Key'][len(snap.home) + 1 :]}\0{obj['Size']}\0".encode()


@dataclass
class Fetched:
    """A bucket snapshot copied into ``root`` (key ``a/b.csv`` at ``root/a/b.csv``)."""

    snapshot: BucketSnapshot
    root: Path
    paths: list[Path]
    sha256: str  # of the bytes as they streamed in, objects in name order

    def shown(self, text: str) -> str:
        """``text`` with the local copies named as what they are: s3://bucket/key."""
        return text.replace(f"{self.root}/", f"s3://{self.snapshot.bucket}/")


@contextmanager
def in_bucket(
    snap: BucketSnapshot,
    cache_dir: Path | None,
    max_bytes: int,
    expected: str | None = None,
    extra: tuple[str, ...] = (),
) -> Iterator[Fetched]:
    """The snapshot's objects downloaded into a temporary folder (in ``cache_dir``; removed
    after, whatever happens), hashed as they stream: the sha256 sees each chunk as it is
    written, no file is ever held in memory whole. ``expected`` (``#sha256=`` or
    ``--data-sha256``) is checked; over ``max_bytes`` in all is refused before a byte is
    read. ``extra``: other keys wanted beside it if they exist (a schema.pbtxt), not hashed.

    A :class:`DataError` raised inside names the objects by their s3:// URIs, not by their
    temporary copies."""
    if snap.size > max_bytes:
        raise DataError(
            f"{snap.uri}: {snap.size} bytes is over the {max_bytes} byte limit", hint=TOO_BIG
        )
    root = Path(tempfile.mkdtemp(prefix="tfship-s3-", dir=cache_dir))
    fetched = Fetched(snap, root, [], "")
    try:
        try:
            digest, total = hashlib.sha256(), 0
            for obj in snap.objects:
                target = _local_copy(root, snap, obj["Key"])
                digest.update(object_header(snap, obj))
                with target.open("wb") as fh:
                    for chunk in bucket_chunks(snap, obj):
                        total += len(chunk)
                        if total > max_bytes:  # it grew since the listing
                            raise DataError(
                                f"{snap.uri}: more than the {max_bytes} byte limit", hint=TOO_BIG
                            )
                        digest.update(chunk)
                        fh.write(chunk)
                fetched.paths.append(target)
            fetched.sha256 = digest.hexdigest()
            if expected and fetched.sha256 != expected.lower():
                raise DataError(
                    f"{snap.uri}: sha256 mismatch: expected {expected}, got {fetched.sha256}",
                    hint="the data changed or the checksum is wrong",
                )
            for key in extra:
                obj = _head(snap.host, key)
                if obj is not None:
                    with _local_copy(root, snap, key).open("wb") as fh:
                        for chunk in bucket_chunks(snap, obj):
                            fh.write(chunk)
            yield fetched
        except DataError as exc:
            exc.message = fetched.shown(exc.message)
            exc.args = (exc.message,)
            raise
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _local_copy(root: Path, snap: BucketSnapshot, key: str) -> Path:
    """Where object ``key`` is copied: ``root/key``, refused if the key would leave it."""
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise DataError(f"s3://{snap.bucket}/{key}: a key with empty, '.' or '..' parts")
    target = root.joinpath(*parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def bucket_snapshot(spec: str, suffixes: tuple[str, ...], shards: bool) -> BucketSnapshot:
    """:func:`find_in_bucket`, with an empty prefix a :class:`DataError`."""
    snap = find_in_bucket(spec, suffixes, shards)
    if snap is None:
        uri = s3.S3Uri.parse(spec)
        raise DataError(
            f"no snapshot ({', '.join(suffixes)}) in {uri}/", hint="upload one, or fix the prefix"
        )
    return snap


def load_bucket(
    spec: str,
    sha256: str | None,
    cache_dir: Path | None,
    max_bytes: int,
    image_shape: tuple[int, int, int] | None = None,
) -> RawData:
    """An ``.npz``/``.csv`` of images in a bucket (an object, or a prefix's newest one), or
    an image folder (a prefix whose sub-prefixes are the classes), downloaded and hashed as
    it streams, then read as a local one. ``origin`` is the s3:// URI read."""
    spec, fragment = split_sha256(spec)
    snap = image_folder_in_bucket(spec) or bucket_snapshot(spec, SNAPSHOT_SUFFIXES, shards=False)
    if snap.image_folder:
        with in_bucket(snap, cache_dir, max_bytes, fragment or sha256) as got:
            folder = got.root.joinpath(*s3.S3Uri.parse(snap.uri).key.split("/"))
            raw = load_image_folder(folder, image_classes(folder) or [], image_shape)
        raw.origin, raw.sha256 = f"{snap.uri} (image folder)", got.sha256
        return raw
    if len(snap.objects) != 1:
        raise DataError(f"--data {spec}: images come as one .npz or .csv, not shards")
    with in_bucket(snap, cache_dir, max_bytes, fragment or sha256) as got:
        raw = load_path(got.paths[0], max_bytes, got.sha256, image_shape, snap.uri)
    raw.origin, raw.sha256 = snap.uri, got.sha256
    return raw


MAX_SCHEMA_BYTES = 1 << 20  # a schema.pbtxt is text of a few KiB


def schema_in_bucket(spec: str, name: str) -> tuple[str, str] | None:
    """The schema file ``name`` beside an image snapshot in a bucket (in the image folder, or
    in the prefix the snapshot file sits in), as (its s3:// URI, its text); None when there
    is none. A build reads it, as a local snapshot's, and never writes one there (data
    buckets are read-only to a build)."""
    spec, _ = split_sha256(spec)
    snap = image_folder_in_bucket(spec) or find_in_bucket(spec, SNAPSHOT_SUFFIXES, shards=False)
    if snap is None:
        return None
    key = s3.join(snap.home, name)
    obj = _head(snap.host, key)
    if obj is None:
        return None
    uri = f"s3://{snap.bucket}/{key}"
    if obj["Size"] > MAX_SCHEMA_BYTES:
        raise DataError(f"{uri}: {obj['Size']} bytes is not a schema", hint="fix or remove it")
    try:
        return uri, b"".join(bucket_chunks(snap, obj)).decode()
    except UnicodeDecodeError as exc:
        raise DataError(f"{uri}: not text ({exc.reason})", hint="fix or remove it") from exc


def image_folder_in_bucket(spec: str) -> BucketSnapshot | None:
    """``s3://bucket/prefix/`` as an image folder: every entry under it is a sub-prefix (a
    class) of image objects (``prefix/cat/001.png``), none a data file. None otherwise.
    Its objects in key order are the snapshot (hashed as they download)."""
    uri = s3.S3Uri.parse(spec)
    if not uri.key or uri.key.endswith(SNAPSHOT_SUFFIXES) or any(c in uri.key for c in GLOB_CHARS):
        return None
    host = s3.S3Host(uri.bucket)
    base, objects = f"{uri.key}/", []
    for o in host.keys(uri.key):
        name, sep, rest = o["Key"][len(base) :].partition("/")
        if not name or name.startswith(".") or (sep and rest.startswith(".")):
            continue  # hidden: tfship's .dir markers, a schema's temporary copy
        if not sep:
            if name == "schema.pbtxt":
                continue
            return None  # a file beside the classes: a folder of snapshots, not of images
        if "/" in rest:
            return None  # deeper than class/image: not an image folder
        if rest and rest.lower().endswith(IMAGE_SUFFIXES):
            objects.append(o)  # else a folder marker (cats/) or another file: ignored, as locally
    if not objects:
        return None
    objects.sort(key=lambda o: o["Key"])
    return BucketSnapshot(host, tuple(objects), str(uri), uri.key, image_folder=True)


# --------------------------------------------------------------------------------------------
# Data URIs: the one grammar `tfship build --data`, `ci watch-data` and `ci plan` share
# --------------------------------------------------------------------------------------------

_HEX64 = re.compile(r"[0-9a-f]{64}")


def data_uri(location: str, sha256: str | None) -> str:
    """The ``--data`` value that reads exactly ``location`` (a path, a glob of shards, an
    https URL, an s3:// or ssh:// URI) and checks its bytes: ``<location>#sha256=<hex>``.
    :func:`split_sha256` reads it back."""
    if sha256 is None:
        return location
    if not _HEX64.fullmatch(sha256.lower()):
        raise DataError(f"{sha256!r} is not a sha256 (64 hex digits)")
    return f"{location}#sha256={sha256.lower()}"


def expected_sha256(spec: str, given: str | None) -> tuple[str, str | None]:
    """``spec`` without its ``#sha256=<hex>``, and the sha256 its bytes must have: the
    fragment's or ``given`` (``--data-sha256``); two different ones are refused."""
    spec, fragment = split_sha256(spec)
    given = given.lower() if given else None
    if fragment and given and fragment != given:
        raise DataError(
            f"--data {shown_url(spec)}: #sha256={fragment} and --data-sha256 {given} differ",
            hint="give the checksum once",
        )
    return spec, fragment or given


def hash_files(paths: list[Path]) -> str:
    """sha256 of the files' bytes one after the other (a snapshot's shards in name order),
    streamed: what a table build's single pass computes of the same files."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def newest_in_folder(
    folder: Path, suffixes: tuple[str, ...] = SNAPSHOT_SUFFIXES, shards: bool = True
) -> tuple[list[Path], str] | None:
    """The newest snapshot of a local folder by name, as :func:`find_in_bucket` takes a
    prefix's: a file ending in ``suffixes``, or (``shards``) a sub-folder whose table files
    are the shards: its location is then the glob of them (``folder/2026-11-02/*.parquet``),
    which ``tfship build --data`` reads as those files. (files, location); None when empty."""
    entries = sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".")
        and ((p.is_file() and p.name.endswith(suffixes)) or (shards and p.is_dir()))
    )
    if not entries:
        return None
    newest = entries[-1]
    if newest.is_file():
        return [newest], str(newest)
    files = sorted(
        p
        for p in newest.iterdir()
        if p.is_file() and p.name.endswith(TABLE_SUFFIXES) and not p.name.startswith(".")
    )
    if not files:
        raise DataError(f"{newest}/: the newest snapshot folder holds no table files")
    kinds = {next(x for x in TABLE_SUFFIXES if p.name.endswith(x)) for p in files}
    return files, f"{newest}/*{kinds.pop() if len(kinds) == 1 else ''}"


@dataclass(frozen=True)
class SshUri:
    """``ssh://user@host[:port]/path``: where a snapshot is, on an SSH host."""

    hostname: str
    username: str | None
    port: int
    path: str

    @classmethod
    def parse(cls, spec: str) -> SshUri:
        parts = urlsplit(spec)
        try:
            port = parts.port or 22
        except ValueError as exc:
            raise DataError(f"{shown_url(spec)}: the port is not a number") from exc
        if parts.scheme != "ssh" or not parts.hostname or not parts.path.startswith("/"):
            raise DataError(
                f"{shown_url(spec)}: not an ssh://user@host[:port]/absolute/path URI",
                hint="e.g. ssh://data@files.example.com/srv/snapshots/2026-11-02.npz",
            )
        if parts.password is not None:
            raise DataError(
                f"{shown_url(spec)}: a password in the URI is refused",
                hint="use the SSH key settings (--ssh-key-env, DEPLOY_SERVER_SSH_KEY_FILE)",
            )
        return cls(parts.hostname, parts.username, port, parts.path)

    def join(self, path: str) -> str:
        """The ssh:// URI of ``path`` on the same host."""
        user = f"{self.username}@" if self.username else ""
        port = f":{self.port}" if self.port != 22 else ""
        return f"ssh://{user}{self.hostname}{port}{path}"

    def connect(self, access: SSHAccess | None) -> object:
        """An open ``SSHHost`` (paramiko) with ``access``: the deploy hosts' SSH settings."""
        from tfship.ssh import SSHHost, SSHSettings  # paramiko: only ssh:// sources pay for it
        from tfship.targets import SSHAccess

        settings = (access or SSHAccess()).ssh()
        return SSHHost(
            SSHSettings(hostname=self.hostname, username=self.username, port=self.port, **settings)
        ).connect()


@contextmanager
def over_ssh(
    spec: str,
    access: SSHAccess | None,
    cache_dir: Path | None,
    max_bytes: int,
    expected: str | None,
    suffixes: tuple[str, ...],
) -> Iterator[Path]:
    """The file at ``ssh://user@host[:port]/path``, read over SFTP with ``access`` (key
    from the variable --ssh-key-env names, host key checked against known_hosts) into a
    temporary folder (removed after), refused over ``max_bytes`` before a byte is read,
    hashed as it streams and checked against ``expected`` when given."""
    uri = SshUri.parse(spec)
    shown = shown_url(spec)
    suffix = next((x for x in suffixes if uri.path.endswith(x)), None)
    if suffix is None:
        raise DataError(
            f"{shown}: an ssh:// source names one file ({', '.join(suffixes)})",
            hint="`tfship ci watch-data`/`ci plan` resolve a folder's newest snapshot to one",
        )
    host = uri.connect(access)
    tmpdir = Path(tempfile.mkdtemp(prefix="tfship-ssh-", dir=cache_dir))
    target = tmpdir / PurePosixPath(uri.path).name
    try:
        sftp = host.sftp()
        try:
            size = sftp.stat(uri.path).st_size or 0
        except OSError as exc:
            raise DataError(f"{shown}: no such file on the host ({exc})") from exc
        if size > max_bytes:
            raise DataError(
                f"{shown}: {size} bytes is over the {max_bytes} byte limit", hint=TOO_BIG
            )
        digest, got = hashlib.sha256(), 0
        with sftp.open(uri.path, "rb") as remote, target.open("wb") as fh:
            remote.prefetch(size)  # pipelined reads: one round trip per window, not per chunk
            while chunk := remote.read(1 << 20):
                got += len(chunk)
                if got > max_bytes:  # it grew since the stat
                    raise DataError(f"{shown}: more than the {max_bytes} byte limit", hint=TOO_BIG)
                digest.update(chunk)
                fh.write(chunk)
        if got != size:
            raise _truncated(shown, got, size, "the file changed while being read")
        if expected and digest.hexdigest() != expected.lower():
            raise DataError(
                f"{shown}: sha256 mismatch: expected {expected}, got {digest.hexdigest()}",
                hint="the file changed or the checksum is wrong",
            )
        yield target
    finally:
        host.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
