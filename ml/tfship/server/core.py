"""The model manager of ``tfship serve``: TF Serving's server core, in Python.

Each behaviour cites where ``tensorflow_model_server`` does it (tensorflow/serving):

- ``ServerCore::ReloadConfig`` (``model_servers/server_core.cc``): config validation, version
  labels checked *before* anything loads (``UpdateModelVersionLabelMap``; a label for a
  version that is not AVAILABLE is refused unless
  ``--allow_version_labels_for_unavailable_models``), then a wait until every *new* model
  has a version AVAILABLE or failed for good (``WaitUntilModelsAvailable``; at start-up
  ``load_servables_fast.cc``). Until then the server opens no port (``server.cc``).
- ``FileSystemStoragePathSource`` (``sources/storage_path/file_system_storage_path_source.cc``):
  a child of the base path is a version if its name parses as an int64 (``absl::SimpleAtoi``);
  a missing or unreadable base path logs an error and changes nothing for any model. Paths
  are read through TF's file systems (:mod:`tfship.server.filesystem`): local, or ``s3://``
  as tensorflow-io's S3 file system reads a bucket; a bucket's version is loaded from a
  local copy that is deleted when the version unloads.
- ``AvailabilityPreservingPolicy`` (``core/availability_preserving_policy.cc``): the highest
  new aspired version loads first; an old version is unloaded only once an aspired one is
  AVAILABLE (or nothing is aspired any more).
- ``LoaderHarness::Load`` (``core/loader_harness.cc``) with ``util/retrier.cc``: a failed load
  (the SavedModel or its warmup) is retried ``--max_num_load_retries`` times,
  ``--load_retry_interval_micros`` apart, showing LOADING meanwhile; then END with the last
  error, not retried while the version stays on disk; retries stop if it leaves the disk.
- ``ServableStateMonitor``: every version ever seen keeps its last state (END included).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from tfship.log import event, quiet_tensorflow

quiet_tensorflow()

from tfship.server.config import ModelConfig, check_platform, validate  # noqa: E402
from tfship.server.filesystem import FileSystemError, FileSystems  # noqa: E402
from tfship.server.monitoring import REGISTRY  # noqa: E402
from tfship.server.servable import Servable, ServableOptions  # noqa: E402
from tfship.server.status import RpcError, from_tf_error, not_found_servable  # noqa: E402

STATES = ("UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END")
_INT64 = (-(2**63), 2**63 - 1)
_SIMPLE_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)[ \t\n\v\f\r]*")


@dataclass
class CoreOptions:
    """Manager flags, in TF Serving's meaning (``model_servers/main.cc``)."""

    poll_seconds: float = 1.0  # --file_system_poll_wait_seconds (0: at start and reloads only)
    max_num_load_retries: int = 5
    load_retry_interval_seconds: float = 60.0  # --load_retry_interval_micros / 1e6
    allow_version_labels_for_unavailable_models: bool = False
    servable: ServableOptions = field(default_factory=ServableOptions)


@dataclass
class VersionStatus:
    """One row of GetModelStatus."""

    version: int
    state: str = "START"
    error_code: str = "OK"
    error_message: str = ""
    changed: float = field(default_factory=time.monotonic)


@dataclass
class Model:
    """The versions of one configured model that this process holds."""

    cfg: ModelConfig
    loaded: dict[int, Servable] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)  # END for good while on disk


def parse_version(name: str) -> int | None:
    """``absl::SimpleAtoi`` on a child's name: ``00000123`` is 123, ``v1`` is not a version."""
    m = _SIMPLE_ATOI.fullmatch(name)
    if not m:
        return None
    value = int(m.group(1))
    return value if _INT64[0] <= value <= _INT64[1] else None


