"""Every source watch-data and plan resolve sends a data_uri `tfship build --data` reads.

Each source kind, against the real thing (a folder, a loopback https-style server, OpenSSH
sshd, a SeaweedFS bucket): resolve the newest snapshot -> its data_uri -> `tfship build
--data <data_uri>` builds from the same bytes (the data manifest's ``data_sha256`` is the
snapshot's) and refuses them when the sha256 in the URI is not theirs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import clean_env, digits_arrays, free_port, run_cli, write_npz
from tfship.ci.watch import newest_snapshot
from tfship.errors import ApiError
from tfship.sources import data_uri, split_sha256
from tfship.targets import SSHAccess

pytestmark = pytest.mark.timeout(180)


def sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.read_bytes())
    return digest.hexdigest()


def images(path: Path, seed: int) -> Path:
    """A snapshot of digit images (a seeded sample, so two snapshots differ)."""
    x, y = digits_arrays()
    keep = np.random.default_rng(seed).random(len(y)) < 0.8
    return write_npz(path, x[keep], y[keep])


def table(path: Path, rows: range) -> Path:
    """A CSV table with two classes that a build accepts."""
    lines = ["a,b,target"] + [f"{i % 7},{i * 0.5},{'yes' if i % 3 else 'no'}" for i in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def build(cwd: Path, uri: str, *args: str, env: dict[str, str] | None = None):
    cwd.mkdir(parents=True, exist_ok=True)
    return run_cli("build", "--data", uri, *args, cwd=cwd, env=env or clean_env(), timeout=120)


def built_sha(cwd: Path) -> str:
    return json.loads((cwd / "workspace" / "data" / "manifest.json").read_text())["data_sha256"]


def tampered(uri: str) -> str:
    location, sha = split_sha256(uri)
    return data_uri(location, ("0" if sha[0] != "0" else "1") + sha[1:])


def assert_round_trip(tmp: Path, uri: str, sha: str, *args: str, env=None) -> None:
    """`tfship build --data uri` reads bytes hashing to ``sha``; a wrong hash is refused."""
    r = build(tmp / "good", uri, *args, env=env)
    assert r.code == 0, r.err
    assert built_sha(tmp / "good") == sha
    bad = build(tmp / "bad", tampered(uri), *args, env=env)
    assert bad.code == 2, bad.err
    assert "sha256 mismatch" in bad.err_lines[-1]
    assert not (tmp / "bad" / "workspace" / "data").exists()


def test_a_folder_snapshot_round_trips(tmp_path):
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    images(snaps / "2026-11-01.npz", 1)
    newest = images(snaps / "2026-11-02.npz", 2)
    snap = newest_snapshot(str(snaps))
    assert snap is not None and snap.uri == str(newest.absolute())
    assert snap.data_uri == f"{newest.absolute()}#sha256={sha256(newest)}"
    assert_round_trip(tmp_path, snap.data_uri, sha256(newest))


def test_a_folder_of_table_shards_round_trips(tmp_path):
    snaps = tmp_path / "snaps"
    (snaps / "2026-11-02").mkdir(parents=True)
    table(snaps / "2026-11-01.csv", range(60))
    shards = [
        table(snaps / "2026-11-02" / f"part-{i}.csv", range(i * 50, i * 50 + 50)) for i in (0, 1)
    ]
    snap = newest_snapshot(str(snaps))
    assert snap is not None and snap.uri == f"{(snaps / '2026-11-02').absolute()}/*.csv"
    assert snap.sha256 == sha256(*shards)
    assert_round_trip(tmp_path, snap.data_uri, sha256(*shards), "--label", "target")


def test_an_https_listing_entry_round_trips(http_dir, tmp_path):
    base, www = http_dir
    old = images(www / "2026-11-01.npz", 1)
    new = images(www / "2026-11-02.npz", 2)
    (www / "listing.txt").write_text(
        f"{base}/2026-11-01.npz {sha256(old)}\n{base}/2026-11-02.npz {sha256(new)}\n"
    )
    snap = newest_snapshot(f"{base}/listing.txt")
    assert snap is not None and snap.data_uri == f"{base}/2026-11-02.npz#sha256={sha256(new)}"
    assert_round_trip(tmp_path, snap.data_uri, sha256(new))


def test_an_ssh_snapshot_round_trips_with_the_deploy_hosts_ssh_settings(sshd, tmp_path):
    snaps = tmp_path / "remote"
    snaps.mkdir()
    images(snaps / "2026-11-01.npz", 1)
    new = images(snaps / "2026-11-02.npz", 2)
    access = SSHAccess(ssh_key_file=sshd.client_key, known_hosts=sshd.known_hosts)
    snap = newest_snapshot(f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{snaps}", access)
    assert snap is not None
    assert snap.uri == f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{new}"
    # the build job reaches the host as deploy does: key text in a variable, known_hosts
    env = clean_env(DATA_KEY=sshd.client_key.read_text())
    flags = ("--ssh-key-env", "DATA_KEY", "--known-hosts", str(sshd.known_hosts))
    assert_round_trip(tmp_path, snap.data_uri, sha256(new), *flags, env=env)
    # an unknown host key is refused before a byte is read (exit 9: host error)
    strange = tmp_path / "known_hosts_without_it"
    strange.write_text("")
    r = build(
        tmp_path / "strange",
        snap.data_uri,
        "--ssh-key-env",
        "DATA_KEY",
        "--known-hosts",
        str(strange),
        env=env,
    )
    assert r.code == 9 and "known_hosts" in r.err_lines[-1], r.err


def test_an_ssh_table_round_trips(sshd, tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    new = table(remote / "2026-11-02.csv", range(90))
    access = SSHAccess(ssh_key_file=sshd.client_key, known_hosts=sshd.known_hosts)
    snap = newest_snapshot(f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{remote}", access)
    assert snap is not None and snap.sha256 == sha256(new)
    flags = ("--ssh-key-file", str(sshd.client_key), "--known-hosts", str(sshd.known_hosts))
    assert_round_trip(tmp_path, snap.data_uri, sha256(new), "--label", "target", *flags)


def test_a_bucket_snapshot_round_trips(weed, bucket, tmp_path):
    new = images(tmp_path / "new.npz", 2)
    client = weed.client()
    client.upload_file(str(images(tmp_path / "old.npz", 1)), bucket, "snaps/2026-11-01.npz")
    client.upload_file(str(new), bucket, "snaps/2026-11-02.npz")
    snap = newest_snapshot(f"s3://{bucket}/snaps/")
    assert snap is not None and snap.uri == f"s3://{bucket}/snaps/2026-11-02.npz"
    assert_round_trip(tmp_path, snap.data_uri, sha256(new), env=weed.env())


def test_a_data_uri_names_its_snapshot_outright(tmp_path):
    """plan and watch-data take a data_uri as their source too: resolved to itself."""
    snap_file = images(tmp_path / "one.npz", 3)
    uri = data_uri(str(snap_file.absolute()), sha256(snap_file))
    snap = newest_snapshot(uri)
    assert snap is not None and snap.data_uri == uri
    with pytest.raises(Exception, match="sha256 mismatch"):
        newest_snapshot(tampered(uri))


def test_build_refuses_two_different_checksums(tmp_path):
    snap_file = images(tmp_path / "one.npz", 3)
    uri = data_uri(str(snap_file), sha256(snap_file))
    r = build(tmp_path / "w", uri, "--data-sha256", "f" * 64)
    assert r.code == 2 and "differ" in r.err_lines[-1], r.err


def test_a_listings_sha256_is_read_in_lower_case_as_manifests_record_it(http_dir):
    """An upper-case digest in a listing is the same data: it must compare equal to the
    champion's data_sha256, or the nightly plan would retrain on unchanged data."""
    base, www = http_dir
    new = images(www / "2026-11-02.npz", 2)
    (www / "listing.txt").write_text(f"{base}/2026-11-02.npz {sha256(new).upper()}\n")
    snap = newest_snapshot(f"{base}/listing.txt")
    assert snap is not None and snap.sha256 == sha256(new)


