#!/usr/bin/env python3
"""Checks for the orb and .circleci/config.yml that the CircleCI JSON schema does not make.

- orb-tools review rules: RC001 display.source_url; RC002 descriptions on every command, job,
  executor and example; RC003 at least one example; RC005 orb description >= 64 characters;
  RC008 every `run` is a map with a `name`; RC009 a `command` over 64 characters is an
  `<<include(...)>>`; RC010 snake_case component and parameter names; RC012 no `$ENV` in a
  cache key.
- What the schema misses: steps that are neither built-in nor defined commands, undefined
  executors and jobs, parameters used but not declared (`<< parameters.x >>`,
  `<< pipeline.parameters.x >>`), arguments a command or job does not take, required
  arguments not given, enum defaults outside the enum, `type:` other than `approval`, approval
  names that are defined jobs, unknown `requires`, unknown keys (`requirs:`), unknown top-level
  keys, and invalid cron strings.

- Dynamic configuration: the setup config (config.yml) says `setup: true` and the
  continuation config (continue.yml) does not (CircleCI refuses to continue with a setup
  config), and the continuation declares every parameter the setup config declares (CircleCI
  carries a trigger's parameters into the continuation).
- Jobs of the registry orbs the release pipeline uses (orb-tools@12, shellcheck@3): the
  arguments each takes and needs, recorded from their source (EXTERNAL_JOBS).
- The orb release (release.yml, release-test.yml): pack and review before the dev publish,
  the dev publish before the continuation, the integration tests on the very dev version
  published, and the production publish after every test and only on a tag vX.Y.Z.
- The CircleCI JSON schema (check-jsonschema, a dev tool beside this interpreter) on every
  file above.

    python tools/check_orb.py     # checks orb/src, orb/orb.yml and every config in .circleci/
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ml"))  # the vocabulary is tfship's own (tfship ci local reads it)

from tfship.ci.vocabulary import (  # noqa: E402
    BUILTIN_STEPS,
    CONFIG_KEYS,
    INCLUDE,
    ORB_KEYS,
    PARAM_REF,
    PARAM_TYPES,
    WORKFLOW_ENTRY_KEYS,
)
from tfship.ci.vocabulary import PIPELINE_PARAM_REF as PIPELINE_REF  # noqa: E402

SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]

RELEASE = ROOT / ".circleci" / "release.yml"  # the orb release's setup config
RELEASE_TEST = ROOT / ".circleci" / "release-test.yml"  # what it continues with
ORB_NAME = "tfship/tfship"  # the orb's name in the registry
RELEASE_TAG = "v1.2.3"  # a tag the production publish must take (publish's tag_pattern)
NOT_RELEASE_TAGS = ("v1.2", "1.2.3", "v1.2.3-rc.1", "release")

# Registry orbs cannot be read offline; their jobs' parameters are recorded here from the
# source of the major version the configs pin: (every parameter, those without a default).
# orb-tools: CircleCI-Public/orb-tools-orb v12.4.0 src/jobs/*.yml (v12 renamed v11's
# hyphenated parameters: pub-type -> pub_type). shellcheck: CircleCI-Public/shellcheck-orb
# v3.4.0 src/jobs/check.yml.
_COMMON = {"checkout", "circleci_ip_ranges", "executor"}
EXTERNAL_JOBS: dict[str, dict[str, tuple[set[str], set[str]]]] = {
    "circleci/orb-tools@12": {
        "pack": (
            _COMMON
            | {"circleci_api_host", "orb_dir", "orb_file_name", "org_id", "org_slug"}
            | {"persist_to_workspace", "source_dir"},
            set(),
        ),
        "review": (_COMMON | {"exclude", "max_command_length", "orb_name", "source_dir"}, set()),
        "publish": (
            _COMMON
            | {"attach_workspace", "circleci_api_host", "circleci_token", "dev_tags"}
            | {"enable_pr_comment", "github_token", "orb_dir", "orb_file_name", "orb_name"}
            | {"pr_comment_graphql_url", "pub_type", "release_environment", "tag_pattern"}
            | {"vcs_type"},
            {"orb_name", "vcs_type"},
        ),
        "continue": (
            _COMMON
            | {"attach_workspace", "circleci_api_host", "circleci_app_host", "config_path"}
            | {"inject_orb", "orb_dir", "orb_file_name", "orb_name", "pipeline_number"}
            | {"vcs_type"},
            {"pipeline_number", "vcs_type", "orb_name"},
        ),
        "lint": (
            _COMMON | {"source_dir", "pip_break"},
            set(),
        ),
    },
    "circleci/shellcheck@3": {
        "check": (
            {"circleci_ip_ranges", "dir", "exclude", "external_sources", "format"}
            | {"ignore-dirs", "image-name", "image-tag", "output", "pattern"}
            | {"resource_class", "severity", "shell"},
            set(),
        ),
    },
}


def _strings(value):
    """Every string inside a YAML value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _step_name(step) -> tuple[str, dict]:
    if isinstance(step, str):
        return step, {}
    if isinstance(step, dict) and len(step) == 1:
        name, args = next(iter(step.items()))
        return name, args if isinstance(args, dict) else {}
    return "?", {}


