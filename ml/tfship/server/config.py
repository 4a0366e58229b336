"""The model server config: what ``--model_config_file`` (or the name/base-path flags) says.

Parsed with tensorflow-serving-api's own ``ModelServerConfig`` proto, and validated as
``model_servers/server_core.cc`` does, in its order and words:

- ``ValidateModelConfigList``: duplicate names, base paths that are not absolute;
- ``GetPlatform`` (``CreateStoragePathRoutes``): a missing or unsupported ``model_platform``.

Version labels are checked by :class:`~tfship.server.core.ServerCore` (they need the
servables' states).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tfship.server.status import RpcError

PLATFORM = "tensorflow"


@dataclass
class ModelConfig:
    """One ``config { ... }`` of the model config file (or the --model_name flags)."""

    name: str
    base_path: str
    platform: str = PLATFORM
    model_type: int = 0  # the deprecated ModelType enum (1 = TENSORFLOW); GetPlatform reads it
    policy: str = "latest"  # latest | all | specific
    latest_n: int = 1
    specific: tuple[int, ...] = ()
    labels: dict[str, int] = field(default_factory=dict)


def single_model(name: str, base_path: str) -> list[ModelConfig]:
    """``server.cc`` ``BuildSingleModelConfig``: the --model_name/--model_base_path flags.

    The base path is taken as given (a relative one is refused by :func:`validate`).
    """
    return [ModelConfig(name=name, base_path=base_path)]


def parse_text(text: str, origin: str) -> list[ModelConfig]:
    """A ``ModelServerConfig`` text proto -> configs (``util/proto_util.h`` ParseProtoTextFile).

    Unparsable text is ``Invalid protobuf file: '<origin>'``, as upstream says it.
    """
    proto = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        raise RpcError("INVALID_ARGUMENT", f"Invalid protobuf file: '{origin}'") from exc
    return from_proto(proto)


def read_file(path: str) -> list[ModelConfig]:
    """Read and parse ``--model_config_file``; an unreadable file is NOT_FOUND as in TF's Env."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise RpcError("NOT_FOUND", f"{path}; {exc.strerror}") from exc
    return parse_text(text, path)


def from_proto(proto: model_server_config_pb2.ModelServerConfig) -> list[ModelConfig]:
    """ModelServerConfig proto -> configs (only ``model_config_list`` is supported upstream)."""
    if proto.WhichOneof("config") == "custom_model_config":
        raise RpcError("INVALID_ARGUMENT", "Invalid ServerModelConfig")
    out = []
    for c in proto.model_config_list.config:
        policy = c.model_version_policy.WhichOneof("policy_choice") or "latest"
        cfg = ModelConfig(
            name=c.name,
            base_path=c.base_path,
            platform=c.model_platform,
            model_type=c.model_type,
            policy=policy,
            labels=dict(c.version_labels),
        )
        if policy == "latest":
            cfg.latest_n = max(c.model_version_policy.latest.num_versions, 1)
        elif policy == "specific":
            cfg.specific = tuple(c.model_version_policy.specific.versions)
        out.append(cfg)
    return out


def to_proto(configs: list[ModelConfig]) -> model_server_config_pb2.ModelServerConfig:
    """The inverse of :func:`from_proto` (for tests and the reload RPC's clients)."""
    proto = model_server_config_pb2.ModelServerConfig()
    for cfg in configs:
        c = proto.model_config_list.config.add(
            name=cfg.name, base_path=cfg.base_path, model_platform=cfg.platform
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


def _is_relative(uri: str) -> bool:
    """``server_core.cc`` ``UriIsRelativePath``: no scheme, no host, not absolute."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri):
        return False
    return not uri.startswith("/")


def validate(configs: list[ModelConfig]) -> None:
    """``ValidateModelConfigList``: each name once, every base path absolute (or a URI)."""
    seen: set[str] = set()
    for cfg in configs:
        if cfg.name in seen:
            raise RpcError(
                "INVALID_ARGUMENT",
                f"Illegal to list model {cfg.name} multiple times in config list",
            )
        seen.add(cfg.name)
    for cfg in configs:
        if _is_relative(cfg.base_path):
            raise RpcError(
                "INVALID_ARGUMENT",
                f"Expected model {cfg.name} to have an absolute path or URI; "
                f"got base_path()={cfg.base_path}",
            )


def check_platform(cfg: ModelConfig) -> None:
    """``GetPlatform`` / ``CreateStoragePathRoutes``: the platform must be set and supported."""
    platform = cfg.platform
    if cfg.model_type:  # deprecated ModelServerConfig::model_type
        if cfg.platform:
            raise RpcError(
                "INVALID_ARGUMENT",
                "Illegal setting both ModelServerConfig::model_type (deprecated) and "
                f"ModelServerConfig::model_platform, model name is {cfg.name}",
            )
        if cfg.model_type != 1:
            raise RpcError(
                "INVALID_ARGUMENT",
                f"ModelServerConfig::model_type choice {cfg.model_type} not supported.",
            )
        platform = PLATFORM
    if not platform:
        raise RpcError(
            "INVALID_ARGUMENT",
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            f"ModelServerConfig::model_platform, model name is {cfg.name}",
        )
    if platform != PLATFORM:
        raise RpcError(
            "INVALID_ARGUMENT", f"Model {cfg.name} requests unsupported platform {platform}"
        )


MONITORING_DEFAULT_PATH = "/monitoring/prometheus/metrics"


def read_monitoring(path: str) -> str | None:
    """``--monitoring_config_file`` -> the Prometheus path, or None when it is disabled.

    The text proto is ``prometheus_config { enable: true path: "..." }``
    (``config/monitoring_config.proto``, not shipped in tensorflow-serving-api, hence read
    here by hand); an empty path is ``/monitoring/prometheus/metrics``.
    """
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise RpcError("NOT_FOUND", f"{path}; {exc.strerror}") from exc
    body = re.fullmatch(r"\s*(?:prometheus_config\s*:?\s*\{(?P<inner>[^{}]*)\}\s*)?", text)
    fields = {}
    if body is None:
        raise RpcError("INVALID_ARGUMENT", f"Invalid protobuf file: '{path}'")
    inner = body.group("inner") or ""
    for m in re.finditer(r'(\w+)\s*:\s*("(?:[^"\\]|\\.)*"|\w+)\s*[,;]?', inner):
        fields[m.group(1)] = m.group(2)
    leftover = re.sub(r'(\w+)\s*:\s*("(?:[^"\\]|\\.)*"|\w+)\s*[,;]?', "", inner).strip()
    if leftover or set(fields) - {"enable", "path"}:
        raise RpcError("INVALID_ARGUMENT", f"Invalid protobuf file: '{path}'")
    enabled = fields.get("enable", "false") in ("true", "True", "t", "1")
    if not enabled:
        return None
    raw = fields.get("path", '""')
    value = raw[1:-1] if raw.startswith('"') else raw
    return value or MONITORING_DEFAULT_PATH
