"""CircleCI API v2 client: trigger, follow, approve or reject, schedule (watch-data: ``watch``).

Auth is a personal API token (``CIRCLE_TOKEN``) sent as ``Circle-Token``; it is never printed.
Errors are what a person needs: 401/403 say which token is needed, 404 says what was not found
(and that project tokens get 404), 429 and 5xx are retried with backoff honouring
``Retry-After`` a bounded number of times, and a 200 ``{"message"}`` from ``pipeline/run``
(no pipeline created) is a failure. Project slugs travel as three path segments.

Only what CircleCI's OpenAPI document defines is read. The API never says which parameters a
pipeline was triggered with, so a trigger whose answer was lost is recognised by what the
client knew before sending it (:class:`Mark`: the user's newest pipeline number and the time)
and by defined fields (the user's own pipelines, trigger type, branch or tag), and watch-data
keeps its own record of what it triggered.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from tfship.errors import ApiError, ConfigError
from tfship.log import event

DEFAULT_BASE = "https://circleci.com/api/v2"
DEFAULT_BRANCH = "main"


SLUG_RE = re.compile(
    r"^(gh|github|bb|bitbucket|circleci|gl|gitlab)/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"
)
RETRY_STATUS = (429, 500, 502, 503, 504)
# Pipeline parameter limits (the spec, TriggerPipelineParameters.parameters): checked before
# sending, so the user gets one clear line rather than CircleCI's refusal.
MAX_PARAMETERS, MAX_PARAMETER_KEY, MAX_PARAMETER_VALUE = 100, 128, 512
# How far CircleCI's clock may be behind ours when matching created_at against a mark.
CLOCK_SKEW = timedelta(seconds=60)
# Wait before looking again for a pipeline a lost trigger made (capped by max_backoff).
RECHECK_SECONDS = 2.0
# trigger.type of a pipeline made through the API: "api"; the spec also has "explicit",
# which it does not explain, so both are accepted.
API_TRIGGER_TYPES = ("api", "explicit")


def check_slug(slug: str) -> str:
    """``gh/org/repo`` (or bb/..., circleci/<org-id>/<project-id>)."""
    if not SLUG_RE.match(slug or ""):
        raise ConfigError(
            f"project slug {slug!r} is not vcs/org/repo",
            hint="e.g. gh/acme/models (CIRCLE_PROJECT_SLUG)",
        )
    return slug


def check_parameters(parameters: dict | None) -> None:
    """Refuse pipeline parameters CircleCI would refuse: at most 100, keys of at most 128
    characters, values of at most 512."""
    parameters = parameters or {}
    if len(parameters) > MAX_PARAMETERS:
        raise ConfigError(
            f"{len(parameters)} pipeline parameters; CircleCI takes at most {MAX_PARAMETERS}"
        )
    for key, value in parameters.items():
        if len(key) > MAX_PARAMETER_KEY:
            raise ConfigError(
                f"pipeline parameter name {key[:40]!r}... is {len(key)} characters; "
                f"CircleCI takes at most {MAX_PARAMETER_KEY}"
            )
        if isinstance(value, str) and len(value) > MAX_PARAMETER_VALUE:
            raise ConfigError(
                f"pipeline parameter {key} is {len(value)} characters; CircleCI takes at "
                f"most {MAX_PARAMETER_VALUE}",
                hint="use a shorter path or URL"
                if key == "data_uri"
                else "put the value in a file in the repository or a bucket and pass its path "
                "or URI instead",
            )


@dataclass(frozen=True)
class Ref:
    """The branch or the tag a pipeline runs on (never both)."""

    branch: str | None = None
    tag: str | None = None

    @classmethod
    def of(cls, branch: str | None, tag: str | None) -> Ref:
        """``--branch``/``--tag`` as given: the tag if set, else the branch (default main)."""
        if branch and tag:
            raise ConfigError("give --branch or --tag, not both")
        return cls(tag=tag) if tag else cls(branch=branch or DEFAULT_BRANCH)

    def body(self) -> dict:
        """The ref as the API takes it: {"branch": ...} or {"tag": ...}."""
        return {"tag": self.tag} if self.tag else {"branch": self.branch}

    def matches(self, pipeline: dict) -> bool:
        """Whether ``pipeline``'s vcs is on this ref."""
        vcs = pipeline.get("vcs") or {}
        return vcs.get("tag") == self.tag if self.tag else vcs.get("branch") == self.branch

    def __str__(self) -> str:
        return f"tag {self.tag}" if self.tag else f"branch {self.branch}"


