"""The model manager of ``tfship serve``: TF Serving's server core, in Python.

What it does as ``tensorflow_model_server`` does (``shared/docs/tf-serving.md``):

- polls each model's base path every ``file_system_poll_wait_seconds``; a child folder is a
  version only if its whole name is an integer;
- version policy ``latest N`` (default 1), ``all`` or ``specific {versions}``;
- availability-preserving: an old version keeps answering until the new one is AVAILABLE; a
  version that fails to load ends in END with its error and is not retried while it stays on
  disk, and the previous version keeps serving;
- replays ``assets.extra/tf_serving_warmup_requests`` before a version becomes AVAILABLE;
- version labels from the model config; a label may only point at an AVAILABLE version.

Errors are :class:`RpcError` carrying the gRPC status name and TF Serving's message text; the
REST and gRPC front ends map them to HTTP codes / gRPC status codes.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfship.log import event, quiet_tensorflow

quiet_tensorflow()

import tensorflow as tf  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2  # noqa: E402
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

DEFAULT_SIGNATURE = "serving_default"
STATES = ("UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END")


class RpcError(Exception):
    """A failure with a gRPC status name (``NOT_FOUND``...) and TF Serving's message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def not_found_servable(name: str, version: int | None) -> RpcError:
    spec = f"Latest({name})" if version is None else f"Specific({name}, {version})"
    return RpcError("NOT_FOUND", f"Servable not found for request: {spec}")


@dataclass
class VersionStatus:
    """One row of GetModelStatus."""

    version: int
    state: str = "START"
    error_code: str = "OK"
    error_message: str = ""


@dataclass
class ModelConfig:
    """One ``config { ... }`` of the model config file (or the --model_name flags)."""

    name: str
    base_path: str
    policy: str = "latest"  # latest | all | specific
    latest_n: int = 1
    specific: tuple[int, ...] = ()
    labels: dict[str, int] = field(default_factory=dict)


def parse_config_text(text: str) -> list[ModelConfig]:
    """Parse a TF Serving model config file (text proto) with tensorflow-serving-api's protos."""
    proto = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(text, proto)
    out = []
    for c in proto.model_config_list.config:
        policy = c.model_version_policy.WhichOneof("policy_choice") or "latest"
        cfg = ModelConfig(
            name=c.name, base_path=c.base_path, policy=policy, labels=dict(c.version_labels)
        )
        if policy == "latest":
            cfg.latest_n = c.model_version_policy.latest.num_versions or 1
        elif policy == "specific":
            cfg.specific = tuple(c.model_version_policy.specific.versions)
        out.append(cfg)
    return out


def config_proto(configs: list[ModelConfig]) -> model_server_config_pb2.ModelServerConfig:
    """The inverse of :func:`parse_config_text` (used by tests and the reload RPC)."""
    proto = model_server_config_pb2.ModelServerConfig()
    for cfg in configs:
        c = proto.model_config_list.config.add(
            name=cfg.name, base_path=cfg.base_path, model_platform="tensorflow"
        )
        if cfg.policy == "all":
            c.model_version_policy.all.SetInParent()
        elif cfg.policy == "specific":
            c.model_version_policy.specific.versions.extend(cfg.specific)
        else:
            c.model_version_policy.latest.num_versions = cfg.latest_n
        for k, v in cfg.labels.items():
            c.version_labels[k] = v
    return proto


def configs_from_proto(proto: model_server_config_pb2.ModelServerConfig) -> list[ModelConfig]:
    """ModelServerConfig proto -> configs."""
    return parse_config_text(text_format.MessageToString(proto))


def disk_versions(base_path: str) -> dict[int, str]:
    """Versions on disk: children whose whole name is an integer (``00000123`` is 123)."""
    try:
        names = os.listdir(base_path)
    except OSError:
        return {}
    out: dict[int, str] = {}
    for n in names:
        if n.isdigit() and os.path.isdir(os.path.join(base_path, n)):
            out.setdefault(int(n), os.path.join(base_path, n))
    return out


def aspired(cfg: ModelConfig, versions: list[int]) -> list[int]:
    """The versions the policy wants loaded, highest first."""
    versions = sorted(versions, reverse=True)
    if cfg.policy == "all":
        return versions
    if cfg.policy == "specific":
        return [v for v in versions if v in cfg.specific]
    return versions[: cfg.latest_n]


