"""A CircleCI config, understood as CircleCI does: orbs expanded, parameters bound, planned.

:func:`load_config` reads ``.circleci/config.yml``; :func:`plan` expands the inline orb
(commands, jobs, executors), binds job and command parameters by their types and defaults,
``steps`` parameters and ``<< pipeline.parameters.x >>``, evaluates ``when``/``unless`` and
branch filters, and returns the jobs of a workflow in ``requires`` order for
:mod:`tfship.ci.local` to run. The CircleCI vocabulary is :mod:`tfship.ci.vocabulary`'s (the
orb checks in ``tools/check_orb.py`` use the same).
"""

from __future__ import annotations

import copy
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tfship.ci.vocabulary import (
    CONFIG_KEYS,
    JOB_KEYS,
    LOCAL_ENTRY_KEYS,
    LOCAL_STEPS,
    PARAM_REF,
    PIPELINE_REF,
    RUN_KEYS,
    WHOLE_PARAM_REF,
)
from tfship.errors import ConfigError, TfshipError

# An orb's registry name: namespace/orb (CircleCI: lowercase letters, digits, - and _).
ORB_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*/[a-z0-9][a-z0-9_-]*")


class Unsupported(ConfigError):
    """The config uses something the local runner does not do; nothing was run."""


class WorkflowFailed(TfshipError):
    """A job of the local workflow failed."""

    exit_code = 11
    kind = "workflow failed"


# --------------------------------------------------------------------------------------------
# Parameters and logic
# --------------------------------------------------------------------------------------------


def coerce(value, decl: dict, where: str):
    """A parameter value as its declared type (string, boolean, integer, enum, ...)."""
    kind = decl.get("type", "string")
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return str(value).lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where}: {value!r} is not a boolean")
    if kind == "integer":
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {value!r} is not an integer") from exc
    if kind == "enum" and value not in decl.get("enum", []):
        raise ConfigError(f"{where}: {value!r} is not one of {decl.get('enum')}")
    return value


def bind(decls: dict | None, args: dict, where: str) -> dict:
    """Arguments given + defaults, type-checked; a missing required one is an error."""
    decls = decls or {}
    out = {}
    for name, decl in decls.items():
        if name in args:
            out[name] = coerce(args[name], decl, f"{where} parameter {name}")
        elif "default" in decl:
            out[name] = decl["default"]
        else:
            raise ConfigError(f"{where}: parameter {name!r} is required")
    unknown = set(args) - set(decls)
    if unknown:
        raise ConfigError(f"{where}: unknown parameter(s) {sorted(unknown)}")
    return out


