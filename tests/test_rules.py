"""The pure rules, apart from the acts around them: retrain's decision, the fleet's host list
and its one-version rule, CircleCI pipeline parameters, what a notification says."""

from __future__ import annotations

import json

import pytest
from tfship.ci.api import parse_params
from tfship.ci.notify import compose, failed_check, slack_payload
from tfship.errors import ConfigError, DeployError
from tfship.report import failed
from tfship.retrain import RetrainSettings, decide
from tfship.targets import HostSpec, TargetSettings, one_version, parse_hosts, status_table
from tfship.workspace import Workspace

# ---- retrain.decide ------------------------------------------------------------------------


def metrics(accuracy: float, recall: list[float], support: list[int] | None = None) -> dict:
    return {
        "accuracy": accuracy,
        "per_class": {"recall": recall, "support": support or [10] * len(recall)},
    }


S = RetrainSettings(tolerance=0.01, min_accuracy=0.9, max_class_drop=0.05)


def verdict(champ, chall, s=S) -> tuple[bool, list[str]]:
    checks = decide(champ, chall, s)
    return not failed(checks), [c.name for c in failed(checks)]


def test_a_challenger_as_good_as_the_champion_ships():
    assert verdict(metrics(0.95, [0.9, 1.0]), metrics(0.95, [0.9, 1.0])) == (True, [])


def test_tolerance_is_inclusive_and_one_step_past_it_fails():
    champ = metrics(0.95, [0.95, 0.95])
    assert verdict(champ, metrics(0.94, [0.95, 0.95]))[0]  # exactly champion - tolerance
    ok, why = verdict(champ, metrics(0.9399, [0.95, 0.95]))
    assert not ok and why == ["challenger accuracy vs champion"]


def test_the_absolute_floor_holds_even_without_a_champion():
    assert verdict(None, metrics(0.91, [0.9])) == (True, [])
    assert verdict(None, metrics(0.89, [0.9])) == (False, ["challenger accuracy (absolute)"])
    assert [c.name for c in decide(None, metrics(0.95, [1.0]), S)] == [
        "challenger accuracy (absolute)"
    ]


def test_a_class_that_loses_recall_blocks_a_better_model():
    champ = metrics(0.95, [0.9, 0.9, 0.9])
    ok, why = verdict(champ, metrics(0.97, [1.0, 0.84, 1.0]))
    assert not ok and why == ["recall drop[class 1]"]
    assert verdict(champ, metrics(0.97, [1.0, 0.85, 1.0]))[0]  # a drop of exactly the limit


def test_a_class_absent_from_the_eval_set_is_not_judged():
    champ = metrics(0.95, [0.9, 0.0], support=[10, 0])
    checks = decide(champ, metrics(0.95, [0.9, 0.0]), S)
    assert [c.name for c in checks if c.name.startswith("recall")] == ["recall drop[class 0]"]


def test_decide_refuses_metrics_of_different_class_counts():
    with pytest.raises(ValueError):
        decide(metrics(0.9, [1.0, 1.0]), metrics(0.9, [1.0]), S)


# ---- targets: the host list and the fleet's one version ------------------------------------


def test_hostnames_become_a_fleet_with_the_shared_settings():
    s = TargetSettings(hostname=" a.example, b.example ,", username="deploy", ssh_port=2222)
    s.base_path = "/srv/models"
    assert s.several
    assert parse_hosts(s) == [
        HostSpec("a.example", "deploy", 2222, "/srv/models", "http://a.example:8501"),
        HostSpec("b.example", "deploy", 2222, "/srv/models", "http://b.example:8501"),
    ]


def test_a_single_host_keeps_its_serving_url_and_a_fleet_does_not_share_one():
    one = TargetSettings(hostname="a.example")
    one.serving.url = "http://lb.example:80"
    assert not one.several
    assert parse_hosts(one)[0].serving_url == "http://lb.example:80"
    two = TargetSettings(hostname="a.example,b.example")
    two.serving.url = "http://lb.example:80"
    assert [h.serving_url for h in parse_hosts(two)] == [
        "http://a.example:8501",
        "http://b.example:8501",
    ]


def test_a_hosts_file_names_each_host_and_skips_comments(tmp_path):
    f = tmp_path / "hosts"
    f.write_text(
        "# the fleet\n"
        "ops@10.0.0.1:2201 /srv/a http://10.0.0.1:8501\n"
        "\n"
        "10.0.0.2 /srv/b http://10.0.0.2:9000  # default user and port\n"
    )
    s = TargetSettings(hosts_file=f, username="deploy", ssh_port=22)
    assert parse_hosts(s) == [
        HostSpec("10.0.0.1", "ops", 2201, "/srv/a", "http://10.0.0.1:8501"),
        HostSpec("10.0.0.2", "deploy", 22, "/srv/b", "http://10.0.0.2:9000"),
    ]
    assert parse_hosts(s)[0].label == "ops@10.0.0.1:2201"


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("10.0.0.1 /srv/a", ":1: expected 'user@host:port base_path serving_url'"),
        ("ops@10.0.0.1:ssh /srv/a http://x", ":1: bad address 'ops@10.0.0.1:ssh'"),
        ("ops@:22 /srv/a http://x", ":1: bad address 'ops@:22'"),
    ],
)
def test_a_bad_hosts_line_names_the_file_and_line(tmp_path, line, needle):
    f = tmp_path / "hosts"
    f.write_text(line + "\n")
    with pytest.raises(ConfigError) as err:
        parse_hosts(TargetSettings(hosts_file=f))
    assert str(err.value).startswith(f"{f}{needle}")


def test_no_hosts_at_all_is_a_setting_error(tmp_path):
    f = tmp_path / "hosts"
    f.write_text("# nobody yet\n")
    with pytest.raises(ConfigError, match="no deploy hosts"):
        parse_hosts(TargetSettings(hosts_file=f))


