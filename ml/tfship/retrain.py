"""Stage 6: retrain on new data against the model TF Serving is actually serving.

- Champion = the highest AVAILABLE version on the deploy target, fetched by that version from
  the artifact store (or the host): its ``.keras``, manifest and test split.
- New data: ``workspace/data`` (stage 1). The same content hash as the champion's data means
  "no new data, nothing to do": exit 0 and a marker that package/deploy honour.
- The challenger fine-tunes the champion (default) or trains from scratch, with stage 2's code.
- Gate, on the same examples for both (the champion's test set + the new test split):
  challenger accuracy >= champion - tolerance and >= the absolute minimum; no class's recall
  drops by more than ``max_class_drop``. A failed gate exits 3 and leaves no challenger
  behind for package to pick up.
- ``retrain/retrain.json`` records the champion version: deploy refuses if another version is
  serving by then (the stale-approval guard).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tfship import config
from tfship.data import Split, load_split
from tfship.errors import DataError, GateFailed, ServingError, StoreError
from tfship.evaluate import classification_metrics, cross_entropy, plot_confusion, predict_keras
from tfship.log import event
from tfship.report import Check, check_table, failed, summary, write_junit
from tfship.store import MANIFEST, ArtifactStore
from tfship.workspace import Workspace, read_json, recover_dir, replace_dir, write_json

DECISION_FILE = "retrain.json"


@dataclass
class RetrainSettings:
    """Gate and strategy of a retrain."""

    tolerance: float = config.RETRAIN_TOLERANCE
    min_accuracy: float = config.MIN_ACCURACY
    max_class_drop: float = config.MAX_CLASS_DROP
    from_scratch: bool = False
    allow_cold_start: bool = False
    fine_tune_learning_rate: float = config.FINE_TUNE_LEARNING_RATE


def no_new_data(ws: Workspace) -> dict | None:
    """The retrain's "nothing to do" decision, if it applies to the data now in the workspace."""
    path = ws.retrain / DECISION_FILE
    if not path.exists() or not (ws.data / "manifest.json").exists():
        return None
    decision = read_json(path)
    current = read_json(ws.data / "manifest.json")["data_hash"]
    if decision.get("decision") == "no-new-data" and decision.get("data_hash") == current:
        return decision
    return None


def fetch_champion(store: ArtifactStore, host_fetch, model: str, version: int, dest: Path) -> Path:
    """The champion's package folder: from the store, else from the deploy host."""
    try:
        return store.get(model, version, dest)
    except StoreError:
        if host_fetch is None:
            raise
        event("retrain", "champion not in the store; fetching it from the host", version=version)
        return host_fetch(version, dest)


def evaluate_both(
    champion_keras: Path | None, challenger_keras: Path, eval_set: Split, num_classes: int
) -> tuple[dict | None, dict]:
    """Metrics of both models on the same examples."""

    def metrics(model_path: Path) -> dict:
        probs = predict_keras(model_path, eval_set.images)
        return classification_metrics(
            eval_set.labels,
            probs.argmax(axis=1),
            num_classes,
            cross_entropy(probs, eval_set.labels),
        )

    champ = metrics(champion_keras) if champion_keras else None
    return champ, metrics(challenger_keras)


def gate(champ: dict | None, chall: dict, s: RetrainSettings) -> list[Check]:
    """Challenger vs champion (relative) and vs the absolute minimum."""
    checks = [Check("challenger accuracy (absolute)", chall["accuracy"], ">=", s.min_accuracy)]
    if champ is None:
        return checks
    checks.append(
        Check(
            "challenger accuracy vs champion",
            chall["accuracy"],
            ">=",
            round(champ["accuracy"] - s.tolerance, 6),
            f"champion {champ['accuracy']:.4f} - tolerance {s.tolerance}",
        )
    )
    for c, (old, new) in enumerate(
        zip(champ["per_class"]["recall"], chall["per_class"]["recall"], strict=True)
    ):
        if champ["per_class"]["support"][c]:
            checks.append(
                Check(
                    f"recall drop[class {c}]",
                    round(old - new, 6),
                    "<=",
                    s.max_class_drop,
                    f"{old:.3f} -> {new:.3f}",
                )
            )
    return checks


def side_by_side(champ: dict | None, chall: dict, champion_version: int | None) -> str:
    """The table the person at the approval hold reads."""
    if champ is None:
        return f"No champion (cold start): challenger accuracy {chall['accuracy']:.4f}."
    rows = [
        f"| metric | champion (v{champion_version}) | challenger | delta |",
        "|---|---|---|---|",
        f"| accuracy | {champ['accuracy']:.4f} | {chall['accuracy']:.4f} | "
        f"{chall['accuracy'] - champ['accuracy']:+.4f} |",
        f"| loss | {champ['loss']:.4f} | {chall['loss']:.4f} | "
        f"{chall['loss'] - champ['loss']:+.4f} |",
    ]
    for c, (old, new) in enumerate(
        zip(champ["per_class"]["recall"], chall["per_class"]["recall"], strict=True)
    ):
        rows.append(f"| recall class {c} | {old:.3f} | {new:.3f} | {new - old:+.3f} |")
    return "\n".join(rows)


