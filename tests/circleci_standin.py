"""A local stand-in for the CircleCI API v2, checked against CircleCI's OpenAPI document.

Every request must match a path and method of the spec, carry a Circle-Token, and (if it has
one) a body valid against the spec's request schema; every answer the stand-in gives is
validated against the spec's response schema for its status. Behaviours the tests need:
approval jobs that appear late, pagination, 429 with Retry-After, bad tokens, pipeline/run's
200 {"message"} when no pipeline is created.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import jsonschema
from helpers import SHARED

SPEC = json.loads((SHARED / "specs" / "circleci-api-v2.openapi.json").read_text())
PREFIX = "/api/v2"
GOOD_TOKEN = "personal-token-123"


def _inline(obj, depth: int = 0):
    if depth > 30:
        return {}
    if isinstance(obj, dict):
        if "$ref" in obj:
            node = SPEC
            for part in obj["$ref"].lstrip("#/").split("/"):
                node = node[part]
            return _inline(node, depth + 1)
        out = {k: _inline(v, depth + 1) for k, v in obj.items() if k != "example"}
        nullable = out.pop("nullable", False) or out.pop("x-nullable", False)
        if nullable and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]  # OpenAPI's (x-)nullable in JSON Schema terms
        return out
    if isinstance(obj, list):
        return [_inline(v, depth + 1) for v in obj]
    return obj


def _route_regex(path: str) -> re.Pattern:
    pattern = re.sub(r"\{project-slug\}", r"(?P<slug>[^/]+/[^/]+/[^/]+)", path)
    pattern = re.sub(
        r"\{([^}]+)\}", lambda m: f"(?P<{m.group(1).replace('-', '_')}>[^/]+)", pattern
    )
    return re.compile(f"^{pattern}$")


ROUTES = [
    (_route_regex(p), p, m.upper(), op)
    for p, ops in SPEC["paths"].items()
    for m, op in ops.items()
    if m in ("get", "post", "put", "patch", "delete")
]


def request_schema(op: dict) -> dict | None:
    body = op.get("requestBody")
    if not body:
        return None
    body = _inline(body)
    return body.get("content", {}).get("application/json", {}).get("schema")


def response_schema(op: dict, status: int) -> dict | None:
    responses = op.get("responses", {})
    r = responses.get(str(status)) or responses.get("default")
    if not r:
        return None
    r = _inline(r)
    return r.get("content", {}).get("application/json", {}).get("schema")


@dataclass
class State:
    """What the stand-in knows; tests tweak it."""

    pipelines: dict = field(default_factory=dict)
    workflows: dict = field(default_factory=dict)
    jobs: dict = field(default_factory=dict)
    schedules: dict = field(default_factory=dict)
    requests: list = field(default_factory=list)
    violations: list = field(default_factory=list)
    approval_after_polls: int = 0  # the approval job shows up after this many job listings
    throttle: int = 0  # answer 429 to this many requests first
    retry_after: str = "0"
    page_size: int = 2
    run_message: str | None = None  # pipeline/run answers 200 {"message"} when set
    malformed: int = 0  # answer this many requests with a broken JSON body
    errors: int = 0  # answer this many requests with error_status (and Retry-After: 0) first
    error_status: int = 503
    slow: int = 0  # answer this many requests only after slow_seconds (after doing the work)
    slow_seconds: float = 0.0
    bad_gateway_after_work: int = 0  # do this many requests' work, then answer 502
    job_polls: int = 0
    approved: list = field(default_factory=list)
    canceled: list = field(default_factory=list)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Handler(BaseHTTPRequestHandler):
    server_version = "circleci-standin"

    def log_message(self, *a) -> None:
        pass

    def _send(self, status: int, body: dict | None, op: dict | None, headers=None) -> None:
        if op is not None and body is not None:
            schema = response_schema(op, status)
            if schema:
                try:
                    jsonschema.validate(body, schema)
                except jsonschema.ValidationError as exc:
                    self.server.state.violations.append(f"response {status}: {exc.message}")
        data = json.dumps(body).encode() if body is not None else b""
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
        st: State = self.server.state
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        st.requests.append(
            {
                "method": method,
                "path": url.path,
                "body": raw.decode() or None,
                "token": self.headers.get("Circle-Token"),
            }
        )
        if not url.path.startswith(PREFIX):
            return self._send(404, {"message": "Not found"}, None)
        path = url.path[len(PREFIX) :]
        match = next(
            ((m, p, op) for rx, p, meth, op in ROUTES if meth == method and (m := rx.match(path))),
            None,
        )
        if match is None:
            st.violations.append(f"{method} {path}: not in the OpenAPI document")
            return self._send(404, {"message": "Not found"}, None)
        m, spec_path, op = match
        body = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                st.violations.append(f"{method} {path}: body is not JSON")
                return self._send(400, {"message": "bad json"}, op)
            schema = request_schema(op)
            if schema:
                try:
                    jsonschema.validate(body, schema)
                except jsonschema.ValidationError as exc:
                    st.violations.append(f"{method} {spec_path}: {exc.message}")
                    return self._send(400, {"message": exc.message}, op)
        if self.headers.get("Circle-Token") != GOOD_TOKEN:
            return self._send(401, {"message": "Invalid token provided."}, op)
        if st.throttle > 0:
            st.throttle -= 1
            return self._send(
                429, {"message": "Too many requests"}, op, {"Retry-After": st.retry_after}
            )
        if st.errors > 0:
            st.errors -= 1
            return self._send(
                st.error_status, {"message": "injected server error"}, None, {"Retry-After": "0"}
            )
        if st.malformed > 0:
            st.malformed -= 1
            data = b'{"items": ['
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return None
        params = {k: v[0] for k, v in parse_qs(url.query).items()}
        status, out = self.route(method, spec_path, m.groupdict(), body or {}, params)
        if st.bad_gateway_after_work > 0:  # as a proxy that lost the origin's answer
            st.bad_gateway_after_work -= 1
            return self._send(502, {"message": "Bad Gateway"}, None, {"Retry-After": "0"})
        if st.slow > 0:  # the work is done; the answer comes too late for the client
            st.slow -= 1
            time.sleep(st.slow_seconds)
        return self._send(status, out, op)

    def route(self, method, spec_path, args, body, params):  # noqa: C901 - a route table
        st: State = self.server.state
        if spec_path == "/project/{project-slug}/pipeline" and method == "POST":
            return 201, self._new_pipeline(args["slug"], body)
        if spec_path == "/project/{provider}/{organization}/{project}/pipeline/run":
            if st.run_message:
                return 200, {"message": st.run_message}
            return 201, self._new_pipeline(
                f"{args['provider']}/{args['organization']}/{args['project']}", body
            )
        if spec_path == "/project/{project-slug}/pipeline" and method == "GET":
            items = [p for p in st.pipelines.values() if p["project_slug"] == args["slug"]]
            return 200, self._page(list(reversed(items)), params)
        if spec_path == "/pipeline/{pipeline-id}":
            p = st.pipelines.get(args["pipeline_id"])
            return (200, p) if p else (404, {"message": "Pipeline not found"})
        if spec_path == "/pipeline/{pipeline-id}/workflow":
            items = [w for w in st.workflows.values() if w["pipeline_id"] == args["pipeline_id"]]
            return 200, self._page(items, params)
        if spec_path == "/workflow/{id}/job":
            st.job_polls += 1
            jobs = [
                j
                for j in st.jobs.get(args["id"], [])
                if j["type"] != "approval" or st.job_polls > st.approval_after_polls
            ]
            return 200, self._page(jobs, params)
        if spec_path == "/workflow/{id}/approve/{approval_request_id}":
            job = next(
                (
                    j
                    for j in st.jobs.get(args["id"], [])
                    if j.get("approval_request_id") == args["approval_request_id"]
                ),
                None,
            )
            if job is None or job["status"] != "on_hold":
                return 404, {"message": "Approval request not found"}
            job["status"] = "success"
            st.approved.append(job["id"])
            return 202, {"message": "Accepted."}
        if spec_path == "/jobs/{job-id}/cancel":
            st.canceled.append(args["job_id"])
            return 200, {"message": "Accepted."}
        if spec_path == "/project/{project-slug}/schedule" and method == "POST":
            sid = str(uuid.uuid4())
            s = {
                "id": sid,
                "name": body["name"],
                "description": body.get("description", ""),
                "project-slug": args["slug"],
                "timetable": body["timetable"],
                "parameters": body["parameters"],
                "actor": {
                    "id": str(uuid.uuid4()),
                    "login": "system",
                    "name": "system",
                    "avatar_url": None,
                },
                "created-at": _now(),
                "updated-at": _now(),
            }
            st.schedules[sid] = s
            return 201, s
        if spec_path == "/project/{project-slug}/schedule" and method == "GET":
            return 200, self._page(list(st.schedules.values()), params)
        if spec_path == "/schedule/{schedule-id}" and method == "DELETE":
            if st.schedules.pop(args["schedule_id"], None) is None:
                return 404, {"message": "Schedule not found"}
            return 200, {"message": "Schedule deleted."}
        return 404, {"message": "not implemented in the stand-in"}

    def _page(self, items: list, params: dict) -> dict:
        size = self.server.state.page_size
        start = int(params.get("page-token", "0") or 0)
        nxt = start + size if start + size < len(items) else None
        return {"items": items[start : start + size], "next_page_token": str(nxt) if nxt else None}

    def _new_pipeline(self, slug: str, body: dict) -> dict:
        st: State = self.server.state
        pid = str(uuid.uuid4())
        number = len(st.pipelines) + 1
        params = body.get("parameters", {})
        p = {
            "id": pid,
            "number": number,
            "state": "created",
            "created_at": _now(),
            "project_slug": slug,
            "errors": [],
            "updated_at": _now(),
            "trigger_parameters": {"parameters": params},
            "trigger": {
                "type": "api",
                "received_at": _now(),
                "actor": {"login": "me", "avatar_url": None},
            },
            "vcs": {
                "provider_name": "GitHub",
                "origin_repository_url": "https://x",
                "target_repository_url": "https://x",
                "revision": "abc",
                "branch": body.get("branch") or body.get("config", {}).get("branch"),
            },
        }
        st.pipelines[pid] = p
        name = "retrain-deploy" if params.get("retrain") else "build-deploy"
        wid = str(uuid.uuid4())
        st.workflows[wid] = {
            "id": wid,
            "name": name,
            "pipeline_id": pid,
            "pipeline_number": number,
            "project_slug": slug,
            "status": "on_hold" if params.get("retrain") else "running",
            "started_by": str(uuid.uuid4()),
            "created_at": _now(),
            "stopped_at": None,
        }
        jobs = [
            {
                "id": str(uuid.uuid4()),
                "name": n,
                "type": "build",
                "status": "success",
                "dependencies": [],
                "project_slug": slug,
                "job_number": i + 1,
                "started_at": _now(),
            }
            for i, n in enumerate(["build", "retrain", "test"])
        ]
        if params.get("retrain"):
            hold = str(uuid.uuid4())
            jobs.append(
                {
                    "id": hold,
                    "name": "hold",
                    "type": "approval",
                    "status": "on_hold",
                    "approval_request_id": hold,
                    "dependencies": [],
                    "project_slug": slug,
                    "started_at": _now(),  # required non-null by the spec
                }
            )
        st.jobs[wid] = jobs
        return {"id": pid, "number": number, "state": "created", "created_at": _now()}

    def do_GET(self):  # noqa: N802
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")

    def do_DELETE(self):  # noqa: N802
        self._handle("DELETE")


class StandIn:
    """Start/stop the stand-in; ``url`` is its API base."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.state = State()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def state(self) -> State:
        return self.server.state

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{PREFIX}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
