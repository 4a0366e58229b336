"""Stage 3 for tables: metrics for the task, gates, and the trivial baseline every model must beat.

Classification: accuracy, per-class precision/recall/F1 (by class name), AUC (ROC; one-vs-rest
macro average for more than two classes), cross-entropy, calibration; the baseline always
answers the training split's most frequent class. Regression: RMSE, MAE and R2; the baseline
always answers the training split's mean. Gates: classification as for images
(``--min-accuracy``, ``--min-class-recall``), regression ``--min-r2``; and for every task
"beats the baseline".

Slices, as TFMA's: ``--slice FEATURE`` names a categorical feature of the schema; the task's
metrics are computed again on the test rows of each of its values, and a value with at least
``--min-slice-rows`` rows is gated as the whole is (accuracy or R2, and the baseline on that
slice's rows). A smaller one is reported, not gated: its numbers would gate on noise.

The metric functions are plain NumPy; only :func:`evaluate_table` loads the model. Its plots
(ROC and calibration, or residuals) are :mod:`tfship.table_plots`'s.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from tfship import evaluate as ev  # evaluate imports this module: attributes at call time
from tfship import schema as sch
from tfship import table_plots
from tfship.errors import ConfigError, DataError
from tfship.log import event, quiet_tensorflow
from tfship.report import Check, check_table, failed, summary, write_junit
from tfship.stats import TableStats
from tfship.tables import CLASSIFICATION, read_csv
from tfship.trainer import load_model
from tfship.workspace import Workspace, read_json, sha256_file, write_json

MISSING = "<missing>"  # a slice's value where the feature is missing


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting
    half (the Mann-Whitney U statistic). NaN when one side is empty."""
    n_pos = int(positive.sum())
    n_neg = len(scores) - n_pos
    if not n_pos or not n_neg:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based, ties share their mean
    u = average_rank[inverse][positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Binary: the ROC AUC of class 1's probability; more classes: the macro one-vs-rest mean
    over the classes present."""
    if probs.shape[1] == 2:
        return roc_auc(probs[:, 1], labels == 1)
    per = [roc_auc(probs[:, c], labels == c) for c in range(probs.shape[1])]
    per = [a for a in per if not np.isnan(a)]
    return float(np.mean(per)) if per else float("nan")


def regression_metrics(y: np.ndarray, pred: np.ndarray, baseline: float) -> dict:
    """RMSE, MAE, R2 of ``pred``, and the RMSE of always answering ``baseline``."""
    err = pred - y
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return {
        "rows": int(len(y)),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": float(1 - np.sum(err**2) / ss_tot) if ss_tot > 0 else float("nan"),
        "baseline_rmse": float(np.sqrt(np.mean((y - baseline) ** 2))),
    }


def task_metrics(
    task: str, out: np.ndarray, y: np.ndarray, baseline: float | int, classes: list[str] | None
) -> dict:
    """The task's metrics of the model's outputs ``out`` against ``y``, with the baseline's
    (``baseline``: the training split's majority class index, or its mean target)."""
    if task != CLASSIFICATION:
        return regression_metrics(y.astype(np.float64), out[:, 0].astype(np.float64), baseline)
    metrics = ev.classification_metrics(
        y, out.argmax(axis=1), len(classes), ev.cross_entropy(out, y)
    )
    metrics["auc"] = auc(out, y)
    metrics["baseline_accuracy"] = float(np.mean(y == baseline))
    return metrics


def _headline_and_baseline(
    metrics: dict, task: str, gates: ev.Gates, prefix: str = ""
) -> tuple[Check, Check]:
    """The absolute gate (accuracy or R2) and "beats the baseline", named with ``prefix``.

    On a slice whose rows are all the majority class the baseline is perfect: there the
    model must tie it (no model can beat 1.0)."""
    if task != CLASSIFICATION:
        return (
            Check(f"{prefix}r2", metrics["r2"], ">=", gates.min_r2),
            Check(
                f"{prefix}rmse vs baseline (train mean)",
                metrics["rmse"],
                "<",
                metrics["baseline_rmse"],
            ),
        )
    perfect = bool(prefix) and metrics["baseline_accuracy"] >= 1.0
    return (
        Check(f"{prefix}accuracy", metrics["accuracy"], ">=", gates.min_accuracy),
        Check(
            f"{prefix}accuracy vs baseline (majority class)",
            metrics["accuracy"],
            ">=" if perfect else ">",
            metrics["baseline_accuracy"],
            "every row of this slice is the majority class" if perfect else "",
        ),
    )


def table_checks(
    metrics: dict, task: str, classes: list[str] | None, gates: ev.Gates
) -> list[Check]:
    """The gates for the task on the whole test split, the baseline last."""
    headline, baseline = _headline_and_baseline(metrics, task, gates)
    checks = [headline]
    if task == CLASSIFICATION:
        pc = metrics["per_class"]
        for name, recall, support in zip(classes, pc["recall"], pc["support"], strict=True):
            if support:
                checks.append(Check(f"recall[{name}]", recall, ">=", gates.min_class_recall))
        if gates.min_auc is not None:  # None (one class in the split) fails it: NaN
            auc_ = metrics.get("auc")
            checks.append(Check("auc", math.nan if auc_ is None else auc_, ">=", gates.min_auc))
    else:
        for name, limit in (("rmse", gates.max_rmse), ("mae", gates.max_mae)):
            if limit is not None:
                checks.append(Check(name, metrics[name], "<=", limit))
    return [*checks, baseline]


# --------------------------------------------------------------------------------------------
# Slices (TFMA's): the same metrics and gates on the rows of each value of a categorical feature
# --------------------------------------------------------------------------------------------


def categorical_features(schema: object, label: str) -> list[str]:
    """The schema's categorical features, label excluded: a string domain (a vocabulary), or
    an integer domain marked ``is_categorical``."""
    return [
        f.name
        for f in schema.feature
        if f.name != label
        and (
            sch.domain_values(schema, f) is not None
            or (f.HasField("int_domain") and f.int_domain.is_categorical)
        )
    ]


def slice_features(requested: tuple[str, ...], schema: object, label: str) -> list[str]:
    """The features ``--slice`` names (a value may list several, comma-separated), once each,
    in order. ConfigError for a name that is not a categorical feature of the schema."""
    names = [n.strip() for entry in requested for n in entry.split(",")]
    names = list(dict.fromkeys(n for n in names if n))
    allowed = categorical_features(schema, label)
    known = {f.name for f in schema.feature}
    for name in names:
        if name in allowed:
            continue
        if name == label:
            why = "is the label"
        elif name in known:
            why = "is not categorical (a number or text: it has no vocabulary)"
        else:
            why = f"is not a feature of {sch.SCHEMA_FILE}"
        fix = (
            f"slice by a categorical feature: {', '.join(allowed)}"
            if allowed
            else f"{sch.SCHEMA_FILE} has no categorical feature: drop --slice"
        )
        raise ConfigError(f"--slice {name}: {why}", hint=fix)
    return names


def requested_slices(ws: Workspace, data_manifest: dict, requested: tuple[str, ...]) -> list[str]:
    """The categorical features ``--slice`` names, checked against the workspace data's
    schema (stage 3 and retrain call this first: a typo fails before a model loads)."""
    if not requested:
        return []
    if data_manifest.get("kind") != "table":
        raise ConfigError(
            f"--slice {','.join(requested)}: slices are by a categorical feature of a table; "
            "this workspace holds images",
            hint=f"drop --slice ({ev.SLICES.env})",
        )
    schema = sch.read_schema(ws.data / sch.SCHEMA_FILE)
    return slice_features(requested, schema, data_manifest["label"])


def slice_values(path: Path, features: list[str]) -> dict[str, np.ndarray]:
    """Each feature's value on every row of a split's CSV, in file order (stripped; a missing
    value is :data:`MISSING`)."""
    cols: dict[str, list[np.ndarray]] = {name: [] for name in features}
    for batch in read_csv(path):
        for name in features:
            v = np.char.strip(batch[name])
            cols[name].append(np.where(v == "", MISSING, v))
    return {k: np.concatenate(v) if v else np.array([], dtype=str) for k, v in cols.items()}


def slice_metrics(
    task: str,
    out: np.ndarray,
    y: np.ndarray,
    values: np.ndarray,
    baseline: float | int,
    classes: list[str] | None,
    min_rows: int,
) -> dict[str, dict]:
    """Per value of ``values`` (sorted): the task's metrics on its rows, and ``gated``: whether
    it has the ``min_rows`` rows to be judged. An AUC undefined on a slice (one class only)
    is None."""
    out_by_value = {}
    for value in np.unique(values).tolist():
        rows = values == value
        m = task_metrics(task, out[rows], y[rows], baseline, classes)
        if task == CLASSIFICATION and np.isnan(m["auc"]):
            m["auc"] = None
        m["gated"] = m["rows"] >= min_rows
        out_by_value[str(value)] = m
    return out_by_value


def slice_checks(feature: str, slices: dict[str, dict], task: str, gates: ev.Gates) -> list[Check]:
    """The whole's absolute and baseline gates on each slice that has the rows to be judged
    (per-class recall is gated on the whole only: a slice holds few rows of each class)."""
    checks = []
    for value, metrics in slices.items():
        if metrics["gated"]:
            checks += _headline_and_baseline(metrics, task, gates, f"slice[{feature}={value}] ")
    return checks


def _train_baseline(path: Path, label: str, task: str, classes: list[str] | None) -> float | int:
    """The training split's majority class index, or its mean target (streamed)."""
    if task == CLASSIFICATION:
        counts = dict.fromkeys(classes, 0)
        for batch in read_csv(path):
            values, n = np.unique(batch[label], return_counts=True)
            for v, c in zip(values.tolist(), n.tolist(), strict=True):
                counts[v.strip()] += c
        return classes.index(max(classes, key=lambda c: (counts[c], -classes.index(c))))
    stats = TableStats()
    for batch in read_csv(path):
        stats.update({label: batch[label]})
    return stats.finish().features[label].mean  # finish: the last batch may still be folding


def _num(v: float | None) -> str:
    """A metric for the report: four decimals, or n/a where it is undefined."""
    return "n/a" if v is None or np.isnan(v) else f"{v:.4f}"


def slice_table(feature: str, slices: dict[str, dict], task: str, min_rows: int) -> str:
    """Markdown: one row per value of ``feature``, its rows, metrics and whether it was gated."""
    if task == CLASSIFICATION:
        head = f"| {feature} | rows | accuracy | AUC | majority class | gated |"
        cols = ("accuracy", "auc", "baseline_accuracy")
    else:
        head = f"| {feature} | rows | rmse | mae | r2 | train mean's rmse | gated |"
        cols = ("rmse", "mae", "r2", "baseline_rmse")
    rows = [head, "|---" * (len(cols) + 3) + "|"]
    for value, m in slices.items():
        gated = "yes" if m["gated"] else f"no (< {min_rows} rows)"
        shown = " | ".join(_num(m[c]) for c in cols)
        rows.append(f"| {value} | {m['rows']} | {shown} | {gated} |")
    return "\n".join(rows)


def render(
    metrics: dict,
    checks: list[Check],
    task: str,
    classes: list[str] | None,
    slices: dict[str, dict[str, dict]] | None = None,
    plots: list[tuple[str, str]] = (),
    min_slice_rows: int = 0,
) -> str:
    """``report.md`` for a table: verdict, gates, the task's metrics, slices, plots."""
    verdict = "PASSED" if not failed(checks) else "FAILED"
    lines = [
        f"# Model evaluation ({task})",
        "",
        f"**Gate {verdict}**: {summary(checks)}",
        "",
        "## Gates",
        "",
        check_table(checks),
        "",
    ]
    if task == CLASSIFICATION:
        lines += [
            f"Accuracy {metrics['accuracy']:.4f}, AUC {_num(metrics['auc'])} on "
            f"{metrics['rows']} test rows; the majority class alone scores "
            f"{metrics['baseline_accuracy']:.4f}. Calibration error (ECE, "
            f"{table_plots.CALIBRATION_BINS} bins) {_num(metrics['calibration_error'])}.",
            "",
            "| class | precision | recall | f1 | support |",
            "|---|---|---|---|---|",
        ]
        pc = metrics["per_class"]
        for i, name in enumerate(classes):
            lines.append(
                f"| {name} | {pc['precision'][i]:.4f} | {pc['recall'][i]:.4f} | "
                f"{pc['f1'][i]:.4f} | {pc['support'][i]} |"
            )
        lines += ["", "![confusion matrix](confusion_matrix.png)", ""]
    else:
        lines += [
            f"RMSE {metrics['rmse']:.4f}, MAE {metrics['mae']:.4f}, R2 {_num(metrics['r2'])} on "
            f"{metrics['rows']} test rows; the training mean alone has RMSE "
            f"{metrics['baseline_rmse']:.4f}.",
            "",
        ]
    for feature, by_value in (slices or {}).items():
        lines += [
            f"## Slices by {feature}",
            "",
            "Each value with at least "
            f"{min_slice_rows} test rows is gated as the whole is; smaller slices are "
            "reported, not gated (too few rows to judge).",
            "",
            slice_table(feature, by_value, task, min_slice_rows),
            "",
        ]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{title}]({name})" for title, name in plots]
        lines.append("")
    return "\n".join(lines)


def evaluate_table(
    ws: Workspace, gates: ev.Gates, model_path: Path, data_manifest: dict, features: list[str]
) -> tuple[dict, list[Check]]:
    """Stage 3 for a table: write ``<workspace>/eval/``; return the result and its checks
    (the caller gates). ``features``: the slices, from :func:`requested_slices`."""
    label, task, classes = data_manifest["label"], data_manifest["task"], data_manifest["classes"]
    schema = sch.read_schema(ws.data / sch.SCHEMA_FILE)
    quiet_tensorflow()

    from tfship.table_model import dataset, feature_kinds, predict  # imports TF

    stats = TableStats.from_dict(read_json(ws.data / "stats.json"))
    started = time.monotonic()
    model = load_model(model_path)
    kinds = feature_kinds(schema, label)
    test_csv = ws.data / "test.csv"
    out, y = predict(model, dataset(test_csv, kinds, stats, label, classes, 256))
    baseline = _train_baseline(ws.data / "train.csv", label, task, classes)
    metrics = task_metrics(task, out, y, baseline, classes)
    if task == CLASSIFICATION:
        metrics["classes"] = classes
        predicted, hit, _ = table_plots.calibration_inputs(out, y, classes)
        metrics["calibration_bins"] = table_plots.calibration_bins(predicted, hit)
        metrics["calibration_error"] = table_plots.calibration_error(metrics["calibration_bins"])
    checks = table_checks(metrics, task, classes, gates)
    slices: dict[str, dict[str, dict]] = {}
    for name, values in slice_values(test_csv, features).items():
        if len(values) != len(y):
            raise DataError(f"{test_csv}: {len(values)} rows read for --slice, {len(y)} evaluated")
        slices[name] = slice_metrics(task, out, y, values, baseline, classes, gates.min_slice_rows)
        checks += slice_checks(name, slices[name], task, gates)
    result = {
        "passed": not failed(checks),
        "task": task,
        "metrics": metrics,
        "slices": slices,
        "checks": [c.to_dict() for c in checks],
        "thresholds": {
            "min_accuracy": gates.min_accuracy,
            "min_class_recall": gates.min_class_recall,
            "min_r2": gates.min_r2,
            "min_slice_rows": gates.min_slice_rows,
        },
        "model_sha256": sha256_file(model_path),
        "data_hash": data_manifest["data_hash"],
    }
    with ws.stage_output("test") as folder:
        write_json(folder / "metrics.json", result)
        write_junit(folder / "junit.xml", "tfship.test", checks, time.monotonic() - started)
        if task == CLASSIFICATION:
            ev.plot_confusion(metrics["confusion_matrix"], folder / "confusion_matrix.png")
        plots = table_plots.write_plots(folder, out, y, classes if task == CLASSIFICATION else None)
        (folder / "report.md").write_text(
            render(metrics, checks, task, classes, slices, plots, gates.min_slice_rows)
        )
    shown = {"accuracy": "accuracy"} if task == CLASSIFICATION else {"r2": "r2"}
    event(
        "test",
        "evaluated",
        **{k: f"{metrics[v]:.4f}" for k, v in shown.items()},
        slices=sum(len(v) for v in slices.values()),
        passed=result["passed"],
    )
    return result, checks
