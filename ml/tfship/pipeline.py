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
from dataclasses import dataclass, field, replace
from pathlib import Path

from tfship.data import SEED, Checks, DataSettings, build, make_snapshot
from tfship.deploy import DeploySettings
from tfship.errors import ConfigError, ServingError
from tfship.evaluate import Gates, evaluate
from tfship.fleet import FleetSettings, deploy_workspace
from tfship.log import event
from tfship.package import package
from tfship.retrain import RetrainSettings, retrain, skipped
from tfship.serving import ServingSettings
from tfship.settings import setting
from tfship.sources import DATA, DATA_SHA256
from tfship.store import MANIFEST, MODEL_NAME, STORE, open_store
from tfship.tables import LABEL, TableSettings, is_table
from tfship.targets import Fleet, make_target
from tfship.train import EPOCHS, TrainSettings, train
from tfship.verify import VerifySettings, test_deployed
from tfship.workspace import WORKSPACE, read_json


@dataclass
class RunSettings:
    """What ``tfship run`` needs: the stages' own settings, and where the local serving is."""

    workspace: Path = WORKSPACE.field()
    store: str = STORE.field()
    serving: Path = setting(
        Path("serving"),
        "TFSHIP_SERVING_DIR",
        "Models root of the local TF-Serving-compatible server.",
        kind="dir",
    )
    model_name: str = MODEL_NAME.field()
    data: str = DATA.field(help="Same sources as `tfship build --data` (first run).")
    data_sha256: str | None = DATA_SHA256.field()
    retrain_data: str | None = setting(
        None,
        "TFSHIP_RETRAIN_DATA",
        "New data for the retrain cycle. Default: a shifted snapshot of the default data.",
    )
    epochs: int = EPOCHS.field()
    seed: int = SEED.field()
    gates: Gates = field(default_factory=Gates)
    retrain: bool = setting(
        False, None, "Also run the retrain cycle (same as `run retrain`).", switch=True
    )
    stop_serving: bool = setting(
        False,
        None,
        "Stop the local serving at the end (default: keep it up to query it).",
        switch=True,
    )
    table: TableSettings = field(default_factory=TableSettings)
    checks: Checks = field(default_factory=Checks, metadata={"internal": True})
    version: int | None = None
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


