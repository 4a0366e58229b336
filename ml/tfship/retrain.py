"""Stage 6: retrain on new data against the model TF Serving is actually serving.

Four steps, the decision apart from the acts around it:

1. :func:`find_champion`: the highest AVAILABLE version on the deploy target, fetched by that
   version from the artifact store (or the host): its ``.keras``, manifest and test split.
   The same data hash as the new data's means "no new data, nothing to do".
2. :func:`train_challenger`: fine-tune the champion (default) or train from scratch, with
   stage 2's code, on ``workspace/data``.
3. :func:`decide` (pure): on the same examples for both (the champion's test set + the new
   test split), challenger accuracy >= champion - tolerance and >= the absolute minimum, and
   no class's recall drops by more than ``max_class_drop``.
4. :func:`retrain` writes the report and the decision (``retrain/retrain.json``, last: it is
   the commit point); a failed gate exits 3 and leaves no challenger for package to pick up.

Later stages read the decision through :func:`skipped` (no new data: nothing to test,
package, deploy or verify) and :func:`approved_champion` (deploy refuses if another version
serves by then: the stale-approval guard).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from tfship import config, table_retrain
from tfship import schema as sch
from tfship.data import DataSettings, Split, load_split
from tfship.errors import ConfigError, DataError, GateFailed, ServingError, StoreError
from tfship.evaluate import (
    MIN_ACCURACY,
    MIN_R2,
    SLICES,
    classification_metrics,
    cross_entropy,
    plot_confusion,
    predict_keras,
)
from tfship.log import event
from tfship.report import Check, check_table, class_names, failed, summary, write_junit
from tfship.rows import concat, head
from tfship.settings import setting
from tfship.sources import DATA
from tfship.store import MANIFEST, REJECTED, ArtifactStore
from tfship.table_eval import requested_slices
from tfship.targets import Fleet
from tfship.train import OLD_INPUT_RANGE, OLD_RANGE_HINT, TrainSettings, train
from tfship.verify import load_test_split
from tfship.workspace import Workspace, read_json, recover_dir, replace_dir, write_json

DECISION_FILE = "retrain.json"


@dataclass
class RetrainSettings:
    """Gate and strategy of a retrain."""

    tolerance: float = setting(
        0.005,
        "TFSHIP_RETRAIN_TOLERANCE",
        "Challenger accuracy may be this much below the champion's.",
        min=0,
        max=1,
    )
    min_accuracy: float = MIN_ACCURACY.field(help="Absolute accuracy floor.")
    max_class_drop: float = setting(
        0.10,
        "TFSHIP_MAX_CLASS_DROP",
        "No class's recall may drop by more than this (~50 held-out rows a class: one row is "
        "0.02).",
        min=0,
        max=1,
    )
    from_scratch: bool = setting(False, None, "Train anew instead of fine-tuning.", switch=True)
    allow_cold_start: bool = setting(
        False, None, "If nothing is serving, train from scratch instead of failing.", switch=True
    )
    min_r2: float = MIN_R2.field(help="Regression (tables): absolute R2 floor.")
    max_drift: float | None = setting(
        None,
        "TFSHIP_MAX_DRIFT",
        "Reject the challenger if a feature drifted more than this since the champion's "
        "training data (L-infinity for categories and an image's classes, Jensen-Shannon for "
        "numbers and its pixel histogram; 0..1). Default: report only.",
        value_type=float,
        min=0,
        max=1,
    )
    slices: tuple[str, ...] = SLICES.field(
        help="Tables: also show champion vs challenger per value of this categorical feature "
        "(repeatable or comma-separated; shown, not gated)."
    )
    fine_tune_learning_rate: float = setting(
        1e-3,
        "TFSHIP_FINE_TUNE_LEARNING_RATE",
        "Learning rate when fine-tuning the champion (--learning-rate is for from scratch): a "
        "third of it, to adapt, not forget.",
    )


@dataclass
class RetrainDataSettings(DataSettings):
    """Stage 1 settings as retrain takes them: without ``--data``, the workspace's data."""

    data: str | None = DATA.field(
        optional=True,
        help="New data (same sources as build). Default: what `tfship build` left in the "
        "workspace.",
    )


# --------------------------------------------------------------------------------------------
# What later stages read of the decision
# --------------------------------------------------------------------------------------------


@dataclass
class Skipped:
    """A stage with nothing to do: retrain found no new data for this workspace."""

    stage: str
    champion_version: int

    def to_dict(self) -> dict:
        return {"skipped": self.stage, "reason": "no-new-data", **asdict(self)}

    def summary(self) -> str:
        return f"no new data since version {self.champion_version}: nothing to {self.stage}"


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