def test_a_listing_line_whose_digest_is_no_sha256_is_refused_in_one_line(http_dir):
    base, www = http_dir
    (www / "listing.txt").write_text(f"{base}/2026-11-02.npz deadbeef\n")
    with pytest.raises(ApiError, match="'deadbeef' is not a sha256"):
        newest_snapshot(f"{base}/listing.txt")


def test_an_unreachable_listing_is_an_api_error_not_a_traceback():
    with pytest.raises(ApiError, match="ConnectionError"):
        newest_snapshot(f"http://127.0.0.1:{free_port()}/listing.txt")


def test_an_image_folder_packed_on_an_ssh_host_builds(sshd, tmp_path):
    """An ssh:// source names one file: a .tar.gz of an image folder is one, unpacked into
    the temporary folder that is removed after. In a folder of snapshots it is the newest,
    as watch-data resolves it."""
    import shutil

    from test_image_schema import write_folder

    write_folder(tmp_path / "photos", ["cat", "dog"])
    (tmp_path / "remote").mkdir()
    images(tmp_path / "remote" / "2026-11-01.npz", 1)
    packed = Path(
        shutil.make_archive(str(tmp_path / "remote" / "2026-11-02"), "gztar", tmp_path, "photos")
    )
    access = SSHAccess(ssh_key_file=sshd.client_key, known_hosts=sshd.known_hosts)
    snap = newest_snapshot(f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{tmp_path / 'remote'}", access)
    uri = data_uri(f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{packed}", sha256(packed))
    assert snap is not None and snap.data_uri == uri
    flags = ("--ssh-key-file", str(sshd.client_key), "--known-hosts", str(sshd.known_hosts))
    r = build(tmp_path / "b", uri, *flags)
    assert r.code == 0, r.err
    m = json.loads((tmp_path / "b" / "workspace" / "data" / "manifest.json").read_text())
    assert m["classes"] == ["cat", "dog"] and m["data_sha256"] == sha256(packed)
    assert m["origin"].startswith("ssh://") and "(image folder)" not in m["origin"]


def test_a_local_image_folder_is_one_snapshot_hashed_over_its_images(tmp_path):
    """A local image folder's sha256 covers each image's path below it, its size and its
    bytes (as a bucket's does): `--data FOLDER#sha256=` checks it, watch-data sends it, and
    an image moved to another class is new data."""
    from test_image_schema import write_folder

    root = write_folder(tmp_path / "photos", ["cat", "dog"])
    snap = newest_snapshot(str(root))
    assert snap is not None and snap.uri == str(root.absolute())
    digest = hashlib.sha256()
    for f in sorted(root.rglob("*.png")):
        digest.update(f"{f.relative_to(root).as_posix()}\0{f.stat().st_size}\0".encode())
        digest.update(f.read_bytes())
    assert snap.sha256 == digest.hexdigest()
    assert_round_trip(tmp_path, snap.data_uri, snap.sha256)
    assert newest_snapshot(str(root)) == snap  # the schema written beside it is no image
    (root / "cat" / "000.png").rename(root / "dog" / "999.png")
    moved = newest_snapshot(str(root))
    assert moved is not None and moved.sha256 != snap.sha256


def test_a_folder_of_packed_image_folders_round_trips(tmp_path):
    """.zip and .tar.gz of an image folder are snapshot files, as an .npz is: the newest by
    name is built, locally as over https, ssh or from a bucket."""
    import shutil

    from test_image_schema import write_folder

    snaps = tmp_path / "snaps"
    snaps.mkdir()
    write_folder(tmp_path / "photos", ["cat", "dog"])
    shutil.make_archive(str(snaps / "2026-11-01"), "gztar", tmp_path, "photos")
    write_folder(tmp_path / "photos", ["cat", "dog", "fox"])
    newest = Path(shutil.make_archive(str(snaps / "2026-11-02"), "zip", tmp_path, "photos"))
    snap = newest_snapshot(str(snaps))
    assert snap is not None and snap.uri == str(newest.absolute())
    assert_round_trip(tmp_path, snap.data_uri, sha256(newest))
    m = json.loads((tmp_path / "good" / "workspace" / "data" / "manifest.json").read_text())
    assert m["classes"] == ["cat", "dog", "fox"]
    assert (snaps / "schema.pbtxt").is_file()  # beside the snapshots, as for an .npz
    assert sorted(p.name for p in snaps.iterdir()) == [
        "2026-11-01.tar.gz",
        "2026-11-02.zip",
        "schema.pbtxt",
    ]  # nothing unpacked beside them
