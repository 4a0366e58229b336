"""``tfship ci local``: run a workflow of ``.circleci/config.yml`` on this machine.

What it does as CircleCI does: expands inline orbs (commands, jobs, executors), job and
command parameters with their types and defaults, ``steps`` parameters, ``<< pipeline.
parameters.x >>`` from ``--param``, ``when``/``unless`` logic on workflows and steps; runs
jobs in ``requires`` order (independent jobs in parallel with ``jobs > 1``), each in its own
clean folder; passes workspace layers with ``persist_to_workspace``/``attach_workspace`` (a job
sees only its upstream jobs' layers); runs steps with CircleCI's step ``when`` rules (after a
failed step only ``on_fail``/``always`` steps and ``store_*`` steps run); holds at approval
jobs; prints a summary like the web console.

What it does not: executors are not containers here (steps run in the local shell, said once);
caches are no-ops. Anything else it does not support is refused by name before anything runs.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import os
import re
import select
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tfship.errors import ConfigError, TfshipError

BUILTIN = {
    "run",
    "checkout",
    "persist_to_workspace",
    "attach_workspace",
    "store_artifacts",
    "store_test_results",
    "restore_cache",
    "save_cache",
    "when",
    "unless",
}
JOB_KEYS = {
    "description",
    "parameters",
    "steps",
    "executor",
    "docker",
    "machine",
    "macos",
    "resource_class",
    "environment",
    "working_directory",
    "shell",
    "parallelism",
}
ENTRY_KEYS = {"requires", "name", "context", "filters", "type"}
RUN_KEYS = {
    "name",
    "command",
    "environment",
    "working_directory",
    "shell",
    "when",
    "no_output_timeout",
}
PARAM = re.compile(r"(?<!\\)<<\s*parameters\.([A-Za-z0-9_-]+)\s*>>")
PIPELINE = re.compile(r"(?<!\\)<<\s*pipeline\.([A-Za-z0-9_.-]+)\s*>>")
WHOLE = re.compile(r"^\s*(?<!\\)<<\s*(pipeline\.)?parameters\.([A-Za-z0-9_-]+)\s*>>\s*$")


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


def _text(v) -> str:
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
            m = WHOLE.match(v) if isinstance(v, str) else None
            if m and not m.group(1) and isinstance(params.get(m.group(2)), list):
                out.extend(params[m.group(2)])  # a steps parameter expands in place
            else:
                out.append(substitute(v, params, pipeline, where))
        return out
    if not isinstance(value, str):
        return value
    m = WHOLE.match(value)
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
        return _text(params[mm.group(1)])

    def pipe(mm):
        key = mm.group(1)
        node = pipeline
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise Unsupported(f"{where}: << pipeline.{key} >> is not known to the local runner")
            node = node[part]
        return _text(node)

    return PIPELINE.sub(pipe, PARAM.sub(param, value))


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


class Config:
    """A parsed config with its inline orbs."""

    def __init__(self, doc: dict, pipeline: dict) -> None:
        self.doc = doc
        self.pipeline = pipeline
        self.orbs: dict[str, dict] = {}
        for name, orb in (doc.get("orbs") or {}).items():
            if not isinstance(orb, dict):
                raise Unsupported(
                    f"orb {name!r} is a registry reference ({orb}); only inline orbs run locally"
                )
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
            if name in BUILTIN:
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
        job_args = {k: v for k, v in args.items() if k not in ENTRY_KEYS}
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
    doc: dict, workflow: str, params: dict, branch: str, extra_pipeline: dict | None = None
) -> tuple[list[Job], bool]:
    """The workflow's jobs, expanded and checked; and whether its when/unless lets it run."""
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
        "number": 1,
        "id": str(uuid.uuid4()),
    }
    flows = doc.get("workflows") or {}
    if workflow not in flows:
        names = [k for k in flows if k != "version"]
        raise ConfigError(f"no workflow {workflow!r} in the config (have: {', '.join(names)})")
    wf = substitute(flows[workflow], {}, pipeline, f"workflow {workflow}")
    extra = set(wf) - {"jobs", "when", "unless"}
    if extra:
        raise Unsupported(f"workflow {workflow}: {sorted(extra)} not supported locally")
    runs = (truth(wf["when"]) if "when" in wf else True) and not (
        truth(wf["unless"]) if "unless" in wf else False
    )
    cfg = Config(doc, pipeline)
    jobs = []
    for entry in wf.get("jobs") or []:
        name, args = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
        args = args or {}
        for key in ("matrix", "pre-steps", "post-steps", "serial-group"):
            if key in args:
                raise Unsupported(
                    f"workflow {workflow} job {name}: {key!r} is not supported locally"
                )
        alias = args.get("name", name)
        requires = parse_requires(args.get("requires"))
        if args.get("type") is not None:
            if args["type"] != "approval":
                raise ConfigError(f"job {alias}: unknown type {args['type']!r}")
            jobs.append(Job(alias, "approval", requires))
            continue
        job = cfg.job(name, args, alias)
        job.requires = requires
        job.skipped = not branch_allowed(args.get("filters"), branch)
        jobs.append(job)
    names = {j.name for j in jobs}
    for j in jobs:
        missing = set(j.requires) - names
        if missing:
            raise ConfigError(f"job {j.name} requires {sorted(missing)}, not in {workflow}")
    return jobs, runs


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    status: str  # success | failed | blocked | not_run | on_hold | canceled
    seconds: float = 0.0
    failed_step: str | None = None


