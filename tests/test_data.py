"""Stage 1 building blocks: sources, validation, split, hash."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
from helpers import clean_env, digits_arrays, run_cli, write_npz
from tfship import data, sources
from tfship.errors import DataError


def test_default_digits_load_offline_with_ten_classes():
    raw = sources.load_source("digits")
    assert raw.images.shape == (1797, 8, 8)
    assert set(np.unique(raw.labels)) == set(range(10))


def test_prepare_splits_are_stratified_seeded_and_disjoint():
    raw = sources.load_source("digits")
    a = data.prepare(raw, data.Checks(), seed=1)
    b = data.prepare(raw, data.Checks(), seed=1)
    c = data.prepare(raw, data.Checks(), seed=2)
    assert np.array_equal(a.test.labels, b.test.labels)
    assert not np.array_equal(a.test.labels, c.test.labels)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    # Every class is in every split, in about the same share.
    for split in (a.val, a.test):
        counts = np.bincount(split.labels, minlength=10)
        assert counts.min() >= 20


def test_images_are_stored_as_pixel_values_0_to_255_whatever_the_source_scale(tmp_path):
    p = data.prepare(sources.load_source("digits"), data.Checks())  # digits are 0..16
    assert p.train.images.dtype == np.float32
    assert p.train.images.shape[1:] == (8, 8, 1)
    assert p.train.images.min() == 0.0 and p.train.images.max() == 255.0
    images, labels = digits_arrays()  # uint8 0..240
    unit = write_npz(tmp_path / "unit.npz", images.astype(np.float32) / 255, labels)
    as_bytes = write_npz(tmp_path / "bytes.npz", images, labels)
    a = data.prepare(sources.load_source(str(unit)), data.Checks())
    b = data.prepare(sources.load_source(str(as_bytes)), data.Checks())
    np.testing.assert_allclose(a.train.images, b.train.images, atol=1e-4)
    assert np.asarray(b.train.images).max() == images.max()  # uint8 pixels kept as they are


def test_content_hash_is_the_same_for_npz_and_csv_of_the_same_data(tmp_path):
    images, labels = digits_arrays()
    npz = write_npz(tmp_path / "s.npz", images, labels)
    rows = np.column_stack([labels, images.reshape(len(labels), -1)])
    csv = tmp_path / "s.csv"
    header = "label," + ",".join(f"p{i}" for i in range(64))
    np.savetxt(csv, rows, fmt="%d", delimiter=",", header=header, comments="")
    h1 = data.prepare(sources.load_source(str(npz)), data.Checks()).data_hash
    h2 = data.prepare(sources.load_source(str(csv)), data.Checks()).data_hash
    assert h1 == h2 and h1.startswith("sha256:")


def test_folder_source_uses_the_snapshot_whose_name_sorts_last(tmp_path):
    images, labels = digits_arrays()
    write_npz(tmp_path / "2026-01-01.npz", images, labels)
    write_npz(tmp_path / "2026-02-01.npz", images[:900], labels[:900])
    raw = sources.load_source(str(tmp_path))
    assert raw.origin.endswith("2026-02-01.npz") and len(raw.labels) == 900


def test_npz_with_its_own_test_split_is_kept_and_drift_checked(tmp_path):
    images, labels = digits_arrays()
    path = write_npz(
        tmp_path / "s.npz", images[:1400], labels[:1400], x_test=images[1400:], y_test=labels[1400:]
    )
    p = data.prepare(sources.load_source(str(path)), data.Checks())
    assert len(p.test) == 397
    inverted = write_npz(
        tmp_path / "inv.npz",
        images[:1400],
        labels[:1400],
        x_test=255 - images[1400:],
        y_test=labels[1400:],
    )
    with pytest.raises(DataError, match=r"pixel distribution drift 0\.\d+ > 0\.1"):
        data.prepare(sources.load_source(str(inverted)), data.Checks())


def test_label_drift_beyond_threshold_is_rejected(tmp_path):
    images, labels = digits_arrays()
    test_mask = labels < 3  # the test set holds only classes 0-2
    path = write_npz(
        tmp_path / "s.npz", images, labels, x_test=images[test_mask], y_test=labels[test_mask]
    )
    with pytest.raises(DataError, match="label distribution drift"):
        data.prepare(sources.load_source(str(path)), data.Checks())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda x, y: (x.astype(np.float32) * np.nan, y), "NaN or infinite"),
        (
            lambda x, y: (x.astype(np.float32) / 120, y),
            r"pixel values span \[0, 2\], expected \[0, 1\]",
        ),
        (lambda x, y: (x, y + 5), r"labels outside 0\.\.9"),
        (lambda x, y: (x, -y - 1), r"labels outside 0\.\.9"),
        (lambda x, y: (x, np.zeros_like(y)), "only 1 class present"),
        (lambda x, y: (x[:, :4], y[:5]), "5 labels for 1797 images"),
        (lambda x, y: (x.reshape(len(y), -1), y), r"shape \(1797, 64\)"),
        (lambda x, y: (x[:0], y[:0]), "empty"),
        (lambda x, y: (x.astype(str), y), "dtype <U"),
        (lambda x, y: (x, np.where(y == 3, 4, y)), "too few rows per class .class 3: 0"),
    ],
)
def test_validation_names_the_failed_check(tmp_path, mutate, message):
    images, labels = digits_arrays()
    x, y = mutate(images, labels)
    path = write_npz(tmp_path / "bad.npz", x, y)
    with pytest.raises(DataError, match=message) as err:
        data.prepare(sources.load_source(str(path)), data.Checks())
    assert "bad.npz" in str(err.value)


def test_corrupt_and_empty_files_are_bad_input(tmp_path):
    corrupt = tmp_path / "c.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(DataError, match="not a readable NPZ"):
        sources.load_source(str(corrupt))
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        sources.load_source(str(empty))
    with pytest.raises(DataError, match="no such file"):
        sources.load_source(str(tmp_path / "missing.npz"))


def test_csv_row_of_the_wrong_width_names_its_line(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("label,a,b,c,d\n1,0,0,0,0\n2,0,0,0\n")
    with pytest.raises(DataError, match="line 3 has 4 columns"):
        sources.load_source(str(path))


def _idx(path, array: np.ndarray, magic: int) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_uses_keras_real_loader_from_its_cache(tmp_path):
    # Keras reads $KERAS_HOME/datasets/fashion-mnist/*.gz and only downloads missing files:
    # tiny files in the real IDX format exercise the real loading code offline. A subprocess,
    # because Keras reads KERAS_HOME once, at import.
    cache = tmp_path / "keras" / "datasets" / "fashion-mnist"
    cache.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 20)):
        _idx(cache / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10, 0x801)
        _idx(cache / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), 0x803)
    env = clean_env(KERAS_HOME=str(tmp_path / "keras"))
    r = run_cli(
        "build",
        "--data",
        "fashion_mnist",
        "--min-rows-per-class",
        "2",
        "--max-label-drift",
        "1",
        "--max-pixel-drift",
        "1",
        "--json",
        cwd=tmp_path,
        env=env,
    )
    assert r.code == 0, r.err
    info = json.loads(r.out)
    assert info["origin"] == "fashion_mnist" and info["rows"]["test"] == 20
    assert info["image_shape"] == [28, 28, 1]
    assert {p.name for p in cache.iterdir()} == {
        f"{a}-{b}-idx{n}-ubyte.gz"
        for a in ("train", "t10k")
        for b, n in (("labels", 1), ("images", 3))
    }  # nothing downloaded
