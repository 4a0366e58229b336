"""Rows on disk: image pixels that are never all in memory, whatever the data's size.

:class:`Rows` is an array-like over fixed-size records in a file (an unlinked temporary
file, or an uncompressed ``.npy`` member of a split's ``.npz``), read with ``pread``: a
slice or a list of rows costs their bytes, and nothing is memory-mapped (a mapping's
resident pages count in the process's RSS; ``pread`` leaves them in the page cache, which
the kernel reclaims). Every function here takes a NumPy array too, so small data stays in
memory as it was. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

CHUNK_BYTES = 16 * 1024 * 1024  # read or written at a time (at least one row)
IN_MEMORY_BYTES = 64 * 1024 * 1024  # a result bigger than this goes to disk


class Rows:
    """``shape[0]`` rows of ``shape[1:]`` ``dtype`` values, C order, from ``offset`` in
    ``fh``. Indexing with an int, a slice (step 1) or an integer array reads those rows
    into a NumPy array; :meth:`head` is a view of the first rows (nothing read)."""

    def __init__(self, fh: IO[bytes], offset: int, shape: tuple[int, ...], dtype: object):
        self.fh, self.offset = fh, offset
        self.shape, self.dtype = tuple(int(d) for d in shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def with_shape(self, shape: tuple[int, ...]) -> Rows:
        """The same rows seen as ``shape`` (rows of the same bytes: (N, H, W) as (N, H, W, 1))."""
        view = Rows(self.fh, self.offset, shape, self.dtype)
        if len(view) != len(self) or view.row_bytes != self.row_bytes:
            raise ValueError(f"rows of {self.shape[1:]} cannot be seen as {tuple(shape[1:])}")
        return view

    def head(self, n: int) -> Rows:
        """The first ``n`` rows, as Rows over the same file."""
        return Rows(self.fh, self.offset, (min(n, len(self)), *self.shape[1:]), self.dtype)

    def _read(self, start: int, count: int) -> np.ndarray:
        want = count * self.row_bytes
        data = os.pread(self.fh.fileno(), want, self.offset + start * self.row_bytes)
        if len(data) != want:
            raise OSError(f"short read: {len(data)} of {want} bytes at row {start}")
        return np.frombuffer(data, self.dtype).reshape((count, *self.shape[1:]))

    def __getitem__(self, key: object) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(key)
            return self._read(i, 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("Rows take slices of step 1")
            return self._read(start, max(0, stop - start))
        raw = np.asarray(key)
        if raw.dtype == bool or raw.ndim != 1 or (raw.size and raw.dtype.kind not in "iu"):
            raise IndexError("Rows take an int, a slice or a 1-D array of row numbers")
        idx = raw.astype(np.int64)
        out = np.empty((len(idx), *self.shape[1:]), self.dtype)
        if not len(idx):
            return out
        if idx.min() < 0 or idx.max() >= len(self):
            raise IndexError("row index out of range")
        # runs of consecutive rows are one read each
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1
        for run in np.split(np.arange(len(idx)), breaks):
            out[run[0] : run[-1] + 1] = self._read(int(idx[run[0]]), len(run))
        return out

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)


class RowWriter:
    """Rows appended to an unlinked temporary file; :meth:`rows` reads them back."""

    def __init__(self, shape: tuple[int, ...], dtype: object):
        self.fh = tempfile.TemporaryFile(prefix="tfship-rows-")  # noqa: SIM115 - Rows own it
        self.shape, self.dtype, self.n = tuple(shape), np.dtype(dtype), 0

    def write(self, block: np.ndarray) -> None:
        """Append ``block`` (rows of ``shape``) converted to ``dtype``."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape:
            raise ValueError(f"rows of {block.shape[1:]}, expected {self.shape}")
        if block.size:
            self.fh.write(memoryview(block.reshape(-1)).cast("B"))  # its own bytes: no copy
        self.n += len(block)

    def rows(self) -> Rows:
        """What was written, as Rows (the file lives as long as they do)."""
        self.fh.flush()
        return Rows(self.fh, 0, (self.n, *self.shape), self.dtype)


def on_disk(rows: object) -> bool:
    """Whether ``rows`` are read from a file (:class:`Rows`) rather than held in memory."""
    return isinstance(rows, Rows)