# --------------------------------------------------------------------------------------------
# Review rules (on the source tree, where includes are still visible)
# --------------------------------------------------------------------------------------------


def review(src: Path) -> list[str]:
    """orb-tools review rules on orb/src."""
    out: list[str] = []
    top = yaml.safe_load((src / "@orb.yml").read_text()) or {}
    if not (top.get("display") or {}).get("source_url"):
        out.append("RC001 @orb.yml: display.source_url is not set")
    if len(str(top.get("description", "")).strip()) < 64:
        out.append("RC005 @orb.yml: the orb description is under 64 characters")
    examples = list((src / "examples").glob("*.yml")) if (src / "examples").is_dir() else []
    if not examples:
        out.append("RC003 orb/src/examples: no usage example")
    for folder in ("commands", "jobs", "executors", "examples"):
        for f in sorted((src / folder).glob("*.yml")) if (src / folder).is_dir() else []:
            where = f"{folder}/{f.name}"
            body = yaml.safe_load(f.read_text()) or {}
            if not str(body.get("description", "")).strip():
                out.append(f"RC002 {where}: no description")
            if not SNAKE.match(f.stem):
                out.append(f"RC010 {where}: component name {f.stem!r} is not snake_case")
            for p in body.get("parameters") or {}:
                if not SNAKE.match(p):
                    out.append(f"RC010 {where}: parameter {p!r} is not snake_case")
            for step in _all_steps(body):
                out += _review_step(step, where)
    return out


def _all_steps(body: dict):
    yield from body.get("steps") or []


def _review_step(step, where: str) -> list[str]:
    out = []
    name, args = _step_name(step)
    if name == "run":
        if not isinstance(step["run"], dict):
            out.append(f"RC008 {where}: a `run` step is a string; make it a map with a name")
        else:
            if not args.get("name"):
                out.append(f"RC008 {where}: a `run` step has no name")
            command = str(args.get("command", ""))
            if len(command) > 64 and not INCLUDE.match(command.strip()):
                out.append(
                    f"RC009 {where}: a command of {len(command)} characters is inline; "
                    "move it to src/scripts and <<include(...)>> it"
                )
    if name in ("restore_cache", "save_cache"):
        keys = [args.get("key")] + list(args.get("keys") or [])
        for key in filter(None, keys):
            if "$" in key:
                out.append(f"RC012 {where}: cache key {key!r} uses an environment variable")
    return out


# --------------------------------------------------------------------------------------------
# Semantic checks (on the packed orb and the config)
# --------------------------------------------------------------------------------------------


def _check_params(decl: dict | None, where: str) -> list[str]:
    out = []
    for pname, p in (decl or {}).items():
        if not isinstance(p, dict):
            out.append(f"{where}: parameter {pname!r} is not a map")
            continue
        if p.get("type") not in PARAM_TYPES:
            out.append(f"{where}: parameter {pname!r} has type {p.get('type')!r}")
        if p.get("type") == "enum" and "default" in p and p["default"] not in (p.get("enum") or []):
            out.append(
                f"{where}: enum parameter {pname!r} default {p['default']!r} is not in "
                f"its enum {p.get('enum')}"
            )
    return out


