"""Click options derived from the settings declarations (``tfship.settings``).

``@options(train=TrainSettings)`` gives a command one option per setting of
``TrainSettings`` (flag, type, bounds, environment variable and help all from the
declaration) and hands the command a ready ``train: TrainSettings``. A setting shared by two
groups of one command (the seed of the data and of the training) becomes one option.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from tfship.settings import Setting, build, fields_of

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _flag(name: str, field_meta: dict, s: Setting) -> str:
    return field_meta.get("flag") or s.flag or "--" + name.rsplit(".", 1)[-1].replace("_", "-")


def _dest(flag: str) -> str:
    return re.sub(r"\W", "_", flag.split("/")[0].lstrip("-"))


def _type(s: Setting) -> Any:
    if s.choices:
        return click.Choice(list(s.choices))
    if s.kind == "dir":
        return click.Path(file_okay=False, path_type=Path)
    if s.kind == "file":
        return click.Path(dir_okay=False, path_type=Path)
    if s.kind == "existing-file":
        return click.Path(exists=True, dir_okay=False, path_type=Path)
    if s.kind == "path":
        return click.Path(path_type=Path)
    kind = s.python_type
    if kind is int:
        return click.IntRange(s.min, s.max) if (s.min, s.max) != (None, None) else int
    if kind is float:
        return click.FloatRange(s.min, s.max) if (s.min, s.max) != (None, None) else float
    return kind


def _option(flag: str, dest: str, s: Setting, help_text: str, optional: bool) -> Callable:
    default = None if optional else s.default
    common = {
        "help": help_text,
        "envvar": s.env,
        "show_envvar": bool(s.env),
        "show_default": default is not None and default != () and not s.required,
    }
    if s.switch:
        if "/" in flag:
            return click.option(flag, dest, default=default, **common)
        return click.option(flag, dest, is_flag=True, default=bool(default), **common)
    if s.python_type is bool:  # TF Serving's style: --x, --x=true and --x=false all work
        return click.option(
            flag, dest, type=click.BOOL, default=default, is_flag=False, flag_value=True, **common
        )
    if s.multiple:
        return click.option(
            flag, dest, multiple=True, default=default or (), type=_type(s), **common
        )
    return click.option(flag, dest, type=_type(s), default=default, required=s.required, **common)


def options(*, exclude: tuple[str, ...] = (), **groups: type) -> Callable:
    """Options for each settings class; the command receives one instance per keyword.

    ``exclude`` leaves out settings by field name (``rollback`` takes DeploySettings but
    not ``--force``).
    """

    def decorate(f: Callable) -> Callable:
        plan: dict[str, list[tuple[str, str]]] = {}
        seen: dict[str, Setting] = {}
        decorators = []
        for param, cls in groups.items():
            plan[param] = []
            for name, fld in fields_of(cls):
                if name.rsplit(".", 1)[-1] in exclude:
                    continue
                s = fld.metadata["setting"]
                flag = _flag(name, fld.metadata, s)
                dest = _dest(flag)
                plan[param].append((name, dest))
                if dest in seen:
                    if seen[dest] is not s:
                        raise RuntimeError(f"{f.__name__}: {flag} is two different settings")
                    continue
                seen[dest] = s
                decorators.append(
                    _option(flag, dest, s, fld.metadata["help"], fld.metadata["optional"])
                )

        @functools.wraps(f)
        def wrapper(**kwargs: Any) -> Any:
            values = {dest: kwargs.pop(dest) for dest in seen}
            for param, cls in groups.items():  # a group may share a name with an option
                kwargs[param] = build(cls, {name: values[dest] for name, dest in plan[param]})
            return f(**kwargs)

        for d in reversed(decorators):
            wrapper = d(wrapper)
        return wrapper

    return decorate


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def emit(obj: object, as_json: bool, text: str) -> None:
    """Results go to stdout: JSON for machines, readable lines for people."""
    if as_json:
        doc = obj.to_dict() if hasattr(obj, "to_dict") else obj
        click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))
    else:
        click.echo(text)