@dataclass(frozen=True)
class Mark:
    """What the client knew just before sending a trigger: the user's highest pipeline number
    in the project, and the time (less the allowed clock skew). A pipeline the trigger made
    is numbered above the one and created after the other."""

    after_number: int
    since: datetime

    def to_json(self) -> dict:
        """For the watch-data state file."""
        return {"after_number": self.after_number, "since": self.since.isoformat()}

    @classmethod
    def from_json(cls, doc: dict) -> Mark:
        """Back from :meth:`to_json`."""
        return cls(int(doc["after_number"]), datetime.fromisoformat(doc["since"]))


class AmbiguousTrigger(ApiError):
    """More than one pipeline could be the one a trigger whose answer was lost made."""

    def __init__(self, ref: Ref, candidates: list[dict]) -> None:
        listed = ", ".join(f"{p.get('number')} ({p.get('id')})" for p in candidates)
        super().__init__(
            f"cannot tell which pipeline the trigger on {ref} made: {len(candidates)} of "
            f"yours appeared since it was sent ({listed}); not triggering again",
            hint="check them in the CircleCI console and cancel any you do not want",
        )
        self.candidates = candidates


def _number(p: dict) -> int:
    n = p.get("number")
    return n if isinstance(n, int) else 0


def _made_after(p: dict, ref: Ref, mark: Mark) -> bool:
    try:
        created = datetime.fromisoformat(str(p.get("created_at")))
    except ValueError:
        return False
    return (
        _number(p) > mark.after_number
        and created >= mark.since
        and (p.get("trigger") or {}).get("type") in API_TRIGGER_TYPES
        and ref.matches(p)
    )


# CircleCI sets it in a setup workflow's jobs: continuePipeline's single-use key (a secret).
CONTINUATION_KEY_ENV = "CIRCLE_CONTINUATION_KEY"


