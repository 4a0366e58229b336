"""Image pixels on disk (tfship.rows): read a batch at a time, never all in memory."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import digits_arrays
from tfship import data, rows, sources


@pytest.fixture
def pixels():
    return np.random.default_rng(0).random((2500, 8, 8, 3)).astype(np.float32)


def written(a: np.ndarray) -> rows.Rows:
    w = rows.RowWriter(a.shape[1:], a.dtype)
    for c in rows.chunks(a, 700):
        w.write(c)
    return w.rows()


def test_rows_read_back_what_was_written_by_slice_index_and_list(pixels):
    r = written(pixels)
    assert r.shape == pixels.shape and len(r) == 2500 and r.dtype == np.float32
    np.testing.assert_array_equal(r[:], pixels)
    np.testing.assert_array_equal(r[10:20], pixels[10:20])
    pick = np.array([0, 1, 2, 7, 2499, 1000, 1001])
    np.testing.assert_array_equal(r[pick], pixels[pick])
    np.testing.assert_array_equal(r[-1], pixels[-1])
    np.testing.assert_array_equal(r.head(5)[:], pixels[:5])
    with pytest.raises(IndexError):
        r[[2500]]


def test_gather_concat_and_convert_keep_rows_on_disk(pixels):
    r = written(pixels)
    idx = np.random.default_rng(1).permutation(2500)
    g = rows.gather(r, idx)
    assert rows.on_disk(g)
    np.testing.assert_array_equal(g[:], pixels[idx])
    c = rows.concat([r.head(100), pixels[:50]])
    assert rows.on_disk(c)
    np.testing.assert_array_equal(c[:], np.concatenate([pixels[:100], pixels[:50]]))
    as_pixels = rows.convert(r, np.float32, 255.0, clip=255.0)
    np.testing.assert_allclose(as_pixels[:], pixels * 255, rtol=1e-6)
    # Small arrays in memory stay in memory.
    assert not rows.on_disk(rows.gather(pixels[:100], np.arange(10)))


def test_a_split_is_an_npz_numpy_reads_and_tfship_reads_a_batch_at_a_time(tmp_path, pixels):
    path = tmp_path / "train.npz"
    data.save_split(path, data.Split(written(pixels), np.arange(2500)))
    with np.load(path) as npz:  # the format is np.savez's: anyone can read it
        np.testing.assert_array_equal(npz["images"], pixels)
    split = data.load_split(path)
    assert rows.on_disk(split.images)
    np.testing.assert_array_equal(split.images[[3, 4, 2000]], pixels[[3, 4, 2000]])
    # The same content hashes the same on disk and in memory.
    assert data.content_hash(split) == data.content_hash(data.Split(pixels, np.arange(2500)))


def test_an_image_folder_is_decoded_to_disk_and_not_bounded_by_max_data_bytes(tmp_path):
    from PIL import Image

    images, labels = digits_arrays()
    for cls in range(3):
        (tmp_path / f"c{cls}").mkdir()
        for i, img in enumerate(images[labels == cls][:30]):
            Image.fromarray(img).save(tmp_path / f"c{cls}" / f"{i}.png")
    # 90 images decode to 90 * 64 * 4 bytes; the cap is for downloads and files only.
    raw = sources.load_source(str(tmp_path), max_bytes=1000)
    assert rows.on_disk(raw.images) and raw.images.shape == (90, 8, 8, 1)
    np.testing.assert_array_equal(raw.images[0][..., 0], images[labels == 0][0])
    prepared = data.prepare(raw, data.Checks(num_classes=3))
    assert all(rows.on_disk(s.images) for s in (prepared.train, prepared.val, prepared.test))
    assert len(prepared.train) + len(prepared.val) + len(prepared.test) == 90


def test_rows_refuse_a_boolean_mask_rather_than_read_rows_0_and_1(pixels):
    r = written(pixels[:5])
    with pytest.raises(IndexError):
        r[np.array([False, False, False, True, True])]
    with pytest.raises(IndexError):
        r[np.zeros((2, 2), dtype=np.int64)]


@pytest.mark.parametrize("kind", ["savez", "savez_compressed", "csv", "csv of floats"])
def test_a_local_npz_or_csv_is_read_from_disk_and_not_bounded_by_max_data_bytes(tmp_path, kind):
    """np.savez arrays are read in place, np.savez_compressed ones inflated to a temporary
    file a chunk at a time, a CSV parsed a block of rows at a time: the pixels are never
    whole in memory, and the same data gives the same content hash whatever its file."""
    images, labels = digits_arrays()  # uint8 0..240, (N, 8, 8): no channel axis
    test_x, test_y = images[:40], labels[:40]
    path = tmp_path / ("snap.csv" if kind.startswith("csv") else "snap.npz")
    if kind.startswith("csv"):
        pixels = images.reshape(len(labels), -1) / (255.0 if kind == "csv of floats" else 1)
        table = np.column_stack([labels, pixels])
        header = "label," + ",".join(f"p{i}" for i in range(64))
        fmt = "%.10g" if kind == "csv of floats" else "%d"
        np.savetxt(path, table, fmt=fmt, delimiter=",", header=header, comments="")
    else:
        save = getattr(np, kind)
        save(path, images=images, labels=labels, x_test=test_x, y_test=test_y)
    raw = sources.load_source(str(path), max_bytes=1000)  # the cap is for downloads
    assert rows.on_disk(raw.images) and len(raw.images) == len(labels)
    np.testing.assert_array_equal(raw.labels, labels)
    expected = images / 255.0 if kind == "csv of floats" else images
    np.testing.assert_allclose(np.asarray(raw.images), expected, rtol=1e-9)
    if kind.startswith("savez"):
        assert rows.on_disk(raw.test_images)
        np.testing.assert_array_equal(np.asarray(raw.test_images), test_x)
        np.testing.assert_array_equal(raw.test_labels, test_y)
        return
    prepared = data.prepare(raw, data.Checks())
    in_memory = data.prepare(sources.RawData(images, labels, "arrays"), data.Checks())
    assert prepared.data_hash == in_memory.data_hash
