"""Shipping: deploy, rollback, status, retrain — one host or a fleet, the same way."""

from __future__ import annotations

from tfship.cli import cli
from tfship.cli.options import CONTEXT, emit, json_option, options
from tfship.data import build as build_data
from tfship.deploy import DeploySettings, RollbackSettings
from tfship.fleet import FleetFailed, FleetSettings, PackageChoice, deploy_workspace, rollback_fleet
from tfship.retrain import RetrainDataSettings, RetrainSettings
from tfship.retrain import retrain as run_retrain
from tfship.store import StoreSettings, history_table, store_of
from tfship.targets import TargetSettings, one_version, open_fleet, status_table
from tfship.train import TrainSettings
from tfship.workspace import WorkspaceSettings


@cli.command(context_settings=CONTEXT)
@options(
    ws=WorkspaceSettings,
    where=TargetSettings,
    store=StoreSettings,
    s=DeploySettings,
    fs=FleetSettings,
    pkg=PackageChoice,
    exclude=("model_name", "store_keep"),
)
@json_option
def deploy(
    ws: WorkspaceSettings,
    where: TargetSettings,
    store: StoreSettings,
    s: DeploySettings,
    fs: FleetSettings,
    pkg: PackageChoice,
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
    (text or base64) or DEPLOY_SERVER_SSH_KEY_FILE, else the ssh-agent and ~/.ssh keys
    (CircleCI's add_ssh_keys); host key checked against DEPLOY_SERVER_KNOWN_HOSTS and the
    lines in DEPLOY_SERVER_KNOWN_HOSTS_LINES. Without a hostname the target is the local
    folder --base-path (tfship serve's).

    \b
    A fleet (DEPLOY_SERVER_HOSTNAME=a,b,c or --hosts-file): every host reached first,
    one version served by all; every host uploads (--max-parallel at a time, the canary
    first), the canary is placed and checked (full checks + --canary-seconds soak), then
    the others are placed, --max-parallel at a time; any failure rolls back every host
    already moved and removes every staged upload.
    """
    with open_fleet(where, fs.require_all) as fleet:
        try:
            result = deploy_workspace(ws.workspace, fleet, s, fs, pkg.package, store_of(store))
        except FleetFailed as exc:
            emit(exc.result, as_json, exc.result.table())
            raise
    emit(result, as_json, result.summary())


@cli.command(context_settings=CONTEXT)
@options(
    where=TargetSettings,
    store=StoreSettings,
    s=DeploySettings,
    to=RollbackSettings,
    exclude=("store_keep",),
)
@json_option
def rollback(
    where: TargetSettings,
    store: StoreSettings,
    s: DeploySettings,
    to: RollbackSettings,
    as_json: bool,
) -> None:
    """Serve an older kept version again, with the same lock and checks as deploy.

    Newer versions are moved to <model>/.rejected/ (not deleted), then the older version is
    verified against its own manifest once it answers. On a fleet, every host serves the
    same older version again.
    """
    with open_fleet(where) as fleet:
        result = rollback_fleet(fleet, store.model_name, to.to, s, store_of(store))
    emit(result, as_json, result.summary())


@cli.command(context_settings=CONTEXT)
@options(where=TargetSettings, store=StoreSettings, exclude=("store", "store_keep"))
@json_option
def status(where: TargetSettings, store: StoreSettings, as_json: bool) -> None:
    """What the deploy target(s) hold and serve: host, versions on disk, serving, state.

    A fleet serving more than one version is reported as MIXED (exit 4): retrain and deploy
    refuse to run until it is resolved.
    """
    with open_fleet(where, require_all=False) as fleet:
        rows = fleet.state(store.model_name)
    emit({"hosts": rows}, as_json, status_table(rows))
    one_version(rows)


@cli.command(context_settings=CONTEXT)
@options(store=StoreSettings, exclude=("store_keep",))
@json_option
def history(store: StoreSettings, as_json: bool) -> None:
    """What the store of record says happened to the model, oldest first.

    \b
    One line per event, each an object in <store>/<model>/.history/ written once and never
    rewritten: packaged (a new version stored), deployed (with the hosts and the version
    it replaced), rolled-back, rejected (a deploy rolled back, or a retrain's challenger
    refused by its gates, with the reason), when, and by which build (CIRCLE_BUILD_URL).
    The last deployed or rolled-back version is the one serving; --store-keep never
    deletes it.
    """
    entries = store_of(store).history(store.model_name)
    emit({"model": store.model_name, "history": entries}, as_json, history_table(entries))


@cli.command(context_settings=CONTEXT)
@options(
    ws=WorkspaceSettings,
    store=StoreSettings,
    where=TargetSettings,
    train=TrainSettings,
    data=RetrainDataSettings,
    s=RetrainSettings,
)
@json_option
def retrain(
    ws: WorkspaceSettings,
    store: StoreSettings,
    where: TargetSettings,
    train: TrainSettings,
    data: RetrainDataSettings,
    s: RetrainSettings,
    as_json: bool,
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
    if data.data:
        build_data(ws.workspace, data)
    with open_fleet(where) as fleet:
        result = run_retrain(ws.workspace, store_of(store), fleet, store.model_name, s, train)
    emit(result, as_json, result.summary(ws.workspace))
