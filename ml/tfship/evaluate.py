"""Stage 3: evaluate a model on the held-out test split and apply the quality gates.

The metric and gate functions are plain NumPy (retrain and test-deployed reuse them); only
:func:`evaluate` loads the Keras model. Writes ``<workspace>/eval/``: ``metrics.json``,
``junit.xml``, ``report.md``, ``confusion_matrix.png`` (a table: also its task's plots and
its slices, :mod:`tfship.table_eval`). A failed gate still writes them (people
need the report most then) but marks ``passed: false``; ``package`` refuses such a model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfship import table_eval
from tfship.data import load_split
from tfship.errors import DataError, GateFailed
from tfship.log import event, quiet_tensorflow
from tfship.report import Check, check_table, failed, metrics_table, summary, write_junit
from tfship.rows import chunks
from tfship.settings import Setting, setting
from tfship.trainer import load_model
from tfship.workspace import Workspace, read_json, sha256_file, write_json

# The default CNN reaches 0.97-1.0 on the default data in 6 epochs (bench/gate_margin.py).
MIN_ACCURACY = Setting(0.90, "TFSHIP_MIN_ACCURACY", "Test accuracy must reach this.", min=0, max=1)
MIN_R2 = Setting(
    0.2,
    "TFSHIP_MIN_R2",
    "Regression: test R2 must reach this (0 = no better than the mean).",
    max=1,
)

SLICES = Setting(
    (),
    "TFSHIP_SLICE",
    "Tables: also compute and gate the metrics per value of this categorical feature, as "
    "TFMA slices (repeatable or comma-separated).",
    flag="--slice",
    multiple=True,
)


@dataclass
class Gates:
    """Thresholds a model must meet to ship."""

    min_accuracy: float = MIN_ACCURACY.field()
    min_class_recall: float = setting(
        0.75, "TFSHIP_MIN_CLASS_RECALL", "Every class's recall must reach this.", min=0, max=1
    )
    min_r2: float = MIN_R2.field()
    min_auc: float | None = setting(
        None,
        "TFSHIP_MIN_AUC",
        "Tables, classification: test AUC (one-vs-rest, averaged) must reach this. Default: "
        "reported, not gated.",
        value_type=float,
        min=0,
        max=1,
    )
    max_rmse: float | None = setting(
        None,
        "TFSHIP_MAX_RMSE",
        "Tables, regression: test RMSE must stay at or under this (the target's units). "
        "Default: reported, not gated (the baseline gate still applies).",
        value_type=float,
        min=0,
    )
    max_mae: float | None = setting(
        None,
        "TFSHIP_MAX_MAE",
        "Tables, regression: test MAE must stay at or under this. Default: reported, not gated.",
        value_type=float,
        min=0,
    )
    slices: tuple[str, ...] = SLICES.field()
    min_slice_rows: int = setting(
        20,
        "TFSHIP_MIN_SLICE_ROWS",
        "Tables: a --slice value with fewer test rows is reported but not gated (too few rows "
        "to judge).",
        min=1,
    )


@dataclass
class EvalResult:
    """What stage 3 wrote: ``metrics.json``."""

    result: dict

    def to_dict(self) -> dict:
        return self.result

    def summary(self, ws_root: Path) -> str:
        first = self.result["checks"][0]  # accuracy (classification) or r2 (regression)
        return (
            f"gate passed: {first['name']} {first['value']:.4f} {first['op']} "
            f"{first['threshold']}; report {Path(ws_root) / 'eval' / 'report.md'}"
        )


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, loss: float | None = None
) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    support = cm.sum(axis=1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "loss": loss,
        "rows": int(cm.sum()),
        "per_class": {
            "precision": precision.round(6).tolist(),
            "recall": recall.round(6).tolist(),
            "f1": f1.round(6).tolist(),
            "support": support.astype(int).tolist(),
        },
        "confusion_matrix": cm.tolist(),
    }


def gate_checks(metrics: dict, gates: Gates) -> list[Check]:
    """Absolute gates: accuracy and each class's recall (classes absent from the test set skip)."""
    checks = [Check("accuracy", metrics["accuracy"], ">=", gates.min_accuracy)]
    pc = metrics["per_class"]
    for c, (recall, support) in enumerate(zip(pc["recall"], pc["support"], strict=True)):
        if support:
            checks.append(Check(f"recall[class {c}]", recall, ">=", gates.min_class_recall))
    return checks


