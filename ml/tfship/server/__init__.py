"""``tfship serve``: a local TF-Serving-compatible model server.

For local runs, tests and hosts without Docker. Production uses TensorFlow Serving itself
(``tools/install_server.sh``). The rule: this stand-in is never friendlier than the real
server. It starts as ``tensorflow_model_server`` does (``model_servers/main.cc``,
``server.cc`` ``BuildAndStart``): the config is validated, then it **waits until every
model has a version AVAILABLE** and only then opens gRPC and REST. A model whose first
version fails to load (after its retries) makes it print
``Failed to start server. Error: ...`` on stdout and exit 255; a model with no version on
disk keeps it waiting, ports closed, until one appears. A base path may be ``s3://``: it is
polled as TF Serving built with tensorflow-io's S3 file system polls it
(:mod:`tfship.server.filesystem`).

This module declares the server's flags (``ServeOptions``), which every ``tfship`` command
imports to build its options; the server's parts (TensorFlow, protos, gRPC) are imported
inside the functions that start it, so that ``tfship --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from tfship import config
from tfship.log import event
from tfship.server.status import RpcError
from tfship.settings import setting
from tfship.store import MODEL_NAME

EXIT_START_FAILED = 255  # main.cc returns -1


@dataclass
class ServeOptions:
    """Flags, in TF Serving's own names and defaults (``model_servers/main.cc``)."""

    model_name: str = MODEL_NAME.field(
        flag="--model_name", help="Name the model answers to (ignored with --model_config_file)."
    )
    model_base_path: str | None = setting(
        None,
        "MODEL_BASE_PATH",
        "Absolute path (or s3://bucket/prefix) of the folder whose integer-named children are "
        "the model's versions. s3:// reads S3_ENDPOINT (http://host:port for plain http), "
        "S3_VERIFY_SSL, AWS_REGION and the AWS credential chain, as TF Serving does.",
        flag="--model_base_path",
    )
    # Upstream's default is 0 (REST off); its Docker image passes 8501.
    rest_api_port: int = setting(
        config.REST_PORT,
        "TFSHIP_REST_API_PORT",
        "REST port; 0 turns REST off.",
        flag="--rest_api_port",
        min=0,
        max=65535,
    )
    port: int = setting(
        config.GRPC_PORT, "TFSHIP_GRPC_PORT", "gRPC port.", flag="--port", min=1, max=65535
    )
    # Upstream binds every interface; tfship binds loopback unless told.
    host: str = setting(
        "127.0.0.1",
        "TFSHIP_SERVE_HOST",
        "Address to bind. 0.0.0.0 exposes the model to the network.",
        flag="--host",
    )
    file_system_poll_wait_seconds: float = setting(
        1.0,
        "TFSHIP_POLL_SECONDS",
        "How often to look for new versions; 0 = at start and config reloads only.",
        flag="--file_system_poll_wait_seconds",
        min=0,
    )
    model_config_file: str | None = setting(
        None,
        "TFSHIP_MODEL_CONFIG_FILE",
        "TF Serving model config (text proto): several models, version policy, labels.",
        flag="--model_config_file",
    )
    model_config_file_poll_wait_seconds: float = setting(
        0.0,
        "TFSHIP_MODEL_CONFIG_POLL_SECONDS",
        "How often to re-read --model_config_file; 0 = read once.",
        flag="--model_config_file_poll_wait_seconds",
        min=0,
    )
    max_num_load_retries: int = setting(
        5,
        "TFSHIP_MAX_NUM_LOAD_RETRIES",
        "Retries of a failed load (the version shows LOADING meanwhile).",
        flag="--max_num_load_retries",
        min=0,
    )
    load_retry_interval_micros: int = setting(
        60_000_000,
        "TFSHIP_LOAD_RETRY_INTERVAL_MICROS",
        "Wait between load retries, in microseconds (negative: no wait).",
        flag="--load_retry_interval_micros",
    )
    allow_version_labels_for_unavailable_models: bool = setting(
        False,
        "TFSHIP_ALLOW_LABELS_FOR_UNAVAILABLE",
        "Allow a label to point at a version that is not AVAILABLE yet (else a config with "
        "labels cannot start the server).",
        flag="--allow_version_labels_for_unavailable_models",
        value_type=bool,
    )
    enable_model_warmup: bool = setting(
        True,
        "TFSHIP_ENABLE_MODEL_WARMUP",
        "Replay assets.extra/tf_serving_warmup_requests before a version is AVAILABLE.",
        flag="--enable_model_warmup",
        value_type=bool,
    )
    num_request_iterations_for_warmup: int = setting(
        0,
        "TFSHIP_WARMUP_ITERATIONS",
        "Times each warmup record is replayed (0 = once).",
        flag="--num_request_iterations_for_warmup",
        min=0,
    )
    enable_signature_method_name_check: bool = setting(
        False,
        "TFSHIP_SIGNATURE_METHOD_CHECK",
        "Check signatures' method_name (predict/classify/regress) as older servers did.",
        flag="--enable_signature_method_name_check",
        value_type=bool,
    )
    enable_serialization_as_tensor_content: bool = setting(
        False,
        "TFSHIP_TENSOR_CONTENT",
        "gRPC Predict answers in tensor_content instead of the typed *_val fields.",
        flag="--enable_serialization_as_tensor_content",
        value_type=bool,
    )
    monitoring_config_file: str | None = setting(
        None,
        "TFSHIP_MONITORING_CONFIG_FILE",
        'e.g. prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }: '
        "TF Serving's metrics on the REST port.",
        flag="--monitoring_config_file",
    )
    ready_file: str | None = setting(
        None,
        "TFSHIP_READY_FILE",
        "Write {rest_port, grpc_port, pid} as JSON here once listening (for scripts).",
        flag="--ready_file",
    )


