"""Reading tables, streamed: CSV, Parquet and TFRecord of ``tf.train.Example``, one file or
several shards, as batches of Arrow columns.

Nothing here holds a file whole: CSV through pyarrow's streaming reader (``open_csv``, blocks
of :data:`BLOCK_BYTES`), Parquet a row group's batches at a time, TFRecord a record at a time.
The sha256 of the content is computed from the same bytes in the same pass (``digest``): a
file is hashed as it is read, shards one after the other in name order (a Parquet file is
read from its footer, so it is hashed in a sequential read of its own). TensorFlow is not
imported: a TFRecord is read as TF's ``record_reader.cc`` reads it (length, masked CRC-32C of
the length, data, masked CRC-32C of the data; both checked) and each record parsed as a
``tensorflow.Example`` from a private copy of ``example.proto``'s descriptor.

A CSV's cells are read as strings (``""`` = missing): which type a column is, is decided by
the statistics pass over all of it (``stats.py``), never by its first block. Parquet and
TFRecord columns keep their types. A feature must hold one value per row (tables are rows of
scalars); a list-valued one is refused with its name.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfship.errors import DataError
from tfship.extras import lazy_module

pa = lazy_module("pyarrow")  # the train extra; deploy imports this module (tfship.extras)

CSV, PARQUET, TFRECORD = "csv", "parquet", "tfrecord"
FORMATS = {".csv": CSV, ".parquet": PARQUET, ".tfrecord": TFRECORD, ".tfrecord.gz": TFRECORD}
BLOCK_BYTES = 1 << 20
BATCH_ROWS = 4096


def table_format(path: Path) -> str | None:
    """csv, parquet or tfrecord from a file's name (``.tfrecord.gz`` is gzipped TFRecord)."""
    for suffix, fmt in FORMATS.items():
        if path.name.endswith(suffix):
            return fmt
    return None


@dataclass
class _Hashing(io.RawIOBase):
    """A binary file that hashes what is read through it."""

    raw: io.BufferedReader
    digest: object

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = self.raw.readinto(b)
        if n:
            self.digest.update(memoryview(b)[:n])
        return n or 0


def read_table(
    paths: list[Path], digest: object | None = None
) -> Iterator[tuple[Path, dict[str, pa.Array]]]:
    """Every shard in ``paths`` (one format), in order, as (shard, batch of columns).
    ``digest`` (a hashlib object), if given, sees every byte of every shard."""
    for path in paths:
        fmt = table_format(path)
        reader = {CSV: _csv_batches, TFRECORD: _tfrecord_batches}
        if fmt is None:
            raise DataError(
                f"{path}: unknown table format", hint="use .csv, .parquet or .tfrecord[.gz]"
            )
        if fmt == PARQUET:  # random access (the footer first): hashed in its own read
            if digest is not None:
                with path.open("rb") as fh:
                    while block := fh.read(BLOCK_BYTES):
                        digest.update(block)
            try:
                yield from ((path, b) for b in _parquet_batches(path))
            except pa.ArrowInvalid as exc:
                raise DataError(f"{path}: {_arrow_message(exc)}") from exc
            continue
        with path.open("rb") as raw:
            stream = _Hashing(raw, digest) if digest is not None else raw
            buffered = io.BufferedReader(stream, BLOCK_BYTES)
            try:
                for batch in reader[fmt](path, buffered):
                    yield path, batch
            except pa.ArrowInvalid as exc:
                raise DataError(f"{path}: {_arrow_message(exc)}") from exc
            while buffered.read(BLOCK_BYTES):  # readers may stop before EOF's last read
                pass


