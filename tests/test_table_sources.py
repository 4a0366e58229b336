"""Where a table can come from: CSV, Parquet, TFRecord of tf.train.Example (plain and gzipped),
a glob of shards, a folder of snapshots, an https URL with its sha256; and image folders."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from helpers import assert_build_rejected
from tfship.table_io import example_class, write_tfrecord
from tfship.tables import table_stats, write_bundled


def wine_columns(tmp_path) -> dict[str, np.ndarray]:
    """The bundled wine table as typed columns (floats, and the class names)."""
    table = pacsv.read_csv(write_bundled("wine", tmp_path / "wine_src.csv"))
    return {
        n: np.asarray(c.to_numpy(zero_copy_only=False))
        for n, c in zip(table.column_names, table.columns, strict=True)
    }


def write_parquet(path, cols: dict[str, np.ndarray], row_group_size: int = 64):
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)
    return path


def manifest(tmp_path) -> dict:
    return json.loads((tmp_path / "workspace" / "data" / "manifest.json").read_text())


def stats_types(tmp_path) -> dict[str, str]:
    d = json.loads((tmp_path / "workspace" / "data" / "stats.json").read_text())
    return {f["name"]: f["type"] for f in d["features"]}


@pytest.mark.parametrize("fmt", ["parquet", "tfrecord", "tfrecord.gz"])
def test_parquet_and_tfrecord_build_as_the_same_table_as_its_csv(cli, tmp_path, fmt):
    cols = wine_columns(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    path = src / f"wine.{fmt}"
    if fmt == "parquet":
        write_parquet(path, cols)
    else:
        write_tfrecord(src / "wine.tfrecord", cols)
        if fmt.endswith(".gz"):
            with gzip.open(path, "wb") as out:
                out.write((src / "wine.tfrecord").read_bytes())
            (src / "wine.tfrecord").unlink()
    r = cli("build", "--data", str(path), "--label", "target", "--json")
    assert r.code == 0, r.err
    m = manifest(tmp_path)
    assert m["task"] == "classification"
    assert m["classes"] == ["class_0", "class_1", "class_2"]
    assert sum(m["rows"].values()) == 178
    types = stats_types(tmp_path)
    assert types["target"] == "BYTES"
    assert types["alcohol"] == "FLOAT"
    assert types["proline"] in ("INT", "FLOAT")  # whole numbers: INT from CSV and TFRecord
    assert (src / "schema.pbtxt").exists()  # inferred beside the data, as for a CSV
    # the split is CSV text the trainer streams; the label is the class name
    header = (tmp_path / "workspace" / "data" / "train.csv").read_text().splitlines()[0]
    assert set(header.split(",")) == {f'"{n}"' for n in cols}
    # same data in CSV: same statistics for every column
    csv_stats, _ = table_stats(tmp_path / "wine_src.csv")
    got = json.loads((tmp_path / "workspace" / "data" / "stats.json").read_text())
    for f in got["features"]:
        want = csv_stats.features[f["name"]]
        assert f["count"] == want.count and f["missing"] == want.missing
        if "mean" in f:
            assert f["mean"] == pytest.approx(want.mean, rel=1e-6)


def test_a_glob_of_shards_is_read_in_name_order_and_hashed_as_one(cli, tmp_path):
    cols = wine_columns(tmp_path)
    shards = tmp_path / "shards"
    shards.mkdir()
    cut = [0, 60, 120, 178]
    for i in range(3):
        part = {k: v[cut[i] : cut[i + 1]] for k, v in cols.items()}
        write_parquet(shards / f"part-{i:05d}.parquet", part)
    (shards / "notes.txt").write_text("not a shard")
    r = cli("build", "--data", str(shards / "part-*.parquet"), "--label", "target")
    assert r.code == 0, r.err
    m = manifest(tmp_path)
    assert sum(m["rows"].values()) == 178
    digest = hashlib.sha256()
    for i in range(3):
        digest.update((shards / f"part-{i:05d}.parquet").read_bytes())
    assert m["data_hash"] == "sha256:" + digest.hexdigest()
    assert (shards / "schema.pbtxt").exists()


def test_a_folder_of_snapshots_uses_the_newest_file_or_folder_of_shards(cli, tmp_path):
    cols = wine_columns(tmp_path)
    snaps = tmp_path / "snaps"
    (snaps / "2026-11-02").mkdir(parents=True)
    write_parquet(snaps / "2026-11-01.parquet", {k: v[:100] for k, v in cols.items()})
    write_parquet(snaps / "2026-11-02" / "part-0.parquet", {k: v[:90] for k, v in cols.items()})
    write_parquet(snaps / "2026-11-02" / "part-1.parquet", {k: v[90:] for k, v in cols.items()})
    r = cli("build", "--data", str(snaps), "--label", "target")
    assert r.code == 0, r.err
    assert sum(manifest(tmp_path)["rows"].values()) == 178
    assert (snaps / "schema.pbtxt").exists()


def test_an_https_table_is_checked_against_its_sha256(cli, tmp_path, http_dir):
    base, www = http_dir
    cols = wine_columns(tmp_path)
    write_parquet(www / "wine.parquet", cols)
    digest = hashlib.sha256((www / "wine.parquet").read_bytes()).hexdigest()
    r = cli("build", "--data", f"{base}/wine.parquet#sha256={digest}", "--label", "target")
    assert r.code == 0, r.err
    assert manifest(tmp_path)["data_hash"] == "sha256:" + digest
    bad = cli("build", "--data", f"{base}/wine.parquet#sha256={'0' * 64}", "--label", "target")
    assert bad.code == 2 and "sha256 mismatch" in bad.err, bad.err


def _corrupt(path):
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF  # inside the first record's data: its CRC no longer matches
    path.write_bytes(bytes(data))


def _list_valued(path):
    ex = example_class()()
    ex.features.feature["x"].float_list.value.extend([1.0, 2.0])
    data = ex.SerializeToString()
    from tfship.table_io import _masked_crc

    head = struct.pack("<Q", len(data))
    path.write_bytes(
        head + struct.pack("<I", _masked_crc(head)) + data + struct.pack("<I", _masked_crc(data))
    )


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (_corrupt, ("record 0", "CRC mismatch")),
        (_list_valued, ("feature 'x' has 2 values", "one value per feature")),
        (lambda p: p.write_bytes(b"\x01\x02\x03"), ("truncated record 0",)),
    ],
)
def test_a_bad_tfrecord_is_one_line_and_nothing_written(cli, tmp_path, make, needles):
    path = tmp_path / "bad.tfrecord"
    write_tfrecord(path, {"x": np.arange(50.0), "y": np.array(["a", "b"] * 25)})
    make(path)
    assert_build_rejected(cli("build", "--data", str(path), "--label", "y"), tmp_path, *needles)


@pytest.mark.parametrize(
    ("files", "needles"),
    [
        ({"a.parquet": b"not parquet at all"}, ("a.parquet", "not a Parquet file")),
        ({"x.csv": None, "y.parquet": None}, ("more than one format",)),
        ({"data.json": b"{}"}, ("no .csv, .parquet or .tfrecord",)),
    ],
)
def test_unusable_table_files_are_one_line(cli, tmp_path, files, needles):
    cols = wine_columns(tmp_path)
    folder = tmp_path / "in"
    folder.mkdir()
    for name, content in files.items():
        if content is not None:
            (folder / name).write_bytes(content)
        elif name.endswith(".parquet"):
            write_parquet(folder / name, cols)
        else:
            shutil.copy(tmp_path / "wine_src.csv", folder / name)
    spec = str(folder / "*") if len(files) > 1 else str(folder)
    assert_build_rejected(cli("build", "--data", spec, "--label", "target"), tmp_path, *needles)


def test_an_image_folder_builds_with_its_class_names(cli, tmp_path):
    from PIL import Image
    from tfship.sources import load_digits

    raw = load_digits()
    root = tmp_path / "photos"
    names = ["zero", "one", "two"]
    for cls, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i, img in enumerate(raw.images[raw.labels == cls][:40]):
            pixels = (img * 15).astype(np.uint8)
            size = (8, 8) if i % 10 else (16, 16)  # a few of another size: resized
            Image.fromarray(pixels).resize(size).save(root / name / f"{i:03d}.png")
    r = cli("build", "--data", str(root), "--json")
    assert r.code == 0, r.err
    m = manifest(tmp_path)
    assert m["classes"] == sorted(names)  # as Keras orders them: by folder name
    assert m["num_classes"] == 3
    assert m["image_shape"] == [8, 8, 1]
    assert sum(m["rows"].values()) == 120
    # The whole loop from the folder: train, gate, package, deploy to the local TF Serving,
    # verify what it serves. What is judged is the route, not the model: gates at 0.
    r = cli(
        "run", "--data", str(root), "--epochs", "3", "--min-accuracy", "0",
        "--min-class-recall", "0", "--stop-serving", "--json", timeout=400,
    )  # fmt: skip
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["results"]["test-deployed"]["passed"], doc["results"]["test-deployed"]
    assert doc["results"]["deploy"]["state"] == "deployed"
    # TF Serving's Classify API on the golden images as tf.Examples (pixels as a float list)
    # answers as Predict does.
    checks = {c["name"]: c for c in doc["results"]["test-deployed"]["checks"]}
    assert checks["classify API max abs diff"]["value"] <= 1e-4
    # The served model answers with the folder names, and takes raw pixels: the example
    # request `tfship run` prints is a real test image, 0-255.
    version = Path(doc["results"]["package"]["path"])
    served = json.loads((version / "assets.extra" / "tfship.json").read_text())
    assert served["classes"] == sorted(names)
    assert served["signature"]["outputs"]["classes"] == {"dtype": "DT_STRING", "shape": [-1, 3]}
    pixels, encoded = doc["requests"]
    image = np.asarray(pixels["instances"][0], dtype=float)
    assert image.shape == (8, 8, 1) and 1 < image.max() <= 255
    # ... and the same image as a PNG file, which predict_image_bytes decodes in its graph
    assert encoded["signature_name"] == "predict_image_bytes"
    assert list(encoded["instances"][0]["image_bytes"]) == ["b64"]
    assert checks["predict_image_bytes max abs diff"]["value"] <= 1e-4


def test_a_table_format_without_label_is_told_to_name_one(cli, tmp_path):
    cols = wine_columns(tmp_path)
    path = write_parquet(tmp_path / "wine.parquet", cols)
    assert_build_rejected(cli("build", "--data", str(path)), tmp_path, "--label COLUMN")
