"""`tfship notify`: tell people what happened, in a Slack-compatible (or generic) JSON post.

It reads the workspace to say *which check failed with which numbers* (the reports every
gating stage writes), names the job, stage, model version and build URL, and posts to a
webhook URL given in an environment variable (never printed). A network failure never fails
the job unless asked (``strict``).

Whether to send is decided before anything is composed (:func:`reason_not_to_send`): a branch
that does not match the branch pattern, or an approval notice without a challenger that passed
its gates (``retrain/retrain.json``), sends nothing and says why in one line. Slack gets Block
Kit (header, sections, a preformatted champion vs challenger table, link buttons, context):
Slack renders no Markdown tables.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tfship.errors import ApiError, ConfigError
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
        "What happened: a failure, a pass, a challenger waiting for approval (sent only when "
        "the workspace's retrain verdict passed its gates), or news.",
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
        "Slack incoming-webhook JSON (Block Kit), or a generic JSON body.",
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
    mentions: str | None = setting(
        None,
        "TFSHIP_NOTIFY_MENTIONS",
        "Slack ids to mention, separated by commas or spaces: users U..., groups S..., or "
        "here/channel.",
    )
    branch_pattern: str | None = setting(
        None,
        "TFSHIP_NOTIFY_BRANCHES",
        "Notify only when CIRCLE_BRANCH matches this regular expression (the whole name, e.g. "
        "'main|release/.*'). Default: every branch.",
    )
    retention_days: int = setting(
        15,
        "TFSHIP_WORKSPACE_RETENTION_DAYS",
        "Days CircleCI keeps a workflow's workspace (Plan > Usage Controls: 1 to 15, default "
        "15): an approval notice says the hold must be approved within them.",
        min=1,
        max=15,
    )
    strict: bool = setting(False, None, "Fail (exit 7) if the post fails.", switch=True)


# Where each stage leaves its verdict, most downstream first.
VERDICTS = (
    ("test-deployed", "deployed/verify.json"),
    ("retrain", "retrain/retrain.json"),
    ("test", "eval/metrics.json"),
)
RETRAIN_VERDICT = "retrain/retrain.json"
# Block Kit limits (api.slack.com/reference/block-kit/blocks): a header's text, a section's.
HEADER_MAX, SECTION_MAX = 150, 3000
# A Slack id: users U/W..., user groups S... (the member's or group's "Copy ID").
SLACK_ID = re.compile(r"^[UWS][A-Z0-9]{2,}$")


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
                return stage, _check(c).describe()
    return None, None


def _check(c: dict) -> Check:
    return Check(c["name"], c["value"], c["op"], c["threshold"], c.get("detail", ""))


def mention_tags(text: str | None) -> list[str]:
    """``"U123, S456 here"`` -> ``["<@U123>", "<!subteam^S456>", "<!here>"]``; anything else
    is refused (a typo would silently ping no one)."""
    tags = []
    for item in re.split(r"[\s,]+", (text or "").strip()):
        if not item:
            continue
        if item.lower() in ("here", "channel"):
            tags.append(f"<!{item.lower()}>")
        elif SLACK_ID.match(item):
            tags.append(f"<!subteam^{item}>" if item[0] == "S" else f"<@{item}>")
        else:
            raise ConfigError(
                f"mention {item!r} is not a Slack user (U...), group (S...) id, here or channel",
                hint="copy the id from the person's or group's profile (... > Copy member ID) "
                "into TFSHIP_NOTIFY_MENTIONS",
            )
    return tags


def branch_skip(pattern: str | None, branch: str | None) -> str | None:
    """Why a notice is not for this branch (None: it is). The pattern matches whole names."""
    if not pattern:
        return None
    try:
        rule = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(
            f"branch pattern {pattern!r} is not a regular expression ({exc})",
            hint="e.g. TFSHIP_NOTIFY_BRANCHES='main|release/.*'",
        ) from exc
    if branch is None:
        return f"not on a branch (CIRCLE_BRANCH unset); notices go to branches matching {pattern!r}"
    if not rule.fullmatch(branch):
        return f"branch {branch!r} does not match the branch pattern {pattern!r}"
    return None


def approval_verdict(ws: Workspace) -> tuple[dict | None, str | None]:
    """(the retrain verdict, None) when a challenger passed its gates; else (None, why there
    is nothing to approve)."""
    path = ws.root / RETRAIN_VERDICT
    if not path.exists():
        return None, f"no retrain verdict ({path}): nothing to approve"
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        return None, f"the retrain verdict {path} is not JSON: nothing to approve"
    if doc.get("decision") == "no-new-data":
        return None, (
            f"no new data (version {doc.get('champion_version')} was trained on it): "
            "nothing to approve"
        )
    if doc.get("decision") != "deploy-challenger" or not doc.get("passed"):
        missed = [_check(c).describe() for c in doc.get("checks", []) if not c.get("passed")]
        return None, "the challenger failed its gates" + (
            f" ({missed[0]})" if missed else ""
        ) + ": nothing to approve"
    return doc, None


def reason_not_to_send(ws: Workspace, s: NotifySettings) -> tuple[dict | None, str | None]:
    """(the retrain verdict for an approval notice, or None; why nothing is sent, or None)."""
    skip = branch_skip(s.branch_pattern, os.environ.get("CIRCLE_BRANCH"))
    if skip:
        return None, skip
    if s.event != "approval":
        return None, None
    return approval_verdict(ws)


def approve_by(ws: Workspace, retention_days: int, now: datetime) -> datetime:
    """Until when a hold can usefully be approved: the workspace retention, counted from the
    workflow's first layer (``data/manifest.json``, written by build) if it is older than now.

    Counting from the earliest moment never promises more time than CircleCI keeps the layers.
    """
    start = now
    manifest = ws.data / "manifest.json"
    if manifest.exists():
        start = min(now, datetime.fromtimestamp(manifest.stat().st_mtime, UTC))
    return start + timedelta(days=retention_days)


def versus_rows(verdict: dict) -> list[tuple[str, float | None, float]]:
    """(metric, champion, challenger) for each number both report (champion None: cold start)."""
    champ = verdict.get("champion") or {}
    rows = []
    for key, value in (verdict.get("challenger") or {}).items():
        if not _number(value) or key == "rows":
            continue
        other = champ.get(key)
        rows.append((key, other if _number(other) else None, value))
    return rows


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def compose(
    ws: Workspace,
    event_kind: str,
    job: str | None,
    stage: str | None,
    message: str | None,
    evidence: str | None = None,
    *,
    mentions: list[str] | None = None,
    verdict: dict | None = None,
    deadline: datetime | None = None,
    retention_days: int | None = None,
) -> dict:
    """The notification content (both payload formats are built from it)."""
    version = None
    pkg = ws.package / "package.json"
    if pkg.exists():
        version = json.loads(pkg.read_text()).get("version")
    failed_stage, check = failed_check(ws) if event_kind == "fail" else (None, None)
    content = {
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
        "mentions": mentions or [],
    }
    if verdict is not None:
        content["versus"] = {
            "champion_version": verdict.get("champion_version"),
            "strategy": verdict.get("strategy"),
            "eval_rows": verdict.get("eval_rows"),
            "metrics": [
                {"metric": m, "champion": a, "challenger": b} for m, a, b in versus_rows(verdict)
            ],
            "checks": [_check(c).describe() for c in verdict.get("checks", [])],
        }
    if deadline is not None:
        content["approve_by"] = deadline.strftime("%Y-%m-%dT%H:%M:%SZ")
        content["retention_days"] = retention_days
    return content


def _workflow_url() -> str | None:
    wf = os.environ.get("CIRCLE_WORKFLOW_ID")
    return f"https://app.circleci.com/pipelines/workflows/{wf}" if wf else None


def _title(n: dict) -> str:
    icon = {
        "fail": ":red_circle:",
        "pass": ":large_green_circle:",
        "approval": ":raised_hand:",
    }.get(n["event"], ":information_source:")
    title = {"fail": "failed", "pass": "succeeded", "approval": "is waiting for approval"}.get(
        n["event"], n["event"]
    )
    return f"{icon} tfship {n['job'] or 'job'} {title}"


def _approve_by_line(n: dict) -> str:
    when = datetime.strptime(n["approve_by"], "%Y-%m-%dT%H:%M:%SZ").strftime("%Y-%m-%d %H:%M")
    return f"Approve by {when} UTC"


def _deadline_text(n: dict) -> str:
    return (
        f"*{_approve_by_line(n)}*: the workspace is kept {n['retention_days']} days, and the "
        "jobs after the hold cannot attach it later. After that, re-run the workflow from the "
        "start (Rerun > Rerun workflow from start) to retrain and ask again."
    )


def versus_table(versus: dict) -> str:
    """The champion vs challenger table, monospaced (Slack renders no Markdown tables)."""
    champ = versus.get("champion_version")
    rows = [("metric", f"champion v{champ}" if champ is not None else "champion", "challenger")]
    for m in versus["metrics"]:
        a = m["champion"]
        rows.append((m["metric"], "-" if a is None else f"{a:.4f}", f"{m['challenger']:.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}".rstrip() for r in rows
    ]
    return "\n".join(lines)


def _cut(text: str, limit: int = SECTION_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_payload(n: dict) -> dict:
    """Slack incoming-webhook JSON: ``text`` (the notification's fallback) and Block Kit
    blocks: header, the facts, the champion vs challenger table, the approval deadline, link
    buttons to the workflow and the build, and a context line."""
    head = _title(n)
    facts = []
    if n.get("mentions"):
        facts.append(" ".join(n["mentions"]))
    if n["stage"]:
        facts.append(f"*Stage:* {n['stage']}")
    if n["model"] or n["version"]:
        facts.append(f"*Model:* {n['model'] or '?'} version {n['version'] or '?'}")
    if n["failed_check"]:
        facts.append(f"*Failed check:* `{n['failed_check']}`")
    if n["message"]:
        facts.append(n["message"])
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(head, HEADER_MAX)}}
    ]
    if facts:
        blocks.append(_section("\n".join(facts)))
    versus = n.get("versus")
    if versus:
        strategy = versus.get("strategy") or "retrained"
        blocks.append(
            _section(
                f"*Champion vs challenger* ({strategy}, both on the same "
                f"{versus.get('eval_rows')} held-out examples):\n```{versus_table(versus)}```"
            )
        )
        if versus["checks"]:
            checks = "\n".join(f"• `{c}`" for c in versus["checks"])
            blocks.append(_section(f"*Gates:*\n{checks}"))
    elif n["evidence"]:
        blocks.append(_section(f"```{n['evidence']}```"))
    if n.get("approve_by"):
        blocks.append(_section(_deadline_text(n)))
    buttons = [
        {"type": "button", "text": {"type": "plain_text", "text": label}, "url": url}
        for label, url in (("Open workflow", n["workflow_url"]), ("Build", n["build_url"]))
        if url
    ]
    if buttons:
        blocks.append({"type": "actions", "elements": buttons})
    context = [
        f"{label} {value}"
        for label, value in (("branch", n.get("branch")), ("commit", (n.get("commit") or "")[:8]))
        if value
    ]
    links = [
        f"<{u}|{label}>"
        for label, u in (("build", n["build_url"]), ("workflow", n["workflow_url"]))
        if u
    ]
    if context or links:
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": " | ".join(context + links)}],
            }
        )
    # The fallback text is what a phone's notification shows: the deadline belongs in it.
    deadline = [_approve_by_line(n)] if n.get("approve_by") else []
    text = "\n".join([head, *facts, *deadline] + ([" | ".join(links)] if links else []))
    return {"text": text, "blocks": blocks}


def _section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _cut(text)}}


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
            # from None: the chained requests error's text holds the URL (--debug prints it)
            raise ApiError(f"notification not delivered ({type(exc).__name__})") from None
        event(
            "notify",
            f"WARNING: notification not delivered ({type(exc).__name__}); the job's result stands",
        )
        return False
    event("notify", "sent", event_kind=payload.get("event") or "slack")
    return True


@dataclass
class Notification:
    """What was composed, whether it was sent, and why not when nothing was sent on purpose."""

    content: dict
    sent: bool
    skipped: str | None = None

    def to_dict(self) -> dict:
        return {**self.content, "sent": self.sent, "skipped": self.skipped}

    def summary(self) -> str:
        if self.skipped:
            return f"notification not sent ({self.content['event']}): {self.skipped}"
        check = self.content.get("failed_check")
        return f"notification {'sent' if self.sent else 'not sent'}: {self.content['event']}" + (
            f" ({check})" if check else ""
        )


def notify(ws_root: Path, s: NotifySettings, now: datetime | None = None) -> Notification:
    """Decide, compose and send; returns the notification (also when nothing was sent)."""
    ws = Workspace(ws_root)
    mentions = mention_tags(s.mentions)  # bad input fails before anything else
    verdict, skip = reason_not_to_send(ws, s)
    if skip:
        return Notification({"event": s.event}, False, skip)
    evidence = None
    if s.evidence and Path(s.evidence).exists():
        evidence = Path(s.evidence).read_text()[:2500]
    deadline = (
        approve_by(ws, s.retention_days, now or datetime.now(UTC))
        if s.event == "approval"
        else None
    )
    n = compose(
        ws,
        s.event,
        s.job,
        s.stage,
        s.message,
        evidence,
        mentions=mentions,
        verdict=verdict,
        deadline=deadline,
        retention_days=s.retention_days,
    )
    url = os.environ.get(s.webhook_env)
    if not url:
        return Notification(n, False, f"${s.webhook_env} is not set: nothing sent")
    payload = slack_payload(n) if s.format == "slack" else n
    return Notification(n, send(url, payload, strict=s.strict))
