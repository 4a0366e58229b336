"""Dynamic configuration locally: the continuePipeline endpoint a setup workflow calls.

CircleCI runs a ``setup: true`` config's workflow with ``CIRCLE_CONTINUATION_KEY`` set; a job
then POSTs ``/pipeline/continue`` with that key, a configuration and pipeline parameters, and
the pipeline goes on with that configuration. ``tfship ci local`` does the same: it starts
:class:`Loopback` (127.0.0.1, the API base in ``CIRCLECI_API_URL``) for the setup workflow and
then runs what it received. The endpoint takes exactly continuePipeline's body as
``shared/specs/circleci-api-v2.openapi.json`` defines it, and answers as CircleCI would where
the spec only says "default: {message}": 401 for a key that is not this pipeline's, 409 for
a key already used (the key is single-use), 400 for a configuration that does not compile or
a parameter it does not declare. As CircleCI documents for dynamic configuration, the
parameters the pipeline was triggered with are carried into the continuation (so it must
declare them too), and sending one of them again is refused ("Conflicting pipeline
parameters.").

``python -m tfship.ci.continuation CONFIG [k=v ...]`` is the other side, for a setup job
that goes on with a configuration file as it is (the continuation orb's ``continue``): the
project's push pipelines continue this way with ``.circleci/continue.yml``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml
from tfship.ci.api import (
    CONTINUATION_KEY_ENV,
    MAX_PARAMETER_KEY,
    MAX_PARAMETER_VALUE,
    MAX_PARAMETERS,
    CircleCI,
    parse_params,
)
from tfship.ci.settings import ApiSettings
from tfship.ci.workflow import Unsupported, parse_config, plan, workflow_names
from tfship.errors import ConfigError, TfshipError
from tfship.settings import fields_of

PREFIX = "/api/v2"
# continuePipeline's request body (the spec's requestBody schema); its size limits are the
# trigger's (api.MAX_*), as the spec's prose says for both.
BODY_KEYS = {"continuation-key", "configuration", "parameters"}


@dataclass(frozen=True)
class Continuation:
    """What the setup workflow continued with: the configuration's text and the parameters."""

    configuration: str
    parameters: dict

    def ends_pipeline(self) -> bool:
        """A configuration with no workflow (the continuation orb's ``finish``) ends it."""
        doc = yaml.safe_load(self.configuration)
        return not (isinstance(doc, dict) and workflow_names(doc))


def body_problems(body: object) -> list[str]:
    """Every way ``body`` breaks continuePipeline's request schema and its size limits."""
    if not isinstance(body, dict):
        return ["the body is not a JSON object"]
    problems = [f"{k!r} is not a field of the request" for k in sorted(set(body) - BODY_KEYS)]
    for key in ("continuation-key", "configuration"):
        if key not in body:
            problems.append(f"{key!r} is required")
        elif not isinstance(body[key], str):
            problems.append(f"{key!r} must be a string")
    params = body.get("parameters", {})
    if not isinstance(params, dict):
        return [*problems, "'parameters' must be an object"]
    if len(params) > MAX_PARAMETERS:
        problems.append(f"{len(params)} parameters; at most {MAX_PARAMETERS}")
    for name, value in params.items():
        if not isinstance(value, (bool, int, str)):
            problems.append(f"parameter {name!r} must be an integer, a string or a boolean")
        if len(name) > MAX_PARAMETER_KEY:
            problems.append(
                f"parameter name {name[:20]!r}... is over {MAX_PARAMETER_KEY} characters"
            )
        if isinstance(value, str) and len(value) > MAX_PARAMETER_VALUE:
            problems.append(f"parameter {name!r} is over {MAX_PARAMETER_VALUE} characters")
    return problems


