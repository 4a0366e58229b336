"""`tfship ci` against a local CircleCI stand-in checked against the OpenAPI document."""

from __future__ import annotations

import json

import numpy as np
import pytest
from circleci_standin import GOOD_TOKEN
from helpers import clean_env, run_cli

pytestmark = pytest.mark.timeout(120)
SLUG = "gh/acme/models"


def ci(api, *args, token=GOOD_TOKEN, cwd=None):
    env = clean_env(CIRCLE_TOKEN=token, CIRCLE_PROJECT_SLUG=SLUG, CIRCLECI_API_URL=api.url)
    r = run_cli("ci", *args, cwd=cwd or ".", env=env, timeout=60)
    assert token not in r.out and token not in r.err  # the token is never printed
    return r


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
    posted = json.loads(api.state.requests[0]["body"])
    assert posted == {
        "branch": "main",
        "parameters": {"retrain": True, "data_uri": "https://d/x.npz"},
    }
    assert api.state.requests[0]["path"] == "/api/v2/project/gh/acme/models/pipeline"


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


def test_reject_cancels_the_approval_job(api):
    wf = json.loads(ci(api, "trigger", "--param", "retrain=true", "--wait", "--json").out)[
        "workflows"
    ][0]["id"]
    r = ci(api, "approve", wf, "--reject", "--poll", "0.05")
    assert r.code == 0, r.err
    assert len(api.state.canceled) == 1 and api.state.approved == []


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
    api.state.throttle = 2
    api.state.retry_after = "0.2"
    r = ci(api, "trigger")
    assert r.code == 0, r.err
    assert len(api.state.requests) == 3
    assert r.err.count("HTTP 429, retrying in 0.2 s") == 2


def test_a_429_storm_gives_up_with_a_clear_error(api):
    api.state.throttle = 100
    api.state.retry_after = "0.01"
    r = ci(api, "trigger")
    assert r.code == 7 and "rate limited and still limited after retries" in r.err_lines[-1]
    assert len(api.state.requests) == 6  # 1 + 5 retries: bounded


def test_a_bad_token_says_which_token_is_needed(api):
    r = ci(api, "trigger", token="project-token-xyz")
    assert r.code == 7
    line = r.err_lines[-1]
    assert "HTTP 401: Invalid token provided." in line and "personal API token" in line


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


def test_watch_data_triggers_once_per_snapshot_and_survives_a_crash(api, tmp_path):
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    np.savez(snaps / "2026-11-01.npz", images=np.zeros((2, 2, 2)), labels=np.zeros(2))
    state = tmp_path / "state.json"
    watch = ["watch-data", str(snaps), "--state", str(state), "--json"]
    r = ci(api, *watch, cwd=tmp_path)
    assert r.code == 0, r.err
    first = json.loads(r.out)["polls"][0]
    assert first["action"] == "triggered" and first["data_uri"].endswith(first["sha256"])
    triggered = json.loads(api.state.requests[-1]["body"])["parameters"]
    assert triggered == {"retrain": True, "data_uri": first["data_uri"]}
    assert json.loads(ci(api, *watch, cwd=tmp_path).out)["polls"][0]["action"] == "none"
    # A crash between the trigger and the state write: the pipeline is found, not re-triggered.
    state.unlink()
    again = json.loads(ci(api, *watch, cwd=tmp_path).out)["polls"][0]
    assert again["action"] == "already-triggered-found"
    np.savez(snaps / "2026-11-02.npz", images=np.ones((2, 2, 2)), labels=np.zeros(2))
    assert json.loads(ci(api, *watch, cwd=tmp_path).out)["polls"][0]["action"] == "triggered"
    posts = [r for r in api.state.requests if r["method"] == "POST"]
    assert len(posts) == 2


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
