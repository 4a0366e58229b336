"""Stage 3 for tables: slices (metrics and gates per value of a categorical feature), the
calibration and ROC numbers behind the plots, the PNGs, and retrain's report by class name."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from helpers import clean_env, run_cli
from PIL import Image
from tfship import schema as sch
from tfship import table_plots
from tfship.errors import ConfigError
from tfship.evaluate import Gates
from tfship.report import failed, summary
from tfship.retrain import RetrainSettings, decide, side_by_side
from tfship.table_eval import (
    MISSING,
    render,
    requested_slices,
    roc_auc,
    slice_checks,
    slice_features,
    slice_metrics,
    slice_values,
)
from tfship.table_retrain import slice_side_by_side
from tfship.workspace import Workspace

GATES = Gates(min_accuracy=0.9, min_r2=0.2, min_slice_rows=20)

# ---- per-slice metrics and gates, on hand-built arrays --------------------------------------


def probs_for(predicted: list[int], classes: int = 2) -> np.ndarray:
    """Outputs whose argmax is ``predicted`` (0.8 on the predicted class)."""
    out = np.full((len(predicted), classes), 0.2 / (classes - 1))
    out[np.arange(len(predicted)), predicted] = 0.8
    return out


def classification_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three slices: 'web' 30 rows all right, 'app' 30 rows half right, 'fax' 5 rows all wrong."""
    y = np.array([0, 1] * 15 + [0, 1] * 15 + [0, 1, 0, 1, 0])
    pred = np.concatenate([y[:30], y[30:45], 1 - y[45:60], 1 - y[60:]])
    values = np.array(["web"] * 30 + ["app"] * 30 + ["fax"] * 5)
    return probs_for(pred.tolist()), y, values


def test_each_slice_has_the_task_metrics_of_its_own_rows():
    out, y, values = classification_case()
    slices = slice_metrics("classification", out, y, values, 0, ["neg", "pos"], 20)
    assert list(slices) == ["app", "fax", "web"]  # sorted values
    assert {v: m["rows"] for v, m in slices.items()} == {"app": 30, "fax": 5, "web": 30}
    assert slices["web"]["accuracy"] == 1.0 and slices["web"]["auc"] == 1.0
    assert slices["app"]["accuracy"] == 0.5
    assert slices["fax"]["accuracy"] == 0.0
    assert slices["fax"]["baseline_accuracy"] == pytest.approx(3 / 5)  # class 0: the majority
    assert slices["app"]["per_class"]["support"] == [15, 15]
    assert {v: m["gated"] for v, m in slices.items()} == {"app": True, "fax": False, "web": True}


def test_a_slice_that_misses_fails_by_name_a_passing_one_passes_a_small_one_is_not_gated():
    out, y, values = classification_case()
    slices = slice_metrics("classification", out, y, values, 0, ["neg", "pos"], 20)
    checks = slice_checks("channel", slices, "classification", GATES)
    assert [c.name for c in checks] == [
        "slice[channel=app] accuracy",
        "slice[channel=app] accuracy vs baseline (majority class)",
        "slice[channel=web] accuracy",
        "slice[channel=web] accuracy vs baseline (majority class)",
    ]  # 'fax' (5 rows, all wrong) is reported, not gated
    assert [c.name for c in failed(checks)] == [
        "slice[channel=app] accuracy",
        "slice[channel=app] accuracy vs baseline (majority class)",  # 0.5, not > 0.5
    ]
    line = summary(checks)
    assert line.startswith("slice[channel=app] accuracy: 0.5 >= 0.9 FAILED (missed by 0.4)")
    assert all(c.passed for c in checks if "web" in c.name)


def test_the_row_floor_decides_which_slices_are_gated():
    out, y, values = classification_case()
    slices = slice_metrics("classification", out, y, values, 0, ["neg", "pos"], 5)
    names = [c.name for c in slice_checks("channel", slices, "classification", GATES)]
    assert "slice[channel=fax] accuracy" in names  # 5 rows: at the floor, gated
    slices = slice_metrics("classification", out, y, values, 0, ["neg", "pos"], 31)
    assert slice_checks("channel", slices, "classification", GATES) == []


