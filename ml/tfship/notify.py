"""`tfship notify`: tell people what happened, in a Slack-compatible (or generic) JSON post.

It reads the workspace to say *which check failed with which numbers* (the reports every
gating stage writes), names the job, stage, model version and build URL, and posts to a
webhook URL given in an environment variable (never printed). A network failure never fails
the job unless asked (``strict``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tfship.errors import ApiError
from tfship.log import event
from tfship.workspace import Workspace

# Where each stage leaves its verdict, most downstream first.
VERDICTS = (
    ("test-deployed", "deployed/verify.json"),
    ("retrain", "retrain/retrain.json"),
    ("test", "eval/metrics.json"),
)


def failed_check(ws: Workspace) -> tuple[str | None, str | None]:
    """(stage, 'check: value op threshold FAILED (missed by x)') from the newest verdict."""
    from tfship.report import Check

    for stage, rel in VERDICTS:
        path = ws.root / rel
        if not path.exists():
            continue
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            continue
        for c in doc.get("checks", []):
            if not c.get("passed", True):
                check = Check(c["name"], c["value"], c["op"], c["threshold"], c.get("detail", ""))
                return stage, check.describe()
    return None, None


def compose(
    ws: Workspace,
    event_kind: str,
    job: str | None,
    stage: str | None,
    message: str | None,
    evidence: str | None = None,
) -> dict:
    """The notification content (both payload formats are built from it)."""
    version = None
    pkg = ws.package / "package.json"
    if pkg.exists():
        version = json.loads(pkg.read_text()).get("version")
    failed_stage, check = failed_check(ws) if event_kind == "fail" else (None, None)
    return {
        "event": event_kind,
        "job": job or os.environ.get("CIRCLE_JOB"),
        "stage": stage or failed_stage,
        "model": os.environ.get("MODEL_NAME"),
        "version": version,
        "failed_check": check,
        "message": message,
        "evidence": evidence,
        "build_url": os.environ.get("CIRCLE_BUILD_URL"),
        "workflow_url": _workflow_url(),
        "branch": os.environ.get("CIRCLE_BRANCH"),
        "commit": os.environ.get("CIRCLE_SHA1"),
    }


def _workflow_url() -> str | None:
    wf = os.environ.get("CIRCLE_WORKFLOW_ID")
    return f"https://app.circleci.com/pipelines/workflows/{wf}" if wf else None


def slack_payload(n: dict) -> dict:
    """Slack incoming-webhook JSON (text + blocks)."""
    icon = {
        "fail": ":red_circle:",
        "pass": ":large_green_circle:",
        "approval": ":raised_hand:",
    }.get(n["event"], ":information_source:")
    title = {"fail": "failed", "pass": "succeeded", "approval": "is waiting for approval"}.get(
        n["event"], n["event"]
    )
    head = f"{icon} tfship {n['job'] or 'job'} {title}"
    lines = [head]
    if n["stage"]:
        lines.append(f"*Stage:* {n['stage']}")
    if n["model"] or n["version"]:
        lines.append(f"*Model:* {n['model'] or '?'} version {n['version'] or '?'}")
    if n["failed_check"]:
        lines.append(f"*Failed check:* `{n['failed_check']}`")
    if n["message"]:
        lines.append(n["message"])
    if n["evidence"]:
        lines.append(n["evidence"])
    links = [
        f"<{u}|{label}>"
        for label, u in (("build", n["build_url"]), ("workflow", n["workflow_url"]))
        if u
    ]
    if links:
        lines.append(" | ".join(links))
    text = "\n".join(lines)
    return {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}],
    }


def send(url: str, payload: dict, timeout: float = 10.0, strict: bool = False) -> bool:
    """POST the payload; False (logged) on failure unless ``strict``."""
    import requests

    try:
        resp = requests.post(url, json=payload, timeout=timeout)
        if resp.status_code >= 300:
            raise ApiError(f"webhook answered HTTP {resp.status_code}")
    except (requests.RequestException, ApiError) as exc:
        # The URL is a secret (it authorises posting): name only the failure.
        if strict:
            raise ApiError(f"notification not delivered ({type(exc).__name__})") from exc
        event(
            "notify",
            f"WARNING: notification not delivered ({type(exc).__name__}); the job's result stands",
        )
        return False
    event("notify", "sent", event_kind=payload.get("event") or "slack")
    return True


def notify(
    ws_root: Path,
    event_kind: str,
    url: str | None,
    fmt: str = "slack",
    job: str | None = None,
    stage: str | None = None,
    message: str | None = None,
    evidence_file: Path | None = None,
    strict: bool = False,
) -> dict:
    """Compose and send; returns the composed notification (also when not sent)."""
    ws = Workspace(ws_root)
    evidence = None
    if evidence_file and Path(evidence_file).exists():
        evidence = Path(evidence_file).read_text()[:2500]
    n = compose(ws, event_kind, job, stage, message, evidence)
    if not url:
        event("notify", "no webhook URL set; nothing sent", event_kind=event_kind)
        return {**n, "sent": False}
    payload = slack_payload(n) if fmt == "slack" else n
    return {**n, "sent": send(url, payload, strict=strict)}
