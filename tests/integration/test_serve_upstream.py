"""`tfship serve` is never friendlier than tensorflow_model_server.

Each test names the tensorflow/serving source of the behaviour it holds our server to.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from helpers import HALF_PLUS_TWO, clean_env, export_test_model, free_port, start_serve
from tensorflow_serving.apis import (
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]
V123 = HALF_PLUS_TWO / "00000123"


def install(src, base, version) -> None:
    """Copy under a non-numeric name, then rename: what a deploy does."""
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".incoming-{version}"
    shutil.copytree(src, tmp)
    os.rename(tmp, base / str(version))


def broken(tmp_path):
    b = tmp_path / "broken-src"
    b.mkdir(exist_ok=True)
    (b / "saved_model.pb").write_bytes(b"not a protobuf")
    return b


def refused(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) != 0


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


def states(served, model="m") -> dict[str, tuple[str, str, str]]:
    doc = requests.get(f"{served.rest}/v1/models/{model}", timeout=5).json()
    return {
        v["version"]: (v["state"], v["status"]["error_code"], v["status"]["error_message"])
        for v in doc["model_version_status"]
    }


def stubs(served):
    channel = grpc.insecure_channel(served.grpc)
    return (
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
    )


def run_serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`tfship serve` expected to exit by itself (a failed start)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tfship",
            "serve",
            "--rest_api_port",
            str(free_port()),
            "--port",
            str(free_port()),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
    )


# --- start-up: server.cc BuildAndStart, server_core.cc, core/load_servables_fast.cc ---------


def test_no_port_opens_until_the_model_has_an_available_version(tmp_path):
    base = tmp_path / "m"
    base.mkdir()
    s = start_serve(
        tmp_path,
        "--model_name",
        "m",
        "--model_base_path",
        str(base),
        "--file_system_poll_wait_seconds",
        "0.2",
        wait=False,
    )
    try:
        # The server has polled the empty base path once it says so; its ports stay closed.
        assert wait_for(lambda: "No versions of servable m found under base path" in s.log_text())
        assert s.proc.poll() is None and refused(s.rest) and refused(f"http://{s.grpc}")
        install(V123, base, 1)
        s.wait_listening()
        assert states(s) == {"1": ("AVAILABLE", "OK", "")}
    finally:
        s.stop()


def test_a_first_load_that_fails_exits_255_as_the_real_server_does(tmp_path):
    base = tmp_path / "m"
    install(broken(tmp_path), base, 7)
    r = run_serve(
        "--model_name", "m", "--model_base_path", str(base), "--max_num_load_retries", "0"
    )
    assert r.returncode == 255
    prefix = (
        "Failed to start server. Error: UNKNOWN: 1 servable(s) did not become available: "
        "{{{name: m version: 7} due to error: "
    )
    assert r.stdout.startswith(prefix) and r.stdout.endswith("}, }\n"), r.stdout
    assert "tfship serve: could not start:" in r.stderr


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            'config { name: "m" base_path: "BASE" model_platform: "tensorflow" } '
            'config { name: "m" base_path: "BASE" model_platform: "tensorflow" }',
            "INVALID_ARGUMENT: Illegal to list model m multiple times in config list",
        ),
        (
            'config { name: "m" base_path: "relative/m" model_platform: "tensorflow" }',
            "INVALID_ARGUMENT: Expected model m to have an absolute path or URI; "
            "got base_path()=relative/m",
        ),
        (
            'config { name: "m" base_path: "BASE" }',
            "INVALID_ARGUMENT: Illegal setting neither ModelServerConfig::model_type "
            "(deprecated) nor ModelServerConfig::model_platform, model name is m",
        ),
        (
            'config { name: "m" base_path: "BASE" model_platform: "tensorflow" '
            'version_labels { key: "stable" value: 1 } }',
            "FAILED_PRECONDITION: Request to assign label to version 1 of model m, which is "
            "not currently available for inference",
        ),
    ],
    ids=["duplicate", "relative", "no-platform", "label-before-load"],
)
def test_a_bad_config_fails_start_up_with_upstreams_message(tmp_path, config, message):
    """server_core.cc ValidateModelConfigList, GetPlatform, UpdateModelVersionLabelMap."""
    base = tmp_path / "m"
    install(V123, base, 1)
    conf = tmp_path / "models.config"
    conf.write_text("model_config_list { " + config.replace("BASE", str(base)) + " }")
    r = run_serve("--model_config_file", str(conf))
    assert r.returncode == 255
    assert r.stdout == f"Failed to start server. Error: {message}\n"


def test_a_relative_model_base_path_flag_is_refused(tmp_path):
    r = run_serve("--model_name", "m", "--model_base_path", "store/m")
    assert r.returncode == 255
    assert "Expected model m to have an absolute path or URI; got base_path()=store/m" in r.stdout
    assert '"$PWD/store/digits"' in r.stderr


def test_labels_for_unavailable_versions_need_the_flag_at_start_up(tmp_path):
    """main.cc --allow_version_labels_for_unavailable_models (upstream issue #1608)."""
    base = tmp_path / "m"
    install(V123, base, 1)
    conf = tmp_path / "models.config"
    conf.write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
        'model_platform: "tensorflow" version_labels { key: "stable" value: 1 } } }'
    )
    s = start_serve(
        tmp_path, "--model_config_file", str(conf), "--allow_version_labels_for_unavailable_models"
    )
    try:
        r = requests.post(
            f"{s.rest}/v1/models/m/labels/stable:predict", json={"instances": [[1.0]]}, timeout=5
        )
        assert r.json() == {"predictions": [[2.5]]}
    finally:
        s.stop()


