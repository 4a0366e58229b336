"""``tfship serve``: a local TF-Serving-compatible model server.

For local runs, tests and hosts without Docker. Production uses TensorFlow Serving itself
(``tools/install_server.sh``); this server answers as it does, on the same flags, paths and
wire formats, and is checked against TF Serving's own conformance model.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from tfship.log import event


@dataclass
class ServeOptions:
    """Flags, in TF Serving's own names."""

    model_name: str | None = None
    model_base_path: str | None = None
    rest_api_port: int = 8501
    port: int = 8500
    host: str = "127.0.0.1"
    file_system_poll_wait_seconds: float = 1.0
    model_config_file: str | None = None
    model_config_file_poll_wait_seconds: float = 0.0
    ready_file: str | None = None


def load_configs(opts: ServeOptions):
    """The model configs named by the flags (config file, or name + base path)."""
    from tfship.errors import ConfigError
    from tfship.server.core import ModelConfig, parse_config_text

    if opts.model_config_file:
        try:
            return parse_config_text(Path(opts.model_config_file).read_text())
        except OSError as exc:
            raise ConfigError(
                f"--model_config_file {opts.model_config_file}: {exc.strerror}"
            ) from exc
        except Exception as exc:  # text_format.ParseError and friends
            raise ConfigError(f"--model_config_file {opts.model_config_file}: {exc}") from exc
    if not opts.model_base_path:
        raise ConfigError("give --model_base_path (and --model_name) or --model_config_file")
    base = str(Path(opts.model_base_path).absolute())
    return [ModelConfig(name=opts.model_name or "default", base_path=base)]


class Running:
    """A started server: ports, core, and how to stop it."""

    def __init__(self, core, rest, grpc_server, rest_port: int, grpc_port: int) -> None:
        self.core = core
        self.rest = rest
        self.grpc = grpc_server
        self.rest_port = rest_port
        self.grpc_port = grpc_port
        self.stopped = threading.Event()

    def stop(self) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        if self.rest:
            self.rest.shutdown()
            self.rest.server_close()
        if self.grpc:
            self.grpc.stop(grace=2).wait(5)
        self.core.stop()
        event("serve", "stopped")


def start(opts: ServeOptions) -> Running:
    """Load the models, then open REST (``rest_api_port``, 0 = off) and gRPC (``port``)."""
    from tfship.server.core import ServerCore
    from tfship.server.grpc_api import start_grpc
    from tfship.server.rest import start_rest

    # Loading a SavedModel is long pure-Python work in the poll thread; a short GIL switch
    # interval lets request threads in meanwhile (p99 during a version swap, see BENCHMARKS).
    sys.setswitchinterval(0.0005)
    core = ServerCore(load_configs(opts), opts.file_system_poll_wait_seconds)
    core.start()
    rest = None
    rest_port = 0
    if opts.rest_api_port > 0:  # 0 turns REST off, as in TF Serving
        rest, _ = start_rest(core, opts.host, opts.rest_api_port)
        rest_port = rest.server_address[1]
    grpc_server, grpc_port = start_grpc(core, opts.host, opts.port)
    running = Running(core, rest, grpc_server, rest_port, grpc_port)
    if opts.model_config_file and opts.model_config_file_poll_wait_seconds > 0:
        threading.Thread(target=_watch_config, args=(running, opts), daemon=True).start()
    event(
        "serve",
        "listening",
        rest=f"{opts.host}:{rest_port}" if rest else "off",
        grpc=f"{opts.host}:{grpc_port}",
        models=",".join(c.name for c in core.configs()),
    )
    if opts.ready_file:
        tmp = f"{opts.ready_file}.tmp"
        Path(tmp).write_text(
            json.dumps({"rest_port": rest_port, "grpc_port": grpc_port, "pid": os.getpid()})
        )
        os.replace(tmp, opts.ready_file)
    return running


def _watch_config(running: Running, opts: ServeOptions) -> None:
    last = None
    while not running.stopped.wait(opts.model_config_file_poll_wait_seconds):
        try:
            text = Path(opts.model_config_file).read_text()
            if text != last:
                if last is not None:
                    running.core.set_configs(load_configs(opts), validate_labels=False)
                    event("serve", "model config reloaded")
                last = text
        except Exception as exc:
            event("serve", f"model config not reloaded: {exc}")


def serve_forever(opts: ServeOptions) -> None:
    """Run until SIGTERM/SIGINT, then shut down cleanly."""
    running = start(opts)
    done = threading.Event()

    def _stop(signum, frame):
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not done.wait(0.5):
            pass
    finally:
        running.stop()
