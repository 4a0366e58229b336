"""The store of record in a bucket (a real S3 service: SeaweedFS on loopback).

Versions immutable, a placement cut off mid-copy never counted and redone, an append-only
history, retention that never deletes what serves; the same through the CLI.
"""

from __future__ import annotations

import json

import pytest
from helpers import run_cli
from tfship import s3
from tfship.errors import StoreError
from tfship.store import DEPLOYED, MANIFEST, REJECTED, open_store
from tfship.workspace import tree_hashes, write_json


def _package(tmp_path, content: str = "weights"):
    pkg = tmp_path / f"pkg-{content}"
    (pkg / "variables").mkdir(parents=True)
    (pkg / "saved_model.pb").write_text("graph")
    (pkg / "variables" / "v").write_text(content)
    manifest = {"files": tree_hashes(pkg)}
    (pkg / "assets.extra").mkdir()
    write_json(pkg / MANIFEST, manifest)
    return pkg, manifest


def _keys(bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.S3Host(bucket).keys(""))


def test_a_bucket_store_keeps_versions_immutable(bucket, tmp_path):
    store = open_store(f"s3://{bucket}/registry")
    assert store.uri == f"s3://{bucket}/registry"
    pkg, manifest = _package(tmp_path)
    assert store.put("m", 7, pkg, manifest) == "uploaded"
    assert store.put("m", 7, pkg, manifest) == "present"
    assert store.versions("m") == [7]
    assert store.manifest("m", 7) == manifest
    other, other_manifest = _package(tmp_path, "different")
    with pytest.raises(StoreError, match="already exists .* with other content"):
        store.put("m", 7, other, other_manifest)
    store.get("m", 7, tmp_path / "back")
    assert tree_hashes(tmp_path / "back") == tree_hashes(pkg)
    staged = [k for k in _keys(bucket) if ".incoming-" in k]
    assert staged == []  # the upload area is emptied once the version is placed


def test_a_placement_cut_off_before_saved_model_pb_is_not_a_version_and_is_completed(
    bucket, tmp_path
):
    store = open_store(f"s3://{bucket}/registry")
    pkg, manifest = _package(tmp_path)
    host = s3.S3Host(bucket)
    # what a kill between the copies leaves: every file but saved_model.pb (copied last)
    host.s3.put_object(Bucket=bucket, Key="registry/m/7/variables/v", Body=b"weights")
    assert store.versions("m") == []
    assert store.put("m", 7, pkg, manifest) == "uploaded"
    assert store.versions("m") == [7]
    assert host.hash_tree("registry/m/7") == tree_hashes(pkg)


def test_the_history_is_append_only_and_names_the_version_serving(bucket, tmp_path):
    store = open_store(f"s3://{bucket}/registry")
    for v in (1, 2):
        pkg, manifest = _package(tmp_path, f"w{v}")
        store.put("m", v, pkg, manifest)
    store.record("m", DEPLOYED, 1, hosts=["a"], previous=None)
    store.record("m", REJECTED, 2, hosts=["a"], reason="verification failed")
    events = [(e["event"], e["version"]) for e in store.history("m")]
    assert events == [("packaged", 1), ("packaged", 2), ("deployed", 1), ("rejected", 2)]
    assert store.serving("m") == 1
    first = next(k for k in _keys(bucket) if "/.history/" in k)
    with pytest.raises(FileExistsError):  # a record is never rewritten
        s3.S3Host(bucket).create(first, b"{}")


def test_retention_keeps_the_newest_and_never_the_version_serving(bucket, tmp_path):
    store = open_store(f"s3://{bucket}/registry", keep=2)
    pkg, manifest = _package(tmp_path, "w1")
    store.put("m", 1, pkg, manifest)
    store.record("m", DEPLOYED, 1, hosts=["a"])
    for v in (2, 3, 4):
        pkg, manifest = _package(tmp_path, f"w{v}")
        store.put("m", v, pkg, manifest)
    assert store.versions("m") == [1, 3, 4]  # 2 went; 1 serves


def test_tfship_history_prints_the_bucket_store_s_record(weed, bucket, tmp_path):
    store = open_store(f"s3://{bucket}/registry")
    pkg, manifest = _package(tmp_path)
    store.put("digits", 5, pkg, manifest)
    store.record("digits", DEPLOYED, 5, hosts=["s3://x"], previous=4)
    env = weed.env(TFSHIP_STORE=f"s3://{bucket}/registry", CIRCLE_BUILD_URL="https://ci/1")
    r = run_cli("history", cwd=tmp_path, env=env)
    assert r.code == 0, r.err
    assert "| packaged | 5 |" in r.out and "| deployed | 5 |" in r.out
    assert "previous: 4" in r.out
    r = run_cli("history", "--json", cwd=tmp_path, env=env)
    assert [e["event"] for e in json.loads(r.out)["history"]] == ["packaged", "deployed"]
    assert weed.env()["AWS_SECRET_ACCESS_KEY"] not in r.out + r.err


def test_a_missing_bucket_or_wrong_credentials_is_one_line(weed, tmp_path):
    env = weed.env(TFSHIP_STORE="s3://no-such-bucket-x/registry")
    r = run_cli("history", cwd=tmp_path, env=env)
    assert r.code == 8 and "does not exist" in r.err and "Traceback" not in r.err
    env = weed.env(TFSHIP_STORE="s3://no-such-bucket-x/registry", AWS_SECRET_ACCESS_KEY="bad")
    r = run_cli("history", cwd=tmp_path, env=env)
    assert r.code == 2 and "refused the credentials" in r.err and "bad" not in r.err.split(":")[0]
    assert len(r.err_lines) == 1