@dataclass
class CircleCI:
    """A thin, careful client over ``requests``."""

    token: str
    base_url: str = DEFAULT_BASE
    timeout: float = 30.0
    retries: int = 5
    max_backoff: float = 60.0
    sleep: Callable[[float], None] = time.sleep
    # False only for a setup job's client (:meth:`for_continuation`): the continuation key
    # authorises continuePipeline, as CircleCI's continuation orb uses it, with no token.
    needs_token: bool = True

    @classmethod
    def for_continuation(
        cls, base_url: str = DEFAULT_BASE, timeout: float = 30.0, max_backoff: float = 60.0
    ) -> CircleCI:
        """A client for :meth:`continue_pipeline` alone: no token (the key is the credential)."""
        return cls(
            "",
            base_url,
            timeout=timeout,
            max_backoff=max_backoff,
            needs_token=False,
        )

    def __post_init__(self) -> None:
        if self.needs_token and not self.token:
            raise ConfigError(
                "CIRCLE_TOKEN is not set",
                hint="create a personal API token in CircleCI User Settings > "
                "Personal API Tokens and export CIRCLE_TOKEN",
            )
        import requests

        self._session = requests.Session()
        self._session.headers.update({"Accept": "application/json", "User-Agent": "tfship"})
        if self.token:
            self._session.headers["Circle-Token"] = self.token

    def __repr__(self) -> str:  # never show the token
        return f"CircleCI(base_url={self.base_url!r})"

    # --- plumbing ----------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        params: dict | None = None,
        ok: tuple[int, ...] = (200, 201, 202),
        recover: Callable[[], dict | None] | None = None,
    ) -> dict:
        """One API call with bounded retries; returns the JSON body.

        ``recover`` makes a non-idempotent call safe to retry: after an answer that may have
        been lost (a timeout, a dropped connection, a 5xx) it looks for what the call created
        and returns that instead of calling again (None: nothing was created, call again; it
        raises when it cannot tell).
        """
        import requests

        url = self.base_url.rstrip("/") + path
        attempt = 0
        while True:
            try:
                resp = self._session.request(
                    method, url, json=body, params=params, timeout=self.timeout
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt >= self.retries:
                    raise ApiError(
                        f"{method} {path}: CircleCI unreachable after "
                        f"{attempt + 1} tries ({type(exc).__name__})",
                        hint="check the network and CIRCLECI_API_URL; "
                        "TFSHIP_API_TIMEOUT sets the seconds per request",
                    ) from exc
                delay = min(self.max_backoff, 2.0**attempt)
                event(
                    "ci",
                    f"{method} {path}: {type(exc).__name__}, retrying in {delay:g} s",
                    attempt=attempt + 1,
                )
                maybe_done = not isinstance(exc, requests.exceptions.ConnectTimeout)
            else:
                if resp.status_code in ok:
                    return self._json(resp, method, path)
                if resp.status_code not in RETRY_STATUS or attempt >= self.retries:
                    raise self._error(resp, method, path, attempt + 1)
                delay = _retry_after(resp) or min(self.max_backoff, 2.0**attempt)
                delay = min(delay, self.max_backoff)
                event(
                    "ci",
                    f"{method} {path}: HTTP {resp.status_code}, retrying in {delay:g} s",
                    attempt=attempt + 1,
                )
                maybe_done = resp.status_code >= 500
            attempt += 1
            self.sleep(delay)
            if recover is not None and maybe_done:
                found = recover()
                if found is not None:
                    event("ci", f"{method} {path}: the lost call had succeeded; not repeating it")
                    return found

    @staticmethod
    def _json(resp, method: str, path: str) -> dict:
        if not resp.content:
            return {}
        try:
            return resp.json()
        except ValueError as exc:
            raise ApiError(
                f"{method} {path}: CircleCI answered HTTP {resp.status_code} "
                f"with a body that is not JSON ({resp.text[:80]!r})"
            ) from exc

    @staticmethod
    def _error(resp, method: str, path: str, tries: int = 1) -> ApiError:
        try:
            message = resp.json().get("message", "")
        except ValueError:
            message = resp.text[:200]
        code = resp.status_code
        where = f"{method} {path}: HTTP {code}"
        if code in (401, 403):
            return ApiError(
                f"{where}: {message or 'not authorized'}",
                hint="CIRCLE_TOKEN must be a personal API token of a user with "
                "access to the project (project tokens cannot do this)",
            )
        if code == 404:
            return ApiError(
                f"{where}: {message or 'not found'}",
                hint="check the project slug (vcs/org/repo) and ids; a project "
                "token also gets 404 'Project not found': use a personal token",
            )
        if code == 429:
            return ApiError(
                f"{where}: rate limited and still limited after retries", hint="try again later"
            )
        if code >= 500:
            return ApiError(
                f"{where} after {tries} tries: {message or resp.reason}",
                hint="CircleCI is failing; see https://status.circleci.com and try again later",
            )
        return ApiError(f"{where}: {message or resp.reason}")

    def pages(self, path: str, params: dict | None = None, max_pages: int = 20) -> Iterator[dict]:
        """The pages of a paginated list (``items`` + ``next_page_token``), at most max_pages."""
        params = dict(params or {})
        for _ in range(max_pages):
            doc = self.request("GET", path, params=params)
            yield doc
            token = doc.get("next_page_token")
            if not token:
                return
            params["page-token"] = token

    def paged(self, path: str, params: dict | None = None, max_pages: int = 20) -> Iterator[dict]:
        """Items of a paginated list."""
        for doc in self.pages(path, params, max_pages):
            yield from doc.get("items", [])

    # --- pipelines ---------------------------------------------------------------------------
    def trigger(
        self,
        slug: str,
        branch: str | None = None,
        tag: str | None = None,
        parameters: dict | None = None,
        mark: Mark | None = None,
    ) -> dict:
        """Classic trigger: POST /project/{slug}/pipeline -> {id, number, state, created_at}.

        Safe to retry: if the answer may have been lost, the pipeline it made is looked up
        (:meth:`find_triggered`, from ``mark``, taken now unless given) instead of sending the
        trigger again.
        """
        ref = Ref.of(branch, tag)
        check_parameters(parameters)
        slug = check_slug(slug)
        body: dict = ref.body()
        if parameters:
            body["parameters"] = parameters
        mark = mark or self.mark(slug)
        return self.request(
            "POST",
            f"/project/{slug}/pipeline",
            body,
            ok=(201,),
            recover=lambda: self.find_triggered(slug, ref, mark),
        )

    def run_pipeline(
        self,
        slug: str,
        definition_id: str,
        branch: str | None = None,
        tag: str | None = None,
        parameters: dict | None = None,
    ) -> dict:
        """POST /project/{provider}/{org}/{project}/pipeline/run; 200 {message} is a failure."""
        ref = Ref.of(branch, tag)
        check_parameters(parameters)
        slug = check_slug(slug)
        body: dict = {"definition_id": definition_id, "config": ref.body(), "checkout": ref.body()}
        if parameters:
            body["parameters"] = parameters
        mark = self.mark(slug)
        doc = self.request(
            "POST",
            f"/project/{slug}/pipeline/run",
            body,
            ok=(200, 201),
            recover=lambda: self.find_triggered(slug, ref, mark),
        )
        if "id" not in doc:
            raise ApiError(
                f"CircleCI created no pipeline: {doc.get('message', doc)}",
                hint="check the definition id, the branch, and the config's "
                "workflow filters and `when` conditions",
            )
        return doc

    def mark(self, slug: str) -> Mark:
        """Where the user's pipelines of the project stand now, taken just before a trigger.

        The highest pipeline ``number`` on the first page of ``listMyPipelines`` (numbers
        only grow within a project), and the time less :data:`CLOCK_SKEW`.
        """
        doc = self.request("GET", f"/project/{check_slug(slug)}/pipeline/mine")
        numbers = [p["number"] for p in doc.get("items", []) if isinstance(p.get("number"), int)]
        return Mark(max(numbers, default=0), datetime.now(UTC) - CLOCK_SKEW)

    def pipelines_since(self, slug: str, ref: Ref, mark: Mark, max_pages: int = 5) -> list[dict]:
        """The user's pipelines on ``ref`` that a trigger sent after ``mark`` could have made.

        From ``listMyPipelines`` (only the token's user's pipelines, so never someone else's):
        numbered above the mark, created since it, triggered by the API, on the same branch
        or tag (checked here: that listing has no branch filter). Pages stop once a whole
        page is at or below the mark.
        """
        found = []
        for doc in self.pages(f"/project/{check_slug(slug)}/pipeline/mine", max_pages=max_pages):
            items = doc.get("items", [])
            found += [p for p in items if _made_after(p, ref, mark)]
            if all(_number(p) <= mark.after_number for p in items):
                break
        return found

    def find_triggered(self, slug: str, ref: Ref, mark: Mark, rechecks: int = 1) -> dict | None:
        """The pipeline a trigger sent after ``mark`` made, or None if it made none.

        None only after ``rechecks`` more looks a moment apart (a new pipeline can take a
        moment to be listed). More than one candidate raises :class:`AmbiguousTrigger` naming
        them: adopting the wrong one or sending again would both be worse than stopping.
        """
        for look in range(rechecks + 1):
            found = self.pipelines_since(slug, ref, mark)
            if len(found) == 1:
                return {k: found[0].get(k) for k in ("id", "number", "state", "created_at")}
            if found:
                raise AmbiguousTrigger(ref, found)
            if look < rechecks:
                self.sleep(min(self.max_backoff, RECHECK_SECONDS))
        return None

    def continue_pipeline(
        self, continuation_key: str, configuration: str, parameters: dict | None = None
    ) -> dict:
        """POST /pipeline/continue (continuePipeline): run ``configuration`` as the rest of the
        setup pipeline whose ``continuation_key`` (CIRCLE_CONTINUATION_KEY) is given -> {message}.

        The key is single-use and expires with the setup workflow, so a refused call is not
        repeated: CircleCI answers 409 for a used or expired key and 4xx with its message for a
        bad key or a configuration that does not compile. A retry after a lost answer that
        meets "already continued" means the first try most likely worked; the error says so.
        """
        if not continuation_key:
            raise ConfigError(
                f"{CONTINUATION_KEY_ENV} is not set",
                hint="continuePipeline runs only in a setup workflow (`setup: true` config)",
            )
        if not isinstance(configuration, str) or not configuration.strip():
            raise ConfigError("the continuation configuration is empty")
        check_parameters(parameters)
        body: dict = {"continuation-key": continuation_key, "configuration": configuration}
        if parameters:
            body["parameters"] = parameters
        try:
            return self.request("POST", "/pipeline/continue", body, ok=(200,))
        except ApiError as exc:
            raise ApiError(
                f"continuing the pipeline failed: {exc.message}",
                hint="a continuation key works once, only while the setup workflow runs "
                "(409: already used or expired, e.g. a retry after a lost answer that had "
                "worked: check the pipeline in the console); 400: the configuration does "
                "not compile or declares no parameter the setup job sent",
            ) from exc

    def pipeline(self, pipeline_id: str) -> dict:
        return self.request("GET", f"/pipeline/{pipeline_id}")

    def workflows(self, pipeline_id: str) -> list[dict]:
        return list(self.paged(f"/pipeline/{pipeline_id}/workflow"))

    def jobs(self, workflow_id: str) -> list[dict]:
        return list(self.paged(f"/workflow/{workflow_id}/job"))

    def wait_workflows(
        self, pipeline_id: str, timeout: float = 120.0, poll: float = 3.0
    ) -> list[dict]:
        """Follow a new pipeline until its workflows exist (or its config failed)."""
        deadline = time.monotonic() + timeout
        while True:
            p = self.pipeline(pipeline_id)
            if p.get("errors"):
                raise ApiError(
                    "pipeline "
                    + str(p.get("number", pipeline_id))
                    + " has errors: "
                    + "; ".join(e.get("message", "") for e in p["errors"])
                )
            flows = self.workflows(pipeline_id)
            if flows:
                return flows
            if time.monotonic() > deadline:
                raise ApiError(
                    f"pipeline {p.get('number', pipeline_id)} started no workflow "
                    f"within {timeout:g} s (state: {p.get('state')})",
                    hint="its workflows' `when` conditions may all be false",
                )
            self.sleep(poll)

    # --- approval ----------------------------------------------------------------------------
    def find_approval(
        self, workflow_id: str, name: str | None = None, timeout: float = 300.0, poll: float = 5.0
    ) -> dict:
        """The on_hold approval job of a workflow, waiting for it to appear (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            for job in self.jobs(workflow_id):
                if (
                    job.get("type") == "approval"
                    and job.get("status") == "on_hold"
                    and (name is None or job.get("name") == name)
                ):
                    return job
            if time.monotonic() > deadline:
                raise ApiError(
                    f"no approval job{f' {name!r}' if name else ''} on hold in "
                    f"workflow {workflow_id} after {timeout:g} s",
                    hint="is the workflow still running its earlier jobs?",
                )
            self.sleep(poll)

    def approve(self, workflow_id: str, approval_request_id: str) -> dict:
        return self.request(
            "POST", f"/workflow/{workflow_id}/approve/{approval_request_id}", ok=(202,)
        )

    def workflow(self, workflow_id: str) -> dict:
        """GET /workflow/{id}."""
        return self.request("GET", f"/workflow/{workflow_id}")

    def cancel_workflow(self, workflow_id: str) -> dict:
        """POST /workflow/{id}/cancel (cancelWorkflow, 202): how a hold is rejected.

        The API has no reject; cancelling the workflow stops the hold and everything after it.
        A lost answer is checked by reading the workflow rather than by cancelling again.
        """

        def canceled() -> dict | None:
            status = self.workflow(workflow_id).get("status")
            return {"message": "canceled"} if status == "canceled" else None

        return self.request("POST", f"/workflow/{workflow_id}/cancel", ok=(202,), recover=canceled)

    def wait_workflow_status(
        self, workflow_id: str, status: str, timeout: float = 60.0, poll: float = 2.0
    ) -> dict:
        """Read the workflow until it has ``status`` (bounded); return it."""
        deadline = time.monotonic() + timeout
        while True:
            w = self.workflow(workflow_id)
            if w.get("status") == status:
                return w
            if time.monotonic() > deadline:
                raise ApiError(
                    f"workflow {workflow_id} still reads {w.get('status')!r}, not {status!r}, "
                    f"after {timeout:g} s",
                    hint="check it in the CircleCI console",
                )
            self.sleep(poll)

    # --- schedules ---------------------------------------------------------------------------
    def create_schedule(
        self,
        slug: str,
        name: str,
        hours: list[int],
        days: list[str],
        branch: str | None = None,
        parameters: dict | None = None,
        description: str = "",
    ) -> dict:
        body = {
            "name": name,
            "description": description or f"tfship: {name}",
            "attribution-actor": "system",
            "timetable": {"per-hour": 1, "hours-of-day": hours, "days-of-week": days},
            "parameters": {"branch": branch or DEFAULT_BRANCH, **(parameters or {})},
        }
        check_parameters(body["parameters"])
        return self.request("POST", f"/project/{check_slug(slug)}/schedule", body, ok=(201,))

    def schedules(self, slug: str) -> list[dict]:
        return list(self.paged(f"/project/{check_slug(slug)}/schedule"))

    def delete_schedule(self, schedule_id: str) -> dict:
        return self.request("DELETE", f"/schedule/{schedule_id}")


def _retry_after(resp) -> float | None:
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def parse_params(pairs: tuple[str, ...], declared: dict | None = None) -> dict:
    """``k=v`` pairs -> pipeline parameters.

    With ``declared`` (the config's ``parameters:``), each value takes its parameter's
    declared type: a string parameter stays a string ("true", "123" included), a boolean
    takes true/false, an integer digits, an enum one of its values; an undeclared name is
    refused (CircleCI would fail the pipeline). Without it, true/false -> bool and digits ->
    int.
    """
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {pair!r}: expected key=value")
        if declared is not None:
            out[key] = typed_value(key, value, declared)
        elif value.lower() in ("true", "false"):
            out[key] = value.lower() == "true"
        elif re.fullmatch(r"-?\d+", value):
            out[key] = int(value)
        else:
            out[key] = value
    return out


def typed_value(key: str, value: str, declared: dict) -> str | bool | int:
    """``value`` as the config declares parameter ``key`` (see :func:`parse_params`)."""
    if key not in declared:
        raise ConfigError(
            f"--param {key}: the config declares no pipeline parameter {key!r} "
            f"(it declares: {', '.join(sorted(declared)) or 'none'})",
            hint="add it under the config's top-level parameters:, or fix the name",
        )
    decl = declared[key] if isinstance(declared[key], dict) else {}
    kind = decl.get("type", "string")
    if kind == "boolean":
        if value.lower() not in ("true", "false"):
            raise ConfigError(f"--param {key}={value}: {key} is a boolean; give true or false")
        return value.lower() == "true"
    if kind == "integer":
        if not re.fullmatch(r"-?\d+", value):
            raise ConfigError(f"--param {key}={value}: {key} is an integer")
        return int(value)
    if kind == "enum" and value not in [str(v) for v in decl.get("enum", [])]:
        raise ConfigError(f"--param {key}={value}: {key} is one of {decl.get('enum')}")
    return value  # string, enum: as given, never turned into a bool or a number


def declared_parameters(config: Path) -> dict:
    """The pipeline parameters a CircleCI config declares (name -> declaration)."""
    try:
        doc = yaml.safe_load(Path(config).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{config} not found: the pipeline parameters' types are read from it",
            hint="run in the repository, or give --config .circleci/config.yml",
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config}: not valid YAML ({exc})") from exc
    params = doc.get("parameters") if isinstance(doc, dict) else None
    return params if isinstance(params, dict) else {}


# What a schedule sets before its --param pairs (which add to it, or replace it by name): the
# switch of the retrain workflow.
SCHEDULE_DEFAULTS = ("retrain=true",)


def schedule_parameters(pairs: tuple[str, ...], declared: dict) -> dict:
    """A schedule's pipeline parameters: ``retrain=true`` plus each ``--param`` (a later
    pair wins), typed by the config's declarations, within CircleCI's limits."""
    if "retrain" not in declared:
        raise ConfigError(
            "the config declares no pipeline parameter 'retrain', which a schedule sets",
            hint="declare `retrain: {type: boolean, default: false}` under the config's "
            "parameters: and run the retrain workflow `when: << pipeline.parameters.retrain >>`",
        )
    params = parse_params((*SCHEDULE_DEFAULTS, *pairs), declared)
    check_parameters(params)
    return params


@dataclass
class HoldDecision:
    """What ``tfship ci approve`` did to a workflow's hold."""

    workflow_id: str
    job: dict
    action: str  # approved | rejected
    workflow: dict | None = None

    def to_dict(self) -> dict:
        out = {"job": self.job, "action": self.action}
        if self.workflow is not None:
            out["workflow"] = self.workflow
        return out

    def summary(self) -> str:
        if self.action == "approved":
            return f"approved {self.job['name']} in workflow {self.workflow_id}"
        return (
            f"rejected {self.job['name']} in workflow {self.workflow_id}: workflow canceled, "
            "nothing after the hold runs"
        )


def decide_hold(
    api: CircleCI, workflow_id: str, job_name: str, timeout: float, poll: float, reject: bool
) -> HoldDecision:
    """Approve the workflow's hold, or reject it: the API has no reject, so the workflow is
    canceled (cancelWorkflow) once the hold is there, and read until it is canceled."""
    job = api.find_approval(workflow_id, job_name, timeout, poll)
    if not reject:
        api.approve(workflow_id, job.get("approval_request_id") or job["id"])
        return HoldDecision(workflow_id, job, "approved")
    api.cancel_workflow(workflow_id)
    workflow = api.wait_workflow_status(workflow_id, "canceled", timeout, poll)
    return HoldDecision(workflow_id, job, "rejected", workflow)