def _arrow_message(exc: Exception) -> str:
    """Arrow's error, in the words of this project's other messages."""
    m = re.search(r"Expected (\d+) columns, got (\d+): (.*)", str(exc))
    if m:
        row = m.group(3)[:60]
        return f"a row has {m.group(2)} columns, the header has {m.group(1)}: {row!r}"
    if "invalid UTF8" in str(exc):
        return "not UTF-8 text"
    return _first_line(exc)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _csv_header(path: Path, stream: io.BufferedReader) -> list[str]:
    first = stream.peek(BLOCK_BYTES)[:BLOCK_BYTES]
    try:
        line = first.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        if len(first) < BLOCK_BYTES:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from exc
        line = first[: exc.start].decode("utf-8").splitlines()
    if not line:
        raise DataError(f"{path}: empty file", hint="a CSV starts with a header row")
    header = [h.strip() for h in next(csv.reader(line[:1]))]
    if len(set(header)) != len(header) or "" in header:
        raise DataError(f"{path}: the header row needs distinct, non-empty column names")
    return header


def _csv_batches(path: Path, stream: io.BufferedReader) -> Iterator[dict[str, pa.Array]]:
    from pyarrow import csv as pacsv

    header = _csv_header(path, stream)
    reader = pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(
            column_names=header, skip_rows=1, block_size=BLOCK_BYTES, use_threads=True
        ),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.string()),
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )
    for rb in reader:
        if rb.num_rows:
            yield dict(zip(header, rb.columns, strict=True))


def _parquet_batches(path: Path) -> Iterator[dict[str, pa.Array]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a Parquet file ({_first_line(exc)})") from exc
    for rb in pf.iter_batches(batch_size=BATCH_ROWS):
        cols = {}
        for name, col in zip(rb.schema.names, rb.columns, strict=True):
            if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
                raise DataError(
                    f"{path}: column {name!r} holds lists ({col.type})",
                    hint="a table takes one value per column per row",
                )
            if pa.types.is_binary(col.type) or pa.types.is_dictionary(col.type):
                col = col.cast(pa.string())
            cols[name] = col
        yield cols


# --------------------------------------------------------------------------------------------
# TFRecord of tf.train.Example, without TensorFlow
# --------------------------------------------------------------------------------------------

_EXAMPLE = None


def example_class() -> type:
    """``tensorflow.Example`` from a private descriptor pool (example.proto and feature.proto
    of tensorflow/core/example, same field numbers): parses what TF writes."""
    global _EXAMPLE
    if _EXAMPLE is not None:
        return _EXAMPLE
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(
        name="tfship/example.proto", package="tensorflow", syntax="proto3"
    )

    def msg(name: str, *fields: tuple) -> descriptor_pb2.DescriptorProto:
        m = fd.message_type.add(name=name)
        for fname, number, ftype, label, type_name, packed in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
            if packed:
                f.options.packed = True
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    msg("BytesList", ("value", 1, F.TYPE_BYTES, rep, None, False))
    msg("FloatList", ("value", 1, F.TYPE_FLOAT, rep, None, True))
    msg("Int64List", ("value", 1, F.TYPE_INT64, rep, None, True))
    feature = msg(
        "Feature",
        ("bytes_list", 1, F.TYPE_MESSAGE, opt, ".tensorflow.BytesList", False),
        ("float_list", 2, F.TYPE_MESSAGE, opt, ".tensorflow.FloatList", False),
        ("int64_list", 3, F.TYPE_MESSAGE, opt, ".tensorflow.Int64List", False),
    )
    feature.oneof_decl.add(name="kind")
    for f in feature.field:
        f.oneof_index = 0
    entry = msg(
        "Features",
        ("feature", 1, F.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry", False),
    ).nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(
        name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=".tensorflow.Feature"
    )
    msg("Example", ("features", 1, F.TYPE_MESSAGE, opt, ".tensorflow.Features", False))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    _EXAMPLE = message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))
    return _EXAMPLE