# --- failed loads: core/loader_harness.cc Load + util/retrier.cc ----------------------------


def test_a_failed_load_is_retried_showing_loading_then_ends_with_its_error(tmp_path):
    base = tmp_path / "m"
    install(V123, base, 1)
    s = start_serve(
        tmp_path,
        "--model_name",
        "m",
        "--model_base_path",
        str(base),
        "--file_system_poll_wait_seconds",
        "0.2",
        "--max_num_load_retries",
        "2",
        "--load_retry_interval_micros",
        "1500000",
    )
    try:
        install(broken(tmp_path), base, 2)
        assert wait_for(lambda: states(s).get("2", ("",))[0] == "LOADING", 10)
        assert states(s)["2"] == ("LOADING", "OK", "")  # retrying is not an error yet
        assert wait_for(lambda: states(s)["2"][0] == "END", 20)
        state, code, message = states(s)["2"]
        assert code != "OK" and message
        assert states(s)["1"] == ("AVAILABLE", "OK", "")
        assert s.log_text().count("load failed model=m version=2") == 3  # 1 + 2 retries
        r = requests.post(f"{s.rest}/v1/models/m:predict", json={"instances": [[2.0]]}, timeout=5)
        assert r.json() == {"predictions": [[3.0]]}
    finally:
        s.stop()


def test_retries_stop_when_the_version_leaves_the_disk(tmp_path):
    """aspired_versions_manager.cc: a version no longer aspired has its retries cancelled."""
    base = tmp_path / "m"
    install(V123, base, 1)
    s = start_serve(
        tmp_path,
        "--model_name",
        "m",
        "--model_base_path",
        str(base),
        "--file_system_poll_wait_seconds",
        "0.2",
    )  # default: 5 retries, 60 s apart
    try:
        install(broken(tmp_path), base, 2)
        assert wait_for(lambda: states(s).get("2", ("",))[0] == "LOADING", 10)
        shutil.move(base / "2", tmp_path / "rejected-2")
        assert wait_for(lambda: states(s)["2"][0] == "END", 10)
        assert states(s)["1"] == ("AVAILABLE", "OK", "")
    finally:
        s.stop()


# --- the file system source: sources/storage_path/file_system_storage_path_source.cc --------