def test_a_slice_of_one_class_ties_its_perfect_baseline_and_has_no_auc():
    y = np.zeros(25, dtype=int)
    slices = slice_metrics(
        "classification", probs_for([0] * 25), y, np.array(["web"] * 25), 0, ["a", "b"], 20
    )
    assert slices["web"]["auc"] is None and slices["web"]["baseline_accuracy"] == 1.0
    checks = slice_checks("channel", slices, "classification", GATES)
    assert not failed(checks)
    assert checks[1].op == ">=" and "majority class" in checks[1].detail
    wrong = slice_metrics(
        "classification", probs_for([0] * 24 + [1]), y, np.array(["web"] * 25), 0, ["a", "b"], 20
    )
    (bad,) = failed(slice_checks("channel", wrong, "classification", GATES))
    assert bad.name == "slice[channel=web] accuracy vs baseline (majority class)"


def test_regression_slices_are_gated_on_r2_and_the_train_mean():
    rng = np.random.default_rng(0)
    y = rng.normal(100, 20, 60)
    pred = np.concatenate(
        [y[:30] + rng.normal(0, 2, 30), np.full(30, 100.0)]
    )  # 'south' always answers the mean
    values = np.array(["north"] * 30 + ["south"] * 30)
    slices = slice_metrics("regression", pred[:, None], y, values, 100.0, None, 20)
    assert slices["north"]["r2"] > 0.9 and slices["north"]["rmse"] < 4
    assert slices["south"]["rmse"] == pytest.approx(slices["south"]["baseline_rmse"])
    checks = slice_checks("region", slices, "regression", GATES)
    assert [c.name for c in failed(checks)] == [
        "slice[region=south] r2",
        "slice[region=south] rmse vs baseline (train mean)",
    ]
    assert [c.name for c in checks if c.passed] == [
        "slice[region=north] r2",
        "slice[region=north] rmse vs baseline (train mean)",
    ]


# ---- which features slice ------------------------------------------------------------------

SCHEMA = """
feature { name: "review" type: BYTES natural_language_domain {} }
feature { name: "channel" type: BYTES domain: "channel" }
feature { name: "stars" type: INT int_domain { min: 1 max: 5 } }
feature { name: "store_id" type: INT int_domain { min: 1 max: 9 is_categorical: true } }
feature { name: "target" type: BYTES domain: "target" }
string_domain { name: "channel" value: "app" value: "web" }
string_domain { name: "target" value: "negative" value: "positive" }
"""


def schema() -> object:
    return text_format.Parse(SCHEMA, sch.Schema())


def test_slice_features_take_repeats_and_commas_once_each():
    assert slice_features(("channel, store_id", "channel"), schema(), "target") == [
        "channel",
        "store_id",
    ]
    assert slice_features((), schema(), "target") == []


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("stars", "--slice stars: is not categorical"),
        ("review", "--slice review: is not categorical"),
        ("region", "--slice region: is not a feature of schema.pbtxt"),
        ("target", "--slice target: is the label"),
    ],
)
def test_a_slice_by_anything_but_a_categorical_feature_is_a_config_error(name, why):
    with pytest.raises(ConfigError) as err:
        slice_features(("channel", name), schema(), "target")
    assert str(err.value).startswith(why)
    assert err.value.hint == "slice by a categorical feature: channel, store_id"


def test_the_requested_slices_are_checked_against_the_workspace_schema(tmp_path):
    ws = Workspace(tmp_path / "workspace")
    ws.data.mkdir(parents=True)
    (ws.data / sch.SCHEMA_FILE).write_text(SCHEMA)
    table = {"kind": "table", "label": "target"}
    assert requested_slices(ws, table, ("store_id,channel",)) == ["store_id", "channel"]
    assert requested_slices(ws, {"kind": "images"}, ()) == []
    with pytest.raises(ConfigError, match="--slice channel: slices are by a categorical") as err:
        requested_slices(ws, {"kind": "images"}, ("channel",))
    assert err.value.hint == "drop --slice (TFSHIP_SLICE)"


