"""The ``tfship`` command line: thin shells over the stage functions.

Each command parses options (every one also read from an environment variable, shown in
``--help``), calls one stage function, prints what a person needs, and maps the stage's
exception family to an exit code (see ``tfship.errors``). Heavy modules (TensorFlow) are
imported inside the commands that need them so ``tfship --help`` stays fast.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import click

from tfship import __version__, config
from tfship.errors import EXIT_INTERRUPTED, TfshipError

ENV = config.ENV
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def opt(*names: str, env: str | None = None, **kw):
    """A click option that also reads ``env`` and says so in ``--help``."""
    return click.option(*names, envvar=env, show_envvar=bool(env), **kw)


def workspace_option(f):
    return opt(
        "--workspace",
        env=ENV["workspace"],
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("workspace"),
        show_default=True,
        help="Folder the stages read and write (CircleCI persists it between jobs).",
    )(f)


def model_name_option(f):
    return opt(
        "--model-name",
        env=ENV["model_name"],
        default=config.DEFAULT_MODEL_NAME,
        show_default=True,
        help="Model name in TF Serving and in the store.",
    )(f)


def store_option(f):
    return opt(
        "--store",
        env=ENV["store"],
        default="store",
        show_default=True,
        help="Artifact store: a local folder (<store>/<model>/<version>/).",
    )(f)


MAX_DATA_BYTES = opt(
    "--max-data-bytes",
    env=ENV["max_data_bytes"],
    type=click.IntRange(1),
    default=config.MAX_DATA_BYTES,
    show_default=True,
    help="Refuse a data file, a download, or an .npz that unpacks to more than this.",
)


def data_options(f):
    """Options shared by build and retrain: where data comes from and how it is checked."""
    options = [
        opt(
            "--data",
            env=ENV["data"],
            default=config.DEFAULT_DATA,
            show_default=True,
            help="digits (bundled, offline) | fashion_mnist | PATH.npz|.csv | FOLDER of snapshots"
            " | https://URL#sha256=HEX",
        ),
        opt(
            "--data-sha256",
            env=ENV["data_sha256"],
            default=None,
            help="Expected sha256 of the data file (required for URLs unless in the #fragment).",
        ),
        opt(
            "--num-classes",
            env=ENV["num_classes"],
            type=click.IntRange(2, 10_000),
            default=config.DEFAULT_NUM_CLASSES,
            show_default=True,
            help="Labels are 0..N-1.",
        ),
        opt(
            "--min-rows-per-class",
            env=ENV["min_rows_per_class"],
            type=click.IntRange(1),
            default=config.MIN_ROWS_PER_CLASS,
            show_default=True,
        ),
        opt(
            "--max-label-drift",
            env=ENV["max_label_drift"],
            type=click.FloatRange(0, 1),
            default=config.MAX_LABEL_DRIFT,
            show_default=True,
            help="Max total variation distance of train vs test label histograms.",
        ),
        opt(
            "--max-pixel-drift",
            env=ENV["max_pixel_drift"],
            type=click.FloatRange(0, 1),
            default=config.MAX_PIXEL_DRIFT,
            show_default=True,
            help="Max total variation distance of train vs test pixel histograms.",
        ),
        MAX_DATA_BYTES,
        opt("--seed", env=ENV["seed"], type=int, default=config.DEFAULT_SEED, show_default=True),
    ]
    for o in reversed(options):
        f = o(f)
    return f


def train_options(f):
    """Options shared by train and retrain."""
    options = [
        opt(
            "--epochs",
            env=ENV["epochs"],
            type=click.IntRange(1),
            default=config.EPOCHS,
            show_default=True,
            help="Upper bound; early stopping on val loss usually ends sooner.",
        ),
        opt(
            "--batch-size",
            env=ENV["batch_size"],
            type=click.IntRange(1),
            default=config.BATCH_SIZE,
            show_default=True,
        ),
        opt(
            "--learning-rate",
            env=ENV["learning_rate"],
            type=float,
            default=config.LEARNING_RATE,
            show_default=True,
        ),
        opt(
            "--model-fn",
            env=ENV["model_fn"],
            default=None,
            help="Your model: package.module:function(input_shape, num_classes) -> compiled"
            " keras.Model with a named input. Default: tfship's CNN.",
        ),
        opt("--seed", env=ENV["seed"], type=int, default=config.DEFAULT_SEED, show_default=True),
    ]
    for o in reversed(options):
        f = o(f)
    return f


def gate_options(f):
    f = opt(
        "--min-class-recall",
        env=ENV["min_class_recall"],
        type=click.FloatRange(0, 1),
        default=config.MIN_CLASS_RECALL,
        show_default=True,
        help="Every class's recall must reach this.",
    )(f)
    f = opt(
        "--min-accuracy",
        env=ENV["min_accuracy"],
        type=click.FloatRange(0, 1),
        default=config.MIN_ACCURACY,
        show_default=True,
        help="Test accuracy must reach this.",
    )(f)
    return f


def emit(obj: dict, as_json: bool, text: str) -> None:
    """Results go to stdout: JSON for machines, one readable line for people."""
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str) if as_json else text)


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="tfship")
@click.option(
    "--debug",
    is_flag=True,
    envvar="TFSHIP_DEBUG",
    help="Show everything: tracebacks for expected failures and TensorFlow's own log lines.",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """tfship: data -> trained -> gated -> packaged -> served by TF Serving -> verified.

    \b
    Stages (each also runs as ml/N_<stage>.py):
      build    get and validate data          -> workspace/data/
      train    train the Keras model          -> workspace/model/
      test     evaluate and apply the gates   -> workspace/eval/
      package  SavedModel + lineage -> store  -> workspace/package/

    Every option can also be set by the environment variable shown in each command's --help,
    or in a .env file in the current folder. Exit codes: 0 ok, 2 bad input or setting,
    3 gate failed, 4 deploy failed, 5 serving error, 6 verification failed, 7 CircleCI API
    error, 8 store error, 9 host error, 10 stale approval, 130 interrupted.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if debug:  # read by tfship.log when TensorFlow loads, here and in child processes
        import os

        from tfship.log import DEBUG_ENV

        os.environ[DEBUG_ENV] = "1"


@cli.command(context_settings=CONTEXT)
@workspace_option
@data_options
@json_option
def build(
    workspace: Path,
    data: str,
    data_sha256: str | None,
    num_classes: int,
    min_rows_per_class: int,
    max_label_drift: float,
    max_pixel_drift: float,
    max_data_bytes: int,
    seed: int,
    as_json: bool,
) -> None:
    """Stage 1: get data, validate it, split it (seeded), write workspace/data/.

    Validation runs before anything is written: dtype and shape, NaN/inf, pixel range,
    labels in 0..N-1, rows per class, and train/test drift. A failure prints one line naming
    the file, the check and the numbers, and exits 2.
    """
    from tfship.data import Checks
    from tfship.data import build as run

    checks = Checks(
        num_classes, min_rows_per_class, max_label_drift, max_pixel_drift, max_data_bytes
    )
    info = run(workspace, data, checks, seed, data_sha256)
    rows = info["rows"]
    emit(
        info,
        as_json,
        f"data {info['data_hash'][:23]} from {info['origin']}: "
        f"{rows['train']} train / {rows['val']} val / {rows['test']} test rows",
    )


