"""The churn classifier: ``tfship train --trainer churn_model.trainer`` (docs/trainer.md).

Numbers are standardised with the training data's statistics, the plan is one-hot over the
schema's vocabulary, and one small hidden layer decides. Every step is a built-in Keras layer
inside the model, so TF Serving is sent the raw columns and ``tfship test``, ``package`` and
``retrain`` load the saved model without importing this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras

if TYPE_CHECKING:
    from tfship.trainer import TrainerContext

HIDDEN = 16


def run_fn(ctx: TrainerContext) -> keras.Model:
    """A compiled Keras model over ``ctx.inputs``; tfship fits it (``ctx.fit``)."""
    with ctx.strategy.scope():
        inputs, parts = {}, []
        for name, kind in ctx.inputs.items():
            if kind == "numeric":
                x = keras.Input(shape=(), name=name, dtype="float32")
                f = ctx.stats.features[name]
                variance = (f.std or 1.0) ** 2  # a constant column: leave it as it is
                z = keras.layers.Normalization(axis=None, mean=f.mean, variance=variance)(x)
                parts.append(keras.layers.Reshape((1,))(z))
            else:
                x = keras.Input(shape=(), name=name, dtype="string")
                vocab = ctx.vocabulary(name)  # the schema's; anything else: one OOV slot
                parts.append(keras.layers.StringLookup(vocabulary=vocab, output_mode="one_hot")(x))
            inputs[name] = x
        h = keras.layers.Concatenate()(parts)
        h = keras.layers.Dense(HIDDEN, activation="relu")(h)
        out = keras.layers.Dense(len(ctx.classes), activation="softmax")(h)
        model = keras.Model(inputs, out)
        model.compile(
            optimizer=keras.optimizers.Adam(ctx.settings.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    return model
