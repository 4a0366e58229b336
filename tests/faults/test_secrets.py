"""Secrets never land in logs, reports, manifests, the workspace or artifacts."""

from __future__ import annotations

import http.server
import subprocess
import sys

import pytest
from helpers import ROOT, TRAIN_EPOCHS, loopback_http, serve_model, start_sshd

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


@pytest.fixture
def webhook():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    with loopback_http(Handler) as base:
        yield f"{base}/services/T0SECRET/B0SECRET/xyzzySECRET"


def test_a_full_workflow_run_leaves_no_secret_anywhere(tmp_path, webhook):
    sshd = start_sshd(tmp_path / "sshd")
    base = tmp_path / "models"
    (base / "digits").mkdir(parents=True)
    served = serve_model(tmp_path, base / "digits")
    try:
        key_text = sshd.client_key.read_text()
        secrets = {
            "DEPLOY_SERVER_SSH_KEY": key_text,
            "CIRCLE_TOKEN": "circle-token-0123456789abcdef",
            "TFSHIP_WEBHOOK_URL": webhook,
            "DEPLOY_SERVER_PASSWORD": "hunter2-password-never-used",
        }
        env = sshd.env(
            DEPLOY_SERVER_PATH=str(base),
            TF_SERVING_URL=served.rest,
            TFSHIP_EPOCHS=str(TRAIN_EPOCHS),
            **secrets,
        )
        del env["DEPLOY_SERVER_SSH_KEY_FILE"]  # the key arrives as text, as on CircleCI
        scratch = tmp_path / "scratch"  # the run's temp folder: a key file left would be here
        scratch.mkdir()
        env["TMPDIR"] = str(scratch)
        out = tmp_path / "ci"
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "tfship",
                "--debug",
                "ci",
                "local",
                "build-deploy",
                "--config",  # config.yml is the setup config; the workflows live here
                ".circleci/continue.yml",
                "--branch",
                "main",
                "--out",
                str(out),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=500,
        )
        assert p.returncode == 0, p.stderr[-3000:]
        needles = {name: value for name, value in secrets.items()}
        needles["key body"] = key_text.strip().splitlines()[1]
        needles["webhook path"] = "xyzzySECRET"
        texts = [("stdout", p.stdout), ("stderr", p.stderr)]
        produced = [
            out / "layers",
            out / "artifacts",
            out / "test-results",
            base,
            scratch,
            *out.glob("jobs/*/log.txt"),
            *out.glob("jobs/*/bash_env"),
            *out.glob("jobs/*/home"),
            *out.glob("jobs/*/project/workspace"),
            *out.glob("jobs/*/project/store"),
            *out.glob("jobs/*/project/.env"),
        ]
        for root in produced:  # not the checkout copies: they hold this test's source
            for f in [root] if root.is_file() else root.rglob("*"):
                if f.is_file():
                    texts.append((str(f), f.read_bytes().decode("latin-1")))
        assert len(texts) > 100  # logs, workspace layers, artifacts, packages, manifests
        leaks = [
            (where, name)
            for where, text in texts
            for name, value in needles.items()
            if value in text
        ]
        assert leaks == []
    finally:
        served.stop()
        sshd.stop()
