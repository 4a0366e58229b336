"""ci.notify's rules, as pure functions: whom to mention, which branches, whether there is
anything to approve, until when, and how a notice reads in Slack Block Kit."""

from __future__ import annotations

import copy
import json
import os
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from helpers import ROOT
from tfship.ci.notify import (
    approval_verdict,
    approve_by,
    branch_skip,
    compose,
    mention_tags,
    slack_payload,
)
from tfship.ci.workflow import plan
from tfship.errors import ConfigError
from tfship.workspace import Workspace

NOW = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
VERDICT = {
    "decision": "deploy-challenger",
    "passed": True,
    "champion_version": None,  # a cold start: nothing was serving
    "strategy": "from-scratch",
    "eval_rows": 120,
    "champion": None,
    "challenger": {"r2": 0.8123, "mae": 1.25, "rows": 120, "per_class": {"recall": [1.0]}},
    "checks": [{"name": "r2", "value": 0.8123, "op": ">=", "threshold": 0.5, "passed": True}],
}


def test_mentions_become_slack_tags_and_anything_else_is_refused():
    assert mention_tags("U012AB3CD, S0614TZR7  W0ABCDEF1,here") == [
        "<@U012AB3CD>",
        "<!subteam^S0614TZR7>",
        "<@W0ABCDEF1>",
        "<!here>",
    ]
    assert mention_tags(None) == [] and mention_tags(" ") == []
    with pytest.raises(ConfigError, match="mention 'alice' is not a Slack user"):
        mention_tags("U012AB3CD alice")


@pytest.mark.parametrize(
    ("pattern", "branch", "skipped"),
    [
        (None, "anything", False),
        ("main|release/.*", "main", False),
        ("main|release/.*", "release/2.1", False),
        ("main|release/.*", "main-old", True),  # the whole name must match
        ("main", None, True),  # a tag build has no branch
    ],
)
def test_the_branch_pattern_matches_whole_branch_names(pattern, branch, skipped):
    assert (branch_skip(pattern, branch) is not None) == skipped


def test_a_branch_pattern_that_is_no_regular_expression_is_refused():
    with pytest.raises(ConfigError, match=r"branch pattern 'release/\(' is not a regular"):
        branch_skip("release/(", "main")


def _workspace(tmp_path, verdict):
    ws = Workspace(tmp_path / "workspace")
    (ws.root / "retrain").mkdir(parents=True)
    if verdict is not None:
        (ws.root / "retrain" / "retrain.json").write_text(json.dumps(verdict))
    return ws


def test_only_an_accepted_challenger_is_something_to_approve(tmp_path):
    assert approval_verdict(_workspace(tmp_path / "a", VERDICT)) == (VERDICT, None)
    failed = {**VERDICT, "decision": "keep-champion", "passed": False}
    failed["checks"] = [{**VERDICT["checks"][0], "value": 0.2, "passed": False}]
    verdict, why = approval_verdict(_workspace(tmp_path / "b", failed))
    assert verdict is None
    assert why == "the challenger failed its gates (r2: 0.2 >= 0.5 FAILED (missed by 0.3)): " + (
        "nothing to approve"
    )
    stale = {"decision": "no-new-data", "champion_version": 4}
    assert approval_verdict(_workspace(tmp_path / "c", stale))[1] == (
        "no new data (version 4 was trained on it): nothing to approve"
    )
    assert "no retrain verdict" in approval_verdict(_workspace(tmp_path / "d", None))[1]


def test_the_approval_window_counts_from_the_workflows_first_layer(tmp_path):
    ws = _workspace(tmp_path, VERDICT)
    assert approve_by(ws, 15, NOW) == NOW + timedelta(days=15)
    (ws.root / "data").mkdir()
    manifest = ws.root / "data" / "manifest.json"
    manifest.write_text("{}")
    built = NOW - timedelta(hours=5)  # build persisted its layer five hours before this job
    os.utime(manifest, (built.timestamp(), built.timestamp()))
    assert approve_by(ws, 15, NOW) == built + timedelta(days=15)
    later = NOW + timedelta(hours=1)  # a clock ahead never buys more time
    os.utime(manifest, (later.timestamp(), later.timestamp()))
    assert approve_by(ws, 15, NOW) == NOW + timedelta(days=15)


def test_an_approval_reads_as_block_kit_with_the_table_preformatted(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCLE_WORKFLOW_ID", "wf-9")
    monkeypatch.delenv("CIRCLE_BUILD_URL", raising=False)
    ws = _workspace(tmp_path, VERDICT)
    n = compose(
        ws,
        "approval",
        "retrain",
        "retrain",
        "x" * 5000,
        mentions=["<!here>"],
        verdict=VERDICT,
        deadline=NOW + timedelta(days=15),
        retention_days=15,
    )
    payload = slack_payload(n)
    blocks = payload["blocks"]
    assert [b["type"] for b in blocks] == [
        "header",
        "section",  # mentions, stage, the message (cut to what a section takes)
        "section",  # champion vs challenger
        "section",  # gates
        "section",  # the approval window
        "actions",
        "context",
    ]
    assert len(blocks[1]["text"]["text"]) == 3000 and blocks[1]["text"]["text"].endswith("…")
    assert "x" * 5000 in payload["text"]  # the fallback text keeps it whole
    assert "\nApprove by 2026-12-17 09:30 UTC\n" in payload["text"]
    table = blocks[2]["text"]["text"].split("```")[1].splitlines()
    assert table == [
        "metric  champion  challenger",  # a cold start: no champion version
        "r2             -      0.8123",
        "mae            -      1.2500",
    ]
    assert "from-scratch, both on the same 120 held-out examples" in blocks[2]["text"]["text"]
    assert blocks[3]["text"]["text"] == "*Gates:*\n• `r2: 0.8123 >= 0.5 ok`"
    assert blocks[4]["text"]["text"].startswith("*Approve by 2026-12-17 09:30 UTC*")
    assert blocks[5]["elements"] == [
        {
            "type": "button",
            "text": {"type": "plain_text", "text": "Open workflow"},
            "url": "https://app.circleci.com/pipelines/workflows/wf-9",
        }
    ]


def test_a_long_job_name_is_cut_to_what_a_header_takes(tmp_path):
    n = compose(Workspace(tmp_path / "empty"), "pass", "j" * 200, None, None)
    header = slack_payload(n)["blocks"][0]["text"]["text"]
    assert len(header) == 150 and header.endswith("…")


@pytest.mark.parametrize(
    ("example", "workflow", "steps"),
    [
        ("retrain_on_new_data", "retrain-on-new-data", ["Notify (fail)"]),
        ("nightly_retrain_with_approval", "retrain-deploy", ["Notify (approval)", "Notify (fail)"]),
    ],
)
def test_the_retrain_job_has_an_approval_notice_only_where_a_hold_follows(example, workflow, steps):
    orb = yaml.safe_load((ROOT / "orb" / "orb.yml").read_text())
    usage = copy.deepcopy(orb["examples"][example]["usage"])
    usage["orbs"]["tfship"] = orb
    jobs, runs = plan(usage, workflow, {"retrain": True}, "main")
    [retrain] = [j for j in jobs if j.name == "tfship/retrain"]
    names = [s["run"]["name"] for s in retrain.steps if isinstance(s, dict) and "run" in s]
    assert runs and [n for n in names if n.startswith("Notify")] == steps