def _check_refs(body, declared: dict | None, where: str) -> list[str]:
    used = {m for s in _strings(body) for m in PARAM_REF.findall(s)}
    return [
        f"{where}: << parameters.{u} >> is used but not declared"
        for u in sorted(used - set(declared or {}))
    ]


def _check_args(
    target: str, decl: dict | None, args: dict, where: str, extra_ok: set[str] = frozenset()
) -> list[str]:
    decl = decl or {}
    out = [
        f"{where}: {target} takes no argument {k!r}"
        for k in args
        if k not in decl and k not in extra_ok
    ]
    out += [
        f"{where}: {target} needs argument {k!r} (no default)"
        for k, p in decl.items()
        if isinstance(p, dict) and "default" not in p and k not in args
    ]
    return out


def check_components(doc: dict, label: str, prefix: str = "") -> list[str]:
    """Commands, jobs and executors of a config or an orb: steps, executors, parameters."""
    out = []
    commands = doc.get("commands") or {}
    executors = doc.get("executors") or {}
    orbs = doc.get("orbs") or {}

    def known_command(name: str) -> dict | None | bool:
        if name in commands:
            return commands[name]
        if "/" in name:
            orb_name, _, cmd = name.partition("/")
            orb = orbs.get(orb_name)
            if isinstance(orb, dict):
                return (orb.get("commands") or {}).get(cmd, False)
            return orb is not None  # an external orb: cannot look inside
        return False

    def steps_ok(steps, where, declared) -> list[str]:
        errs = []
        for step in steps or []:
            name, args = _step_name(step)
            if name in BUILTIN_STEPS:
                continue
            if name == "?":
                errs.append(f"{where}: a step is not a name or a one-key map: {step!r}")
                continue
            target = known_command(name)
            if target is False:
                errs.append(f"{where}: step {name!r} is neither a built-in step nor a command")
            elif isinstance(target, dict):
                errs += _check_args(f"command {name!r}", target.get("parameters"), args, where)
        return errs

    for cname, c in commands.items():
        where = f"{label} command {prefix}{cname}"
        out += _check_params(c.get("parameters"), where)
        out += _check_refs(c, c.get("parameters"), where)
        out += steps_ok(c.get("steps"), where, c.get("parameters"))
    for ename, e in executors.items():
        where = f"{label} executor {prefix}{ename}"
        out += _check_params(e.get("parameters"), where)
        out += _check_refs(e, e.get("parameters"), where)
    for jname, j in (doc.get("jobs") or {}).items():
        where = f"{label} job {prefix}{jname}"
        out += _check_params(j.get("parameters"), where)
        out += _check_refs(j, j.get("parameters"), where)
        out += steps_ok(j.get("steps"), where, j.get("parameters"))
        ex = j.get("executor")
        ex_name = ex.get("name") if isinstance(ex, dict) else ex
        named = isinstance(ex_name, str) and not PARAM_REF.search(ex_name)
        if named and ex_name not in executors and "/" not in ex_name:
            out.append(f"{where}: executor {ex_name!r} is not defined")
        if not (ex or j.get("docker") or j.get("machine") or j.get("macos")):
            out.append(f"{where}: no executor, docker, machine or macos")
        for pname, p in (j.get("parameters") or {}).items():
            if (
                isinstance(p, dict)
                and p.get("type") == "executor"
                and "default" in p
                and p["default"] not in executors
            ):
                out.append(
                    f"{where}: executor parameter {pname!r} default {p['default']!r} "
                    "is not a defined executor"
                )
    return out


def check_orb(orb: dict, label: str = "orb") -> list[str]:
    """Semantic checks of a packed orb."""
    out = [f"{label}: unknown top-level key {k!r}" for k in orb if k not in ORB_KEYS]
    out += check_components(orb, label)
    return out


