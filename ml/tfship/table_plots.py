"""Stage 3's plots for tables: the curves' numbers (plain NumPy) and their PNGs.

Classification: the ROC curve (binary: class 1's probability; more classes: one curve per
class, one-vs-rest, named by class) and a reliability diagram (predicted probability in ten
equal bins against the observed frequency, with each bin's row count). Regression: residuals
against the prediction, and predicted against actual. Matplotlib (Agg) is imported only by
:func:`write_plots`; a plot draws at most :data:`MAX_POINTS` points (a fixed sample), so a
large test split plots as quickly, and the same inputs give the same PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CALIBRATION_BINS = 10
MAX_POINTS = 5_000  # points a scatter or a curve draws; more add time, not information
DPI = 80
ROC_FILE, CALIBRATION_FILE = "roc.png", "calibration.png"
RESIDUALS_FILE, PREDICTED_FILE = "residuals.png", "predicted_vs_actual.png"


def roc_points(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to
    (1, 1); tied scores are one threshold, so the area under it (trapezoids) is
    :func:`table_eval.roc_auc`. Empty arrays when one side has no rows."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if not n_pos or not n_neg:
        return np.array([]), np.array([])
    order = np.argsort(-np.asarray(scores), kind="stable")
    s, p = np.asarray(scores)[order], positive[order]
    last_of_each = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps, fps = np.cumsum(p)[last_of_each], np.cumsum(~p)[last_of_each]
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos]


def calibration_inputs(
    probs: np.ndarray, labels: np.ndarray, classes: list[str]
) -> tuple[np.ndarray, np.ndarray, str]:
    """What a reliability diagram compares: binary, the probability of ``classes[1]`` and
    whether the row is that class; more classes, the predicted class's probability and
    whether the prediction is right (top-label calibration). And the axis's name."""
    if probs.shape[1] == 2:
        return probs[:, 1], labels == 1, f"predicted P({classes[1]})"
    return probs.max(axis=1), probs.argmax(axis=1) == labels, "predicted class's probability"


