"""TF Serving's JSON tensor rules for shapes the conformance model does not have: several
inputs and outputs, b64 strings, and float formatting."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from tfship.server.json_tensor import format_float, predict_inputs, predict_response
from tfship.server.status import RpcError

FLOAT, STRING, INT64 = 1, 7, 9


def test_row_format_with_several_named_inputs():
    doc = {"instances": [{"a": [1.0, 2.0], "b": 3}, {"a": [4.0, 5.0], "b": 6}]}
    tensors, fmt = predict_inputs(doc, {"a": FLOAT, "b": INT64})
    assert fmt == "row"
    assert tensors["a"].dtype == np.float32 and tensors["a"].tolist() == [[1, 2], [4, 5]]
    assert tensors["b"].dtype == np.int64 and tensors["b"].tolist() == [3, 6]


def test_columnar_format_with_several_named_inputs_and_a_missing_one():
    tensors, fmt = predict_inputs({"inputs": {"a": [[1.0]], "b": [7]}}, {"a": FLOAT, "b": INT64})
    assert fmt == "columnar" and tensors["b"].tolist() == [7]
    with pytest.raises(RpcError, match="Missing named input: b in 'inputs' object."):
        predict_inputs({"inputs": {"a": [[1.0]]}}, {"a": FLOAT, "b": INT64})
    with pytest.raises(RpcError, match="instances is a plain list, but expecting list of obj"):
        predict_inputs({"instances": [[1.0]]}, {"a": FLOAT, "b": INT64})


def test_b64_strings_decode_and_bytes_outputs_encode():
    raw = b"\x00\xffbinary"
    tensors, _ = predict_inputs(
        {"instances": [{"b64": base64.b64encode(raw).decode()}]}, {"img_bytes": STRING}
    )
    assert tensors["img_bytes"].tolist() == [raw]
    out = predict_response({"img_bytes": np.array([raw], dtype=object)}, "row")
    assert json.loads(out) == {"predictions": [{"b64": base64.b64encode(raw).decode()}]}
    # {"b64": 5} is not a b64 object (TF Serving: the value must be a string): at the top of
    # an instance it reads as named inputs, at a leaf it is a base64 format error.
    with pytest.raises(RpcError, match="does not have named input: b64"):
        predict_inputs({"instances": [{"b64": 5}]}, {"x": STRING})
    with pytest.raises(RpcError, match="not formatted correctly for base64 data"):
        predict_inputs({"instances": [[{"b64": 5}]]}, {"x": STRING})


def test_several_outputs_row_and_columnar():
    outputs = {
        "scores": np.array([[0.5, 0.25], [1.0, 0.0]], np.float32),
        "classes": np.array([b"a", b"b"], dtype=object),
    }
    row = json.loads(predict_response(outputs, "row"))
    assert row == {
        "predictions": [
            {"classes": "a", "scores": [0.5, 0.25]},
            {"classes": "b", "scores": [1.0, 0.0]},
        ]
    }
    col = json.loads(predict_response(outputs, "columnar"))
    assert col == {"outputs": {"classes": ["a", "b"], "scores": [[0.5, 0.25], [1.0, 0.0]]}}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (2.5, "2.5"),
        (3.0, "3.0"),
        (float(np.float32(0.1)), "0.1"),
        (1e6, "1e+06"),
        (float(np.float32(1 / 3)), "0.333333343"),
        (float("nan"), "NaN"),
        (float("-inf"), "-Infinity"),
    ],
)
def test_floats_are_written_as_tf_serving_writes_them(value, text):
    assert format_float(value) == text
