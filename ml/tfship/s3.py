"""Object storage: ``s3://bucket/prefix`` on AWS S3 or any S3-compatible service.

One client for everything tfship keeps in a bucket (the store of record, data snapshots, a TF
Serving model base path), configured the way TF Serving's S3 file system is, so one set of
environment variables serves both:

- ``S3_ENDPOINT``: the service's ``host[:port]`` (a scheme is accepted too); unset: AWS, or
  boto3's own ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``.
- ``S3_VERIFY_SSL`` (default 1): ``0`` turns TLS verification off. ``S3_USE_HTTPS=0`` makes
  a bare ``host:port`` plain http here, as TensorFlow's own S3 file system did before 2.7;
  tensorflow-io's, which TF Serving links now, no longer reads it (tensorflow/io#1343) and
  takes a bare ``host:port`` as https: write the scheme (``http://host:port``) and both
  agree.
- ``AWS_DEFAULT_REGION``, else ``AWS_REGION`` (the AWS SDK's order; default ``us-east-1``).
- Credentials: boto3's standard chain only (``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, the instance role...).
  tfship never reads, prints or writes them.

Upstream: these are the variables of TensorFlow's S3 file system, which moved out of TensorFlow
in 2.7 into tensorflow-io (``tensorflow_io/core/filesystems/s3/s3_filesystem.cc``); a
``tensorflow_model_server`` reads ``--model_base_path=s3://...`` when it is built with that
plugin (tensorflow/serving#1963; stock 2.7+ binaries are not).

:class:`S3Host` is :class:`tfship.store.Host` on a bucket. A bucket has no folders and no
rename: a "folder" is a key prefix, ``mkdir`` (the lock) is a conditional write of a marker
object (``If-None-Match: *``), and ``rename`` copies every object (``saved_model.pb`` last, as
TFX's Pusher does, so a TF Serving that lists the folder early cannot load a part of it) and
then deletes the source. boto3 is imported only when a bucket is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from tfship.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client  # noqa: F401 (types only, never installed)

SCHEME = "s3://"
DEFAULT_REGION = "us-east-1"
# AWS's bucket naming rules (S3 "Bucket naming rules"): 3-63 of a-z 0-9 . -
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
SAVED_MODEL_PB = "saved_model.pb"
DIR_MARKER = ".dir"  # the object mkdir() writes: the prefix exists, and only once
CHUNK = 1 << 20
# Error codes an S3 service answers with for credentials it refuses.
# What a conditional write (If-None-Match: *) that lost answers: the key exists already.
CONFLICT_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
AUTH_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
    "403",
}


def is_s3(text: str | os.PathLike | None) -> bool:
    """Whether ``text`` names a location in a bucket (``s3://...``)."""
    return isinstance(text, str) and text.startswith(SCHEME)


@dataclass(frozen=True)
class S3Uri:
    """``s3://bucket/key``: ``key`` has no leading or trailing slash (``""``: the bucket)."""

    bucket: str
    key: str = ""

    @classmethod
    def parse(cls, text: str) -> S3Uri:
        """Parse ``s3://bucket[/key]``; a malformed one is a ConfigError naming the rule."""
        if not is_s3(text):
            raise ConfigError(f"{text!r} is not an s3:// URI", hint="write s3://bucket/prefix")
        bucket, _, key = text[len(SCHEME) :].partition("/")
        if not BUCKET_RE.match(bucket) or ".." in bucket:
            raise ConfigError(
                f"{text}: {bucket!r} is not a bucket name",
                hint="3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a "
                "letter or digit",
            )
        key = key.strip("/")
        if "//" in key or any(part in (".", "..") for part in key.split("/")):
            raise ConfigError(f"{text}: empty, '.' or '..' parts in the key", hint="s3://b/a/b")
        return cls(bucket, key)

    def join(self, *parts: str) -> S3Uri:
        """This location with ``parts`` appended."""
        return S3Uri(self.bucket, join(self.key, *parts))

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}" if self.key else f"{SCHEME}{self.bucket}"