def skipped(ws_root: Path, stage: str) -> Skipped | None:
    """The one "skipped, no new data" rule: test, package, deploy and test-deployed (and
    ``tfship run``) do nothing when retrain found the workspace's data already served."""
    decision = no_new_data(Workspace(ws_root))
    if decision is None:
        return None
    skip = Skipped(stage, int(decision["champion_version"]))
    event(stage, skip.summary())
    return skip


def approved_champion(ws_root: Path) -> int | None:
    """The version a challenger in the workspace was compared with (None: no such decision)."""
    path = Workspace(ws_root).retrain / DECISION_FILE
    if not path.exists():
        return None
    decision = read_json(path)
    if decision.get("decision") == "deploy-challenger":
        return decision.get("champion_version")
    return None


# --------------------------------------------------------------------------------------------
# 1. The champion
# --------------------------------------------------------------------------------------------


@dataclass
class Champion:
    """The version serving now, as the store (or the host) keeps it."""

    version: int
    manifest: dict
    keras: Path
    test: Split  # a table's: columns by input name (a dict) as images
    package: Path


def fetch_champion(store: ArtifactStore, host_fetch, model: str, version: int, dest: Path) -> Path:
    """The champion's package folder: from the store, else from the deploy host."""
    try:
        return store.get(model, version, dest)
    except StoreError:
        if host_fetch is None:
            raise
        event("retrain", "champion not in the store; fetching it from the host", version=version)
        return host_fetch(version, dest)


def find_champion(
    serving_version: Callable[[], int | None],
    url: str,
    store: ArtifactStore,
    host_fetch,
    model: str,
    allow_cold_start: bool,
    dest: Path,
) -> Champion | None:
    """The champion (None: nothing serves and a cold start is allowed)."""
    try:
        version = serving_version()
    except ServingError as exc:
        raise ServingError(
            f"cannot ask TF Serving which version is serving: {exc.message}", hint=exc.hint
        ) from exc
    if version is None:
        if not allow_cold_start:
            raise ServingError(
                f"no version of {model} is serving at {url}: nothing to retrain against",
                hint="deploy a first model, or pass --allow-cold-start to train from scratch",
            )
        return None
    pkg = fetch_champion(store, host_fetch, model, version, dest)
    manifest = read_json(pkg / MANIFEST)
    if manifest.get("kind") != "table" and "input_range" not in manifest:
        raise ConfigError(
            OLD_INPUT_RANGE.format(what=f"the champion, {model} version {version},"),
            hint=OLD_RANGE_HINT,
        )
    test = Split(*load_test_split(pkg))
    champion = Champion(version, manifest, pkg / "assets.extra" / "model.keras", test, pkg)
    event(
        "retrain",
        "champion",
        model=model,
        version=version,
        data=champion.manifest["data_hash"][:19],
    )
    return champion


# --------------------------------------------------------------------------------------------
# 2. The challenger, 3. the decision
# --------------------------------------------------------------------------------------------


def train_challenger(
    ws: Workspace,
    train_settings: TrainSettings,
    s: RetrainSettings,
    champion: Champion | None,
    scratch: Path,
) -> tuple[Path, str]:
    """Train the challenger into ``scratch``; (its .keras, "fine-tune" or "from-scratch")."""
    init = None if (s.from_scratch or champion is None) else champion.keras
    if init is not None:
        train_settings = replace(train_settings, learning_rate=s.fine_tune_learning_rate)
    train(scratch, train_settings, init_model=init, stage="retrain", data_dir=ws.data)
    return scratch / "model" / "model.keras", "from-scratch" if init is None else "fine-tune"


def eval_set(ws: Workspace, champion: Champion | None) -> Split:
    """The examples both models are judged on: the new test split (its first
    ``RETRAIN_EVAL_ROWS``, a random sample: memory bounded whatever the data's size) + the
    champion's test set."""
    new_test = load_split(ws.data / "test.npz")
    n = config.RETRAIN_EVAL_ROWS
    new_test = Split(head(new_test.images, n), new_test.labels[:n])
    if champion is None:
        return new_test
    if champion.test.images.shape[1:] != new_test.images.shape[1:]:
        raise DataError(
            f"the new data's images {new_test.images.shape[1:]} differ from the "
            f"champion's {champion.test.images.shape[1:]}"
        )
    return Split(
        concat([new_test.images, champion.test.images]),
        np.concatenate([new_test.labels, champion.test.labels]),
    )