def list_versions(cfg: ModelConfig, fs: FileSystems) -> dict[int, str]:
    """``PollFileSystemForServable``: versions on disk, or RpcError for an unusable base path.

    Raises :class:`FileSystemError` (its ``detail`` says why, for the log) when the file
    system gave one.
    """
    base = cfg.base_path
    try:
        fs.file_exists(base)
    except RpcError as exc:
        error = FileSystemError(
            "INVALID_ARGUMENT",
            f"Could not find base path {base} for servable {cfg.name} with error {exc}",
            getattr(exc, "detail", ""),
        )
        raise error from exc
    names = fs.get_children(base)
    found: dict[int, str] = {}
    # GetChildren returns every descendant on some cloud file systems: keep the first part.
    children = sorted({name.split("/", 1)[0] for name in names})
    for child in children:  # a duplicate version: the name sorting last wins (upstream)
        version = parse_version(child)
        if version is not None:
            found[version] = f"{base.rstrip('/')}/{child}"
    return found


def aspired(cfg: ModelConfig, versions: list[int]) -> list[int]:
    """The versions the model's version policy wants loaded, highest first."""
    versions = sorted(versions, reverse=True)
    if cfg.policy == "all":
        return versions
    if cfg.policy == "specific":
        return [v for v in versions if v in cfg.specific]
    return versions[: cfg.latest_n]


