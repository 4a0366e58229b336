"""Stage 2 for tables: ``tf.data`` over a split's CSV, and the default model, whose
preprocessing is inside the graph.

Every feature of ``schema.pbtxt`` but the label is one named model input taking the raw
value, so the served model takes the same columns as the CSV and training and serving
cannot disagree on preprocessing: numbers go through ``Normalization`` with the training
data's mean and variance (from ``stats.json``), categorical strings through ``StringLookup``
on the schema's vocabulary with one out-of-vocabulary bucket (a new category in a later
snapshot or request is "other", never a crash), text through ``TextVectorization`` (TF-IDF)
adapted on the training split. Classification ends in softmax over the classes (indices into
the manifest's ``classes``); regression in one unit rescaled to the target's mean and spread,
so the output is in the target's units.

The CSV is read by ``tf.data.experimental.CsvDataset``: streamed from the file, never whole in
memory. Imported only by stages that train (it imports TensorFlow).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfship import schema as sch
from tfship.stats import TableStats
from tfship.tables import numeric_means

NUMERIC, CATEGORICAL, TEXT = "numeric", "categorical", "text"
SHUFFLE_ROWS = 10_000  # shuffle buffer: bounded memory whatever the table's size
TEXT_TOKENS = 5_000


def feature_kinds(schema: object, label: str) -> dict[str, str]:
    """Each input feature (schema order, label excluded): numeric, categorical or text."""
    out = {}
    for feat in schema.feature:
        if feat.name == label:
            continue
        if sch.feature_type(feat) != sch.BYTES:
            out[feat.name] = NUMERIC
        elif sch.domain_values(schema, feat) is not None:
            out[feat.name] = CATEGORICAL
        else:
            out[feat.name] = TEXT
    return out


def _header(path: Path) -> list[str]:
    with path.open(newline="") as fh:
        return [h.strip() for h in next(csv.reader(fh))]


def dataset(
    path: Path,
    kinds: dict[str, str],
    stats: TableStats,
    label: str,
    classes: list[str] | None,
    batch_size: int,
    shuffle_seed: int | None = None,
    rows: int | None = None,
) -> tf.data.Dataset:
    """(features dict, label) batches from a split's CSV. A missing number is the training
    mean (so it normalises to 0); a class label becomes its index in ``classes``. ``rows``
    (from the data manifest) tells tf.data the split's length."""
    header = _header(path)
    defaults = []
    for name in header:
        numeric = kinds.get(name) == NUMERIC or (name == label and classes is None)
        defaults.append(
            tf.constant(math.nan if numeric else "", tf.float32 if numeric else tf.string)
        )
    ds = tf.data.experimental.CsvDataset(str(path), defaults, header=True)
    means = numeric_means(stats, kinds)
    table = None
    if classes is not None:
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(classes), tf.range(len(classes), dtype=tf.int64)
            ),
            default_value=-1,
        )

    def to_example(*cols):
        row = dict(zip(header, cols, strict=True))
        y = row.pop(label)
        feats = {}
        for name in kinds:
            v = row[name]
            if name in means:
                v = tf.where(tf.math.is_nan(v), tf.constant(means[name], tf.float32), v)
            feats[name] = v  # a scalar per row: TF Serving's row format {"age": 39, ...}
        y = table.lookup(tf.strings.strip(y)) if table is not None else y
        return feats, y

    ds = ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if rows is not None:  # a CSV's length is unknown to tf.data; Keras warns without it
        ds = ds.apply(tf.data.experimental.assert_cardinality(rows))
    if shuffle_seed is not None:
        ds = ds.shuffle(SHUFFLE_ROWS, seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def default_table_model(
    schema: object,
    stats: TableStats,
    label: str,
    classes: list[str] | None,
    learning_rate: float,
    train_ds: tf.data.Dataset,
) -> keras.Model:
    """Inputs per feature with their preprocessing, a small MLP, and the task's head."""
    kinds = feature_kinds(schema, label)
    inputs: dict[str, keras.KerasTensor] = {}
    encoded = []
    for name, kind in kinds.items():
        if kind == NUMERIC:
            inp = keras.Input(shape=(), name=name, dtype="float32")
            f = stats.features[name]
            variance = f.std**2 if f.std and np.isfinite(f.std) else 1.0
            x = keras.layers.Normalization(axis=None, mean=f.mean, variance=variance)(inp)
            encoded.append(keras.layers.Reshape((1,))(x))
        elif kind == CATEGORICAL:
            inp = keras.Input(shape=(), name=name, dtype="string")
            vocab = sch.domain_values(schema, _feature(schema, name))
            encoded.append(keras.layers.StringLookup(vocabulary=vocab, output_mode="one_hot")(inp))
        else:
            inp = keras.Input(shape=(), name=name, dtype="string")
            vectorize = keras.layers.TextVectorization(max_tokens=TEXT_TOKENS, output_mode="tf_idf")
            vectorize.adapt(train_ds.map(lambda f, _y, n=name: f[n]))
            encoded.append(vectorize(inp))
        inputs[name] = inp
    x = keras.layers.Concatenate()(encoded) if len(encoded) > 1 else encoded[0]
    x = keras.layers.Dense(64, activation="relu")(x)
    x = keras.layers.Dropout(0.1)(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    if classes is not None:
        outputs = keras.layers.Dense(len(classes), activation="softmax", name="probabilities")(x)
        loss, metrics = "sparse_categorical_crossentropy", ["accuracy"]
    else:
        target = stats.features[label]
        x = keras.layers.Dense(1)(x)
        outputs = keras.layers.Rescaling(
            scale=target.std or 1.0, offset=target.mean, name="prediction"
        )(x)
        loss, metrics = "mse", [keras.metrics.RootMeanSquaredError(name="rmse")]
    model = keras.Model(inputs, outputs, name="tfship_table")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics)
    return model


def _feature(schema: object, name: str) -> object:
    return next(f for f in schema.feature if f.name == name)


def predict(model: keras.Model, ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(outputs, labels) over a dataset, in order."""
    outs, ys = [], []
    for feats, y in ds:
        outs.append(np.asarray(model(feats, training=False)))
        ys.append(y.numpy())
    return np.concatenate(outs), np.concatenate(ys)


# TF Serving's Classify and Regress APIs want these method names (tensorflow_serving/servables/
# tensorflow/classifier.cc, regressor.cc); TF2 writes every signature as predict.
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


def export_table(
    model: keras.Model,
    out: Path,
    kinds: dict[str, str],
    classes: list[str] | None,
    int_features: set[str] = frozenset(),
    means: dict[str, float] | None = None,
) -> None:
    """Export the SavedModel TF Serving loads: ``serving_default`` on the raw named features
    (``classes`` and ``scores`` for a classifier, ``prediction`` for regression), and
    ``classify`` or ``regress`` on serialized ``tf.Example`` (input ``inputs``), whose
    features are parsed with the schema's types (an INT feature is an ``int64_list``, as a
    JSON example's whole number is; a FLOAT one a ``float_list``).

    ``means``: each numeric feature's training mean. A missing number (NaN in a Predict
    request, a feature absent from a ``tf.Example``) becomes it inside the graph, as the
    training pipeline (:func:`dataset`) filled it: no training/serving skew."""

    means = means or {}
    specs = {
        n: tf.TensorSpec([None], tf.float32 if k == NUMERIC else tf.string, name=n)
        for n, k in kinds.items()
    }
    parse = {}
    for n, spec in specs.items():
        if spec.dtype == tf.string:
            parse[n] = tf.io.FixedLenFeature([], tf.string, default_value="")
        else:  # ragged: an absent value is told apart from any number
            parse[n] = tf.io.RaggedFeature(tf.int64 if n in int_features else tf.float32)

    def filled(name: str, values: tf.Tensor, present: tf.Tensor | None = None) -> tf.Tensor:
        """``values`` with a missing number (NaN, or not ``present``) as the training mean."""
        if name not in means:
            return values
        missing = tf.math.is_nan(values)
        if present is not None:
            missing = tf.logical_or(missing, tf.logical_not(present))
        return tf.where(missing, tf.constant(means[name], tf.float32), values)

    def from_parsed(parsed: dict) -> dict:
        feats = {}
        for n, v in parsed.items():
            if isinstance(v, tf.RaggedTensor):
                first = tf.cast(v.to_tensor(default_value=0, shape=[None, 1])[:, 0], tf.float32)
                feats[n] = filled(n, first, v.row_lengths() > 0)
            else:
                feats[n] = v
        return feats

    def heads(out_: tf.Tensor) -> dict[str, tf.Tensor]:
        if classes is None:
            return {"prediction": tf.squeeze(out_, -1)}
        names = tf.tile(tf.constant([classes]), [tf.shape(out_)[0], 1])
        return {"classes": names, "scores": out_}

    def serve(features: dict) -> dict:
        features = {n: filled(n, v) for n, v in features.items()}
        return heads(model(features, training=False))

    def from_examples(inputs: tf.Tensor) -> dict:
        feats = from_parsed(tf.io.parse_example(inputs, parse))
        out_ = model(feats, training=False)
        if classes is None:
            return {"outputs": tf.squeeze(out_, -1)}
        return heads(out_)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve, input_signature=[specs])
    second = "classify" if classes is not None else "regress"
    archive.add_endpoint(
        second, from_examples, input_signature=[tf.TensorSpec([None], tf.string, name="inputs")]
    )
    archive.write_out(str(out), verbose=False)
    set_method(out, second, CLASSIFY_METHOD if classes is not None else REGRESS_METHOD)


def set_method(out: Path, signature: str, method: str) -> None:
    """Mark ``signature`` of the SavedModel in ``out`` as TF Serving's Classify or Regress
    method (Keras' export writes every signature as Predict; TF Serving's Classify and
    Regress APIs look the method name up)."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb = out / "saved_model.pb"
    saved = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    for meta in saved.meta_graphs:
        meta.signature_def[signature].method_name = method
    pb.write_bytes(saved.SerializeToString(deterministic=True))