def test_a_vanished_base_path_leaves_what_is_loaded_serving(tmp_path):
    base = tmp_path / "m"
    install(V123, base, 1)
    s = start_serve(
        tmp_path,
        "--model_name",
        "m",
        "--model_base_path",
        str(base),
        "--file_system_poll_wait_seconds",
        "0.2",
    )
    try:
        os.rename(base, tmp_path / "away")
        time.sleep(1.5)
        assert states(s) == {"1": ("AVAILABLE", "OK", "")}
        r = requests.post(f"{s.rest}/v1/models/m:predict", json={"instances": [[2.0]]}, timeout=5)
        assert r.status_code == 200
        assert "FileSystemStoragePathSource encountered a filesystem access error" in s.log_text()
        assert f"Could not find base path {base} for servable m" in s.log_text()
    finally:
        s.stop()


def test_the_highest_version_loads_first(tmp_path):
    """availability_preserving_policy.cc GetNextAction: the highest NEW aspired version."""
    base = tmp_path / "m"
    for v in (1, 2, 3):
        install(V123, base, v)
    conf = tmp_path / "models.config"
    conf.write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
        'model_platform: "tensorflow" model_version_policy { all {} } } }'
    )
    s = start_serve(tmp_path, "--model_config_file", str(conf))
    try:
        assert wait_for(
            lambda: len(states(s)) == 3 and all(v[0] == "AVAILABLE" for v in states(s).values())
        )
        order = [
            line.split("version=")[1].split()[0]
            for line in s.log_text().splitlines()
            if "[serve] loading model=m" in line
        ]
        assert order == ["3", "2", "1"]
    finally:
        s.stop()


def test_version_names_parse_as_absl_simple_atoi(tmp_path):
    """PollFileSystemForServable: '00000123' and ' +5' are versions, 'v1' and '1.5' are not."""
    from tfship.server.core import parse_version

    assert [parse_version(n) for n in ("00000123", "+5", " 7 ", "-3")] == [123, 5, 7, -3]
    assert [parse_version(n) for n in ("v1", "1.5", "1e3", "0x10", "²", "9" * 30)] == [None] * 6


# --- errors and types on the wire: predict_util.cc, DirectSession -----------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A server with the conformance model, a matmul model and an int64 model."""
    tmp = tmp_path_factory.mktemp("upstream")
    export_test_model(tmp / "mm" / "1", "matmul")
    export_test_model(tmp / "ints" / "1", "int64")
    install(V123, tmp / "hpt", 1)
    conf = tmp / "models.config"
    conf.write_text(
        "model_config_list { "
        + "".join(
            f'config {{ name: "{n}" base_path: "{tmp / n}" model_platform: "tensorflow" }} '
            for n in ("mm", "ints", "hpt")
        )
        + "}"
    )
    monitoring = tmp / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true, path: "/monitoring/metrics" }')
    s = start_serve(
        tmp, "--model_config_file", str(conf), "--monitoring_config_file", str(monitoring)
    )
    yield s
    s.stop()