def retrain(
    ws_root: Path,
    store: ArtifactStore,
    client,
    model: str,
    s: RetrainSettings,
    train_settings,
    host_fetch=None,
    serving_version=None,
) -> dict:
    """Stage 6. ``client`` is a ServingClient on the deploy target (who is the champion).

    ``serving_version`` (the target's, which knows a fresh host from a dead one) answers
    "what serves now"; without it the client is asked.
    """
    from tfship.train import train

    ws = Workspace(ws_root)
    data_manifest = read_json(ws.require(ws.data / "manifest.json", "build"))
    # A decision from an earlier run must not outlive this one (killed or not): later stages
    # read it. This run's decision is written last, after the model it speaks of.
    recover_dir(ws.retrain, ".tmp-retrain-")
    recover_dir(ws.model, ".tmp-train-")
    shutil.rmtree(ws.retrain, ignore_errors=True)
    started = time.monotonic()
    try:
        champion_version = (serving_version or client.serving_version)()
    except ServingError as exc:
        raise ServingError(
            f"cannot ask TF Serving which version is serving: {exc.message}", hint=exc.hint
        ) from exc
    if champion_version is None and not s.allow_cold_start:
        raise ServingError(
            f"no version of {model} is serving at {client.url}: nothing to retrain against",
            hint="deploy a first model, or pass --allow-cold-start to train from scratch",
        )
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-retrain-", dir=ws.root))
    try:
        champion_manifest, champion_keras, champion_test = None, None, None
        if champion_version is not None:
            pkg = fetch_champion(store, host_fetch, model, champion_version, tmp / "champion")
            champion_manifest = read_json(pkg / MANIFEST)
            champion_keras = pkg / "assets.extra" / "model.keras"
            with np.load(pkg / "assets.extra" / "test.npz", allow_pickle=False) as npz:
                champion_test = Split(npz["images"], npz["labels"])
            event(
                "retrain",
                "champion",
                model=model,
                version=champion_version,
                data=champion_manifest["data_hash"][:19],
            )
            if champion_manifest["data_hash"] == data_manifest["data_hash"]:
                decision = {
                    "decision": "no-new-data",
                    "champion_version": champion_version,
                    "data_hash": data_manifest["data_hash"],
                }
                out = tmp / "out"
                out.mkdir()
                write_json(out / DECISION_FILE, decision)
                (out / "report.md").write_text(
                    f"## Retrain\n\nNo new data: the data hash equals the one version "
                    f"{champion_version} was trained on. Nothing to do.\n"
                )
                replace_dir(out, ws.retrain)
                event("retrain", "no new data, nothing to do", version=champion_version)
                return decision
        init = None if (s.from_scratch or champion_keras is None) else champion_keras
        if init is not None:
            train_settings = replace(train_settings, learning_rate=s.fine_tune_learning_rate)
        scratch = Workspace(tmp / "ws")
        train(scratch.root, train_settings, init_model=init, stage="retrain", data_dir=ws.data)
        challenger_keras = scratch.model / "model.keras"

        new_test = load_split(ws.data / "test.npz")
        parts = [new_test] + ([champion_test] if champion_test is not None else [])
        if (
            champion_test is not None
            and champion_test.images.shape[1:] != new_test.images.shape[1:]
        ):
            raise DataError(
                f"the new data's images {new_test.images.shape[1:]} differ from the "
                f"champion's {champion_test.images.shape[1:]}"
            )
        eval_set = Split(
            np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts])
        )
        num_classes = int(data_manifest["num_classes"])
        champ, chall = evaluate_both(champion_keras, challenger_keras, eval_set, num_classes)
        checks = gate(champ, chall, s)
        passed = not failed(checks)
        decision = {
            "decision": "deploy-challenger" if passed else "keep-champion",
            "passed": passed,
            "champion_version": champion_version,
            "data_hash": data_manifest["data_hash"],
            "champion_data_hash": champion_manifest["data_hash"] if champion_manifest else None,
            "strategy": "from-scratch" if init is None else "fine-tune",
            "eval_rows": int(eval_set.labels.size),
            "champion": champ,
            "challenger": chall,
            "checks": [c.to_dict() for c in checks],
            "settings": s.__dict__,
            "seconds": round(time.monotonic() - started, 2),
        }
        out = tmp / "out"
        out.mkdir()
        write_json(out / DECISION_FILE, decision)
        write_junit(out / "junit.xml", "tfship.retrain", checks)
        plot_confusion(
            chall["confusion_matrix"], out / "confusion_matrix.png", "challenger confusion matrix"
        )
        (out / "report.md").write_text(
            "\n".join(
                [
                    "## Retrain: champion vs challenger",
                    "",
                    f"**Gate {'PASSED' if passed else 'FAILED'}**: {summary(checks)}",
                    "",
                    f"Both evaluated on the same {eval_set.labels.size} held-out examples "
                    "(the champion's test set + the new data's test split).",
                    "",
                    side_by_side(champ, chall, champion_version),
                    "",
                    check_table(checks),
                    "",
                ]
            )
        )
        if passed:
            replace_dir(scratch.model, ws.model)  # stage 3, 4, 5 and 7 follow unchanged
        else:
            shutil.rmtree(ws.model, ignore_errors=True)  # nothing a later stage could package
        replace_dir(out, ws.retrain)  # last: the decision is the commit point
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    event(
        "retrain",
        "challenger " + ("accepted" if passed else "rejected"),
        accuracy=f"{chall['accuracy']:.4f}",
        champion=f"{champ['accuracy']:.4f}" if champ else "none",
    )
    if not passed:
        raise GateFailed(
            f"challenger rejected: {summary(checks)}",
            hint=f"report: {ws.retrain / 'report.md'}; the champion keeps serving",
        )
    return decision
