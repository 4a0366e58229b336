"""How far the test suite's training settings clear the default gates, over several seeds.

A test that needs a model passing the gates must not pass by a training coin flip. This
trains the first model and a fine-tuned challenger on a shifted snapshot, as the tests and
the CircleCI workflows do, for each seed, and reports each gate's margin:

- first model vs the stage 3 gates: accuracy - min_accuracy, min class recall - min_class_recall;
- challenger vs champion (stage 6, same rows): accuracy delta + tolerance, max_class_drop -
  the largest class recall drop.

A margin below zero is a failed gate. ``tests/test_gate_margin.py`` runs the same measurement
for the settings the tests use and asserts a minimum margin; this script writes the figures
to ``bench/results/gate_margin.json`` and BENCHMARKS.md.

    python bench/gate_margin.py [--seeds 5] [--epochs 12 ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ml"))

from tfship.log import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

from tfship.data import Checks, DataSettings, Split, build, load_split, make_snapshot  # noqa: E402
from tfship.evaluate import Gates, classification_metrics, predict_keras  # noqa: E402
from tfship.retrain import RetrainSettings, evaluate_both  # noqa: E402
from tfship.train import TrainSettings, train  # noqa: E402


def _metrics(model: Path, split: Split, num_classes: int) -> dict:
    probs = predict_keras(model, split.images)
    return classification_metrics(split.labels, probs.argmax(axis=1), num_classes)


def measure_seed(
    work: Path, seed: int, epochs: int, gates: Gates, retrain: RetrainSettings
) -> dict:
    """Train a first model and a fine-tuned challenger with ``seed``; return the gate margins."""
    first, second = work / f"first-{seed}", work / f"second-{seed}"
    build(first, DataSettings(seed=seed))
    settings = TrainSettings(epochs=epochs, seed=seed)
    train(first, settings)
    champion = first / "model" / "model.keras"
    test = load_split(first / "data" / "test.npz")
    num_classes = Checks().num_classes
    m = _metrics(champion, test, num_classes)
    pc = m["per_class"]
    recall = [r for r, n in zip(pc["recall"], pc["support"], strict=True) if n]

    snap = make_snapshot(work / f"snap-{seed}.npz", "shift", seed)["path"]
    build(second, DataSettings(data=snap, seed=seed))
    tuned = replace(settings, learning_rate=retrain.fine_tune_learning_rate)
    train(second, tuned, init_model=champion, stage="retrain")
    new_test = load_split(second / "data" / "test.npz")
    eval_set = Split(
        np.concatenate([new_test.images, test.images]),
        np.concatenate([new_test.labels, test.labels]),
    )
    champ, chall = evaluate_both(champion, second / "model" / "model.keras", eval_set, num_classes)
    drops = [
        old - new
        for old, new, n in zip(
            champ["per_class"]["recall"],
            chall["per_class"]["recall"],
            champ["per_class"]["support"],
            strict=True,
        )
        if n
    ]
    return {
        "seed": seed,
        "accuracy": m["accuracy"],
        "min_class_recall": min(recall),
        "champion_accuracy": champ["accuracy"],
        "challenger_accuracy": chall["accuracy"],
        "max_class_drop": max(drops),
        "margins": {
            "accuracy": m["accuracy"] - gates.min_accuracy,
            "class_recall": min(recall) - gates.min_class_recall,
            "challenger_vs_champion": chall["accuracy"] - champ["accuracy"] + retrain.tolerance,
            "class_drop": retrain.max_class_drop - max(drops),
        },
    }


def measure(
    seeds: list[int],
    epochs: int,
    gates: Gates | None = None,
    retrain: RetrainSettings | None = None,
) -> dict:
    """Margins for every seed, and the smallest margin of each gate across them."""
    gates, retrain = gates or Gates(), retrain or RetrainSettings()
    with tempfile.TemporaryDirectory(prefix="tfship-margin-") as tmp:
        runs = [measure_seed(Path(tmp), s, epochs, gates, retrain) for s in seeds]
    worst = {k: min(r["margins"][k] for r in runs) for k in runs[0]["margins"]}
    return {"epochs": epochs, "seeds": seeds, "runs": runs, "worst_margin": worst}


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import save

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, nargs="+", default=[6, 12])
    args = ap.parse_args()
    results = [measure(list(range(args.seeds)), e) for e in args.epochs]
    rows = [
        "| epochs | seed | accuracy | min class recall | challenger - champion | max class drop |",
        "|---|---|---|---|---|---|",
    ]
    for res in results:
        for r in res["runs"]:
            rows.append(
                f"| {res['epochs']} | {r['seed']} | {r['accuracy']:.4f} | "
                f"{r['min_class_recall']:.3f} | "
                f"{r['challenger_accuracy'] - r['champion_accuracy']:+.4f} | "
                f"{r['max_class_drop']:+.3f} |"
            )
    worst = [
        f"- {res['epochs']} epochs: "
        + ", ".join(f"{k} {v:+.4f}" for k, v in res["worst_margin"].items())
        for res in results
    ]
    g, rs = Gates(), RetrainSettings()
    markdown = "\n".join(
        [
            "## Gate margins of the test suite's training settings",
            "",
            f"Default gates: accuracy >= {g.min_accuracy}, every class recall >= "
            f"{g.min_class_recall}; retrain: challenger >= champion - {rs.tolerance}, no "
            f"class recall drop over {rs.max_class_drop}. Fine-tune on a shifted snapshot.",
            "",
            *rows,
            "",
            "Smallest margin over the seeds (negative = a gate fails):",
            "",
            *worst,
        ]
    )
    print(markdown)
    save("gate_margin", {"results": results}, markdown)


if __name__ == "__main__":
    main()
