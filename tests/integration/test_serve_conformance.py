"""`tfship serve` answers as TF Serving does, on TF Serving's own conformance model."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from helpers import CONFORMANCE, HALF_PLUS_TWO, HPT
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

pytestmark = pytest.mark.timeout(120)
EXPECTED_METADATA = json.loads((CONFORMANCE / f"{HPT}_metadata.json").read_text())


def url(s, suffix=""):
    return f"{s.rest}/v1/models/{HPT}{suffix}"


def test_default_policy_serves_only_the_latest_version(serve):
    s = serve("--model_name", HPT, "--model_base_path", str(HALF_PLUS_TWO))
    doc = requests.get(url(s), timeout=5).json()
    assert doc == {
        "model_version_status": [
            {
                "version": "124",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    r = requests.get(url(s, "/versions/123"), timeout=5)
    assert r.status_code == 404
    assert r.json() == {"error": f"Could not find version 123 of model {HPT}"}
    assert s.stop() == 0  # SIGTERM: clean shutdown
    assert "[serve] stopped" in s.log_text()


def test_metadata_equals_the_real_servers_answer(hpt_all):
    r = requests.get(url(hpt_all, "/versions/123/metadata"), timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.json() == EXPECTED_METADATA
    latest = requests.get(url(hpt_all, "/metadata"), timeout=5).json()
    assert latest["model_spec"]["version"] == "124"


def test_status_lists_both_versions_highest_first(hpt_all):
    doc = requests.get(url(hpt_all), timeout=5).json()
    assert [v["version"] for v in doc["model_version_status"]] == ["124", "123"]
    assert {v["state"] for v in doc["model_version_status"]} == {"AVAILABLE"}


@pytest.mark.parametrize(
    ("suffix", "body", "expected"),
    [
        (":predict", {"instances": [[1.0], [2.0], [5.0]]}, {"predictions": [[2.5], [3.0], [4.5]]}),
        (":predict", {"inputs": [[1.0], [2.0]]}, {"outputs": [[2.5], [3.0]]}),
        (":predict", {"instances": [{"x": [1.0]}, {"x": [3.0]}]}, {"predictions": [[2.5], [3.5]]}),
        (":predict", {"inputs": {"x": [[4.0]]}}, {"outputs": [[4.0]]}),
        ("/versions/123:predict", {"instances": [[0.0]]}, {"predictions": [[2.0]]}),
        ("/labels/stable:predict", {"instances": [[2.0]]}, {"predictions": [[3.0]]}),
        (":predict", {"instances": [[0.1]]}, {"predictions": [[2.05]]}),
        (
            ":classify",
            {"signature_name": "classify_x_to_y", "examples": [{"x": 10.0}]},
            {"results": [[["", 7.0]]]},
        ),
        (
            ":regress",
            {"signature_name": "regress_x_to_y", "examples": [{"x": 10.0}, {"x": 0.0}]},
            {"results": [7.0, 2.0]},
        ),
        (
            ":regress",
            {"signature_name": "regress_x_to_y2", "context": {"x": 4.0}, "examples": [{}]},
            {"results": [5.0]},
        ),
    ],
)
def test_inference_answers(hpt_all, suffix, body, expected):
    r = requests.post(url(hpt_all, suffix), json=body, timeout=5)
    assert r.status_code == 200, r.text
    assert r.json() == expected


def test_whole_numbers_are_written_with_a_decimal_point(hpt_all):
    r = requests.post(url(hpt_all, ":predict"), json={"instances": [[1.0]]}, timeout=5)
    assert r.text.replace(" ", "") == '{"predictions":[[2.5]]}'
    r = requests.post(url(hpt_all, ":predict"), json={"instances": [[2.0]]}, timeout=5)
    assert "[3.0]" in r.text


def test_paths_are_case_insensitive(hpt_all):
    r = requests.get(f"{hpt_all.rest}/V1/MODELS/{HPT}/VERSIONS/123", timeout=5)
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("method", "suffix", "body", "code", "message"),
    [
        ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
        (
            "POST",
            "/v1/models/nope:predict",
            b'{"instances":[[1.0]]}',
            404,
            "Servable not found for request: Latest(nope)",
        ),
        (
            "POST",
            f"/v1/models/{HPT}/versions/125:predict",
            b'{"instances":[[1.0]]}',
            404,
            f"Servable not found for request: Specific({HPT}, 125)",
        ),
        (
            "POST",
            f"/v1/models/{HPT}/labels/nope:predict",
            b'{"instances":[[1.0]]}',
            400,
            "Unrecognized servable version label: nope",
        ),
        ("GET", "/v1/foo", None, 400, "Malformed request: GET /v1/foo"),
        ("POST", f"/v1/models/{HPT}", b"{}", 400, f"Malformed request: POST /v1/models/{HPT}"),
        ("GET", "/v1/models", None, 400, "Missing model name in request."),
        ("POST", f"/v1/models/{HPT}:predict", b"", 400, "JSON Parse error: The document is empty"),
        ("POST", f"/v1/models/{HPT}:predict", b"{nope", 400, "JSON Parse error: "),
        ("POST", f"/v1/models/{HPT}:predict", b"[1]", 400, "Is not object"),
        (
            "POST",
            f"/v1/models/{HPT}:predict",
            b'{"foo": 1}',
            400,
            "Missing 'inputs' or 'instances' key",
        ),
        (
            "POST",
            f"/v1/models/{HPT}:predict",
            b'{"instances": [["a"]]}',
            400,
            'JSON Value: "a" Type: String is not of expected type: float',
        ),
        (
            "POST",
            f"/v1/models/{HPT}:predict",
            b'{"instances": [{"z": [1.0]}]}',
            400,
            "JSON object: does not have named input: z",
        ),
        (
            "POST",
            f"/v1/models/{HPT}:predict",
            b'{"instances": [[1.0]], "inputs": [[1.0]]}',
            400,
            "expecting only one of 'inputs' or 'instances' keys to exist",
        ),
        (
            "POST",
            f"/v1/models/{HPT}:predict",
            b'{"signature_name": 5, "instances": [[1.0]]}',
            400,
            "'signature_name' key must be a string value.",
        ),
        (
            "POST",
            f"/v1/models/{HPT}:predict",
            b'{"signature_name": "x", "instances": [[1.0]]}',
            400,
            'Serving signature name: "x" not found in signature def',
        ),
        (
            "POST",
            f"/v1/models/{HPT}:predict",
            b'{"instances": [[1.0], [1.0, 2.0]]}',
            400,
            "Expecting tensor size: 1 but got: 2",
        ),
    ],
)
def test_errors_carry_tf_servings_code_and_text(hpt_all, method, suffix, body, code, message):
    r = requests.request(method, hpt_all.rest + suffix, data=body, timeout=5)
    assert r.status_code == code, r.text
    assert r.headers["Content-Type"] == "application/json"
    assert message in r.json()["error"]


def test_nan_and_infinity_are_accepted_and_returned(hpt_all):
    r = requests.post(
        url(hpt_all, ":predict"), data=b'{"instances": [[NaN], [Infinity]]}', timeout=5
    )
    assert r.status_code == 200
    assert r.text.replace(" ", "") == '{"predictions":[[NaN],[Infinity]]}'


def test_paths_outside_v1_are_a_plain_404(hpt_all):
    r = requests.get(f"{hpt_all.rest}/models/{HPT}", timeout=5)
    assert r.status_code == 404 and "error" not in r.text


def _stubs(s):
    channel = grpc.insecure_channel(s.grpc)
    return (
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
    )


def test_grpc_predict_status_metadata_classify_regress(hpt_all):
    predict, models = _stubs(hpt_all)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = HPT
    req.model_spec.version_label = "stable"
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0], [3.0]], np.float32)))
    resp = predict.Predict(req, timeout=5)
    assert resp.model_spec.version.value == 123
    assert tf.make_ndarray(resp.outputs["y"]).tolist() == [[2.5], [3.5]]

    st = models.GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": HPT}), timeout=5
    )
    assert [(v.version, v.state) for v in st.model_version_status] == [(124, 30), (123, 30)]

    mreq = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    mreq.model_spec.name = HPT
    mreq.model_spec.version.value = 123
    meta = predict.GetModelMetadata(mreq, timeout=5)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(sig_map)
    assert set(sig_map.signature_def) == set(
        EXPECTED_METADATA["metadata"]["signature_def"]["signature_def"]
    )

    creq = classification_pb2.ClassificationRequest()
    creq.model_spec.name = HPT
    creq.model_spec.signature_name = "classify_x_to_y"
    creq.input.example_list.examples.add().features.feature["x"].float_list.value.append(10.0)
    cls = predict.Classify(creq, timeout=5)
    assert cls.result.classifications[0].classes[0].score == 7.0

    rreq = regression_pb2.RegressionRequest()
    rreq.model_spec.name = HPT
    rreq.model_spec.signature_name = "regress_x_to_y"
    rreq.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    assert predict.Regress(rreq, timeout=5).result.regressions[0].value == 3.0


def test_grpc_errors_use_the_same_status_codes(hpt_all):
    predict, _ = _stubs(hpt_all)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "nope"
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float32)))
    with pytest.raises(grpc.RpcError) as err:
        predict.Predict(req, timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "Servable not found for request: Latest(nope)"


def test_reload_config_refuses_a_label_on_an_unavailable_version(hpt_all):
    """server_core.cc UpdateModelVersionLabelMap; model_service_impl.cc returns the reload's
    status as the RPC's own status (ToGRPCStatus), so the client gets a gRPC error."""
    _, models = _stubs(hpt_all)
    from tfship.server.config import ModelConfig, to_proto

    bad = to_proto([ModelConfig(HPT, str(HALF_PLUS_TWO), policy="all", labels={"stable": 999})])
    with pytest.raises(grpc.RpcError) as err:
        models.HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=bad), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == (
        f"Request to assign label to version 999 of model {HPT}, which is not currently "
        "available for inference"
    )
    # The old config (labels) still holds.
    r = requests.post(
        url(hpt_all, "/labels/stable:predict"), json={"instances": [[0.0]]}, timeout=5
    )
    assert r.status_code == 200


def test_status_by_label_ignores_the_label(hpt_all):
    """get_model_status_impl.cc only looks at model_spec.version: a label (even an unknown
    one) lists every version, over REST and gRPC."""
    everything = requests.get(url(hpt_all), timeout=5).json()
    for label in ("stable", "nope"):
        r = requests.get(url(hpt_all, f"/labels/{label}"), timeout=5)
        assert r.status_code == 200 and r.json() == everything
    _, models = _stubs(hpt_all)
    st = models.GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": HPT, "version_label": "x"}),
        timeout=5,
    )
    assert [v.version for v in st.model_version_status] == [124, 123]