def test_a_failing_graph_returns_the_kernels_own_message(models):
    """predict_util.cc RunPredict returns session->Run's status as is (no 'Graph execution
    error:' wrapper), with its code: INVALID_ARGUMENT, HTTP 400."""
    r = requests.post(
        f"{models.rest}/v1/models/mm:predict", json={"instances": [[1.0, 2.0, 3.0]]}, timeout=5
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error.startswith("Matrix size-incompatible: In[0]: [1,3], In[1]: [4,2]"), error
    predict, _ = stubs(models)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "mm"
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones([1, 3], np.float32)))
    with pytest.raises(grpc.RpcError) as err:
        predict.Predict(req, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("Matrix size-incompatible: In[0]: [1,3], In[1]: [4,2]")


def test_a_wrong_dtype_is_refused_not_cast(models):
    """gRPC tensors keep their own dtype (Tensor::FromProto); DirectSession refuses them."""
    predict, _ = stubs(models)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "mm"
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones([1, 4], np.int64)))
    with pytest.raises(grpc.RpcError) as err:
        predict.Predict(req, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "Expects arg[0] to be float but int64 is provided"


@pytest.mark.parametrize(
    ("mutate", "code", "message"),
    [
        (
            lambda r: setattr(r.model_spec, "signature_name", "nope"),
            "FAILED_PRECONDITION",
            'Serving signature key "nope" not found.',
        ),
        (
            lambda r: r.inputs["z"].CopyFrom(tf.make_tensor_proto(np.ones([1], np.float32))),
            "INVALID_ARGUMENT",
            "input size does not match signature: 2!=1 len({x,z}) != len({x}). "
            "Sent extra: {z}. Missing but required: {}.",
        ),
        (
            lambda r: r.output_filter.append("nope"),
            "INVALID_ARGUMENT",
            "output tensor alias not found in signature: nope Outputs expected to be in the set "
            "{y}.",
        ),
        (lambda r: r.ClearField("model_spec"), "INVALID_ARGUMENT", "Missing ModelSpec"),
    ],
    ids=["signature", "extra-input", "output-filter", "no-model-spec"],
)
def test_grpc_predict_codes_and_texts(models, mutate, code, message):
    """predict_util.cc RunPredict / VerifyRequestInputsSize / PreProcessPrediction."""
    predict, _ = stubs(models)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "mm"
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones([1, 4], np.float32)))
    mutate(req)
    with pytest.raises(grpc.RpcError) as err:
        predict.Predict(req, timeout=5)
    assert (err.value.code().name, err.value.details()) == (code, message)


def test_grpc_outputs_use_the_typed_fields(models):
    """predict_util.cc PostProcessPredictionResult: AsProtoField unless
    --enable_serialization_as_tensor_content."""
    predict, _ = stubs(models)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "mm"
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones([2, 4], np.float32)))
    out = predict.Predict(req, timeout=5).outputs["y"]
    assert out.tensor_content == b"" and list(out.float_val) == [4.0] * 4
    assert [d.size for d in out.tensor_shape.dim] == [2, 2]


def test_grpc_takes_messages_over_grpcs_4_mib_default(models):
    """server.cc SetMaxMessageSize(INT_MAX)."""
    predict, _ = stubs(models)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "ints"
    req.inputs["i"].CopyFrom(tf.make_tensor_proto(np.arange(700_000, dtype=np.int64)))
    assert req.ByteSize() > 4 * 1024 * 1024
    out = predict.Predict(req, timeout=30).outputs["o"]
    assert len(out.int64_val) == 700_000 and out.int64_val[-1] == 2 * 699_999


def test_rest_integer_overflow_is_a_type_error(models):
    """json_tensor.cc AddValueToTensor: 2**63 is not IsInt64() for an int64 input."""
    r = requests.post(
        f"{models.rest}/v1/models/ints:predict",
        data=b'{"inputs": [9223372036854775808]}',
        timeout=5,
    )
    assert r.status_code == 400
    assert r.json()["error"] == (
        "JSON Value: 9223372036854775808 Type: Number is not of expected type: int64"
    )
    r = requests.post(
        f"{models.rest}/v1/models/ints:predict",
        data=b'{"instances": [9223372036854775807]}',
        timeout=5,
    )
    assert r.status_code == 200


def test_rest_bodies_may_be_chunked_gzipped_and_large(models):
    """libevent reads chunked bodies, net_http inflates gzip, and nothing caps the size."""
    url = f"{models.rest}/v1/models/hpt:predict"

    def chunks():
        yield b'{"instances": '
        yield b"[[1.0], [2.0]]}"

    assert requests.post(url, data=chunks(), timeout=5).json() == {"predictions": [[2.5], [3.0]]}
    body = gzip.compress(b'{"instances": [[4.0]]}')
    r = requests.post(url, data=body, headers={"Content-Encoding": "gzip"}, timeout=5)
    assert r.json() == {"predictions": [[4.0]]}
    big = b'{"instances": [[1.0]]' + b" " * (65 * 1024 * 1024) + b"}"
    r = requests.post(url, data=big, timeout=60)
    assert r.status_code == 200 and r.json() == {"predictions": [[2.5]]}


