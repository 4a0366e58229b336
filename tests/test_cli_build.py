"""`tfship build` through the CLI: bad input -> exit 2, one clear line, nothing written."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from helpers import assert_build_rejected, digits_arrays, write_npz


def test_build_default_data_writes_the_documented_layout(cli, tmp_path):
    r = cli("build", "--json")
    assert r.code == 0, r.err
    info = json.loads(r.out)
    data = tmp_path / "workspace" / "data"
    assert sorted(p.name for p in data.iterdir()) == [
        "manifest.json",
        "schema.pbtxt",
        "test.npz",
        "train.npz",
        "val.npz",
    ]
    assert json.loads((data / "manifest.json").read_text())["data_hash"] == info["data_hash"]
    assert sum(info["rows"].values()) == 1797


def test_numbered_script_is_the_same_command(cli, tmp_path):
    r = cli("--workspace", "ws", "--json", script="1_build.py")
    assert r.code == 0, r.err
    assert (tmp_path / "ws" / "data" / "manifest.json").exists()


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        (None, ("missing.npz", "no such file")),
        (b"", ("empty",)),
        (b"PK\x03\x04garbage", ("not a readable NPZ",)),
    ],
)
def test_unusable_files_are_rejected(cli, tmp_path, content, needles):
    path = tmp_path / "missing.npz"
    if content is not None:
        path.write_bytes(content)
    assert_build_rejected(cli("build", "--data", str(path)), tmp_path, *needles)


@pytest.mark.parametrize(
    ("mutate", "needles"),
    [
        (lambda x, y: (np.zeros((len(y), 8, 8, 2), np.uint8), y), ("shape (1797, 8, 8, 2)",)),
        (lambda x, y: (np.where(x > 100, np.nan, x.astype(np.float32) / 255), y), ("NaN",)),
        (lambda x, y: (x, y + 10), ("labels outside 0..9",)),
        (lambda x, y: (x, np.full_like(y, 7)), ("only 1 class present",)),
    ],
)
def test_invalid_data_is_rejected_before_anything_is_written(cli, tmp_path, mutate, needles):
    images, labels = digits_arrays()
    x, y = mutate(images, labels)
    path = write_npz(tmp_path / "bad.npz", x, y)
    assert_build_rejected(cli("build", "--data", str(path)), tmp_path, "bad.npz", *needles)


def test_a_failed_rebuild_leaves_the_previous_data_untouched(cli, tmp_path):
    assert cli("build").code == 0
    before = (tmp_path / "workspace" / "data" / "manifest.json").read_text()
    images, labels = digits_arrays()
    bad = write_npz(tmp_path / "bad.npz", images, labels + 10)
    assert cli("build", "--data", str(bad)).code == 2
    assert (tmp_path / "workspace" / "data" / "manifest.json").read_text() == before
    assert not [p for p in (tmp_path / "workspace").iterdir() if p.name.startswith(".tmp")]


def test_url_source_downloads_and_checks_the_sha256(cli, tmp_path, http_dir):
    base, www = http_dir
    images, labels = digits_arrays()
    path = write_npz(www / "snap.npz", images, labels)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    r = cli("build", "--data", f"{base}/snap.npz#sha256={digest}", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["origin"] == f"{base}/snap.npz"


def test_url_checksum_mismatch_is_rejected(cli, tmp_path, http_dir):
    base, www = http_dir
    images, labels = digits_arrays()
    write_npz(www / "snap.npz", images, labels)
    r = cli("build", "--data", f"{base}/snap.npz", "--data-sha256", "0" * 64)
    assert_build_rejected(r, tmp_path, "sha256 mismatch", "0" * 64)


def test_url_404_is_rejected(cli, tmp_path, http_dir):
    base, _ = http_dir
    r = cli("build", "--data", f"{base}/nope.npz#sha256={'1' * 64}")
    assert_build_rejected(r, tmp_path, "HTTP 404")


def test_url_without_checksum_is_refused_with_the_fix(cli, tmp_path, http_dir):
    base, _ = http_dir
    assert_build_rejected(cli("build", "--data", f"{base}/snap.npz"), tmp_path, "#sha256=")


def test_options_come_from_environment_and_dotenv(cli, tmp_path):
    images, labels = digits_arrays()
    write_npz(tmp_path / "from-dotenv.npz", images, labels)
    (tmp_path / ".env").write_text("TFSHIP_DATA=from-dotenv.npz\nTFSHIP_WORKSPACE='ws env'\n")
    r = cli("build", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["origin"].endswith("from-dotenv.npz")
    assert (tmp_path / "ws env" / "data").is_dir()
    assert not list((tmp_path / "ws env").rglob(".env"))


def test_help_teaches_the_environment_variables(cli):
    r = cli("build", "--help")
    assert r.code == 0
    for text in ("TFSHIP_DATA", "--data-sha256", "fashion_mnist", "exits 2"):
        assert text in r.out
