"""The file systems ``tfship serve`` reads model base paths from: local folders and ``s3://``.

TF Serving touches a base path only through TensorFlow's ``Env``
(``tensorflow/core/platform/env.h``): ``FileExists`` and ``GetChildren`` in the storage path
source, file reads in the SavedModel loader. A path with another scheme than the ones compiled
in fails with ``UNIMPLEMENTED: File system scheme '<s>' not implemented (file: '<path>')``
(``tsl/platform/env.cc`` ``GetFileSystemForFile``).

``s3://`` is tensorflow-io's file system (``tensorflow_io/core/filesystems/s3/s3_filesystem.cc``);
stock ``tensorflow_model_server`` >= 2.7 does not include it (tensorflow/serving#1963). A
server built with it behaves as follows, and so does this one:

- **Configuration**, read once per process. ``S3_ENDPOINT`` goes to
  ``S3Client::OverrideEndpoint``: ``http://host:port`` or ``https://host:port``; a bare
  ``host:port`` is HTTPS. ``S3_VERIFY_SSL`` starting with ``0`` turns verification off
  (``GetDefaultClientConfig``). **``S3_USE_HTTPS`` is not read**: tensorflow/io#1343 removed
  it (TensorFlow's own pre-2.7 S3 file system read it), so with a bare endpoint it changes
  nothing, and this server says so once. The region is the AWS SDK's (``ClientConfiguration``:
  ``AWS_DEFAULT_REGION``, then ``AWS_REGION``); credentials come from the AWS SDK's default
  chain. Paths are always path-style (the client is built with ``useVirtualAddressing =
  false``).
- **``Stat``** (``FileExists``): a ``HeadObject`` on the key, else a one-key
  ``ListObjectsV2`` of ``key/``; whatever failed on the way (no bucket, refused credentials,
  no service), the answer is ``NOT_FOUND: Object <path> does not exist``. The bucket itself
  is a ``HeadBucket``.
- **``GetChildren``**: the names directly below ``key/``: folders (prefixes) and objects.
- **Reads**: the loader reads the objects that are there when it reads them. This server
  copies every object below the version into a private cache folder, then loads that copy
  as a local SavedModel; the copy is deleted when the version unloads, fails, or the server
  stops. A version listed before its ``saved_model.pb`` exists fails to load, as upstream
  (and is retried as any failed load is), so a deploy that writes ``saved_model.pb`` last
  is never loaded half-written.

Credentials are never logged: an S3 failure is told by its error code (``s3.errors``).
boto3 is imported only when an ``s3://`` path is used.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from tfship import s3
from tfship.errors import TfshipError
from tfship.log import event
from tfship.server.status import RpcError

_SCHEME = re.compile(r"^([A-Za-z][0-9A-Za-z.]*)://")  # tsl/platform/path.cc ParseURI


class FileSystemError(RpcError):
    """Upstream's status, plus tfship's reading of the cause (``detail``: never a secret)."""

    def __init__(self, code: str, message: str, detail: str = "") -> None:
        super().__init__(code, message)
        self.detail = detail


def scheme(path: str) -> str:
    """The URI scheme of ``path`` (``""`` for a plain path)."""
    m = _SCHEME.match(path)
    return m.group(1) if m else ""


def plugin_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment as tensorflow-io's S3 file system reads it, for ``s3.client``.

    ``S3_USE_HTTPS`` dropped (not read: a bare ``S3_ENDPOINT`` is HTTPS); ``S3_VERIFY_SSL``
    off only when it starts with ``0``; the region as the AWS SDK resolves it.
    """
    env = dict(environ)
    env.pop("S3_USE_HTTPS", None)
    verify = environ.get("S3_VERIFY_SSL")
    if verify is not None:
        env["S3_VERIFY_SSL"] = "0" if verify.startswith("0") else "1"
    region = environ.get("AWS_DEFAULT_REGION") or environ.get("AWS_REGION")
    if region:
        env["AWS_REGION"] = region
    return env


def _status_of(exc: BaseException) -> str:
    """``TF_SetStatusFromAWSError``: the HTTP status of an S3 failure -> TF's code."""
    cause = exc.__cause__ if isinstance(exc, TfshipError) else exc
    response = getattr(cause, "response", None)
    http = 0
    if isinstance(response, dict):
        http = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if http == 400:
        return "INVALID_ARGUMENT"
    if http == 401:
        return "UNAUTHENTICATED"
    if http in (403, 405, 406, 407):
        return "PERMISSION_DENIED"
    if http == 404:
        return "NOT_FOUND"
    if http == 408:
        return "RESOURCE_EXHAUSTED"
    if http == 412:
        return "FAILED_PRECONDITION"
    if http == 416:
        return "OUT_OF_RANGE"
    return "INTERNAL" if http >= 500 else "UNKNOWN"


def _detail(exc: BaseException) -> str:
    """tfship's one line for an S3 failure: the error code and where, never credentials."""
    if isinstance(exc, TfshipError):
        return str(exc)
    return type(exc).__name__