def join(*parts: str) -> str:
    """Join key parts with ``/``, skipping empty ones."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


@dataclass(frozen=True)
class Endpoint:
    """Where the client connects, decided from the environment (see the module docstring)."""

    url: str | None  # None: boto3 decides (AWS, or AWS_ENDPOINT_URL[_S3])
    verify: bool
    region: str


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ConfigError(f"{name}={env[name]!r}: expected 1 or 0", hint=f"set {name}=1 or {name}=0")


def endpoint(env: Mapping[str, str] | None = None) -> Endpoint:
    """The endpoint, TLS verification and region from TF Serving's variables."""
    env = os.environ if env is None else env
    https = _flag(env, "S3_USE_HTTPS", True)
    verify = _flag(env, "S3_VERIFY_SSL", True)
    # the AWS SDK's order (TF Serving's S3 plugin leaves the region to it)
    region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or DEFAULT_REGION
    raw = env.get("S3_ENDPOINT", "").strip()
    if not raw:
        return Endpoint(None, verify, region)
    if "://" not in raw:
        raw = f"{'https' if https else 'http'}://{raw}"
    if not re.match(r"^https?://[^/\s]+/?$", raw):
        raise ConfigError(
            f"S3_ENDPOINT={env['S3_ENDPOINT']!r} is not host[:port]",
            hint="e.g. S3_ENDPOINT=minio.internal:9000 (S3_USE_HTTPS=0 for plain http)",
        )
    return Endpoint(raw.rstrip("/"), verify, region)


def client(env: Mapping[str, str] | None = None) -> Any:
    """A boto3 S3 client configured from the environment (credentials: boto3's chain).

    ``env`` (tests, tools) replaces ``os.environ``: its ``AWS_*`` credentials are used too.
    """
    import boto3  # heavy: only when a bucket is used
    from botocore.config import Config

    where = endpoint(env)
    keys = {}
    if env is not None:
        for arg, name in (
            ("aws_access_key_id", "AWS_ACCESS_KEY_ID"),
            ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"),
            ("aws_session_token", "AWS_SESSION_TOKEN"),
        ):
            if env.get(name):
                keys[arg] = env[name]
    return boto3.session.Session(**keys).client(
        "s3",
        endpoint_url=where.url,
        region_name=where.region,
        verify=where.verify,
        config=Config(
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
            # path-style: S3-compatible services (MinIO, SeaweedFS, Ceph) rarely have
            # per-bucket DNS names; AWS accepts it as well.
            s3={"addressing_style": "path"} if where.url else {},
        ),
    )


def error_code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ClientError (``NoSuchKey``...), else None."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code") or "") or None
    return None


