"""The CircleCI commands: ``tfship ci`` (API, watch-data, the local runner) and ``notify``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from tfship.ci.api import (
    CircleCI,
    decide_hold,
    declared_parameters,
    parse_params,
    schedule_parameters,
)
from tfship.ci.local import run_workflow
from tfship.ci.notify import NotifySettings
from tfship.ci.notify import notify as send_notification
from tfship.ci.plan import PlanSettings
from tfship.ci.plan import plan as run_plan
from tfship.ci.settings import (
    PROJECT,
    ApiSettings,
    ApproveSettings,
    LocalSettings,
    ScheduleSettings,
    TriggerSettings,
    WatchSettings,
)
from tfship.ci.watch import watch
from tfship.cli import Group, cli
from tfship.cli.options import CONTEXT, emit, json_option, options
from tfship.store import StoreSettings, store_of
from tfship.targets import TargetSettings
from tfship.workspace import WorkspaceSettings


@cli.group(cls=Group, context_settings=CONTEXT)
def ci() -> None:
    """The CircleCI API: trigger, status, approve, schedule, watch-data; and `ci local`.

    Needs a personal API token in CIRCLE_TOKEN (never printed) and the project slug
    (vcs/org/repo) in CIRCLE_PROJECT_SLUG or --project.

    Every call is retried a bounded number of times (5) on timeouts, 429 (honouring
    Retry-After) and 5xx; a trigger whose answer was lost is looked up, never sent twice
    (if two of your pipelines could be it, it stops and names them). --api-timeout and
    --api-max-backoff tune this.
    """


@ci.command("trigger", context_settings=CONTEXT)
@options(api=ApiSettings, s=TriggerSettings)
@json_option
def ci_trigger(api: ApiSettings, s: TriggerSettings, as_json: bool) -> None:
    """Trigger a pipeline (e.g. --param retrain=true --param data_uri=...)."""
    client = api.client()
    # Typed as the config declares them where it is at hand (CircleCI refuses a string
    # parameter sent as a boolean or a number); a caller outside the repository guesses.
    declared = declared_parameters(s.config) if Path(s.config).is_file() else None
    parameters = parse_params(s.params, declared)
    if s.definition_id:
        p = client.run_pipeline(s.project, s.definition_id, s.branch, s.tag, parameters)
    else:
        p = client.trigger(s.project, s.branch, s.tag, parameters)
    out = {"pipeline": p}
    if s.wait:
        out["workflows"] = client.wait_workflows(p["id"])
    emit(
        out,
        as_json,
        f"pipeline {p.get('number')} created ({p['id']})"
        + "".join(f"\n  workflow {w['name']}: {w['status']}" for w in out.get("workflows", [])),
    )


@ci.command("status", context_settings=CONTEXT)
@options(api=ApiSettings)
@click.argument("pipeline_id")
@json_option
def ci_status(api: ApiSettings, pipeline_id: str, as_json: bool) -> None:
    """A pipeline's workflows and their jobs (status like the web console)."""
    client = api.client()
    out = [{**w, "jobs": client.jobs(w["id"])} for w in client.workflows(pipeline_id)]
    lines = []
    for w in out:
        lines.append(f"{w['name']}: {w['status']}")
        lines += [f"  {j['name']}: {j['status']}" for j in w["jobs"]]
    emit({"workflows": out}, as_json, "\n".join(lines) or "no workflows yet")


@ci.command("approve", context_settings=CONTEXT)
@options(api=ApiSettings, s=ApproveSettings)
@click.argument("workflow_id")
@json_option
def ci_approve(api: ApiSettings, s: ApproveSettings, workflow_id: str, as_json: bool) -> None:
    """Approve the on-hold approval job of a workflow, waiting for it to appear.

    With --reject, the hold is found the same way (no hold: the command fails) and then the
    whole workflow is canceled (CircleCI's API has no reject), so the hold and every job
    after it are canceled. The command returns once the workflow reads canceled.
    """
    result = decide_hold(api.client(), workflow_id, s.job, s.timeout, s.poll, s.reject)
    emit(result, as_json, result.summary())


