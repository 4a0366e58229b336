"""``--trainer package.module``: your own model, in the spirit of TFX's ``run_fn``.

The module defines ``run_fn(ctx: TrainerContext) -> keras.Model``. The model takes the raw
named features (one input per name in ``ctx.inputs``: a table's columns, or an image set's
``image``, pixel values 0-255 of shape ``ctx.image_shape``) and outputs class probabilities
``(N, len(ctx.classes))`` or a regression value ``(N,)`` / ``(N, 1)``; it is returned compiled,
fitted or not (tfship fits a model whose optimizer has taken no step). Everything tfship
then does with the model (gates, export, TF Serving, retrain) is the same as for its default
model. docs/trainer.md has the whole contract and a complete example.

:func:`run` calls the trainer and checks what it returned: any mistake (the module does not
import, has no ``run_fn``, raised, returned a model with other inputs or outputs) is one
:class:`ConfigError` naming the module and the fix, and nothing is written. TensorFlow is
imported inside functions (this module is imported by ``train``, which imports TF late).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tfship import schema as sch
from tfship.distribute import DEFAULT, keras_fit_support, name_of
from tfship.errors import ConfigError, TfshipError
from tfship.stats import TableStats

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from tfship.train import TrainSettings

RUN_FN = "run_fn"
MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
SUM_TOLERANCE = 1e-3  # probabilities: each row sums to 1 within this

History = dict[str, list[float]]


@dataclass
class TrainerContext:
    """What ``run_fn(ctx)`` gets: the data, what it is, the settings and the strategy.

    ``train_ds`` and ``val_ds`` yield ``(features, label)`` batches of ``settings.batch_size``
    rows (the global batch). For a table, ``features`` maps each name of ``inputs`` to a 1-D
    tensor of raw values (float32 for numeric features, a missing number already the training
    mean; strings for categorical and text ones); for images it is one float32 tensor
    ``(N, *image_shape)`` of pixel values 0-255. ``label`` is the class index into ``classes``
    (int64) or the regression target (float32). The training split is shuffled with
    ``settings.seed``.
    """

    schema: Any  # tensorflow_metadata's Schema proto (schema.pbtxt)
    # the training data's statistics: a table's TableStats (stats.json), an image set's
    # manifest statistics (pixel histogram, channel means and stds, rows per class)
    stats: TableStats | dict | None
    label: str
    task: str  # "classification" or "regression"
    classes: list[str] | None  # class names, index = label value; None for regression
    inputs: dict[str, str]  # feature name -> "numeric", "categorical", "text" or "image"
    train_ds: tf.data.Dataset
    val_ds: tf.data.Dataset
    settings: TrainSettings
    strategy: tf.distribute.Strategy
    # tfship's own model and fit, given by the train stage (this module does not import it)
    _default_model: Callable[[], keras.Model] = field(repr=False)
    _fit: Callable[[keras.Model], History] = field(repr=False)
    history: History | None = field(default=None, repr=False)  # of the last ctx.fit
    image_shape: tuple[int, ...] | None = None  # (height, width, channels) for images

    def default_model(self) -> keras.Model:
        """tfship's default model for this data, compiled, built in ``strategy.scope()``:
        a start to extend (its layers are ``model.layers``, its inputs ``model.inputs``)."""
        with self.strategy.scope():
            return self._default_model()

    def fit(self, model: keras.Model) -> History:
        """tfship's fit on ``train_ds`` / ``val_ds``: up to ``settings.epochs`` epochs, early
        stopping on validation loss (``settings.patience``, best weights restored), one log
        line per epoch. Returns the history (``{"loss": [...], "val_loss": [...], ...}``)."""
        self.history = self._fit(model)
        return self.history

    def vocabulary(self, name: str) -> list[str]:
        """The categorical feature's values in the schema (its string domain)."""
        feat = next((f for f in self.schema.feature if f.name == name), None)
        values = sch.domain_values(self.schema, feat) if feat is not None else None
        if values is None:
            raise ConfigError(f"ctx.vocabulary({name!r}): not a categorical feature")
        return list(values)


def check_name(module: str) -> None:
    """``--trainer`` names a module (``package.module``), not a file or a function."""
    if not MODULE_NAME.match(module):
        raise ConfigError(
            f"--trainer {module!r}: expected a module name like trainers.wide_deep",
            hint="the module's run_fn(ctx) is called; a file trainers/wide_deep.py in the "
            "current folder is trainers.wide_deep",
        )


def import_trainer(module: str) -> object:
    """Import the trainer's module; the current folder is on the path, as for ``python -m``."""
    check_name(module)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"--trainer {module}: cannot import {module} ({exc})",
            hint="run from the folder that holds it, or add that folder to PYTHONPATH",
        ) from exc
    except Exception as exc:  # the module's own code failed (syntax error, bad import, ...)
        raise ConfigError(
            f"--trainer {module}: importing it raised {one_line(exc)}",
            hint="fix the module (tfship --debug train shows the traceback)",
        ) from exc


