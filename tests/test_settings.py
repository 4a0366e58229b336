"""Settings are declared once, and everything a user sees of them is derived from that."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from tfship.cli import COMMANDS, load_all
from tfship.cli.options import options
from tfship.settings import REGISTRY, Setting, all_settings, build, describe, fields_of, setting

cli = load_all()

PACKAGE = Path(__file__).resolve().parents[1] / "ml" / "tfship"


def _commands(group: click.Group, path: str = "tfship"):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, f"{path} {name}")
        else:
            yield f"{path} {name}", cmd


def test_each_environment_variable_is_named_once_in_the_source():
    sources = {p: p.read_text() for p in PACKAGE.rglob("*.py")}
    assert len(REGISTRY) > 60  # every command family imported (load_all)
    for env in REGISTRY:
        where = [
            f"{p.relative_to(PACKAGE)}:{text[: m.start()].count(chr(10)) + 1}"
            for p, text in sources.items()
            for m in re.finditer(rf"[\"']{re.escape(env)}[\"']", text)
            # the local runner sets CircleCI's own variables as CircleCI does
            if not (env.startswith("CIRCLE") and p.name == "local.py")
        ]
        assert len(where) == 1, f"{env} is spelled out in {where}: declare it once, use .env"


def test_a_second_declaration_of_a_name_is_refused():
    with pytest.raises(ValueError, match="TFSHIP_EPOCHS is declared twice"):
        Setting(3, "TFSHIP_EPOCHS", "again")


def test_config_lists_every_environment_variable_any_option_reads():
    out = CliRunner().invoke(cli, ["config", "--json"])
    assert out.exit_code == 0, out.output
    listed = json.loads(out.output)
    assert set(listed) == {s.env for s in all_settings()}
    read = set()
    for path, cmd in _commands(cli):
        for p in cmd.params:
            if isinstance(p, click.Option) and p.envvar:
                read.add(p.envvar)
                assert p.envvar in listed, f"{path} {p.opts[0]} reads {p.envvar}, not in config"
    # and nothing config lists is left unread by every command
    assert set(listed) - read == set()


def test_every_option_has_help_and_shows_its_environment_variable():
    runner = CliRunner()
    for path, cmd in _commands(cli):
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                assert p.help, f"{path} {p.opts[0]} has no help"
        if any(isinstance(p, click.Option) and p.envvar for p in cmd.params):
            args = path.split()[1:] + ["--help"]
            text = runner.invoke(cli, args, terminal_width=200).output
            assert "env var:" in text, f"{path} --help does not show environment variables"


def test_one_default_per_setting_is_what_help_and_config_show():
    runner = CliRunner()
    epochs = REGISTRY["TFSHIP_EPOCHS"]
    assert describe(epochs) == str(epochs.default)
    text = runner.invoke(cli, ["train", "--help"], terminal_width=200).output
    assert re.search(rf"--epochs .*?default:\s+{epochs.default}[;\]]", text, re.S)
    config = json.loads(runner.invoke(cli, ["config", "--json"]).output)
    assert config["TFSHIP_EPOCHS"]["default"] == str(epochs.default)


# ---- the derivation machinery, on a settings class of its own -----------------------------


COLOUR = Setting("red", None, "A colour.", choices=("red", "blue"))


@dataclass
class Inner:
    depth: int = setting(3, None, "How deep.", min=1, max=9)


@dataclass
class Demo:
    colour: str = COLOUR.field()
    tags: tuple[str, ...] = setting((), None, "A tag (repeatable).", flag="--tag", multiple=True)
    loud: bool = setting(False, None, "Shout.", switch=True)
    tf_style: bool = setting(True, None, "TF Serving's --x=false style.", flag="--tf_style")
    inner: Inner = field(default_factory=Inner)


@click.command()
@options(s=Demo)
def demo(s: Demo) -> None:
    click.echo(
        json.dumps(
            {
                "colour": s.colour,
                "tags": s.tags,
                "loud": s.loud,
                "tf_style": s.tf_style,
                "depth": s.inner.depth,
            }
        )
    )


def _demo(*args: str) -> tuple[int, dict | str]:
    r = CliRunner().invoke(demo, list(args))
    return r.exit_code, (json.loads(r.output) if r.exit_code == 0 else r.output)


def test_options_build_a_ready_settings_object():
    assert _demo() == (
        0,
        {"colour": "red", "tags": [], "loud": False, "tf_style": True, "depth": 3},
    )
    code, got = _demo(
        "--colour",
        "blue",
        "--tag",
        "a=b",
        "--tag",
        "two words",
        "--loud",
        "--tf_style=false",
        "--depth",
        "9",
    )
    assert code == 0
    assert got == {
        "colour": "blue",
        "tags": ["a=b", "two words"],
        "loud": True,
        "tf_style": False,
        "depth": 9,
    }


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--colour", "green"], "'green' is not one of 'red', 'blue'"),
        (["--depth", "0"], "0 is not in the range 1<=x<=9"),
        (["--tf_style=maybe"], "'maybe' is not a valid boolean"),
    ],
)
def test_a_bad_value_is_one_clear_line_and_exit_2(args, needle):
    code, out = _demo(*args)
    assert code == 2
    assert needle in out


def test_nested_settings_flatten_and_rebuild():
    names = [name for name, _ in fields_of(Demo)]
    assert names == ["colour", "tags", "loud", "tf_style", "inner.depth"]
    d = build(Demo, {"colour": "blue", "inner.depth": 5})
    assert (d.colour, d.inner.depth) == ("blue", 5)


LIGHT = """
import sys
from tfship.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("tensorflow", "keras", "matplotlib", "grpc") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["config"],
        ["build"],
        ["build", "--data", "wine"],
        ["status"],
        ["deploy", "--help"],
        ["ci", "--help"],
    ],
)
def test_commands_that_do_not_train_never_import_tensorflow(args, tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", LIGHT, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "HEAVY=\n" in r.stdout, (r.stdout[-500:], r.stderr[-500:])


@dataclass
class Colours:
    colour: str = COLOUR.field()


def test_a_group_may_be_named_as_one_of_its_options():
    @click.command()
    @options(colour=Colours, tags=Demo)
    def both(colour: Colours, tags: Demo) -> None:
        click.echo(f"{colour.colour} {tags.colour} {list(tags.tags)}")

    r = CliRunner().invoke(both, ["--colour", "blue", "--tag", "x"])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == "blue blue ['x']"


def test_tfship_help_lists_every_command_without_importing_a_stage(tmp_path):
    code = LIGHT.replace(
        '("tensorflow", "keras", "matplotlib", "grpc")',
        '("numpy", "tfship.data", "tfship.cli.ship")',
    )
    r = subprocess.run(
        [sys.executable, "-c", code, "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "HEAVY=\n" in r.stdout, (r.stdout[-500:], r.stderr[-500:])
    listed = {
        line.split()[0]
        for line in r.stdout.split("Commands:")[1].split("Exit codes")[0].splitlines()
        if line.strip()
    }
    assert listed == set(cli.commands)  # the lazy table names exactly the registered commands


def test_each_command_is_in_the_family_the_lazy_table_names():
    for name, (family, short) in COMMANDS.items():
        cmd = cli.commands[name]
        assert cmd.callback.__module__ == f"tfship.cli.{family}", name
        assert cmd.short_help == short
