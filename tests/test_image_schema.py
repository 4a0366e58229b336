"""Image data has a schema too (TFDV's format): inferred on the first build and written beside
the data, every later snapshot checked against it: the shape, the classes, their order."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_build_rejected, digits_arrays, write_npz
from tfship import schema as sch


def write_folder(root, names, per_class=20, size=(8, 8)):
    """An image folder: one sub-folder of PNGs per class, from the digits (class i = digit i)."""
    from PIL import Image

    images, labels = digits_arrays()
    for cls, name in enumerate(names):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images[labels == cls][:per_class]):
            Image.fromarray(img).resize(size).save(root / name / f"{i:03d}.png")
    return root


def data_manifest(tmp_path) -> dict:
    return json.loads((tmp_path / "workspace" / "data" / "manifest.json").read_text())


def test_the_first_build_writes_the_image_schema_beside_the_folder(cli, tmp_path):
    root = write_folder(tmp_path / "photos", ["cat", "dog", "fox"])
    r = cli("build", "--data", str(root))
    assert r.code == 0, r.err
    beside = root / sch.SCHEMA_FILE
    assert beside.read_text() == (tmp_path / "workspace" / "data" / sch.SCHEMA_FILE).read_text()
    spec = sch.image_spec(sch.read_schema(beside))
    assert spec == sch.ImageSpec((8, 8, 1), 3, ["cat", "dog", "fox"])
    schema = sch.read_schema(beside)
    image = next(f for f in schema.feature if f.name == "image")
    assert sch.is_image(image) and image.float_domain.max == 255.0
    m = data_manifest(tmp_path)
    assert m["schema"]["status"] == "inferred"
    # Statistics per feature, stored with the manifest: what a retrain's drift compares.
    stats = m["stats"]
    assert stats["label"]["counts"] == {"cat": 20, "dog": 20, "fox": 20}
    assert len(stats["image"]["histogram"]) == 16 and sum(stats["image"]["histogram"]) == 60 * 64
    assert len(stats["image"]["mean"]) == 1 and 0 < stats["image"]["mean"][0] < 255
    # The same folder again is checked against it, and passes.
    shutil.rmtree(tmp_path / "workspace")
    assert cli("build", "--data", str(root)).code == 0
    assert data_manifest(tmp_path)["schema"]["status"] == "checked"


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        ("new class", ("class folders not in the domain: eel",)),
        ("lost class", ("no folder for the classes dog",)),
    ],
)
def test_a_later_folder_with_other_classes_is_refused_naming_them(cli, tmp_path, change, needles):
    root = write_folder(tmp_path / "photos", ["cat", "dog", "fox"])
    assert cli("build", "--data", str(root)).code == 0
    shutil.rmtree(tmp_path / "workspace")
    if change == "new class":
        write_folder(root, ["cat", "dog", "fox", "eel"])
    else:
        shutil.rmtree(root / "dog")
    r = cli("build", "--data", str(root))
    assert_build_rejected(r, tmp_path, "breaks", str(root / sch.SCHEMA_FILE), *needles)


def test_class_order_follows_the_schema_not_the_folder_names(cli, tmp_path):
    """An edited schema that orders the classes otherwise keeps the model's outputs in its
    order: label i is the schema's i-th class, whatever the folders sort as."""
    root = write_folder(tmp_path / "photos", ["a", "b", "c"])
    assert cli("build", "--data", str(root)).code == 0
    shutil.rmtree(tmp_path / "workspace")
    beside = root / sch.SCHEMA_FILE
    beside.write_text(beside.read_text().replace('"a"', '"x"').replace('"c"', '"a"'))
    beside.write_text(beside.read_text().replace('"x"', '"c"'))  # now c, b, a
    assert cli("build", "--data", str(root)).code == 0
    m = data_manifest(tmp_path)
    assert m["classes"] == ["c", "b", "a"]
    # folder "a" holds digit 0s: they are label 2 now, and label 2 is only they.
    train = np.load(tmp_path / "workspace" / "data" / "train.npz")
    images, labels = digits_arrays()
    zeros = {img.astype(np.float32).tobytes() for img in images[labels == 0][:20]}
    as_two = train["images"][train["labels"] == 2][..., 0]
    assert len(as_two) > 5 and all(z.tobytes() in zeros for z in as_two)


def test_images_of_another_size_are_resized_to_the_schema_and_arrays_are_refused(cli, tmp_path):
    root = write_folder(tmp_path / "photos", ["cat", "dog"])
    assert cli("build", "--data", str(root)).code == 0
    shutil.rmtree(tmp_path / "workspace")
    shutil.rmtree(root / "dog")
    write_folder(root, ["cat", "dog"], size=(16, 16))  # dog's images are 16x16 now
    assert cli("build", "--data", str(root)).code == 0
    assert data_manifest(tmp_path)["image_shape"] == [8, 8, 1]
    # An .npz's images are not resized: another shape is an anomaly, with the fix.
    images, labels = digits_arrays()
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    write_npz(snaps / "2026-01.npz", images, labels)
    shutil.rmtree(tmp_path / "workspace")
    assert cli("build", "--data", str(snaps)).code == 0
    wide = np.concatenate([images, images], axis=2)  # 8 x 16
    write_npz(snaps / "2026-02.npz", wide, labels)
    shutil.rmtree(tmp_path / "workspace")
    r = cli("build", "--data", str(snaps))
    assert_build_rejected(r, tmp_path, "images are (8, 16, 1), the schema says (8, 8, 1)")


