"""`tfship serve` version lifecycle: discovery, availability-preserving swaps, failed loads."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest
import requests
from helpers import HALF_PLUS_TWO

pytestmark = pytest.mark.timeout(180)


def _status(s, name="m"):
    return {
        v["version"]: (v["state"], v["status"]["error_code"])
        for v in requests.get(f"{s.rest}/v1/models/{name}", timeout=5).json()[
            "model_version_status"
        ]
    }


def _wait(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _install(src, base, version):
    """Copy under a non-numeric name, then rename: the deploy protocol."""
    tmp = base / f".incoming-{version}"
    shutil.copytree(src, tmp)
    os.rename(tmp, base / str(version))


def test_new_version_swaps_in_without_a_failed_request(serve, tmp_path):
    base = tmp_path / "m"
    base.mkdir()
    _install(HALF_PLUS_TWO / "00000123", base, 1)
    (base / "notaversion").mkdir()
    (base / "1.partial").mkdir()
    s = serve(
        "--model_name",
        "m",
        "--model_base_path",
        str(base),
        "--file_system_poll_wait_seconds",
        "0.2",
    )
    assert _status(s) == {"1": ("AVAILABLE", "OK")}

    failures, answered_by, stop = [], set(), threading.Event()

    def load():
        session = requests.Session()
        while not stop.is_set():
            r = session.post(
                f"{s.rest}/v1/models/m:predict", json={"instances": [[1.0]]}, timeout=5
            )
            if r.status_code != 200:
                failures.append(r.text)
            st = session.get(f"{s.rest}/v1/models/m", timeout=5).json()
            answered_by.add(
                max(
                    int(v["version"])
                    for v in st["model_version_status"]
                    if v["state"] == "AVAILABLE"
                )
            )

    t = threading.Thread(target=load)
    t.start()
    try:
        time.sleep(0.5)
        _install(HALF_PLUS_TWO / "00000124", base, 2)
        assert _wait(lambda: _status(s).get("1", ("",))[0] == "END")
        time.sleep(0.3)
    finally:
        stop.set()
        t.join()
    assert failures == []
    assert answered_by == {1, 2}
    assert _status(s) == {"2": ("AVAILABLE", "OK"), "1": ("END", "OK")}
    log = s.log_text()
    assert (
        "[serve] available model=m version=2" in log and "[serve] unloaded model=m version=1" in log
    )


def test_a_version_that_fails_to_load_ends_with_its_error_and_the_old_keeps_serving(
    serve, tmp_path
):
    base = tmp_path / "m"
    base.mkdir()
    _install(HALF_PLUS_TWO / "00000123", base, 5)
    s = serve(
        "--model_name",
        "m",
        "--model_base_path",
        str(base),
        "--file_system_poll_wait_seconds",
        "0.2",
        "--max_num_load_retries",
        "0",
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    _install(broken, base, 6)
    assert _wait(lambda: _status(s).get("6", ("",))[0] == "END")
    state, code = _status(s)["6"]
    assert code != "OK"
    assert _status(s)["5"] == ("AVAILABLE", "OK")
    r = requests.post(f"{s.rest}/v1/models/m:predict", json={"instances": [[2.0]]}, timeout=5)
    assert r.json() == {"predictions": [[3.0]]}
    assert "load failed model=m version=6" in s.log_text()


def test_removing_the_newest_version_brings_the_previous_one_back(serve, tmp_path):
    base = tmp_path / "m"
    base.mkdir()
    _install(HALF_PLUS_TWO / "00000123", base, 1)
    _install(HALF_PLUS_TWO / "00000124", base, 2)
    s = serve(
        "--model_name",
        "m",
        "--model_base_path",
        str(base),
        "--file_system_poll_wait_seconds",
        "0.2",
    )
    assert _status(s) == {"2": ("AVAILABLE", "OK")}
    os.rename(base / "2", tmp_path / "rejected-2")  # what rollback does
    assert _wait(
        lambda: _status(s).get("1", ("",))[0] == "AVAILABLE" and _status(s)["2"][0] == "END"
    )


def test_our_package_is_warmed_up_on_load(serve, packaged):
    s = serve("--model_name", "digits", "--model_base_path", str(packaged / "store" / "digits"))
    assert _status(s, "digits") == {"1000": ("AVAILABLE", "OK")}
    assert "available model=digits version=1000 warmup=2" in s.log_text()


def test_bad_config_file_fails_start_up_as_tf_serving_does(cli, tmp_path):
    """main.cc: "Failed to start server. Error: <status>" on stdout, exit status 255;
    util/proto_util.h ParseProtoTextFile names the file. tfship adds one line with the fix."""
    conf = tmp_path / "bad.config"
    conf.write_text("model_config_list { config { nme: 'x' } }")
    r = cli("serve", "--model_config_file", str(conf), "--rest_api_port", "0")
    assert r.code == 255
    assert r.out == (
        f"Failed to start server. Error: INVALID_ARGUMENT: Invalid protobuf file: '{conf}'\n"
    )
    assert r.err_lines[-1].startswith("tfship serve: could not start: Invalid protobuf file")
    assert "ModelServerConfig text proto" in r.err_lines[-1]


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def _listening(port: int) -> list[str]:
    """Local addresses the kernel lists as LISTEN on ``port`` (IPv4 and IPv6 tables)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for row in list(fh)[1:]:
                local, state = row.split()[1], row.split()[3]
                addr, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:
                    found.append(addr)
    return found


def test_serve_listens_on_loopback_only_by_default(serve, tmp_path):
    (tmp_path / "m").mkdir()
    _install(HALF_PLUS_TWO / "00000123", tmp_path / "m", 1)
    s = serve("--model_name", "m", "--model_base_path", str(tmp_path / "m"))
    for port in (int(s.rest.rsplit(":", 1)[1]), int(s.grpc.rsplit(":", 1)[1])):
        # 127.0.0.1 in the kernel's byte order, plain or IPv4-mapped in the IPv6 table; a
        # wildcard bind would be 00000000 / 32 zeros.
        found = _listening(port)
        assert found and set(found) <= LOOPBACK, (port, found)