def image_drift_checks(
    champion: Champion | None, ws: Workspace, data_manifest: dict, max_drift: float | None
) -> tuple[dict[str, tuple[str, float]], list[Check]]:
    """Drift of an image set since the champion's training data (its package carries their
    statistics): the pixel histogram (Jensen-Shannon) and the class counts (L-infinity); a
    check per feature with a threshold (the schema's drift_comparator, else --max-drift)."""
    base = champion.manifest.get("data_stats") if champion else None
    new = data_manifest.get("stats")
    if not base or not new:
        return {}, []
    found = sch.image_drift(base, new)
    schema_path = ws.data / sch.SCHEMA_FILE
    limits = (
        sch.drift_thresholds(sch.read_schema(schema_path), max_drift)
        if schema_path.exists()
        else {name: max_drift for name in found if max_drift is not None}
    )
    return found, table_retrain.drift_gates(found, limits)


def evaluate_both(
    champion_keras: Path | None, challenger_keras: Path, examples: Split, num_classes: int
) -> tuple[dict | None, dict]:
    """Metrics of both models on the same examples."""

    def metrics(model_path: Path) -> dict:
        probs = predict_keras(model_path, examples.images)
        return classification_metrics(
            examples.labels,
            probs.argmax(axis=1),
            num_classes,
            cross_entropy(probs, examples.labels),
        )

    champ = metrics(champion_keras) if champion_keras else None
    return champ, metrics(challenger_keras)


def decide(champ: dict | None, chall: dict, s: RetrainSettings) -> list[Check]:
    """The gate, a pure function of both models' metrics: challenger vs champion (relative)
    and vs the absolute minimum. The challenger ships if no check failed."""
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
    for c, (name, old, new) in enumerate(
        zip(
            class_names(chall),
            champ["per_class"]["recall"],
            chall["per_class"]["recall"],
            strict=True,
        )
    ):
        if champ["per_class"]["support"][c]:
            checks.append(
                Check(
                    f"recall drop[{name}]",
                    round(old - new, 6),
                    "<=",
                    s.max_class_drop,
                    f"{old:.3f} -> {new:.3f}",
                )
            )
    return checks


# --------------------------------------------------------------------------------------------
# 4. The report and the decision
# --------------------------------------------------------------------------------------------


def side_by_side(champ: dict | None, chall: dict, champion_version: int | None) -> str:
    """The table the person at the approval hold reads."""
    if "r2" in chall:
        return table_retrain.side_by_side(champ, chall, champion_version)
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
    for name, old, new in zip(
        class_names(chall), champ["per_class"]["recall"], chall["per_class"]["recall"], strict=True
    ):
        rows.append(f"| recall {name} | {old:.3f} | {new:.3f} | {new - old:+.3f} |")
    return "\n".join(rows)


def report(decision: dict, checks: list[Check], rows: int) -> str:
    """``retrain/report.md``."""
    return "\n".join(
        [
            "## Retrain: champion vs challenger",
            "",
            f"**Gate {'PASSED' if decision['passed'] else 'FAILED'}**: {summary(checks)}",
            "",
            f"Both evaluated on the same {rows} held-out examples "
            "(the champion's test set + the new data's test split).",
            "",
            side_by_side(
                decision["champion"], decision["challenger"], decision["champion_version"]
            ),
            "",
            table_retrain.slice_side_by_side(
                decision["champion"], decision["challenger"], decision["champion_version"]
            ),
            check_table(checks),
            "",
            table_retrain.drift_table({k: tuple(v) for k, v in decision.get("drift", {}).items()}),
        ]
    )


@dataclass
class RetrainResult:
    """The decision of stage 6 (``retrain/retrain.json``)."""

    decision: dict

    def to_dict(self) -> dict:
        return self.decision

    def summary(self, ws_root: Path) -> str:
        d = self.decision
        if d["decision"] == "no-new-data":
            return f"no new data, nothing to do (version {d['champion_version']} was trained on it)"
        key = _headline(d["challenger"])
        versus = (
            f" vs champion {d['champion'][key]:.4f} (version {d['champion_version']})"
            if d["champion"]
            else ""
        )
        return (
            f"challenger accepted: {key} {d['challenger'][key]:.4f}{versus}; "
            f"report {Path(ws_root) / 'retrain' / 'report.md'}"
        )


def _headline(metrics: dict) -> str:
    """The metric a line about a model names: accuracy, or R2 for a regression."""
    return "r2" if "r2" in metrics else "accuracy"