def chunk_rows(rows: np.ndarray | Rows) -> int:
    """How many of ``rows`` make a chunk: CHUNK_BYTES of them, at least one."""
    row_bytes = int(np.prod(rows.shape[1:], dtype=np.int64)) * rows.dtype.itemsize
    return max(1, CHUNK_BYTES // max(row_bytes, 1))


def chunks(rows: np.ndarray | Rows, size: int | None = None) -> Iterator[np.ndarray]:
    """``rows`` ``size`` (default: CHUNK_BYTES' worth) at a time, each a NumPy array."""
    size = size or chunk_rows(rows)
    for start in range(0, len(rows), size):
        yield np.asarray(rows[start : start + size])


def _sink(n: int, like: np.ndarray | Rows, dtype: object) -> np.ndarray | RowWriter:
    """Where ``n`` rows shaped as ``like``'s go: memory if small and ``like`` is in memory,
    else a temporary file."""
    dtype = np.dtype(dtype)
    nbytes = n * int(np.prod(like.shape[1:], dtype=np.int64)) * dtype.itemsize
    if not on_disk(like) and nbytes <= IN_MEMORY_BYTES:
        return np.empty((n, *like.shape[1:]), dtype)
    return RowWriter(like.shape[1:], dtype)


def _fill(sink: np.ndarray | RowWriter, blocks: Iterator[np.ndarray]) -> np.ndarray | Rows:
    if isinstance(sink, RowWriter):
        for block in blocks:
            sink.write(block)
        return sink.rows()
    start = 0
    for block in blocks:
        sink[start : start + len(block)] = block
        start += len(block)
    return sink


def gather(rows: np.ndarray | Rows, idx: np.ndarray) -> np.ndarray | Rows:
    """``rows[idx]``, a chunk at a time (on disk if ``rows`` are, or if big)."""
    n = chunk_rows(rows)
    blocks = (np.asarray(rows[idx[i : i + n]]) for i in range(0, len(idx), n))
    return _fill(_sink(len(idx), rows, rows.dtype), blocks)


def convert(
    rows: np.ndarray | Rows, dtype: object, scale: float = 1.0, clip: float | None = None
) -> np.ndarray | Rows:
    """``rows`` as ``dtype`` times ``scale``, clipped to [0, clip], a chunk at a time."""

    # CHUNK_BYTES of the wider of the two types: uint8 pixels become 4x the bytes as float32
    widest = max(rows.dtype.itemsize, np.dtype(dtype).itemsize)
    size = max(1, CHUNK_BYTES // max(int(np.prod(rows.shape[1:], dtype=np.int64)) * widest, 1))

    def blocks() -> Iterator[np.ndarray]:
        for c in chunks(rows, size):
            out = c.astype(dtype)
            if scale != 1.0:
                out *= np.asarray(scale, dtype)
            if clip is not None:
                np.clip(out, 0, clip, out=out)
            yield out

    return _fill(_sink(len(rows), rows, dtype), blocks())


def concat(parts: list[np.ndarray | Rows]) -> np.ndarray | Rows:
    """The rows of ``parts`` one after another (on disk if any part is, or if big)."""
    first = next((p for p in parts if on_disk(p)), parts[0])
    sink = _sink(sum(len(p) for p in parts), first, parts[0].dtype)
    return _fill(sink, (c for p in parts for c in chunks(p)))


def head(rows: np.ndarray | Rows, n: int) -> np.ndarray | Rows:
    """The first ``n`` rows; nothing read when they are on disk."""
    return rows.head(n) if on_disk(rows) else rows[:n]


# --------------------------------------------------------------------------------------------
# Splits as .npz files: the images member stored uncompressed, written and read by chunks
# --------------------------------------------------------------------------------------------


def save_npz(path: Path, **arrays: np.ndarray | Rows) -> None:
    """``np.savez(path, **arrays)`` (uncompressed, readable by ``np.load``), writing
    :class:`Rows` a chunk at a time."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                header = {"descr": np.lib.format.dtype_to_descr(arr.dtype)}
                header.update(fortran_order=False, shape=tuple(arr.shape))
                np.lib.format.write_array_header_2_0(fh, header)
                for c in chunks(arr):
                    fh.write(np.ascontiguousarray(c).tobytes())


def npz_rows(path: Path, name: str) -> Rows | None:
    """Member ``name`` of an ``.npz`` as :class:`Rows`, when it is stored uncompressed in C
    order (``np.savez``, :func:`save_npz`); None otherwise (read it with ``np.load``).
    ``np.load``'s ``mmap_mode`` does not reach into an ``.npz``: the member's ``.npy`` is
    found from the zip's local file header (30 bytes, then the name and the extra field)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{name}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    fh = open(path, "rb")  # noqa: SIM115 - Rows keep it open as long as they live
    fh.seek(info.header_offset)
    local = fh.read(30)
    if local[:4] != b"PK\x03\x04":
        fh.close()
        raise ValueError(f"{path}: member {name}: no local file header")
    name_len = int.from_bytes(local[26:28], "little")
    extra_len = int.from_bytes(local[28:30], "little")
    fh.seek(info.header_offset + 30 + name_len + extra_len)
    header = npy_rows_header(fh)
    if header is None:
        fh.close()
        return None
    return Rows(fh, fh.tell(), *header)


def npy_rows_header(fh: IO[bytes]) -> tuple[tuple[int, ...], np.dtype] | None:
    """Read an ``.npy`` header from ``fh`` (left at the first byte of data): the array's
    (shape, dtype) when its rows can be read a chunk at a time (C order, numbers, at least
    one axis); None otherwise (Fortran order, Python objects, 0-d: read it with NumPy)."""
    version = np.lib.format.read_magic(fh)
    read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = read_header(fh)
    if fortran or dtype.hasobject or not shape:
        return None
    return tuple(shape), dtype
