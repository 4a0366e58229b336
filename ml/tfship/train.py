"""Stage 2: train a Keras model on the build stage's splits.

Writes ``<workspace>/model/``: ``model.keras`` (kept for retraining), ``history.json``,
``history.png`` and ``train.json`` (what was trained on, with which settings, by which
trainer and ``tf.distribute`` strategy). A table or an image set trains tfship's default
model for it or the one a ``--trainer`` module's ``run_fn`` returns (``tfship.trainer``,
docs/trainer.md), under the strategy ``tfship.distribute`` chooses; with several workers only
the chief writes. TensorFlow
is imported when a model is trained, not when this module is (``tfship --help`` and the
settings stay fast).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tfship import config, distribute
from tfship import schema as sch
from tfship import trainer as trainers
from tfship.data import SEED, Split, class_names, load_split
from tfship.errors import ConfigError
from tfship.log import event, quiet_tensorflow
from tfship.settings import Setting, setting
from tfship.stats import TableStats
from tfship.workspace import Workspace, read_json, sha256_file, write_json

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

EPOCHS = Setting(
    40, "TFSHIP_EPOCHS", "Upper bound; early stopping on val loss usually ends sooner.", min=1
)


# A model packaged before images were served as pixel values 0-255 took [0, 1]: a challenger
# fine-tuned from it would change what every client must send, so retrain refuses.
OLD_INPUT_RANGE = (
    "{what} takes pixels scaled to [0, 1]; tfship's image models now take pixel values 0-255 "
    "and rescale them in their graph: a retrained model would change what clients send"
)
OLD_RANGE_HINT = (
    "deploy a model trained by this tfship first (tfship run, or build/train/test/package/"
    "deploy), and tell clients to send pixels 0-255; then retrain"
)


@dataclass
class TrainSettings:
    """Everything that decides what a training run produces."""

    epochs: int = EPOCHS.field()
    batch_size: int = setting(32, "TFSHIP_BATCH_SIZE", "Rows per training step.", min=1)
    learning_rate: float = setting(
        3e-3, "TFSHIP_LEARNING_RATE", "Adam's learning rate when training from scratch."
    )
    patience: int = setting(
        4, "TFSHIP_PATIENCE", "Epochs without a better validation loss before stopping.", min=1
    )
    seed: int = SEED.field()
    model_fn: str | None = setting(
        None,
        "TFSHIP_MODEL_FN",
        "Your model: package.module:function(input_shape, num_classes) -> compiled "
        "keras.Model with a named input. Default: tfship's CNN.",
    )
    trainer: str | None = setting(
        None,
        "TFSHIP_TRAINER",
        "Your model, package.module defining run_fn(ctx) -> keras.Model built in "
        "ctx.strategy.scope(), compiled (fitted or not: tfship fits it), on the raw features "
        "named in ctx.inputs (a table's columns, or an image's pixels 0-255), giving "
        "(N, len(ctx.classes)) probabilities or an (N,)/(N, 1) regression value. See "
        "docs/trainer.md. Default: tfship's model for the data.",
    )

    def validate(self) -> None:
        """Reject settings that cannot train."""
        if self.epochs < 1:
            raise ConfigError(f"--epochs {self.epochs}: must be at least 1")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size}: must be at least 1")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"--learning-rate {self.learning_rate}: must be in (0, 1)")
        if self.trainer:
            trainers.check_name(self.trainer)


def _epoch_log(stage: str):
    """A Keras callback writing one log line per epoch (no progress-bar spam in CI)."""
    import keras

    class EpochLog(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.start = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            fields = {k: f"{v:.4f}" for k, v in sorted(logs.items()) if isinstance(v, float)}
            fields["s"] = f"{time.monotonic() - self.start:.1f}"
            event(stage, f"epoch {epoch + 1}", **fields)

    return EpochLog()


def image_dataset(split: Split, batch_size: int, seed: int | None = None) -> tf.data.Dataset:
    """A tf.data pipeline of (pixels, label) batches read from ``split``'s arrays a batch at a
    time: the build's ``.npz`` is read with ``pread`` (:class:`tfship.rows.Rows`), never all
    in memory (``from_tensor_slices`` would copy it into one tensor). ``seed``: shuffled, a
    new seeded order every epoch."""
    import tensorflow as tf

    images, labels = split.images, split.labels
    rng = np.random.default_rng(seed) if seed is not None else None

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = rng.permutation(len(labels)) if rng is not None else None
        for start in range(0, len(labels), batch_size):
            rows = slice(start, start + batch_size)
            idx = rows if order is None else np.sort(order[rows])  # sorted: forward reads
            yield np.asarray(images[idx]), labels[idx]

    spec = (
        tf.TensorSpec((None, *images.shape[1:]), tf.float32),
        tf.TensorSpec((None,), tf.int64),
    )
    ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
    # A generator's length is unknown to tf.data; told, Keras counts steps as for arrays.
    steps = -(-len(labels) // batch_size)
    ds = ds.apply(tf.data.experimental.assert_cardinality(steps))
    return ds.prefetch(tf.data.AUTOTUNE)


def fit_datasets(
    model: keras.Model,
    train_ds: object,
    val_ds: object,
    s: TrainSettings,
    stage: str = "train",
    strategy: tf.distribute.Strategy | None = None,
) -> dict[str, list[float]]:
    """``model.fit`` on two tf.data pipelines with early stopping on validation loss, under
    ``strategy`` (the one the model was built in) if there is one."""
    import keras

    with (
        distribute.keras_fit_support(model, strategy, train_ds)
        if strategy is not None
        else contextlib.nullcontext()
    ):
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=s.epochs,
            shuffle=False,  # the pipeline shuffles, seeded; Keras would warn that it cannot
            verbose=0,
            callbacks=[
                keras.callbacks.EarlyStopping(
                    monitor="val_loss", patience=s.patience, restore_best_weights=True
                ),
                _epoch_log(stage),
            ],
        )
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def save_model(model: keras.Model, path: Path) -> None:
    """``model.save(path)``, written so that the same weights give the same bytes.

    A ``.keras`` file is a zip whose ``metadata.json`` carries the save time, whose
    ``config.json`` numbers shared objects by their memory address, and whose members carry
    zip time stamps: two identical trainings would hash differently, and the model's sha256
    (its identity in the lineage checks) would change run to run. The archive is rewritten
    with fixed member times, shared objects numbered in order of appearance, and without
    ``date_saved`` (Keras never reads it).
    """
    raw = path.with_name(f".raw-{path.name}")
    model.save(raw)
    try:
        with zipfile.ZipFile(raw) as src, zipfile.ZipFile(path, "w") as dst:
            for info in sorted(src.infolist(), key=lambda i: i.filename):
                data = src.read(info)
                if info.filename == "metadata.json":
                    meta = json.loads(data)
                    meta.pop("date_saved", None)
                    data = json.dumps(meta, sort_keys=True).encode()
                elif info.filename == "config.json":
                    data = json.dumps(_renumber_shared_objects(json.loads(data))).encode()
                fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
                fixed.compress_type = info.compress_type
                fixed.external_attr = 0o644 << 16
                dst.writestr(fixed, data)
    finally:
        raw.unlink(missing_ok=True)


def _renumber_shared_objects(node: object, ids: dict | None = None) -> object:
    """Replace each ``shared_object_id`` (an ``id()``) by its order of first appearance."""
    ids = {} if ids is None else ids
    if isinstance(node, dict):
        return {
            k: ids.setdefault(v, len(ids) + 1)
            if k == "shared_object_id"
            else _renumber_shared_objects(v, ids)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_renumber_shared_objects(v, ids) for v in node]
    return node


def plot_history(history: dict[str, list[float]], path: Path) -> None:
    """Loss and accuracy curves as a PNG for the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    # accuracy for a classifier, rmse for tfship's regression; a trainer's model may have none
    second = next((m for m in ("accuracy", "rmse") if m in history), "accuracy")
    for ax, metric in zip(axes, ("loss", second), strict=True):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if key in history:
                ax.plot(range(1, len(history[key]) + 1), history[key], style, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@dataclass
class TrainResult:
    """What stage 2 wrote: ``train.json`` (``written`` is False on a worker that is not the
    chief of a multi-worker run: it trained, the chief wrote)."""

    info: dict
    written: bool = True

    def to_dict(self) -> dict:
        return self.info

    def summary(self, ws_root: Path) -> str:
        done = (
            f"trained {self.info['epochs_run']} epochs, best val loss "
            f"{self.info['best_val_loss']:.4f}"
        )
        if not self.written:
            run = self.info["distribute"]
            return f"{run['task']} of {run['workers']} workers {done}; the chief writes the model"
        return f"{done}: {Path(ws_root) / 'model' / 'model.keras'}"


def train(
    ws_root: Path,
    s: TrainSettings,
    init_model: Path | None = None,
    stage: str = "train",
    data_dir: Path | None = None,
) -> TrainResult:
    """Stage 2 (and the fit of stage 6): train and write ``<workspace>/model/``.

    ``init_model`` fine-tunes an existing ``.keras`` model instead of building a new one.
    """
    s.validate()
    ws = Workspace(ws_root)
    data_dir = data_dir or ws.require(ws.data, "build")
    data_manifest = read_json(ws.require(data_dir / "manifest.json", "build"))
    table = data_manifest.get("kind") == "table"
    _check_kind(table, s)
    cluster = distribute.current_cluster()
    quiet_tensorflow()
    import keras
    import tensorflow as tf

    # Before any other TF op: MultiWorkerMirroredStrategy sets up its collectives at start-up.
    strategy = distribute.strategy(cluster)
    keras.utils.set_random_seed(s.seed)
    tf.config.experimental.enable_op_determinism()  # same seed, same data -> same model
    if s.trainer and init_model is None:
        trainers.load_run_fn(s.trainer)  # a module that cannot be used fails before training
    run = _Run(ws, data_dir, data_manifest, s, init_model, stage, strategy, cluster)
    return _train_table(run) if table else _train_images(run)


@dataclass
class _Run:
    """One training run: where, on what, with which settings, under which strategy."""

    ws: Workspace
    data_dir: Path
    manifest: dict
    s: TrainSettings
    init_model: Path | None
    stage: str
    strategy: tf.distribute.Strategy
    cluster: distribute.Cluster

    def announce(self, rows: int, **fields: object) -> None:
        """The ``training`` log line."""
        d = distribute.describe(self.strategy, self.cluster)
        event(
            self.stage,
            "training",
            rows=rows,
            **fields,
            epochs=self.s.epochs,
            data=self.manifest["data_hash"][:19],
            trainer=self.s.trainer,
            strategy=d["strategy"],
            replicas=d["replicas"],
            worker=d["task"],
        )


def _check_kind(table: bool, s: TrainSettings) -> None:
    """--model-fn is the image models' older hook; a trainer is for both kinds of data."""
    if table and s.model_fn:
        raise ConfigError(
            "--model-fn takes (input_shape, num_classes) for images; tables take a trainer",
            hint="use --trainer package.module, whose run_fn(ctx) returns the model "
            "(docs/trainer.md)",
        )
    if s.model_fn and s.trainer:
        raise ConfigError(
            f"--trainer {s.trainer} and --model-fn {s.model_fn} both name the model to train",
            hint="keep one: --trainer package.module (run_fn(ctx), docs/trainer.md) or "
            "--model-fn package.module:function",
        )


def _train_table(run: _Run) -> TrainResult:
    """Stage 2 for a table: stream the split's CSVs through tf.data into the table model
    (tfship's, the champion's when fine-tuning, or the trainer's), built in the strategy."""
    from tfship.table_model import dataset, default_table_model, feature_kinds  # imports TF

    s, data_dir, manifest = run.s, run.data_dir, run.manifest
    schema = sch.read_schema(data_dir / sch.SCHEMA_FILE)
    stats = TableStats.from_dict(read_json(data_dir / "stats.json"))
    label, classes = manifest["label"], manifest["classes"]
    kinds = feature_kinds(schema, label)

    def pipe(split: str, shuffle: bool) -> object:
        seed = s.seed if shuffle else None
        rows = manifest["rows"][split]
        ds = dataset(
            data_dir / f"{split}.csv", kinds, stats, label, classes, s.batch_size, seed, rows
        )
        return distribute.shard(ds, run.cluster)

    train_ds, val_ds = pipe("train", True), pipe("val", False)
    run.announce(manifest["rows"]["train"], task=manifest["task"])

    def default_model() -> keras.Model:
        return default_table_model(schema, stats, label, classes, s.learning_rate, train_ds)

    context = {
        "schema": schema,
        "stats": stats,
        "label": label,
        "task": manifest["task"],
        "classes": classes,
        "inputs": dict(kinds),
    }
    facts = {"kind": "table", "task": manifest["task"], "label": label, "classes": classes}
    facts["inputs"] = kinds
    return _fit_and_write(run, train_ds, val_ds, default_model, context, lambda _m: facts)


def _train_images(run: _Run) -> TrainResult:
    """Stage 2 for images: the splits' pixels, a batch at a time, into tfship's CNN (or a
    ``--model-fn`` model behind the rescaling), the champion when fine-tuning, or the
    trainer's, built in the strategy."""
    from tfship.model import build_model, check_interface, takes_pixels

    s, manifest = run.s, run.manifest
    train_split = load_split(run.data_dir / "train.npz")
    val_split = load_split(run.data_dir / "val.npz")
    shape = tuple(int(d) for d in train_split.images.shape[1:])
    num_classes = int(manifest["num_classes"])
    train_ds = distribute.shard(image_dataset(train_split, s.batch_size, s.seed), run.cluster)
    val_ds = distribute.shard(image_dataset(val_split, s.batch_size), run.cluster)
    run.announce(len(train_split))

    def check_shape(model: keras.Model) -> None:
        if tuple(model.inputs[0].shape[1:]) != shape:
            raise ConfigError(
                f"model input shape {tuple(model.inputs[0].shape[1:])}"
                f" does not match the data's {shape}"
            )

    def default_model() -> keras.Model:
        model = build_model(shape, num_classes, s.model_fn, s.learning_rate)
        check_shape(model)
        return model

    def check_champion(model: keras.Model) -> None:
        init = run.init_model
        check_interface(model, str(init))
        # A trainer's model rescales as its author wrote it; the contract is pixels 0-255.
        if not takes_pixels(model) and trainers.recorded_trainer(init) is None:  # type: ignore[arg-type]
            raise ConfigError(OLD_INPUT_RANGE.format(what=init), hint=OLD_RANGE_HINT)
        check_shape(model)

    context = {
        "schema": sch.read_schema(run.data_dir / sch.SCHEMA_FILE) if s.trainer else None,
        "stats": manifest.get("stats"),
        "label": sch.LABEL_FEATURE,
        "task": "classification",
        "classes": class_names(manifest),
        "inputs": {config.INPUT_NAME: "image"},
        "image_shape": shape,
    }

    def facts(model: keras.Model) -> dict:
        name = model.inputs[0].name
        return {"input_name": name, "input_shape": list(shape), "num_classes": num_classes}

    return _fit_and_write(run, train_ds, val_ds, default_model, context, facts, check_champion)


def _fit_and_write(
    run: _Run,
    train_ds: object,
    val_ds: object,
    default_model: Callable[[], keras.Model],
    context: dict,
    facts: Callable[[keras.Model], dict],
    check_champion: Callable[[keras.Model], None] | None = None,
) -> TrainResult:
    """Fit the model (the champion fine-tuned, the trainer's ``run_fn``'s, or tfship's
    default) on the two pipelines under the run's strategy; the chief writes it."""
    s, strategy, init = run.s, run.strategy, run.init_model

    def fit(model: keras.Model) -> dict[str, list[float]]:
        return fit_datasets(model, train_ds, val_ds, s, run.stage, strategy)

    started = time.monotonic()
    if init is not None:
        with strategy.scope():
            model = trainers.load_model(init, s.trainer)
            if check_champion is not None:
                check_champion(model)
            model.optimizer.learning_rate.assign(s.learning_rate)
        history = fit(model)
    elif s.trainer:
        ctx = trainers.TrainerContext(
            **context,
            train_ds=train_ds,
            val_ds=val_ds,
            settings=s,
            strategy=strategy,
            _default_model=default_model,
            _fit=fit,
        )
        model, history = trainers.run(s.trainer, ctx)
    else:
        with strategy.scope():
            model = default_model()
        history = fit(model)
    seconds = time.monotonic() - started
    # A fine-tuned champion keeps the architecture its trainer built: the lineage says whose.
    made_by = s.trainer or (trainers.recorded_trainer(init) if init is not None else None)
    info = {**facts(model), "trainer": made_by}
    info["distribute"] = distribute.describe(strategy, run.cluster)
    if not run.cluster.chief:
        return _discard(model, history, info)
    return _write(run.ws, model, history, seconds, run.manifest, s, init, info, run.stage)


def _write(
    ws: Workspace,
    model: keras.Model,
    history: dict[str, list[float]],
    seconds: float,
    data_manifest: dict,
    s: TrainSettings,
    init_model: Path | None,
    facts: dict,
    stage: str,
) -> TrainResult:
    """Write ``<workspace>/model/`` (model.keras, history, train.json) in one step."""
    import keras
    import tensorflow as tf

    with ws.stage_output("train") as out:
        save_model(model, out / "model.keras")
        write_json(out / "history.json", history)
        plot_history(history, out / "history.png")
        info = {
            "data_hash": data_manifest["data_hash"],
            "model_sha256": sha256_file(out / "model.keras"),
            **facts,
            "epochs_run": len(history.get("loss", [])),
            "best_val_loss": min(history.get("val_loss", [float("nan")])),
            "seconds": round(seconds, 2),
            "settings": asdict(s),
            "init_model": str(init_model) if init_model else None,
            "keras_version": keras.__version__,
            "tf_version": tf.__version__,
        }
        write_json(out / "train.json", info)
    event(
        stage,
        "model saved",
        epochs=info["epochs_run"],
        best_val_loss=f"{info['best_val_loss']:.4f}",
    )
    return TrainResult(info)


def _discard(model: keras.Model, history: dict[str, list[float]], facts: dict) -> TrainResult:
    """A worker that is not the chief: it saves, as every worker of a multi-worker run must
    (TF's multi-worker Keras tutorial), to a temporary folder it then deletes; the
    workspace is the chief's to write."""
    with tempfile.TemporaryDirectory(prefix="tfship-worker-") as tmp:
        model.save(Path(tmp) / "model.keras")
    info = {
        **facts,
        "epochs_run": len(history.get("loss", [])),
        "best_val_loss": min(history.get("val_loss", [float("nan")])),
    }
    return TrainResult(info, written=False)