@contextlib.contextmanager
def errors(where: str) -> Iterator[None]:
    """Turn botocore's failures into one-line tfship errors naming ``where`` and the fix.

    Never includes credentials: botocore's messages do not carry the secret key, and only
    the error code and ``where`` are shown.
    """
    try:
        yield
    except (FileExistsError, FileNotFoundError, StoreError, ConfigError):
        raise
    except Exception as exc:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
        )

        if isinstance(exc, Boto3Error):  # s3transfer's wrapper: judge by what it wraps
            inner = exc.__cause__ or exc.__context__
            if isinstance(inner, (ClientError, BotoCoreError)):
                exc = inner
            else:
                raise StoreError(f"{where}: {one_line(exc)}") from exc
        code = error_code(exc)
        if isinstance(exc, NoCredentialsError):
            raise ConfigError(
                f"{where}: no AWS credentials",
                hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or "
                "run where an instance role applies)",
            ) from exc
        if isinstance(exc, ClientError) and code == "NoSuchBucket":
            raise StoreError(
                f"{where}: the bucket does not exist",
                hint="create it (aws s3 mb) or fix the s3:// URI",
            ) from exc
        if isinstance(exc, ClientError) and code in AUTH_CODES:
            raise ConfigError(
                f"{where}: the S3 service refused the credentials ({code})",
                hint="check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy",
            ) from exc
        if isinstance(exc, EndpointConnectionError):
            raise StoreError(
                f"{where}: cannot reach the S3 service ({endpoint_text()})",
                hint="check S3_ENDPOINT and S3_USE_HTTPS, and that the service is up",
            ) from exc
        if isinstance(exc, ClientError):
            raise StoreError(f"{where}: the S3 service answered {code}") from exc
        if isinstance(exc, BotoCoreError):
            raise StoreError(
                f"{where}: {type(exc).__name__}: {one_line(exc)}",
                hint="the link to the S3 service failed; nothing half-placed is loadable: "
                "run it again",
            ) from exc
        raise


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, without the local paths s3transfer adds."""
    text = " ".join(str(exc).split())
    return re.sub(r"^Failed to upload \S+ to \S+: ", "", text)


def endpoint_text() -> str:
    """The endpoint in use, for messages (never credentials)."""
    try:
        return endpoint().url or "AWS"
    except ConfigError:
        return "S3_ENDPOINT"


def _hash_body(body: Any) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: body.read(CHUNK), b""):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


class S3Host:
    """:class:`tfship.store.Host` on one bucket: paths are key prefixes (``a/b/c``)."""

    atomic_rename = False  # rename() copies then deletes: see tfship.store.complete()

    def __init__(self, bucket: str, s3: Any | None = None) -> None:
        self.bucket = bucket
        self.name = f"{SCHEME}{bucket}"
        self._s3 = s3
        self._conditional_checked = False  # see _check_conditional_writes

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = client()
        return self._s3

    def _where(self, path: str) -> str:
        return f"{self.name}/{path.strip('/')}"

    def keys(self, prefix: str) -> Iterator[dict]:
        """Every object below ``prefix/`` (``Key``, ``Size``, ``ETag``), in key order."""
        prefix = join(prefix) + "/" if join(prefix) else ""
        with errors(self._where(prefix)):
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                yield from page.get("Contents", [])

    def listdir(self, path: str) -> list[str]:
        """The names directly below ``path``: objects and prefixes that hold an object.

        Listed without a delimiter: some services (SeaweedFS, with its filer's real
        folders) still report a prefix whose objects were all deleted as a common prefix.
        """
        base = join(path)
        cut = len(base) + 1 if base else 0
        names = {o["Key"][cut:].split("/", 1)[0] for o in self.keys(path)}
        return sorted(n for n in names if n and n != DIR_MARKER)

    def is_file(self, path: str) -> bool:
        """Whether an object has exactly this key."""
        with errors(self._where(path)):
            try:
                self.s3.head_object(Bucket=self.bucket, Key=join(path))
                return True
            except Exception as exc:
                if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise

    def exists(self, path: str) -> bool:
        if self.is_file(path):
            return True
        with errors(self._where(path)):
            page = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=join(path) + "/", MaxKeys=1)
        return bool(page.get("KeyCount") or page.get("Contents"))

    def makedirs(self, path: str) -> None:
        """Nothing to do: a bucket has no folders, a prefix exists with its first object."""

    def mkdir(self, path: str) -> None:
        """Claim ``path`` once: a conditional write of its marker (``If-None-Match: *``)."""
        # the probe goes beside the claimed folder, never into it (a lock's reader lists it)
        self._put_new(join(path, DIR_MARKER), b"", self._where(path), join(path).rpartition("/")[0])

    def _put_new(self, key: str, data: bytes, where: str, probe_dir: str | None = None) -> None:
        """PUT ``key`` only if no object has it (``If-None-Match: *``); FileExistsError if
        one does. The lock and the append-only records rest on it, so the first use on this
        bucket checks that the service enforces it (:meth:`_check_conditional_writes`)."""
        self._check_conditional_writes(key.rpartition("/")[0] if probe_dir is None else probe_dir)
        with errors(where):
            try:
                self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")
            except Exception as exc:
                if error_code(exc) in CONFLICT_CODES:
                    raise FileExistsError(where) from exc
                raise

    def _check_conditional_writes(self, parent: str) -> None:
        """Before the first write: the bucket must exist (some services, SeaweedFS among them,
        create a bucket on a first PUT, so a typo in its name would deploy into a new bucket no
        server reads); then write a probe object twice with ``If-None-Match: *`` in ``parent``
        (where the credentials may write) and refuse a service that accepts the second
        write: on it two deploys would both hold the lock and a record could be overwritten.
        Once per host."""
        if self._conditional_checked:
            return
        with errors(self.name):
            try:
                self.s3.head_bucket(Bucket=self.bucket)
            except Exception as exc:
                if error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
                    raise StoreError(
                        f"{self.name}: the bucket does not exist",
                        hint="create it (aws s3 mb) or fix the s3:// URI",
                    ) from exc
                raise
        probe = join(parent, f".tfship-conditional-probe-{os.urandom(4).hex()}")
        where = self._where(probe)
        with errors(where):
            try:
                self.s3.put_object(Bucket=self.bucket, Key=probe, Body=b"", IfNoneMatch="*")
                try:
                    self.s3.put_object(Bucket=self.bucket, Key=probe, Body=b"", IfNoneMatch="*")
                except Exception as exc:
                    if error_code(exc) not in CONFLICT_CODES:
                        raise
                else:
                    raise StoreError(
                        f"{self.name}: the S3 service ignores conditional writes "
                        "(If-None-Match: *): tfship's deploy lock and its append-only history "
                        "need them",
                        hint="use a service that enforces them (AWS S3, MinIO, Ceph RGW, "
                        "Cloudflare R2, SeaweedFS) or an SSH target",
                    )
            finally:
                with contextlib.suppress(Exception):
                    self.s3.delete_object(Bucket=self.bucket, Key=probe)
        self._conditional_checked = True

    def rename(self, src: str, dst: str) -> None:
        """Copy every object under ``src`` to ``dst`` (``saved_model.pb`` last), then delete
        ``src``. Not atomic: callers place versions so that a reader never takes a partial
        copy for a whole one (see the module docstring).

        Refused if ``dst`` exists, unless it is a copy cut off before its ``saved_model.pb``:
        that one is completed in place (objects it has that ``src`` lacks go first).
        """
        if self.is_file(join(dst, SAVED_MODEL_PB)) or self.is_file(dst):
            raise FileExistsError(self._where(dst))
        objects = list(self.keys(src))
        rels = [o["Key"][len(join(src)) + 1 :] for o in objects]
        stale = [o["Key"] for o in self.keys(dst) if o["Key"][len(join(dst)) + 1 :] not in rels]
        with errors(self._where(dst)):
            for start in range(0, len(stale), 1000):
                batch = [{"Key": k} for k in stale[start : start + 1000]]
                self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        rels.sort(key=lambda rel: (PurePosixPath(rel).name == SAVED_MODEL_PB, rel))
        with errors(self._where(dst)):
            for rel in rels:
                self.s3.copy_object(
                    Bucket=self.bucket,
                    Key=join(dst, rel),
                    CopySource={"Bucket": self.bucket, "Key": join(src, rel)},
                )
        self.remove_tree(src)

    def remove_tree(self, path: str) -> None:
        keys = [o["Key"] for o in self.keys(path)]
        if self.is_file(path):
            keys.append(join(path))
        # saved_model.pb first, in its own request: a version being removed stops being
        # loadable before anything else of it goes
        first = [k for k in keys if PurePosixPath(k).name == SAVED_MODEL_PB]
        rest = [k for k in keys if PurePosixPath(k).name != SAVED_MODEL_PB]
        with errors(self._where(path)):
            for group in (first, rest):
                for start in range(0, len(group), 1000):
                    batch = [{"Key": k} for k in group[start : start + 1000]]
                    self.s3.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                    )

    def put_tree(
        self, local: Path, remote: str, progress: Callable[[int], None] | None = None
    ) -> int:
        """Upload a folder below ``remote`` (which must not exist); ``saved_model.pb`` last."""
        if self.exists(remote):
            raise FileExistsError(self._where(remote))
        files = sorted(
            (p for p in Path(local).rglob("*") if p.is_file()),
            key=lambda p: (p.name == SAVED_MODEL_PB, p.relative_to(local).as_posix()),
        )
        sent = 0
        with errors(self._where(remote)):
            for p in files:
                self.s3.upload_file(
                    str(p), self.bucket, join(remote, p.relative_to(local).as_posix())
                )
                sent += p.stat().st_size
                if progress:
                    progress(sent)
        return sent

    def get_tree(self, remote: str, local: Path) -> None:
        objects = [o for o in self.keys(remote) if not o["Key"].endswith("/" + DIR_MARKER)]
        if not objects:
            raise StoreError(f"{self._where(remote)}: nothing there")
        local = Path(local)
        local.mkdir(parents=True, exist_ok=False)
        with errors(self._where(remote)):
            for o in objects:
                rel = o["Key"][len(join(remote)) + 1 :]
                if any(part in ("", ".", "..") for part in rel.split("/")):
                    raise StoreError(f"{self.name}/{o['Key']}: a key that leaves its folder")
                target = local / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(self.bucket, o["Key"], str(target))

    def hash_tree(self, path: str) -> dict[str, str]:
        """sha256 of every object below ``path``, read back from the service (not trusted
        from ETags, which are not content hashes for multipart uploads)."""
        out = {}
        for o in self.keys(path):
            rel = o["Key"][len(join(path)) + 1 :]
            if rel == DIR_MARKER:
                continue
            with errors(self._where(o["Key"])):
                body = self.s3.get_object(Bucket=self.bucket, Key=o["Key"])["Body"]
                out[rel] = _hash_body(body)[0]
        return dict(sorted(out.items()))

    def read_bytes(self, path: str) -> bytes:
        with errors(self._where(path)):
            try:
                return self.s3.get_object(Bucket=self.bucket, Key=join(path))["Body"].read()
            except Exception as exc:
                if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                    raise FileNotFoundError(self._where(path)) from exc
                raise

    def read_text(self, path: str) -> str:
        return self.read_bytes(path).decode()

    def write_text(self, path: str, text: str) -> None:
        """One PUT: an object is replaced whole or not at all."""
        with errors(self._where(path)):
            self.s3.put_object(Bucket=self.bucket, Key=join(path), Body=text.encode())

    def create(self, path: str, data: bytes) -> None:
        """Write an object that must not exist yet (``If-None-Match: *``); FileExistsError
        if it does: the append-only records are made of these."""
        self._put_new(join(path), data, self._where(path))

    def close(self) -> None:
        pass