def test_slice_values_follow_the_csv_rows_and_name_a_missing_value(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text('channel,stars\n web ,1\n,2\n"app",3\n')
    assert slice_values(path, ["channel"])["channel"].tolist() == ["web", MISSING, "app"]


# ---- the numbers behind the plots ----------------------------------------------------------


def test_calibration_bins_count_mean_and_observed_frequency_per_bin():
    predicted = np.array([0.0, 0.05, 0.12, 0.18, 0.55, 0.95, 0.97, 1.0])
    observed = np.array([0, 0, 1, 0, 1, 1, 1, 0])
    bins = table_plots.calibration_bins(predicted, observed, bins=4)
    assert [(b["lo"], b["hi"], b["count"]) for b in bins] == [
        (0.0, 0.25, 4),
        (0.25, 0.5, 0),
        (0.5, 0.75, 1),
        (0.75, 1.0, 3),  # 1.0 falls in the last bin
    ]
    assert bins[0]["mean_predicted"] == pytest.approx(0.0875)
    assert bins[0]["observed"] == 0.25
    assert bins[1]["mean_predicted"] is None and bins[1]["observed"] is None
    assert bins[3]["mean_predicted"] == pytest.approx(0.973333, abs=1e-6)
    assert bins[3]["observed"] == pytest.approx(2 / 3, abs=1e-6)
    # ECE: (4 * |0.25 - 0.0875| + 1 * |1 - 0.55| + 3 * |2/3 - 0.973333|) / 8
    expected = (4 * 0.1625 + 0.45 + 3 * (0.973333 - 2 / 3)) / 8
    assert table_plots.calibration_error(bins) == pytest.approx(expected, abs=1e-5)


def test_calibration_compares_the_positive_class_or_the_predicted_one():
    binary = np.array([[0.9, 0.1], [0.3, 0.7]])
    p, hit, what = table_plots.calibration_inputs(binary, np.array([1, 1]), ["neg", "pos"])
    assert p.tolist() == [0.1, 0.7] and hit.tolist() == [True, True] and "pos" in what
    three = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    p, hit, _ = table_plots.calibration_inputs(three, np.array([0, 1]), ["a", "b", "c"])
    assert p.tolist() == [0.6, 0.6] and hit.tolist() == [True, False]


def test_the_roc_curve_runs_corner_to_corner_and_its_area_is_the_auc():
    scores = np.array([0.9, 0.8, 0.8, 0.6, 0.4, 0.4, 0.3, 0.1])
    positive = np.array([1, 1, 0, 1, 0, 1, 0, 0], dtype=bool)
    fpr, tpr = table_plots.roc_points(scores, positive)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert len(fpr) == len(np.unique(scores)) + 1  # tied scores are one threshold
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(scores, positive))
    assert roc_auc(scores, positive) == pytest.approx(13 / 16)  # ties count half
    assert table_plots.roc_points(scores, np.ones(8, dtype=bool))[0].size == 0


# ---- the PNGs ------------------------------------------------------------------------------


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


@pytest.mark.parametrize(
    ("classes", "files"),
    [
        (["neg", "pos"], ["roc.png", "calibration.png"]),
        (["a", "b", "c"], ["roc.png", "calibration.png"]),
        (None, ["residuals.png", "predicted_vs_actual.png"]),
    ],
)
def test_each_task_writes_its_plots_the_same_every_time(tmp_path, classes, files):
    rng = np.random.default_rng(1)
    if classes is None:
        y = rng.normal(50, 10, 200)
        out = (y + rng.normal(0, 5, 200))[:, None]
    else:
        y = rng.integers(0, len(classes), 200)
        out = rng.dirichlet(np.ones(len(classes)), 200)
        out[np.arange(200), y] += 1.0
        out /= out.sum(axis=1, keepdims=True)
    shown = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        shown = table_plots.write_plots(tmp_path / run, out, y, classes)
    assert [name for _, name in shown] == files
    for name in files:
        assert_png(tmp_path / "a" / name)
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_the_report_shows_each_slice_says_which_are_not_gated_and_links_the_plots():
    out, y, values = classification_case()
    slices = slice_metrics("classification", out, y, values, 0, ["neg", "pos"], 20)
    metrics = slice_metrics("classification", out, y, np.array(["all"] * 65), 0, ["neg", "pos"], 1)
    whole = {**metrics["all"], "calibration_error": 0.1}
    checks = slice_checks("channel", slices, "classification", GATES)
    plots = [("ROC curve", "roc.png"), ("calibration", "calibration.png")]
    text = render(whole, checks, "classification", ["neg", "pos"], {"channel": slices}, plots, 20)
    assert "## Slices by channel" in text
    assert "| fax | 5 | 0.0000 |" in text and "no (< 20 rows) |" in text
    assert "| app | 30 | 0.5000 |" in text
    assert "![ROC curve](roc.png)" in text and "![calibration](calibration.png)" in text
    assert "**Gate FAILED**: slice[channel=app] accuracy: 0.5 >= 0.9 FAILED" in text


