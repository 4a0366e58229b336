"""CircleCI API v2 client: trigger, follow, approve, schedule, and watch for new data.

Auth is a personal API token (``CIRCLE_TOKEN``) sent as ``Circle-Token``; it is never printed.
Errors are what a person needs: 401/403 say which token is needed, 404 says what was not found
(and that project tokens get 404), 429 and 5xx are retried with backoff honouring
``Retry-After`` a bounded number of times, and a 200 ``{"message"}`` from ``pipeline/run``
(no pipeline created) is a failure. Project slugs travel as three path segments.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tfship.errors import ApiError, ConfigError
from tfship.log import event

DEFAULT_BASE = "https://circleci.com/api/v2"
SLUG_RE = re.compile(
    r"^(gh|github|bb|bitbucket|circleci|gl|gitlab)/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"
)
RETRY_STATUS = (429, 500, 502, 503, 504)


def check_slug(slug: str) -> str:
    """``gh/org/repo`` (or bb/..., circleci/<org-id>/<project-id>)."""
    if not SLUG_RE.match(slug or ""):
        raise ConfigError(
            f"project slug {slug!r} is not vcs/org/repo",
            hint="e.g. gh/acme/models (CIRCLE_PROJECT_SLUG)",
        )
    return slug


@dataclass
class CircleCI:
    """A thin, careful client over ``requests``."""

    token: str
    base_url: str = DEFAULT_BASE
    timeout: float = 30.0
    retries: int = 5
    max_backoff: float = 60.0
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if not self.token:
            raise ConfigError(
                "CIRCLE_TOKEN is not set",
                hint="create a personal API token in CircleCI User Settings > "
                "Personal API Tokens and export CIRCLE_TOKEN",
            )
        import requests

        self._session = requests.Session()
        self._session.headers.update(
            {"Circle-Token": self.token, "Accept": "application/json", "User-Agent": "tfship"}
        )

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
        and returns that instead of calling again.
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

    def paged(self, path: str, params: dict | None = None, max_pages: int = 20) -> Iterator[dict]:
        """Items of a paginated list (``items`` + ``next_page_token``)."""
        params = dict(params or {})
        for _ in range(max_pages):
            doc = self.request("GET", path, params=params)
            yield from doc.get("items", [])
            token = doc.get("next_page_token")
            if not token:
                return
            params["page-token"] = token

    # --- pipelines ---------------------------------------------------------------------------
    def trigger(
        self,
        slug: str,
        branch: str | None = None,
        tag: str | None = None,
        parameters: dict | None = None,
    ) -> dict:
        """Classic trigger: POST /project/{slug}/pipeline -> {id, number, state, created_at}."""
        body: dict = {}
        if branch and tag:
            raise ConfigError("give --branch or --tag, not both")
        if tag:
            body["tag"] = tag
        else:
            body["branch"] = branch or "main"
        if parameters:
            body["parameters"] = parameters
        return self.request(
            "POST",
            f"/project/{check_slug(slug)}/pipeline",
            body,
            ok=(201,),
            recover=self._finder(slug, body.get("branch"), parameters),
        )

    def _finder(
        self, slug: str, branch: str | None, parameters: dict | None
    ) -> Callable[[], dict | None]:
        """A lookup for the pipeline a trigger whose answer was lost created (no duplicates).

        It is one triggered by the API since this call began (a minute's clock skew allowed),
        on the same branch, with exactly the same parameters.
        """
        since = datetime.now(UTC) - timedelta(seconds=60)

        def find() -> dict | None:
            for p in self.recent_pipelines(slug, branch, max_pages=1):
                try:
                    created = datetime.fromisoformat(str(p.get("created_at")))
                except ValueError:
                    continue
                if (
                    created >= since
                    and (p.get("trigger") or {}).get("type") == "api"
                    and _pipeline_params(p) == (parameters or {})
                ):
                    return {k: p.get(k) for k in ("id", "number", "state", "created_at")}
            return None

        return find

    def run_pipeline(
        self,
        slug: str,
        definition_id: str,
        branch: str | None = None,
        tag: str | None = None,
        parameters: dict | None = None,
    ) -> dict:
        """POST /project/{provider}/{org}/{project}/pipeline/run; 200 {message} is a failure."""
        ref = {"tag": tag} if tag else {"branch": branch or "main"}
        body: dict = {"definition_id": definition_id, "config": dict(ref), "checkout": dict(ref)}
        if parameters:
            body["parameters"] = parameters
        doc = self.request(
            "POST",
            f"/project/{check_slug(slug)}/pipeline/run",
            body,
            ok=(200, 201),
            recover=self._finder(slug, ref.get("branch"), parameters),
        )
        if "id" not in doc:
            raise ApiError(
                f"CircleCI created no pipeline: {doc.get('message', doc)}",
                hint="check the definition id, the branch, and the config's "
                "workflow filters and `when` conditions",
            )
        return doc

    def pipeline(self, pipeline_id: str) -> dict:
        return self.request("GET", f"/pipeline/{pipeline_id}")

    def workflows(self, pipeline_id: str) -> list[dict]:
        return list(self.paged(f"/pipeline/{pipeline_id}/workflow"))

    def jobs(self, workflow_id: str) -> list[dict]:
        return list(self.paged(f"/workflow/{workflow_id}/job"))

    def recent_pipelines(
        self, slug: str, branch: str | None = None, max_pages: int = 2
    ) -> list[dict]:
        params = {"branch": branch} if branch else None
        return list(self.paged(f"/project/{check_slug(slug)}/pipeline", params, max_pages))

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

    def cancel_job(self, job_id: str) -> dict:
        return self.request("POST", f"/jobs/{job_id}/cancel", ok=(200, 202))

    # --- schedules ---------------------------------------------------------------------------
    def create_schedule(
        self,
        slug: str,
        name: str,
        hours: list[int],
        days: list[str],
        branch: str = "main",
        parameters: dict | None = None,
        description: str = "",
    ) -> dict:
        body = {
            "name": name,
            "description": description or f"tfship: {name}",
            "attribution-actor": "system",
            "timetable": {"per-hour": 1, "hours-of-day": hours, "days-of-week": days},
            "parameters": {"branch": branch, **(parameters or {})},
        }
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


def parse_params(pairs: tuple[str, ...]) -> dict:
    """``k=v`` pairs -> pipeline parameters (true/false -> bool, digits -> int)."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {pair!r}: expected key=value")
        if value.lower() in ("true", "false"):
            out[key] = value.lower() == "true"
        elif re.fullmatch(r"-?\d+", value):
            out[key] = int(value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# watch-data: trigger retrain-deploy once per new snapshot
# --------------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    uri: str
    sha256: str

    @property
    def data_uri(self) -> str:
        return f"{self.uri}#sha256={self.sha256}"


def newest_snapshot(source: str) -> Snapshot | None:
    """The newest snapshot at ``source``: a folder, an https listing, or ssh://user@host/path."""
    from tfship.data import SNAPSHOT_SUFFIXES

    if source.startswith(("https://", "http://")):
        import requests

        resp = requests.get(source, timeout=30)
        if resp.status_code != 200:
            raise ApiError(f"{source}: HTTP {resp.status_code}")
        lines = [ln.split() for ln in resp.text.splitlines() if ln.strip()]
        entries = [
            (u[0], u[1] if len(u) > 1 else None) for u in lines if u[0].endswith(SNAPSHOT_SUFFIXES)
        ]
        if not entries:
            return None
        uri, digest = sorted(entries)[-1]
        if digest is None:
            raise ApiError(
                f"{source}: listing line for {uri} has no sha256",
                hint="list snapshots as '<url> <sha256>' lines",
            )
        return Snapshot(uri, digest)
    if source.startswith("ssh://"):
        return _newest_over_ssh(source)
    folder = Path(source)
    if not folder.is_dir():
        raise ConfigError(f"{source}: not a folder, https listing or ssh:// URL")
    files = sorted(p for p in folder.iterdir() if p.suffix in SNAPSHOT_SUFFIXES and p.is_file())
    if not files:
        return None
    newest = files[-1]
    return Snapshot(str(newest.absolute()), hashlib.sha256(newest.read_bytes()).hexdigest())


def _newest_over_ssh(source: str) -> Snapshot | None:
    import shlex
    from urllib.parse import urlsplit

    from tfship.ssh import SSHHost, SSHSettings

    u = urlsplit(source)
    host = SSHHost(
        SSHSettings(
            hostname=u.hostname,
            username=u.username,
            port=u.port or 22,
            key_file=os.environ.get("DEPLOY_SERVER_SSH_KEY_FILE"),
            key_text=os.environ.get("DEPLOY_SERVER_SSH_KEY"),
            known_hosts=os.environ.get("DEPLOY_SERVER_KNOWN_HOSTS"),
        )
    ).connect()
    try:
        names = [n for n in host.listdir(u.path) if n.endswith((".npz", ".csv"))]
        if not names:
            return None
        path = f"{u.path.rstrip('/')}/{sorted(names)[-1]}"
        out = host.check(f"sha256sum -- {shlex.quote(path)}", f"hash {path}")
        return Snapshot(f"ssh://{u.netloc}{path}", out.split()[0].decode())
    finally:
        host.close()


def watch_once(
    api: CircleCI,
    slug: str,
    source: str,
    state_file: Path,
    branch: str = "main",
    extra: dict | None = None,
) -> dict:
    """One poll: trigger retrain-deploy for a snapshot not triggered before; return what happened.

    Idempotent across crashes: before triggering, recent pipelines are searched for one whose
    parameters already carry this data_uri (a crash between trigger and state write).
    """
    state = json.loads(state_file.read_text()) if state_file.exists() else {"triggered": {}}
    snap = newest_snapshot(source)
    if snap is None:
        return {"action": "none", "reason": "no snapshot yet"}
    if snap.sha256 in state["triggered"]:
        return {
            "action": "none",
            "reason": "already triggered",
            "sha256": snap.sha256,
            "pipeline": state["triggered"][snap.sha256],
        }
    params = {"retrain": True, "data_uri": snap.data_uri, **(extra or {})}
    existing = next(
        (
            p
            for p in api.recent_pipelines(slug, branch)
            if (p.get("trigger_parameters") or {}).get("data_uri") == snap.data_uri
            or _pipeline_params(p).get("data_uri") == snap.data_uri
        ),
        None,
    )
    if existing:
        pipeline = {"id": existing["id"], "number": existing.get("number")}
        action = "already-triggered-found"
    else:
        pipeline = api.trigger(slug, branch=branch, parameters=params)
        action = "triggered"
    state["triggered"][snap.sha256] = {
        "id": pipeline["id"],
        "number": pipeline.get("number"),
        "data_uri": snap.data_uri,
    }
    tmp = state_file.with_name(f".{state_file.name}.tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, state_file)
    event("ci", f"watch-data: {action}", pipeline=pipeline.get("number"), data=snap.uri)
    return {
        "action": action,
        "sha256": snap.sha256,
        "data_uri": snap.data_uri,
        "pipeline": pipeline,
    }


def _pipeline_params(p: dict) -> dict:
    tp = p.get("trigger_parameters") or {}
    return tp.get("parameters", {}) if isinstance(tp, dict) else {}