class FileSystems:
    """TensorFlow's ``Env::Default()`` for one server: local paths and ``s3://``."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._client: Any = None
        self._hosts: dict[str, s3.S3Host] = {}
        self._cache: Path | None = None
        self._lock = threading.Lock()

    # --- the Env calls the storage path source makes -------------------------------------------
    def file_exists(self, path: str) -> None:
        """``Env::FileExists``: returns if ``path`` exists, else raises its status."""
        if self._kind(path) == "local":
            local = _local(path)
            if not os.path.exists(local):
                raise RpcError("NOT_FOUND", f"{local} not found")
            return
        detail = "no object has this key, or starts with it and '/'"
        try:
            uri = s3.S3Uri.parse(path)
            host = self._host(uri.bucket)
            if not uri.key:  # Stat on a bucket: HeadBucket, with the service's own status
                with s3.errors(path):
                    host.s3.head_bucket(Bucket=uri.bucket)
                return
            if host.exists(uri.key):
                return
        except Exception as exc:  # Stat: any failure on the way ends as NOT_FOUND
            if not uri_key_of(path):
                raise FileSystemError(_status_of(exc), _detail(exc), _detail(exc)) from exc
            detail = _detail(exc)
        raise FileSystemError("NOT_FOUND", f"Object {path} does not exist", detail)

    def get_children(self, path: str) -> list[str]:
        """``Env::GetChildren``: the names directly below ``path``.

        For ``s3://`` the names are derived from a flat listing (every key below), which is
        what AWS S3 answers to the plugin's ``Delimiter=/`` listing: a prefix is a child while
        an object is below it. (SeaweedFS, whose filer keeps real folders, goes on reporting
        an emptied prefix as a common prefix; AWS S3 does not, and this follows AWS.)
        """
        if self._kind(path) == "local":
            local = _local(path)
            try:
                return os.listdir(local)
            except OSError as exc:
                denied = isinstance(exc, PermissionError)
                code = "PERMISSION_DENIED" if denied else "FAILED_PRECONDITION"
                raise RpcError(code, f"{local}; {exc.strerror}") from exc
        try:
            uri = s3.S3Uri.parse(path)
            return self._host(uri.bucket).listdir(uri.key)
        except TfshipError as exc:
            raise FileSystemError(_status_of(exc), _detail(exc), _detail(exc)) from exc

    # --- what the loader reads -----------------------------------------------------------------
    def local_copy(self, path: str, model: str = "", version: int | None = None) -> str:
        """A local folder holding the version at ``path``: ``path`` itself when local, else a
        fresh copy of every object below it in this server's cache (``release`` deletes it).
        """
        if self._kind(path) == "local":
            return _local(path)
        started = time.monotonic()
        uri = s3.S3Uri.parse(path)
        host = self._host(uri.bucket)
        label = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{model}-{version}")
        target = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=self._cache_root()))
        count = size = 0
        try:
            keys = [o["Key"] for o in host.keys(uri.key)]
            for key in keys:
                rel = key[len(uri.key) + 1 :] if uri.key else key
                parts = PurePosixPath(rel).parts
                if not rel or rel.endswith("/") or any(p in ("", ".", "..") for p in parts):
                    continue  # a folder marker, or a key that would leave the copy
                dest = target.joinpath(*parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with s3.errors(f"{path}/{rel}"):
                    host.s3.download_file(uri.bucket, key, str(dest))
                count += 1
                size += dest.stat().st_size
        except (TfshipError, OSError) as exc:
            self.release(str(target))
            raise FileSystemError(_status_of(exc), f"{path}: {_detail(exc)}") from exc
        except BaseException:
            self.release(str(target))
            raise
        event(
            "serve",
            "copied from bucket",
            model=model or None,
            version=version,
            source=path,
            files=count,
            bytes=size,
            s=f"{time.monotonic() - started:.2f}",
        )
        return str(target)

    def release(self, local: str) -> None:
        """Delete a copy ``local_copy`` made; anything outside this server's cache is kept."""
        cache = self._cache
        if cache is None:
            return
        path = Path(local).resolve()
        if path != cache and path.is_relative_to(cache):
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        """Delete the cache folder and everything in it."""
        with self._lock:
            cache, self._cache = self._cache, None
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)

    # --- internals -------------------------------------------------------------------------------
    def _kind(self, path: str) -> str:
        found = scheme(path)
        if found in ("", "file"):  # TF's POSIX file system serves both
            return "local"
        if found == "s3":
            return "s3"
        raise RpcError(
            "UNIMPLEMENTED", f"File system scheme '{found}' not implemented (file: '{path}')"
        )

    def _host(self, bucket: str) -> s3.S3Host:
        with self._lock:
            if self._client is None:
                env = self._environ
                if env.get("S3_USE_HTTPS") and "://" not in env.get("S3_ENDPOINT", "://"):
                    event(
                        "serve",
                        "S3_USE_HTTPS is not read by TF Serving's S3 file system "
                        "(tensorflow-io): a bare S3_ENDPOINT is https; write the scheme in it, "
                        "e.g. S3_ENDPOINT=http://host:9000",
                    )
                self._client = s3.client(plugin_env(env))
            host = self._hosts.get(bucket)
            if host is None:
                host = self._hosts[bucket] = s3.S3Host(bucket, self._client)
            return host

    def _cache_root(self) -> Path:
        with self._lock:
            if self._cache is None:
                self._cache = Path(tempfile.mkdtemp(prefix="tfship-serve-")).resolve()
            return self._cache


def uri_key_of(path: str) -> str:
    """The key part of an ``s3://bucket/key`` path, unparsed (``""``: the bucket itself)."""
    rest = path.split("://", 1)[-1]
    return rest.partition("/")[2].strip("/")


def _local(path: str) -> str:
    """``file:///a/b`` -> ``/a/b`` (TF's POSIX ``TranslateName``); a plain path unchanged."""
    return path[len("file://") :] if path.startswith("file://") else path