# ---- retrain's report: class names, slices side by side ------------------------------------


def named(accuracy: float, recall: list[float], slices: dict | None = None) -> dict:
    m = {
        "accuracy": accuracy,
        "loss": 0.1,
        "classes": ["negative", "positive"],
        "per_class": {"recall": recall, "support": [10, 10]},
    }
    return {**m, "slices": slices} if slices else m


def test_retrain_names_a_table_s_classes_in_its_checks_and_side_by_side():
    champ, chall = named(0.95, [0.9, 0.95]), named(0.96, [0.7, 1.0])
    s = RetrainSettings(tolerance=0.01, min_accuracy=0.9, max_class_drop=0.05)
    assert [c.name for c in failed(decide(champ, chall, s))] == ["recall drop[negative]"]
    table = side_by_side(champ, chall, 3)
    assert "| recall negative | 0.900 | 0.700 | -0.200 |" in table
    assert "class 0" not in table


def test_retrain_shows_each_slice_for_champion_and_challenger():
    by = {"channel": {"app": {"rows": 40, "accuracy": 0.9}, "web": {"rows": 60, "accuracy": 1.0}}}
    better = {
        "channel": {"app": {"rows": 40, "accuracy": 0.95}, "web": {"rows": 60, "accuracy": 1.0}}
    }
    text = slice_side_by_side(named(0.96, [1, 1], by), named(0.98, [1, 1], better), 3)
    assert "### By channel (accuracy; shown, not gated)" in text
    assert "| app | 40 | 0.9000 | 0.9500 | +0.0500 |" in text
    assert "| web | 60 | 1.0000 | 1.0000 | +0.0000 |" in text
    assert slice_side_by_side(None, named(0.98, [1, 1], better), None) == ""


# ---- end to end: `tfship test --slice` on the bundled reviews ------------------------------


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> Path:
    """A folder whose workspace holds the reviews table, built and trained."""
    root = tmp_path_factory.mktemp("reviews")
    for args in (["build", "--data", "reviews"], ["train", "--epochs", "30"]):
        r = run_cli(*args, cwd=root)
        assert r.code == 0, r.err
    return root


def test_tfship_test_slices_reviews_by_channel_and_writes_its_plots(reviews):
    with (reviews / "workspace" / "data" / "test.csv").open(newline="") as fh:
        channels = Counter(row["channel"] for row in csv.DictReader(fh))
    # Gates low enough that this checks the slicing, not the model's luck on a slice.
    gates = ["--min-accuracy", "0.6", "--min-slice-rows", "20"]
    r = run_cli("test", "--slice", "channel", *gates, "--json", cwd=reviews)
    assert r.code == 0, r.err
    result = json.loads(r.out)
    ev = reviews / "workspace" / "eval"
    assert json.loads((ev / "metrics.json").read_text())["slices"] == result["slices"]
    by = result["slices"]["channel"]
    assert {v: m["rows"] for v, m in by.items()} == dict(channels)
    assert {v: m["gated"] for v, m in by.items()} == {v: n >= 20 for v, n in channels.items()}
    assert not all(m["gated"] for m in by.values())  # 'store' is ~12 rows: shown, not gated
    whole = result["metrics"]
    right = sum(round(m["accuracy"] * m["rows"]) for m in by.values())
    assert right == round(whole["accuracy"] * whole["rows"])  # the slices partition the rows
    names = [c["name"] for c in result["checks"]]
    for value, m in by.items():
        assert (f"slice[channel={value}] accuracy" in names) is m["gated"]
    assert names.index("accuracy vs baseline (majority class)") < names.index(
        next(n for n in names if n.startswith("slice["))
    )
    assert result["thresholds"]["min_slice_rows"] == 20
    assert len(whole["calibration_bins"]) == 10
    assert sum(b["count"] for b in whole["calibration_bins"]) == whole["rows"]
    report = (ev / "report.md").read_text()
    assert "## Slices by channel" in report and "no (< 20 rows)" in report
    for name in ("roc.png", "calibration.png", "confusion_matrix.png"):
        assert f"]({name})" in report
        assert_png(ev / name)