def valid_cron(expr: str) -> bool:
    """Five fields, each *, a number, a range, a list, or with a /step, inside its range."""
    fields = str(expr).split()
    if len(fields) != 5:
        return False
    for field, (lo, hi) in zip(fields, CRON_RANGES, strict=True):
        for part in field.split(","):
            base, _, step = part.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                return False
            if base == "*":
                continue
            bounds = base.split("-")
            if len(bounds) > 2 or not all(b.isdigit() for b in bounds):
                return False
            if not all(lo <= int(b) <= hi for b in bounds):
                return False
    return True


def check_config(config: dict) -> list[str]:
    """Semantic checks of .circleci/config.yml, its inline orbs included."""
    out = [f"config: unknown top-level key {k!r}" for k in config if k not in CONFIG_KEYS]
    pipeline_params = config.get("parameters") or {}
    out += _check_params(pipeline_params, "config pipeline")
    used = {m for s in _strings(config.get("workflows") or {}) for m in PIPELINE_REF.findall(s)}
    used |= {m for s in _strings(config.get("jobs") or {}) for m in PIPELINE_REF.findall(s)}
    out += [
        f"config: << pipeline.parameters.{u} >> is used but not declared"
        for u in sorted(used - set(pipeline_params))
    ]
    orbs = config.get("orbs") or {}
    for oname, orb in orbs.items():
        if isinstance(orb, dict):
            out += check_orb(orb, f"inline orb {oname}")
            code = {k: v for k, v in orb.items() if k != "examples"}  # usage is a config
            inside = {m for s in _strings(code) for m in PIPELINE_REF.findall(s)}
            out += [
                f"inline orb {oname}: uses << pipeline.parameters.{u} >> (pipeline "
                "parameters are not visible inside orbs)"
                for u in sorted(inside)
            ]
    out += check_components(config, "config")
    jobs = config.get("jobs") or {}

    def job_decl(name: str) -> dict | None | bool:
        if name in jobs:
            return jobs[name]
        if "/" in name:
            orb_name, _, job = name.partition("/")
            orb = orbs.get(orb_name)
            if isinstance(orb, dict):
                return (orb.get("jobs") or {}).get(job, False)
            if isinstance(orb, str):
                return external_job(orb, job)
            return orb is not None
        return False

    for wname, wf in (config.get("workflows") or {}).items():
        if wname == "version" or not isinstance(wf, dict):
            continue
        where = f"workflow {wname}"
        for key in wf:
            if key not in ("jobs", "when", "unless", "triggers", "max_auto_reruns"):
                out.append(f"{where}: unknown key {key!r}")
        for trig in wf.get("triggers") or []:
            cron = (trig.get("schedule") or {}).get("cron")
            if cron is not None and not valid_cron(cron):
                out.append(f"{where}: invalid cron {cron!r}")
        entries = []
        for entry in wf.get("jobs") or []:
            name, args = _step_name(entry)
            entries.append((name, args, args.get("name", name)))
        names = {alias for _, _, alias in entries}
        for name, args, alias in entries:
            w = f"{where} job {alias}"
            if "type" in args:
                if args["type"] != "approval":
                    out.append(f"{w}: type {args['type']!r} (the only job type is 'approval')")
                elif job_decl(name) not in (False, None):
                    out.append(f"{w}: an approval job must not be named like a defined job")
            else:
                decl = job_decl(name)
                if decl is False:
                    out.append(f"{w}: job {name!r} is not defined")
                elif isinstance(decl, dict):
                    params = {k for k in args if k not in WORKFLOW_ENTRY_KEYS}
                    out += _check_args(
                        f"job {name!r}", decl.get("parameters"), {k: args[k] for k in params}, w
                    )
            for req in args.get("requires") or []:
                req_name = next(iter(req)) if isinstance(req, dict) else req
                if req_name not in names:
                    out.append(f"{w}: requires {req_name!r}, which is not a job of this workflow")
    return out