def test_a_fleet_serves_one_version_or_the_error_names_each_host():
    rows = [{"host": "a", "serving": 3}, {"host": "b", "serving": 3}]
    assert one_version(rows) == 3
    assert one_version([]) is None
    mixed = [{"host": "a", "serving": 3}, {"host": "b", "serving": 2}]
    with pytest.raises(DeployError, match=r"mixed versions \(a=3, b=2\)") as err:
        one_version(mixed)
    assert "tfship rollback --to VERSION" in str(err.value)


def test_status_table_says_whether_the_fleet_is_consistent():
    rows = [
        {"host": "a", "on_disk": [2, 3], "serving": 3, "state": "AVAILABLE"},
        {"host": "b", "on_disk": [], "serving": None, "state": "error: unreachable"},
    ]
    text = status_table(rows)
    assert "| a | 2, 3 | 3 | AVAILABLE |" in text and "| b | - | None |" in text
    assert text.endswith("fleet: MIXED: 3, None")
    assert status_table(rows[:1]).endswith("fleet: consistent")


# ---- ci.api.parse_params -------------------------------------------------------------------


def test_pipeline_parameters_take_circleci_types():
    got = parse_params(("retrain=true", "FORCE=False", "epochs=20", "offset=-3", "uri=s3://b/k=v"))
    assert got == {"retrain": True, "FORCE": False, "epochs": 20, "offset": -3, "uri": "s3://b/k=v"}
    assert parse_params(("note=",)) == {"note": ""}
    assert parse_params(("v=1.5", "v=2")) == {"v": 2}  # the last one wins, as click's order


@pytest.mark.parametrize("bad", ["retrain", "=true", ""])
def test_a_parameter_without_key_equals_value_is_refused(bad):
    with pytest.raises(ConfigError, match=f"--param {bad!r}: expected key=value"):
        parse_params((bad,))


# ---- ci.notify: what a notification says --------------------------------------------------


def failing_workspace(tmp_path):
    ws = Workspace(tmp_path / "workspace")
    (ws.root / "eval").mkdir(parents=True)
    checks = [
        {"name": "accuracy", "value": 0.8123, "op": ">=", "threshold": 0.9, "passed": False},
        {"name": "recall[3]", "value": 0.7, "op": ">=", "threshold": 0.8, "passed": False},
    ]
    (ws.root / "eval" / "metrics.json").write_text(json.dumps({"checks": checks}))
    (ws.root / "package").mkdir()
    (ws.root / "package" / "package.json").write_text(json.dumps({"version": 17}))
    return ws


def test_a_failure_names_the_stage_and_the_first_failed_check(tmp_path, monkeypatch):
    ws = failing_workspace(tmp_path)
    assert failed_check(ws) == ("test", "accuracy: 0.8123 >= 0.9 FAILED (missed by 0.0877)")
    for name, value in {
        "MODEL_NAME": "digits",
        "CIRCLE_BUILD_URL": "https://circleci.com/gh/acme/models/42",
        "CIRCLE_WORKFLOW_ID": "wf-1",
        "CIRCLE_BRANCH": "main",
        "CIRCLE_SHA1": "abc123",
    }.items():
        monkeypatch.setenv(name, value)
    n = compose(ws, "fail", "train-and-gate", None, "nightly retrain", None)
    assert n["stage"] == "test" and n["version"] == 17 and n["model"] == "digits"
    assert n["workflow_url"] == "https://app.circleci.com/pipelines/workflows/wf-1"
    text = slack_payload(n)["text"]
    assert text.splitlines()[0] == ":red_circle: tfship train-and-gate failed"
    assert "*Stage:* test" in text and "*Model:* digits version 17" in text
    assert "*Failed check:* `accuracy: 0.8123 >= 0.9 FAILED (missed by 0.0877)`" in text
    assert "<https://circleci.com/gh/acme/models/42|build> | " in text


def test_a_pass_or_approval_reports_no_failed_check(tmp_path, monkeypatch):
    ws = failing_workspace(tmp_path)  # stale verdicts must not leak into a success message
    for name in ("MODEL_NAME", "CIRCLE_BUILD_URL", "CIRCLE_WORKFLOW_ID"):
        monkeypatch.delenv(name, raising=False)
    n = compose(ws, "approval", "hold", "retrain", None)
    assert n["failed_check"] is None and n["stage"] == "retrain"
    text = slack_payload(n)["text"]
    assert text.splitlines()[0] == ":raised_hand: tfship hold is waiting for approval"
    assert "Failed check" not in text and "build>" not in text


def test_a_long_message_is_cut_to_what_a_slack_block_takes(tmp_path):
    n = compose(Workspace(tmp_path / "empty"), "pass", "deploy", "deploy", "x" * 5000)
    payload = slack_payload(n)
    assert len(payload["blocks"][1]["text"]["text"]) == 3000  # [0] is the header
    assert payload["text"].endswith("x" * 100)  # the fallback text keeps it whole


def test_a_new_pixel_range_is_a_change_clients_must_make():
    from tfship.deploy import input_change

    new = {"golden": {}, "input_range": [0.0, 255.0]}
    old = {"golden": {}}  # packaged before tfship served 0-255: it took [0, 1]
    assert input_change(old, new) == ([0.0, 1.0], [0.0, 255.0])
    assert input_change(new, old) == ([0.0, 255.0], [0.0, 1.0])  # a rollback to it
    assert input_change(new, dict(new)) is None
    assert input_change(None, new) is None  # not tfship's package: unknown, not a change
    table = {"kind": "table", "golden": {}}
    assert input_change(table, {**table, "input_range": [0.0, 255.0]}) is None