@cli.command(context_settings=CONTEXT)
@workspace_option
@train_options
@json_option
def train(
    workspace: Path,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    model_fn: str | None,
    seed: int,
    as_json: bool,
) -> None:
    """Stage 2: train on workspace/data/, write workspace/model/ (model.keras, history)."""
    from tfship.train import TrainSettings
    from tfship.train import train as run

    info = run(
        workspace, TrainSettings(epochs, batch_size, learning_rate, seed=seed, model_fn=model_fn)
    )
    emit(
        info,
        as_json,
        f"trained {info['epochs_run']} epochs, best val loss "
        f"{info['best_val_loss']:.4f}: {workspace / 'model' / 'model.keras'}",
    )


@cli.command("test", context_settings=CONTEXT)
@workspace_option
@gate_options
@json_option
def test_cmd(workspace: Path, min_accuracy: float, min_class_recall: float, as_json: bool) -> None:
    """Stage 3: evaluate on the test split and apply the gates (exit 3 if one misses).

    Writes workspace/eval/: metrics.json, junit.xml (store_test_results), report.md and
    confusion_matrix.png (store_artifacts), also when the gate fails.
    """
    from tfship.evaluate import Gates, evaluate

    if _skip_if_no_new_data(workspace, "test"):
        return
    result = evaluate(workspace, Gates(min_accuracy, min_class_recall))
    emit(
        result,
        as_json,
        f"gate passed: accuracy {result['metrics']['accuracy']:.4f} >= "
        f"{min_accuracy}; report {workspace / 'eval' / 'report.md'}",
    )


@cli.command(context_settings=CONTEXT)
@workspace_option
@model_name_option
@store_option
@opt(
    "--version",
    "version",
    env=ENV["version"],
    type=int,
    default=None,
    help="Integer version. Default: the UTC unix time in seconds.",
)
@json_option
def package(
    workspace: Path, model_name: str, store: str, version: int | None, as_json: bool
) -> None:
    """Stage 4: export the SavedModel, prove it matches the model, store it with its lineage.

    The version folder holds saved_model.pb, variables/ and assets.extra/ (tfship.json
    manifest, tf_serving_warmup_requests, model.keras for retraining, the test split).
    """
    if _skip_if_no_new_data(workspace, "package"):
        return
    from tfship.package import package as run
    from tfship.store import local_store

    info = run(workspace, local_store(store), model_name, version)
    emit(
        info,
        as_json,
        f"packaged {model_name} version {info['version']} ({info['stored']}) in {info['store']}",
    )


