"""`tfship notify` posts what failed, with its numbers, to a webhook; never fails the job."""

from __future__ import annotations

import http.server
import json
import shutil
import threading

import pytest
from helpers import clean_env, free_port, run_cli, train_failing_model


@pytest.fixture
def webhook():
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/T0000/B0000/secret", received
    server.shutdown()


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
    assert received[0]["blocks"][0]["text"]["type"] == "mrkdwn"


def test_generic_json_format_and_approval_evidence(packaged, tmp_path, webhook):
    url, received = webhook
    evidence = tmp_path / "report.md"
    evidence.write_text(
        "| metric | champion | challenger |\n|---|---|---|\n| accuracy | 0.9 | 0.95 |"
    )
    env = clean_env(TFSHIP_WEBHOOK_URL=url, CIRCLE_WORKFLOW_ID="wf-1")
    r = run_cli(
        "notify",
        "--event",
        "approval",
        "--format",
        "json",
        "--evidence",
        str(evidence),
        "--workspace",
        str(packaged / "workspace"),
        cwd=tmp_path,
        env=env,
    )
    assert r.code == 0, r.err
    body = received[0]
    assert body["event"] == "approval" and "| accuracy | 0.9 | 0.95 |" in body["evidence"]
    assert body["workflow_url"] == "https://app.circleci.com/pipelines/workflows/wf-1"


def test_an_unreachable_webhook_does_not_fail_the_job_unless_strict(tmp_path):
    env = clean_env(TFSHIP_WEBHOOK_URL=f"http://127.0.0.1:{free_port()}/hook")
    r = run_cli("notify", "--event", "fail", cwd=tmp_path, env=env)
    assert r.code == 0 and "notification not delivered" in r.err
    r = run_cli("notify", "--event", "fail", "--strict", cwd=tmp_path, env=env)
    assert r.code == 7 and "notification not delivered" in r.err_lines[-1]
    assert "127.0.0.1" not in r.err_lines[-1]