def cross_entropy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean sparse categorical cross-entropy of predicted probabilities."""
    p = np.clip(probs[np.arange(labels.size), labels], 1e-7, 1.0)
    return float(-np.log(p).mean())


def plot_confusion(cm: list[list[int]], path: Path, title: str = "confusion matrix") -> None:
    """The confusion matrix as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(arr, cmap="Blues")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    ax.set_xticks(range(arr.shape[1]))
    ax.set_yticks(range(arr.shape[0]))
    for (i, j), v in np.ndenumerate(arr):
        if v:
            ax.text(
                j,
                i,
                str(v),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if v > arr.max() / 2 else "black",
            )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def predict_keras(model_path: Path, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities from a saved ``.keras`` model."""
    quiet_tensorflow()

    model = load_model(model_path)
    # A single-input Keras 3 model takes the plain array (a dict keyed by the input's name
    # makes Keras warn about the structure). A chunk at a time: a split on disk
    # (tfship.rows) is never read into memory whole.
    out = [np.asarray(model.predict(c, batch_size=batch_size, verbose=0)) for c in chunks(images)]
    return np.concatenate(out) if out else np.zeros((0, model.outputs[0].shape[-1]), np.float32)


def render_report(metrics: dict, checks: list[Check], title: str, extra: str = "") -> str:
    """``report.md``: verdict, gate table, per-class table, plots."""
    verdict = "PASSED" if not failed(checks) else "FAILED"
    lines = [
        f"# {title}",
        "",
        f"**Gate {verdict}**: {summary(checks)}",
        "",
        f"Accuracy {metrics['accuracy']:.4f} on {metrics['rows']} test rows"
        + (f", loss {metrics['loss']:.4f}" if metrics.get("loss") is not None else "")
        + ".",
        "",
        "## Gates",
        "",
        check_table(checks),
        "",
        "## Per class",
        "",
        metrics_table(metrics["per_class"]),
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
    ]
    if extra:
        lines += [extra, ""]
    return "\n".join(lines)


def evaluate(ws_root: Path, gates: Gates) -> EvalResult:
    """Stage 3: evaluate ``model/model.keras`` on ``data/test.npz``; raise GateFailed if it misses.

    Outputs are written before the gate is raised, so the report exists for a failed gate.
    """
    ws = Workspace(ws_root)
    model_path = ws.require(ws.model / "model.keras", "train")
    train_info = read_json(ws.require(ws.model / "train.json", "train"))
    data_manifest = read_json(ws.require(ws.data / "manifest.json", "build"))
    if train_info["data_hash"] != data_manifest["data_hash"]:
        raise DataError(
            "the model in the workspace was trained on other data than data/ holds",
            hint="run `tfship train` again after `tfship build`",
        )
    slices = table_eval.requested_slices(ws, data_manifest, gates.slices)
    if data_manifest.get("kind") == "table":
        result, checks = table_eval.evaluate_table(ws, gates, model_path, data_manifest, slices)
        if not result["passed"]:
            raise GateFailed(
                f"quality gate failed: {summary(checks)}", hint=f"report: {ws.eval / 'report.md'}"
            )
        return EvalResult(result)
    test = load_split(ws.data / "test.npz")
    started = time.monotonic()
    probs = predict_keras(model_path, test.images)
    metrics = classification_metrics(
        test.labels,
        probs.argmax(axis=1),
        int(data_manifest["num_classes"]),
        cross_entropy(probs, test.labels),
    )
    checks = gate_checks(metrics, gates)
    seconds = time.monotonic() - started
    result = {
        "passed": not failed(checks),
        "metrics": metrics,
        "checks": [c.to_dict() for c in checks],
        "thresholds": {
            "min_accuracy": gates.min_accuracy,
            "min_class_recall": gates.min_class_recall,
        },
        "model_sha256": sha256_file(model_path),
        "data_hash": data_manifest["data_hash"],
    }
    with ws.stage_output("test") as out:
        write_json(out / "metrics.json", result)
        write_junit(out / "junit.xml", "tfship.test", checks, seconds)
        plot_confusion(metrics["confusion_matrix"], out / "confusion_matrix.png")
        (out / "report.md").write_text(render_report(metrics, checks, "Model evaluation"))
    event("test", "evaluated", accuracy=f"{metrics['accuracy']:.4f}", passed=result["passed"])
    if not result["passed"]:
        raise GateFailed(
            f"quality gate failed: {summary(checks)}", hint=f"report: {ws.eval / 'report.md'}"
        )
    return EvalResult(result)