FEATURE_BRANCH = "feature/probe"  # a branch that is not main: deploys and holds skip it
TEAM_CONFIGS = ROOT / "examples" / "team_repo" / ".circleci"  # the example team repository


def check_deploy_rules(config: dict, label: str, contexts: bool = True) -> list[str]:
    """What every workflow that deploys must do (issue 19): its deploy jobs run on main only
    and in a serial-group (two pipelines never deploy one model at once); its approval jobs
    run on main only, and so does a retrain that posts "approval waiting" (approval_hold):
    on another branch the hold is filtered out and the notice would wait for nothing. With
    ``contexts`` (examples for teams), deploys and approvals also take a context."""
    out = []
    for wname, wf in (config.get("workflows") or {}).items():
        if not isinstance(wf, dict):
            continue
        for alias, (job, args) in _entries(wf).items():
            w = f"{label}: workflow {wname} job {alias}"
            kind = job.rpartition("/")[2]
            deploys = kind == "deploy" and "/" in job
            holds = args.get("type") == "approval"
            notices = kind == "retrain" and args.get("approval_hold") is True
            if (deploys or holds or notices) and runs_on_branch(
                args.get("filters"), FEATURE_BRANCH
            ):
                out.append(f"{w}: runs on every branch (filter it to main)")
            if deploys and not args.get("serial-group"):
                out.append(f"{w}: deploys without a serial-group")
            if contexts and (deploys or holds) and not args.get("context"):
                out.append(f"{w}: takes no context (restrict who may deploy or approve)")
    return out


def example_configs(orb: dict) -> dict[str, dict]:
    """The configs teams copy: each orb example's usage, the example team repository's."""
    out = {
        f"orb example {name}": ex["usage"]
        for name, ex in (orb.get("examples") or {}).items()
        if isinstance(ex, dict) and isinstance(ex.get("usage"), dict)
    }
    for path in sorted(TEAM_CONFIGS.glob("*.yml")):
        out[f"examples/team_repo/.circleci/{path.name}"] = yaml.safe_load(path.read_text())
    return out


def external_job(reference: str, job: str) -> dict | bool:
    """A registry orb's job as a declaration (its parameters, with a default where it has
    one) when EXTERNAL_JOBS records that orb's major version; False when it records the orb
    but not the job; True (cannot look inside) for any other orb."""
    name, _, version = reference.partition("@")
    known = EXTERNAL_JOBS.get(f"{name}@{version.split('.')[0]}")
    if known is None:
        return True
    if job not in known:
        return False
    params, required = known[job]
    return {"parameters": {p: ({} if p in required else {"default": ""}) for p in params}}


def _pattern_allows(spec, value: str) -> bool:
    """A filter's `only`/`ignore` value (a string or a list; /regex/ or an exact name)."""
    specs = spec if isinstance(spec, list) else [spec]
    return any(
        re.fullmatch(s[1:-1], value) if s.startswith("/") and s.endswith("/") else s == value
        for s in map(str, specs)
    )


def runs_on_tag(filters: dict | None, tag: str) -> bool:
    """Whether a workflow job runs on a tag's pipeline: CircleCI runs none without a tag
    filter whose `only` takes the tag."""
    tags = (filters or {}).get("tags") or {}
    if tags.get("only") is None or not _pattern_allows(tags["only"], tag):
        return False
    return not (tags.get("ignore") is not None and _pattern_allows(tags["ignore"], tag))


def runs_on_branch(filters: dict | None, branch: str) -> bool:
    """Whether a workflow job runs on a branch's pipeline (no branch filter: every branch)."""
    b = (filters or {}).get("branches") or {}
    if b.get("only") is not None and not _pattern_allows(b["only"], branch):
        return False
    return not (b.get("ignore") is not None and _pattern_allows(b["ignore"], branch))


def _entries(workflow: dict) -> dict[str, tuple[str, dict]]:
    """A workflow's jobs by the name they have in it: (the job it runs, its arguments)."""
    out = {}
    for entry in workflow.get("jobs") or []:
        job, args = _step_name(entry)
        out[args.get("name", job)] = (job, args)
    return out