def load_run_fn(module: str) -> Callable[[TrainerContext], keras.Model]:
    """The module's ``run_fn``."""
    fn = getattr(import_trainer(module), RUN_FN, None)
    if not callable(fn):
        raise ConfigError(
            f"--trainer {module}: the module has no function {RUN_FN}",
            hint=f"define {RUN_FN}(ctx) -> keras.Model (docs/trainer.md)",
        )
    return fn


def run(module: str, ctx: TrainerContext) -> tuple[keras.Model, History]:
    """Call the trainer's ``run_fn``, check its model, fit it if it was not, and return it
    with its history."""
    run_fn = load_run_fn(module)
    origin = f"--trainer {module}"
    try:
        model = run_fn(ctx)
    except TfshipError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"{origin}: run_fn raised {one_line(exc)}",
            hint="fix run_fn (tfship --debug train shows the traceback)",
        ) from exc
    shape = check_model(model, ctx, origin)
    if steps_taken(model) == 0:
        try:
            history = ctx.fit(model)
        except TfshipError:
            raise
        except Exception as exc:  # most often a loss that does not fit the labels
            raise ConfigError(
                f"{origin}: fitting the model raised {one_line(exc)}",
                hint="labels are class indices (loss sparse_categorical_crossentropy) or "
                "float targets (mse, ...): compile the model to match",
            ) from exc
    else:  # fitted by run_fn: ctx.fit's history, else model.fit's
        history = ctx.history or dict(getattr(getattr(model, "history", None), "history", {}))
    if "val_loss" not in history:  # fitted without validation data: the best is the last
        history = {**history, "val_loss": [_val_loss(model, ctx)]}
    if ctx.classes is None and len(shape) == 1:
        model = as_column(model, ctx)
    return model, history


def _val_loss(model: keras.Model, ctx: TrainerContext) -> float:
    with keras_fit_support(model, ctx.strategy, ctx.val_ds):
        return float(model.evaluate(ctx.val_ds, verbose=0, return_dict=True)["loss"])


def steps_taken(model: keras.Model) -> int:
    """How many optimizer steps the model has taken (0: compiled, never fitted)."""
    import keras

    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def check_model(model: object, ctx: TrainerContext, origin: str) -> tuple[int, ...]:
    """The model is compiled, takes exactly the features by name with their types, and
    outputs what the task needs (checked on a batch of validation rows, whose output shape
    is returned)."""
    import keras
    import numpy as np

    if not isinstance(model, keras.Model):
        raise ConfigError(
            f"{origin}: run_fn returned {type(model).__name__}, expected a keras.Model",
            hint="return the model from run_fn",
        )
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
        raise ConfigError(
            f"{origin}: run_fn returned a model that is not compiled",
            hint="call model.compile(optimizer, loss, metrics) inside ctx.strategy.scope()",
        )
    if name_of(ctx.strategy) != DEFAULT and model.distribute_strategy is not ctx.strategy:
        raise ConfigError(
            f"{origin}: the model was built outside ctx.strategy.scope() "
            f"({name_of(ctx.strategy)} cannot train it)",
            hint="build and compile it inside `with ctx.strategy.scope():`",
        )
    _check_inputs(model, ctx, origin)
    feats, _ = next(iter(ctx.val_ds))
    try:
        out = np.asarray(model(feats, training=False))
    except Exception as exc:
        takes = (
            f"a batch of images (N, {', '.join(map(str, ctx.image_shape))}), pixel values 0-255"
            if ctx.image_shape
            else "a dict of the raw features, one 1-D tensor per name in ctx.inputs"
        )
        raise ConfigError(
            f"{origin}: calling the model on a batch of validation rows raised {one_line(exc)}",
            hint=f"the model takes {takes}",
        ) from exc
    rows = len(feats) if ctx.image_shape else len(next(iter(feats.values())))
    _check_outputs(out, rows, ctx, origin)
    return tuple(out.shape)


