"""Object storage basics against a real S3 service (SeaweedFS on loopback)."""

from __future__ import annotations

import pytest
from tfship import s3
from tfship.errors import ConfigError, StoreError


@pytest.mark.parametrize(
    "env, url, verify",
    [
        ({}, None, True),
        ({"S3_ENDPOINT": "minio.internal:9000"}, "https://minio.internal:9000", True),
        (
            {"S3_ENDPOINT": "minio.internal:9000", "S3_USE_HTTPS": "0", "S3_VERIFY_SSL": "0"},
            "http://minio.internal:9000",
            False,
        ),
        ({"S3_ENDPOINT": "http://127.0.0.1:8333/"}, "http://127.0.0.1:8333", True),
    ],
)
def test_the_endpoint_follows_tf_servings_variables(env, url, verify):
    where = s3.endpoint(env)
    assert (where.url, where.verify, where.region) == (url, verify, "us-east-1")


def test_the_region_and_bad_values_are_read_as_tf_serving_reads_them():
    assert s3.endpoint({"AWS_REGION": "eu-west-1"}).region == "eu-west-1"
    with pytest.raises(ConfigError, match="S3_USE_HTTPS"):
        s3.endpoint({"S3_USE_HTTPS": "maybe"})
    with pytest.raises(ConfigError, match="host\\[:port\\]"):
        s3.endpoint({"S3_ENDPOINT": "minio.internal:9000/path"})


@pytest.mark.parametrize(
    "text, bucket, key",
    [
        ("s3://models", "models", ""),
        ("s3://models/", "models", ""),
        ("s3://models/team/digits/", "models", "team/digits"),
    ],
)
def test_an_s3_uri_names_a_bucket_and_a_prefix(text, bucket, key):
    uri = s3.S3Uri.parse(text)
    assert (uri.bucket, uri.key) == (bucket, key)
    assert str(uri.join("a", "b")) == f"s3://{bucket}/{s3.join(key, 'a', 'b')}"


@pytest.mark.parametrize(
    "text", ["s3://", "s3://Models/x", "s3://ab", "s3://b-k/a//b", "s3://bkt/../x"]
)
def test_a_malformed_s3_uri_is_a_config_error(text):
    with pytest.raises(ConfigError):
        s3.S3Uri.parse(text)


def test_a_tree_goes_up_hashed_and_comes_back_the_same(bucket, tmp_path):
    from tfship.workspace import tree_hashes

    src = tmp_path / "src"
    (src / "variables").mkdir(parents=True)
    (src / "saved_model.pb").write_bytes(b"graph")
    (src / "variables" / "variables.index").write_bytes(b"index" * 1000)
    host = s3.S3Host(bucket)
    assert host.put_tree(src, "m/.incoming-1") == 5 + 5000
    assert host.hash_tree("m/.incoming-1") == tree_hashes(src)
    with pytest.raises(FileExistsError):
        host.put_tree(src, "m/.incoming-1")
    host.rename("m/.incoming-1", "m/1")
    assert host.listdir("m") == ["1"]
    assert host.listdir("m/1") == ["saved_model.pb", "variables"]
    host.get_tree("m/1", tmp_path / "back")
    assert tree_hashes(tmp_path / "back") == tree_hashes(src)
    with pytest.raises(FileExistsError):
        host.rename("m/1", "m/1")


def test_mkdir_is_a_lock_only_one_caller_gets(bucket):
    host = s3.S3Host(bucket)
    host.mkdir("m/.lock")
    with pytest.raises(FileExistsError):
        host.mkdir("m/.lock")
    host.remove_tree("m/.lock")
    host.mkdir("m/.lock")


def test_the_service_is_checked_once_to_enforce_conditional_writes(bucket):
    """SeaweedFS enforces If-None-Match: * (the probe's second write is refused and the probe
    removed); a service that accepts both writes would let two deploys hold the lock, so it
    is refused in one line before any lock or record is written."""
    from tfship.errors import StoreError as Refused

    host = s3.S3Host(bucket)
    host.mkdir("m/.lock")
    assert host._conditional_checked
    assert [o["Key"] for o in host.keys("m")] == ["m/.lock/" + s3.DIR_MARKER]  # probe gone

    class IgnoresConditions:
        """Stands for a service without conditional writes (none such runs here): every
        PUT succeeds."""

        def __init__(self) -> None:
            self.objects: dict[str, bytes] = {}

        def put_object(self, Bucket, Key, Body, **kw):  # noqa: N803 (boto3's names)
            self.objects[Key] = Body

        def delete_object(self, Bucket, Key):  # noqa: N803
            self.objects.pop(Key, None)

        def head_bucket(self, Bucket):  # noqa: N803
            return {}

    lax = IgnoresConditions()
    with pytest.raises(Refused, match=r"ignores conditional writes \(If-None-Match: \*\)"):
        s3.S3Host("lax", s3=lax).mkdir("m/.lock")
    assert lax.objects == {}  # no lock taken, the probe removed
    with pytest.raises(Refused, match="ignores conditional writes"):
        s3.S3Host("lax", s3=lax).create("m/history/0001.json", b"{}")
    assert lax.objects == {}


def test_wrong_credentials_and_a_missing_bucket_are_one_line_each(weed, bucket, monkeypatch):
    with pytest.raises(StoreError, match="does not exist"):
        s3.S3Host("no-such-bucket-here").listdir("x")
    # SeaweedFS would create the bucket on a first PUT: a write checks it exists first.
    with pytest.raises(StoreError, match="the bucket does not exist"):
        s3.S3Host("no-such-bucket-either").mkdir("m/.lock")
    with pytest.raises(StoreError, match="does not exist"):
        s3.S3Host("no-such-bucket-either").listdir("x")  # and it was not created
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(ConfigError, match="refused the credentials") as info:
        s3.S3Host(bucket).listdir("x")
    assert "wrong-secret" not in str(info.value)
