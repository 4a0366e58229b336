"""AWS credentials never land in output, logs, manifests, the workspace or the bucket.

The store of record, a bucket deploy, the verification and `tfship history` run with the
credentials in the environment (the only place tfship takes them from); then every byte
they produced is searched for the key id and the secret.
"""

from __future__ import annotations

import shutil

import pytest
from helpers import S3_KEY_ID, S3_SECRET, run_cli, start_serve
from tfship import s3

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def test_a_bucket_store_and_deploy_leave_no_credential_anywhere(weed, bucket, packaged, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(packaged / "workspace", root / "workspace")
    replica = start_serve(
        tmp_path,
        "--model_name",
        "digits",
        "--model_base_path",
        f"s3://{bucket}/models/digits",
        "--file_system_poll_wait_seconds",
        "0.5",
        "--max_num_load_retries",
        "3",
        "--load_retry_interval_micros",
        "500000",
        wait=False,
    )
    env = weed.env(
        TFSHIP_STORE=f"s3://{bucket}/registry",
        DEPLOY_SERVER_PATH=f"s3://{bucket}/models",
        TF_SERVING_URL=replica.rest,
    )
    outputs = []
    try:
        for args in (
            ["package", "--version", "2000"],
            ["deploy", "--latency-requests", "3", "--max-p95-ms", "5000", "--wait-seconds", "40"],
            ["test-deployed", "--latency-requests", "3", "--max-p95-ms", "5000"],
            ["history"],
            ["status"],
            ["--debug", "history", "--json"],
        ):
            r = run_cli(*args, cwd=root, env=env)
            assert r.code == 0, (args, r.err[-2000:])
            outputs += [(f"{args[0]} stdout", r.out), (f"{args[0]} stderr", r.err)]
        # refused credentials: the message names the failure, not the secret tried
        bad = {**env, "AWS_SECRET_ACCESS_KEY": "wrong-" + S3_SECRET}
        r = run_cli("--debug", "history", cwd=root, env=bad)
        assert r.code == 2 and "refused the credentials" in r.err
        outputs += [("refused stderr", r.err)]
    finally:
        replica.stop()
    outputs.append(("serve log", replica.log_text()))
    for f in (root / "workspace").rglob("*"):
        if f.is_file():
            outputs.append((str(f), f.read_bytes().decode("latin-1")))
    host = s3.S3Host(bucket, weed.client())
    for o in host.keys(""):
        outputs.append((o["Key"], host.read_bytes(o["Key"]).decode("latin-1")))
    assert len(outputs) > 40  # outputs, the workspace, the stored and deployed versions
    leaks = [
        (where, name)
        for where, text in outputs
        for name, value in (("secret", S3_SECRET), ("key id", S3_KEY_ID))
        if value in text
    ]
    assert leaks == []
