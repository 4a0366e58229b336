"""Stage 3 for tables: metrics for the task, gates, and the trivial baseline every model must beat.

Classification: accuracy, per-class precision/recall/F1 (by class name), AUC (ROC; one-vs-rest
macro average for more than two classes), cross-entropy; the baseline always answers the
training split's most frequent class. Regression: RMSE, MAE and R2; the baseline always answers
the training split's mean. Gates: classification as for images (``--min-accuracy``,
``--min-class-recall``), regression ``--min-r2``; and for every task "beats the baseline".
The metric functions are plain NumPy; only :func:`evaluate_table` loads the model.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tfship import evaluate as ev  # evaluate imports this module: attributes at call time
from tfship import schema as sch
from tfship.log import event, quiet_tensorflow
from tfship.report import Check, check_table, failed, summary, write_junit
from tfship.stats import TableStats
from tfship.tables import CLASSIFICATION, read_csv
from tfship.workspace import Workspace, read_json, sha256_file, write_json


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


def table_checks(
    metrics: dict, task: str, classes: list[str] | None, gates: ev.Gates
) -> list[Check]:
    """The gates for the task, the baseline last."""
    if task != CLASSIFICATION:
        return [
            Check("r2", metrics["r2"], ">=", gates.min_r2),
            Check("rmse vs baseline (train mean)", metrics["rmse"], "<", metrics["baseline_rmse"]),
        ]
    checks = [Check("accuracy", metrics["accuracy"], ">=", gates.min_accuracy)]
    pc = metrics["per_class"]
    for name, recall, support in zip(classes, pc["recall"], pc["support"], strict=True):
        if support:
            checks.append(Check(f"recall[{name}]", recall, ">=", gates.min_class_recall))
    checks.append(
        Check(
            "accuracy vs baseline (majority class)",
            metrics["accuracy"],
            ">",
            metrics["baseline_accuracy"],
        )
    )
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
    return stats.features[label].mean


def render(metrics: dict, checks: list[Check], task: str, classes: list[str] | None) -> str:
    """``report.md`` for a table."""
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
            f"Accuracy {metrics['accuracy']:.4f}, AUC {metrics['auc']:.4f} on {metrics['rows']} "
            f"test rows; the majority class alone scores {metrics['baseline_accuracy']:.4f}.",
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
            f"RMSE {metrics['rmse']:.4f}, MAE {metrics['mae']:.4f}, R2 {metrics['r2']:.4f} on "
            f"{metrics['rows']} test rows; the training mean alone has RMSE "
            f"{metrics['baseline_rmse']:.4f}.",
            "",
        ]
    return "\n".join(lines)


def evaluate_table(
    ws: Workspace, gates: ev.Gates, model_path: Path, data_manifest: dict
) -> tuple[dict, list[Check]]:
    """Stage 3 for a table: write ``<workspace>/eval/``; return the result and its checks
    (the caller gates)."""
    quiet_tensorflow()
    import keras

    from tfship.table_model import dataset, feature_kinds, predict  # imports TF

    label, task, classes = data_manifest["label"], data_manifest["task"], data_manifest["classes"]
    schema = sch.read_schema(ws.data / sch.SCHEMA_FILE)
    stats = TableStats.from_dict(read_json(ws.data / "stats.json"))
    started = time.monotonic()
    model = keras.models.load_model(model_path)
    kinds = feature_kinds(schema, label)
    out, y = predict(model, dataset(ws.data / "test.csv", kinds, stats, label, classes, 256))
    baseline = _train_baseline(ws.data / "train.csv", label, task, classes)
    if task == CLASSIFICATION:
        metrics = ev.classification_metrics(
            y, out.argmax(axis=1), len(classes), ev.cross_entropy(out, y)
        )
        metrics["auc"] = auc(out, y)
        metrics["baseline_accuracy"] = float(np.mean(y == baseline))
        metrics["classes"] = classes
    else:
        metrics = regression_metrics(y.astype(np.float64), out[:, 0].astype(np.float64), baseline)
    checks = table_checks(metrics, task, classes, gates)
    result = {
        "passed": not failed(checks),
        "task": task,
        "metrics": metrics,
        "checks": [c.to_dict() for c in checks],
        "thresholds": {
            "min_accuracy": gates.min_accuracy,
            "min_class_recall": gates.min_class_recall,
            "min_r2": gates.min_r2,
        },
        "model_sha256": sha256_file(model_path),
        "data_hash": data_manifest["data_hash"],
    }
    with ws.stage_output("test") as folder:
        write_json(folder / "metrics.json", result)
        write_junit(folder / "junit.xml", "tfship.test", checks, time.monotonic() - started)
        if task == CLASSIFICATION:
            ev.plot_confusion(metrics["confusion_matrix"], folder / "confusion_matrix.png")
        (folder / "report.md").write_text(render(metrics, checks, task, classes))
    shown = {"accuracy": "accuracy"} if task == CLASSIFICATION else {"r2": "r2"}
    event(
        "test",
        "evaluated",
        **{k: f"{metrics[v]:.4f}" for k, v in shown.items()},
        passed=result["passed"],
    )
    return result, checks
