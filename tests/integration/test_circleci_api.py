"""`tfship ci` against a local CircleCI stand-in checked against the OpenAPI document.

Assertions about what a pipeline was triggered with read the stand-in's own record
(``state.pipeline_params``) or the request sent, never a field of an answer: CircleCI's
answers do not carry them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from circleci_standin import GOOD_TOKEN
from helpers import clean_env, run_cli

pytestmark = pytest.mark.timeout(120)
SLUG = "gh/acme/models"


def ci_env(api, token: str = GOOD_TOKEN, **extra: str) -> dict[str, str]:
    return clean_env(
        CIRCLE_TOKEN=token, CIRCLE_PROJECT_SLUG=SLUG, CIRCLECI_API_URL=api.url, **extra
    )


def ci(api, *args: str, token: str = GOOD_TOKEN, cwd=None):
    r = run_cli("ci", *args, cwd=cwd or ".", env=ci_env(api, token), timeout=60)
    assert token not in r.out and token not in r.err  # the token is never printed
    return r


def sent(api, operation: str) -> list[dict]:
    """The requests the stand-in received for one operationId."""
    return [r for r in api.state.requests if r["operation"] == operation]


def test_trigger_with_parameters_and_follow_to_workflows(api):
    r = ci(
        api,
        "trigger",
        "--param",
        "retrain=true",
        "--param",
        "data_uri=https://d/x.npz",
        "--wait",
        "--json",
    )
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert out["workflows"][0]["name"] == "retrain-deploy"
    [post] = sent(api, "triggerPipeline")
    assert json.loads(post["body"]) == {
        "branch": "main",
        "parameters": {"retrain": True, "data_uri": "https://d/x.npz"},
    }
    assert post["path"] == "/api/v2/project/gh/acme/models/pipeline"
    made = out["pipeline"]["id"]
    assert api.state.pipeline_params[made] == {"retrain": True, "data_uri": "https://d/x.npz"}


def test_a_tag_trigger_runs_on_the_tag(api):
    r = ci(api, "trigger", "--tag", "v1.2.0", "--wait", "--json")
    assert r.code == 0, r.err
    [post] = sent(api, "triggerPipeline")
    assert json.loads(post["body"]) == {"tag": "v1.2.0"}
    made = api.state.pipelines[json.loads(r.out)["pipeline"]["id"]]
    assert made["vcs"]["tag"] == "v1.2.0" and "branch" not in made["vcs"]


def test_an_undeclared_parameter_fails_the_pipeline_as_on_circleci(api, tmp_path):
    # From a folder without the config (a data pipeline's host): nothing to check it against.
    r = ci(api, "trigger", "--param", "retrian=true", "--wait", cwd=tmp_path)
    assert r.code == 7
    assert "has errors: Unexpected argument(s): retrian" in r.err_lines[-1]


def test_trigger_parameters_take_the_types_the_config_declares(api, tmp_path):
    (tmp_path / ".circleci").mkdir()
    (tmp_path / ".circleci" / "config.yml").write_text(
        "version: 2.1\nparameters:\n  retrain: {type: boolean, default: false}\n"
        '  data_uri: {type: string, default: ""}\n'
    )
    r = ci(api, "trigger", "--param", "retrain=true", "--param", "data_uri=42", cwd=tmp_path)
    assert r.code == 0, r.err
    [post] = sent(api, "triggerPipeline")
    # "42" stays a string: CircleCI refuses a number for a string parameter.
    assert json.loads(post["body"])["parameters"] == {"retrain": True, "data_uri": "42"}
    r = ci(api, "trigger", "--param", "retrian=true", cwd=tmp_path)
    assert r.code == 2 and "declares no pipeline parameter 'retrian'" in r.err_lines[-1]
    assert len(sent(api, "triggerPipeline")) == 1  # refused before anything was sent


def test_parameters_circleci_would_refuse_are_refused_before_sending(api):
    r = ci(api, "trigger", "--param", "data_uri=" + "x" * 513)
    assert r.code == 2
    assert "data_uri is 513 characters; CircleCI takes at most 512" in r.err_lines[-1]
    assert api.state.requests == []


def test_pipeline_run_endpoint_and_its_no_pipeline_answer(api):
    definition = "2338d0ae-5541-4bbf-88a2-55e9f7281f80"
    r = ci(api, "trigger", "--definition-id", definition, "--param", "retrain=true")
    assert r.code == 0, r.err
    assert api.state.requests[-1]["path"] == "/api/v2/project/gh/acme/models/pipeline/run"
    api.state.run_message = "No pipeline created: the config's when conditions are false."
    r = ci(api, "trigger", "--definition-id", definition)
    assert r.code == 7
    assert "created no pipeline: No pipeline created" in r.err_lines[-1]


def test_approve_waits_for_a_late_approval_job(api):
    trigger = json.loads(ci(api, "trigger", "--param", "retrain=true", "--wait", "--json").out)
    wf = trigger["workflows"][0]["id"]
    api.state.job_polls = 0
    api.state.approval_after_polls = 3
    r = ci(api, "approve", wf, "--poll", "0.05")
    assert r.code == 0, r.err
    assert r.out.startswith(f"approved hold in workflow {wf}")
    assert len(api.state.approved) == 1 and api.state.job_polls >= 4


def test_reject_cancels_the_workflow_not_the_approval_job(api):
    wf = json.loads(ci(api, "trigger", "--param", "retrain=true", "--wait", "--json").out)[
        "workflows"
    ][0]["id"]
    api.state.cancel_delay_requests = 2  # the workflow reads on_hold a moment after the 202
    r = ci(api, "approve", wf, "--reject", "--poll", "0.05", "--json")
    assert r.code == 0, r.err
    assert [c["path"] for c in sent(api, "cancelWorkflow")] == [f"/api/v2/workflow/{wf}/cancel"]
    assert sent(api, "cancelJobByJobID") == [] and api.state.approved == []
    out = json.loads(r.out)
    assert out["action"] == "rejected" and out["workflow"]["status"] == "canceled"
    assert len(sent(api, "getWorkflowById")) >= 2  # it waited for the cancel to take effect
    hold = next(j for j in api.state.jobs[wf] if j["type"] == "approval")
    assert hold["status"] == "canceled"


def test_reject_says_what_it_did(api):
    wf = json.loads(ci(api, "trigger", "--param", "retrain=true", "--wait", "--json").out)[
        "workflows"
    ][0]["id"]
    r = ci(api, "approve", wf, "--reject", "--poll", "0.05")
    assert r.code == 0, r.err
    assert r.out.strip() == (
        f"rejected hold in workflow {wf}: workflow canceled, nothing after the hold runs"
    )


def test_reject_without_a_hold_fails_and_cancels_nothing(api):
    wf = json.loads(ci(api, "trigger", "--wait", "--json").out)["workflows"][0]["id"]
    r = ci(api, "approve", wf, "--reject", "--timeout", "0.3", "--poll", "0.05")
    assert r.code == 7 and "no approval job 'hold' on hold" in r.err_lines[-1]
    assert sent(api, "cancelWorkflow") == []
    assert api.state.workflows[wf]["status"] == "running"


def test_an_approval_that_never_appears_is_a_bounded_failure(api):
    wf = json.loads(ci(api, "trigger", "--wait", "--json").out)["workflows"][0]["id"]
    r = ci(api, "approve", wf, "--timeout", "0.3", "--poll", "0.05")
    assert r.code == 7 and "no approval job 'hold' on hold" in r.err_lines[-1]


def test_status_follows_pagination(api):
    pid = json.loads(ci(api, "trigger", "--param", "retrain=true", "--json").out)["pipeline"]["id"]
    api.state.page_size = 1
    r = ci(api, "status", pid, "--json")
    assert r.code == 0, r.err
    jobs = json.loads(r.out)["workflows"][0]["jobs"]
    assert [j["name"] for j in jobs] == ["build", "retrain", "test", "hold"]


def test_429_is_retried_honouring_retry_after(api):
    api.state.faults_for = "triggerPipeline"
    api.state.throttle = 2
    api.state.retry_after = "0.2"
    r = ci(api, "trigger")
    assert r.code == 0, r.err
    assert len(sent(api, "triggerPipeline")) == 3
    assert r.err.count("HTTP 429, retrying in 0.2 s") == 2
    assert len(api.state.pipelines) == 1  # a 429 did no work: sent again, not looked up


def test_a_429_storm_gives_up_with_a_clear_error(api):
    api.state.faults_for = "triggerPipeline"
    api.state.throttle = 100
    api.state.retry_after = "0.01"
    r = ci(api, "trigger")
    assert r.code == 7 and "rate limited and still limited after retries" in r.err_lines[-1]
    assert len(sent(api, "triggerPipeline")) == 6  # 1 + 5 retries: bounded


def test_a_bad_token_says_which_token_is_needed(api):
    r = ci(api, "trigger", token="project-token-xyz")
    assert r.code == 7
    line = r.err_lines[-1]
    assert "HTTP 401: Invalid token provided." in line and "personal API token" in line
    assert sent(api, "triggerPipeline") == []


def test_no_token_is_a_setting_error():
    r = run_cli("ci", "trigger", "--project", SLUG, cwd=".", env=clean_env())
    assert r.code == 2 and "CIRCLE_TOKEN is not set" in r.err_lines[-1]


def test_malformed_json_is_a_clear_error(api):
    pid = json.loads(ci(api, "trigger", "--json").out)["pipeline"]["id"]
    api.state.malformed = 1
    r = ci(api, "status", pid)
    assert r.code == 7 and "not JSON" in r.err_lines[-1]


def test_schedule_create_list_delete(api):
    r = ci(api, "schedule", "create", "--hour", "3", "--day", "MON", "--day", "THU", "--json")
    assert r.code == 0, r.err
    created = json.loads(r.out)
    body = json.loads(api.state.requests[-1]["body"])
    assert body["timetable"] == {"per-hour": 1, "hours-of-day": [3], "days-of-week": ["MON", "THU"]}
    assert body["parameters"] == {"branch": "main", "retrain": True}
    assert created["id"] in ci(api, "schedule", "list").out
    assert ci(api, "schedule", "delete", created["id"]).code == 0
    assert ci(api, "schedule", "list").out.strip() == "no schedules"


def snapshots(tmp_path: Path, *days: str) -> Path:
    folder = tmp_path / "snaps"
    folder.mkdir(parents=True, exist_ok=True)
    for i, day in enumerate(days):
        np.savez(folder / f"{day}.npz", images=np.full((2, 2, 2), i), labels=np.zeros(2))
    return folder


def test_watch_data_triggers_once_per_snapshot(api, tmp_path):
    snaps = snapshots(tmp_path, "2026-11-01")
    state = tmp_path / "state.json"
    watch = ["watch-data", str(snaps), "--state", str(state), "--json"]
    r = ci(api, *watch, cwd=tmp_path)
    assert r.code == 0, r.err
    first = json.loads(r.out)["polls"][0]
    assert first["action"] == "triggered" and first["data_uri"].endswith(first["sha256"])
    expected = {"retrain": True, "data_uri": first["data_uri"]}
    assert json.loads(sent(api, "triggerPipeline")[-1]["body"])["parameters"] == expected
    assert api.state.pipeline_params[first["pipeline"]["id"]] == expected
    assert json.loads(ci(api, *watch, cwd=tmp_path).out)["polls"][0]["action"] == "none"
    snapshots(tmp_path, "2026-11-01", "2026-11-02")
    assert json.loads(ci(api, *watch, cwd=tmp_path).out)["polls"][0]["action"] == "triggered"
    assert len(sent(api, "triggerPipeline")) == 2


def crash_after_the_post(api, tmp_path: Path, watch: list[str]) -> str:
    """Run a poll whose trigger is done but whose answer is held back, and kill it meanwhile
    (so nothing after the POST runs); return the pipeline it made."""
    api.state.faults_for = "triggerPipeline"
    api.state.slow, api.state.slow_seconds = 1, 60.0
    env = ci_env(api, TFSHIP_API_TIMEOUT="120")
    cmd = [sys.executable, "-m", "tfship", "ci", *watch]
    with subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL) as poll:
        deadline = time.monotonic() + 30
        while not api.state.pipelines and time.monotonic() < deadline:
            time.sleep(0.05)
        poll.kill()
    return next(pid for pid, p in api.state.pipelines.items() if p["number"] == 1)


def test_watch_data_crash_after_the_post_before_the_state_write(api, tmp_path):
    state = tmp_path / "state.json"
    watch = ["watch-data", str(snapshots(tmp_path, "2026-11-01")), "--state", str(state), "--json"]
    made = crash_after_the_post(api, tmp_path, watch)
    record = json.loads(state.read_text())
    assert record["triggered"] == {} and len(record["pending"]) == 1
    again = ci(api, *watch, cwd=tmp_path)
    assert again.code == 0, again.err
    found = json.loads(again.out)["polls"][0]
    assert found["action"] == "already-triggered-found" and found["pipeline"]["id"] == made
    assert len(sent(api, "triggerPipeline")) == 1
    assert json.loads(ci(api, *watch, cwd=tmp_path).out)["polls"][0]["action"] == "none"


def test_watch_data_after_a_crash_does_not_guess_between_two_pipelines(api, tmp_path):
    state = tmp_path / "state.json"
    watch = ["watch-data", str(snapshots(tmp_path, "2026-11-01")), "--state", str(state)]
    api.state.concurrent_triggers = [{}]  # another of your triggers on main, same moment
    crash_after_the_post(api, tmp_path, watch)
    r = ci(api, *watch, cwd=tmp_path)
    assert r.code == 7
    line = r.err_lines[-1]
    assert "watch-data: cannot tell which pipeline the trigger on branch main made" in line
    assert f"{state} holds this trigger as pending" in line
    assert len(sent(api, "triggerPipeline")) == 1
    assert len(json.loads(state.read_text())["pending"]) == 1  # kept for a person to settle


def test_watch_data_skips_while_another_poll_holds_the_lock(api, tmp_path):
    snaps = snapshots(tmp_path, "2026-11-01")
    state = tmp_path / "state.json"
    with open(tmp_path / "state.json.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        r = ci(api, "watch-data", str(snaps), "--state", str(state), "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    poll = json.loads(r.out)["polls"][0]
    assert poll["action"] == "none" and "another poll holds" in poll["reason"]
    assert api.state.requests == [] and not state.exists()


def test_watch_data_refuses_a_data_uri_circleci_would_refuse(api, tmp_path):
    deep = tmp_path.joinpath(*["d" * 100] * 5)  # the data_uri would exceed 512 characters
    snaps = snapshots(deep, "2026-11-01")
    r = ci(api, "watch-data", str(snaps), "--state", str(tmp_path / "s.json"), cwd=tmp_path)
    assert r.code == 2
    assert "pipeline parameter data_uri is" in r.err_lines[-1] and "at most 512" in r.err_lines[-1]
    assert api.state.requests == []


def test_watch_data_reads_an_https_style_listing(api, tmp_path):
    import http.server
    import threading

    class Listing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = (
                b"https://data.example.com/snaps/2026-11-01.npz " + b"a" * 64 + b"\n"
                b"https://data.example.com/snaps/2026-11-02.npz " + b"b" * 64 + b"\n"
            )
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Listing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/listing.txt"
        r = ci(api, "watch-data", url, "--state", str(tmp_path / "s.json"), "--json", cwd=tmp_path)
        assert r.code == 0, r.err
        poll = json.loads(r.out)["polls"][0]
        assert (
            poll["data_uri"] == "https://data.example.com/snaps/2026-11-02.npz#sha256=" + "b" * 64
        )
    finally:
        server.shutdown()


def test_watch_data_over_ssh_uses_the_deploy_hosts_ssh_settings(api, sshd, tmp_path):
    """An ssh:// source is reached as the deploy hosts are: the key from --ssh-key-env's
    variable (never a file), known_hosts checked, --accept-unknown-host-key honoured."""
    snaps = snapshots(tmp_path, "2026-11-01", "2026-11-02")
    source = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{snaps}"
    key = {"WATCH_KEY": sshd.client_key.read_text()}
    strange = tmp_path / "known_hosts_without_it"
    strange.write_text("")

    def watch(*flags: str):
        args = ["ci", "watch-data", source, "--state", str(tmp_path / "s.json"), "--json"]
        return run_cli(*args, *flags, env=ci_env(api, **key), cwd=tmp_path, timeout=60)

    refused = watch("--ssh-key-env", "WATCH_KEY", "--known-hosts", str(strange))
    assert refused.code == 9, refused.err
    assert "not in" in refused.err_lines[-1] and "known_hosts" in refused.err_lines[-1]
    assert sent(api, "triggerPipeline") == []

    r = watch(
        "--ssh-key-env", "WATCH_KEY", "--known-hosts", str(strange), "--accept-unknown-host-key"
    )
    assert r.code == 0, r.err
    poll = json.loads(r.out)["polls"][0]
    newest = snaps / "2026-11-02.npz"
    assert poll["action"] == "triggered"
    assert poll["data_uri"] == (
        f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{newest}"
        f"#sha256={hashlib.sha256(newest.read_bytes()).hexdigest()}"
    )

    (tmp_path / "s.json").unlink()
    trusted = watch("--ssh-key-env", "WATCH_KEY", "--known-hosts", str(sshd.known_hosts))
    assert trusted.code == 0, trusted.err
