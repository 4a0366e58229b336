"""`tfship serve` on an ``s3://`` base path, against a real S3 service (SeaweedFS).

Held to tensorflow_model_server built with tensorflow-io's S3 file system
(``tensorflow_io/core/filesystems/s3/s3_filesystem.cc``: the S3_* variables, ``Stat``,
``GetChildren``), ``sources/storage_path/file_system_storage_path_source.cc`` (which children
are versions; a failed poll is logged and polled again) and
``session_bundle/oss/session_bundle_util.cc`` (a version without ``saved_model.pb``).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from helpers import HALF_PLUS_TWO, ROOT, S3_KEY_ID, S3_SECRET, start_serve
from tfship import s3
from tfship.server.filesystem import plugin_env

pytestmark = pytest.mark.timeout(240)

V123 = HALF_PLUS_TWO / "00000123"  # y = 0.5x + 2
V124 = HALF_PLUS_TWO / "00000124"  # the same model: which version answers is in its metadata
HALF_PLUS_TWO_OF = [2.5, 3.0, 4.5]  # the predictions for [1, 2, 5]
POLL = ("--file_system_poll_wait_seconds", "1")
STARTUP = 120.0  # seconds a server may take to import TensorFlow on a loaded 2-core machine
WRONG_SECRET = "not-the-secret-0123456789abcdef"


def wait_for(check, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except (requests.RequestException, KeyError, ValueError):
            pass
        time.sleep(0.1)
    return False


def states(served, model: str = "m") -> dict[str, tuple[str, str, str]]:
    doc = requests.get(f"{served.rest}/v1/models/{model}", timeout=5).json()
    return {
        v["version"]: (v["state"], v["status"]["error_code"], v["status"]["error_message"])
        for v in doc["model_version_status"]
    }


def predict(served, model: str = "m") -> list[float]:
    r = requests.post(
        f"{served.rest}/v1/models/{model}:predict", json={"instances": [1.0, 2.0, 5.0]}, timeout=5
    )
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def serving_version(served, model: str = "m") -> str:
    """The version that answers a request naming no version (the latest AVAILABLE)."""
    doc = requests.get(f"{served.rest}/v1/models/{model}/metadata", timeout=5).json()
    return doc["model_spec"]["version"]


def refused(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


def upload(host: s3.S3Host, src: Path, key: str, skip: tuple[str, ...] = ()) -> None:
    """Upload a SavedModel folder below ``key``, ``saved_model.pb`` last (unless skipped)."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == "saved_model.pb")
    for p in files:
        if p.name not in skip:
            host.s3.upload_file(str(p), host.bucket, f"{key}/{p.relative_to(src).as_posix()}")


def copies(tmp: Path) -> list[Path]:
    """The local copies of bucket versions that servers using ``tmp`` as TMPDIR hold."""
    return sorted(p for root in tmp.glob("tfship-serve-*") for p in root.iterdir())


@pytest.fixture
def s3env(weed, bucket, monkeypatch, tmp_path):
    """This process's environment as a TF Serving host's: (an S3Host on the bucket, TMPDIR).

    The scheme is in S3_ENDPOINT, as tensorflow-io needs it (S3_USE_HTTPS is not read), and
    the servers get their own TMPDIR so that the test can see their cache of versions.
    """
    monkeypatch.setenv("S3_ENDPOINT", f"http://{weed.endpoint}")
    monkeypatch.delenv("S3_USE_HTTPS", raising=False)
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    return s3.S3Host(bucket, weed.client()), tmp


