"""Metrics, gates and the JUnit/markdown output people and CircleCI read."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from tfship.evaluate import Gates, classification_metrics, gate_checks, render_report
from tfship.report import Check, summary, write_junit


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 5, 400)
    y_pred = np.where(rng.random(400) < 0.7, y_true, rng.integers(0, 5, 400))
    m = classification_metrics(y_true, y_pred, 5)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(5), zero_division=0)
    assert np.allclose(m["per_class"]["precision"], p, atol=1e-6)
    assert np.allclose(m["per_class"]["recall"], r, atol=1e-6)
    assert np.allclose(m["per_class"]["f1"], f, atol=1e-6)
    assert m["per_class"]["support"] == s.tolist()
    assert m["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=range(5)).tolist()
    assert m["accuracy"] == np.mean(y_true == y_pred)


def test_gate_names_the_missed_metric_and_by_how_much():
    y = np.array([0, 0, 1, 1, 1, 1])
    m = classification_metrics(y, np.array([0, 1, 1, 1, 1, 1]), 2)
    checks = gate_checks(m, Gates(min_accuracy=0.9, min_class_recall=0.6))
    text = summary(checks)
    assert "accuracy: 0.8333 >= 0.9 FAILED (missed by 0.06667)" in text
    assert "recall[class 0]: 0.5 >= 0.6 FAILED (missed by 0.1)" in text
    assert "class 1" not in text


def test_nan_never_passes_a_gate():
    assert not Check("accuracy", float("nan"), ">=", 0.0).passed


def test_junit_has_one_case_per_check_with_failures(tmp_path):
    checks = [Check("accuracy", 0.95, ">=", 0.9), Check("recall[class 3]", 0.4, ">=", 0.75)]
    write_junit(tmp_path / "j.xml", "tfship.test", checks)
    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    failure = suite.findall("testcase")[1].find("failure")
    assert "0.4 >= 0.75 FAILED (missed by 0.35)" in failure.get("message")


def test_report_shows_verdict_and_tables():
    m = classification_metrics(np.array([0, 1]), np.array([0, 1]), 2, loss=0.1)
    md = render_report(m, gate_checks(m, Gates()), "Model evaluation")
    assert "**Gate PASSED**" in md and "| 1 | 1.000 | 1.000 | 1.000 | 1 |" in md
