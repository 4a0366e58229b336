"""The ``tfship`` command line: thin shells over the library.

Each command takes its settings (declared beside the stage that owns them; see
``tfship.settings``) as ready objects, calls one library function, and prints the result
(``summary()`` for people, ``to_dict()`` with ``--json``). Expected failures are mapped to one
line and an exit code in one place, :func:`main`, which names the command from click's
context. The commands live by family: ``stages`` (build .. test-deployed), ``run`` (run,
snapshot, config), ``ship`` (deploy, rollback, status, retrain), ``ci`` (the CircleCI API,
the local runner, notify) and ``serve``; a family is imported when one of its commands is
asked for (:data:`COMMANDS`). Nothing here is imported by the library.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import click

from tfship import __version__, errors, extras
from tfship.cli.options import CONTEXT
from tfship.env import load_dotenv_file
from tfship.log import DEBUG_ENV, debug_enabled

OTHER_EXIT_CODES = {
    0: "success",
    1: "an unexpected error (a bug: the traceback is shown)",
    11: "`tfship ci local`: a job of the workflow failed",
    130: "interrupted",
    255: "`tfship serve` could not start (as tensorflow_model_server)",
}


def exit_codes() -> list[tuple[int, str]]:
    """Every exit code and its meaning, from the error families in ``tfship.errors``."""
    families: dict[int, list[str]] = {}
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.TfshipError) and cls.exit_code > 1:
            text = (cls.__doc__ or cls.kind).strip().splitlines()[0]
            if text not in families.setdefault(cls.exit_code, []):
                families[cls.exit_code].append(text)
    # Two families sharing a code: one line each, under the code.
    codes = {code: "\n       ".join(texts) for code, texts in families.items()}
    return sorted({**OTHER_EXIT_CODES, **codes}.items())


class Command(click.Command):
    """A tfship command: an expected failure carries the command's name to :func:`main`."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except errors.TfshipError as exc:
            # "tfship ci trigger", also when run as ml/N_<stage>.py
            exc.command = " ".join(["tfship", *ctx.command_path.split()[1:]])
            raise
        except ModuleNotFoundError as exc:
            # A training command on the slim install (`pip install tfship`): one line naming
            # the extra, exit 2, not a traceback. Any other missing module is a bug.
            if not extras.from_train_extra(exc):
                raise
            err = extras.missing_extra(exc)
            err.command = " ".join(["tfship", *ctx.command_path.split()[1:]])
            raise err from exc


class Group(click.Group):
    """Groups whose commands are :class:`Command`s."""

    command_class = Command
    group_class = type


# Each top-level command: the family module that defines it, and its line in `tfship --help`.
# A family is imported only when one of its commands runs or shows its own --help, so
# `tfship --help` imports no stage (and no NumPy): 4x faster start-up (BENCHMARKS.md).
COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("stages", "Stage 1: get, validate and split the data."),
    "train": ("stages", "Stage 2: train the Keras model."),
    "test": ("stages", "Stage 3: evaluate and apply the quality gates."),
    "package": ("stages", "Stage 4: export the SavedModel; lineage; store."),
    "deploy": ("ship", "Stage 5: ship to TF Serving with no downtime."),
    "retrain": ("ship", "Stage 6: retrain against the version serving."),
    "test-deployed": ("stages", "Stage 7: verify what TF Serving serves."),
    "rollback": ("ship", "Serve an older kept version again."),
    "status": ("ship", "What the deploy target(s) hold and serve."),
    "history": ("ship", "What the store of record says happened, oldest first."),
    "run": ("run", "The main job, locally, end to end."),
    "snapshot": ("run", "Write a new data snapshot (for retrain demos)."),
    "config": ("run", "Every setting: environment variable, default, meaning."),
    "serve": ("serve", "A local TF-Serving-compatible model server."),
    "ci": ("ci", "CircleCI: trigger, approve, watch-data, plan, run locally."),
    "notify": ("ci", "Post what failed and why to a webhook (on_fail)."),
}


class LazyGroup(Group):
    """The top-level group: commands are imported by family, when first asked for."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        name = name or cmd.name
        if name not in COMMANDS:
            raise RuntimeError(f"command {name!r}: add it to tfship.cli.COMMANDS")
        cmd.short_help = COMMANDS[name][1]
        super().add_command(cmd, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            importlib.import_module(f"tfship.cli.{COMMANDS[cmd_name][0]}")
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])


EPILOG = "\b\nExit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in exit_codes())


@click.group(cls=LazyGroup, context_settings=CONTEXT, epilog=EPILOG)
@click.version_option(__version__, prog_name="tfship")
@click.option(
    "--debug",
    is_flag=True,
    envvar=DEBUG_ENV,
    help="Show everything: tracebacks for expected failures and TensorFlow's own log lines.",
)
def cli(debug: bool) -> None:
    """tfship: data -> trained -> gated -> packaged -> served by TF Serving -> verified.

    \b
    Stages (each also runs as ml/N_<stage>.py):
      build          get and validate data          -> workspace/data/
      train          train the Keras model          -> workspace/model/
      test           evaluate and apply the gates   -> workspace/eval/
      package        SavedModel + lineage -> store  -> workspace/package/
      deploy         ship to TF Serving, no downtime
      retrain        against the model serving now  -> workspace/retrain/
      test-deployed  verify what TF Serving serves  -> workspace/deployed/

    Every option can also be set by the environment variable shown in each command's --help
    (`tfship config` lists them all), or in a .env file in the current folder.
    """
    if debug:  # read by tfship.log when TensorFlow loads, here and in child processes
        os.environ[DEBUG_ENV] = "1"


def main(argv: list[str] | None = None, prog_name: str = "tfship") -> None:
    """Entry point: run the CLI; expected failures become one line and an exit code."""
    load_dotenv_file()
    args = sys.argv[1:] if argv is None else argv
    try:
        rv = cli.main(args=args, prog_name=prog_name, standalone_mode=False)
    except errors.TfshipError as exc:
        if debug_enabled() or "--debug" in args:
            traceback.print_exc()
        command = getattr(exc, "command", "tfship")
        click.echo(f"{command}: {exc.kind}: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo(f"{prog_name}: interrupted", err=True)
        sys.exit(errors.EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        click.echo(f"{prog_name}: interrupted; nothing half-written was left in place", err=True)
        sys.exit(errors.EXIT_INTERRUPTED)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)


def load_all() -> click.Group:
    """``cli`` with every command family imported (so every setting is declared)."""
    for family in sorted({family for family, _ in COMMANDS.values()}):
        importlib.import_module(f"tfship.cli.{family}")
    return cli