def test_labels_past_the_schema_domain_are_refused(cli, tmp_path):
    images, labels = digits_arrays()
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    keep = labels < 5
    write_npz(snaps / "2026-01.npz", images[keep], labels[keep])
    r = cli("build", "--data", str(snaps), "--num-classes", "5")
    assert r.code == 0, r.err
    assert sch.image_spec(sch.read_schema(snaps / sch.SCHEMA_FILE)).num_classes == 5
    write_npz(snaps / "2026-02.npz", images, labels)  # digits 5..9 appear
    shutil.rmtree(tmp_path / "workspace")
    r = cli("build", "--data", str(snaps), "--num-classes", "10")
    assert_build_rejected(r, tmp_path, "label 9 is past the domain 0..4", "int_domain.max")


def test_a_broken_schema_file_is_one_line_naming_it(cli, tmp_path):
    root = write_folder(tmp_path / "photos", ["cat", "dog"])
    (root / sch.SCHEMA_FILE).write_text('feature { name: "image" type: FLOAT }\n')
    r = cli("build", "--data", str(root))
    assert_build_rejected(r, tmp_path, "not an image schema", "delete it to infer it again")


def test_bundled_digits_keep_their_schema_in_the_workspace_only(cli, tmp_path):
    r = cli("build")
    assert r.code == 0, r.err
    spec = sch.image_spec(sch.read_schema(tmp_path / "workspace" / "data" / sch.SCHEMA_FILE))
    assert spec == sch.ImageSpec((8, 8, 1), 10, None)
    assert list(tmp_path.glob("*.pbtxt")) == []


# --------------------------------------------------------------------------------------------
# Image folders that are not local: packed over https, and in a bucket (tests/test_s3_data.py)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["zip", "gztar"])
def test_an_image_folder_packed_over_https_builds_as_the_folder_read_locally(
    cli, tmp_path, http_dir, fmt
):
    import hashlib

    base, www = http_dir
    root = write_folder(tmp_path / "photos", ["cat", "dog", "fox"])
    assert cli("build", "--data", str(root)).code == 0
    local = data_manifest(tmp_path)
    shutil.rmtree(tmp_path / "workspace")
    (root / sch.SCHEMA_FILE).unlink()
    packed = Path(shutil.make_archive(str(www / "photos"), fmt, tmp_path, "photos"))
    digest = hashlib.sha256(packed.read_bytes()).hexdigest()
    r = cli("build", "--data", f"{base}/{packed.name}#sha256={digest}")
    assert r.code == 0, r.err
    m = data_manifest(tmp_path)
    assert m["data_hash"] == local["data_hash"] and m["classes"] == ["cat", "dog", "fox"]
    assert m["data_sha256"] == digest  # of the archive read: what `ci plan` compares
    bad = cli("build", "--data", f"{base}/{packed.name}#sha256={'0' * 64}")
    assert bad.code == 2 and "sha256 mismatch" in bad.err, bad.err


def test_an_archive_member_that_leaves_the_folder_is_refused(cli, tmp_path, http_dir):
    import hashlib
    import zipfile

    base, www = http_dir
    root = write_folder(tmp_path / "photos", ["cat", "dog"])
    with zipfile.ZipFile(www / "evil.zip", "w") as zf:
        for f in sorted(root.rglob("*.png")):
            zf.write(f, f.relative_to(tmp_path))
        zf.writestr("../outside.png", b"x")
    digest = hashlib.sha256((www / "evil.zip").read_bytes()).hexdigest()
    r = cli("build", "--data", f"{base}/evil.zip#sha256={digest}")
    assert_build_rejected(r, tmp_path, "'../outside.png'", "leaves the folder")
    assert not (tmp_path.parent / "outside.png").exists()


def test_a_mac_zip_is_read_and_a_broken_one_is_one_line(cli, tmp_path, http_dir):
    import hashlib
    import zipfile

    base, www = http_dir
    root = write_folder(tmp_path / "photos", ["cat", "dog"])
    with zipfile.ZipFile(www / "mac.zip", "w") as zf:  # as macOS's Finder packs a folder
        for f in sorted(root.rglob("*.png")):
            name = f.relative_to(tmp_path).as_posix()
            zf.write(f, name)
            zf.writestr(f"__MACOSX/{name.rsplit('/', 1)[0]}/._{f.name}", b"\x00\x05\x16\x07")
    digest = hashlib.sha256((www / "mac.zip").read_bytes()).hexdigest()
    r = cli("build", "--data", f"{base}/mac.zip#sha256={digest}")
    assert r.code == 0, r.err
    assert data_manifest(tmp_path)["classes"] == ["cat", "dog"]
    shutil.rmtree(tmp_path / "workspace")
    (www / "broken.zip").write_bytes(b"not a zip at all")
    digest = hashlib.sha256(b"not a zip at all").hexdigest()
    r = cli("build", "--data", f"{base}/broken.zip#sha256={digest}")
    assert_build_rejected(r, tmp_path, "/broken.zip: not a .zip archive tfship can unpack")


def test_an_int_label_domain_needs_two_classes(tmp_path):
    path = tmp_path / sch.SCHEMA_FILE
    spec = sch.ImageSpec((8, 8, 1), 3, None)
    text = sch.schema_text(sch.infer_image_schema(spec, 255.0))
    label = "    max: 2\n    is_categorical"
    assert label in text
    path.write_text(text.replace(label, "    max: 0\n    is_categorical"))
    with pytest.raises(sch.SchemaError, match="K >= 2 classes"):
        sch.image_spec(sch.read_schema(path))
    path.write_text(text.replace(label, "    is_categorical"))
    with pytest.raises(sch.SchemaError, match="K >= 2 classes"):
        sch.image_spec(sch.read_schema(path))
