"""Tables: build (task, schema beside the data, anomalies refused, split), train and test."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import requests
from helpers import assert_build_rejected, serve_model
from tfship.tables import write_bundled, write_reviews


def rows_of(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.mark.parametrize(
    ("name", "task", "classes", "total"),
    [
        ("breast_cancer", "classification", ["benign", "malignant"], 569),
        ("wine", "classification", ["class_0", "class_1", "class_2"], 178),
        ("diabetes", "regression", None, 442),
    ],
)
def test_the_bundled_tables_build_with_their_task_and_a_stratified_split(
    cli, tmp_path, name, task, classes, total
):
    r = cli("build", "--data", name, "--json")
    assert r.code == 0, r.err
    m = json.loads(r.out)
    assert (m["kind"], m["task"], m["classes"], m["label"]) == ("table", task, classes, "target")
    assert sum(m["rows"].values()) == total
    data = tmp_path / "workspace" / "data"
    assert sorted(p.name for p in data.iterdir()) == [
        "manifest.json",
        "schema.pbtxt",
        "stats.json",
        "test.csv",
        "train.csv",
        "val.csv",
    ]
    split = {s: rows_of(data / f"{s}.csv") for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in split.items()} == m["rows"]
    assert m["rows"]["test"] == pytest.approx(0.15 * total, abs=len(classes or [1]) * 2)
    if classes:  # every class in every split, in the whole table's proportions
        whole = Counter(row["target"] for v in split.values() for row in v)
        test = Counter(row["target"] for row in split["test"])
        for c in classes:
            assert test[c] / len(split["test"]) == pytest.approx(whole[c] / total, abs=0.05)
    stats = json.loads((data / "stats.json").read_text())
    assert stats["rows"] == total


def test_the_same_data_and_seed_give_the_same_split_and_another_seed_another(cli, tmp_path):
    def split(*args: str) -> str:
        assert cli("build", "--data", "wine", *args).code == 0
        return (tmp_path / "workspace" / "data" / "test.csv").read_text()

    first = split()
    assert split() == first
    assert split("--seed", "7") != first


def test_the_schema_is_inferred_beside_the_data_then_later_snapshots_are_checked(cli, tmp_path):
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    write_bundled("wine", snaps / "2026-01.csv")
    r = cli("build", "--data", "snaps", "--label", "target", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["schema"] == {
        "status": "inferred",
        "path": "snaps/schema.pbtxt",
        "sha256": json.loads(r.out)["schema"]["sha256"],
    }
    schema = (snaps / "schema.pbtxt").read_text()
    assert 'name: "alcohol"\n  type: FLOAT' in schema and 'value: "class_1"' in schema
    assert (tmp_path / "workspace" / "data" / "schema.pbtxt").read_text() == schema

    rows = rows_of(snaps / "2026-01.csv")[:150]  # a newer snapshot, same distributions
    write_rows(snaps / "2026-02.csv", rows)
    r = cli("build", "--data", "snaps", "--label", "target", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["schema"]["status"] == "checked"
    before = (tmp_path / "workspace" / "data" / "manifest.json").read_text()

    for i, row in enumerate(rows):  # a broken snapshot: shifted values, a lost column
        if i < 40:
            row["alcohol"] = str(float(row["alcohol"]) + 10)
        del row["hue"]
    write_rows(snaps / "2026-03.csv", rows)
    r = cli("build", "--data", "snaps", "--label", "target")
    assert r.code == 2, r.err
    (line,) = r.err_lines
    assert line.startswith("tfship build: bad input: snaps/2026-03.csv breaks snaps/schema.pbtxt:")
    assert "alcohol: " in line and "outside [11.03, 14.83" in line
    assert "hue: column is in the schema but not in the data" in line
    assert (tmp_path / "workspace" / "data" / "manifest.json").read_text() == before
    assert (snaps / "schema.pbtxt").read_text() == schema  # never rewritten by a check


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("--label", "colour"), ("no column 'colour'", "set --label")),
        (("--label", "target", "--task", "regression"), ("label 'target' holds strings",)),
        (("--label", "target", "--min-rows-per-class", "100"), ("class 'class_2' has 48 rows",)),
        (("--label", "alcohol", "--schema", "missing.pbtxt"), ("--schema missing.pbtxt",)),
    ],
)
def test_bad_table_input_is_one_line_and_nothing_written(cli, tmp_path, args, needles):
    write_bundled("wine", tmp_path / "wine.csv")
    r = cli("build", "--data", "wine.csv", *args)
    assert_build_rejected(r, tmp_path, *needles)
    assert not (tmp_path / "schema.pbtxt").exists()


def test_a_broken_schema_file_is_named(cli, tmp_path):
    write_bundled("wine", tmp_path / "wine.csv")
    (tmp_path / "schema.pbtxt").write_text('feature { name: "alcohol" typ: FLOAT }\n')
    r = cli("build", "--data", "wine.csv", "--label", "target")
    assert_build_rejected(r, tmp_path, "schema.pbtxt:1:", "typ")


@pytest.mark.parametrize(
    ("name", "gate", "floor"),
    [
        ("breast_cancer", "accuracy", 0.9),
        ("wine", "accuracy", 0.9),
        ("reviews", "accuracy", 0.9),  # text, a categorical and a number
        ("diabetes", "r2", 0.2),
    ],
)
def test_each_bundled_table_trains_and_passes_its_tasks_gates(cli, tmp_path, name, gate, floor):
    assert cli("build", "--data", name).code == 0
    r = cli("train", "--epochs", "30")
    assert r.code == 0, r.err
    r = cli("test", "--json")
    assert r.code == 0, r.err
    result = json.loads(r.out)
    metrics = result["metrics"]
    assert metrics[gate] >= floor
    names = [c["name"] for c in result["checks"]]
    if gate == "accuracy":
        assert metrics["auc"] > 0.95
        assert metrics["accuracy"] > metrics["baseline_accuracy"]
        assert names[-1] == "accuracy vs baseline (majority class)"
        assert all(f"recall[{c}]" in names for c in metrics["classes"])
    else:
        assert metrics["rmse"] < metrics["baseline_rmse"] and metrics["mae"] > 0
        assert names == ["r2", "rmse vs baseline (train mean)"]
    report = (tmp_path / "workspace" / "eval" / "report.md").read_text()
    assert "**Gate PASSED**" in report


PREDICT = """
import json, sys
import keras, tensorflow as tf
model = keras.models.load_model(sys.argv[1])
out = model({k: tf.constant([v]) for k, v in json.loads(sys.argv[2]).items()})
print(json.dumps(out.numpy().tolist()))
"""


def test_the_model_takes_raw_features_and_unseen_categories_and_words(cli, tmp_path):
    assert cli("build", "--data", "reviews").code == 0
    assert cli("train", "--epochs", "30").code == 0
    model = tmp_path / "workspace" / "model" / "model.keras"

    def predict(row: dict) -> list[float]:
        p = subprocess.run(
            [sys.executable, "-c", PREDICT, str(model), json.dumps(row)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 0, p.stderr[-2000:]
        return json.loads(p.stdout)[0]

    classes = json.loads((tmp_path / "workspace" / "model" / "train.json").read_text())["classes"]
    good = predict({"review": "great excellent perfect", "channel": "web", "stars": 5.0})
    assert classes[max(range(2), key=good.__getitem__)] == "positive"
    unseen = predict({"review": "zebra quartz", "channel": "fax", "stars": 3.0})
    assert sum(unseen) == pytest.approx(1.0, abs=1e-5) and all(0 <= p <= 1 for p in unseen)


def test_the_same_table_and_seed_train_the_same_model(cli, tmp_path):
    assert cli("build", "--data", "wine").code == 0
    shas = []
    for _ in range(2):
        assert cli("train", "--epochs", "5").code == 0
        info = json.loads((tmp_path / "workspace" / "model" / "train.json").read_text())
        shas.append(info["model_sha256"])
    assert shas[0] == shas[1]


@pytest.mark.parametrize(
    ("name", "api", "example"),
    [
        (
            "reviews",
            "classify",
            {"review": "awful broken refund", "channel": "app", "stars": 1},
        ),
        (
            "diabetes",
            "regress",
            {
                "age": 50,
                "sex": 1,
                "bmi": 30.1,
                "bp": 90.0,
                "s1": 180,
                "s2": 100.2,
                "s3": 40.0,
                "s4": 4.0,
                "s5": 4.8,
                "s6": 90,
            },
        ),
    ],
)
def test_a_table_is_packaged_deployed_and_served_through_tf_servings_apis(
    cli, tmp_path, name, api, example
):
    for args in (["build", "--data", name], ["train", "--epochs", "30"], ["test"]):
        assert cli(*args).code == 0
    r = cli("package", "--version", "1", "--json")
    assert r.code == 0, r.err
    vdir = Path(json.loads(r.out)["path"])
    manifest = json.loads((vdir / "assets.extra" / "tfship.json").read_text())
    assert manifest["kind"] == "table" and manifest["golden"]["input_name"] is None
    assert set(manifest["signature"]["inputs"]) == set(example)
    base = tmp_path / "models" / "digits"
    base.mkdir(parents=True)
    served = serve_model(tmp_path, base)
    try:
        r = cli("deploy", "--base-path", str(base.parent), "--url", served.rest)
        assert r.code == 0, r.err  # deploy runs stage 7's checks on the served version
        r = cli("test-deployed", "--url", served.rest, "--json")
        assert r.code == 0, r.err
        checks = {c["name"]: c for c in json.loads(r.out)["checks"]}
        quality = "served accuracy" if api == "classify" else "served r2"
        assert checks[quality]["passed"] and checks["golden outputs max abs diff"]["passed"]
        # the classify/regress signature, through TF Serving's Classify/Regress API
        assert checks[f"{api} API max abs diff"]["passed"], checks
        url = f"{served.rest}/v1/models/digits"
        row = requests.post(f"{url}:predict", json={"instances": [example]}, timeout=10).json()
        ex = requests.post(
            f"{url}:{api}", json={"signature_name": api, "examples": [example]}, timeout=10
        ).json()
        if api == "classify":  # row format: class names and scores; Classify: the same
            (pred,) = row["predictions"]
            assert pred["classes"] == manifest["classes"] == ["negative", "positive"]
            assert pred["scores"][0] > 0.5  # an awful review is negative
            ((c0, s0), (c1, s1)) = ex["results"][0]
            assert (c0, c1) == ("negative", "positive")
            assert s0 == pytest.approx(pred["scores"][0], abs=1e-5)
        else:
            (value,) = row["predictions"]
            assert ex["results"] == [pytest.approx(value, abs=1e-3)]
            assert 25 < value < 346  # within the target's range
            # A number missing from an Example is the training mean inside the graph, as
            # training filled it: the same answer as the row with the mean written in.
            stats = json.loads((tmp_path / "workspace" / "data" / "stats.json").read_text())
            mean = next(f["mean"] for f in stats["features"] if f["name"] == "bmi")
            without = {k: v for k, v in example.items() if k != "bmi"}
            ex = requests.post(
                f"{url}:regress", json={"signature_name": api, "examples": [without]}, timeout=10
            ).json()
            row = requests.post(
                f"{url}:predict", json={"instances": [{**example, "bmi": mean}]}, timeout=10
            ).json()
            assert ex["results"] == [pytest.approx(row["predictions"][0], abs=1e-3)], ex
            assert row["predictions"][0] != pytest.approx(value, abs=1e-3)  # bmi matters
    finally:
        served.stop()


def test_tfship_run_takes_a_table_through_the_whole_loop(cli, tmp_path):
    # The retrain cycle reads its snapshot as the first build read the bundled set (label
    # `target`); the same rows again are no new data: nothing trains, nothing ships.
    again = write_bundled("wine", tmp_path / "wine-again.csv")
    r = cli(
        "run", "--data", "wine", "--retrain", "--retrain-data", str(again),
        "--stop-serving", "--json", timeout=400,
    )  # fmt: skip
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    checks = {c["name"]: c for c in doc["results"]["test-deployed"]["checks"]}
    assert checks["served accuracy"]["passed"] and checks["classify API max abs diff"]["passed"]
    [request] = doc["requests"]  # a table's named features (no image bytes)
    assert request["instances"][0].keys() >= {"alcohol", "proline"}
    assert doc["results"]["retrain:build"]["rows"] == doc["results"]["build"]["rows"]
    assert doc["results"]["retrain"]["decision"] == "no-new-data", doc["results"]["retrain"]
    # Without a new snapshot a table has nothing to retrain on: refused before any work.
    r = cli("run", "--data", "wine", "--retrain", "--stop-serving", timeout=60)
    assert r.code == 2 and "--retrain on a table (wine) needs --retrain-data" in r.err_lines[-1]


def test_retrain_on_a_table_compares_on_the_same_rows_and_reports_drift(cli, tmp_path):
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    write_reviews(snaps / "2026-01.csv", seed=7)
    base = tmp_path / "models" / "digits"
    base.mkdir(parents=True)
    served = serve_model(tmp_path, base)
    target = ("--base-path", str(base.parent), "--url", served.rest)
    try:
        for args in (
            ["build", "--data", "snaps", "--label", "target"],
            ["train", "--epochs", "30"],
            ["test"],
            ["package", "--version", "1"],
            ["deploy", *target],
        ):
            r = cli(*args)
            assert r.code == 0, (args, r.err)
        r = cli("retrain", *target, "--json")  # the data it serves: nothing to do
        assert r.code == 0 and json.loads(r.out)["decision"] == "no-new-data"

        rows = rows_of(write_reviews(tmp_path / "next.csv", seed=8))
        for row in rows:  # the same task, but every review now comes from the store
            row["channel"] = "store"
        write_rows(snaps / "2026-02.csv", rows)
        assert cli("build", "--data", "snaps", "--label", "target").code == 0
        r = cli("retrain", *target, "--epochs", "30", "--json")
        assert r.code == 0, r.err
        assert "Warning" not in r.err  # tf.data knows the split's length: Keras stays quiet
        decision = json.loads(r.out)
        assert decision["decision"] == "deploy-challenger"
        assert decision["eval_rows"] == 90 + 89  # new test split + the champion's rows
        how, channel = decision["drift"]["channel"]
        assert how == "L-inf" and channel > 0.7  # 'store' went from ~20% to 100%
        assert decision["drift"]["stars"][0] == "JS"
        report = (tmp_path / "workspace" / "retrain" / "report.md").read_text()
        assert "### Drift: champion's training data vs the new snapshot" in report
        assert "| channel | L-inf |" in report

        r = cli("retrain", *target, "--epochs", "30", "--max-drift", "0.2")
        assert r.code == 3, r.err
        assert "drift[channel] (L-inf)" in r.err_lines[-1] and "<= 0.2 FAILED" in r.err_lines[-1]
        assert not (tmp_path / "workspace" / "model").exists()  # nothing left to package

        # A category the champion never saw (within the schema's 1% out-of-domain bound):
        # the build takes it and the retrain fine-tunes and scores it (the lookup's
        # out-of-vocabulary bucket), whatever its decision: it never crashes.
        rows = rows_of(write_reviews(tmp_path / "later.csv", seed=9))
        for i, row in enumerate(rows):
            if i % 200 == 0:
                row["channel"] = "kiosk"
        write_rows(snaps / "2026-03.csv", rows)
        assert cli("build", "--data", "snaps", "--label", "target").code == 0
        r = cli("retrain", *target, "--epochs", "30", "--json")
        assert r.code in (0, 3) and "Traceback" not in r.err, r.err
        assert (tmp_path / "workspace" / "retrain" / "report.md").exists()
    finally:
        served.stop()


def test_a_table_that_misses_its_gate_is_one_line_and_keeps_its_report(cli, tmp_path):
    assert cli("build", "--data", "diabetes").code == 0
    assert cli("train", "--epochs", "30").code == 0
    r = cli("test", "--min-r2", "0.99")  # unreachable on diabetes: fails by construction
    assert r.code == 3
    line = r.err_lines[-1]  # after the stage's own event lines
    assert "Traceback" not in r.err
    assert line.startswith("tfship test: gate failed: quality gate failed: r2: ")
    assert ">= 0.99 FAILED" in line
    report = (tmp_path / "workspace" / "eval" / "report.md").read_text()
    assert "**Gate FAILED**" in report


# ---- Stage 3's slices and plots, retrain by class name and slice (tests/test_table_eval.py
# has the unit tests) --------------------------------------------------------------------------


def test_a_regression_table_plots_its_residuals_and_has_nothing_to_slice_by(cli, tmp_path):
    assert cli("build", "--data", "diabetes").code == 0
    assert cli("train", "--epochs", "30").code == 0
    r = cli("test", "--slice", "sex")  # a number: diabetes has no categorical feature
    assert r.code == 2 and "Traceback" not in r.err
    (line,) = r.err_lines
    assert line == (
        "tfship test: bad setting: --slice sex: is not categorical (a number or text: it has "
        "no vocabulary) (schema.pbtxt has no categorical feature: drop --slice)"
    )
    assert cli("test").code == 0
    ev = tmp_path / "workspace" / "eval"
    report = (ev / "report.md").read_text()
    for name in ("residuals.png", "predicted_vs_actual.png"):
        assert f"]({name})" in report
        assert (ev / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (ev / "roc.png").exists() and not (ev / "confusion_matrix.png").exists()


def test_retrain_shows_a_table_per_class_by_name_and_per_slice(cli, tmp_path):
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    write_reviews(snaps / "2026-01.csv", seed=7)
    base = tmp_path / "models" / "digits"
    base.mkdir(parents=True)
    served = serve_model(tmp_path, base)
    target = ("--base-path", str(base.parent), "--url", served.rest)
    try:
        for args in (
            ["build", "--data", "snaps", "--label", "target"],
            ["train", "--epochs", "30"],
            ["test"],
            ["package", "--version", "1"],
            ["deploy", *target],
        ):
            r = cli(*args)
            assert r.code == 0, (args, r.err)
        write_reviews(snaps / "2026-02.csv", seed=8)
        assert cli("build", "--data", "snaps", "--label", "target").code == 0
        r = cli("retrain", *target, "--slice", "stars")  # refused before anything trains
        assert r.code == 2 and r.err_lines[-1].startswith(
            "tfship retrain: bad setting: --slice stars: is not categorical"
        )
        # Loose gates: this checks what the report shows, whichever model is better.
        loose = ("--tolerance", "1", "--max-class-drop", "1", "--min-accuracy", "0")
        r = cli("retrain", *target, *loose, "--slice", "channel", "--epochs", "10", "--json")
        assert r.code == 0, r.err
        decision = json.loads(r.out)
        champ, chall = decision["champion"]["slices"], decision["challenger"]["slices"]
        assert set(champ["channel"]) == set(chall["channel"]) == {"app", "store", "web"}
        assert sum(m["rows"] for m in chall["channel"].values()) == decision["eval_rows"]
        names = [c["name"] for c in decision["checks"]]
        assert "recall drop[negative]" in names and "recall drop[positive]" in names
        report = (tmp_path / "workspace" / "retrain" / "report.md").read_text()
        assert "| recall negative |" in report and "| recall positive |" in report
        assert "recall class" not in report
        assert "### By channel (accuracy; shown, not gated)" in report
        app = chall["channel"]["app"]
        old = champ["channel"]["app"]
        assert f"| app | {app['rows']} | {old['accuracy']:.4f} | {app['accuracy']:.4f} |" in report
    finally:
        served.stop()