def test_a_bucket_is_polled_like_a_folder_and_a_new_version_swaps_in(serve, s3env):
    host, tmp = s3env
    base = f"s3://{host.bucket}/models/m"
    upload(host, V123, "models/m/00000123")
    s = serve("--model_name", "m", "--model_base_path", base, *POLL, "--max_num_load_retries", "0")
    assert predict(s) == HALF_PLUS_TWO_OF and serving_version(s) == "123"
    assert states(s) == {"123": ("AVAILABLE", "OK", "")}
    assert len(copies(tmp)) == 1

    # Not loadable: a non-numeric upload prefix (ignored), and a numeric folder whose
    # saved_model.pb is not there yet (fails to load, as upstream; 123 keeps serving).
    upload(host, V124, "models/m/.incoming-124")
    upload(host, V124, "models/m/130", skip=("saved_model.pb",))
    assert wait_for(lambda: states(s)["130"][0] == "END")
    state, code, message = states(s)["130"]
    assert code == "NOT_FOUND", message
    assert message.startswith("Specified file path does not appear to contain a SavedModel")
    assert message.endswith(f"Specified file path: {base}/130")
    assert set(states(s)) == {"123", "130"}  # .incoming-124 is no version
    assert predict(s) == HALF_PLUS_TWO_OF and serving_version(s) == "123"
    assert len(copies(tmp)) == 1  # the failed attempt's copy is gone

    # A broken saved_model.pb fails the load; the error names the bucket, not the local copy.
    host.s3.put_object(Bucket=host.bucket, Key="models/m/135/saved_model.pb", Body=b"garbage")
    assert wait_for(lambda: states(s)["135"][0] == "END")
    state, code, message = states(s)["135"]
    assert code != "OK" and f"{base}/135" in message and "tfship-serve-" not in message, message
    assert serving_version(s) == "123" and len(copies(tmp)) == 1

    # A whole version (saved_model.pb last) swaps in at a poll; 123 unloads, its copy too.
    upload(host, V124, "models/m/140")
    assert wait_for(lambda: states(s)["140"][0] == "AVAILABLE")
    assert wait_for(lambda: states(s)["123"][0] == "END")
    assert predict(s) == HALF_PLUS_TWO_OF and serving_version(s) == "140"
    assert len(copies(tmp)) == 1
    log = s.log_text()
    assert f"copied from bucket model=m version=140 source={base}/140 files=" in log
    assert S3_SECRET not in log and S3_KEY_ID not in log
    assert s.stop() == 0
    assert list(tmp.glob("tfship-serve-*")) == []  # the cache leaves with the server


def test_a_version_whose_saved_model_pb_comes_last_loads_on_a_retry(serve, s3env, tmp_path):
    """The config file's base_path may be s3:// too; a load retry sees the finished copy."""
    host, _ = s3env
    base = f"s3://{host.bucket}/prod/hpt"
    upload(host, V123, "prod/hpt/00000123")
    conf = tmp_path / "models.config"
    conf.write_text(
        'model_config_list { config { name: "hpt" '
        f'base_path: "{base}" model_platform: "tensorflow" }} }}'
    )
    s = serve(
        "--model_config_file",
        str(conf),
        *POLL,
        "--max_num_load_retries",
        "5",
        "--load_retry_interval_micros",
        "1000000",
    )
    upload(host, V124, "prod/hpt/124", skip=("saved_model.pb",))
    assert wait_for(lambda: "load failed model=hpt version=124" in s.log_text())
    assert states(s, "hpt")["124"] == ("LOADING", "OK", "")  # retrying, not failed yet
    assert predict(s, "hpt") == HALF_PLUS_TWO_OF and serving_version(s, "hpt") == "123"
    host.s3.upload_file(str(V124 / "saved_model.pb"), host.bucket, "prod/hpt/124/saved_model.pb")
    assert wait_for(lambda: states(s, "hpt")["124"] == ("AVAILABLE", "OK", ""))
    assert predict(s, "hpt") == HALF_PLUS_TWO_OF and serving_version(s, "hpt") == "124"


