"""A small residual network for any image set.

``tfship train --trainer examples.trainers.small_resnet``. The model takes pixel values 0-255,
as TF Serving is sent them: a Normalization layer fitted from tfship's statistics (each
channel's mean and standard deviation over the snapshot) standardises them inside the graph,
so clients send what a decoded image holds and nothing else. Then a stem convolution and two
residual stages (He et al. 2016, "Deep Residual Learning for Image Recognition": two 3x3
convolutions with batch normalisation, added to a shortcut), the second at half the
resolution, and a flattened dense head: a small image is told apart by where its strokes are,
which global average pooling would average away. Only built-in layers are used, so ``tfship
test``, ``package`` and ``retrain`` load the saved model without importing this module.
"""

from __future__ import annotations

import keras

WIDTHS = (16, 32)  # filters of the two residual stages


def run_fn(ctx):  # ctx: tfship.trainer.TrainerContext
    """The compiled model; tfship fits it (early stopping on validation loss)."""
    (name,) = ctx.inputs  # an image set has one input, "image"
    channels = ctx.stats["image"]  # the snapshot's per-channel statistics, on 0-255
    with ctx.strategy.scope():  # the variables must belong to the strategy
        pixels = keras.Input(shape=ctx.image_shape, name=name)
        x = keras.layers.Normalization(
            axis=-1,
            mean=channels["mean"],
            variance=[max(s, 1.0) ** 2 for s in channels["std"]],
            name="standardise",
        )(pixels)
        x = keras.layers.Conv2D(WIDTHS[0], 3, padding="same", activation="relu")(x)
        for stage, width in enumerate(WIDTHS):
            x = _block(x, width, stride=1 if stage == 0 else 2)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dropout(0.2)(x)
        outputs = keras.layers.Dense(len(ctx.classes), activation="softmax", name="probabilities")(
            x
        )
        model = keras.Model(pixels, outputs, name="small_resnet")
        model.compile(
            optimizer=keras.optimizers.Adam(ctx.settings.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    return model


def _block(x: keras.KerasTensor, width: int, stride: int) -> keras.KerasTensor:
    """Two 3x3 convolutions added to the input (projected by a 1x1 convolution when the
    width or the resolution changes)."""
    shortcut = x
    if stride != 1 or x.shape[-1] != width:
        shortcut = keras.layers.Conv2D(width, 1, strides=stride, use_bias=False)(x)
    y = keras.layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False)(x)
    y = keras.layers.BatchNormalization()(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(y)
    y = keras.layers.BatchNormalization()(y)
    return keras.layers.ReLU()(keras.layers.Add()([shortcut, y]))