def compile_problem(
    configuration: str, parameters: dict, branch: str, orbs: dict[str, dict] | None = None
) -> str | None:
    """Why CircleCI would refuse to continue with this configuration, or None.

    ``orbs``: the orbs a config may use by reference (``tfship ci local --orb``), compiled
    with it as CircleCI compiles them with the registry's.

    It must be a 2.1 config that is not itself a setup config, declare every parameter sent
    (with its type), and plan: jobs, commands and executors defined, parameters bound. A
    config with no workflow ends the pipeline and is accepted. What only the local runner
    cannot do (:class:`Unsupported`) is not a compile error; it is refused by name when run.
    """
    try:
        doc = yaml.safe_load(configuration)
    except yaml.YAMLError as exc:
        return f"the configuration is not valid YAML ({exc})"
    finish = isinstance(doc, dict) and str(doc.get("version")) in ("2", "2.1")
    if finish and not workflow_names(doc):
        return None
    try:
        doc = parse_config(configuration, "the continuation configuration")
        if doc.get("setup") is True:
            return "a continuation configuration cannot itself be a setup configuration"
        for name in workflow_names(doc):  # binds (and checks) the parameters for each
            plan(doc, name, parameters, branch, orbs=orbs)
    except Unsupported:
        return None
    except ConfigError as exc:
        return str(exc)
    return None


class Loopback:
    """continuePipeline on 127.0.0.1 for one setup workflow: one key, used at most once.

    ``url`` is the API base to hand the setup jobs (``CIRCLECI_API_URL``), ``key`` their
    ``CIRCLE_CONTINUATION_KEY``; ``continuation`` is what was accepted (None: not continued).
    ``triggered`` are the parameters the pipeline was triggered with (given explicitly, not
    defaults): they are carried into the continuation. Closing it is the key expiring, as
    when CircleCI's setup workflow ends. ``orbs``: those a continuation may use by reference.
    """

    def __init__(
        self,
        branch: str,
        triggered: dict | None = None,
        orbs: dict[str, dict] | None = None,
    ) -> None:
        self.key = str(uuid.uuid4())
        self.branch = branch
        self.triggered = dict(triggered or {})
        self.orbs = orbs or {}
        self.continuation: Continuation | None = None
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{PREFIX}"

    def answer(self, body: object) -> tuple[int, dict]:
        """The status and body CircleCI answers to a continuePipeline request ``body``."""
        problems = body_problems(body)
        if problems:
            return 400, {"message": "; ".join(problems)}
        assert isinstance(body, dict)
        with self.lock:  # single use, even for two jobs racing
            if body["continuation-key"] != self.key:
                return 401, {"message": "Invalid continuation key."}
            if self.continuation is not None:
                return 409, {"message": "Continuation key has already been used."}
            sent = body.get("parameters") or {}
            if set(sent) & set(self.triggered):
                return 400, {"message": "Conflicting pipeline parameters."}
            params = {**self.triggered, **sent}
            problem = compile_problem(body["configuration"], params, self.branch, self.orbs)
            if problem:
                return 400, {"message": f"config compilation failed: {problem}"}
            self.continuation = Continuation(body["configuration"], params)
        return 200, {"message": "Pipeline continued."}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Loopback:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _handler(loop: Loopback) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "tfship-ci-local"

        def log_message(self, *a) -> None:  # the job's own output says what happened
            pass

        def do_POST(self) -> None:  # noqa: N802
            if self.path.split("?")[0] != f"{PREFIX}/pipeline/continue":
                return self._send(404, {"message": "Not found (only continuePipeline here)"})
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw)
            except ValueError:
                return self._send(400, {"message": "the body is not JSON"})
            self._send(*loop.answer(body))

        def do_GET(self) -> None:  # noqa: N802
            self._send(404, {"message": "Not found (only continuePipeline here)"})

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


API_URL = dict(fields_of(ApiSettings))["api_url"].metadata["setting"]


def continue_as_is(path: Path, parameters: dict, environ: Mapping[str, str]) -> dict:
    """Continue the pipeline with the configuration file at ``path``, unchanged, and
    ``parameters`` (continuePipeline with the job's key, which is never printed)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the configuration to continue with ({exc})"
        ) from None
    api = CircleCI.for_continuation(environ.get(API_URL.env) or API_URL.default)
    return api.continue_pipeline(environ.get(CONTINUATION_KEY_ENV, ""), text, parameters)


def main(argv: list[str] | None = None) -> int:
    """``python -m tfship.ci.continuation CONFIG [k=v ...]``: one line out, an exit code."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0].startswith("-"):
        print("usage: python -m tfship.ci.continuation CONFIG [name=value ...]", file=sys.stderr)
        return 2
    try:
        done = continue_as_is(Path(args[0]), parse_params(tuple(args[1:])), os.environ)
    except TfshipError as exc:
        print(f"continuation: {exc.kind}: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"continued with {args[0]}: {done.get('message', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