@cli.command(context_settings=CONTEXT)
@click.argument("mode", required=False, type=click.Choice(["retrain"]))
@workspace_option
@model_name_option
@store_option
@opt(
    "--serving",
    env="TFSHIP_SERVING_DIR",
    default="serving",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Models root of the local TF-Serving-compatible server.",
)
@opt(
    "--data",
    env=ENV["data"],
    default=config.DEFAULT_DATA,
    show_default=True,
    help="Same sources as `tfship build --data` (first run).",
)
@opt("--data-sha256", env=ENV["data_sha256"], default=None)
@opt(
    "--retrain-data",
    env="TFSHIP_RETRAIN_DATA",
    default=None,
    help="New data for the retrain cycle. Default: a shifted snapshot of the default data.",
)
@click.option("--retrain", is_flag=True, help="Also run the retrain cycle (same as `run retrain`).")
@opt(
    "--epochs", env=ENV["epochs"], type=click.IntRange(1), default=config.EPOCHS, show_default=True
)
@gate_options
@click.option(
    "--stop-serving",
    is_flag=True,
    help="Stop the local serving at the end (default: keep it up to query it).",
)
@json_option
def run(
    mode: str | None,
    workspace: Path,
    model_name: str,
    store: str,
    serving: Path,
    data: str,
    data_sha256: str | None,
    retrain_data: str | None,
    retrain: bool,
    epochs: int,
    min_accuracy: float,
    min_class_recall: float,
    stop_serving: bool,
    as_json: bool,
) -> None:
    """The main job, locally, end to end on the embedded defaults.

    \b
    build -> train -> test -> package -> start the local serving -> deploy -> test-deployed.
    `tfship run retrain` (or --retrain) then makes a new data snapshot (the default data
    with a shift, or --retrain-data) -> build -> retrain -> test -> package -> deploy ->
    test-deployed. It stops at the first failing stage with that stage's exit code; each
    stage is atomic, so Ctrl-C leaves no half state. At the end it prints what is serving,
    where the reports are, and how to query the model with curl.
    """
    from tfship.evaluate import Gates
    from tfship.pipeline import RunSettings, run_all

    s = RunSettings(
        workspace=workspace,
        store=Path(store),
        serving=serving,
        model_name=model_name,
        data=data,
        data_sha256=data_sha256,
        retrain_data=retrain_data,
        epochs=epochs,
        gates=Gates(min_accuracy, min_class_recall),
        retrain=retrain or mode == "retrain",
        keep_serving=not stop_serving,
    )
    out = run_all(s)
    if as_json:
        emit(out, True, "")
        return
    version = out["serving_version"]
    click.echo(
        f"\nserving: {model_name} version {version} at {out['url']}"
        + ("" if out["kept_serving"] else " (stopped)")
    )
    reports = [workspace / d / "report.md" for d in ("eval", "retrain", "deployed")]
    click.echo("reports: " + ", ".join(str(r) for r in reports if r.exists()))
    click.echo("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in out["timings"].items()))
    if out["kept_serving"]:
        url = f"{out['url']}/v1/models/{model_name}"
        click.echo(f"query:   curl -s {url}")
        click.echo(f"         curl -s {url}/metadata")
        click.echo(
            '         python3 -c \'import json; print(json.dumps({"instances": '
            f"[[[[0.0]] * 8] * 8]}}))' | curl -s -d @- {url}:predict"
        )
        click.echo(f"stop:    kill {out['server']['pid']}")


def tf_bool(name: str, default: bool, help_text: str, env: str):
    """A TF Serving boolean flag: ``--x``, ``--x=true`` and ``--x=false`` all work."""
    return opt(
        name,
        env=env,
        type=click.BOOL,
        default=default,
        is_flag=False,
        flag_value=True,
        show_default=True,
        help=help_text,
    )


@cli.command(context_settings=CONTEXT)
@opt(
    "--model_name",
    env="MODEL_NAME",
    default=config.DEFAULT_MODEL_NAME,
    show_default=True,
    help="Name the model answers to (ignored with --model_config_file).",
)
@opt(
    "--model_base_path",
    env="MODEL_BASE_PATH",
    default=None,
    help="Absolute path of the folder whose integer-named children are the model's versions.",
)
@opt(
    "--rest_api_port",
    env="TFSHIP_REST_API_PORT",
    type=click.IntRange(0, 65535),
    default=config.REST_PORT,
    show_default=True,
    help="REST port; 0 turns REST off.",
)
@opt(
    "--port",
    env="TFSHIP_GRPC_PORT",
    type=click.IntRange(1, 65535),
    default=config.GRPC_PORT,
    show_default=True,
    help="gRPC port.",
)
@opt(
    "--host",
    env="TFSHIP_SERVE_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind. 0.0.0.0 exposes the model to the network.",
)
@opt(
    "--file_system_poll_wait_seconds",
    env="TFSHIP_POLL_SECONDS",
    type=click.FloatRange(0),
    default=config.POLL_SECONDS,
    show_default=True,
    help="How often to look for new versions; 0 = at start and config reloads only.",
)
@opt(
    "--model_config_file",
    env="TFSHIP_MODEL_CONFIG_FILE",
    default=None,
    type=click.Path(dir_okay=False),
    help="TF Serving model config (text proto): several models, version policy, labels.",
)
@opt(
    "--model_config_file_poll_wait_seconds",
    env="TFSHIP_MODEL_CONFIG_POLL_SECONDS",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="How often to re-read --model_config_file; 0 = read once.",
)
@opt(
    "--max_num_load_retries",
    env="TFSHIP_MAX_NUM_LOAD_RETRIES",
    type=click.IntRange(0),
    default=5,
    show_default=True,
    help="Retries of a failed load (the version shows LOADING meanwhile).",
)
@opt(
    "--load_retry_interval_micros",
    env="TFSHIP_LOAD_RETRY_INTERVAL_MICROS",
    type=int,
    default=60_000_000,
    show_default=True,
    help="Wait between load retries, in microseconds (negative: no wait).",
)
@tf_bool(
    "--allow_version_labels_for_unavailable_models",
    False,
    "Allow a label to point at a version that is not AVAILABLE yet (else a config with "
    "labels cannot start the server).",
    "TFSHIP_ALLOW_LABELS_FOR_UNAVAILABLE",
)
@tf_bool(
    "--enable_model_warmup",
    True,
    "Replay assets.extra/tf_serving_warmup_requests before a version is AVAILABLE.",
    "TFSHIP_ENABLE_MODEL_WARMUP",
)
@opt(
    "--num_request_iterations_for_warmup",
    env="TFSHIP_WARMUP_ITERATIONS",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Times each warmup record is replayed (0 = once).",
)
@tf_bool(
    "--enable_signature_method_name_check",
    False,
    "Check signatures' method_name (predict/classify/regress) as older servers did.",
    "TFSHIP_SIGNATURE_METHOD_CHECK",
)
@tf_bool(
    "--enable_serialization_as_tensor_content",
    False,
    "gRPC Predict answers in tensor_content instead of the typed *_val fields.",
    "TFSHIP_TENSOR_CONTENT",
)
@opt(
    "--monitoring_config_file",
    env="TFSHIP_MONITORING_CONFIG_FILE",
    default=None,
    type=click.Path(dir_okay=False),
    help='e.g. prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }: '
    "TF Serving's metrics on the REST port.",
)
@opt(
    "--ready_file",
    env="TFSHIP_READY_FILE",
    default=None,
    help="Write {rest_port, grpc_port, pid} as JSON here once listening (for scripts).",
)
def serve(**flags) -> None:
    """A local TF-Serving-compatible model server (REST and gRPC).

    For local runs, tests, and hosts without Docker; it is never friendlier than
    tensorflow_model_server: same flags, paths, wire formats, error codes and texts.
    Like the real server it opens no port until every model has a version AVAILABLE
    (an empty base path keeps it waiting), and exits 255 with "Failed to start server"
    on stdout if a first load fails after its retries. It polls the base path for new
    versions and keeps the old version answering until the new one is AVAILABLE.
    Production hosts run TensorFlow Serving itself (tools/install_server.sh).

    \b
    Example:
      tfship serve --model_name digits --model_base_path "$PWD/store/digits"
      curl localhost:8501/v1/models/digits
    """
    from tfship.server import ServeOptions, serve_forever

    sys.exit(serve_forever(ServeOptions(**flags)))


def serving_options(f):
    """Where TF Serving is and how to reach it (stage 7, deploy, retrain)."""
    f = opt(
        "--transport",
        env="TFSHIP_SERVING_TRANSPORT",
        type=click.Choice(["rest", "grpc"]),
        default="rest",
        show_default=True,
        help="REST (url http://host:8501) or gRPC (url host:8500).",
    )(f)
    f = opt(
        "--url",
        env=ENV["serving_url"],
        default=None,
        help="TF Serving address. Default: http://$DEPLOY_SERVER_HOSTNAME:8501, "
        "else http://127.0.0.1:8501.",
    )(f)
    return f


@cli.command("test-deployed", context_settings=CONTEXT)
@workspace_option
@model_name_option
@serving_options
@opt(
    "--version",
    "version",
    env="TFSHIP_EXPECTED_VERSION",
    type=int,
    default=None,
    help="Version to verify. Default: the one in workspace/package/.",
)
@opt(
    "--manifest",
    env="TFSHIP_MANIFEST",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A package's assets.extra/tfship.json, instead of workspace/package/.",
)
@opt(
    "--min-accuracy",
    env="TFSHIP_SERVED_MIN_ACCURACY",
    type=click.FloatRange(0, 1),
    default=None,
    help="Served accuracy gate. Default: the gate recorded in the manifest.",
)
@opt(
    "--samples",
    env="TFSHIP_VERIFY_SAMPLES",
    type=click.IntRange(1),
    default=200,
    show_default=True,
    help="Held-out test rows sent for the accuracy check.",
)
@opt(
    "--latency-requests",
    env="TFSHIP_LATENCY_REQUESTS",
    type=click.IntRange(1),
    default=50,
    show_default=True,
)
@opt(
    "--max-p95-ms",
    env="TFSHIP_MAX_P95_MS",
    type=click.FloatRange(0),
    default=250.0,
    show_default=True,
)
@opt(
    "--wait-seconds",
    env="TFSHIP_WAIT_SECONDS",
    type=click.FloatRange(0),
    default=config.AVAILABLE_TIMEOUT,
    show_default=True,
    help="How long to wait for the version to become AVAILABLE.",
)
@json_option
def test_deployed(
    workspace: Path,
    model_name: str,
    url: str | None,
    transport: str,
    version: int | None,
    manifest: Path | None,
    min_accuracy: float | None,
    samples: int,
    latency_requests: int,
    max_p95_ms: float,
    wait_seconds: float,
    as_json: bool,
) -> None:
    """Stage 7: verify the model TF Serving serves against its package (exit 6 on a miss).

    Checks, on the version's own endpoint: AVAILABLE; signature equals the manifest's;
    golden inputs give the manifest's outputs (1e-4); accuracy on held-out rows reaches
    the gate; p95 latency. Writes workspace/deployed/ (verify.json, junit.xml, report.md).
    """
    from tfship.serving import default_serving_url
    from tfship.verify import VerifySettings
    from tfship.verify import test_deployed as run

    if version is None and manifest is None and _skip_if_no_new_data(workspace, "verify"):
        return
    settings = VerifySettings(min_accuracy, samples, latency_requests, max_p95_ms, wait_seconds)
    result = run(
        workspace, url or default_serving_url(), model_name, settings, version, manifest, transport
    )
    lat = result["latency_ms"]
    emit(
        result,
        as_json,
        f"verified {model_name} version {result['version']} at "
        f"{result['url']}: accuracy {result['accuracy']:.4f}, "
        f"p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms",
    )


def host_options(f):
    """Where the deploy target is: the CircleCI sample's DEPLOY_SERVER_* variables."""
    options = [
        opt(
            "--hostname",
            env=ENV["hostname"],
            default=None,
            help="Deploy host (SSH). Empty: a local folder served by `tfship serve`.",
        ),
        opt("--username", env=ENV["username"], default=None, help="SSH user."),
        opt(
            "--base-path",
            env=ENV["path"],
            default="serving",
            show_default=True,
            help="Models root on the host; TF Serving's --model_base_path is <this>/<model>.",
        ),
        opt(
            "--ssh-port",
            env=ENV["port"],
            type=click.IntRange(1, 65535),
            default=22,
            show_default=True,
        ),
        opt(
            "--ssh-key-file",
            env=ENV["ssh_key_file"],
            default=None,
            type=click.Path(dir_okay=False),
            help="Private key file.",
        ),
        opt(
            "--ssh-key-env",
            env="TFSHIP_SSH_KEY_ENV",
            default=ENV["ssh_key"],
            show_default=True,
            help="Name of the variable holding the private key's text (CircleCI: add it as "
            "a project environment variable). Read in memory, never written to disk.",
        ),
        opt(
            "--known-hosts",
            env=ENV["known_hosts"],
            default=None,
            type=click.Path(dir_okay=False),
            help="Default: ~/.ssh/known_hosts.",
        ),
        click.option(
            "--accept-unknown-host-key",
            is_flag=True,
            help="Connect to a host whose key is not in known_hosts (prints a warning; "
            "a CHANGED key is still refused).",
        ),
        opt(
            "--ssh-timeout",
            env="TFSHIP_SSH_TIMEOUT",
            type=click.FloatRange(0.1),
            default=10.0,
            show_default=True,
            help="Connect timeout, seconds.",
        ),
    ]
    for o in reversed(options):
        f = o(f)
    return f


@dataclass
class Where:
    """Where the deploy target is: one host, a fleet, or the local folder (no hostname)."""

    hostname: str | None
    username: str | None
    base_path: str
    ssh_port: int
    ssh_key_file: str | None
    ssh_key_env: str | None
    known_hosts: str | None
    accept_unknown_host_key: bool
    ssh_timeout: float
    url: str | None
    transport: str

    def ssh(self) -> dict:
        """SSH settings shared by every host (secrets read from the environment here)."""
        import os

        return {
            "key_file": self.ssh_key_file,
            "key_text": os.environ.get(self.ssh_key_env) if self.ssh_key_env else None,
            "password": os.environ.get(ENV["password"]),
            "known_hosts": self.known_hosts,
            "accept_unknown_host": self.accept_unknown_host_key,
            "connect_timeout": self.ssh_timeout,
        }

    def target(self):
        """The single target (SSH host, or the local folder without a hostname)."""
        from tfship.deploy import make_target

        return make_target(
            self.hostname,
            self.base_path,
            self.url,
            self.transport,
            {**self.ssh(), "username": self.username, "port": self.ssh_port},
        )

    def is_fleet(self, hosts_file: Path | None) -> bool:
        return bool(hosts_file) or bool(self.hostname and "," in self.hostname)

    def fleet(self, hosts_file: Path | None, require_all: bool) -> list:
        """Connect to every host of the fleet (preflight)."""
        from tfship.fleet import connect, parse_hosts

        specs = parse_hosts(
            self.hostname, hosts_file, self.username, self.ssh_port, self.base_path, self.url
        )
        targets, errors = connect(specs, self.ssh(), self.transport, require_all)
        for e in errors:
            click.echo(f"WARNING: skipping unreachable host {e}", err=True)
        return targets

    def fleet_champion(self, model_name: str):
        """A fleet's champion is the version every host serves: refuse a mixed fleet."""
        from tfship.fleet import serving_version, state

        targets = self.fleet(None, True)
        try:
            serving_version(state(targets, model_name))
        except Exception:
            for t in targets:
                t.host.close()
            raise
        for t in targets[1:]:
            t.host.close()
        return targets[0]


WHERE_FIELDS = tuple(Where.__dataclass_fields__)


def target_options(f):
    """host_options + serving_options, handed to the command as one ``where: Where``."""

    @functools.wraps(f)
    def wrapper(**kw):
        return f(where=Where(**{k: kw.pop(k) for k in WHERE_FIELDS}), **kw)

    return host_options(serving_options(wrapper))


def _deploy_settings(
    keep, lock_stale_seconds, lock_wait_seconds, wait_seconds, latency_requests, max_p95_ms, **extra
):
    """DeploySettings from the deploy_options flags (deploy and rollback share them)."""
    from tfship.deploy import DeploySettings
    from tfship.verify import VerifySettings

    return DeploySettings(
        keep=keep,
        lock_stale_seconds=lock_stale_seconds,
        lock_wait_seconds=lock_wait_seconds,
        verify=VerifySettings(
            latency_requests=latency_requests, max_p95_ms=max_p95_ms, wait_seconds=wait_seconds
        ),
        **extra,
    )


def deploy_options(f):
    options = [
        opt(
            "--keep",
            env="TFSHIP_KEEP_VERSIONS",
            type=click.IntRange(1),
            default=config.KEEP_VERSIONS,
            show_default=True,
            help="Versions kept on the host (never the one serving).",
        ),
        opt(
            "--lock-stale-seconds",
            env="TFSHIP_LOCK_STALE_SECONDS",
            type=click.FloatRange(0),
            default=config.LOCK_STALE_SECONDS,
            show_default=True,
            help="A lock older than this is broken, with a warning.",
        ),
        opt(
            "--lock-wait-seconds",
            env="TFSHIP_LOCK_WAIT_SECONDS",
            type=click.FloatRange(0),
            default=60.0,
            show_default=True,
            help="How long to wait for another deploy.",
        ),
        opt(
            "--wait-seconds",
            env="TFSHIP_WAIT_SECONDS",
            type=click.FloatRange(0),
            default=config.AVAILABLE_TIMEOUT,
            show_default=True,
            help="How long TF Serving may take to make the version AVAILABLE.",
        ),
        opt(
            "--latency-requests",
            env="TFSHIP_LATENCY_REQUESTS",
            type=click.IntRange(1),
            default=50,
            show_default=True,
        ),
        opt(
            "--max-p95-ms",
            env="TFSHIP_MAX_P95_MS",
            type=click.FloatRange(0),
            default=250.0,
            show_default=True,
        ),
    ]
    for o in reversed(options):
        f = o(f)
    return f


def fleet_options(f):
    """Several TF Serving hosts: canary first, then batches; all or nothing."""
    options = [
        opt(
            "--hosts-file",
            env="TFSHIP_HOSTS_FILE",
            default=None,
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="One 'user@host:port base_path serving_url' per line (a fleet).",
        ),
        opt(
            "--canary-seconds",
            env="TFSHIP_CANARY_SECONDS",
            type=click.FloatRange(0),
            default=30.0,
            show_default=True,
            help="Fleet: soak time on the canary host, with the checks repeated.",
        ),
        opt(
            "--max-parallel",
            env="TFSHIP_MAX_PARALLEL",
            type=click.IntRange(1),
            default=2,
            show_default=True,
            help="Fleet: hosts deployed at once after the canary.",
        ),
        click.option(
            "--require-all/--no-require-all",
            default=True,
            show_default=True,
            help="Fleet: stop before any change if a host is unreachable.",
        ),
    ]
    for o in reversed(options):
        f = o(f)
    return f


@cli.command(context_settings=CONTEXT)
@workspace_option
@target_options
@deploy_options
@fleet_options
@opt(
    "--package",
    "package_dir",
    env="TFSHIP_PACKAGE",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="A version folder to deploy. Default: the one in workspace/package/.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Deploy even if the version serving is not the one retrain compared with.",
)
@json_option
def deploy(
    workspace: Path,
    where: Where,
    keep,
    lock_stale_seconds,
    lock_wait_seconds,
    wait_seconds,
    latency_requests,
    max_p95_ms,
    hosts_file,
    canary_seconds,
    max_parallel,
    require_all,
    package_dir: Path | None,
    force: bool,
    as_json: bool,
) -> None:
    """Stage 5: ship the package to TF Serving with no downtime; roll back on failure.

    \b
    Never stops TF Serving. Takes a per-model lock on the host, uploads to a hidden
    .incoming-* folder, checks every file's sha256 on the host, renames it to the
    version number in one step, waits until TF Serving has it AVAILABLE, runs the stage 7
    checks, and keeps --keep versions. Any failure after the rename moves the version to
    <model>/.rejected/ and waits for the previous version to answer again (exit 4).

    \b
    Host: DEPLOY_SERVER_HOSTNAME / _USERNAME / _PATH / _PORT, key in DEPLOY_SERVER_SSH_KEY
    (text) or DEPLOY_SERVER_SSH_KEY_FILE, host key checked against DEPLOY_SERVER_KNOWN_HOSTS.
    Without a hostname the target is the local folder --base-path (tfship serve's).

    \b
    A fleet (DEPLOY_SERVER_HOSTNAME=a,b,c or --hosts-file): every host reached first,
    one version served by all, then a canary (full checks + --canary-seconds soak), then
    batches of --max-parallel; any failure rolls back every host already moved.
    """
    from tfship.deploy import deploy as run
    from tfship.workspace import Workspace, read_json

    ws = Workspace(workspace)
    expect = None
    if package_dir is None and _skip_if_no_new_data(workspace, "deploy"):
        return
    if package_dir is None:
        info = read_json(ws.require(ws.package / "package.json", "package"))
        package_dir = ws.package / str(info["version"])
    if (ws.retrain / "retrain.json").exists():
        decision = read_json(ws.retrain / "retrain.json")
        if decision.get("decision") == "deploy-challenger":
            expect = decision.get("champion_version")
    settings = _deploy_settings(
        keep,
        lock_stale_seconds,
        lock_wait_seconds,
        wait_seconds,
        latency_requests,
        max_p95_ms,
        expect_serving=expect,
        force=force,
    )
    if where.is_fleet(hosts_file):
        from tfship.fleet import FleetFailed, fleet_deploy

        targets = where.fleet(hosts_file, require_all)
        try:
            fleet = fleet_deploy(
                targets, package_dir, settings, canary_seconds, max_parallel, force
            )
        except FleetFailed as exc:
            click.echo(
                json.dumps(exc.result.to_dict(), indent=2) if as_json else exc.result.table()
            )
            raise
        finally:
            for t in targets:
                t.host.close()
        emit(fleet.to_dict(), as_json, fleet.table())
        return
    target = where.target()
    try:
        result = run(target, package_dir, settings)
    finally:
        target.host.close()
    emit(
        result.to_dict(),
        as_json,
        f"{result.state}: {result.model} version {result.version} on {result.host} "
        f"(was {result.previous}); verified in {result.seconds['total']:.1f} s",
    )


@cli.command(context_settings=CONTEXT)
@model_name_option
@target_options
@deploy_options
@opt(
    "--to",
    "to",
    env="TFSHIP_ROLLBACK_TO",
    type=int,
    default=None,
    help="Version to serve. Default: the newest kept version older than the one serving.",
)
@json_option
def rollback(
    model_name,
    where: Where,
    keep,
    lock_stale_seconds,
    lock_wait_seconds,
    wait_seconds,
    latency_requests,
    max_p95_ms,
    to: int | None,
    as_json: bool,
) -> None:
    """Serve an older kept version again, with the same lock and checks as deploy.

    Newer versions are moved to <model>/.rejected/ (not deleted), then the older version is
    verified against its own manifest once it answers.
    """
    from tfship.deploy import rollback as run

    settings = _deploy_settings(
        keep, lock_stale_seconds, lock_wait_seconds, wait_seconds, latency_requests, max_p95_ms
    )
    target = where.target()
    try:
        result = run(target, model_name, to, settings)
    finally:
        target.host.close()
    emit(
        result,
        as_json,
        f"rolled back {model_name} to version {result['version']} "
        f"(was {result['previous']}); moved aside: {result['moved_aside']}",
    )


def _skip_if_no_new_data(workspace: Path, command: str) -> bool:
    """True (and say so) when retrain decided there is no new data for this workspace."""
    from tfship.retrain import no_new_data
    from tfship.workspace import Workspace

    decision = no_new_data(Workspace(workspace))
    if decision:
        click.echo(
            f"no new data since version {decision['champion_version']}: nothing to {command}"
        )
    return decision is not None


@cli.command(context_settings=CONTEXT)
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@opt(
    "--kind",
    env="TFSHIP_SNAPSHOT_KIND",
    type=click.Choice(["shift", "poisoned"]),
    default="shift",
    show_default=True,
)
@opt("--seed", env=ENV["seed"], type=int, default=1, show_default=True)
def snapshot(out: Path, kind: str, seed: int) -> None:
    """Write a new data snapshot (NPZ) from the bundled digits, for demos and drills.

    shift: moved and dimmed images (new data a retrain should accept). poisoned: labels
    shuffled independently of the images (the gate must reject it).
    """
    from tfship.data import make_snapshot

    info = make_snapshot(out, kind, seed)
    click.echo(f"wrote {info['rows']} rows ({kind}) to {info['path']}")


@cli.command(context_settings=CONTEXT)
@workspace_option
@model_name_option
@store_option
@target_options
@train_options
@opt(
    "--data",
    env=ENV["data"],
    default=None,
    help="New data (same sources as build). Default: what `tfship build` left in the workspace.",
)
@opt("--data-sha256", env=ENV["data_sha256"], default=None)
@MAX_DATA_BYTES
@opt(
    "--tolerance",
    env="TFSHIP_RETRAIN_TOLERANCE",
    type=click.FloatRange(0, 1),
    default=config.RETRAIN_TOLERANCE,
    show_default=True,
    help="Challenger accuracy may be this much below the champion's.",
)
@opt(
    "--min-accuracy",
    env=ENV["min_accuracy"],
    type=click.FloatRange(0, 1),
    default=config.MIN_ACCURACY,
    show_default=True,
    help="Absolute accuracy floor.",
)
@opt(
    "--max-class-drop",
    env="TFSHIP_MAX_CLASS_DROP",
    type=click.FloatRange(0, 1),
    default=config.MAX_CLASS_DROP,
    show_default=True,
    help="No class's recall may drop by more than this.",
)
@click.option("--from-scratch", is_flag=True, help="Train anew instead of fine-tuning.")
@opt(
    "--fine-tune-learning-rate",
    env="TFSHIP_FINE_TUNE_LEARNING_RATE",
    type=float,
    default=config.FINE_TUNE_LEARNING_RATE,
    show_default=True,
    help="Learning rate when fine-tuning the champion (--learning-rate is for from scratch).",
)
@click.option(
    "--allow-cold-start",
    is_flag=True,
    help="If nothing is serving, train from scratch instead of failing.",
)
@json_option
def retrain(
    workspace: Path,
    model_name: str,
    store: str,
    where: Where,
    epochs,
    batch_size,
    learning_rate,
    model_fn,
    seed,
    data,
    data_sha256,
    max_data_bytes,
    tolerance,
    min_accuracy,
    max_class_drop,
    from_scratch,
    fine_tune_learning_rate,
    allow_cold_start,
    as_json,
) -> None:
    """Stage 6: retrain on new data against the version TF Serving is serving now.

    \b
    Champion = the highest AVAILABLE version on the deploy target, fetched from the store
    (or the host). Same data hash as the champion's -> "no new data", exit 0, and package,
    deploy and test-deployed skip. Otherwise the challenger fine-tunes the champion (or
    --from-scratch) and both are evaluated on the champion's test set + the new test
    split: challenger >= champion - --tolerance, >= --min-accuracy, no class recall drop
    over --max-class-drop; else exit 3. retrain/report.md shows both side by side.
    """
    from tfship.data import Checks
    from tfship.data import build as build_data
    from tfship.retrain import RetrainSettings
    from tfship.retrain import retrain as run
    from tfship.store import local_store
    from tfship.train import TrainSettings

    if data:
        build_data(workspace, data, Checks(max_bytes=max_data_bytes), seed, data_sha256)
    target = where.target() if not where.is_fleet(None) else where.fleet_champion(model_name)

    def from_host(version: int, dest: Path) -> Path:
        target.host.get_tree(f"{target.model_dir(model_name)}/{version}", dest)
        return dest

    try:
        decision = run(
            workspace,
            local_store(store),
            target.client(model_name),
            model_name,
            RetrainSettings(
                tolerance,
                min_accuracy,
                max_class_drop,
                from_scratch,
                allow_cold_start,
                fine_tune_learning_rate,
            ),
            TrainSettings(epochs, batch_size, learning_rate, seed=seed, model_fn=model_fn),
            host_fetch=from_host,
            serving_version=lambda: target.serving_version(model_name),
        )
    finally:
        target.host.close()
    if decision["decision"] == "no-new-data":
        emit(
            decision,
            as_json,
            f"no new data, nothing to do (version "
            f"{decision['champion_version']} was trained on it)",
        )
        return
    emit(
        decision,
        as_json,
        f"challenger accepted: accuracy {decision['challenger']['accuracy']:.4f}"
        + (
            f" vs champion {decision['champion']['accuracy']:.4f} (version "
            f"{decision['champion_version']})"
            if decision["champion"]
            else ""
        )
        + f"; report {workspace / 'retrain' / 'report.md'}",
    )


@cli.command(context_settings=CONTEXT)
@workspace_option
@opt(
    "--event",
    "event_kind",
    env="TFSHIP_NOTIFY_EVENT",
    type=click.Choice(["fail", "pass", "approval", "info"]),
    default="fail",
    show_default=True,
)
@opt(
    "--webhook-env",
    env="TFSHIP_WEBHOOK_ENV",
    default="TFSHIP_WEBHOOK_URL",
    show_default=True,
    help="Name of the variable holding the webhook URL (a secret: never printed).",
)
@opt(
    "--format",
    "fmt",
    env="TFSHIP_NOTIFY_FORMAT",
    type=click.Choice(["slack", "json"]),
    default="slack",
    show_default=True,
    help="Slack incoming-webhook JSON, or a generic JSON body.",
)
@opt("--job", env="CIRCLE_JOB", default=None, help="Job name (CircleCI sets CIRCLE_JOB).")
@opt("--stage", env="TFSHIP_STAGE", default=None)
@opt("--message", env="TFSHIP_NOTIFY_MESSAGE", default=None)
@opt(
    "--evidence",
    "evidence_file",
    env="TFSHIP_NOTIFY_EVIDENCE",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A markdown file to include (e.g. workspace/retrain/report.md before an approval).",
)
@click.option("--strict", is_flag=True, help="Fail (exit 7) if the post fails.")
@json_option
def notify(
    workspace: Path,
    event_kind: str,
    webhook_env: str,
    fmt: str,
    job: str | None,
    stage: str | None,
    message: str | None,
    evidence_file: Path | None,
    strict: bool,
    as_json: bool,
) -> None:
    """Post what happened to a webhook: job, stage, version, the failed check and its numbers.

    Reads the failed check from the workspace reports (deployed/, retrain/, eval/). Network
    errors never fail the job unless --strict.
    """
    import os

    from tfship.notify import notify as run

    n = run(
        workspace,
        event_kind,
        os.environ.get(webhook_env),
        fmt,
        job,
        stage,
        message,
        evidence_file,
        strict,
    )
    emit(
        n,
        as_json,
        f"notification {'sent' if n['sent'] else 'not sent'}: {event_kind}"
        + (f" ({n['failed_check']})" if n.get("failed_check") else ""),
    )


@cli.command(context_settings=CONTEXT)
@model_name_option
@target_options
@fleet_options
@json_option
def status(
    model_name,
    where: Where,
    hosts_file,
    canary_seconds,
    max_parallel,
    require_all,
    as_json,
) -> None:
    """What the deploy target(s) hold and serve: host, versions on disk, serving, state.

    A fleet serving more than one version is reported as MIXED (exit 4): retrain and deploy
    refuse to run until it is resolved.
    """
    from tfship.errors import DeployError
    from tfship.fleet import state, status_table

    targets = where.fleet(hosts_file, False) if where.is_fleet(hosts_file) else [where.target()]
    try:
        rows = state(targets, model_name)
    finally:
        for t in targets:
            t.host.close()
    emit({"hosts": rows}, as_json, status_table(rows))
    if len({r["serving"] for r in rows}) > 1:
        raise DeployError(
            "the fleet serves mixed versions",
            hint="`tfship rollback --to VERSION` or a deploy with --force",
        )


@cli.group(context_settings=CONTEXT)
def ci() -> None:
    """The CircleCI API: trigger, status, approve, schedule, watch-data.

    Needs a personal API token in CIRCLE_TOKEN (never printed) and the project slug
    (vcs/org/repo) in CIRCLE_PROJECT_SLUG or --project.

    Every call is retried a bounded number of times (5) on timeouts, 429 (honouring
    Retry-After) and 5xx; a trigger whose answer was lost is looked up, never sent twice
    (if two of your pipelines could be it, it stops and names them).
    TFSHIP_API_TIMEOUT (seconds per request, default 30) and TFSHIP_API_MAX_BACKOFF (the
    longest wait between tries, default 60) tune this.
    """


def api_options(f):
    f = opt(
        "--api-url",
        env="CIRCLECI_API_URL",
        default="https://circleci.com/api/v2",
        show_default=True,
        help="API base (CircleCI server installs have their own).",
    )(f)
    f = opt(
        "--token-env",
        env="TFSHIP_TOKEN_ENV",
        default="CIRCLE_TOKEN",
        show_default=True,
        help="Variable holding the personal API token.",
    )(f)
    return f


def project_option(f):
    return opt(
        "--project", env="CIRCLE_PROJECT_SLUG", required=True, help="Project slug: gh/org/repo."
    )(f)


def _api(api_url: str, token_env: str):
    import os

    from tfship.circleci import CircleCI
    from tfship.errors import ConfigError

    def seconds(name: str, default: float) -> float:
        raw = os.environ.get(name, "")
        try:
            value = float(raw) if raw else default
        except ValueError:
            value = -1.0
        if value <= 0:
            raise ConfigError(f"{name}={raw!r} is not a positive number of seconds")
        return value

    return CircleCI(
        os.environ.get(token_env, ""),
        api_url,
        timeout=seconds("TFSHIP_API_TIMEOUT", 30.0),
        max_backoff=seconds("TFSHIP_API_MAX_BACKOFF", 60.0),
    )


@ci.command("trigger", context_settings=CONTEXT)
@api_options
@project_option
@opt("--branch", env="TFSHIP_CI_BRANCH", default=None, help="Default: main.")
@opt("--tag", env="TFSHIP_CI_TAG", default=None)
@click.option(
    "--param",
    "params",
    multiple=True,
    help="Pipeline parameter k=v (repeatable; at most 100, names up to 128 and values up "
    "to 512 characters).",
)
@opt(
    "--definition-id",
    env="TFSHIP_DEFINITION_ID",
    default=None,
    help="Use POST .../pipeline/run with this pipeline definition id.",
)
@click.option("--wait", is_flag=True, help="Follow the pipeline until its workflows exist.")
@json_option
def ci_trigger(
    api_url, token_env, project, branch, tag, params, definition_id, wait, as_json
) -> None:
    """Trigger a pipeline (e.g. --param retrain=true --param data_uri=...)."""
    from tfship.circleci import parse_params

    api = _api(api_url, token_env)
    parameters = parse_params(params)
    if definition_id:
        p = api.run_pipeline(project, definition_id, branch, tag, parameters)
    else:
        p = api.trigger(project, branch, tag, parameters)
    out = {"pipeline": p}
    if wait:
        out["workflows"] = api.wait_workflows(p["id"])
    emit(
        out,
        as_json,
        f"pipeline {p.get('number')} created ({p['id']})"
        + "".join(f"\n  workflow {w['name']}: {w['status']}" for w in out.get("workflows", [])),
    )


@ci.command("status", context_settings=CONTEXT)
@api_options
@click.argument("pipeline_id")
@json_option
def ci_status(api_url, token_env, pipeline_id, as_json) -> None:
    """A pipeline's workflows and their jobs (status like the web console)."""
    api = _api(api_url, token_env)
    flows = api.workflows(pipeline_id)
    out = [{**w, "jobs": api.jobs(w["id"])} for w in flows]
    lines = []
    for w in out:
        lines.append(f"{w['name']}: {w['status']}")
        lines += [f"  {j['name']}: {j['status']}" for j in w["jobs"]]
    emit({"workflows": out}, as_json, "\n".join(lines) or "no workflows yet")


@ci.command("approve", context_settings=CONTEXT)
@api_options
@click.argument("workflow_id")
@opt(
    "--job",
    "job_name",
    env="TFSHIP_APPROVAL_JOB",
    default="hold",
    show_default=True,
    help="Name of the approval job.",
)
@opt(
    "--timeout",
    env="TFSHIP_APPROVAL_TIMEOUT",
    type=click.FloatRange(0),
    default=300.0,
    show_default=True,
    help="How long to wait for the approval job to appear, and with --reject for the "
    "workflow to read canceled (seconds).",
)
@opt(
    "--poll",
    env="TFSHIP_APPROVAL_POLL",
    type=click.FloatRange(0.01),
    default=5.0,
    show_default=True,
)
@click.option(
    "--reject",
    is_flag=True,
    help="Reject instead: cancel the whole workflow (POST /workflow/{id}/cancel), so "
    "nothing after the hold runs.",
)
@json_option
def ci_approve(api_url, token_env, workflow_id, job_name, timeout, poll, reject, as_json) -> None:
    """Approve the on-hold approval job of a workflow, waiting for it to appear.

    With --reject, the hold is found the same way (no hold: the command fails) and then the
    whole workflow is canceled (CircleCI's API has no reject), so the hold and every job
    after it are canceled. The command returns once the workflow reads canceled.
    """
    api = _api(api_url, token_env)
    job = api.find_approval(workflow_id, job_name, timeout, poll)
    if not reject:
        api.approve(workflow_id, job.get("approval_request_id") or job["id"])
        emit(
            {"job": job, "action": "approved"},
            as_json,
            f"approved {job['name']} in workflow {workflow_id}",
        )
        return
    api.cancel_workflow(workflow_id)
    workflow = api.wait_workflow_status(workflow_id, "canceled", timeout, poll)
    emit(
        {"job": job, "action": "rejected", "workflow": workflow},
        as_json,
        f"rejected {job['name']} in workflow {workflow_id}: workflow canceled, "
        "nothing after the hold runs",
    )


@ci.group("schedule", context_settings=CONTEXT)
def ci_schedule() -> None:
    """Schedule triggers (e.g. the nightly retrain)."""


@ci_schedule.command("create", context_settings=CONTEXT)
@api_options
@project_option
@opt("--name", env="TFSHIP_SCHEDULE_NAME", default="nightly-retrain", show_default=True)
@opt(
    "--hour",
    "hours",
    multiple=True,
    type=click.IntRange(0, 23),
    default=(2,),
    show_default=True,
    help="UTC hour (repeatable).",
)
@opt(
    "--day",
    "days",
    multiple=True,
    type=click.Choice(["MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"]),
    default=("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"),
    show_default=True,
)
@opt("--branch", env="TFSHIP_CI_BRANCH", default="main", show_default=True)
@click.option(
    "--param", "params", multiple=True, help="Pipeline parameter k=v. Default: retrain=true."
)
@json_option
def ci_schedule_create(
    api_url, token_env, project, name, hours, days, branch, params, as_json
) -> None:
    """Create a schedule trigger; it sets retrain=true so the retrain-deploy workflow runs."""
    from tfship.circleci import parse_params

    parameters = parse_params(params) if params else {"retrain": True}
    s = _api(api_url, token_env).create_schedule(
        project, name, list(hours), list(days), branch, parameters
    )
    emit(
        s,
        as_json,
        f"schedule {s.get('name', name)} created ({s.get('id')}): "
        f"{','.join(days)} at {','.join(f'{h:02d}:00' for h in hours)} UTC",
    )


@ci_schedule.command("list", context_settings=CONTEXT)
@api_options
@project_option
@json_option
def ci_schedule_list(api_url, token_env, project, as_json) -> None:
    """List the project's schedules."""
    items = _api(api_url, token_env).schedules(project)
    emit(
        {"items": items},
        as_json,
        "\n".join(f"{s['id']}  {s['name']}" for s in items) or "no schedules",
    )


@ci_schedule.command("delete", context_settings=CONTEXT)
@api_options
@click.argument("schedule_id")
def ci_schedule_delete(api_url, token_env, schedule_id) -> None:
    """Delete a schedule."""
    _api(api_url, token_env).delete_schedule(schedule_id)
    click.echo(f"schedule {schedule_id} deleted")


@ci.command("watch-data", context_settings=CONTEXT)
@api_options
@project_option
@click.argument("source")
@opt(
    "--state",
    "state_file",
    env="TFSHIP_WATCH_STATE",
    default=".tfship-watch.json",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The record of snapshots triggered (and of a trigger being sent); without it the "
    "newest snapshot is triggered again. <state>.lock keeps two polls from overlapping.",
)
@opt("--branch", env="TFSHIP_CI_BRANCH", default="main", show_default=True)
@opt(
    "--interval",
    env="TFSHIP_WATCH_INTERVAL",
    type=click.FloatRange(0.1),
    default=300.0,
    show_default=True,
    help="Seconds between polls.",
)
@opt(
    "--max-polls",
    env="TFSHIP_WATCH_MAX_POLLS",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Polls before exiting (1: check once, for cron).",
)
@json_option
def ci_watch_data(
    api_url, token_env, project, source, state_file, branch, interval, max_polls, as_json
) -> None:
    """Trigger retrain-deploy once per new data snapshot at SOURCE.

    SOURCE is a folder, an https:// listing ('<url> <sha256>' per line) or
    ssh://user@host/path. The pipeline gets retrain=true and data_uri=<uri>#sha256=<hex>.

    The state file records what was triggered, and a trigger is recorded as pending before
    it is sent: after a crash, the next poll finds that pipeline instead of triggering again
    (or stops, naming them, if several of your pipelines could be it). A poll that finds
    another one running (the lock is held) does nothing.
    """
    import time

    from tfship.circleci import watch_once

    api = _api(api_url, token_env)
    results = []
    for n in range(max_polls):
        results.append(watch_once(api, project, source, state_file, branch))
        if n + 1 < max_polls:
            time.sleep(interval)
    last = results[-1]
    emit(
        {"polls": results},
        as_json,
        f"{last['action']}: " + (last.get("data_uri") or last.get("reason", "")),
    )


@ci.command("local", context_settings=CONTEXT)
@click.argument("workflow")
@opt(
    "--config",
    "config_path",
    env="TFSHIP_CI_CONFIG",
    default=".circleci/config.yml",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
)
@click.option("--param", "params", multiple=True, help="Pipeline parameter k=v (repeatable).")
@click.option("--env", "envs", multiple=True, help="Extra environment k=v for every job.")
@opt(
    "--branch",
    env="TFSHIP_CI_BRANCH",
    default=None,
    help="Branch for filters and pipeline.git.branch. Default: the checkout's branch.",
)
@click.option("--approve", "approve", multiple=True, help="Approve this approval job.")
@click.option("--reject", "reject", multiple=True, help="Reject this approval job.")
@opt(
    "--jobs",
    "parallel",
    env="TFSHIP_CI_JOBS",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Independent jobs to run at once.",
)
@opt(
    "--out",
    env="TFSHIP_CI_OUT",
    default=".tfship-ci",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where job folders, workspace layers, artifacts and test results go (emptied first).",
)
@json_option
def ci_local(
    workflow, config_path, params, envs, branch, approve, reject, parallel, out, as_json
) -> None:
    """Run a workflow of .circleci/config.yml on this machine, as CircleCI would.

    \b
    Expands the inline orb and parameters, evaluates when/unless, runs jobs in requires
    order (each in its own folder under --out, with CircleCI's workspace layers and step
    `when` rules), holds at approval jobs (asks on a terminal; --approve/--reject decide;
    otherwise it reports on_hold), and prints a summary like the web console. Exit 11 if a
    job failed. Executors are not containers here; caches are no-ops; anything else the
    runner does not support is refused by name before running.
    """
    import os

    from tfship.circleci import parse_params
    from tfship.localci import (
        Runner,
        WorkflowFailed,
        current_branch,
        load_config,
        plan,
        summary,
        terminal_decider,
    )

    project = Path.cwd()
    branch = branch or current_branch(project)
    doc = load_config(config_path)
    jobs, runs = plan(doc, workflow, parse_params(params), branch)
    if not runs:
        click.echo(
            f"workflow {workflow}: its when/unless condition is false for these "
            "parameters; nothing to run"
        )
        return
    extra = {}
    for pair in envs:
        k, sep, v = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"--env {pair!r}: expected k=v")
        extra[k] = v
    runner = Runner(
        project,
        out,
        {**os.environ, **extra},
        branch,
        terminal_decider(set(approve), set(reject)),
        parallel,
        echo=lambda line: click.echo(line, err=True),
    )
    results = runner.run(jobs)
    text = summary(results, workflow)
    emit(
        {
            "workflow": workflow,
            "jobs": {k: v.__dict__ for k, v in results.items()},
            "out": str(out),
        },
        as_json,
        text,
    )
    failed = [r.name for r in results.values() if r.status == "failed"]
    if failed:
        raise WorkflowFailed(
            f"{workflow}: job(s) failed: {', '.join(failed)}",
            hint=f"logs in {out}/jobs/<job>/log.txt",
        )


def main(argv: list[str] | None = None, prog_name: str = "tfship") -> None:
    """Entry point: run the CLI; expected failures become one line and an exit code."""
    from tfship.env import load_dotenv_file

    load_dotenv_file()
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        rv = cli.main(args=args, prog_name=prog_name, standalone_mode=False)
    except TfshipError as exc:
        if debug:
            traceback.print_exc()
        command = next((a for a in args if not a.startswith("-")), "")
        click.echo(
            f"tfship {command}: {exc.kind}: {exc}".replace("tfship : ", "tfship: "), err=True
        )
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("tfship: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        click.echo("tfship: interrupted; nothing half-written was left in place", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)