def test_rest_paths_keep_the_query_and_decode_the_name(models):
    """http_rest_api_util.cc: the regex runs on the raw path (query included), then the
    model name is percent-decoded (curl_easy_unescape)."""
    r = requests.post(
        f"{models.rest}/v1/models/hpt:predict?x=1", json={"instances": [[1.0]]}, timeout=5
    )
    assert r.status_code == 400
    assert r.json()["error"] == "Malformed request: POST /v1/models/hpt:predict?x=1"
    r = requests.post(
        f"{models.rest}/v1/models/%68pt:predict", json={"instances": [[1.0]]}, timeout=5
    )
    assert r.json() == {"predictions": [[2.5]]}


def test_multi_inference_runs_classify_and_regress_tasks(models):
    """multi_inference.cc TensorFlowMultiInferenceRunner::Infer."""
    predict, _ = stubs(models)
    req = inference_pb2.MultiInferenceRequest()
    for signature, method in (("classify_x_to_y", "classify"), ("regress_x_to_y2", "regress")):
        task = req.tasks.add()
        task.model_spec.name = "hpt"
        task.model_spec.signature_name = signature
        task.method_name = f"tensorflow/serving/{method}"
    req.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    resp = predict.MultiInference(req, timeout=5)
    assert resp.results[0].classification_result.classifications[0].classes[0].score == 3.0
    assert resp.results[1].regression_result.regressions[0].value == 4.0  # y2 = 0.5x + 3
    assert resp.results[1].model_spec.signature_name == "regress_x_to_y2"
    req.tasks[1].method_name = "tensorflow/serving/predict"
    with pytest.raises(grpc.RpcError) as err:
        predict.MultiInference(req, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert err.value.details() == "Unsupported signature method_name: tensorflow/serving/predict"


def test_prometheus_page_has_tf_servings_metric_names(models):
    """util/prometheus_exporter.cc, http_server.cc ProcessPrometheusRequest, util.cc names."""
    requests.post(f"{models.rest}/v1/models/hpt:predict", json={"instances": [[1.0]]}, timeout=5)
    r = requests.get(f"{models.rest}/monitoring/metrics", timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/plain"
    page = r.text
    assert "# TYPE :tensorflow:serving:request_count counter" in page
    assert ':tensorflow:serving:request_count{model_name="hpt",status="OK"}' in page
    assert "# TYPE :tensorflow:serving:request_latency histogram" in page
    assert (
        ':tensorflow:serving:request_latency_bucket{model_name="hpt",API="predict",'
        'entrypoint="REST",le="10"}' in page
    )
    assert 'le="+Inf"}' in page and ":tensorflow:cc:saved_model:load_attempt_count{" in page
    r = requests.get(f"{models.rest}/monitoring/metrics?x=1", timeout=5)
    assert r.status_code == 400
    assert r.text == "Unexpected path: /monitoring/metrics?x=1. Should be /monitoring/metrics"


def test_reload_config_waits_for_new_models_and_fails_the_rpc_on_a_bad_config(models, tmp_path):
    """model_service_impl.cc HandleReloadConfigRequest + server_core.cc ReloadConfig."""
    from tfship.server.config import ModelConfig, to_proto

    _, model_service = stubs(models)
    current = [
        ModelConfig(n, str(os.path.dirname(models.log)) + "/" + n) for n in ("mm", "ints", "hpt")
    ]
    install(V123, tmp_path / "late", 3)
    config = to_proto([*current, ModelConfig("late", str(tmp_path / "late"))])
    model_service.HandleReloadConfigRequest(
        model_management_pb2.ReloadConfigRequest(config=config), timeout=60
    )
    # It answered only once the new model was up: no polling needed.
    assert states(models, "late") == {"3": ("AVAILABLE", "OK", "")}
    dup = to_proto([*current, ModelConfig("mm", "/x")])
    with pytest.raises(grpc.RpcError) as err:
        model_service.HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=dup), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "Illegal to list model mm multiple times in config list"


# --- warmup: saved_model_warmup.cc, saved_model_warmup_util.cc ---------------------------------


def warmup_version(tmp_path, records: list[prediction_log_pb2.PredictionLog]):
    src = tmp_path / "warm-src"
    shutil.copytree(V123, src)
    (src / "assets.extra").mkdir()
    with tf.io.TFRecordWriter(str(src / "assets.extra" / "tf_serving_warmup_requests")) as w:
        for rec in records:
            w.write(rec.SerializeToString())
    return src


def _example_input(req) -> None:
    req.model_spec.name = "m"
    req.input.example_list.examples.add().features.feature["x"].float_list.value.append(1.0)


def test_warmup_replays_every_record_type(tmp_path):
    records = []
    p = prediction_log_pb2.PredictionLog()
    p.predict_log.request.model_spec.name = "m"
    p.predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones([1, 1], np.float32)))
    records.append(p)
    c = prediction_log_pb2.PredictionLog()
    c.classify_log.request.model_spec.signature_name = "classify_x_to_y"
    _example_input(c.classify_log.request)
    records.append(c)
    r = prediction_log_pb2.PredictionLog()
    r.regress_log.request.model_spec.signature_name = "regress_x_to_y"
    _example_input(r.regress_log.request)
    records.append(r)
    m = prediction_log_pb2.PredictionLog()
    task = m.multi_inference_log.request.tasks.add()
    task.model_spec.name = "m"
    task.model_spec.signature_name = "regress_x_to_y2"
    task.method_name = "tensorflow/serving/regress"
    example = m.multi_inference_log.request.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.append(1.0)
    records.append(m)
    base = tmp_path / "m"
    install(warmup_version(tmp_path, records), base, 1)
    s = start_serve(
        tmp_path,
        "--model_name",
        "m",
        "--model_base_path",
        str(base),
        "--num_request_iterations_for_warmup",
        "2",
    )
    try:
        assert "available model=m version=1 warmup=4" in s.log_text()
    finally:
        s.stop()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: [_wrong_dtype()],
            "INVALID_ARGUMENT: Expects arg[0] to be float but int64 is provided",
        ),
        (lambda: [_session_run()], "UNIMPLEMENTED: Unsupported log_type for warmup: 5"),
        (
            lambda: [_predict_ok()] * 1001,
            "INVALID_ARGUMENT: Number of warmup records exceeds the maximum (1000) at ",
        ),
    ],
    ids=["wrong-dtype", "session-run-log", "over-1000"],
)
def test_a_failing_warmup_fails_the_load(tmp_path, make, message):
    base = tmp_path / "m"
    install(warmup_version(tmp_path, make()), base, 1)
    r = run_serve(
        "--model_name",
        "m",
        "--model_base_path",
        str(base),
        "--max_num_load_retries",
        "0",
        timeout=120,
    )
    assert r.returncode == 255
    assert f"due to error: {message}" in r.stdout, r.stdout


def _predict_ok():
    p = prediction_log_pb2.PredictionLog()
    p.predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones([1, 1], np.float32)))
    return p


def _wrong_dtype():
    p = prediction_log_pb2.PredictionLog()
    p.predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones([1, 1], np.int64)))
    return p


def _session_run():
    p = prediction_log_pb2.PredictionLog()
    p.session_run_log.request.feed.add()
    return p


def test_stdout_of_a_healthy_server_is_empty(tmp_path):
    """The real server writes its logs to stderr; only a failed start prints to stdout."""
    base = tmp_path / "m"
    install(V123, base, 1)
    s = start_serve(tmp_path, "--model_name", "m", "--model_base_path", str(base))
    s.stop()
    assert "Failed to start server" not in s.log_text()
    assert json.loads(s.ready.read_text())["pid"] == s.proc.pid
