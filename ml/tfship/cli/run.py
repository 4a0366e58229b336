"""Commands around the stages: run (the whole loop, locally), snapshot, config."""

from __future__ import annotations

from pathlib import Path

import click

from tfship.cli import cli, load_all
from tfship.cli.options import CONTEXT, emit, json_option, options
from tfship.data import SnapshotSettings, make_snapshot
from tfship.pipeline import RunSettings, run_all
from tfship.settings import all_settings, describe


@cli.command(context_settings=CONTEXT)
@click.argument("mode", required=False, type=click.Choice(["retrain"]))
@options(s=RunSettings)
@json_option
def run(mode: str | None, s: RunSettings, as_json: bool) -> None:
    """The main job, locally, end to end on the embedded defaults.

    \b
    build -> train -> test -> package -> start the local serving -> deploy -> test-deployed.
    `tfship run retrain` (or --retrain) then makes a new data snapshot (the default data
    with a shift, or --retrain-data) -> build -> retrain -> test -> package -> deploy ->
    test-deployed. It stops at the first failing stage with that stage's exit code; each
    stage is atomic, so Ctrl-C leaves no half state. At the end it prints what is serving,
    where the reports are, and how to query the model with curl.
    """
    s.retrain = s.retrain or mode == "retrain"
    result = run_all(s)
    emit(result, as_json, result.summary(s.model_name, s.workspace))


@cli.command(context_settings=CONTEXT)
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@options(s=SnapshotSettings)
def snapshot(out: Path, s: SnapshotSettings) -> None:
    """Write a new data snapshot (NPZ) from the bundled digits, for demos and drills."""
    info = make_snapshot(out, s.kind, s.seed)
    click.echo(f"wrote {info['rows']} rows ({s.kind}) to {info['path']}")


@cli.command(context_settings=CONTEXT)
@json_option
def config(as_json: bool) -> None:
    """Every setting's environment variable, default and meaning (what the options read)."""
    load_all()  # every command family imported: every setting is declared
    rows = [(s.env, describe(s), s.help) for s in all_settings()]
    if as_json:
        emit({env: {"default": d, "help": h} for env, d, h in rows}, True, "")
        return
    width = max(len(env) for env, _, _ in rows)
    for env, default, help_text in rows:
        click.echo(f"{env:<{width}}  {default}\n{'':<{width}}  {help_text}")