def _upstream(entries: dict[str, tuple[str, dict]], name: str) -> set[str]:
    """Every job a workflow job waits for, directly or through others."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for req in entries.get(todo.pop(), ("", {}))[1].get("requires") or []:
            req = next(iter(req)) if isinstance(req, dict) else req
            if req not in seen:
                seen.add(req)
                todo.append(req)
    return seen


def _publishes(entries: dict, pub_type: str) -> list[str]:
    return [
        n
        for n, (job, args) in entries.items()
        if job == "orb-tools/publish" and args.get("pub_type", "dev") == pub_type
    ]


def check_release(release: dict, test: dict, test_path: str = ".circleci/release-test.yml"):
    """The orb release's shape, orb-tools' flow: release.yml (a setup config) packs, reviews,
    publishes a dev version and continues with release-test.yml, which tests that very dev
    version and publishes the semver release after every test, only on a tag vX.Y.Z."""
    out: list[str] = []
    if release.get("setup") is not True:
        out.append("release.yml: not a setup config (setup: true); orb-tools/continue needs one")
    if test.get("setup") is True:
        out.append("release-test.yml: a continuation config cannot itself be a setup config")
    flows = list((release.get("workflows") or {}).values())
    first = _entries(flows[0]) if len(flows) == 1 else {}
    if len(flows) != 1:
        out.append("release.yml: expected one workflow (pack, review, publish dev, continue)")
    dev = _publishes(first, "dev")
    cont = [n for n, (job, _) in first.items() if job == "orb-tools/continue"]
    if len(dev) != 1 or len(cont) != 1:
        out.append("release.yml: expected one orb-tools/publish (pub_type: dev) and one continue")
    else:
        (dev,), (cont,) = dev, cont
        jobs = {job for job, _ in first.values()}
        for need in ("orb-tools/pack", "orb-tools/review"):
            if need not in jobs:
                out.append(f"release.yml: no {need}")
            elif need not in {first[n][0] for n in _upstream(first, dev)}:
                out.append(f"release.yml: {dev} does not wait for {need}")
        if dev not in _upstream(first, cont):
            out.append(f"release.yml: {cont} does not wait for {dev} (test the dev version)")
        args = first[cont][1]
        if args.get("config_path") != test_path:
            out.append(f"release.yml: {cont} continues with {args.get('config_path')!r}")
        if args.get("inject_orb") is not False:
            out.append(f"release.yml: {cont} injects the packed source (inject_orb: false)")
        # `<< pipeline.git.revision >>` and `<<pipeline.git.revision>>` are one value.
        tags = re.sub(r"\s+", "", str(first[dev][1].get("dev_tags", ""))).split(",")
        loaded = str((test.get("orbs") or {}).get("tfship", ""))
        version = re.sub(r"\s+", "", loaded.partition("@")[2])
        if not loaded.startswith(f"{ORB_NAME}@") or version not in tags:
            out.append(
                f"release-test.yml: loads tfship as {loaded!r}, not a dev version {dev} "
                f"publishes ({', '.join(tags)})"
            )
        if first[dev][1].get("orb_name") != ORB_NAME:
            out.append(f"release.yml: {dev} publishes {first[dev][1].get('orb_name')!r}")
    for name, (_, args) in first.items():
        if not runs_on_tag(args.get("filters"), RELEASE_TAG):
            out.append(f"release.yml: {name} does not run on a tag (filters: tags: only)")
    for wname, wf in (test.get("workflows") or {}).items():
        entries = _entries(wf)
        for prod in _publishes(entries, "production"):
            where = f"release-test.yml workflow {wname}: {prod}"
            args = entries[prod][1]
            if args.get("orb_name") != ORB_NAME:
                out.append(f"{where} publishes {args.get('orb_name')!r}")
            missing = set(entries) - {prod} - _upstream(entries, prod)
            if missing:
                out.append(f"{where} does not wait for {', '.join(sorted(missing))}")
            f = args.get("filters")
            if not runs_on_tag(f, RELEASE_TAG) or any(runs_on_tag(f, t) for t in NOT_RELEASE_TAGS):
                out.append(f"{where} runs on tags other than vX.Y.Z (or not on {RELEASE_TAG})")
            if runs_on_branch(f, "main") or runs_on_branch(f, "release"):
                out.append(f"{where} runs on a branch (branches: ignore: /.*/)")
            python = [
                n
                for n, (job, _) in entries.items()
                if "uv publish" in "".join(_strings((test.get("jobs") or {}).get(job, {})))
            ]
            if not set(python) & _upstream(entries, prod):
                out.append(
                    f"{where} does not wait for a job that publishes the Python package (uv "
                    "publish): the orb installs that release of tfship by default"
                )
            for up in _upstream(entries, prod):
                if not runs_on_tag(entries.get(up, ("", {}))[1].get("filters"), RELEASE_TAG):
                    out.append(
                        f"{where} waits for {up}, which does not run on {RELEASE_TAG} "
                        "(a tag pipeline would skip it and the release)"
                    )
    if not any(
        _publishes(_entries(wf), "production") for wf in (test.get("workflows") or {}).values()
    ):
        out.append("release-test.yml: no orb-tools/publish with pub_type: production")
    return out


def check_schema(paths: list[Path]) -> list[str]:
    """check-jsonschema's CircleCI schema on each file (the dev tool beside this interpreter)."""
    tool = Path(sys.executable).parent / "check-jsonschema"
    exe = str(tool) if tool.exists() else shutil.which("check-jsonschema")
    if not exe:
        return ["check-jsonschema not found (tools/setup.sh --test installs it)"]
    r = subprocess.run(
        [exe, "--builtin-schema", "vendor.circle-ci", *map(str, paths)],
        capture_output=True,
        text=True,
    )
    return [] if r.returncode == 0 else [f"schema: {line}" for line in r.stdout.splitlines()]


