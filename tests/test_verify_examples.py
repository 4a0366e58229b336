"""Stage 7's check of a table's ``classify``/``regress`` signature through TF Serving's
Classify/Regress API (``tfship.verify._examples_check``): what it sends and how it judges the
answer. The real route (tfship serve, a packaged table) is in test_tables.py."""

from __future__ import annotations

import pytest
from tfship.verify import VerifySettings, _examples_check

GOLDEN = {
    "input_name": None,
    "output_name": "scores",
    "inputs": {"age": [39.0, 50.0], "hours": [40.5, 13.0], "job": ["State-gov", "Private"]},
    "int_inputs": ["age"],
    "outputs": [[0.9, 0.1], [0.2, 0.8]],
}


class Answers:
    """Stands in for the serving client: records what is sent, answers ``results``."""

    transport = "rest"

    def __init__(self, results) -> None:
        self.results, self.sent = results, []

    def classify_or_regress(self, api, examples, version=None):
        self.sent.append((api, examples, version))
        return self.results


def manifest(**golden) -> dict:
    return {"kind": "table", "classes": ["<=50K", ">50K"], "golden": {**GOLDEN, **golden}}


def test_the_golden_rows_go_as_examples_with_int_features_as_whole_numbers():
    client = Answers([[["<=50K", 0.9], [">50K", 0.1]], [["<=50K", 0.2], [">50K", 0.8]]])
    check = _examples_check(client, manifest(), 7, VerifySettings())
    ((api, examples, version),) = client.sent
    assert (api, version) == ("classify", 7)
    assert examples[0] == {"age": 39, "hours": 40.5, "job": "State-gov"}
    assert isinstance(examples[0]["age"], int)  # an int64 feature in a JSON example
    assert check.name == "classify API max abs diff" and check.passed


@pytest.mark.parametrize(
    ("results", "detail"),
    [
        ([[["<=50K", 0.5], [">50K", 0.5]], [["<=50K", 0.2], [">50K", 0.8]]], "2 examples"),
        ([[["<=50K", 0.9]], [["<=50K", 0.2]]], "outputs of shape [2, 1]"),
        ("not a list", "bad results"),
    ],
)
def test_a_signature_that_answers_otherwise_fails_the_check(results, detail):
    check = _examples_check(Answers(results), manifest(), 7, VerifySettings())
    assert not check.passed and detail in check.detail


def test_regress_images_grpc_and_older_packages():
    client = Answers([1.5, 2.5])
    m = {"kind": "table", "classes": None, "golden": {**GOLDEN, "outputs": [1.5, 2.5]}}
    assert _examples_check(client, m, 1, VerifySettings()).passed
    assert client.sent[0][0] == "regress"
    assert _examples_check(client, {**m, "kind": "images"}, 1, VerifySettings()) is None
    old = {**m, "golden": {k: v for k, v in m["golden"].items() if k != "int_inputs"}}
    assert _examples_check(client, old, 1, VerifySettings()) is None
    client.transport = "grpc"
    assert _examples_check(client, m, 1, VerifySettings()) is None


def test_an_int_input_that_was_missing_is_left_out_for_the_graph_to_fill():
    """A golden row's INT input that is not whole is the training mean filled in for a
    missing value: the example omits it (the graph fills the same mean) rather than sending a
    truncated number."""
    client = Answers([[["<=50K", 0.9], [">50K", 0.1]], [["<=50K", 0.2], [">50K", 0.8]]])
    golden = {"inputs": {**GOLDEN["inputs"], "age": [39.0, 41.37]}}
    _examples_check(client, manifest(**golden), 7, VerifySettings())
    ((_, examples, _),) = client.sent
    assert examples[0]["age"] == 39 and "age" not in examples[1]