class Runner:
    """Runs a planned workflow in ``out``: jobs/<job>/project, layers, artifacts, results."""

    def __init__(
        self,
        project: Path,
        out: Path,
        env: dict[str, str],
        branch: str,
        decide: Callable[[str], str | None],
        jobs: int = 1,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.project = project.resolve()
        self.out = out.resolve()
        self.env = env
        self.branch = branch
        self.decide = decide
        self.parallel = max(1, jobs)
        self.echo = echo
        self.lock = threading.Lock()
        self.workflow_id = str(uuid.uuid4())
        self.results: dict[str, Result] = {}
        self.layers: dict[str, Path] = {}
        self.upstream: dict[str, set[str]] = {}

    # --- orchestration -----------------------------------------------------------------------
    def run(self, jobs: list[Job]) -> dict[str, Result]:
        if self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True)
        by_name = {j.name: j for j in jobs}
        for j in jobs:
            self.upstream[j.name] = self._ancestors(j, by_name)
        self.echo("Executors are not containers here: steps run in this machine's shell.")
        pending = dict(by_name)
        running: dict = {}
        with ThreadPoolExecutor(self.parallel) as pool:
            while pending or running:
                progressed = False
                for name, job in list(pending.items()):
                    state = self._ready(job)
                    if state == "wait":
                        continue
                    del pending[name]
                    progressed = True
                    if state != "go":
                        self.results[name] = Result(name, state)
                        continue
                    if job.kind == "approval":
                        self.results[name] = self._approval(job)
                        continue
                    if job.skipped:
                        self.results[name] = Result(name, "not_run")
                        self.echo(f"[{name}] filtered out for branch {self.branch}")
                        continue
                    running[pool.submit(self._run_job, job)] = name
                if running and not progressed:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in done:
                        name = running.pop(fut)
                        self.results[name] = fut.result()
                elif not running and not progressed and pending:
                    for name in pending:  # unreachable: a cycle
                        self.results[name] = Result(name, "blocked")
                    pending.clear()
        return {j.name: self.results[j.name] for j in jobs}

    def _ancestors(self, job: Job, by_name: dict) -> set[str]:
        seen: set[str] = set()
        stack = list(job.requires)
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack += list(by_name[n].requires)
        return seen

    def _ready(self, job: Job) -> str:
        """go | wait | blocked | not_run, from the required jobs' results."""
        for req, statuses in job.requires.items():
            r = self.results.get(req)
            if r is None:
                return "wait"
            if r.status in ("on_hold", "blocked"):
                return "blocked"
            if r.status not in statuses:
                return "not_run"
        return "go"

    def _approval(self, job: Job) -> Result:
        decision = self.decide(job.name)
        if decision == "approve":
            self.echo(f"[{job.name}] approved")
            return Result(job.name, "success")
        if decision == "reject":
            self.echo(f"[{job.name}] rejected")
            return Result(job.name, "canceled")
        self.echo(
            f"[{job.name}] on hold: waiting for approval (--approve {job.name} or "
            f"--reject {job.name})"
        )
        return Result(job.name, "on_hold")

    # --- one job -----------------------------------------------------------------------------
    def _run_job(self, job: Job) -> Result:
        started = time.monotonic()
        root = self.out / "jobs" / job.name
        home = root / "home"
        home.mkdir(parents=True)
        workdir = root / "project"
        bash_env = root / "bash_env"
        bash_env.write_text("")
        env = {
            **self.env,
            **{k: _text(v) for k, v in job.environment.items()},
            "CI": "true",
            "CIRCLECI": "true",
            "CIRCLE_JOB": job.name,
            "CIRCLE_BRANCH": self.branch,
            "CIRCLE_WORKFLOW_ID": self.workflow_id,
            "CIRCLE_BUILD_NUM": str(len(self.results) + 1),
            "CIRCLE_BUILD_URL": (root / "log.txt").as_uri(),
            "CIRCLE_WORKING_DIRECTORY": str(workdir),
            "BASH_ENV": str(bash_env),
        }
        if (self.project / "ml" / "tfship").is_dir():  # the checkout's own tfship
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(workdir / "ml"), env.get("PYTHONPATH")])
            )
        # The interpreter running this (the project's .venv) comes first on PATH, as the orb's
        # install step puts its venv first on CircleCI: `python3` and `tfship` are ours.
        env["PATH"] = os.pathsep.join(
            filter(None, [str(Path(sys.executable).parent), env.get("PATH")])
        )
        log = open(root / "log.txt", "w")  # noqa: SIM115 - closed below
        failed_step = None
        try:
            for step in job.steps:
                name, args = next(iter(step.items()))
                when = (
                    args.get("when", "on_success")
                    if name == "run"
                    else ("always" if name.startswith("store_") else "on_success")
                )
                if failed_step and when == "on_success":
                    continue
                if not failed_step and when == "on_fail":
                    continue
                ok = self._step(job, name, args, workdir, env, log)
                if not ok and not failed_step:
                    failed_step = args.get("name", name) if isinstance(args, dict) else name
        finally:
            log.close()
        status = "failed" if failed_step else "success"
        seconds = time.monotonic() - started
        self.echo(
            f"[{job.name}] {status} in {seconds:.1f}s"
            + (f" (step: {failed_step})" if failed_step else "")
        )
        return Result(job.name, status, seconds, failed_step)

    def _say(self, job: Job, log, text: str) -> None:
        log.write(text + "\n")
        log.flush()
        with self.lock:
            self.echo(f"[{job.name}] {text}")

    def _step(self, job: Job, name: str, args: dict, workdir: Path, env: dict, log) -> bool:
        try:
            if name == "run":
                return self._run(job, args, workdir, env, log)
            if name == "checkout":
                self._checkout(workdir)
                self._say(job, log, "checkout: copied the project")
            elif name == "attach_workspace":
                self._attach(job, workdir / args.get("at", "."), log)
            elif name == "persist_to_workspace":
                self._persist(job, workdir / args.get("root", "."), args.get("paths") or [], log)
            elif name == "store_artifacts":
                src = workdir / args["path"]
                dest = self.out / "artifacts" / job.name / args.get("destination", args["path"])
                if src.exists():
                    _copy(src, dest)
                self._say(
                    job,
                    log,
                    f"store_artifacts: {args['path']}"
                    + ("" if src.exists() else " (nothing there)"),
                )
            elif name == "store_test_results":
                src = workdir / args["path"]
                dest = self.out / "test-results" / job.name
                found = sorted(src.rglob("*.xml")) if src.is_dir() else []
                for f in found:
                    _copy(f, dest / f.relative_to(src))
                self._say(job, log, f"store_test_results: {len(found)} file(s) from {args['path']}")
            elif name in ("restore_cache", "save_cache"):
                self._say(job, log, f"{name}: skipped (caches are not kept locally)")
            return True
        except (OSError, KeyError, ConfigError) as exc:
            self._say(job, log, f"{name} failed: {exc}")
            return False

    def _run(self, job: Job, args: dict, workdir: Path, env: dict, log) -> bool:
        title = args.get("name") or "run"
        cwd = workdir / args.get("working_directory", job.working_directory or ".")
        cwd.mkdir(parents=True, exist_ok=True)
        step_env = {**env, **{k: _text(v) for k, v in (args.get("environment") or {}).items()}}
        shell = args.get("shell", "/bin/bash -eo pipefail").split()
        timeout = _duration(args.get("no_output_timeout", "10m"))
        self._say(job, log, f"$ {title}")
        proc = subprocess.Popen(
            [*shell, "-c", args["command"]],
            cwd=cwd,
            env=step_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        last = time.monotonic()
        buf = b""
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                last = time.monotonic()
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    self._say(job, log, "  " + line.decode(errors="replace"))
            elif time.monotonic() - last > timeout:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                self._say(job, log, f"Too long with no output (exceeded {timeout:g}s)")
                proc.wait()
                return False
        if buf:
            self._say(job, log, "  " + buf.decode(errors="replace"))
        code = proc.wait()
        if code != 0:
            self._say(job, log, f"Exited with code exit status {code}")
        return code == 0

    def _checkout(self, workdir: Path) -> None:
        if workdir.exists():
            shutil.rmtree(workdir)
        files = None
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            listing = subprocess.run(
                ["git", "ls-files", "-co", "--exclude-standard", "-z"],
                cwd=self.project,
                capture_output=True,
                check=True,
            ).stdout
            files = [f for f in listing.decode().split("\0") if f]
        if files is None:
            shutil.copytree(
                self.project,
                workdir,
                ignore=shutil.ignore_patterns(
                    ".git", ".venv", ".tools", "workspace", "store", "serving", "__pycache__"
                ),
            )
            return
        for rel in files:
            src = self.project / rel
            if src.is_file():
                _copy(src, workdir / rel)

    def _attach(self, job: Job, at: Path, log) -> None:
        layers = [n for n in self.layers if n in self.upstream[job.name]]
        if not layers:
            raise ConfigError("attach_workspace: no upstream job persisted a workspace")
        at.mkdir(parents=True, exist_ok=True)
        for n in layers:  # in the order the upstream jobs finished: later layers win
            shutil.copytree(self.layers[n], at, dirs_exist_ok=True, symlinks=True)
        self._say(job, log, f"attach_workspace: layers of {', '.join(layers)} at {at.name}")

    def _persist(self, job: Job, root: Path, paths: list, log) -> None:
        layer = self.out / "layers" / job.name
        count = 0
        for pattern in paths:
            matches = glob.glob(str(root / pattern), recursive=True)
            if not matches:
                raise ConfigError(
                    f"persist_to_workspace: {pattern!r} matched no files under {root.name}"
                )
            for m in matches:
                src = Path(m)
                _copy(src, layer / src.relative_to(root))
                count += 1
        with self.lock:
            self.layers[job.name] = layer
        self._say(job, log, f"persist_to_workspace: {', '.join(paths)}")


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest, dirs_exist_ok=True, symlinks=True)
    else:
        shutil.copy2(src, dest)