def calibration_bins(
    predicted: np.ndarray, observed: np.ndarray, bins: int = CALIBRATION_BINS
) -> list[dict]:
    """Per equal-width bin of ``predicted`` over [0, 1] (the last bin closed): its bounds,
    row count, mean predicted probability and observed frequency of ``observed`` (None for
    an empty bin)."""
    predicted = np.clip(np.asarray(predicted, dtype=np.float64), 0.0, 1.0)
    observed = np.asarray(observed, dtype=np.float64)
    index = np.minimum((predicted * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        inside = index == b
        n = int(inside.sum())
        out.append(
            {
                "lo": round(b / bins, 6),
                "hi": round((b + 1) / bins, 6),
                "count": n,
                "mean_predicted": round(float(predicted[inside].mean()), 6) if n else None,
                "observed": round(float(observed[inside].mean()), 6) if n else None,
            }
        )
    return out


def calibration_error(bins: list[dict]) -> float:
    """Expected calibration error: the row-weighted mean gap between predicted and observed."""
    total = sum(b["count"] for b in bins)
    if not total:
        return float("nan")
    gaps = (b["count"] * abs(b["observed"] - b["mean_predicted"]) for b in bins if b["count"])
    return float(sum(gaps) / total)


def _sample(n: int) -> np.ndarray:
    """At most MAX_POINTS row indices, in order; the same ones every time."""
    if n <= MAX_POINTS:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, MAX_POINTS, replace=False))


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A curve with at most MAX_POINTS points, its ends kept."""
    if len(x) <= MAX_POINTS:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, MAX_POINTS).astype(int))
    return x[keep], y[keep]


def _save(fig: object, path: Path) -> None:
    import matplotlib.pyplot as plt  # heavy: only when a plot is written

    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(fig)


def plot_roc(probs: np.ndarray, labels: np.ndarray, classes: list[str], path: Path) -> None:
    """ROC curve(s) with their AUC, against the diagonal of guessing."""
    import matplotlib.pyplot as plt

    curves = (
        [(classes[1], probs[:, 1], labels == 1)]
        if probs.shape[1] == 2
        else [(name, probs[:, c], labels == c) for c, name in enumerate(classes)]
    )
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, scores, positive in curves:
        fpr, tpr = roc_points(scores, positive)
        if len(fpr):
            area = float(np.trapezoid(tpr, fpr))
            ax.plot(*_thin(fpr, tpr), label=f"{name} (AUC {area:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC, one-vs-rest" if len(curves) > 1 else f"ROC ({classes[1]} is positive)")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_calibration(bins: list[dict], what: str, path: Path) -> None:
    """Reliability diagram: observed frequency per bin against its mean predicted
    probability, each point labelled with its rows; below, the rows per bin."""
    import matplotlib.pyplot as plt

    full = [b for b in bins if b["count"]]
    fig, (ax, counts) = plt.subplots(
        2, 1, figsize=(5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
    x = [b["mean_predicted"] for b in full]
    y = [b["observed"] for b in full]
    ax.plot(x, y, marker="o", label=f"model (ECE {calibration_error(bins):.3f})")
    for b in full:
        ax.annotate(
            str(b["count"]),
            (b["mean_predicted"], b["observed"]),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=7,
        )
    ax.set_ylabel("observed frequency")
    ax.set_ylim(-0.05, 1.1)
    ax.set_title("calibration")
    ax.legend(loc="upper left", fontsize=8)
    width = bins[0]["hi"] - bins[0]["lo"]
    counts.bar([b["lo"] for b in bins], [b["count"] for b in bins], width=width, align="edge")
    counts.set_xlabel(what)
    counts.set_ylabel("rows")
    counts.set_xlim(0, 1)
    _save(fig, path)


def plot_residuals(actual: np.ndarray, predicted: np.ndarray, path: Path) -> None:
    """Residual (actual - predicted) against the prediction, around the zero line."""
    import matplotlib.pyplot as plt

    idx = _sample(len(actual))
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(predicted[idx], actual[idx] - predicted[idx], s=8, alpha=0.6)
    ax.axhline(0, linestyle="--", color="grey", linewidth=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("residual (actual - predicted)")
    ax.set_title(_titled("residuals", len(idx), len(actual)))
    _save(fig, path)


def plot_predicted_vs_actual(actual: np.ndarray, predicted: np.ndarray, path: Path) -> None:
    """Predicted against actual, with the diagonal a perfect model would sit on."""
    import matplotlib.pyplot as plt

    idx = _sample(len(actual))
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(actual[idx], predicted[idx], s=8, alpha=0.6)
    lo = float(min(actual.min(), predicted.min()))
    hi = float(max(actual.max(), predicted.max()))
    ax.plot([lo, hi], [lo, hi], linestyle="--", color="grey", linewidth=1)
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.set_title(_titled("predicted vs actual", len(idx), len(actual)))
    _save(fig, path)


def _titled(title: str, shown: int, rows: int) -> str:
    return title if shown == rows else f"{title} ({shown} of {rows} rows)"


def write_plots(
    folder: Path, out: np.ndarray, labels: np.ndarray, classes: list[str] | None
) -> list[tuple[str, str]]:
    """The task's PNGs in ``folder``; (title, file name) of each, for the report."""
    import matplotlib  # heavy: only stage 3 plots

    matplotlib.use("Agg")
    if classes is not None:
        predicted, hit, what = calibration_inputs(out, labels, classes)
        plot_roc(out, labels, classes, folder / ROC_FILE)
        plot_calibration(calibration_bins(predicted, hit), what, folder / CALIBRATION_FILE)
        return [("ROC curve", ROC_FILE), ("calibration", CALIBRATION_FILE)]
    actual, predicted = labels.astype(np.float64), out[:, 0].astype(np.float64)
    plot_residuals(actual, predicted, folder / RESIDUALS_FILE)
    plot_predicted_vs_actual(actual, predicted, folder / PREDICTED_FILE)
    return [("residuals", RESIDUALS_FILE), ("predicted vs actual", PREDICTED_FILE)]
