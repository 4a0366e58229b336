"""Settings declared once: default, environment variable and help, beside the stage that owns them.

A stage's settings are a dataclass whose fields are :func:`setting` declarations (in the spirit
of TFX's component specs: what a stage takes is stated apart from how it runs)::

    @dataclass
    class TrainSettings:
        epochs: int = setting(40, "<ENV_NAME>", "Upper bound; ...", min=1)

Everything else is derived from these declarations: the CLI options and their ``--help``
(``tfship.cli.options``), the list of environment variables (``tfship config``), and the
orb's parameter docs (``tools/pack_orb.py``). A setting several stages share (the seed, the
model name) is one :class:`Setting` object used in each: ``seed: int = SEED.field()``.

Nothing here imports click: the library declares, the CLI derives.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Every declared setting with an environment variable, by that name: one declaration each.
REGISTRY: dict[str, Setting] = {}


@dataclass(frozen=True, eq=False)
class Setting:
    """One setting: its default, environment variable, help and how the CLI spells it.

    ``flag`` defaults to ``--<field-name-with-dashes>``; ``kind`` is ``dir``, ``file`` or
    ``path`` for paths; ``min``/``max`` bound numbers; ``choices`` lists the allowed values;
    ``switch`` makes a boolean a flag without a value (``--x/--no-x`` if ``flag`` says so);
    ``multiple`` makes a repeatable option (the value is a tuple); ``required`` has no
    default and must be given.
    """

    default: Any
    env: str | None
    help: str
    flag: str | None = None
    kind: str | None = None
    value_type: type | None = None
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    switch: bool = False
    multiple: bool = False
    required: bool = False

    def __post_init__(self) -> None:
        if self.env:
            if self.env in REGISTRY:
                raise ValueError(f"{self.env} is declared twice (settings are declared once)")
            REGISTRY[self.env] = self

    def field(
        self,
        *,
        optional: bool = False,
        help: str | None = None,  # noqa: A002
        flag: str | None = None,
    ) -> Any:
        """A dataclass field for this setting.

        ``optional`` makes the field default to None where a command treats the setting as
        optional (``retrain --data``: absent means the workspace's data); ``help`` and
        ``flag`` replace the help text and the flag for that use (``tfship serve`` spells
        flags as TF Serving does: ``--model_name``).
        """
        default = None if optional else self.default
        meta = {"setting": self, "help": help or self.help, "optional": optional, "flag": flag}
        if isinstance(default, list | dict | set):
            return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
        return dataclasses.field(default=default, metadata=meta)

    @property
    def python_type(self) -> type:
        """The type values take (from ``value_type`` or the default; for a repeatable
        setting, the type of one value)."""
        if self.value_type is not None:
            return self.value_type
        if self.kind in ("dir", "file", "path"):
            return Path
        if self.default is None or self.multiple:
            return str
        return type(self.default)


def setting(default: Any, env: str | None, help: str, **how: Any) -> Any:  # noqa: A002
    """Declare a setting and make it a dataclass field (see :class:`Setting`)."""
    return Setting(default, env, help, **how).field()


def fields_of(cls: type) -> list[tuple[str, dataclasses.Field]]:
    """(name, field) of a settings dataclass, nested settings dataclasses flattened.

    A field whose type is itself a settings dataclass contributes its fields, with the
    name ``outer.inner``; fields without a setting are left to the code.
    """
    out = []
    for f in dataclasses.fields(cls):
        if "setting" in f.metadata:
            out.append((f.name, f))
        elif dataclasses.is_dataclass(f.default_factory if callable(f.default_factory) else None):
            for name, inner in fields_of(f.default_factory):
                out.append((f"{f.name}.{name}", inner))
    return out


def build(cls: type, values: dict[str, Any]) -> Any:
    """An instance of ``cls`` from flattened ``name -> value`` (nested names dotted)."""
    kwargs: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        outer, _, inner = name.partition(".")
        if inner:
            nested.setdefault(outer, {})[inner] = value
        else:
            kwargs[outer] = value
    for f in dataclasses.fields(cls):
        if f.name in nested:
            kwargs[f.name] = build(f.default_factory, nested[f.name])
    return cls(**kwargs)


def describe(s: Setting) -> str:
    """The default as a person reads it (for ``tfship config`` and the orb docs)."""
    if s.required:
        return "(required)"
    if s.default is None:
        return "(none)"
    if isinstance(s.default, tuple):
        return ",".join(map(str, s.default)) or "(none)"
    return str(s.default)


def all_settings() -> list[Setting]:
    """Every setting with an environment variable declared so far, sorted by that name.

    Settings register when their module is imported; the CLI imports every stage module.
    """
    return [REGISTRY[name] for name in sorted(REGISTRY)]