def _duration(text) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", str(text).strip())
    if not m:
        raise ConfigError(f"no_output_timeout {text!r} is not like 10m, 90s or 1h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def summary(results: dict[str, Result], workflow: str) -> str:
    """The console's view: each job, its status and time."""
    width = max((len(n) for n in results), default=4)
    lines = [f"workflow {workflow}"]
    for r in results.values():
        t = f"{r.seconds:6.1f}s" if r.seconds else "      -"
        extra = f"  (failed step: {r.failed_step})" if r.failed_step else ""
        lines.append(f"  {r.name:<{width}}  {r.status:<9} {t}{extra}")
    return "\n".join(lines)


def load_config(path: Path) -> dict:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(doc, dict) or str(doc.get("version")) != "2.1":
        raise ConfigError(f"{path}: not a version 2.1 CircleCI config")
    for key in doc:
        if key not in (
            "version",
            "orbs",
            "commands",
            "executors",
            "jobs",
            "workflows",
            "parameters",
        ):
            raise Unsupported(f"{path}: top-level key {key!r} is not supported locally")
    return doc


def current_branch(project: Path) -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(
            ["git", "rev-parse", "--abbrev-ref", "HEAD"],
            cwd=project,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if out and out != "HEAD":
            return out
    return "main"


def terminal_decider(approve: set[str], reject: set[str]) -> Callable[[str], str | None]:
    """--approve/--reject decide; else ask on a terminal; else leave it on hold."""

    def decide(name: str) -> str | None:
        if name in approve:
            return "approve"
        if name in reject:
            return "reject"
        if sys.stdin.isatty():
            answer = input(f"Approve {name}? [y/N] ").strip().lower()
            return "approve" if answer in ("y", "yes") else "reject"
        return None

    return decide