@ci.group("schedule", cls=Group, context_settings=CONTEXT)
def ci_schedule() -> None:
    """Schedule triggers (e.g. the nightly retrain)."""


@ci_schedule.command("create", context_settings=CONTEXT)
@options(api=ApiSettings, s=ScheduleSettings)
@json_option
def ci_schedule_create(api: ApiSettings, s: ScheduleSettings, as_json: bool) -> None:
    """Create a schedule trigger; it sets retrain=true so the retrain-deploy workflow runs.

    \b
    Each --param adds to retrain=true, typed as the config (--config) declares it, so a
    string parameter stays a string. Several schedules, each with its own parameters:
      tfship ci schedule create --name nightly-fine-tune --hour 2 \\
        --param data_uri=s3://data/snapshots/
      tfship ci schedule create --name weekly-from-scratch --hour 4 --day SUN \\
        --param data_uri=s3://data/snapshots/ --param retrain_args=--from-scratch
    """
    parameters = schedule_parameters(s.params, declared_parameters(s.config))
    made = api.client().create_schedule(
        s.project, s.name, list(s.hours), list(s.days), s.branch, parameters
    )
    emit(
        made,
        as_json,
        f"schedule {made.get('name', s.name)} created ({made.get('id')}): "
        f"{','.join(s.days)} at {','.join(f'{h:02d}:00' for h in s.hours)} UTC",
    )


# The project slug alone, for the commands that need nothing else of a settings group.
_project = click.option(
    PROJECT.flag, "project", envvar=PROJECT.env, show_envvar=True, required=True, help=PROJECT.help
)


@ci_schedule.command("list", context_settings=CONTEXT)
@options(api=ApiSettings)
@_project
@json_option
def ci_schedule_list(api: ApiSettings, project: str, as_json: bool) -> None:
    """List the project's schedules."""
    items = api.client().schedules(project)
    emit(
        {"items": items},
        as_json,
        "\n".join(f"{s['id']}  {s['name']}" for s in items) or "no schedules",
    )


@ci_schedule.command("delete", context_settings=CONTEXT)
@options(api=ApiSettings)
@click.argument("schedule_id")
def ci_schedule_delete(api: ApiSettings, schedule_id: str) -> None:
    """Delete a schedule."""
    api.client().delete_schedule(schedule_id)
    click.echo(f"schedule {schedule_id} deleted")


@ci.command("watch-data", context_settings=CONTEXT)
@options(api=ApiSettings, s=WatchSettings)
@click.argument("source")
@json_option
def ci_watch_data(api: ApiSettings, s: WatchSettings, source: str, as_json: bool) -> None:
    """Trigger retrain-deploy once per new data snapshot at SOURCE.

    SOURCE is a folder, an https:// listing ('<url> <sha256>' per line), ssh://user@host/path
    or s3://bucket/prefix/ (its newest snapshot: a new one is found by key, size and ETag,
    then hashed once). The pipeline gets retrain=true and data_uri=<uri>#sha256=<hex>.

    The state file records what was triggered, and a trigger is recorded as pending before
    it is sent: after a crash, the next poll finds that pipeline instead of triggering again
    (or stops, naming them, if several of your pipelines could be it). A poll that finds
    another one running (the lock is held) does nothing.
    """
    results = watch(api.client(), s, source)
    last = results[-1]
    emit(
        {"polls": results},
        as_json,
        f"{last['action']}: " + (last.get("data_uri") or last.get("reason", "")),
    )


