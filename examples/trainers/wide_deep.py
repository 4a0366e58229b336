"""A wide-and-deep model for any table: ``tfship train --trainer examples.trainers.wide_deep``.

Wide: a linear layer over sparse views of the row (each number cut at the training data's
deciles, each category one-hot, the text's TF-IDF), which memorises what goes with which
label. Deep: numbers normalised, categories embedded, the same TF-IDF, through two ReLU layers,
which generalises. Their logits are added (Cheng et al. 2016, "Wide & Deep Learning for
Recommender Systems"). Every step of preprocessing is a Keras layer inside the model, fitted
from tfship's statistics and schema: the model takes the raw columns, as TF Serving is sent
them. Only built-in layers are used, so ``tfship test``, ``package`` and ``retrain`` load the
saved model without importing this module.
"""

from __future__ import annotations

import math

import keras

EMBEDDING_DIM = 8
TEXT_TOKENS = 5_000
DECILES = range(10, 100, 10)  # indices into a feature's 101 percentiles (0..100)


def run_fn(ctx):  # ctx: tfship.trainer.TrainerContext
    """The compiled model; tfship fits it (early stopping on validation loss)."""
    with ctx.strategy.scope():  # the variables must belong to the strategy
        inputs, wide, deep = {}, [], []
        for name, kind in ctx.inputs.items():
            inputs[name], wide_part, deep_part = _feature(ctx, name, kind)
            wide += wide_part
            deep += deep_part
        units = len(ctx.classes) if ctx.classes else 1
        wide_logits = keras.layers.Dense(units, name="wide")(_concat(wide))
        x = keras.layers.Dense(64, activation="relu")(_concat(deep))
        x = keras.layers.Dropout(0.1)(x)
        x = keras.layers.Dense(32, activation="relu")(x)
        logits = keras.layers.Add()([wide_logits, keras.layers.Dense(units, name="deep")(x)])
        if ctx.classes:
            outputs = keras.layers.Softmax(name="probabilities")(logits)
            loss, metrics = "sparse_categorical_crossentropy", ["accuracy"]
        else:  # in the target's units: the network learns the standardised target
            target = ctx.stats.features[ctx.label]
            outputs = keras.layers.Rescaling(
                scale=_spread(target.std), offset=target.mean, name="prediction"
            )(logits)
            loss, metrics = "mse", [keras.metrics.RootMeanSquaredError(name="rmse")]
        model = keras.Model(inputs, outputs, name="wide_and_deep")
        model.compile(
            optimizer=keras.optimizers.Adam(ctx.settings.learning_rate),
            loss=loss,
            metrics=metrics,
        )
    return model


def _feature(ctx, name: str, kind: str) -> tuple[keras.KerasTensor, list, list]:
    """One raw input, and what it gives the wide and the deep parts."""
    if kind == "numeric":
        raw = keras.Input(shape=(), name=name, dtype="float32")
        f = ctx.stats.features[name]
        scaled = keras.layers.Normalization(axis=None, mean=f.mean, variance=_spread(f.std) ** 2)
        deep = [keras.layers.Reshape((1,))(scaled(raw))]
        edges = sorted({f.percentiles[d] for d in DECILES}) if f.percentiles else []
        wide = [keras.layers.Discretization(bin_boundaries=edges, output_mode="one_hot")(raw)]
        return raw, wide if edges else [], deep
    raw = keras.Input(shape=(), name=name, dtype="string")
    if kind == "categorical":
        vocab = ctx.vocabulary(name)  # the schema's domain; anything else is one OOV bucket
        one_hot = keras.layers.StringLookup(vocabulary=vocab, output_mode="one_hot")(raw)
        ids = keras.layers.StringLookup(vocabulary=vocab)(raw)
        embedded = keras.layers.Embedding(len(vocab) + 1, EMBEDDING_DIM)(ids)
        return raw, [one_hot], [embedded]
    words = keras.layers.TextVectorization(max_tokens=TEXT_TOKENS, output_mode="tf_idf")
    words.adapt(ctx.train_ds.map(lambda features, _label: features[name]))
    tf_idf = words(raw)
    return raw, [tf_idf], [tf_idf]


def _concat(parts: list) -> keras.KerasTensor:
    return keras.layers.Concatenate()(parts) if len(parts) > 1 else parts[0]


def _spread(std: float) -> float:
    """A usable scale: the standard deviation, or 1 for a constant or unknown one."""
    return std if std and math.isfinite(std) else 1.0
