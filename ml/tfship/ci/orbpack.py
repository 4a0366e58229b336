"""Pack an orb source folder (the orb development kit layout) as ``circleci orb pack`` does.

The safe subset of shared/docs/circleci.md: ``@orb.yml`` is merged at the top;
``commands/x.yml`` becomes ``commands.x`` (likewise jobs, executors, examples); a value that is
exactly ``<<include(scripts/x.sh)>>`` is replaced by the file's text with every ``<<`` escaped
as ``\\<<`` (so ``<< parameters.x >>`` is not substituted inside scripts). Anything else is
refused. ``tools/pack_orb.py`` writes orb/orb.yml from this (and adds the settings'
descriptions); ``tfship ci local --orb NS/ORB=FOLDER`` runs a registry reference from it.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from tfship.ci.vocabulary import INCLUDE
from tfship.errors import ConfigError

FOLDERS = ("commands", "jobs", "executors", "examples")


class PackError(ConfigError):
    """The source does not fit the packer's safe subset."""


def resolve_includes(value, src: Path, where: str):
    """``value`` with every ``<<include(path)>>`` replaced by that file's escaped text."""
    if isinstance(value, dict):
        return {k: resolve_includes(v, src, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_includes(v, src, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str) and "<<include(" in value.replace(" ", ""):
        m = INCLUDE.match(value.strip())
        if not m:
            raise PackError(f"{where}: an include must be the whole value: {value!r}")
        path = (src / m.group(1)).resolve()
        if src.resolve() not in path.parents or not path.is_file():
            raise PackError(f"{where}: include {m.group(1)!r} is not a file under {src}")
        return path.read_text().replace("<<", "\\<<")
    return value


def pack_source(src: Path) -> dict:
    """The orb in folder ``src`` packed into one dict (no description is added)."""
    top = src / "@orb.yml"
    if not top.is_file():
        raise PackError(f"{top} not found", hint="point at an orb source folder (orb/src)")
    try:
        orb = yaml.safe_load(top.read_text()) or {}
        unknown = sorted(
            p.name for p in src.iterdir() if p.is_dir() and p.name not in (*FOLDERS, "scripts")
        )
        if unknown:
            raise PackError(f"{src}: unsupported folders {unknown} (only {', '.join(FOLDERS)})")
        for folder in FOLDERS:
            files = sorted((src / folder).glob("*.yml")) if (src / folder).is_dir() else []
            if files:
                orb[folder] = {}
            for f in files:
                body = yaml.safe_load(f.read_text())
                orb[folder][f.stem] = resolve_includes(body, src, f"{folder}/{f.name}")
    except yaml.YAMLError as exc:
        raise PackError(f"{src}: not valid YAML ({exc})") from None
    return orb
