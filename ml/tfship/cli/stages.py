"""The stages' commands: build, train, test, package, test-deployed."""

from __future__ import annotations

from tfship.cli import cli
from tfship.cli.options import CONTEXT, emit, json_option, options
from tfship.data import DataSettings
from tfship.data import build as build_data
from tfship.evaluate import Gates, evaluate
from tfship.package import PackageSettings
from tfship.package import package as package_model
from tfship.retrain import skipped
from tfship.store import StoreSettings, store_of
from tfship.targets import TargetSettings, reach_serving
from tfship.train import TrainSettings
from tfship.train import train as train_model
from tfship.verify import VerifySettings, VersionSettings
from tfship.verify import test_deployed as verify_deployed
from tfship.workspace import WorkspaceSettings


@cli.command(context_settings=CONTEXT)
@options(ws=WorkspaceSettings, s=DataSettings)
@json_option
def build(ws: WorkspaceSettings, s: DataSettings, as_json: bool) -> None:
    """Stage 1: get data, validate it, split it (seeded), write workspace/data/.

    Validation runs before anything is written: dtype and shape, NaN/inf, pixel range,
    labels in 0..N-1, rows per class, and train/test drift. A failure prints one line naming
    the file, the check and the numbers, and exits 2.
    """
    result = build_data(ws.workspace, s)
    emit(result, as_json, result.summary())


@cli.command(context_settings=CONTEXT)
@options(ws=WorkspaceSettings, s=TrainSettings)
@json_option
def train(ws: WorkspaceSettings, s: TrainSettings, as_json: bool) -> None:
    """Stage 2: train on workspace/data/, write workspace/model/ (model.keras, history)."""
    result = train_model(ws.workspace, s)
    emit(result, as_json, result.summary(ws.workspace))


@cli.command("test", context_settings=CONTEXT)
@options(ws=WorkspaceSettings, gates=Gates)
@json_option
def test_cmd(ws: WorkspaceSettings, gates: Gates, as_json: bool) -> None:
    """Stage 3: evaluate on the test split and apply the gates (exit 3 if one misses).

    Writes workspace/eval/: metrics.json, junit.xml (store_test_results), report.md and the
    plots (store_artifacts), also when the gate fails: confusion_matrix.png for a classifier,
    with roc.png and calibration.png for a table; residuals.png and predicted_vs_actual.png
    for a regression. A table may be gated per slice of a categorical feature (--slice).
    """
    if skip := skipped(ws.workspace, "test"):
        emit(skip, as_json, skip.summary())
        return
    result = evaluate(ws.workspace, gates)
    emit(result, as_json, result.summary(ws.workspace))


@cli.command(context_settings=CONTEXT)
@options(ws=WorkspaceSettings, where=StoreSettings, s=PackageSettings)
@json_option
def package(ws: WorkspaceSettings, where: StoreSettings, s: PackageSettings, as_json: bool) -> None:
    """Stage 4: export the SavedModel, prove it matches the model, store it with its lineage.

    The version folder holds saved_model.pb, variables/ and assets.extra/ (tfship.json
    manifest, tf_serving_warmup_requests, model.keras for retraining, the test split).
    """
    if skip := skipped(ws.workspace, "package"):
        emit(skip, as_json, skip.summary())
        return
    result = package_model(ws.workspace, store_of(where), where.model_name, s.version)
    emit(result, as_json, result.summary())


@cli.command("test-deployed", context_settings=CONTEXT)
@options(
    ws=WorkspaceSettings,
    where=StoreSettings,
    target=TargetSettings,  # TF_SERVING_URL, and the SSH host when it is reached by a tunnel
    which=VersionSettings,
    s=VerifySettings,
    exclude=("store", "store_keep", "base_path", "hosts_file"),
)
@json_option
def test_deployed(
    ws: WorkspaceSettings,
    where: StoreSettings,
    target: TargetSettings,
    which: VersionSettings,
    s: VerifySettings,
    as_json: bool,
) -> None:
    """Stage 7: verify the model TF Serving serves against its package (exit 6 on a miss).

    Checks, on the version's own endpoint: AVAILABLE; signature equals the manifest's;
    golden inputs give the manifest's outputs (1e-4); accuracy on held-out rows reaches
    the gate; p95 latency. Writes workspace/deployed/ (verify.json, junit.xml, report.md).
    """
    default_package = which.version is None and which.manifest is None
    if default_package and (skip := skipped(ws.workspace, "verify")):
        emit(skip, as_json, skip.summary())
        return
    with reach_serving(target) as (serving, shown):
        result = verify_deployed(ws.workspace, serving, where.model_name, s, which, shown)
    emit(result, as_json, result.summary())