def as_text(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else str(v)


def substitute(value, params: dict, pipeline: dict, where: str):
    """Replace << parameters.x >> and << pipeline.x >> (whole-value refs keep their type)."""
    if isinstance(value, dict):
        return {k: substitute(v, params, pipeline, where) for k, v in value.items()}
    if isinstance(value, list):
        out = []
        for v in value:
            m = WHOLE_PARAM_REF.match(v) if isinstance(v, str) else None
            if m and not m.group(1) and isinstance(params.get(m.group(2)), list):
                out.extend(params[m.group(2)])  # a steps parameter expands in place
            else:
                out.append(substitute(v, params, pipeline, where))
        return out
    if not isinstance(value, str):
        return value
    m = WHOLE_PARAM_REF.match(value)
    if m:
        table = pipeline.get("parameters", {}) if m.group(1) else params
        if m.group(2) not in table:
            raise ConfigError(
                f"{where}: << {'pipeline.' if m.group(1) else ''}parameters."
                f"{m.group(2)} >> is not declared"
            )
        return table[m.group(2)]

    def param(mm):
        if mm.group(1) not in params:
            raise ConfigError(f"{where}: << parameters.{mm.group(1)} >> is not declared")
        return as_text(params[mm.group(1)])

    def pipe(mm):
        key = mm.group(1)
        node = pipeline
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise Unsupported(f"{where}: << pipeline.{key} >> is not known to the local runner")
            node = node[part]
        return as_text(node)

    return PIPELINE_REF.sub(pipe, PARAM_REF.sub(param, value))


def unescape(value):
    """``\\<<`` (orb pack's escape) back to ``<<`` once substitution is done."""
    if isinstance(value, dict):
        return {k: unescape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unescape(v) for v in value]
    return value.replace("\\<<", "<<") if isinstance(value, str) else value


def truth(cond) -> bool:
    """CircleCI logic statements: and, or, not, equal, matches, or a plain value."""
    if isinstance(cond, dict):
        if len(cond) != 1:
            raise Unsupported(f"logic statement {cond!r} must have one key")
        op, arg = next(iter(cond.items()))
        if op == "and":
            return all(truth(c) for c in arg)
        if op == "or":
            return any(truth(c) for c in arg)
        if op == "not":
            return not truth(arg)
        if op == "equal":
            return all(a == arg[0] for a in arg[1:])
        if op == "matches":
            return re.fullmatch(str(arg["pattern"]), str(arg["value"])) is not None
        raise Unsupported(f"logic operator {op!r}")
    if isinstance(cond, str):
        return cond.strip().lower() not in ("", "false", "0", "no", "off")
    return bool(cond)


# --------------------------------------------------------------------------------------------
# Expansion
# --------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One workflow entry, expanded to runnable steps."""

    name: str
    kind: str  # build | approval
    requires: dict[str, list[str]]
    steps: list = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    working_directory: str | None = None
    skipped: bool = False  # filtered out by branch filters
    serial_group: str | None = None  # accepted; locally nothing else runs to wait for


def parse_orb_sources(pairs: tuple[str, ...] | list[str]) -> dict[str, Path]:
    """``NAMESPACE/ORB=FOLDER`` pairs (``--orb``) as {"namespace/orb": folder}."""
    out: dict[str, Path] = {}
    for pair in pairs:
        ref, sep, folder = pair.partition("=")
        ref = ref.strip()
        if not sep or not folder.strip() or not ORB_NAME.fullmatch(ref):
            raise ConfigError(
                f"--orb {pair!r}: expected NAMESPACE/ORB=FOLDER",
                hint="e.g. --orb tfship/tfship=orb/src (an orb source folder: @orb.yml, "
                "commands/, jobs/, ...)",
            )
        out[ref] = Path(folder.strip())
    return out


def registry_orb(ref: str) -> str:
    """``namespace/orb`` of a registry reference (``namespace/orb@1.2.3``, ``@volatile``)."""
    return ref.partition("@")[0].strip()


class Config:
    """A parsed config with its orbs: inline ones, and registry references resolved from
    ``orbs`` (``namespace/orb`` -> the packed orb; ``--orb`` maps them to source folders)."""

    def __init__(self, doc: dict, pipeline: dict, orbs: dict[str, dict] | None = None) -> None:
        self.doc = doc
        self.pipeline = pipeline
        self.orbs: dict[str, dict] = {}
        for name, orb in (doc.get("orbs") or {}).items():
            if isinstance(orb, str):
                key = registry_orb(orb)
                if key not in (orbs or {}):
                    raise Unsupported(
                        f"orb {name!r} is a registry reference ({orb}); locally it runs from "
                        f"its source: --orb {key}=FOLDER (e.g. orb/src)"
                    )
                orb = (orbs or {})[key]
            if not isinstance(orb, dict):
                raise ConfigError(f"orb {name!r}: expected a registry reference or an inline orb")
            self.orbs[name] = orb

    def _lookup(self, kind: str, name: str, scope: str | None) -> tuple[dict, str | None]:
        if "/" in name:
            orb, _, item = name.partition("/")
            if orb not in self.orbs or item not in (self.orbs[orb].get(kind) or {}):
                raise ConfigError(f"{kind[:-1]} {name!r} is not defined")
            return self.orbs[orb][kind][item], orb
        if scope is not None and name in (self.orbs[scope].get(kind) or {}):
            return self.orbs[scope][kind][name], scope
        if name in (self.doc.get(kind) or {}):
            return self.doc[kind][name], None
        raise ConfigError(f"{kind[:-1]} {name!r} is not defined")

    def expand_steps(self, steps: list, scope: str | None, where: str, depth: int = 0) -> list:
        """Built-in steps only, with commands expanded recursively."""
        if depth > 20:
            raise ConfigError(f"{where}: commands nest too deep (a cycle?)")
        out = []
        for step in steps or []:
            name, args = (step, {}) if isinstance(step, str) else next(iter(step.items()))
            args = args if isinstance(args, dict) else {}
            if name in ("when", "unless"):
                cond = truth(args.get("condition"))
                if cond == (name == "when"):
                    out += self.expand_steps(args.get("steps"), scope, where, depth + 1)
                continue
            if name in LOCAL_STEPS:
                if name == "run":
                    run = step["run"]
                    run = (
                        {"command": run, "name": run.splitlines()[0][:60]}
                        if isinstance(run, str)
                        else run
                    )
                    extra = set(run) - RUN_KEYS
                    if extra:
                        raise Unsupported(
                            f"{where}: run key(s) {sorted(extra)} (e.g. "
                            "background) are not supported locally"
                        )
                    out.append({"run": run})
                else:
                    out.append({name: args})
                continue
            if name in ("add_ssh_keys", "setup_remote_docker", "deploy"):
                raise Unsupported(f"{where}: step {name!r} is not supported locally")
            command, cscope = self._lookup("commands", name, scope)
            params = bind(command.get("parameters"), args, f"{where} > {name}")
            body = substitute(command.get("steps") or [], params, self.pipeline, f"command {name}")
            out += self.expand_steps(body, cscope, f"{where} > {name}", depth + 1)
        return out

    def job(self, name: str, args: dict, scope_name: str) -> Job:
        """Expand a workflow entry into a Job."""
        definition, scope = self._lookup("jobs", name, None)
        extra = set(definition) - JOB_KEYS
        if extra:
            raise Unsupported(f"job {name}: key(s) {sorted(extra)} are not supported locally")
        if int(definition.get("parallelism", 1) or 1) > 1:
            raise Unsupported(f"job {name}: parallelism > 1 is not supported locally")
        job_args = {k: v for k, v in args.items() if k not in LOCAL_ENTRY_KEYS}
        params = bind(definition.get("parameters"), job_args, f"job {name}")
        body = substitute(copy.deepcopy(definition), params, self.pipeline, f"job {name}")
        executor = body.get("executor")
        if isinstance(executor, str):
            self._lookup("executors", executor, scope)  # exists? (not run as a container)
        elif isinstance(executor, dict):
            self._lookup("executors", executor.get("name", ""), scope)
        steps = unescape(self.expand_steps(body.get("steps"), scope, f"job {scope_name}"))
        return Job(
            scope_name,
            "build",
            {},
            steps,
            unescape(body.get("environment") or {}),
            body.get("working_directory"),
        )


def parse_requires(entries) -> dict[str, list[str]]:
    out = {}
    for r in entries or []:
        if isinstance(r, dict):
            ((name, statuses),) = r.items()
            out[name] = statuses if isinstance(statuses, list) else [statuses]
        else:
            out[r] = ["success"]
    return out


def branch_allowed(filters: dict | None, branch: str) -> bool:
    b = (filters or {}).get("branches") or {}
    only, ignore = b.get("only"), b.get("ignore")

    def match(spec) -> bool:
        specs = spec if isinstance(spec, list) else [spec]
        return any(
            re.fullmatch(s.strip("/"), branch) if s.startswith("/") else s == branch for s in specs
        )

    if only is not None and not match(only):
        return False
    return not (ignore is not None and match(ignore))


def plan(
    doc: dict,
    workflow: str,
    params: dict,
    branch: str,
    extra_pipeline: dict | None = None,
    orbs: dict[str, dict] | None = None,
) -> tuple[list[Job], bool]:
    """The workflow's jobs, expanded and checked; and whether its when/unless lets it run.
    ``orbs``: packed orbs for the registry references (``namespace/orb`` -> orb)."""
    declared = doc.get("parameters") or {}
    unknown = set(params) - set(declared)
    if unknown:
        raise ConfigError(
            f"Unexpected argument(s): {', '.join(sorted(unknown))} (not declared "
            "in the config's parameters)"
        )
    pipeline = {
        "parameters": bind(declared, params, "pipeline"),
        "git": {"branch": branch, "revision": (extra_pipeline or {}).get("revision", "")},
        # No CircleCI project locally; a fixed slug keeps `<< pipeline.project.slug >>/deploy`
        # serial-group names (org-wide in CircleCI) working.
        "project": {"slug": (extra_pipeline or {}).get("project_slug", "local/project")},
        "number": 1,
        "id": str(uuid.uuid4()),
    }
    flows = doc.get("workflows") or {}
    if workflow not in flows:
        names = workflow_names(doc)
        raise ConfigError(f"no workflow {workflow!r} in the config (have: {', '.join(names)})")
    wf = substitute(flows[workflow], {}, pipeline, f"workflow {workflow}")
    extra = set(wf) - {"jobs", "when", "unless"}
    if extra:
        raise Unsupported(f"workflow {workflow}: {sorted(extra)} not supported locally")
    runs = (truth(wf["when"]) if "when" in wf else True) and not (
        truth(wf["unless"]) if "unless" in wf else False
    )
    cfg = Config(doc, pipeline, orbs)
    jobs = []
    for entry in wf.get("jobs") or []:
        name, args = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
        args = args or {}
        for key in ("matrix", "pre-steps", "post-steps"):
            if key in args:
                raise Unsupported(
                    f"workflow {workflow} job {name}: {key!r} is not supported locally"
                )
        alias = args.get("name", name)
        requires = parse_requires(args.get("requires"))
        if args.get("type") is not None:
            if args["type"] != "approval":
                raise ConfigError(f"job {alias}: unknown type {args['type']!r}")
            hold = Job(alias, "approval", requires)
            hold.skipped = not branch_allowed(args.get("filters"), branch)
            jobs.append(hold)
            continue
        job = cfg.job(name, args, alias)
        job.requires = requires
        job.skipped = not branch_allowed(args.get("filters"), branch)
        group = args.get("serial-group")
        if group is not None and (not isinstance(group, str) or not group.strip()):
            raise ConfigError(f"job {alias}: serial-group must be a non-empty string")
        job.serial_group = group
        jobs.append(job)
    names = {j.name for j in jobs}
    for j in jobs:
        missing = set(j.requires) - names
        if missing:
            raise ConfigError(f"job {j.name} requires {sorted(missing)}, not in {workflow}")
    return jobs, runs


def load_config(path: Path) -> dict:
    """Read a config file: :func:`parse_config` of its text."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} not found") from exc
    return parse_config(text, str(path))


def parse_config(text: str, where: str) -> dict:
    """A version 2.1 config (``setup: true`` included) as a dict; unknown top-level keys are
    refused by name."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({exc})") from exc
    if not isinstance(doc, dict) or str(doc.get("version")) != "2.1":
        raise ConfigError(f"{where}: not a version 2.1 CircleCI config")
    for key in doc:
        if key not in CONFIG_KEYS:
            raise Unsupported(f"{where}: top-level key {key!r} is not supported locally")
    if not isinstance(doc.get("setup", False), bool):
        raise ConfigError(f"{where}: setup must be true or false")
    return doc


def is_setup(doc: dict) -> bool:
    """Whether the config is a setup config (dynamic configuration's first phase)."""
    return doc.get("setup") is True


def workflow_names(doc: dict) -> list[str]:
    """The config's workflows, in order (the 2.0 ``version`` key left out)."""
    return [k for k in doc.get("workflows") or {} if k != "version"]
