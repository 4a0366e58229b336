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
from dataclasses import dataclass
from pathlib import Path

from tfship.ci.api import CONTINUATION_KEY_ENV, parse_params
from tfship.ci.continuation import API_URL, Continuation, Loopback
from tfship.ci.orbpack import PackError, pack_source
from tfship.ci.workflow import (
    Job,
    Unsupported,
    WorkflowFailed,
    as_text,
    is_setup,
    load_config,
    parse_config,
    parse_orb_sources,
    plan,
    workflow_names,
)
from tfship.errors import ConfigError

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
                    if job.skipped:  # an approval job too: no hold on a filtered branch
                        self.results[name] = Result(name, "not_run")
                        self.echo(f"[{name}] filtered out for branch {self.branch}")
                        continue
                    if job.kind == "approval":
                        self.results[name] = self._approval(job)
                        continue
                    if job.serial_group:
                        self.echo(
                            f"[{name}] serial-group {job.serial_group}: locally one pipeline "
                            "runs at a time, so there is nothing to wait for"
                        )
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
            **{k: as_text(v) for k, v in job.environment.items()},
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
        step_env = {**env, **{k: as_text(v) for k, v in (args.get("environment") or {}).items()}}
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


@dataclass
class Continued:
    """What a setup workflow continued the pipeline with, and the workflows that then ran."""

    parameters: dict
    runs: list[LocalRun]
    idle: list[str]  # the continued config's workflows whose when/unless is false
    # Continued with a configuration that has no workflow (the continuation orb's `finish`).
    finished: bool = False

    def to_dict(self) -> dict:
        return {
            "parameters": self.parameters,
            "workflows": [r.to_dict() for r in self.runs],
            "not_run": self.idle,
            "finished": self.finished,
        }

    def summary(self) -> str:
        if self.finished:
            return "finished: continued with a configuration that runs nothing; the pipeline ends"
        given = ", ".join(f"{k}={as_text(v)}" for k, v in self.parameters.items()) or "none"
        lines = [f"continued (parameters: {given})"]
        lines += [r.summary() for r in self.runs]
        if self.idle:
            lines.append(f"  when/unless false, not run: {', '.join(self.idle)}")
        if not self.runs:
            lines.append("  no workflow of the continued configuration runs: the pipeline ends")
        return "\n".join(lines)


@dataclass
class LocalRun:
    """What ``tfship ci local`` did: each job's result, and where its files are.

    For a setup workflow, ``setup`` is true and ``continued`` says what followed (None: the
    setup workflow did not continue the pipeline, which then ends with it).
    """

    workflow: str
    results: dict[str, Result]
    out: Path
    setup: bool = False
    continued: Continued | None = None

    def to_dict(self) -> dict:
        out = {
            "workflow": self.workflow,
            "jobs": {k: v.__dict__ for k, v in self.results.items()},
            "out": str(self.out),
        }
        if self.setup:
            out["setup"] = True
            out["continued"] = self.continued.to_dict() if self.continued else None
        return out

    def summary(self) -> str:
        text = summary(self.results, self.workflow + (" (setup)" if self.setup else ""))
        if not self.setup:
            return text
        if self.continued is not None:
            return text + "\n" + self.continued.summary()
        if self._failed():
            return text + "\nnot continued: the setup workflow failed"
        return text + "\nnot continued: the setup workflow ended the pipeline"

    def _failed(self) -> list[str]:
        return [r.name for r in self.results.values() if r.status == "failed"]

    def raise_if_failed(self) -> None:
        """WorkflowFailed (exit 11) naming the failed jobs, if any; print the run first."""
        failed = [f"{self.workflow}/{n}" if self.setup else n for n in self._failed()]
        for run in self.continued.runs if self.continued else []:
            failed += [f"{run.workflow}/{n}" for n in run._failed()]
        if failed:
            raise WorkflowFailed(
                f"{self.workflow}: job(s) failed: {', '.join(failed)}",
                hint=f"logs in {self.out}/[continued/<workflow>/]jobs/<job>/log.txt"
                if self.setup
                else f"logs in {self.out}/jobs/<job>/log.txt",
            )


def _extra_env(pairs: tuple[str, ...]) -> dict[str, str]:
    extra = {}
    for pair in pairs:
        k, sep, v = pair.partition("=")
        if not sep:
            raise ConfigError(f"--env {pair!r}: expected k=v")
        extra[k] = v
    return extra


def load_orbs(sources: dict[str, Path], project: Path) -> dict[str, dict]:
    """Each ``namespace/orb`` -> its source folder (relative to ``project``) packed in
    memory, as ``tools/pack_orb.py`` packs it (:func:`tfship.ci.orbpack.pack_source`)."""
    orbs = {}
    for name, folder in sources.items():
        path = folder if folder.is_absolute() else project / folder
        if not path.is_dir():
            raise ConfigError(
                f"--orb {name}={folder}: no such folder",
                hint="name an orb source folder (@orb.yml, commands/, jobs/, ...), e.g. orb/src",
            )
        try:
            orbs[name] = pack_source(path)
        except PackError as exc:
            raise ConfigError(f"--orb {name}={folder}: {exc.message}", hint=exc.hint) from None
    return orbs


