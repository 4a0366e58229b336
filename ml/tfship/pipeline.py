"""``tfship run``: the main job, end to end on the embedded defaults.

First run: build -> train -> test -> package -> start the local serving (``tfship serve`` on a
free port, in the background) -> deploy -> test-deployed. With ``retrain``: then a new data
snapshot (the default data with a shift, or ``--data``) -> build -> retrain -> test -> package
-> deploy -> test-deployed. Every stage is atomic, so Ctrl-C leaves no half state.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tfship import config
from tfship.data import Checks
from tfship.errors import ServingError
from tfship.evaluate import Gates
from tfship.log import event


@dataclass
class RunSettings:
    """What ``tfship run`` needs; every field has the same default as the stage commands."""

    workspace: Path = Path("workspace")
    store: Path = Path("store")
    serving: Path = Path("serving")
    model_name: str = config.DEFAULT_MODEL_NAME
    data: str = config.DEFAULT_DATA
    data_sha256: str | None = None
    retrain_data: str | None = None
    checks: Checks = field(default_factory=Checks)
    gates: Gates = field(default_factory=Gates)
    epochs: int = config.EPOCHS
    seed: int = config.DEFAULT_SEED
    version: int | None = None
    retrain: bool = False
    keep_serving: bool = True
    latency_requests: int = 50


@dataclass
class LocalServer:
    """The background `tfship serve` that ``tfship run`` deploys to."""

    pid: int
    rest_port: int
    grpc_port: int
    log: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _running(state: dict, base: Path) -> bool:
    """Whether the server an earlier run recorded still runs (and is that server)."""
    try:
        os.kill(state["pid"], 0)
    except (OSError, KeyError):
        return False
    cmdline = Path(f"/proc/{state['pid']}/cmdline")
    if cmdline.exists():  # Linux: guard against a recycled pid
        return b"serve" in cmdline.read_bytes() and str(base).encode() in cmdline.read_bytes()
    return True


def ensure_server(serving: Path, model: str, timeout: float = 90) -> LocalServer:
    """Reuse the local serving of an earlier run if it still runs, else start one.

    Like TF Serving, ``tfship serve`` opens its ports only once the model has a version
    AVAILABLE. On an empty folder it is started on ports chosen here and comes up with the
    first deploy (which waits for it); with versions there, this waits until it listens.
    """
    serving = serving.absolute()
    base = serving / model
    base.mkdir(parents=True, exist_ok=True)
    state_file = serving / "serve.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
        if _running(state, base):
            return LocalServer(state["pid"], state["rest_port"], state["grpc_port"], state["log"])
    ready = serving / ".ready.json"
    ready.unlink(missing_ok=True)
    log = serving / "serve.log"
    rest, grpc = _free_port(), _free_port()
    with open(log, "a") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tfship",
                "serve",
                "--model_name",
                model,
                "--model_base_path",
                str(base),
                "--rest_api_port",
                str(rest),
                "--port",
                str(grpc),
                "--file_system_poll_wait_seconds",
                "0.5",
                "--max_num_load_retries",
                "0",  # a local run reports a broken model at once, not after 5 minutes
                "--ready_file",
                str(ready),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = LocalServer(proc.pid, rest, grpc, str(log))
    state_file.write_text(json.dumps(server.__dict__))
    event("run", "local serving started", url=server.url, pid=server.pid)
    if any(p.name.isdigit() for p in base.iterdir()):
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise ServingError(f"the local tfship serve did not start; see {log}")
            time.sleep(0.1)
    return server


def run_all(s: RunSettings) -> dict:
    """The whole loop; returns each stage's result, timings and where things are."""
    from tfship.data import build, make_snapshot
    from tfship.deploy import DeploySettings, deploy, make_target
    from tfship.evaluate import evaluate
    from tfship.package import package
    from tfship.retrain import RetrainSettings, retrain
    from tfship.store import local_store
    from tfship.train import TrainSettings, train
    from tfship.verify import VerifySettings, test_deployed

    timings: dict[str, float] = {}
    results: dict[str, dict] = {}
    store = local_store(s.store)
    verify = VerifySettings(min_accuracy=None, latency_requests=s.latency_requests)

    def step(name: str, fn, *args) -> dict:
        started = time.monotonic()
        event("run", f"stage {name}")
        results[name] = fn(*args)
        timings[name] = round(time.monotonic() - started, 2)
        return results[name]

    def ship(prefix: str, expect: int | None = None) -> None:
        step(f"{prefix}test", evaluate, s.workspace, s.gates)
        pkg = step(
            f"{prefix}package",
            package,
            s.workspace,
            store,
            s.model_name,
            s.version if not prefix else None,
        )
        target = make_target(None, str(s.serving), server.url, "rest", {})
        settings = DeploySettings(expect_serving=expect, verify=verify)
        step(f"{prefix}deploy", lambda: deploy(target, Path(pkg["path"]), settings).to_dict())
        step(f"{prefix}test-deployed", test_deployed, s.workspace, server.url, s.model_name, verify)

    server = ensure_server(s.serving, s.model_name)
    try:
        local = make_target(None, str(s.serving), server.url, "rest", {})
        client = local.client(s.model_name)
        first = local.serving_version(s.model_name) is None or not s.retrain
        if first:
            step("build", build, s.workspace, s.data, s.checks, s.seed, s.data_sha256)
            step("train", train, s.workspace, TrainSettings(epochs=s.epochs, seed=s.seed))
            ship("")
        if s.retrain:
            spec = s.retrain_data
            if spec is None:
                snap = (
                    s.workspace.parent
                    / "snapshots"
                    / time.strftime("%Y%m%dT%H%M%S.npz", time.gmtime())
                )
                spec = step("snapshot", make_snapshot, snap, "shift", int(time.time()) % 100_000)[
                    "path"
                ]
            step("retrain:build", build, s.workspace, spec, s.checks, s.seed, None)
            decision = step(
                "retrain",
                lambda: retrain(
                    s.workspace,
                    store,
                    client,
                    s.model_name,
                    RetrainSettings(min_accuracy=s.gates.min_accuracy),
                    TrainSettings(epochs=s.epochs, seed=s.seed),
                    serving_version=lambda: local.serving_version(s.model_name),
                ),
            )
            if decision["decision"] != "no-new-data":
                ship("retrain:", decision["champion_version"])
        serving_now = local.serving_version(s.model_name)
    finally:
        if not s.keep_serving:
            server.stop()
    return {
        "results": results,
        "timings": timings,
        "serving_version": serving_now,
        "server": server.__dict__,
        "url": server.url,
        "kept_serving": s.keep_serving,
    }