def _check_inputs(model: keras.Model, ctx: TrainerContext, origin: str) -> None:
    """A functional model's inputs: the features' names and types (a subclassed model has
    no declared inputs; calling it on real rows checks it)."""
    try:
        inputs = model.inputs
    except AttributeError:  # subclassed
        return
    if not inputs:
        return
    names = {t.name: t for t in inputs}
    kind = "image" if ctx.image_shape else "numeric"
    missing, unknown = sorted(set(ctx.inputs) - set(names)), sorted(set(names) - set(ctx.inputs))
    if missing or unknown:
        found = "; ".join(
            part
            for part in (
                f"no input for {missing}" if missing else "",
                f"inputs {unknown} are not features of the data" if unknown else "",
            )
            if part
        )
        raise ConfigError(
            f"{origin}: the model's inputs do not match the features: {found}",
            hint=f"one {_input_call('NAME', kind, ctx)} for each NAME in ctx.inputs "
            f"({', '.join(ctx.inputs)})",
        )
    for name, kind in ctx.inputs.items():
        dtype = str(names[name].dtype)
        numeric = kind in ("numeric", "image")
        if numeric != (dtype in FLOAT_DTYPES):
            raise ConfigError(
                f"{origin}: input {name!r} is {dtype} but the feature is {kind}",
                hint=_input_call(repr(name), kind, ctx, dtype=True),
            )
        shape = tuple(names[name].shape[1:])
        if kind == "image" and shape != ctx.image_shape:
            raise ConfigError(
                f"{origin}: input {name!r} takes images of shape {shape}; the data's are "
                f"{ctx.image_shape}",
                hint=_input_call(repr(name), kind, ctx),
            )


def _input_call(name: str, kind: str, ctx: TrainerContext, dtype: bool = False) -> str:
    """The ``keras.Input(...)`` a feature of ``kind`` takes, as a hint shows it."""
    shape = ctx.image_shape if kind == "image" else ()
    want = "float32" if kind in ("numeric", "image") else "string"
    return f"keras.Input(shape={shape}, name={name}" + (f", dtype={want!r})" if dtype else ")")


def _check_outputs(out: object, rows: int, ctx: TrainerContext, origin: str) -> None:
    import numpy as np

    shape = tuple(np.shape(out))
    if ctx.classes is not None:
        k = len(ctx.classes)
        if shape != (rows, k):
            raise ConfigError(
                f"{origin}: the model outputs shape {shape} for {rows} rows; a classifier "
                f"over {k} classes outputs ({rows}, {k}) probabilities",
                hint="end in keras.layers.Dense(len(ctx.classes), activation='softmax')",
            )
        sums = np.sum(out, axis=1)
        if np.any(out < 0) or np.any(out > 1) or not np.allclose(sums, 1, atol=SUM_TOLERANCE):
            raise ConfigError(
                f"{origin}: the model's outputs are not probabilities (row sums "
                f"{float(sums.min()):.3g}..{float(sums.max()):.3g})",
                hint="end in a softmax (logits are not served as scores)",
            )
    elif shape not in ((rows,), (rows, 1)):
        raise ConfigError(
            f"{origin}: the model outputs shape {shape} for {rows} rows; a regression "
            f"outputs ({rows},) or ({rows}, 1)",
            hint="end in keras.layers.Dense(1)",
        )


def as_column(model: keras.Model, ctx: TrainerContext) -> keras.Model:
    """A regression model of output (N,) as one of output (N, 1), compiled as it was: the
    export, the gates and retraining read the prediction as column 0."""
    import keras

    with ctx.strategy.scope():
        inputs = {
            n: keras.Input(shape=(), name=n, dtype="float32" if k == "numeric" else "string")
            for n, k in ctx.inputs.items()
        }
        outputs = keras.layers.Reshape((1,), name="prediction")(model(inputs))
        column = keras.Model(inputs, outputs, name=model.name)
        column.compile_from_config(model.get_compile_config())
    return column


def recorded_trainer(model_path: Path) -> str | None:
    """The ``--trainer`` a ``.keras`` model was trained with, from the lineage beside it:
    ``train.json`` in a workspace's ``model/``, ``tfship.json`` in a package's
    ``assets.extra/``."""
    folder = Path(model_path).parent
    for name, keys in (("train.json", ("settings",)), ("tfship.json", ("train", "settings"))):
        if (folder / name).is_file():
            node = json.loads((folder / name).read_text())
            for key in keys:
                node = node.get(key) if isinstance(node, dict) else None
            return node.get("trainer") if isinstance(node, dict) else None
    return None


def load_model(model_path: Path, trainer: str | None = None) -> keras.Model:
    """``keras.models.load_model``, importing the model's trainer module when Keras needs it.

    A trainer's custom layers are registered (``@keras.saving.register_keras_serializable``)
    when its module is imported; Keras 3 imports no user module by itself. If loading fails,
    the module (``trainer``, else the one recorded beside the model) is imported and the load
    tried again; a module that cannot be imported then is a ConfigError naming it.
    """
    import keras

    try:
        return keras.models.load_model(model_path)
    except (TypeError, ValueError) as exc:
        module = trainer or recorded_trainer(model_path)
        if module is None:
            raise
        import_trainer(module)
        try:
            return keras.models.load_model(model_path)
        except (TypeError, ValueError) as again:
            raise ConfigError(
                f"{model_path}: Keras cannot load it with {module} imported ({one_line(again)})",
                hint="register the trainer's custom layers with "
                "@keras.saving.register_keras_serializable() (docs/trainer.md)",
            ) from exc


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, at most ``limit`` characters."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
