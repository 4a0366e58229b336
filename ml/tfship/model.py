"""The default CNN and the hook for users' own models (``--model-fn package.module:function``).

A model function takes ``(input_shape, num_classes)`` and returns a *compiled* Keras model
whose input is named (``keras.Input(name=...)``): the name becomes the serving signature's
input key, and an unnamed input gets a process-dependent name like ``keras_tensor_4``. It
sees pixels scaled to [0, 1]: tfship puts a ``Rescaling(1/255)`` in front of it
(:func:`on_pixels`), so the model trained, saved and served takes pixel values 0-255 and
the preprocessing travels inside the exported graph (no training/serving skew).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import keras

from tfship import config
from tfship.errors import ConfigError

ModelFn = Callable[[tuple[int, ...], int], keras.Model]
RESCALING = "rescale_pixels"  # the layer that divides pixels by 255 inside the graph


def default_model(
    input_shape: tuple[int, ...], num_classes: int, learning_rate: float
) -> keras.Model:
    """A small CNN on pixel values 0-255 (rescaled inside the graph): conv blocks, then a
    flattened dense head with dropout.

    The head flattens the feature map instead of averaging it away: a digit is told apart by
    *where* its strokes are, and on 8x8 inputs global average pooling loses that (measured in
    bench/gate_margin.py: over 5 seeds the pooled head left one class at 0.69 recall after 20
    epochs; the flattened head reaches >= 0.88 in 6). One pooling step first (two from
    16 px up) keeps the head small: 1024 features on 8x8 digits, a 2 MB package.
    """
    inputs = keras.Input(shape=input_shape, name=config.INPUT_NAME)
    x = keras.layers.Rescaling(1.0 / config.PIXEL_MAX, name=RESCALING)(inputs)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    if min(input_shape[:2]) >= 16:
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="tfship_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def load_model_fn(spec: str) -> ModelFn:
    """Import ``package.module:function``; fail with one clear line if it is not there."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--model-fn {spec!r}: expected package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--model-fn {spec}: cannot import {module_name} ({exc})") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"--model-fn {spec}: {module_name} has no function {attr}")
    return fn


def build_model(
    input_shape: tuple[int, ...],
    num_classes: int,
    model_fn: str | None,
    learning_rate: float,
) -> keras.Model:
    """Make the model to train: ours, or the user's, checked for a usable interface."""
    if model_fn is None:
        return default_model(input_shape, num_classes, learning_rate)
    model = load_model_fn(model_fn)(tuple(input_shape), num_classes)
    check_interface(model, model_fn)
    return on_pixels(model)


def on_pixels(model: keras.Model) -> keras.Model:
    """``model`` (on [0, 1]) behind a ``Rescaling(1/255)``: one model on pixel values 0-255,
    with the user's input name and the user's compile settings (optimizer, loss, metrics)."""
    source = model.inputs[0]
    inputs = keras.Input(shape=source.shape[1:], name=source.name, dtype=source.dtype)
    x = keras.layers.Rescaling(1.0 / config.PIXEL_MAX, name=RESCALING)(inputs)
    wrapped = keras.Model(inputs, model(x), name=f"{model.name}_on_pixels")
    # The user's own optimizer, loss and metrics objects: rebuilding them from their config
    # would fail for a custom loss or metric Keras cannot locate by name.
    compiled = getattr(model, "_compile_config", None)
    if compiled is not None and getattr(compiled, "config", None) is not None:
        wrapped.compile(**compiled.config)
    else:
        wrapped.compile_from_config(model.get_compile_config())
    return wrapped


def takes_pixels(model: keras.Model) -> bool:
    """Whether ``model`` rescales pixel values 0-255 itself (every model tfship trains now);
    False for a model packaged before, which took pixels already scaled to [0, 1]."""
    return any(layer.name == RESCALING for layer in model.layers)


def check_interface(model: object, origin: str) -> None:
    """The model must be compiled, single-input, with a named input and K outputs."""
    if not isinstance(model, keras.Model):
        raise ConfigError(f"{origin} returned {type(model).__name__}, expected a keras.Model")
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
        raise ConfigError(f"{origin}: the model is not compiled", hint="call model.compile(...)")
    if len(model.inputs) != 1:
        raise ConfigError(f"{origin}: the model has {len(model.inputs)} inputs, expected 1")
    name = model.inputs[0].name
    if name.startswith("keras_tensor"):
        raise ConfigError(
            f"{origin}: the model input is unnamed ({name})",
            hint="name it: keras.Input(shape=..., name='image')",
        )
