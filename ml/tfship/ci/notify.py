"""`tfship notify`: tell people what happened, in a Slack-compatible (or generic) JSON post.

It reads the workspace to say *which check failed with which numbers* (the reports every
gating stage writes), names the job, stage, model version and build URL, and posts to a
webhook URL given in an environment variable (never printed). A network failure never fails
the job unless asked (``strict``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tfship.errors import ApiError
from tfship.log import event
from tfship.report import Check
from tfship.settings import setting
from tfship.store import MODEL_NAME
from tfship.workspace import Workspace


@dataclass
class NotifySettings:
    """``tfship notify``: what to say, and where."""

    event: str = setting(
        "fail",
        "TFSHIP_NOTIFY_EVENT",
        "What happened: a failure, a pass, a challenger waiting for approval, or news.",
        choices=("fail", "pass", "approval", "info"),
    )
    webhook_env: str = setting(
        "TFSHIP_WEBHOOK_URL",
        "TFSHIP_WEBHOOK_ENV",
        "Name of the variable holding the webhook URL (a secret: never printed).",
    )
    format: str = setting(
        "slack",
        "TFSHIP_NOTIFY_FORMAT",
        "Slack incoming-webhook JSON, or a generic JSON body.",
        choices=("slack", "json"),
    )
    job: str | None = setting(None, "CIRCLE_JOB", "Job name (CircleCI sets CIRCLE_JOB).")
    stage: str | None = setting(None, "TFSHIP_STAGE", "The stage that ran.")
    message: str | None = setting(None, "TFSHIP_NOTIFY_MESSAGE", "A line to add.")
    evidence: Path | None = setting(
        None,
        "TFSHIP_NOTIFY_EVIDENCE",
        "A markdown file to include (e.g. workspace/retrain/report.md before an approval).",
        kind="file",
    )
    strict: bool = setting(False, None, "Fail (exit 7) if the post fails.", switch=True)


# Where each stage leaves its verdict, most downstream first.
VERDICTS = (
    ("test-deployed", "deployed/verify.json"),
    ("retrain", "retrain/retrain.json"),
    ("test", "eval/metrics.json"),
)


def failed_check(ws: Workspace) -> tuple[str | None, str | None]:
    """(stage, 'check: value op threshold FAILED (missed by x)') from the newest verdict."""
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
        "job": job,
        "stage": stage or failed_stage,
        "model": os.environ.get(MODEL_NAME.env),
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


@dataclass
class Notification:
    """What was composed, and whether it was sent."""

    content: dict
    sent: bool

    def to_dict(self) -> dict:
        return {**self.content, "sent": self.sent}

    def summary(self) -> str:
        check = self.content.get("failed_check")
        return f"notification {'sent' if self.sent else 'not sent'}: {self.content['event']}" + (
            f" ({check})" if check else ""
        )


def notify(ws_root: Path, s: NotifySettings) -> Notification:
    """Compose and send; returns the composed notification (also when not sent)."""
    ws = Workspace(ws_root)
    evidence = None
    if s.evidence and Path(s.evidence).exists():
        evidence = Path(s.evidence).read_text()[:2500]
    n = compose(ws, s.event, s.job, s.stage, s.message, evidence)
    url = os.environ.get(s.webhook_env)
    if not url:
        event("notify", "no webhook URL set; nothing sent", event_kind=s.event)
        return Notification(n, False)
    payload = slack_payload(n) if s.format == "slack" else n
    return Notification(n, send(url, payload, strict=s.strict))