def run_workflow(
    workflow: str | None,
    s,
    project: Path,
    environ: dict[str, str],
    echo: Callable[[str], None],
) -> LocalRun | None:
    """Plan and run ``workflow`` of ``s.config`` (``LocalSettings``); None if its
    when/unless condition is false. A failed job is in the result (``raise_if_failed``).

    A setup config (``setup: true``) runs as CircleCI's dynamic configuration does: its setup
    workflow (``workflow``, or the one whose when/unless holds) runs with
    ``CIRCLE_CONTINUATION_KEY`` and ``CIRCLECI_API_URL`` pointing at a local continuePipeline
    (:class:`~tfship.ci.continuation.Loopback`); then every workflow of the configuration it
    continued with whose when/unless holds runs in turn, for the parameters it sent plus the
    ``--param`` ones (a trigger's parameters carry into the continuation, as in CircleCI).
    """
    branch = s.branch or current_branch(project)
    doc = load_config(s.config)
    params = parse_params(s.params)
    env = {**environ, **_extra_env(s.envs)}
    decide = terminal_decider(set(s.approve), set(s.reject))
    orbs = load_orbs(parse_orb_sources(s.orbs), project)
    if is_setup(doc):
        return _run_setup(doc, workflow, params, s, project, env, branch, decide, echo, orbs)
    if not workflow:
        raise ConfigError(
            f"name the workflow to run (have: {', '.join(workflow_names(doc))})",
            hint=f"{s.config} is not a setup config, so there is no setup workflow to start from",
        )
    jobs, runs = plan(doc, workflow, params, branch, orbs=orbs)
    if not runs:
        return None
    runner = Runner(project, s.out, env, branch, decide, s.jobs, echo=echo)
    return LocalRun(workflow, runner.run(jobs), s.out)


def _run_setup(
    doc: dict,
    workflow: str | None,
    params: dict,
    s,
    project: Path,
    env: dict[str, str],
    branch: str,
    decide: Callable[[str], str | None],
    echo: Callable[[str], None],
    orbs: dict[str, dict],
) -> LocalRun | None:
    if workflow and workflow not in workflow_names(doc):
        raise ConfigError(
            f"{s.config} is a setup config; its workflows are {', '.join(workflow_names(doc))}",
            hint=f"run without a workflow for the whole pipeline, or {workflow} of the "
            "continuation config with --config (e.g. .circleci/continue.yml)",
        )
    names = [workflow] if workflow else workflow_names(doc)
    planned = [(name, *plan(doc, name, params, branch, orbs=orbs)) for name in names]
    running = [(name, jobs) for name, jobs, runs in planned if runs]
    if not running:
        return None
    if len(running) > 1:
        raise Unsupported(
            f"{s.config}: setup workflows {', '.join(n for n, _ in running)} would all run; "
            "locally one setup workflow continues the pipeline: name it"
        )
    ((name, jobs),) = running
    with Loopback(branch, triggered=params, orbs=orbs) as loop:
        echo(f"setup workflow {name}: {CONTINUATION_KEY_ENV} set, continuePipeline at {loop.url}")
        setup_env = {**env, CONTINUATION_KEY_ENV: loop.key, API_URL.env: loop.url}
        runner = Runner(project, s.out, setup_env, branch, decide, s.jobs, echo=echo)
        done = LocalRun(name, runner.run(jobs), s.out, setup=True)
    # The key expires with the setup workflow (the endpoint is closed); what it accepted runs.
    if loop.continuation is None or done._failed():
        return done
    done.continued = _run_continuation(
        loop.continuation, s, project, env, branch, decide, echo, orbs
    )
    return done


def _run_continuation(
    cont: Continuation,
    s,
    project: Path,
    env: dict[str, str],
    branch: str,
    decide: Callable[[str], str | None],
    echo: Callable[[str], None],
    orbs: dict[str, dict],
) -> Continued:
    if cont.ends_pipeline():
        echo("continued with a configuration that has no workflow: the pipeline ends")
        return Continued(cont.parameters, [], [], finished=True)
    doc = parse_config(cont.configuration, "the continued configuration")
    planned = [(n, *plan(doc, n, cont.parameters, branch, orbs=orbs)) for n in workflow_names(doc)]
    idle = [n for n, _, runs in planned if not runs]
    runs = []
    for name, jobs, go in planned:
        if not go:
            continue
        echo(f"continued workflow {name}")
        out = s.out / "continued" / name
        runner = Runner(project, out, env, branch, decide, s.jobs, echo=echo)
        runs.append(LocalRun(name, runner.run(jobs), out))
    return Continued(cont.parameters, runs, idle)