def test_the_slice_setting_is_read_from_the_environment_comma_separated(reviews):
    env = clean_env(TFSHIP_SLICE="channel,channel", TFSHIP_MIN_SLICE_ROWS="1000")
    r = run_cli("test", "--json", cwd=reviews, env=env)
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert list(result["slices"]) == ["channel"]
    assert not any(m["gated"] for m in result["slices"]["channel"].values())
    assert not any(c["name"].startswith("slice[") for c in result["checks"])


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("stars", "--slice stars: is not categorical"),
        ("review", "--slice review: is not categorical"),
        ("channel,region", "--slice region: is not a feature of schema.pbtxt"),
    ],
)
def test_a_bad_slice_is_one_line_exit_2_and_leaves_the_last_evaluation(reviews, value, needle):
    metrics = reviews / "workspace" / "eval" / "metrics.json"
    before = metrics.read_bytes() if metrics.exists() else None
    r = run_cli("test", "--slice", value, cwd=reviews)
    assert r.code == 2
    assert "Traceback" not in r.err
    (line,) = r.err_lines
    assert line.startswith(f"tfship test: bad setting: {needle}")
    assert line.endswith("(slice by a categorical feature: channel)")
    assert (metrics.read_bytes() if metrics.exists() else None) == before


def test_retrain_scores_a_bounded_number_of_the_new_snapshots_test_rows(tmp_path, monkeypatch):
    """However big the new snapshot, retrain holds at most RETRAIN_EVAL_ROWS of its test rows
    (the first ones of test.csv, itself a random split), not the whole split."""
    from tfship import config
    from tfship.table_retrain import eval_rows
    from tfship.tables import table_stats
    from tfship.workspace import Workspace, write_json

    ws = Workspace(tmp_path / "workspace")
    ws.data.mkdir(parents=True)
    rows = "".join(f"{i},{'ab'[i % 2]},{i % 2}\n" for i in range(500))
    (ws.data / "test.csv").write_text("x,c,target\n" + rows)
    stats, _ = table_stats(ws.data / "test.csv")
    write_json(ws.data / "stats.json", stats.to_dict())
    kinds = {"x": "numeric", "c": "categorical"}
    info = {"inputs": kinds, "label": "target", "classes": ["0", "1"]}
    monkeypatch.setattr(config, "RETRAIN_EVAL_ROWS", 120)
    cols, labels = eval_rows(ws, info, None, None)
    assert len(labels) == len(cols["x"]) == len(cols["c"]) == 120
    assert cols["x"][:3].tolist() == [0.0, 1.0, 2.0]  # the first rows, in order


def test_auc_rmse_and_mae_are_gated_only_when_asked():
    from tfship.evaluate import Gates
    from tfship.table_eval import table_checks

    cls = {
        "accuracy": 0.9,
        "baseline_accuracy": 0.5,
        "auc": 0.8,
        "per_class": {"recall": [0.9, 0.9], "support": [5, 5]},
    }
    names = [c.name for c in table_checks(cls, "classification", ["a", "b"], Gates())]
    assert "auc" not in names  # reported, not gated, by default
    (auc,) = [
        c
        for c in table_checks(cls, "classification", ["a", "b"], Gates(min_auc=0.85))
        if c.name == "auc"
    ]
    assert not auc.passed and auc.value == 0.8
    one_class = {**cls, "auc": None}  # a split with one class has no AUC: it cannot pass
    checks = table_checks(one_class, "classification", ["a", "b"], Gates(min_auc=0.5))
    assert not next(c for c in checks if c.name == "auc").passed

    reg = {"r2": 0.5, "rmse": 40.0, "mae": 30.0, "baseline_rmse": 60.0}
    assert [c.name for c in table_checks(reg, "regression", None, Gates())] == [
        "r2",
        "rmse vs baseline (train mean)",
    ]
    checks = table_checks(reg, "regression", None, Gates(max_rmse=50, max_mae=25))
    verdict = {c.name: c.passed for c in checks}
    assert verdict["rmse"] is True and verdict["mae"] is False
    assert checks[-1].name == "rmse vs baseline (train mean)"  # the baseline stays last
