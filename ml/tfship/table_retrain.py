"""Stage 6 for tables: the rows both models are judged on, their metrics, the regression
gate, and drift per feature between the champion's training data and the new snapshot.

The champion's package carries its held-out rows (``test_rows.npz``) and its training data's
statistics (``stats.json``); the new snapshot's come from ``tfship build``. Drift is TFDV's
(``schema.drift``: L-infinity for categorical features, Jensen-Shannon for numeric ones),
shown to the person at the approval hold, and gated only when they ask (``--max-drift``, or
a ``drift_comparator`` threshold in ``schema.pbtxt``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfship import config
from tfship import schema as sch
from tfship.errors import DataError
from tfship.evaluate import classification_metrics, cross_entropy
from tfship.report import Check
from tfship.stats import TableStats
from tfship.table_eval import MISSING, regression_metrics, slice_metrics
from tfship.tables import CLASSIFICATION, REGRESSION, numeric_means, typed_rows
from tfship.trainer import load_model
from tfship.workspace import Workspace, read_json


def eval_rows(
    ws: Workspace,
    train_info: dict,
    champion_test: tuple[dict, np.ndarray] | None,
    champion_manifest: dict | None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The new snapshot's test rows (at most ``config.RETRAIN_EVAL_ROWS``: memory does not
    grow with the data), plus the champion's own held-out rows when it has the same inputs
    and classes (else the comparison would be meaningless: exit 2)."""
    kinds, label, classes = train_info["inputs"], train_info["label"], train_info["classes"]
    stats = TableStats.from_dict(read_json(ws.data / "stats.json"))
    means = numeric_means(stats, kinds)
    cols, labels = typed_rows(
        ws.data / "test.csv", kinds, means, label, classes, limit=config.RETRAIN_EVAL_ROWS
    )
    if champion_test is None:
        return cols, labels
    old_cols, old_labels = champion_test
    if set(old_cols) != set(cols):
        raise DataError(
            f"the new data's inputs {sorted(cols)} differ from the champion's {sorted(old_cols)}",
            hint="retrain from scratch (--from-scratch) after changing the columns",
        )
    if champion_manifest.get("classes") != classes:
        raise DataError(
            f"the new data's classes {classes} differ from the champion's "
            f"{champion_manifest.get('classes')}",
            hint="retrain from scratch (--from-scratch) after changing the classes",
        )
    merged = {k: np.concatenate([cols[k], old_cols[k].astype(cols[k].dtype)]) for k in cols}
    return merged, np.concatenate([labels, old_labels.astype(labels.dtype)])