class ServerCore:
    """Manages every configured model; the REST and gRPC front ends share it."""

    def __init__(self, options: CoreOptions | None = None) -> None:
        self.options = options or CoreOptions()
        self.models: dict[str, Model] = {}
        self.history: dict[str, dict[int, VersionStatus]] = {}
        self.labels: dict[str, dict[str, int]] | None = None  # null until the first config
        self.lock = threading.RLock()
        self.config_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._said: dict[str, str] = {}
        self.fs = FileSystems()

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the manager thread (it polls at once, then every poll interval)."""
        self._thread = threading.Thread(target=self._loop, name="tfship-manager", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and unload everything."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=30)
        with self.lock:
            models = list(self.models.values())
        for model in models:
            for v in list(model.loaded):
                self._unload(model, v)
        self.fs.close()  # the local copies of bucket versions

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.poll()
            except Exception as exc:  # keep serving whatever happens on disk
                event("serve", f"poll failed: {type(exc).__name__}: {exc}")
            wait = self.options.poll_seconds
            self._wake.wait(wait if wait > 0 else None)

    # --- configuration -------------------------------------------------------------------------
    def reload(self, configs: list[ModelConfig], startup: bool = False) -> None:
        """``ServerCore::ReloadConfig``: validate, label, apply, wait for the new models."""
        with self.config_lock:
            validate(configs)
            self._update_labels(configs)
            for cfg in configs:
                check_platform(cfg)
            since = time.monotonic()
            with self.lock:
                new = [c.name for c in configs if c.name not in self.models]
                models = {}
                for cfg in configs:
                    model = self.models.get(cfg.name) or Model(cfg)
                    model.cfg = cfg
                    models[cfg.name] = model
                removed = [m for n, m in self.models.items() if n not in models]
                self.models = models
            for model in removed:  # unloaded at once; their states stay in the history
                for v in list(model.loaded):
                    self._unload(model, v)
            self._wake.set()
            failures = self._wait_decisive(new, since)
        if failures:
            what = "servable(s)" if startup else "model(s)"
            listed = "".join(
                f"{{{{name: {n} version: {s.version}}} due to error: "
                f"{s.error_code}: {s.error_message}}}, "
                for n, s in failures
            )
            raise RpcError(
                "UNKNOWN", f"{len(failures)} {what} did not become available: {{{listed}}}"
            )

    def _update_labels(self, configs: list[ModelConfig]) -> None:
        """``UpdateModelVersionLabelMap``: each label must point at an AVAILABLE version."""
        new: dict[str, dict[str, int]] = {}
        allow_flag = self.options.allow_version_labels_for_unavailable_models
        for cfg in configs:
            states = self.history.get(cfg.name, {})
            for label, version in cfg.labels.items():
                allow = False
                if allow_flag:  # allowed unless it moves an existing label to another version
                    existing = (self.labels or {}).get(cfg.name, {}).get(label)
                    allow = existing is None or existing == version
                state = states.get(version)
                if not allow and (state is None or state.state != "AVAILABLE"):
                    raise RpcError(
                        "FAILED_PRECONDITION",
                        f"Request to assign label to version {version} of model {cfg.name}, "
                        "which is not currently available for inference",
                    )
                new.setdefault(cfg.name, {})[label] = version
        with self.lock:
            self.labels = new

    def _wait_decisive(self, names: list[str], since: float) -> list[tuple[str, VersionStatus]]:
        """Block until each model has a version AVAILABLE or END (no timeout, as upstream)."""
        failures: list[tuple[str, VersionStatus]] = []
        pending = list(names)
        while pending and not self._stop.is_set():
            for name in list(pending):
                with self.lock:
                    rows = [
                        s
                        for s in self.history.get(name, {}).values()
                        if s.changed >= since and s.state in ("AVAILABLE", "END")
                    ]
                if not rows:
                    continue
                pending.remove(name)
                if not any(s.state == "AVAILABLE" for s in rows):
                    failures.append((name, max(rows, key=lambda s: s.version)))
            if pending:
                time.sleep(0.02)
        return failures

    # --- polling -------------------------------------------------------------------------------
    def poll(self) -> None:
        """One pass of the file system source and the manager over every model."""
        with self.lock:
            models = list(self.models.values())
        listings = {}
        for model in models:
            try:
                listings[model.cfg.name] = list_versions(model.cfg, self.fs)
            except RpcError as exc:
                # Upstream's source stops at the first error: no model changes this poll.
                detail = getattr(exc, "detail", "")
                self._say(
                    "poll",
                    f"FileSystemStoragePathSource encountered a filesystem access "
                    f"error: {exc.message}" + (f" [tfship: {detail}]" if detail else ""),
                )
                return
        self._said.pop("poll", None)
        for model in models:
            if self._stop.is_set():
                return
            self._reconcile(model, listings[model.cfg.name])

    def _say(self, key: str, message: str) -> None:
        """Log a recurring condition once, not on every poll."""
        if self._said.get(key) != message:
            self._said[key] = message
            event("serve", message)

    def _reconcile(self, model: Model, on_disk: dict[int, str]) -> None:
        cfg = model.cfg
        wanted = aspired(cfg, list(on_disk))
        if not on_disk:
            self._say(
                f"empty:{cfg.name}",
                f"No versions of servable {cfg.name} found under base path {cfg.base_path}. "
                "Did you forget to name your leaf directory as a number (eg. '/1/')?",
            )
        else:
            self._said.pop(f"empty:{cfg.name}", None)
        for v in list(model.failed):
            if v not in on_disk:  # gone from disk: a new load if it comes back
                del model.failed[v]
        fresh = [v for v in wanted if v not in model.loaded and v not in model.failed]
        for v in fresh:
            self._set(cfg.name, v, "START")
        self._unload_unaspired(model, wanted)
        for v in fresh:  # highest first
            if self._stop.is_set() or v not in self._current_aspired(model):
                break
            self._load(model, v, on_disk[v])
            self._unload_unaspired(model, wanted)

    def _current_aspired(self, model: Model) -> list[int]:
        try:
            return aspired(model.cfg, list(list_versions(model.cfg, self.fs)))
        except RpcError:
            return []

    def _unload_unaspired(self, model: Model, wanted: list[int]) -> None:
        """``AvailabilityPreservingPolicy``: unload the lowest un-aspired version while allowed."""
        while True:
            ready = [v for v in model.loaded if v not in wanted]
            if not ready:
                return
            aspired_ready = any(v in model.loaded for v in wanted)
            if wanted and not aspired_ready and len(ready) <= 1:
                return
            self._unload(model, min(ready))

    def _set(self, name: str, version: int, state: str, code: str = "OK", msg: str = "") -> None:
        with self.lock:
            self.history.setdefault(name, {})[version] = VersionStatus(version, state, code, msg)

    def _load(self, model: Model, version: int, path: str) -> None:
        name = model.cfg.name
        attempts = 1 + max(self.options.max_num_load_retries, 0)
        self._set(name, version, "LOADING")
        last: RpcError | None = None
        for attempt in range(attempts):
            if attempt:
                event("serve", "retrying load", model=name, version=version, retry=attempt)
            event("serve", "loading", model=name, version=version)
            started = time.monotonic()
            servable = None
            local = None
            try:
                # A bucket's version: a fresh local copy per attempt (what is there now).
                local = self.fs.local_copy(path, model=name, version=version)
                servable = Servable(name, version, local, self.options.servable, source=path)
                REGISTRY.load_attempts.increment(path, "success")
                REGISTRY.load_latency.increment(path, by=int((time.monotonic() - started) * 1e6))
                warm = servable.warmup()
            except Exception as exc:  # a broken SavedModel, its warmup, a vanished folder
                if servable is not None:
                    servable.close()
                else:
                    REGISTRY.load_attempts.increment(path, "fail")
                last = from_tf_error(exc)
                if local is not None:
                    self.fs.release(local)
                    if local != path:  # name the bucket's version, not this server's copy
                        last = RpcError(last.code, last.message.replace(local, path))
                first_line = (last.message.splitlines() or [""])[0][:200]
                event(
                    "serve",
                    "load failed",
                    model=name,
                    version=version,
                    error=f"{last.code}: {first_line}",
                )
                if attempt + 1 < attempts and not self._wait_retry(model, version):
                    break
                continue
            with self.lock:
                model.loaded[version] = servable
            self._set(name, version, "AVAILABLE")
            event(
                "serve",
                "available",
                model=name,
                version=version,
                warmup=warm,
                s=f"{time.monotonic() - started:.2f}",
            )
            return
        assert last is not None
        model.failed[version] = path
        self._set(name, version, "END", last.code, last.message)

    def _wait_retry(self, model: Model, version: int) -> bool:
        """Sleep the retry interval; False if the version stopped being aspired meanwhile."""
        deadline = time.monotonic() + max(self.options.load_retry_interval_seconds, 0.0)
        while True:
            if self._stop.is_set() or version not in self._current_aspired(model):
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            self._stop.wait(min(left, max(self.options.poll_seconds, 0.1)))

    def _unload(self, model: Model, version: int) -> None:
        self._set(model.cfg.name, version, "UNLOADING")
        with self.lock:
            servable = model.loaded.pop(version, None)
        if servable is not None:
            servable.close()
            self.fs.release(servable.path)  # a bucket version's local copy
        self._set(model.cfg.name, version, "END")
        event("serve", "unloaded", model=model.cfg.name, version=version)

    # --- lookups -------------------------------------------------------------------------------
    def resolve_version(self, name: str, label: str) -> int:
        """``GetModelVersionForLabel``."""
        with self.lock:
            if self.labels is None:
                raise RpcError("UNAVAILABLE", f"Model labels does not init yet.{label}")
            version = self.labels.get(name, {}).get(label)
        if version is None:
            raise RpcError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
        return version

    @contextlib.contextmanager
    def handle(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> Iterator[Servable]:
        """``ServerCore::GetServableHandle``: hold a version for one request.

        While held, an unload of that version waits (the old version of a swap finishes the
        requests it already has).
        """
        with self.lock:
            servable = self.servable(name, version, label)
            servable.acquire()
        try:
            yield servable
        finally:
            servable.release()

    def servable(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a model spec names (for metadata; requests use :meth:`handle`)."""
        if not name:
            raise RpcError("INVALID_ARGUMENT", "ModelSpec has no name specified.")
        if label is not None:
            version = self.resolve_version(name, label)
        with self.lock:
            model = self.models.get(name)
            if model is None:
                raise not_found_servable(name, version)
            if version is None:
                if not model.loaded:
                    raise not_found_servable(name, None)
                return model.loaded[max(model.loaded)]
            servable = model.loaded.get(version)
            if servable is None:
                raise not_found_servable(name, version)
            return servable

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """``GetModelStatusImpl``: every version seen (END included), highest first.

        A version label is not looked at: upstream lists all versions for it.
        """
        with self.lock:
            rows = self.history.get(name, {})
            if version is not None:
                if version not in rows:
                    raise RpcError("NOT_FOUND", f"Could not find version {version} of model {name}")
                return [rows[version]]
            if not rows:
                raise RpcError("NOT_FOUND", f"Could not find any versions of model {name}")
            return [rows[v] for v in sorted(rows, reverse=True)]

    def configs(self) -> list[ModelConfig]:
        """The configs now in force."""
        with self.lock:
            return [m.cfg for m in self.models.values()]