class Servable:
    """One loaded version: the SavedModel's signature functions and SignatureDef protos."""

    def __init__(self, name: str, version: int, path: str) -> None:
        self.name = name
        self.version = version
        self.path = path
        pb = saved_model_pb2.SavedModel()
        pb.ParseFromString(Path(path, "saved_model.pb").read_bytes())
        meta = next(
            (m for m in pb.meta_graphs if "serve" in m.meta_info_def.tags), pb.meta_graphs[0]
        )
        self.signature_defs: dict[str, meta_graph_pb2.SignatureDef] = dict(meta.signature_def)
        self.model = tf.saved_model.load(path, tags=["serve"])
        self.functions = dict(self.model.signatures)

    def signature(self, name: str) -> tuple[meta_graph_pb2.SignatureDef, Callable]:
        """SignatureDef and function for ``name`` ('' means serving_default)."""
        name = name or DEFAULT_SIGNATURE
        if name not in self.signature_defs or name not in self.functions:
            raise RpcError(
                "INVALID_ARGUMENT", f'Serving signature name: "{name}" not found in signature def'
            )
        return self.signature_defs[name], self.functions[name]

    def run(
        self,
        signature_name: str,
        inputs: dict[str, np.ndarray],
        output_filter: list[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run a signature on NumPy inputs (validated against the SignatureDef)."""
        sig, fn = self.signature(signature_name)
        expected = set(sig.inputs)
        if set(inputs) != expected:
            missing = sorted(expected - set(inputs))
            extra = sorted(set(inputs) - expected)
            if extra:
                raise RpcError(
                    "INVALID_ARGUMENT",
                    f"input tensor alias not found in signature: {extra[0]}. Inputs "
                    f"expected to be in the set {{{','.join(sorted(expected))}}}.",
                )
            raise RpcError(
                "INVALID_ARGUMENT",
                f"Request inputs do not match required inputs for model "
                f"`{self.name}`. Missing inputs: {','.join(missing)}.",
            )
        feed = {}
        for key, value in inputs.items():
            dtype = tf.dtypes.as_dtype(sig.inputs[key].dtype)
            try:
                feed[key] = tf.constant(value, dtype=dtype)
            except (TypeError, ValueError) as exc:
                raise RpcError("INVALID_ARGUMENT", f"{key}: {exc}") from exc
        try:
            out = fn(**feed)
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as exc:
            msg = getattr(exc, "message", None) or str(exc)
            raise RpcError("INVALID_ARGUMENT", msg.strip().splitlines()[0]) from exc
        result = {k: v.numpy() for k, v in out.items()}
        if output_filter:
            unknown = [k for k in output_filter if k not in result]
            if unknown:
                raise RpcError(
                    "INVALID_ARGUMENT", f"output tensor alias not found in signature: {unknown[0]}"
                )
            result = {k: result[k] for k in output_filter}
        return result

    def _example_signature(self, name: str, method: str) -> tuple[str, str]:
        sig, _ = self.signature(name)
        if sig.method_name != method:
            kind = method.rsplit("/", 1)[-1]
            raise RpcError(
                "INVALID_ARGUMENT",
                f"Expected {'classification' if kind == 'classify' else 'regression'} signature "
                f"method_name to be {method}. Was: {sig.method_name}",
            )
        if len(sig.inputs) != 1:
            raise RpcError("INVALID_ARGUMENT", f"Expected one input Tensor, got {len(sig.inputs)}")
        key = next(iter(sig.inputs))
        if sig.inputs[key].dtype != tf.string.as_datatype_enum:
            raise RpcError(
                "INVALID_ARGUMENT", "Input tensor must be of type string (serialized tf.Examples)"
            )
        return name or DEFAULT_SIGNATURE, key

    def classify(self, signature_name: str, examples: list[bytes]) -> list[list[tuple[str, float]]]:
        """TF Serving's Classify: per example, (label, score) pairs."""
        name, key = self._example_signature(signature_name, "tensorflow/serving/classify")
        out = self.run(name, {key: np.asarray(examples, dtype=object)})
        scores = out.get("scores")
        classes = out.get("classes")
        n = len(examples)
        rows = []
        for i in range(n):
            s = np.asarray(scores[i]).reshape(-1) if scores is not None else None
            c = np.asarray(classes[i]).reshape(-1) if classes is not None else None
            k = len(s) if s is not None else len(c)
            rows.append(
                [
                    (
                        (c[j].decode() if isinstance(c[j], bytes) else str(c[j]))
                        if c is not None
                        else "",
                        float(s[j]) if s is not None else 0.0,
                    )
                    for j in range(k)
                ]
            )
        return rows

    def regress(self, signature_name: str, examples: list[bytes]) -> list[float]:
        """TF Serving's Regress: one value per example."""
        name, key = self._example_signature(signature_name, "tensorflow/serving/regress")
        out = self.run(name, {key: np.asarray(examples, dtype=object)})
        values = out.get("outputs")
        if values is None:
            raise RpcError("INVALID_ARGUMENT", "No outputs tensor in regression signature")
        return [float(v) for v in np.asarray(values).reshape(len(examples), -1)[:, 0]]

    def warmup(self) -> int:
        """Replay ``assets.extra/tf_serving_warmup_requests``; return how many ran."""
        path = Path(self.path, "assets.extra", "tf_serving_warmup_requests")
        if not path.exists():
            return 0
        from tensorflow_serving.apis import prediction_log_pb2

        count = 0
        for record in tf.data.TFRecordDataset(str(path)):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log.WhichOneof("log_type") == "predict_log":
                req = log.predict_log.request
                inputs = {k: tf.make_ndarray(v) for k, v in req.inputs.items()}
                self.run(req.model_spec.signature_name, inputs)
                count += 1
        return count


class Model:
    """All versions of one model name: statuses, loaded servables, labels."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.status: dict[int, VersionStatus] = {}
        self.loaded: dict[int, Servable] = {}
        self.failed_paths: dict[int, str] = {}
        self.lock = threading.RLock()

    def available(self) -> list[int]:
        with self.lock:
            return sorted(
                (v for v, s in self.status.items() if s.state == "AVAILABLE" and v in self.loaded),
                reverse=True,
            )


class ServerCore:
    """Manages every configured model; thread-safe; the REST and gRPC front ends share it."""

    def __init__(self, configs: list[ModelConfig], poll_seconds: float = 1.0) -> None:
        self.poll_seconds = poll_seconds
        self.models: dict[str, Model] = {}
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.set_configs(configs, validate_labels=False)

    # --- configuration -------------------------------------------------------------------
    def set_configs(self, configs: list[ModelConfig], validate_labels: bool = True) -> None:
        """Replace the whole config (what HandleReloadConfigRequest does)."""
        with self.lock:
            if validate_labels:
                for cfg in configs:
                    model = self.models.get(cfg.name)
                    available = model.available() if model else []
                    for version in cfg.labels.values():
                        if version not in available:
                            raise RpcError(
                                "FAILED_PRECONDITION",
                                f"Request to assign label to version {version} of model "
                                f"{cfg.name}, which is not currently available for inference",
                            )
            new = {}
            for cfg in configs:
                model = self.models.get(cfg.name) or Model(cfg)
                model.cfg = cfg
                new[cfg.name] = model
            removed = [m for n, m in self.models.items() if n not in new]
            self.models = new
        for model in removed:
            for v in list(model.loaded):
                self._unload(model, v)

    # --- polling ---------------------------------------------------------------------------
    def start(self) -> None:
        """Poll once now (load what is there), then keep polling in the background."""
        self.poll()
        # TensorFlow's own objects live as long as the process: freezing them keeps each
        # unload's collection (which frees the old version's cycles) short, not ~150 ms.
        gc.collect()
        gc.freeze()
        if self.poll_seconds > 0:
            self._thread = threading.Thread(target=self._loop, name="tfship-poll", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception as exc:  # keep serving whatever happens on disk
                event("serve", f"poll failed: {type(exc).__name__}: {exc}")

    def poll(self) -> None:
        """One pass over every model: load aspired versions, then unload what is not."""
        with self.lock:
            models = list(self.models.values())
        for model in models:
            self._reconcile(model)

    def _reconcile(self, model: Model) -> None:
        cfg = model.cfg
        on_disk = disk_versions(cfg.base_path)
        wanted = aspired(cfg, list(on_disk))
        for v in list(model.failed_paths):
            if v not in on_disk:  # gone from disk: may be retried if it comes back
                del model.failed_paths[v]
        for v in sorted(wanted):  # load oldest first so the newest ends up answering
            if v in model.loaded or v in model.failed_paths:
                continue
            self._load(model, v, on_disk[v])
        # Availability-preserving: drop versions that are no longer wanted only once a wanted
        # version is AVAILABLE (or nothing wanted remains on disk).
        wanted_available = [v for v in wanted if v in model.loaded]
        for v in list(model.loaded):
            if v in wanted:
                continue
            if wanted_available or not wanted:
                self._unload(model, v)

    def _load(self, model: Model, version: int, path: str) -> None:
        name = model.cfg.name
        with model.lock:
            model.status[version] = VersionStatus(version, "LOADING")
        event("serve", "loading", model=name, version=version)
        started = time.monotonic()
        try:
            servable = Servable(name, version, path)
            warm = servable.warmup()
        except Exception as exc:
            message = (getattr(exc, "message", None) or str(exc) or type(exc).__name__).strip()
            with model.lock:
                model.status[version] = VersionStatus(version, "END", _error_code(exc), message)
                model.failed_paths[version] = path
            event(
                "serve",
                "load failed",
                model=name,
                version=version,
                error=message.splitlines()[0][:200],
            )
            return
        with model.lock:
            model.loaded[version] = servable
            model.status[version] = VersionStatus(version, "AVAILABLE")
        event(
            "serve",
            "available",
            model=name,
            version=version,
            warmup=warm,
            s=f"{time.monotonic() - started:.2f}",
        )

    def _unload(self, model: Model, version: int) -> None:
        with model.lock:
            model.status[version] = VersionStatus(version, "UNLOADING")
            model.loaded.pop(version, None)
            model.status[version] = VersionStatus(version, "END")
        gc.collect()
        event("serve", "unloaded", model=model.cfg.name, version=version)

    # --- lookups ---------------------------------------------------------------------------
    def _model(self, name: str) -> Model | None:
        with self.lock:
            return self.models.get(name)

    def resolve_version(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> int | None:
        """The version a request names (by number or label), or None for latest."""
        if label is None:
            return version
        model = self._model(name)
        if model is None or label not in model.cfg.labels:
            raise RpcError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
        return model.cfg.labels[label]

    def servable(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable answering a request; NOT_FOUND as TF Serving words it."""
        if not name:
            raise RpcError("INVALID_ARGUMENT", "Missing ModelSpec")
        version = self.resolve_version(name, version, label)
        model = self._model(name)
        if model is None:
            raise not_found_servable(name, version)
        with model.lock:
            if version is None:
                available = model.available()
                if not available:
                    raise not_found_servable(name, None)
                return model.loaded[available[0]]
            servable = model.loaded.get(version)
            if servable is None or model.status[version].state != "AVAILABLE":
                raise not_found_servable(name, version)
            return servable

    def status(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> list[VersionStatus]:
        """GetModelStatus: every version seen (END included), highest first."""
        version = self.resolve_version(name, version, label)
        model = self._model(name)
        if model is None or not model.status:
            raise RpcError("NOT_FOUND", f"Could not find any versions of model {name}")
        with model.lock:
            if version is not None:
                if version not in model.status:
                    raise RpcError("NOT_FOUND", f"Could not find version {version} of model {name}")
                return [model.status[version]]
            return [model.status[v] for v in sorted(model.status, reverse=True)]

    def configs(self) -> list[ModelConfig]:
        with self.lock:
            return [m.cfg for m in self.models.values()]


def _error_code(exc: Exception) -> str:
    """The status name TF Serving shows for a failed load (``NOT_FOUND``, ``UNKNOWN``...)."""
    if isinstance(exc, tf.errors.OpError):
        return status_name(exc.error_code)
    if isinstance(exc, FileNotFoundError):
        return "NOT_FOUND"
    return "UNKNOWN"


def status_name(code: int) -> str:
    """gRPC/TF status code number -> name (they are the same numbers)."""
    import grpc

    for sc in grpc.StatusCode:
        if sc.value[0] == code:
            return sc.name
    return "UNKNOWN"