def slice_columns(rows: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """Each slice feature's value on the evaluation rows (a missing one is ``MISSING``)."""
    out = {}
    for name in names:
        v = np.char.strip(rows[name].astype(str))
        out[name] = np.where(v == "", MISSING, v)
    return out


def metrics(
    model_path: Path,
    rows: dict[str, np.ndarray],
    labels: np.ndarray,
    info: dict,
    slices: dict[str, np.ndarray] | None = None,
) -> dict:
    """The task's metrics of the ``.keras`` model at ``model_path`` on ``rows`` (a classifier's
    with its class names), and per value of each of ``slices`` (shown, not gated)."""
    import tensorflow as tf

    from tfship.table_model import predict  # imports TF

    model = load_model(model_path)
    out, _ = predict(model, tf.data.Dataset.from_tensor_slices((rows, labels)).batch(256))
    classes = info["classes"]
    if classes is None:
        task, baseline = REGRESSION, float(labels.mean())
        result = regression_metrics(labels.astype(np.float64), out[:, 0], baseline)
    else:
        task, baseline = CLASSIFICATION, int(np.bincount(labels).argmax())
        result = classification_metrics(
            labels, out.argmax(axis=1), len(classes), cross_entropy(out, labels)
        )
        result["classes"] = classes
    if slices:
        result["slices"] = {
            name: {
                value: {k: v for k, v in m.items() if k != "gated"}
                for value, m in slice_metrics(
                    task, out, labels, values, baseline, classes, 0
                ).items()
            }
            for name, values in slices.items()
        }
    return result


def decide_regression(champ: dict | None, chall: dict, min_r2: float, tolerance: float) -> list:
    """The challenger's R2 reaches the floor, and its RMSE is at most the champion's times
    (1 + tolerance)."""
    checks = [Check("challenger r2 (absolute)", chall["r2"], ">=", min_r2)]
    if champ is not None:
        checks.append(
            Check(
                "challenger rmse vs champion",
                chall["rmse"],
                "<=",
                round(champ["rmse"] * (1 + tolerance), 6),
                f"champion {champ['rmse']:.4f} x (1 + tolerance {tolerance})",
            )
        )
    return checks


def drift_checks(
    champion_pkg: Path | None, ws: Workspace, max_drift: float | None
) -> tuple[dict[str, tuple[str, float]], list[Check]]:
    """Drift per feature between the champion's training data and the new snapshot, and a
    check per feature that has a threshold (schema's drift_comparator, else --max-drift)."""
    if champion_pkg is None or not (champion_pkg / "assets.extra" / "stats.json").exists():
        return {}, []
    base = TableStats.from_dict(read_json(champion_pkg / "assets.extra" / "stats.json"))
    new = TableStats.from_dict(read_json(ws.data / "stats.json"))
    schema = sch.read_schema(ws.data / sch.SCHEMA_FILE)
    found = sch.drift(base, new, schema)
    return found, drift_gates(found, sch.drift_thresholds(schema, max_drift))


def drift_gates(found: dict[str, tuple[str, float]], limits: dict[str, float]) -> list[Check]:
    """One check per drifted feature that has a threshold (a table's or an image's)."""
    return [
        Check(f"drift[{name}] ({how})", value, "<=", limits[name])
        for name, (how, value) in found.items()
        if name in limits
    ]


def drift_table(found: dict[str, tuple[str, float]]) -> str:
    """Markdown: each feature's drift, largest first."""
    if not found:
        return ""
    rows = ["| feature | measure | drift |", "|---|---|---|"]
    for name, (how, value) in sorted(found.items(), key=lambda kv: -kv[1][1]):
        rows.append(f"| {name} | {how} | {value:.4f} |")
    return "\n".join(["### Drift: champion's training data vs the new snapshot", "", *rows, ""])


def side_by_side(champ: dict | None, chall: dict, champion_version: int | None) -> str:
    """Regression's table for the person at the approval hold."""
    if champ is None:
        return f"No champion (cold start): challenger R2 {chall['r2']:.4f}."
    rows = [
        f"| metric | champion (v{champion_version}) | challenger | delta |",
        "|---|---|---|---|",
    ]
    for k in ("rmse", "mae", "r2"):
        rows.append(f"| {k} | {champ[k]:.4f} | {chall[k]:.4f} | {chall[k] - champ[k]:+.4f} |")
    return "\n".join(rows)


def slice_side_by_side(champ: dict | None, chall: dict, champion_version: int | None) -> str:
    """Markdown: per value of each ``--slice`` feature, the champion's and the challenger's
    accuracy (RMSE for a regression) on the same rows. Empty without a champion or slices."""
    if champ is None or not chall.get("slices"):
        return ""
    key = "rmse" if "r2" in chall else "accuracy"
    out = []
    for feature, by_value in chall["slices"].items():
        out += [
            f"### By {feature} ({key}; shown, not gated)",
            "",
            f"| {feature} | rows | champion (v{champion_version}) | challenger | delta |",
            "|---|---|---|---|---|",
        ]
        for value, new in by_value.items():
            old = champ["slices"][feature][value]
            out.append(
                f"| {value} | {new['rows']} | {old[key]:.4f} | {new[key]:.4f} | "
                f"{new[key] - old[key]:+.4f} |"
            )
        out.append("")
    return "\n".join(out)
