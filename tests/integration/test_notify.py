"""`tfship notify` posts what failed, with its numbers, to a webhook; never fails the job.

An approval notice goes out only when the workspace's retrain verdict says a challenger passed
its gates, in Slack Block Kit; a branch that does not match the pattern sends nothing. Each
case runs the real command against a real HTTP receiver on loopback."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import clean_env, free_port, run_cli, train_failing_model


def _check(name, value, op, threshold):
    passed = value >= threshold if op == ">=" else value <= threshold
    return {"name": name, "value": value, "op": op, "threshold": threshold, "passed": passed}


# retrain/retrain.json as tfship retrain writes it (ml/tfship/retrain.py), one per outcome.
ACCEPTED = {
    "decision": "deploy-challenger",
    "passed": True,
    "champion_version": 3,
    "strategy": "fine-tune",
    "eval_rows": 540,
    "champion": {"accuracy": 0.9412, "loss": 0.2101, "rows": 540},
    "challenger": {"accuracy": 0.9633, "loss": 0.1502, "rows": 540},
    "checks": [
        _check("accuracy vs champion", 0.9633, ">=", 0.9312),
        _check("accuracy", 0.9633, ">=", 0.9),
    ],
}
REJECTED = {
    **ACCEPTED,
    "decision": "keep-champion",
    "passed": False,
    "challenger": {"accuracy": 0.41, "loss": 1.9, "rows": 540},
    "checks": [_check("accuracy vs champion", 0.41, ">=", 0.9312)],
}
NO_NEW_DATA = {"decision": "no-new-data", "champion_version": 3, "data_hash": "ab" * 32}


def workspace_with(tmp_path: Path, verdict: dict | None) -> Path:
    ws = tmp_path / "workspace"
    (ws / "retrain").mkdir(parents=True)
    if verdict is not None:
        (ws / "retrain" / "retrain.json").write_text(json.dumps(verdict))
    (ws / "retrain" / "report.md").write_text("| metric | champion | challenger |\n|---|---|---|")
    return ws


def approval(tmp_path, env, *extra):
    return run_cli(
        "notify",
        "--event",
        "approval",
        "--workspace",
        str(tmp_path / "workspace"),
        "--evidence",
        str(tmp_path / "workspace" / "retrain" / "report.md"),
        *extra,
        cwd=tmp_path,
        env=env,
    )


def test_a_failed_gate_is_posted_with_the_check_and_its_numbers(packaged, tmp_path, webhook):
    url, received = webhook
    work = tmp_path / "w"
    shutil.copytree(packaged / "workspace", work / "workspace")
    env = clean_env(
        TFSHIP_WEBHOOK_URL=url,
        CIRCLE_JOB="test",
        MODEL_NAME="digits",
        CIRCLE_BUILD_URL="https://circleci.com/gh/acme/models/42",
    )
    train_failing_model(work, env)
    assert run_cli("test", cwd=work, env=env).code == 3
    r = run_cli("notify", "--event", "fail", cwd=work, env=env)
    assert r.code == 0, r.err
    assert url not in r.out + r.err  # the webhook URL is a secret
    text = received[0]["text"]
    assert "tfship test failed" in text and "*Stage:* test" in text
    assert "accuracy: 0." in text and ">= 0.9 FAILED (missed by" in text
    assert "version 1000" in text and "https://circleci.com/gh/acme/models/42" in text
    header, facts = received[0]["blocks"][:2]
    assert header["type"] == "header" and header["text"]["text"].endswith("tfship test failed")
    assert facts["text"]["type"] == "mrkdwn" and "FAILED (missed by" in facts["text"]["text"]


def test_an_accepted_challenger_is_announced_in_block_kit(tmp_path, webhook):
    url, received = webhook
    workspace_with(tmp_path, ACCEPTED)
    env = clean_env(
        TFSHIP_WEBHOOK_URL=url,
        CIRCLE_JOB="retrain",
        CIRCLE_WORKFLOW_ID="wf-1",
        CIRCLE_BRANCH="main",
        CIRCLE_BUILD_URL="https://circleci.com/gh/acme/models/7",
        TFSHIP_NOTIFY_MENTIONS="U012AB3CD, S0614TZR7",
    )
    before = datetime.now(UTC)
    r = approval(tmp_path, env, "--retention-days", "10")
    after = datetime.now(UTC)
    assert r.code == 0, r.err
    assert r.out.strip() == "notification sent: approval" and url not in r.out + r.err
    [body] = received
    assert body["text"].startswith(":raised_hand: tfship retrain is waiting for approval")
    assert "<@U012AB3CD> <!subteam^S0614TZR7>" in body["text"]  # the notification pings them
    kinds = [b["type"] for b in body["blocks"]]
    assert kinds[0] == "header" and kinds[-2:] == ["actions", "context"]
    sections = "\n".join(b["text"]["text"] for b in body["blocks"] if b["type"] == "section")
    table = re.search(r"```(.*?)```", sections, re.S).group(1).splitlines()
    assert table[0].split() == ["metric", "champion", "v3", "challenger"]
    assert table[1].split() == ["accuracy", "0.9412", "0.9633"]
    assert table[2].split() == ["loss", "0.2101", "0.1502"]
    assert "|---|" not in json.dumps(body["blocks"])  # Slack renders no Markdown tables
    # No build layer in this workspace: ten days counted from now, to the minute.
    when = re.search(r"\*Approve by (\S+ \S+) UTC\*", sections).group(1)
    deadline = datetime.strptime(when, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    assert before + timedelta(days=10, minutes=-1) < deadline <= after + timedelta(days=10)
    assert "the workspace is kept 10 days" in sections and "Rerun workflow from start" in sections
    [button, _] = body["blocks"][-2]["elements"]
    assert button["url"] == "https://app.circleci.com/pipelines/workflows/wf-1"


@pytest.mark.parametrize(
    ("verdict", "why"),
    [
        (None, "no retrain verdict"),
        (NO_NEW_DATA, "no new data (version 3 was trained on it): nothing to approve"),
        (
            REJECTED,
            "the challenger failed its gates (accuracy vs champion: 0.41 >= 0.9312 FAILED",
        ),
    ],
    ids=["no-verdict", "no-new-data", "rejected"],
)
def test_nothing_to_approve_sends_nothing_and_says_why(tmp_path, webhook, verdict, why):
    url, received = webhook
    workspace_with(tmp_path, verdict)
    r = approval(tmp_path, clean_env(TFSHIP_WEBHOOK_URL=url))
    assert r.code == 0, r.err
    assert received == []
    [line] = r.out.splitlines()
    assert line.startswith("notification not sent (approval): ") and why in line


def test_a_branch_outside_the_pattern_sends_nothing(tmp_path, webhook):
    url, received = webhook
    workspace_with(tmp_path, ACCEPTED)
    pattern = ("--branch-pattern", "main|release/.*")
    r = approval(tmp_path, clean_env(TFSHIP_WEBHOOK_URL=url, CIRCLE_BRANCH="main-old"), *pattern)
    assert r.code == 0 and received == []
    assert r.out.strip() == (
        "notification not sent (approval): branch 'main-old' does not match the branch "
        "pattern 'main|release/.*'"
    )
    r = approval(tmp_path, clean_env(TFSHIP_WEBHOOK_URL=url, CIRCLE_BRANCH="release/2"), *pattern)
    assert r.code == 0 and len(received) == 1


def test_a_mention_that_is_not_a_slack_id_is_refused_before_sending(tmp_path, webhook):
    url, received = webhook
    workspace_with(tmp_path, ACCEPTED)
    r = approval(tmp_path, clean_env(TFSHIP_WEBHOOK_URL=url), "--mentions", "U012AB3CD,@alice")
    assert r.code == 2 and received == []
    assert len(r.err_lines) == 1 and "mention '@alice' is not a Slack user" in r.err_lines[0]


def test_generic_json_format_keeps_the_evidence_and_adds_the_table(tmp_path, webhook):
    url, received = webhook
    workspace_with(tmp_path, ACCEPTED)
    env = clean_env(TFSHIP_WEBHOOK_URL=url, CIRCLE_WORKFLOW_ID="wf-1")
    r = approval(tmp_path, env, "--format", "json")
    assert r.code == 0, r.err
    [body] = received
    assert body["event"] == "approval" and "| metric | champion |" in body["evidence"]
    assert body["workflow_url"] == "https://app.circleci.com/pipelines/workflows/wf-1"
    assert body["versus"]["metrics"][0] == {
        "metric": "accuracy",
        "champion": 0.9412,
        "challenger": 0.9633,
    }
    assert body["retention_days"] == 15 and body["approve_by"].endswith("Z")


def test_an_unreachable_webhook_does_not_fail_the_job_unless_strict(tmp_path):
    env = clean_env(TFSHIP_WEBHOOK_URL=f"http://127.0.0.1:{free_port()}/hook")
    r = run_cli("notify", "--event", "fail", cwd=tmp_path, env=env)
    assert r.code == 0 and "notification not delivered" in r.err
    r = run_cli("notify", "--event", "fail", "--strict", cwd=tmp_path, env=env)
    assert r.code == 7 and "notification not delivered" in r.err_lines[-1]
    assert "127.0.0.1" not in r.err_lines[-1]
