"""Stage 7 against `tfship serve`: what is served must match the package."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import pytest

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def served_package(packaged, tmp_path_factory):
    from helpers import start_serve

    s = start_serve(
        tmp_path_factory.mktemp("srv"),
        "--model_name",
        "digits",
        "--model_base_path",
        str(packaged / "store" / "digits"),
    )
    yield s
    s.stop()


def _work(packaged, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(packaged / "workspace", work / "workspace")
    return work


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_served_model_passes_every_check(cli, packaged, served_package, tmp_path, transport):
    work = _work(packaged, tmp_path)
    url = served_package.rest if transport == "rest" else served_package.grpc
    r = cli(
        "test-deployed",
        "--url",
        url,
        "--transport",
        transport,
        "--json",
        "--latency-requests",
        "20",
        cwd=work,
    )
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert result["version"] == 1000 and result["golden_max_abs_diff"] <= 1e-4
    assert result["accuracy"] >= 0.5 and result["latency_ms"]["n"] == 20
    suite = ET.parse(work / "workspace" / "deployed" / "junit.xml").getroot().find("testsuite")
    # REST adds the Classify API on the golden images as tf.Examples (JSON examples only);
    # both send them as PNGs to predict_image_bytes (REST as {"b64": ...}, gRPC as bytes)
    assert suite.get("tests") == ("7" if transport == "rest" else "6")
    assert suite.get("failures") == "0"
    names = {c["name"] for c in result["checks"]}
    assert ("classify API max abs diff" in names) == (transport == "rest")
    assert "predict_image_bytes max abs diff" in names
    assert "**Verification PASSED**" in (work / "workspace" / "deployed" / "report.md").read_text()


def test_outputs_that_differ_from_the_manifest_fail_with_code_6(
    cli, packaged, served_package, tmp_path
):
    work = _work(packaged, tmp_path)
    manifest_path = work / "workspace" / "package" / "1000" / "assets.extra" / "tfship.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["golden"]["outputs"][0][0] += 0.01
    manifest_path.write_text(json.dumps(manifest))
    r = cli("test-deployed", "--url", served_package.rest, cwd=work)
    assert r.code == 6
    line = r.err_lines[-1]
    assert line.startswith("tfship test-deployed: verification failed:")
    assert "golden outputs max abs diff: 0.01" in line and "<= 0.0001 FAILED" in line


def test_accuracy_below_the_gate_names_the_numbers(cli, packaged, served_package, tmp_path):
    r = cli(
        "test-deployed",
        "--url",
        served_package.rest,
        "--min-accuracy",
        "1.0",
        cwd=_work(packaged, tmp_path),
    )
    assert r.code == 6
    assert "served accuracy: " in r.err_lines[-1] and ">= 1 FAILED (missed by" in r.err_lines[-1]


def test_a_version_that_is_not_served_fails_after_the_bounded_wait(
    cli, packaged, served_package, tmp_path
):
    r = cli(
        "test-deployed",
        "--url",
        served_package.rest,
        "--version",
        "999",
        "--wait-seconds",
        "1",
        cwd=_work(packaged, tmp_path),
    )
    assert r.code == 6
    assert "not AVAILABLE after 1 s" in r.err_lines[-1]


def test_unreachable_server_is_a_clear_failure_not_a_hang(cli, packaged, tmp_path):
    from helpers import free_port

    r = cli(
        "test-deployed",
        "--url",
        f"http://127.0.0.1:{free_port()}",
        "--wait-seconds",
        "1",
        cwd=_work(packaged, tmp_path),
        timeout=60,
    )
    assert r.code == 6
    line = r.err_lines[-1]
    assert "not AVAILABLE after 1 s (last state: not listening)" in line
    assert "TF Serving never answered" in line