def check_phases(setup: dict, continuation: dict) -> list[str]:
    """The setup config is one (``setup: true``); the continuation config is not, and
    declares every pipeline parameter the setup config declares."""
    out = []
    missing = sorted(set(setup.get("parameters") or {}) - set(continuation.get("parameters") or {}))
    if missing:
        out.append(
            f"continue.yml: declares no {', '.join(missing)} (config.yml's pipeline parameters "
            "carry into the continuation)"
        )
    if setup.get("setup") is not True:
        out.append("config.yml: not a setup config (setup: true)")
    if continuation.get("setup") is True:
        out.append("continue.yml: a continuation config cannot itself be a setup config")
    return out


def with_this_orb(test: dict, orb: dict) -> dict:
    """release-test.yml with its tfship reference (the dev version of this commit's orb)
    replaced by the orb packed from orb/src, so its jobs' arguments are checked."""
    return {**test, "orbs": {**(test.get("orbs") or {}), "tfship": orb}}


def main() -> int:
    from pack_orb import CONFIG, CONTINUATION, PACKED, SRC, pack

    problems = review(SRC)
    orb = pack(SRC)
    problems += check_orb(orb, "orb/orb.yml")
    docs = {path: yaml.safe_load(path.read_text()) for path in (CONFIG, CONTINUATION)}
    for path, doc in docs.items():
        problems += [f"{path.name}: {p}" for p in check_config(doc)]
    problems += check_phases(docs[CONFIG], docs[CONTINUATION])
    problems += check_deploy_rules(docs[CONTINUATION], CONTINUATION.name, contexts=False)
    for label, example in example_configs(orb).items():
        problems += check_deploy_rules(example, label)
    release = yaml.safe_load(RELEASE.read_text())
    test = yaml.safe_load(RELEASE_TEST.read_text())
    problems += [f"release.yml: {p}" for p in check_config(release)]
    problems += [f"release-test.yml: {p}" for p in check_config(with_this_orb(test, orb))]
    problems += check_release(release, test)
    problems += check_schema([PACKED, CONFIG, CONTINUATION, RELEASE, RELEASE_TEST])
    for p in problems:
        print(p)
    print(f"check_orb: {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
