"""Malformed requests never crash `tfship serve`'s REST handler (a bounded hypothesis run)."""

from __future__ import annotations

import json

import pytest
from helpers import CONFORMANCE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tfship.server.config import ModelConfig
from tfship.server.core import CoreOptions, ServerCore
from tfship.server.rest import handle
from tfship.server.status import HTTP_CODE

MODEL = "saved_model_half_plus_two_2_versions"


@pytest.fixture(scope="module")
def core():
    c = ServerCore(CoreOptions(poll_seconds=0, allow_version_labels_for_unavailable_models=True))
    c.start()
    c.reload(
        [ModelConfig(MODEL, str(CONFORMANCE / MODEL), policy="all", labels={"stable": 123})],
        startup=True,
    )
    yield c
    c.stop()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
bodies = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            "instances": json_values,
            "inputs": json_values,
            "signature_name": json_values,
            "examples": json_values,
            "context": json_values,
        },
    ).map(lambda d: json.dumps(d).encode()),
)
paths = st.sampled_from(
    [
        f"/v1/models/{MODEL}:predict",
        f"/v1/models/{MODEL}/versions/123:predict",
        f"/v1/models/{MODEL}/labels/stable:regress",
        f"/v1/models/{MODEL}:classify",
        f"/v1/models/{MODEL}/metadata",
        f"/v1/models/{MODEL}",
        "/v1/models/x:predict",
        "/v1/",
        f"/v1/models/{MODEL}/versions/99999999999999999999:predict",
    ]
) | st.text(max_size=30).map(lambda t: "/v1/" + t)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from(["GET", "POST", "PUT"]), path=paths, body=bodies)
def test_any_request_gets_a_tf_serving_answer(core, method, path, body):
    status, text, _, _ = handle(core, method, path, body)
    code = HTTP_CODE.get(status, 500)
    assert status in HTTP_CODE or code == 500
    doc = json.loads(
        text.replace("NaN", "null").replace("-Infinity", "null").replace("Infinity", "null")
    )
    if code != 200:
        assert set(doc) == {"error"} and isinstance(doc["error"], str) and doc["error"]