@ci.command("plan", context_settings=CONTEXT)
@options(
    api=ApiSettings,
    s=PlanSettings,
    store=StoreSettings,
    where=TargetSettings,
    exclude=("token_env", "store_keep"),
)
@json_option
def ci_plan(
    api: ApiSettings, s: PlanSettings, store: StoreSettings, where: TargetSettings, as_json: bool
) -> None:
    """A setup workflow's step: retrain only when the newest snapshot is new data.

    \b
    Resolves the newest snapshot at --data (TFSHIP_DATA: a folder, an https listing,
    ssh://USER@HOST/PATH, s3://BUCKET/PREFIX/), asks the deploy target which version serves,
    reads its manifest from the store (or the host) and compares the sha256 of the data it
    was trained on with the snapshot's. New data (or no champion yet): continue with
    new_data_uri=<snapshot>#sha256=<hex>, a value `tfship build --data` reads (the trigger's
    retrain=true carries over: CircleCI refuses a continuation that sends it again).
    The same data: "no new data since the champion (vN, sha256 ...)", exit 0.

    \b
    With --continue (in a job of a `setup: true` config): new data continues the pipeline
    with --continue-config (POST /pipeline/continue, CIRCLE_CONTINUATION_KEY, never
    printed); the same data finishes it with a configuration that runs nothing, as the
    continuation orb's `finish` does, so the pipeline ends green with no hold and no notice.
    Never imports TensorFlow.
    """
    client = (
        CircleCI.for_continuation(api.api_url, api.timeout, api.max_backoff)
        if s.continue_pipeline
        else None
    )
    result = run_plan(s, where, store_of(store), store.model_name, client)
    emit(result, as_json, result.summary())


@ci.command("local", context_settings=CONTEXT)
@click.argument("workflow", required=False)
@options(s=LocalSettings)
@json_option
def ci_local(workflow: str | None, s: LocalSettings, as_json: bool) -> None:
    """Run a workflow of .circleci/config.yml on this machine, as CircleCI would.

    \b
    Expands the inline orb and parameters, evaluates when/unless, runs jobs in requires
    order (each in its own folder under --out, with CircleCI's workspace layers and step
    `when` rules), holds at approval jobs (asks on a terminal; --approve/--reject decide;
    otherwise it reports on_hold), and prints a summary like the web console. Exit 11 if a
    job failed. Executors are not containers here; caches are no-ops; `serial-group` is
    accepted (one pipeline runs at a time here); anything else the runner does not support
    is refused by name before running.

    \b
    An orb by registry reference (orbs: {tfship: tfship/tfship@1.2.3}) runs from its
    source: --orb tfship/tfship=orb/src packs that folder in memory as tools/pack_orb.py
    does (repeatable, one per orb); a reference with no --orb is refused.

    \b
    A setup config (`setup: true`, dynamic configuration) needs no WORKFLOW: its setup
    workflow runs with CIRCLE_CONTINUATION_KEY set and CIRCLECI_API_URL at a local
    continuePipeline (the key works once); the workflows of the configuration it continues
    with then run, their when/unless evaluated with the parameters it sent plus the --param
    ones (a trigger's parameters carry over, as in CircleCI: each must be declared there, and
    sending one again is refused), under --out/continued/<workflow>. A setup workflow that
    does not continue ends the run green. The summary shows both.
    """
    done = run_workflow(
        workflow, s, Path.cwd(), dict(os.environ), lambda line: click.echo(line, err=True)
    )
    if done is None:
        click.echo(
            f"workflow {workflow or '(setup)'}: its when/unless condition is false for these "
            "parameters; nothing to run"
        )
        return
    emit(done, as_json, done.summary())
    done.raise_if_failed()


@cli.command(context_settings=CONTEXT)
@options(ws=WorkspaceSettings, s=NotifySettings)
@json_option
def notify(ws: WorkspaceSettings, s: NotifySettings, as_json: bool) -> None:
    """Post what happened to a webhook: job, stage, version, the failed check and its numbers.

    Reads the failed check from the workspace reports (deployed/, retrain/, eval/). --event
    approval sends only when retrain/retrain.json says a challenger passed its gates, with the
    champion vs challenger table and the date the hold must be approved by (the workspace's
    retention); a branch that does not match --branch-pattern sends nothing. Either way one
    line says why nothing was sent, and the exit code is 0. Network errors never fail the job
    unless --strict.
    """
    result = send_notification(ws.workspace, s)
    emit(result, as_json, result.summary())
