"""Data in buckets: `tfship build --data s3://...` and `tfship ci watch-data s3://...` against a
real S3 service (SeaweedFS on loopback). A bucket snapshot builds exactly as the same file read
locally (same content hash), the manifest names the object read, and a failure is one line with
nothing left behind, in the workspace or in the temporary folder."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from circleci_standin import GOOD_TOKEN
from helpers import S3_SECRET, digits_arrays, run_cli, write_npz
from test_table_sources import manifest, wine_columns, write_parquet
from tfship.tables import write_bundled

pytestmark = pytest.mark.timeout(180)


def build(weed, cwd: Path, *args: str, **env: str):
    """`tfship build ARGS` in ``cwd`` against the service, with a TMPDIR of its own (so the
    test can see that the downloads were cleaned up)."""
    tmp = cwd / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return run_cli("build", *args, cwd=cwd, env=weed.env(TMPDIR=str(tmp), **env))


def assert_clean(cwd: Path) -> None:
    """No download left behind and no workspace written."""
    assert list((cwd / "tmp").iterdir()) == []
    ws = cwd / "workspace"
    assert not ws.exists() or not any(ws.iterdir()), list(ws.iterdir())


def put(weed, bucket: str, key: str, path: Path) -> str:
    weed.client().upload_file(str(path), bucket, key)
    return f"s3://{bucket}/{key}"


def sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_table_in_a_bucket_builds_as_the_same_file_read_locally(weed, bucket, tmp_path, fmt):
    src = tmp_path / f"wine.{fmt}"
    if fmt == "csv":
        write_bundled("wine", src)
    else:
        write_parquet(src, wine_columns(tmp_path))
    uri = put(weed, bucket, f"tables/wine.{fmt}", src)
    local = build(weed, tmp_path / "local", "--data", str(src), "--label", "target")
    remote = build(weed, tmp_path / "remote", "--data", uri, "--label", "target")
    assert local.code == 0, local.err
    assert remote.code == 0, remote.err
    m, want = manifest(tmp_path / "remote"), manifest(tmp_path / "local")
    assert m["data_hash"] == want["data_hash"] == "sha256:" + sha256(src)
    assert m["rows"] == want["rows"] and m["classes"] == want["classes"]
    assert m["source"] == m["origin"] == uri  # lineage: the object read
    assert m["schema"]["status"] == "inferred"  # never written into the data bucket
    assert m["schema"]["path"] == "workspace/data/schema.pbtxt"
    text = (tmp_path / "remote" / "workspace" / "data" / "manifest.json").read_text()
    assert S3_SECRET not in text and "AKID" not in text
    assert uri in remote.out and "/tmp/" not in remote.out
    assert list((tmp_path / "remote" / "tmp").iterdir()) == []  # the download is gone


def test_images_in_a_bucket_build_as_the_same_npz_read_locally(weed, bucket, tmp_path):
    images, labels = digits_arrays()
    src = write_npz(tmp_path / "digits.npz", images, labels)
    uri = put(weed, bucket, "images/2026-11-01.npz", src)
    local = build(weed, tmp_path / "local", "--data", str(src), "--json")
    remote = build(weed, tmp_path / "remote", "--data", f"s3://{bucket}/images/", "--json")
    assert local.code == 0, local.err
    assert remote.code == 0, remote.err
    assert json.loads(remote.out)["data_hash"] == json.loads(local.out)["data_hash"]
    assert manifest(tmp_path / "remote")["origin"] == uri  # the snapshot the prefix resolved to
    bad = build(weed, tmp_path / "bad", "--data", f"{uri}#sha256={'0' * 64}")
    assert bad.code == 2 and "sha256 mismatch" in bad.err_lines[-1], bad.err
    assert uri in bad.err_lines[-1]
    assert_clean(tmp_path / "bad")


def test_the_newest_snapshot_of_a_prefix_is_chosen_by_name(weed, bucket, tmp_path):
    cols = wine_columns(tmp_path)
    first = write_parquet(tmp_path / "a.parquet", {k: v[:100] for k, v in cols.items()})
    put(weed, bucket, "snaps/2026-11-01.parquet", first)
    put(weed, bucket, "snaps/notes.txt", first)  # not a snapshot: skipped
    prefix = f"s3://{bucket}/snaps/"
    r = build(weed, tmp_path / "one", "--data", prefix, "--label", "target")
    assert r.code == 0, r.err
    m = manifest(tmp_path / "one")
    assert m["source"] == f"s3://{bucket}/snaps/2026-11-01.parquet" and m["origin"] == prefix
    assert sum(m["rows"].values()) == 100

    # a newer snapshot as a sub-folder of shards: all of them, in name order, hashed as one
    shards = [
        write_parquet(tmp_path / f"p{i}.parquet", {k: v[a:b] for k, v in cols.items()})
        for i, (a, b) in enumerate([(0, 90), (90, 178)])
    ]
    for i, p in enumerate(shards):
        put(weed, bucket, f"snaps/2026-11-02/part-{i}.parquet", p)
    r = build(weed, tmp_path / "two", "--data", prefix, "--label", "target")
    assert r.code == 0, r.err
    m = manifest(tmp_path / "two")
    assert m["source"] == f"s3://{bucket}/snaps/2026-11-02/*.parquet"
    assert sum(m["rows"].values()) == 178
    assert m["data_hash"] == "sha256:" + sha256(*shards)
    assert list((tmp_path / "two" / "tmp").iterdir()) == []


def test_a_glob_of_shards_in_a_bucket_reads_the_matching_keys(weed, bucket, tmp_path):
    cols = wine_columns(tmp_path)
    shards = [
        write_parquet(tmp_path / f"p{i}.parquet", {k: v[a:b] for k, v in cols.items()})
        for i, (a, b) in enumerate([(0, 60), (60, 120), (120, 178)])
    ]
    for i, p in enumerate(shards):
        put(weed, bucket, f"export/part-{i:05d}.parquet", p)
    put(weed, bucket, "export/_SUCCESS", tmp_path / "p0.parquet")
    put(weed, bucket, "export/old/part-00000.parquet", tmp_path / "p0.parquet")  # a level below
    spec = f"s3://{bucket}/export/part-*.parquet"
    r = build(weed, tmp_path / "w", "--data", spec, "--label", "target")
    assert r.code == 0, r.err
    m = manifest(tmp_path / "w")
    assert sum(m["rows"].values()) == 178 and m["source"] == spec
    assert m["data_hash"] == "sha256:" + sha256(*shards)


def test_a_schema_beside_the_snapshots_in_the_bucket_is_checked(weed, bucket, tmp_path):
    src = write_bundled("wine", tmp_path / "wine.csv")
    put(weed, bucket, "snaps/2026-11-01.csv", src)
    assert build(weed, tmp_path / "local", "--data", str(src), "--label", "target").code == 0
    schema = tmp_path / "schema.pbtxt"  # inferred beside the local copy; then a column renamed
    schema.write_text(schema.read_text().replace('"alcohol"', '"no_such_column"'))
    put(weed, bucket, "snaps/schema.pbtxt", schema)
    r = build(weed, tmp_path / "w", "--data", f"s3://{bucket}/snaps/", "--label", "target")
    assert r.code == 2, r.err
    [line] = r.err_lines
    assert f"s3://{bucket}/snaps/2026-11-01.csv breaks s3://{bucket}/snaps/schema.pbtxt" in line
    assert "no_such_column" in line
    assert_clean(tmp_path / "w")


@pytest.mark.parametrize(
    ("where", "env", "code", "needle"),
    [
        ("{b}/empty/", {}, 2, "in s3://{b}/empty/ (upload one, or fix the prefix)"),
        ("{b}/snaps/2026-12-01.csv", {}, 2, "s3://{b}/snaps/2026-12-01.csv: no such object"),
        ("no-such-bucket-tfship/snaps/", {}, 8, "the bucket does not exist"),
        ("no-such-bucket-tfship/x.csv", {}, 8, "the bucket does not exist"),
        ("{b}/snaps/", {"AWS_SECRET_ACCESS_KEY": "wrong-secret"}, 2, "refused the credentials"),
    ],
)
def test_a_bucket_source_that_cannot_be_read_is_one_line(
    weed, bucket, tmp_path, where, env, code, needle
):
    put(weed, bucket, "snaps/2026-11-01.csv", write_bundled("wine", tmp_path / "wine.csv"))
    weed.client().put_object(Bucket=bucket, Key="empty/readme.txt", Body=b"no data here")
    spec = "s3://" + where.format(b=bucket)
    r = build(weed, tmp_path / "w", "--data", spec, "--label", "target", **env)
    assert r.code == code, r.err
    [line] = r.err_lines
    assert line.startswith("tfship build: ") and needle.format(b=bucket) in line
    assert "Traceback" not in r.err and "wrong-secret" not in r.err
    assert_clean(tmp_path / "w")


def test_a_bucket_snapshot_over_the_size_limit_is_refused_before_reading(weed, bucket, tmp_path):
    uri = put(weed, bucket, "t/wine.csv", write_bundled("wine", tmp_path / "wine.csv"))
    r = build(weed, tmp_path / "w", "--data", uri, "--label", "target", "--max-data-bytes", "100")
    assert r.code == 2 and "over the 100 byte limit" in r.err_lines[-1], r.err
    assert_clean(tmp_path / "w")


def test_a_bucket_snapshot_of_a_known_identity_is_not_downloaded_again(weed, bucket, tmp_path):
    from tfship.ci.watch import newest_snapshot

    src = write_bundled("wine", tmp_path / "wine.csv")
    put(weed, bucket, "snaps/2026-11-01.csv", src)
    fresh = newest_snapshot(f"s3://{bucket}/snaps")
    assert fresh is not None and fresh.sha256 == sha256(src)
    # the identity (key, size, ETag) known: the sha256 recorded for it is used, unread
    cached = newest_snapshot(f"s3://{bucket}/snaps", hashed={fresh.identity: "c" * 64})
    assert cached is not None and cached.sha256 == "c" * 64
    # the object replaced: a new identity, hashed again
    src.write_text(src.read_text().replace("class_0", "class_9"))
    put(weed, bucket, "snaps/2026-11-01.csv", src)
    again = newest_snapshot(f"s3://{bucket}/snaps", hashed={fresh.identity: "c" * 64})
    assert again is not None and again.identity != fresh.identity
    assert again.sha256 == sha256(src)


def test_watch_data_on_a_bucket_triggers_once_per_snapshot_and_its_uri_builds(
    weed, bucket, api, tmp_path
):
    cols = wine_columns(tmp_path)
    env = weed.env(
        CIRCLE_TOKEN=GOOD_TOKEN, CIRCLE_PROJECT_SLUG="gh/acme/models", CIRCLECI_API_URL=api.url
    )
    state = tmp_path / "state.json"
    watch = ["ci", "watch-data", f"s3://{bucket}/snaps/", "--state", str(state), "--json"]

    def poll() -> dict:
        r = run_cli(*watch, cwd=tmp_path, env=env, timeout=60)
        assert r.code == 0, r.err
        return json.loads(r.out)["polls"][0]

    assert poll()["action"] == "none"  # nothing uploaded yet
    first = write_parquet(tmp_path / "a.parquet", {k: v[:120] for k, v in cols.items()})
    put(weed, bucket, "snaps/2026-11-01.parquet", first)
    got = poll()
    uri = f"s3://{bucket}/snaps/2026-11-01.parquet#sha256={sha256(first)}"
    assert got["action"] == "triggered" and got["data_uri"] == uri
    assert json.loads(
        [r for r in api.state.requests if r["operation"] == "triggerPipeline"][-1]["body"]
    )["parameters"] == {"retrain": True, "data_uri": uri}
    assert poll()["action"] == "none"
    # the same content again under a newer name: hashed, found triggered, not sent again
    put(weed, bucket, "snaps/2026-11-01b.parquet", first)
    assert poll()["reason"] == "already triggered"

    shards = [
        write_parquet(tmp_path / f"p{i}.parquet", {k: v[a:b] for k, v in cols.items()})
        for i, (a, b) in enumerate([(0, 90), (90, 178)])
    ]
    for i, p in enumerate(shards):
        put(weed, bucket, f"snaps/2026-11-02/part-{i}.parquet", p)
    got = poll()
    assert got["action"] == "triggered"
    assert got["data_uri"] == f"s3://{bucket}/snaps/2026-11-02/*.parquet#sha256={sha256(*shards)}"
    assert len([r for r in api.state.requests if r["operation"] == "triggerPipeline"]) == 2
    assert S3_SECRET not in state.read_text()

    # what the pipeline is sent is what `tfship build --data` takes: the same content hash
    r = build(weed, tmp_path / "b", "--data", got["data_uri"], "--label", "target")
    assert r.code == 0, r.err
    assert manifest(tmp_path / "b")["data_hash"] == "sha256:" + sha256(*shards)


IMPORTS = """
import sys
from tfship.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("BOTO=" + ",".join(m for m in ("boto3", "botocore") if m in sys.modules))
"""


@pytest.mark.parametrize("args", [["--help"], ["build", "--data", "wine"], ["ci", "--help"]])
def test_only_a_bucket_source_imports_boto3(args, tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", IMPORTS, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "BOTO=\n" in r.stdout, (r.stdout[-300:], r.stderr[-300:])


def test_a_sha256_fragment_is_split_only_in_its_exact_form():
    from tfship.sources import split_sha256

    h = "ab" * 32
    assert split_sha256(f"s3://b/k.csv#sha256={h.upper()}") == ("s3://b/k.csv", h)
    assert split_sha256("s3://b/k#1.csv") == ("s3://b/k#1.csv", None)
    assert split_sha256("s3://b/k.csv#sha256=abc") == ("s3://b/k.csv#sha256=abc", None)


def test_an_image_folder_in_a_bucket_builds_as_the_folder_read_locally(weed, bucket, tmp_path):
    """A prefix whose sub-prefixes are classes of images is an image folder, as a local one:
    the same pixels hash the same. Its sha256 (the one `tfship ci watch-data` sends) covers
    each image's key below the folder, its size and its bytes: an image moved to another
    class is new data. Folder markers and other objects in a class are ignored."""
    from test_image_schema import write_folder
    from tfship.ci.watch import newest_snapshot

    root = write_folder(tmp_path / "photos", ["cat", "dog", "fox"])
    files = sorted(root.rglob("*.png"))
    client = weed.client()
    for f in files:
        put(weed, bucket, f"photos/{f.relative_to(root).as_posix()}", f)
    client.put_object(Bucket=bucket, Key="photos/cat/", Body=b"")  # the console's "folder"
    client.put_object(Bucket=bucket, Key="photos/dog/Thumbs.db", Body=b"junk")
    local = build(weed, tmp_path / "local", "--data", str(root))
    (root / "schema.pbtxt").unlink()
    remote = build(weed, tmp_path / "remote", "--data", f"s3://{bucket}/photos/")
    assert local.code == 0, local.err
    assert remote.code == 0, remote.err
    m, want = manifest(tmp_path / "remote"), manifest(tmp_path / "local")
    assert m["data_hash"] == want["data_hash"] and m["classes"] == ["cat", "dog", "fox"]
    assert m["origin"] == f"s3://{bucket}/photos (image folder)"
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.relative_to(root).as_posix()}\0{f.stat().st_size}\0".encode())
        digest.update(f.read_bytes())
    assert m["data_sha256"] == digest.hexdigest() == want["data_sha256"]  # as read locally
    assert list((tmp_path / "remote" / "tmp").iterdir()) == []  # the download is gone
    seen = newest_snapshot(f"s3://{bucket}/photos/")  # `bucket` points this process at it
    assert seen is not None and seen.sha256 == m["data_sha256"]
    # The same bytes under another class: another label, another sha256.
    moved = files[0].relative_to(root).as_posix()  # cat/000.png
    client.copy_object(
        Bucket=bucket,
        Key="photos/dog/999.png",
        CopySource={"Bucket": bucket, "Key": f"photos/{moved}"},
    )
    client.delete_object(Bucket=bucket, Key=f"photos/{moved}")
    relabelled = newest_snapshot(f"s3://{bucket}/photos/")
    assert relabelled is not None and relabelled.sha256 != seen.sha256
    # A wrong sha256 is refused, one line, nothing left.
    bad = build(weed, tmp_path / "bad", "--data", f"s3://{bucket}/photos#sha256={'0' * 64}")
    assert bad.code == 2 and "sha256 mismatch" in bad.err, bad.err
    assert_clean(tmp_path / "bad")


def test_a_schema_beside_an_image_folder_in_the_bucket_is_checked(weed, bucket, tmp_path):
    """As a table's: read from beside the snapshot, checked, never written to the bucket."""
    from test_image_schema import write_folder

    root = write_folder(tmp_path / "photos", ["cat", "dog"])
    assert build(weed, tmp_path / "local", "--data", str(root)).code == 0  # infers cat, dog
    put(weed, bucket, "photos/schema.pbtxt", root / "schema.pbtxt")
    write_folder(root, ["cat", "dog", "fox"])  # a class the schema does not know
    for f in sorted(root.rglob("*.png")):
        put(weed, bucket, f"photos/{f.relative_to(root).as_posix()}", f)
    keys = sorted(o["Key"] for o in weed.client().list_objects_v2(Bucket=bucket)["Contents"])
    r = build(weed, tmp_path / "w", "--data", f"s3://{bucket}/photos/")
    assert r.code == 2, r.err
    [line] = r.err_lines
    assert f"breaks s3://{bucket}/photos/schema.pbtxt" in line and "fox" in line, line
    assert_clean(tmp_path / "w")
    client = weed.client()
    for key in [k for k in keys if k.startswith("photos/fox/")]:
        client.delete_object(Bucket=bucket, Key=key)
    r = build(weed, tmp_path / "ok", "--data", f"s3://{bucket}/photos/")
    assert r.code == 0, r.err
    m = manifest(tmp_path / "ok")
    assert m["schema"]["status"] == "checked" and m["classes"] == ["cat", "dog"]
    assert m["schema"]["path"] == f"s3://{bucket}/photos/schema.pbtxt"
    left = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert left == [k for k in keys if not k.startswith("photos/fox/")]  # nothing written