@dataclass
class RunResult:
    """What ``tfship run`` did: each stage's result and time, and what serves now."""

    results: dict
    timings: dict
    serving_version: int | None
    server: dict
    url: str
    kept_serving: bool
    requests: list[dict] = field(default_factory=list)  # predict requests of golden rows

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def summary(self, model_name: str, workspace: Path) -> str:
        lines = [
            f"\nserving: {model_name} version {self.serving_version} at {self.url}"
            + ("" if self.kept_serving else " (stopped)")
        ]
        reports = [workspace / d / "report.md" for d in ("eval", "retrain", "deployed")]
        lines.append("reports: " + ", ".join(str(r) for r in reports if r.exists()))
        lines.append("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        if self.kept_serving:
            url = f"{self.url}/v1/models/{model_name}"
            lines += [
                f"query:   curl -s {url}",
                f"         curl -s {url}/metadata",
                *(f"         curl -s -d '{json.dumps(r)}' {url}:predict" for r in self.requests),
                f"stop:    kill {self.server['pid']}",
            ]
        return "\n".join(lines)


def run_all(s: RunSettings) -> RunResult:
    """The whole loop; returns each stage's result, timings and where things are."""
    table = is_table(s.data or DATA.default, s.table.label)
    if s.retrain and table and s.retrain_data is None:
        # The default new data is a shifted snapshot of the digits: a table has none.
        raise ConfigError(
            f"--retrain on a table ({s.data}) needs --retrain-data",
            hint="give a newer snapshot of the same table (same columns and label), e.g. "
            "--retrain-data snapshots/2026-12-01.csv",
        )
    timings: dict[str, float] = {}
    results: dict[str, dict] = {}
    store = open_store(s.store)
    verify = VerifySettings(min_accuracy=None, latency_requests=s.latency_requests)
    train_settings = TrainSettings(epochs=s.epochs, seed=s.seed)

    def step(name: str, fn) -> object:
        started = time.monotonic()
        event("run", f"stage {name}")
        result = fn()
        results[name] = result.to_dict() if hasattr(result, "to_dict") else result
        timings[name] = round(time.monotonic() - started, 2)
        return result

    def ship(prefix: str, version: int | None = None) -> None:
        """test -> package -> deploy -> test-deployed, each honouring the skip rule."""
        for stage, run in (
            ("test", lambda: evaluate(s.workspace, s.gates)),
            ("package", lambda: package(s.workspace, store, s.model_name, version)),
            ("deploy", lambda: deploy_workspace(s.workspace, local_fleet, deploy, FleetSettings())),
            (
                "test-deployed",
                lambda: test_deployed(
                    s.workspace, ServingSettings(url=server.url), s.model_name, verify
                ),
            ),
        ):
            step(
                f"{prefix}{stage}",
                lambda stage=stage, run=run: skipped(s.workspace, stage) or run(),
            )

    server = ensure_server(s.serving, s.model_name)
    local = make_target(None, str(s.serving), server.url, "rest", {})
    local_fleet = Fleet([local], several=False)
    deploy = DeploySettings(verify=verify)
    try:
        first = local.serving_version(s.model_name) is None or not s.retrain
        if first:
            data = DataSettings(
                data=s.data,
                data_sha256=s.data_sha256,
                seed=s.seed,
                checks=s.checks,
                table=s.table,
            )
            step("build", lambda: build(s.workspace, data))
            step("train", lambda: train(s.workspace, train_settings))
            ship("", s.version)
        if s.retrain:
            spec = s.retrain_data
            if spec is None:
                snap = (
                    s.workspace.parent
                    / "snapshots"
                    / time.strftime("%Y%m%dT%H%M%S.npz", time.gmtime())
                )
                made = step(
                    "snapshot", lambda: make_snapshot(snap, "shift", int(time.time()) % 100_000)
                )
                spec = made["path"]
            # A table's new snapshot is read as the first one was: same label (a bundled
            # set's is `target`), same settings.
            retrain_table = TableSettings()
            if table:
                retrain_table = replace(s.table, label=s.table.label or LABEL)
            data = DataSettings(data=spec, seed=s.seed, checks=s.checks, table=retrain_table)
            step("retrain:build", lambda: build(s.workspace, data))
            step(
                "retrain",
                lambda: retrain(
                    s.workspace,
                    store,
                    local_fleet,
                    s.model_name,
                    RetrainSettings(min_accuracy=s.gates.min_accuracy, slices=s.gates.slices),
                    train_settings,
                ),
            )
            ship("retrain:")
        serving_now = local.serving_version(s.model_name)
    finally:
        if s.stop_serving:
            server.stop()
    return RunResult(
        results,
        timings,
        serving_now,
        server.__dict__,
        server.url,
        not s.stop_serving,
        _example_requests(results),
    )


def _example_requests(results: dict) -> list[dict]:
    """The first golden row as TF Serving's row format (``instances``): a table's named
    features, or an image's pixel values 0-255 (a test image, which the served model should
    name: its answer is worth reading), then the same image as a PNG to
    ``predict_image_bytes`` (``{"b64": ...}``, as a client sends a file)."""
    # the version serving: the retrain's package, unless it skipped (no new data)
    packaged = [results.get(k) or {} for k in ("retrain:package", "package")]
    last = next((p for p in packaged if p.get("path")), None)
    if last is None:
        return []
    golden = read_json(Path(last["path"]) / MANIFEST).get("golden", {})
    if not golden.get("inputs"):
        return []
    if golden.get("input_name") is None:
        return [{"instances": [{k: v[0] for k, v in golden["inputs"].items()}]}]
    requests = [{"instances": [_round_pixels(golden["inputs"][0])]}]
    encoded = golden.get("encoded")
    if encoded:
        one = {encoded["input_name"]: {"b64": encoded["b64"][0]}}
        requests.append({"signature_name": encoded["signature"], "instances": [one]})
    return requests


def _round_pixels(image: list) -> list:
    """An image's pixel values as short JSON numbers (whole where they are whole)."""
    if isinstance(image, list):
        return [_round_pixels(v) for v in image]
    return int(image) if float(image).is_integer() else round(float(image), 2)