@pytest.mark.parametrize("case", ["wrong secret", "no bucket yet", "S3_USE_HTTPS=0"])
def test_a_bucket_it_cannot_read_is_logged_and_polled_again(
    case, weed, s3env, monkeypatch, tmp_path
):
    """Start-up waits, ports closed, logging the failed poll (upstream's words) once."""
    host, _ = s3env
    upload(host, V123, "m/1")
    bucket = f"{host.bucket}-later" if case == "no bucket yet" else host.bucket
    if case == "wrong secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRONG_SECRET)
    if case == "S3_USE_HTTPS=0":  # TensorFlow's old S3 variables: a bare endpoint is https
        monkeypatch.setenv("S3_ENDPOINT", weed.endpoint)
        monkeypatch.setenv("S3_USE_HTTPS", "0")
    base = f"s3://{bucket}/m"
    s = start_serve(tmp_path, "--model_name", "m", "--model_base_path", base, *POLL, wait=False)
    try:
        expected = (
            "FileSystemStoragePathSource encountered a filesystem access error: Could not find "
            f"base path {base} for servable m with error NOT_FOUND: Object {base} does not exist"
        )
        # the first poll comes once TensorFlow has been imported: slow on a busy machine
        assert wait_for(lambda: expected in s.log_text(), STARTUP), s.log_text()
        assert s.proc.poll() is None and refused(s.rest)
        log = s.log_text()
        assert S3_SECRET not in log and WRONG_SECRET not in log and S3_KEY_ID not in log
        if case == "wrong secret":
            assert "the S3 service refused the credentials (" in log
        if case == "S3_USE_HTTPS=0":
            assert "S3_USE_HTTPS is not read by TF Serving's S3 file system" in log
        if case == "no bucket yet":  # it keeps polling: the bucket appears, the model loads
            weed.make_bucket(bucket)
            upload(s3.S3Host(bucket, weed.client()), V123, "m/1")
            s.wait_listening()
            assert predict(s) == HALF_PLUS_TWO_OF
    finally:
        status = s.stop()
    assert status == 0  # a clean stop: SIGTERM ends the wait


def test_the_s3_variables_are_read_as_tensorflow_io_reads_them():
    env = {
        "S3_ENDPOINT": "minio.internal:9000",
        "S3_USE_HTTPS": "0",  # not read since tensorflow/io#1343
        "S3_VERIFY_SSL": "false",  # only a leading '0' turns verification off
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-central-1",  # the AWS SDK for C++ looks at this first
    }
    assert s3.endpoint(plugin_env(env)) == s3.Endpoint(
        "https://minio.internal:9000", True, "eu-central-1"
    )
    env = {"S3_ENDPOINT": "http://minio.internal:9000", "S3_VERIFY_SSL": "0"}
    assert s3.endpoint(plugin_env(env)) == s3.Endpoint(
        "http://minio.internal:9000", False, "us-east-1"
    )


def test_a_local_base_path_does_not_import_boto3(tmp_path):
    (tmp_path / "1").mkdir()
    code = (
        "import sys\n"
        "from tfship.server.filesystem import FileSystems\n"
        "fs = FileSystems()\n"
        f"fs.file_exists({str(tmp_path)!r})\n"
        f"assert fs.get_children({str(tmp_path)!r}) == ['1']\n"
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_the_installers_bucket_mode_hands_tf_serving_these_variables(tmp_path):
    """tools/install_server.sh --base-path s3://...: the variables read above, secrets by name."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AWS_ACCESS_KEY_ID": S3_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
    }
    args = ["--model-name", "digits", "--base-path", "s3://models-bucket/prod/", "--dry-run"]
    install = [str(ROOT / "tools" / "install_server.sh"), *args]
    r = subprocess.run(
        ["bash", *install, "--image", "registry.example/tf-serving-s3:2.21"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    docker = next(line for line in r.stdout.splitlines() if line.startswith("+ docker run"))
    words = docker.split()
    assert "MODEL_BASE_PATH=s3://models-bucket/prod" in words and "MODEL_NAME=digits" in words
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(words)  # by name only
    assert S3_SECRET not in r.stdout and S3_KEY_ID not in r.stdout
    assert "--mount" not in words and "+ mkdir" not in r.stdout
    assert "s3://models-bucket/prod/digits/<number>/" in r.stdout

    r = subprocess.run(
        ["bash", *install, "--image", "me/tfs:1", "--s3-endpoint", "http://minio:9000"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0 and "S3_ENDPOINT=http://minio:9000" in r.stdout.split()
    # What the installer configures is what `tfship serve` (and tensorflow-io) read.
    assert s3.endpoint(plugin_env({"S3_ENDPOINT": "http://minio:9000"})).url == "http://minio:9000"
    for extra, message in [
        ([], "stock TF Serving images cannot read s3://"),
        (["--image", "me/tfs:1", "--s3-endpoint", "minio:9000"], "reads no S3_USE_HTTPS"),
    ]:
        r = subprocess.run(["bash", *install, *extra], capture_output=True, text=True, env=env)
        assert r.returncode == 2 and message in r.stderr, r.stderr