def retrain(
    ws_root: Path,
    store: ArtifactStore,
    fleet: Fleet,
    model: str,
    s: RetrainSettings,
    train_settings: TrainSettings,
) -> RetrainResult:
    """Stage 6, against the deploy target ``fleet`` (a fleet of one: a retrain has one
    champion). What serves is the target's answer (which tells a fresh host from a dead one);
    the champion comes from the store, else from the host's own copy."""
    target = fleet.single
    client = target.client(model)

    def from_host(version: int, dest: Path) -> Path:
        target.host.get_tree(f"{target.model_dir(model)}/{version}", dest)
        return dest

    ws = Workspace(ws_root)
    data_manifest = read_json(ws.require(ws.data / "manifest.json", "build"))
    sliced = requested_slices(ws, data_manifest, s.slices)  # before anything trains
    # A decision from an earlier run must not outlive this one (killed or not): later stages
    # read it. This run's decision is written last, after the model it speaks of.
    recover_dir(ws.retrain, ".tmp-retrain-")
    recover_dir(ws.model, ".tmp-train-")
    for leftover in ws.root.glob(".work-retrain-*"):  # a killed run's champion and scratch
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.rmtree(ws.retrain, ignore_errors=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=".work-retrain-", dir=ws.root))
    try:
        champion = find_champion(
            lambda: fleet.serving_version(model),
            client.shown,
            store,
            from_host,
            model,
            s.allow_cold_start,
            tmp / "champion",
        )
        if champion is not None and champion.manifest["data_hash"] == data_manifest["data_hash"]:
            decision = {
                "decision": "no-new-data",
                "champion_version": champion.version,
                "data_hash": data_manifest["data_hash"],
            }
            with ws.stage_output("retrain") as out:
                write_json(out / DECISION_FILE, decision)
                (out / "report.md").write_text(
                    f"## Retrain\n\nNo new data: the data hash equals the one version "
                    f"{champion.version} was trained on. Nothing to do.\n"
                )
            event("retrain", "no new data, nothing to do", version=champion.version)
            return RetrainResult(decision)
        challenger, strategy = train_challenger(ws, train_settings, s, champion, tmp / "ws")
        drift: dict = {}
        if data_manifest.get("kind") == "table":
            info = read_json(challenger.parent / "train.json")
            old = (champion.test.images, champion.test.labels) if champion else None
            rows, labels = table_retrain.eval_rows(
                ws, info, old, champion.manifest if champion else None
            )
            examples = Split(rows, labels)
            by = table_retrain.slice_columns(rows, sliced)
            champ = (
                table_retrain.metrics(champion.keras, rows, labels, info, by) if champion else None
            )
            chall = table_retrain.metrics(challenger, rows, labels, info, by)
            checks = (
                table_retrain.decide_regression(champ, chall, s.min_r2, s.tolerance)
                if info["classes"] is None
                else decide(champ, chall, s)
            )
            drift, drift_checks = table_retrain.drift_checks(
                champion.package if champion else None, ws, s.max_drift
            )
            checks += drift_checks
        else:
            examples = eval_set(ws, champion)
            num_classes = int(data_manifest["num_classes"])
            champ, chall = evaluate_both(
                champion.keras if champion else None, challenger, examples, num_classes
            )
            checks = decide(champ, chall, s)
            drift, drift_checks = image_drift_checks(champion, ws, data_manifest, s.max_drift)
            checks += drift_checks
        passed = not failed(checks)
        decision = {
            "decision": "deploy-challenger" if passed else "keep-champion",
            "passed": passed,
            "champion_version": champion.version if champion else None,
            "data_hash": data_manifest["data_hash"],
            "champion_data_hash": champion.manifest["data_hash"] if champion else None,
            "strategy": strategy,
            "eval_rows": int(examples.labels.size),
            "champion": champ,
            "challenger": chall,
            "drift": drift,
            "checks": [c.to_dict() for c in checks],
            "settings": asdict(s),
            "seconds": round(time.monotonic() - started, 2),
        }
        with ws.stage_output("retrain") as out:
            write_json(out / DECISION_FILE, decision)
            write_junit(out / "junit.xml", "tfship.retrain", checks)
            if "confusion_matrix" in chall:
                plot_confusion(
                    chall["confusion_matrix"],
                    out / "confusion_matrix.png",
                    "challenger confusion matrix",
                )
            (out / "report.md").write_text(report(decision, checks, int(examples.labels.size)))
            if passed:
                replace_dir(challenger.parent, ws.model)  # stage 3, 4, 5 and 7 follow unchanged
            else:
                shutil.rmtree(ws.model, ignore_errors=True)  # nothing a later stage could package
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    key = _headline(chall)
    event(
        "retrain",
        "challenger " + ("accepted" if passed else "rejected"),
        **{key: f"{chall[key]:.4f}"},
        champion=f"{champ[key]:.4f}" if champ else "none",
    )
    if not passed:
        store.record(
            model,
            REJECTED,
            None,  # a rejected challenger is never packaged: it has no version
            champion=decision["champion_version"],
            data_hash=decision["data_hash"],
            reason=f"challenger rejected: {summary(checks)}",
        )
        raise GateFailed(
            f"challenger rejected: {summary(checks)}",
            hint=f"report: {ws.retrain / 'report.md'}; the champion keeps serving",
        )
    return RetrainResult(decision)