def _masked_crc(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C rotated and offset (tensorflow/core/lib/hash/crc32c.h)."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecords(path: Path, stream: io.BufferedReader) -> Iterator[bytes]:
    """The records of a TFRecord file (gzipped if its name ends in .gz), checksums checked
    as tensorflow/core/lib/io/record_reader.cc checks them."""
    src = gzip.GzipFile(fileobj=stream) if path.name.endswith(".gz") else stream
    n = 0
    while True:
        try:
            head = src.read(12)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: not a gzipped TFRecord file ({exc})") from exc
        if not head:
            return
        if len(head) < 12:
            raise DataError(f"{path}: truncated record {n} (header)")
        length, crc = struct.unpack("<QI", head)
        if _masked_crc(head[:8]) != crc:
            raise DataError(
                f"{path}: record {n}: corrupted length (CRC mismatch)",
                hint="is this a TFRecord file? write it with tf.io.TFRecordWriter",
            )
        body = src.read(length + 4)
        if len(body) < length + 4:
            raise DataError(f"{path}: truncated record {n}")
        (crc,) = struct.unpack("<I", body[length:])
        if _masked_crc(body[:length]) != crc:
            raise DataError(f"{path}: record {n}: corrupted data (CRC mismatch)")
        yield body[:length]
        n += 1


# pyarrow type aliases (pa.type_for_alias): pyarrow itself is imported when a file is read.
_KIND_TYPE = {"int64_list": "int64", "float_list": "float32", "bytes_list": "string"}


def _tfrecord_batches(path: Path, stream: io.BufferedReader) -> Iterator[dict[str, pa.Array]]:
    from google.protobuf.message import DecodeError

    example = example_class()()
    kinds: dict[str, str] = {}
    cols: dict[str, list] = {}
    rows = 0

    def flush() -> dict[str, pa.Array]:
        out = {}  # features in name order: an Example's map has none of its own
        for name, values in sorted(cols.items()):
            values.extend([None] * (rows - len(values)))
            out[name] = pa.array(values, pa.type_for_alias(_KIND_TYPE[kinds[name]]))
        return out

    for n, record in enumerate(tfrecords(path, stream)):
        try:
            example.ParseFromString(record)
        except DecodeError as exc:
            raise DataError(f"{path}: record {n} is not a tf.train.Example") from exc
        for name, feat in example.features.feature.items():
            kind = feat.WhichOneof("kind")
            if kind is None:
                continue
            if kinds.setdefault(name, kind) != kind:
                raise DataError(
                    f"{path}: record {n}: feature {name!r} is a {kind}, earlier a {kinds[name]}"
                )
            values = getattr(feat, kind).value
            if len(values) > 1:
                raise DataError(
                    f"{path}: record {n}: feature {name!r} has {len(values)} values",
                    hint="a table takes one value per feature per example",
                )
            col = cols.setdefault(name, [])
            col.extend([None] * (rows - len(col)))
            if values:
                v = values[0]
                col.append(v.decode("utf-8", "replace") if kind == "bytes_list" else v)
        rows += 1
        if rows == BATCH_ROWS:
            yield flush()
            cols = {k: [] for k in cols}
            rows = 0
    if rows:
        yield flush()


def write_tfrecord(path: Path, columns: dict[str, np.ndarray]) -> Path:
    """Write columns as a TFRecord of ``tf.train.Example`` (numbers whole -> int64_list,
    other numbers float_list, strings bytes_list): what a data pipeline would hand tfship."""
    Example = example_class()
    n = len(next(iter(columns.values())))
    with path.open("wb") as fh:
        for i in range(n):
            ex = Example()
            for name, col in columns.items():
                v = col[i]
                feat = ex.features.feature[name]
                if isinstance(v, str | bytes | np.str_):
                    feat.bytes_list.value.append(str(v).encode())
                elif float(v).is_integer() and col.dtype.kind in "iu":
                    feat.int64_list.value.append(int(v))
                else:
                    feat.float_list.value.append(float(v))
            data = ex.SerializeToString()
            head = struct.pack("<Q", len(data))
            fh.write(head + struct.pack("<I", _masked_crc(head)))
            fh.write(data + struct.pack("<I", _masked_crc(data)))
    return path
