"""A local stand-in for the CircleCI API v2 that answers only what CircleCI's OpenAPI allows.

The rule: the stand-in is never friendlier than CircleCI. Every request must match an
operation of ``shared/specs/circleci-api-v2.openapi.json`` that the stand-in implements, carry
the token (continuePipeline: a continuation key, as CircleCI's continuation orb sends), and
pass the spec's checks on its path parameters, query parameters and body (plus the rules the
spec states only in prose: branch and tag are mutually exclusive, parameter size limits).
Every answer, injected faults included, is validated strictly against the response schema of
its operation and status: a field the spec does not define, a wrong format (uuid, date-time)
or an undeclared status is a violation. Violations are collected in
``State.violations``; the ``api`` fixture fails the test if there are any.

What the tests need is here too: approval jobs that appear late, pagination, 429 with
Retry-After, 5xx, slow and lost answers, a broken body, a bad token, pipeline/run's 200
{"message"} when no pipeline is created, another trigger landing at the same moment. What
tests want to know that CircleCI does not say (the parameters a pipeline was triggered with)
is kept beside the answers, in ``State``, never in them.

Each handler names the operationId it follows.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml
from helpers import ROOT, SHARED
from jsonschema import Draft202012Validator, FormatChecker

SPEC_FILE = SHARED / "specs" / "circleci-api-v2.openapi.json"
SPEC: dict = json.loads(SPEC_FILE.read_text())
PREFIX = "/api/v2"
GOOD_TOKEN = "personal-token-123"
ME = {"id": "6e2d7c5a-3b1f-4f0e-9a8d-1c2b3a4d5e6f", "login": "me"}  # the token's user
SOMEONE_ELSE = "someone-else"

# Statuses any HTTP API answers whatever its document declares (rate limiting, proxies,
# outages). Their body must still be CircleCI's error shape: {"message": "..."}.
TRANSPORT_STATUSES = (429, 500, 502, 503, 504)
MESSAGE_SCHEMA = {
    "type": "object",
    "properties": {"message": {"type": "string"}},
    "required": ["message"],
    "unevaluatedProperties": False,
}

# Optional open maps whose keys the spec leaves undefined. Strictness cannot catch an invented
# key in them (any key is "allowed"), so the stand-in never sends them at all: a client that
# reads one would be reading what CircleCI never promised.
FORBIDDEN_IN_RESPONSES = {
    "trigger_parameters": "Pipeline.trigger_parameters is an open map with no defined keys",
}

# Spec gaps, allowed on purpose. listWorkflowJobs answers next_page_token but declares no
# page-token query parameter (#/paths/~1workflow~1{id}~1job/get/parameters); a client must
# send it to page, as for every other list.
EXTRA_QUERY = {"listWorkflowJobs": {"page-token": {"type": "string"}}}

# The spec's prose on parameters (TriggerPipelineParameters, pipelineRequest): "100 max
# entries, 128 maximum key length, 512 maximum value length".
MAX_PARAMETERS, MAX_KEY, MAX_VALUE = 100, 128, 512

# Keywords of OpenAPI 3.0 that are not JSON Schema (or that only annotate).
_OPENAPI_ONLY = {
    "example",
    "examples",
    "discriminator",
    "readOnly",
    "writeOnly",
    "xml",
    "externalDocs",
    "deprecated",
    "nullable",
}


# --------------------------------------------------------------------------------------------
# The spec as strict JSON Schema
# --------------------------------------------------------------------------------------------


def _deref(ref: str) -> Any:
    node: Any = SPEC
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def strict_schema(node: Any, seen: tuple[str, ...] = ()) -> Any:
    """An OpenAPI 3.0 schema as a strict JSON Schema 2020-12 one.

    ``$ref`` is resolved (a recursive one raises: a depth cut-off would quietly accept
    anything); ``nullable``/``x-nullable`` become ``null`` in ``type`` and in ``enum``; every
    object schema the spec leaves open (no ``additionalProperties``) gets
    ``unevaluatedProperties: false``, so a field the spec does not define is an error (not
    ``additionalProperties``, which would make each ``allOf``/``anyOf`` branch reject the
    other branches' fields). Maps the spec declares with ``additionalProperties`` stay maps.
    """
    if isinstance(node, list):
        return [strict_schema(v, seen) for v in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = node["$ref"]
        if ref in seen:
            raise RecursionError(f"recursive $ref {ref}")
        return strict_schema(_deref(ref), (*seen, ref))
    out: dict = {}
    for key, value in node.items():
        if key in _OPENAPI_ONLY or key.startswith("x-"):
            continue
        if key == "properties":  # property names are data, not keywords
            out[key] = {name: strict_schema(s, seen) for name, s in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[key] = strict_schema(value, seen)
        else:
            out[key] = value
    if node.get("nullable") or node.get("x-nullable"):
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    types = out.get("type")
    is_object = (
        types == "object" or "properties" in out or (isinstance(types, list) and "object" in types)
    )
    if is_object and "additionalProperties" not in out:
        out["unevaluatedProperties"] = False
    return out


def _schema_errors(validator: Draft202012Validator, doc: Any) -> Iterator[str]:
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        detail = err.message
        if err.context:  # anyOf/oneOf: say how each alternative failed
            detail += " (" + " | ".join(dict.fromkeys(e.message for e in err.context)) + ")"
        yield f"{err.json_path}: {detail}"


@cache
def _validator(schema_json: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(schema_json), format_checker=FormatChecker())


def check(schema: dict, doc: Any) -> list[str]:
    """Every way ``doc`` breaks ``schema`` (formats included), as ``$.json.path: message``."""
    return list(_schema_errors(_validator(json.dumps(schema, sort_keys=True)), doc))


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


@dataclass(frozen=True)
class Operation:
    """One operation of the spec: how to match it and what it accepts and answers."""

    operation_id: str
    method: str
    path: str
    regex: re.Pattern
    spec: dict
    parameters: tuple[dict, ...]

    @property
    def specificity(self) -> int:
        """Literal characters of the path: a literal segment beats a template (OpenAPI)."""
        return len(re.sub(r"\{[^}]+\}", "", self.path))

    def response_schema(self, status: int) -> tuple[dict | None, str]:
        """The strict schema an answer with ``status`` must follow, and where it comes from.

        A declared status uses its own schema; 429 and 5xx that the operation does not declare
        use CircleCI's error shape; any other undeclared error uses ``default``. ``None``: the
        status is not one this operation can answer.
        """
        responses = self.spec.get("responses", {})
        if str(status) in responses:
            key = str(status)
        elif status in TRANSPORT_STATUSES:
            return MESSAGE_SCHEMA, f"transport status {status}: {{message}}"
        elif status >= 400 and "default" in responses:
            key = "default"
        else:
            return None, f"{self.operation_id} declares no {status} and no default"
        where = _pointer("paths", self.path, self.method.lower(), "responses", key)
        response = responses[key]
        if "$ref" in response:
            where += " -> " + response["$ref"]
            response = _deref(response["$ref"])
        schema = response.get("content", {}).get("application/json", {}).get("schema")
        return (strict_schema(schema) if schema is not None else None), where

    def request_schema(self) -> tuple[dict | None, bool]:
        """The strict body schema (None: no body) and whether a body must be sent.

        The spec seldom marks a body ``required``; a body whose schema has required fields
        (and is not nullable) cannot be left out, so it is required here too.
        """
        body = self.spec.get("requestBody")
        if not body:
            return None, False
        raw = body.get("content", {}).get("application/json", {}).get("schema")
        if raw is None:
            return None, False
        if "$ref" in raw:
            raw = _deref(raw["$ref"])
        needed = bool(body.get("required")) or (
            bool(raw.get("required")) and not (raw.get("nullable") or raw.get("x-nullable"))
        )
        return strict_schema(raw), needed


def _route_regex(path: str) -> re.Pattern:
    # {project-slug} is vcs/org/repo as three segments; one %2F-escaped segment is refused
    # (the spec allows it; docs/circleci.md does not, and the client must not rely on it).
    pattern = path.replace("{project-slug}", "(?P<project_slug>[^/]+/[^/]+/[^/]+)")
    pattern = re.sub(r"\{([^}]+)\}", lambda m: f"(?P<{_group(m.group(1))}>[^/]+)", pattern)
    return re.compile(f"^{pattern}$")


def _group(name: str) -> str:
    return name.replace("-", "_")


def _operations() -> list[Operation]:
    ops = []
    for path, item in SPEC["paths"].items():
        shared = item.get("parameters", [])
        for method, op in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            params = tuple(
                _deref(p["$ref"]) if "$ref" in p else p
                for p in [*shared, *op.get("parameters", [])]
            )
            ops.append(
                Operation(op["operationId"], method.upper(), path, _route_regex(path), op, params)
            )
    return ops


OPERATIONS = _operations()
BY_ID = {op.operation_id: op for op in OPERATIONS}


def match(method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
    """The operation ``method path`` (under the API base) calls, and its path arguments."""
    found = [
        (op, m.groupdict())
        for op in OPERATIONS
        if op.method == method and (m := op.regex.match(path))
    ]
    if not found:
        return None
    return max(found, key=lambda f: f[0].specificity)


def response_problems(operation_id: str, status: int, body: Any) -> list[str]:
    """Every way an answer breaks the spec (status, schema, forbidden open maps)."""
    op = BY_ID[operation_id]
    schema, where = op.response_schema(status)
    head = f"{operation_id} answer {status}"
    if schema is None:
        return [f"{head}: status not declared ({where})"]
    problems = [f"{head} {msg} [{where}]" for msg in check(schema, body)]
    problems += [
        f"{head} {path}: {why}; the stand-in must not send it"
        for path, why in _forbidden(body, "$")
    ]
    return problems


def _forbidden(doc: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in FORBIDDEN_IN_RESPONSES:
                yield f"{path}.{key}", FORBIDDEN_IN_RESPONSES[key]
            yield from _forbidden(value, f"{path}.{key}")
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _forbidden(value, f"{path}[{i}]")


# --------------------------------------------------------------------------------------------
# Request checks
# --------------------------------------------------------------------------------------------


def request_problems(
    op: Operation, args: dict[str, str], query: dict[str, list[str]], body: Any, has_body: bool
) -> list[str]:
    """Every way a request breaks the spec: path and query parameters, body, prose rules."""
    problems = []
    declared = {}
    for p in op.parameters:
        if p["in"] == "path":
            value = unquote(args.get(_group(p["name"]), ""))
            problems += [f"path {p['name']}={value!r}: {e}" for e in check(_param(p), value)]
        elif p["in"] == "query":
            declared[p["name"]] = p
    allowed = {
        **{n: _param(p) for n, p in declared.items()},
        **EXTRA_QUERY.get(op.operation_id, {}),
    }
    for name, values in query.items():
        if name not in allowed:
            problems.append(f"query {name!r} is not a parameter of {op.operation_id}")
        elif len(values) > 1:
            problems.append(f"query {name!r} given {len(values)} times")
        else:  # the implemented operations' query parameters are all strings
            problems += [f"query {name}: {e}" for e in check(allowed[name], values[0])]
    problems += [
        f"query {n!r} is required"
        for n, p in declared.items()
        if p.get("required") and n not in query
    ]
    schema, needed = op.request_schema()
    if schema is None and has_body:
        problems.append(f"{op.operation_id} takes no body")
    elif schema is not None and not has_body and needed:
        problems.append(f"{op.operation_id} needs a body")
    elif schema is not None and has_body:
        body_errors = check(schema, body)
        problems += [f"body {e}" for e in body_errors]
        if not body_errors and op.operation_id in PROSE_RULES:
            problems += [f"body: {e}" for e in PROSE_RULES[op.operation_id](body)]
    return problems


def _param(p: dict) -> dict:
    return strict_schema(p.get("schema", {}))


def _exclusive_ref(ref: dict | None, where: str) -> list[str]:
    if ref and "branch" in ref and "tag" in ref:
        return [f"{where}branch and tag are mutually exclusive"]
    return []


def _parameter_limits(parameters: dict | None) -> list[str]:
    parameters = parameters or {}
    problems = []
    if len(parameters) > MAX_PARAMETERS:
        problems.append(f"{len(parameters)} parameters; at most {MAX_PARAMETERS}")
    for key, value in parameters.items():
        if len(key) > MAX_KEY:
            problems.append(f"parameter key {key[:20]!r}... is {len(key)} characters (> {MAX_KEY})")
        if isinstance(value, str) and len(value) > MAX_VALUE:
            problems.append(f"parameter {key!r} is {len(value)} characters (> {MAX_VALUE})")
    return problems


def _trigger_rules(body: dict | None) -> list[str]:
    """triggerPipeline's prose: branch/tag exclusive; parameter size limits."""
    body = body or {}
    return _exclusive_ref(body, "") + _parameter_limits(body.get("parameters"))


def _run_rules(body: dict) -> list[str]:
    """triggerPipelineRun's prose: branch/tag exclusive in config and checkout; size limits."""
    return (
        _exclusive_ref(body.get("config"), "config: ")
        + _exclusive_ref(body.get("checkout"), "checkout: ")
        + _parameter_limits(body.get("parameters"))
    )


def _schedule_rules(body: dict) -> list[str]:
    """createSchedule's prose: parameters hold branch or tag; timetable ranges; days of week
    and days of month are mutually exclusive."""
    problems = []
    params, table = body["parameters"], body["timetable"]
    if "branch" not in params and "tag" not in params:
        problems.append("parameters must contain branch or tag")
    if "days-of-week" in table and "days-of-month" in table:
        problems.append("days-of-week and days-of-month are mutually exclusive")
    if not 1 <= table["per-hour"] <= 60:
        problems.append(f"per-hour {table['per-hour']} is not between 1 and 60")
    problems += [
        f"hour {h} is not between 0 and 24" for h in table["hours-of-day"] if not 0 <= h <= 24
    ]
    problems += [
        f"day {d} is not between 1 and 31"
        for d in table.get("days-of-month", [])
        if not 1 <= d <= 31
    ]
    return problems


def _continue_rules(body: dict) -> list[str]:
    """continuePipeline's prose: the parameter size limits."""
    return _parameter_limits(body.get("parameters"))


PROSE_RULES: dict[str, Callable[[Any], list[str]]] = {
    "continuePipeline": _continue_rules,
    "triggerPipeline": _trigger_rules,
    "triggerPipelineRun": _run_rules,
    "createSchedule": _schedule_rules,
}


# --------------------------------------------------------------------------------------------
# State and the spec-shaped things in it
# --------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _declared_parameters() -> frozenset[str]:
    """The pipeline parameters the project's config declares (an undeclared one errors)."""
    doc = yaml.safe_load((ROOT / ".circleci" / "config.yml").read_text())
    return frozenset(doc.get("parameters") or {})


@dataclass
class State:
    """What the stand-in knows and how it misbehaves; tests read and tweak it.

    Fault knobs count down one per request they hit; ``faults_for`` limits them to one
    operationId (None: any).
    """

    pipelines: dict = field(default_factory=dict)
    workflows: dict = field(default_factory=dict)
    jobs: dict = field(default_factory=dict)  # workflow id -> its jobs
    schedules: dict = field(default_factory=dict)
    # Not in any answer (the spec gives no way to read them back): for test assertions only.
    pipeline_params: dict = field(default_factory=dict)  # pipeline id -> POSTed parameters
    declared_parameters: frozenset = field(default_factory=_declared_parameters)
    requests: list = field(default_factory=list)
    violations: list = field(default_factory=list)
    approved: list = field(default_factory=list)
    canceled_jobs: list = field(default_factory=list)
    canceled_workflows: list = field(default_factory=list)
    # A workflow cancel takes effect after this many more requests (CircleCI answers 202
    # Accepted; the workflow reads canceled a moment later).
    cancel_delay_requests: int = 1
    pending_cancels: dict = field(default_factory=dict)  # workflow id -> requests left
    approval_after_polls: int = 0  # the approval job shows up after this many job listings
    job_polls: int = 0
    page_size: int = 2
    run_message: str | None = None  # pipeline/run answers 200 {"message"} when set
    # Pipelines triggered through the API at the same moment as the next trigger, each a dict
    # of create_pipeline arguments (login, branch, tag) that default to that trigger's.
    concurrent_triggers: list = field(default_factory=list)
    faults_for: str | None = None
    throttle: int = 0  # answer 429 (with Retry-After) to this many requests first
    retry_after: str = "0"
    errors: int = 0  # answer this many requests with error_status (and Retry-After: 0) first
    error_status: int = 503
    malformed: int = 0  # answer this many requests with a broken JSON body
    slow: int = 0  # answer this many requests only after slow_seconds (after doing the work)
    slow_seconds: float = 0.0
    bad_gateway_after_work: int = 0  # do this many requests' work, then answer 502
    # Setup pipelines' continuation keys (CircleCI hands one to the setup workflow's jobs as
    # CIRCLE_CONTINUATION_KEY; no answer carries it): key -> {pipeline_id, state}, state
    # open | used | expired. What continuePipeline accepted: pipeline id -> {configuration,
    # parameters}, for assertions.
    continuation_keys: dict = field(default_factory=dict)
    continued: dict = field(default_factory=dict)

    def take(self, knob: str, operation_id: str) -> bool:
        """Spend one of fault ``knob`` on this request if it has any left and applies."""
        if getattr(self, knob) > 0 and self.faults_for in (None, operation_id):
            setattr(self, knob, getattr(self, knob) - 1)
            return True
        return False

    def create_pipeline(
        self,
        slug: str,
        branch: str | None = None,
        tag: str | None = None,
        parameters: dict | None = None,
        login: str = ME["login"],
    ) -> dict:
        """A pipeline as triggerPipeline/triggerPipelineRun make it, with its workflow."""
        params = dict(parameters or {})
        number = 1 + sum(1 for p in self.pipelines.values() if p["project_slug"] == slug)
        now = _now()
        vcs = {
            "provider_name": "GitHub",
            "origin_repository_url": "https://github.com/acme/models",
            "target_repository_url": "https://github.com/acme/models",
            "revision": "9f3a1c0e5d2b4a6f8e7d6c5b4a3f2e1d0c9b8a7f",
        }
        vcs.update({"tag": tag} if tag else {"branch": branch or "main"})
        undeclared = sorted(set(params) - self.declared_parameters)
        p = {
            "id": str(uuid.uuid4()),
            "number": number,
            "state": "errored" if undeclared else "created",
            "created_at": now,
            "updated_at": now,
            "project_slug": slug,
            # As CircleCI fails a pipeline whose trigger sets an undeclared parameter.
            "errors": (
                [{"type": "config", "message": f"Unexpected argument(s): {', '.join(undeclared)}"}]
                if undeclared
                else []
            ),
            "trigger": {
                "type": "api",
                "received_at": now,
                "actor": {"login": login, "avatar_url": None},
            },
            "vcs": vcs,
        }
        self.pipelines[p["id"]] = p
        self.pipeline_params[p["id"]] = params
        if not undeclared:
            self._start_workflow(p, retrain=bool(params.get("retrain")))
        return p

    def _start_workflow(self, p: dict, retrain: bool) -> None:
        wid, slug = str(uuid.uuid4()), p["project_slug"]
        self.workflows[wid] = {
            "id": wid,
            "name": "retrain-deploy" if retrain else "build-deploy",
            "pipeline_id": p["id"],
            "pipeline_number": p["number"],
            "project_slug": slug,
            "status": "on_hold" if retrain else "running",
            "started_by": ME["id"],
            "created_at": _now(),
            "stopped_at": None,
        }
        jobs = [
            {
                "id": str(uuid.uuid4()),
                "name": name,
                "type": "build",
                "status": "success",
                "dependencies": [],
                "project_slug": slug,
                "job_number": i + 1,
                "started_at": _now(),
                "stopped_at": _now(),
            }
            for i, name in enumerate(["build", "retrain", "test"])
        ]
        if retrain:
            hold = str(uuid.uuid4())
            jobs.append(
                {
                    "id": hold,
                    "name": "hold",
                    "type": "approval",
                    "status": "on_hold",
                    "approval_request_id": hold,
                    "dependencies": [jobs[-1]["id"]],
                    "project_slug": slug,
                    "started_at": _now(),  # required, not nullable, in the spec
                }
            )
        self.jobs[wid] = jobs

    def continuation_key(self, pipeline_id: str) -> str:
        """A continuation key for a (setup) pipeline, as its setup jobs would get it."""
        key = str(uuid.uuid4())
        self.continuation_keys[key] = {"pipeline_id": pipeline_id, "state": "open"}
        return key

    def create_schedule(self, slug: str, body: dict) -> dict:
        """A schedule as createSchedule makes it."""
        now = _now()
        s = {
            "id": str(uuid.uuid4()),
            "name": body["name"],
            "description": body.get("description"),
            "project-slug": slug,
            "timetable": body["timetable"],
            "parameters": body["parameters"],
            "actor": {
                "id": str(uuid.uuid4()),
                "login": "system",
                "name": "system",
                "avatar_url": None,
            },
            "created-at": now,
            "updated-at": now,
        }
        self.schedules[s["id"]] = s
        return s

    def settle(self) -> None:
        """Apply workflow cancels whose delay is over (called once per request)."""
        for wid, left in list(self.pending_cancels.items()):
            if left > 0:
                self.pending_cancels[wid] = left - 1
                continue
            del self.pending_cancels[wid]
            w = self.workflows[wid]
            w.update(status="canceled", stopped_at=_now(), canceled_by=ME["id"])
            for job in self.jobs.get(wid, []):
                if job["status"] in ACTIVE_JOB_STATUSES:
                    job.update(status="canceled", canceled_by=ME["id"], stopped_at=_now())


ACTIVE_JOB_STATUSES = {"on_hold", "blocked", "queued", "running", "not_running"}
RUNNING_WORKFLOW_STATUSES = {"running", "on_hold", "failing"}


def creation_answer(p: dict) -> dict:
    """triggerPipeline's 201 body (PipelineCreation) for a stored pipeline."""
    return {k: p[k] for k in ("id", "state", "number", "created_at")}


# --------------------------------------------------------------------------------------------
# Operations (one handler per operationId)
# --------------------------------------------------------------------------------------------


@dataclass
class Call:
    """One request, checked: its path arguments, query and body."""

    state: State
    args: dict[str, str]
    query: dict[str, str]
    body: Any

    @property
    def slug(self) -> str:
        if "project_slug" in self.args:
            return self.args["project_slug"]
        return "/".join(self.args[k] for k in ("provider", "organization", "project"))

    def page(self, items: list) -> dict:
        """One page of ``items``; page tokens are offsets, opaque to the client."""
        size = self.state.page_size
        start = int(self.query.get("page-token") or 0)
        nxt = start + size if start + size < len(items) else None
        return {"items": items[start : start + size], "next_page_token": str(nxt) if nxt else None}


Answer = tuple[int, dict]
HANDLERS: dict[str, Callable[[Call], Answer]] = {}


def operation(operation_id: str) -> Callable:
    """Register a handler for ``operation_id`` (which must be in the spec)."""
    if operation_id not in BY_ID:
        raise KeyError(f"{operation_id} is not an operationId of the spec")

    def register(fn: Callable[[Call], Answer]) -> Callable[[Call], Answer]:
        HANDLERS[operation_id] = fn
        return fn

    return register


def _trigger(call: Call, branch: str | None, tag: str | None, params: dict | None) -> dict:
    st = call.state
    ours = st.create_pipeline(call.slug, branch, tag, params)
    for other in st.concurrent_triggers:  # another trigger landing at the same moment
        ref = {"branch": other.get("branch"), "tag": other.get("tag")}
        if not any(ref.values()):
            ref = {"branch": branch, "tag": tag}
        st.create_pipeline(
            call.slug, **ref, parameters=params, login=other.get("login", ME["login"])
        )
    st.concurrent_triggers = []
    return ours


@operation("triggerPipeline")
def trigger_pipeline(call: Call) -> Answer:
    """POST /project/{project-slug}/pipeline -> 201 PipelineCreation."""
    body = call.body or {}
    p = _trigger(call, body.get("branch"), body.get("tag"), body.get("parameters"))
    return 201, creation_answer(p)


@operation("triggerPipelineRun")
def trigger_pipeline_run(call: Call) -> Answer:
    """POST /project/{provider}/{organization}/{project}/pipeline/run -> 201 pipeline, or 200
    pipelineNotTriggeredResponse when no pipeline is created."""
    if call.state.run_message:
        return 200, {"message": call.state.run_message}
    body = call.body or {}
    ref = body.get("config") or {}
    p = _trigger(call, ref.get("branch"), ref.get("tag"), body.get("parameters"))
    return 201, creation_answer(p)


def _newest_first(pipelines: list[dict]) -> list[dict]:
    return sorted(pipelines, key=lambda p: p["number"], reverse=True)


@operation("listPipelinesForProject")
def list_pipelines(call: Call) -> Answer:
    """GET /project/{project-slug}/pipeline[?branch=] -> 200 PipelineListResponse."""
    branch = call.query.get("branch")
    items = [
        p
        for p in call.state.pipelines.values()
        if p["project_slug"] == call.slug and (branch is None or p["vcs"].get("branch") == branch)
    ]
    return 200, call.page(_newest_first(items))


@operation("listMyPipelines")
def list_my_pipelines(call: Call) -> Answer:
    """GET /project/{project-slug}/pipeline/mine -> 200 PipelineListResponse: the project's
    pipelines triggered by the token's user."""
    items = [
        p
        for p in call.state.pipelines.values()
        if p["project_slug"] == call.slug and p["trigger"]["actor"]["login"] == ME["login"]
    ]
    return 200, call.page(_newest_first(items))


@operation("getPipelineById")
def get_pipeline(call: Call) -> Answer:
    """GET /pipeline/{pipeline-id} -> 200 Pipeline, 404 (default) if unknown."""
    p = call.state.pipelines.get(call.args["pipeline_id"])
    return (200, p) if p else (404, {"message": "Pipeline not found"})


@operation("listWorkflowsByPipelineId")
def list_workflows(call: Call) -> Answer:
    """GET /pipeline/{pipeline-id}/workflow -> 200 WorkflowListResponse, 404 if unknown."""
    pid = call.args["pipeline_id"]
    if pid not in call.state.pipelines:
        return 404, {"message": "Pipeline not found"}
    return 200, call.page([w for w in call.state.workflows.values() if w["pipeline_id"] == pid])


@operation("getWorkflowById")
def get_workflow(call: Call) -> Answer:
    """GET /workflow/{id} -> 200 Workflow, 404 (default) if unknown."""
    w = call.state.workflows.get(call.args["id"])
    return (200, w) if w else (404, {"message": "Workflow not found"})


@operation("listWorkflowJobs")
def list_jobs(call: Call) -> Answer:
    """GET /workflow/{id}/job -> 200 WorkflowJobListResponse; approval jobs can show late."""
    st = call.state
    if call.args["id"] not in st.workflows:
        return 404, {"message": "Workflow not found"}
    st.job_polls += 1
    jobs = [
        j
        for j in st.jobs.get(call.args["id"], [])
        if j["type"] != "approval" or st.job_polls > st.approval_after_polls
    ]
    return 200, call.page(jobs)


@operation("approvePendingApprovalJobById")
def approve(call: Call) -> Answer:
    """POST /workflow/{id}/approve/{approval_request_id} -> 202 MessageResponse."""
    st, wid = call.state, call.args["id"]
    job = next(
        (
            j
            for j in st.jobs.get(wid, [])
            if j.get("approval_request_id") == call.args["approval_request_id"]
        ),
        None,
    )
    if job is None or job["status"] != "on_hold":
        return 404, {"message": "Approval request not found"}
    job["status"] = "success"
    st.approved.append(job["id"])
    if not any(j["status"] == "on_hold" for j in st.jobs[wid]):
        st.workflows[wid]["status"] = "running"
    return 202, {"message": "Accepted."}


@operation("cancelWorkflow")
def cancel_workflow(call: Call) -> Answer:
    """POST /workflow/{id}/cancel -> 202 MessageResponse ("Cancels a running workflow").

    The workflow reads canceled after ``cancel_delay_requests`` more requests. A workflow
    that is not running (on_hold and failing count as running) gets 400: the spec does not
    say what CircleCI answers then, and an error is the less friendly assumption.
    """
    st, wid = call.state, call.args["id"]
    w = st.workflows.get(wid)
    if w is None:
        return 404, {"message": "Workflow not found"}
    if wid not in st.pending_cancels and w["status"] not in RUNNING_WORKFLOW_STATUSES:
        return 400, {"message": f"Workflow is {w['status']}, not running."}
    st.pending_cancels.setdefault(wid, st.cancel_delay_requests)
    st.canceled_workflows.append(wid)
    return 202, {"message": "Accepted."}


@operation("cancelJobByJobID")
def cancel_job(call: Call) -> Answer:
    """POST /jobs/{job-id}/cancel -> 200 MessageResponse, 404 if unknown."""
    st, jid = call.state, call.args["job_id"]
    job = next((j for jobs in st.jobs.values() for j in jobs if j["id"] == jid), None)
    if job is None:
        return 404, {"message": "Job not found"}
    if job["status"] in ACTIVE_JOB_STATUSES:
        job.update(status="canceled", canceled_by=ME["id"], stopped_at=_now())
    st.canceled_jobs.append(jid)
    return 200, {"message": "Job cancelled successfully."}


# The continuation key is the credential of continuePipeline (CircleCI's continuation orb
# sends no token); every other operation needs the token.
KEY_AUTHORISED = {"continuePipeline"}
CONFIG_TYPES = {"boolean": bool, "integer": int, "string": str, "enum": str}


def _continuation_problem(configuration: str, parameters: dict) -> str | None:
    """Why CircleCI would not compile this continuation, as far as these checks go: YAML, a
    config version, not a setup config, every parameter (the trigger's included) declared
    and of its declared type."""
    try:
        doc = yaml.safe_load(configuration)
    except yaml.YAMLError:
        return "configuration is not valid YAML"
    if not isinstance(doc, dict) or str(doc.get("version")) not in ("2", "2.1"):
        return "configuration has no config version"
    if doc.get("setup") is True:
        return "a continuation configuration cannot be a setup configuration"
    declared = doc.get("parameters") or {}
    undeclared = sorted(set(parameters) - set(declared))
    if undeclared:
        return f"Unexpected argument(s): {', '.join(undeclared)}"
    for name, value in parameters.items():
        decl = declared[name] if isinstance(declared[name], dict) else {}
        want = CONFIG_TYPES.get(decl.get("type", "string"), str)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            return f"parameter {name}: {value!r} is not a {decl.get('type', 'string')}"
        if decl.get("type") == "enum" and value not in (decl.get("enum") or []):
            return f"parameter {name}: {value!r} is not one of {decl.get('enum')}"
    return None


@operation("continuePipeline")
def continue_pipeline(call: Call) -> Answer:
    """POST /pipeline/continue -> 200 MessageResponse; errors are the spec's default
    {message}: 401 a key that is no pipeline's, 409 a key used or expired (single use), 400
    a configuration that does not compile (undeclared or mistyped parameters included) or
    parameters the pipeline was triggered with sent again (CircleCI's dynamic-config docs:
    the trigger's parameters carry into the continuation and may not be resubmitted)."""
    st, body = call.state, call.body
    entry = st.continuation_keys.get(body["continuation-key"])
    if entry is None:
        return 401, {"message": "Invalid continuation key."}
    if entry["state"] == "used":
        return 409, {"message": "Continuation key has already been used."}
    if entry["state"] == "expired":
        return 409, {"message": "Continuation key has expired. Please run a new pipeline."}
    sent = body.get("parameters") or {}
    triggered = st.pipeline_params.get(entry["pipeline_id"], {})
    if set(sent) & set(triggered):
        return 400, {"message": "Conflicting pipeline parameters."}
    params = {**triggered, **sent}
    problem = _continuation_problem(body["configuration"], params)
    if problem:
        return 400, {"message": f"config compilation failed: {problem}"}
    entry["state"] = "used"
    st.continued[entry["pipeline_id"]] = {  # as sent (the trigger's are in pipeline_params)
        "configuration": body["configuration"],
        "parameters": sent,
    }
    return 200, {"message": "Pipeline continued."}


@operation("createSchedule")
def create_schedule(call: Call) -> Answer:
    """POST /project/{project-slug}/schedule -> 201 Schedule."""
    return 201, call.state.create_schedule(call.slug, call.body)


@operation("listSchedulesForProject")
def list_schedules(call: Call) -> Answer:
    """GET /project/{project-slug}/schedule -> 200 {items: Schedule[], next_page_token}."""
    items = [s for s in call.state.schedules.values() if s["project-slug"] == call.slug]
    return 200, call.page(items)


@operation("deleteScheduleById")
def delete_schedule(call: Call) -> Answer:
    """DELETE /schedule/{schedule-id} -> 200 MessageResponse, 404 (default) if unknown."""
    if call.state.schedules.pop(call.args["schedule_id"], None) is None:
        return 404, {"message": "Schedule not found"}
    return 200, {"message": "Schedule deleted."}


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    server_version = "circleci-standin"

    def log_message(self, *a) -> None:
        pass

    @property
    def state(self) -> State:
        return self.server.state

    def _send(self, status: int, body: dict, op: Operation | None, headers=None) -> None:
        """Validate the answer against the spec (a problem is a violation), then send it.

        Every answer goes through here except the malformed-body fault (``_send_broken``).
        """
        if op is None:  # no such operation: already a violation; still CircleCI's error shape
            problems = [f"$: {e}" for e in check(MESSAGE_SCHEMA, body)]
        else:
            problems = response_problems(op.operation_id, status, body)
        self.state.violations += problems
        self._write(status, json.dumps(body).encode(), headers)

    def _send_broken(self) -> None:
        # The one answer not validated, on purpose: the malformed-body fault.
        self._write(200, b'{"items": [', None)

    def _write(self, status: int, data: bytes, headers: dict | None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (the timeout tests)

    def _handle(self, method: str) -> None:
        st = self.state
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        found = match(method, url.path[len(PREFIX) :]) if url.path.startswith(PREFIX) else None
        op, args = found if found else (None, {})
        with self.server.lock:
            st.settle()
            st.requests.append(
                {
                    "method": method,
                    "path": url.path,
                    "operation": op.operation_id if op else None,
                    "body": raw.decode() or None,
                    "token": self.headers.get("Circle-Token"),
                }
            )
        if op is None:
            st.violations.append(f"{method} {url.path}: no operation of the OpenAPI document")
            return self._send(404, {"message": "Not found"}, None)
        if op.operation_id not in HANDLERS:
            st.violations.append(f"{op.operation_id}: in the spec, not in the stand-in")
            return self._send(404, {"message": "Not found"}, op)
        token_ok = self.headers.get("Circle-Token") == GOOD_TOKEN
        if not token_ok and op.operation_id not in KEY_AUTHORISED:  # auth before the body
            return self._send(401, {"message": "Invalid token provided."}, op)
        body, problems = None, []
        if raw:
            if self.headers.get("Content-Type", "").split(";")[0] != "application/json":
                problems.append("a body needs Content-Type: application/json")
            try:
                body = json.loads(raw)
            except ValueError:
                problems.append("body is not JSON")
        query = parse_qs(url.query, keep_blank_values=True)
        problems = problems or request_problems(op, args, query, body, bool(raw))
        if problems:
            st.violations += [f"{op.operation_id} request: {p}" for p in problems]
            return self._send(400, {"message": problems[0]}, op)
        self._answer(op, Call(st, args, {k: v[0] for k, v in query.items()}, body))

    def _answer(self, op: Operation, call: Call) -> None:
        st, opid = self.state, op.operation_id
        if st.take("throttle", opid):
            return self._send(
                429, {"message": "Too many requests"}, op, {"Retry-After": st.retry_after}
            )
        if st.take("errors", opid):
            return self._send(
                st.error_status, {"message": "injected server error"}, op, {"Retry-After": "0"}
            )
        if st.take("malformed", opid):
            return self._send_broken()
        with self.server.lock:
            status, out = HANDLERS[opid](call)
        if st.take("bad_gateway_after_work", opid):  # a proxy that lost the origin's answer
            return self._send(502, {"message": "Bad Gateway"}, op, {"Retry-After": "0"})
        if st.take("slow", opid):  # the work is done; the answer comes too late for the client
            self.server.closing.wait(st.slow_seconds)
        return self._send(status, out, op)

    def do_GET(self):  # noqa: N802
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")

    def do_DELETE(self):  # noqa: N802
        self._handle("DELETE")

    def do_PUT(self):  # noqa: N802
        self._handle("PUT")

    def do_PATCH(self):  # noqa: N802
        self._handle("PATCH")


class StandIn:
    """Start/stop the stand-in; ``url`` is its API base."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.state = State()
        self.server.lock = threading.Lock()
        self.server.closing = threading.Event()  # ends the slow answers' waits
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def state(self) -> State:
        return self.server.state

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{PREFIX}"

    def close(self) -> None:
        self.server.closing.set()
        self.server.shutdown()
        self.server.server_close()