def load_configs(opts: ServeOptions):
    """The model configs the flags name (``server.cc``: config file, or name + base path)."""
    from tfship.server.config import read_file, single_model  # protos: see the module doc

    if opts.model_config_file:
        return read_file(opts.model_config_file)
    if not opts.model_base_path:
        raise RpcError(
            "INVALID_ARGUMENT",
            "Both server_options.model_base_path and server_options.model_config_file are empty!",
        )
    return single_model(opts.model_name, opts.model_base_path)


class Server:
    """One ``tfship serve``: the manager, then (once the models are up) gRPC and REST."""

    def __init__(self, opts: ServeOptions) -> None:
        from tfship.server.core import CoreOptions, ServerCore
        from tfship.server.servable import ServableOptions

        self.opts = opts
        self.core = ServerCore(
            CoreOptions(
                poll_seconds=opts.file_system_poll_wait_seconds,
                max_num_load_retries=opts.max_num_load_retries,
                load_retry_interval_seconds=opts.load_retry_interval_micros / 1e6,
                allow_version_labels_for_unavailable_models=(
                    opts.allow_version_labels_for_unavailable_models
                ),
                servable=ServableOptions(
                    method_name_check=opts.enable_signature_method_name_check,
                    warmup=opts.enable_model_warmup,
                    warmup_iterations=max(opts.num_request_iterations_for_warmup, 1),
                ),
            )
        )
        self.rest = None
        self.grpc = None
        self.rest_port = 0
        self.grpc_port = 0
        self.stopped = threading.Event()  # asked to stop (also ends a start-up wait)
        self._closed = False

    def start(self) -> None:
        """Validate, load and wait (no port open meanwhile), then listen.

        Raises :class:`~tfship.server.status.RpcError` as ``BuildAndStart`` returns it.
        """
        from tfship.server.config import read_monitoring
        from tfship.server.grpc_api import start_grpc
        from tfship.server.rest import start_rest

        # Loading a SavedModel is long pure-Python work in the manager thread; a short GIL
        # switch interval lets request threads in meanwhile (p99 during a version swap).
        sys.setswitchinterval(0.0005)
        opts = self.opts
        configs = load_configs(opts)
        metrics_path = None
        if opts.monitoring_config_file and opts.rest_api_port > 0:
            metrics_path = read_monitoring(opts.monitoring_config_file)
        self.core.start()
        self.core.reload(configs, startup=True)
        if self.stopped.is_set():
            return
        self.grpc, self.grpc_port = start_grpc(
            self.core, opts.host, opts.port, opts.enable_serialization_as_tensor_content
        )
        if opts.rest_api_port > 0:  # 0 turns REST off, as in TF Serving
            self.rest, _ = start_rest(self.core, opts.host, opts.rest_api_port, metrics_path)
            self.rest_port = self.rest.server_address[1]
        if opts.model_config_file and opts.model_config_file_poll_wait_seconds > 0:
            threading.Thread(target=self._watch_config, daemon=True).start()
        event(
            "serve",
            "listening",
            rest=f"{opts.host}:{self.rest_port}" if self.rest else "off",
            grpc=f"{opts.host}:{self.grpc_port}",
            models=",".join(c.name for c in self.core.configs()),
        )
        if opts.ready_file:
            tmp = f"{opts.ready_file}.tmp"
            Path(tmp).write_text(
                json.dumps(
                    {"rest_port": self.rest_port, "grpc_port": self.grpc_port, "pid": os.getpid()}
                )
            )
            os.replace(tmp, opts.ready_file)

    def _watch_config(self) -> None:
        """``server.cc`` ``PollFilesystemAndReloadConfig``: re-read and reload every period."""
        while not self.stopped.wait(self.opts.model_config_file_poll_wait_seconds):
            try:
                self.core.reload(load_configs(self.opts))
            except RpcError as exc:
                event("serve", f"PollFilesystemAndReloadConfig failed to ReloadConfig: {exc}")

    def stop(self) -> None:
        """Close the ports, then unload every model."""
        if self._closed:
            return
        self._closed = True
        self.stopped.set()
        if self.rest:
            self.rest.shutdown()
            self.rest.server_close()
        if self.grpc:
            self.grpc.stop(grace=2).wait(5)
        self.core.stop()
        event("serve", "stopped")


def _start_hint(exc) -> str:
    """The fix for the start-up failures people meet, as tfship's one-line errors give it."""
    text = exc.message
    if "to have an absolute path" in text:
        return ' (give the base path as an absolute path, e.g. "$PWD/store/digits")'
    if "assign label to version" in text:
        return (
            " (labels can only name AVAILABLE versions; at start-up pass "
            "--allow_version_labels_for_unavailable_models)"
        )
    if "did not become available" in text:
        return " (fix or remove the version that fails to load; the error above says why)"
    if "Invalid protobuf file" in text:
        return " (fix the model config file: it is a ModelServerConfig text proto)"
    return ""


def serve_forever(opts: ServeOptions) -> int:
    """Run until SIGTERM/SIGINT; return the exit status (255 if the server could not start)."""
    server = Server(opts)
    done = threading.Event()

    def _stop(signum, frame):
        done.set()
        server.stopped.set()  # ends a start-up wait too
        server.core._stop.set()
        server.core._wake.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        server.start()
    except RpcError as exc:
        print(f"Failed to start server. Error: {exc}", flush=True)  # main.cc: on stdout
        server.stop()
        print(f"tfship serve: could not start: {exc.message}{_start_hint(exc)}", file=sys.stderr)
        return EXIT_START_FAILED
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
    return 0
