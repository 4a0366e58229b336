"""Stage 4: export a SavedModel for TF Serving, prove it reproduces the model, store it.

A version folder (what TF Serving loads) looks like::

    <version>/saved_model.pb
    <version>/variables/...
    <version>/assets.extra/tfship.json                 lineage + signature + golden batch
    <version>/assets.extra/tf_serving_warmup_requests  PredictionLog TFRecord, replayed on load
    <version>/assets.extra/model.keras                 for retraining
    <version>/assets.extra/test.npz                    the held-out test split (champion gate)
    <version>/assets.extra/schema.pbtxt                the data's schema (TFDV's format)

An image model's ``serving_default`` takes pixel values 0-255 (rescaled in the graph) and
answers ``classes`` (names) and ``scores``. A table's version holds ``test_rows.npz`` (the
first ``HELD_OUT_ROWS`` test rows, typed, and their labels) instead of ``test.npz``, and a
second signature, ``classify`` or ``regress``, on serialized ``tf.Example``.

``assets.extra/`` is ignored by the SavedModel loader.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tfship import config
from tfship import schema as sch
from tfship.data import class_names, load_split
from tfship.errors import DataError, GateFailed, VerificationFailed
from tfship.log import event, quiet_tensorflow
from tfship.settings import setting
from tfship.stats import TableStats
from tfship.store import MANIFEST, ArtifactStore, check_model_name, check_version
from tfship.tables import numeric_means, take, typed_rows
from tfship.trainer import load_model
from tfship.workspace import Workspace, read_json, tree_hashes, write_json

if TYPE_CHECKING:
    import keras
    import tensorflow as tf


@dataclass
class PackageSettings:
    """Stage 4: the version number (the store and model are :class:`StoreSettings`)."""

    version: int | None = setting(
        None,
        "TFSHIP_VERSION",
        "Integer version. Default: the UTC unix time in seconds.",
        value_type=int,
    )


@dataclass
class PackageResult:
    """What stage 4 did: the version, where it is stored, and whether it was new."""

    model_name: str
    version: int
    store: str
    stored: str  # uploaded | identical
    path: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> str:
        return f"packaged {self.model_name} version {self.version} ({self.stored}) in {self.store}"


def _tf():
    """TensorFlow, loaded quietly on first use."""
    quiet_tensorflow()
    import tensorflow as tf

    return tf


def default_version() -> int:
    """UTC unix time in seconds: monotonic, unique enough, and a valid TF Serving version."""
    return int(time.time())


def code_commit() -> str:
    """The commit being built: ``CIRCLE_SHA1`` on CircleCI, else git, else 'unknown'."""
    if os.environ.get("CIRCLE_SHA1"):
        return os.environ["CIRCLE_SHA1"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _spec(t: tf.TensorSpec) -> dict:
    from tensorflow.core.framework import types_pb2

    shape = (
        [-1 if d is None else int(d) for d in t.shape.as_list()]
        if t.shape.rank is not None
        else None
    )
    return {"dtype": types_pb2.DataType.Name(t.dtype.as_datatype_enum), "shape": shape}


def signature_of(loaded: object, name: str = config.SIGNATURE_NAME) -> dict:
    """The serving signature's inputs and outputs (TF Serving dtype names, -1 for unknown)."""
    fn = loaded.signatures[name]
    _, kwargs = fn.structured_input_signature
    return {
        "name": name,
        "inputs": {k: _spec(v) for k, v in sorted(kwargs.items())},
        "outputs": {k: _spec(v) for k, v in sorted(fn.structured_outputs.items())},
    }


def call_signature(
    loaded: object, inputs: dict[str, np.ndarray], name: str = config.SIGNATURE_NAME
) -> dict[str, np.ndarray]:
    """Run a loaded SavedModel's signature; return NumPy outputs."""
    tf = _tf()
    fn = loaded.signatures[name]
    out = fn(**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in out.items()}


def write_warmup(path: Path, model_name: str, batch: dict[str, np.ndarray]) -> None:
    """``tf_serving_warmup_requests``: PredictionLog protos TF Serving replays on load (one
    row, then the whole golden batch), inputs by name."""
    tf = _tf()
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    with tf.io.TFRecordWriter(str(path)) as writer:
        for n in (1, None):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(
                    name=model_name, signature_name=config.SIGNATURE_NAME
                ),
                inputs={k: tf.make_tensor_proto(v[:n]) for k, v in batch.items()},
            )
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())


def export_image(model: keras.Model, out: Path, classes: list[str]) -> None:
    """Export ``serving_default`` on the raw pixels (float32 0-255, named as the model's
    input; the model rescales them in its graph), answering ``classes`` (the names, as TF
    Serving's Classify API and the table models answer) and ``scores`` (the softmax);
    ``classify`` on serialized ``tf.Example`` whose feature of that name is the image's
    H*W*C pixels as a ``float_list`` (row-major), for TF Serving's Classify API; and
    ``predict_image_bytes`` on encoded images (``image_bytes``: PNG, JPEG, BMP or GIF bytes),
    decoded in the graph to the model's channels and, if another size, resized to its
    height and width (bilinear, antialiased, as the build's Pillow resizes a folder's)."""
    tf = _tf()
    import keras

    from tfship.table_model import CLASSIFY_METHOD, set_method  # imports TF

    source = model.inputs[0]
    spec = tf.TensorSpec([None, *source.shape[1:]], tf.float32, name=source.name)

    def serve(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        scores = model(pixels, training=False)
        names = tf.tile(tf.constant([classes]), [tf.shape(scores)[0], 1])
        return {"classes": names, "scores": scores}

    shape = [int(d) for d in source.shape[1:]]
    feature = {source.name: tf.io.FixedLenFeature([int(np.prod(shape))], tf.float32)}

    def from_examples(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(inputs, feature)
        return serve(tf.reshape(parsed[source.name], [-1, *shape]))

    def from_bytes(encoded: tf.Tensor) -> dict[str, tf.Tensor]:
        spec_one = tf.TensorSpec(shape, tf.float32)
        return serve(
            tf.map_fn(lambda one: decode_image(one, shape), encoded, fn_output_signature=spec_one)
        )

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(config.SIGNATURE_NAME, serve, input_signature=[spec])
    archive.add_endpoint(
        "classify", from_examples, input_signature=[tf.TensorSpec([None], tf.string, name="inputs")]
    )
    archive.add_endpoint(
        config.BYTES_SIGNATURE,
        from_bytes,
        input_signature=[tf.TensorSpec([None], tf.string, name=config.BYTES_INPUT)],
    )
    archive.write_out(str(out), verbose=False)
    set_method(out, "classify", CLASSIFY_METHOD)


def decode_image(encoded: tf.Tensor, shape: list[int]) -> tf.Tensor:
    """One encoded image (PNG, JPEG, BMP, GIF: its first frame) as float32 pixels 0-255 of
    ``shape`` (height, width, channels), in the graph, as the build's Pillow reads an image
    folder: JPEG with libjpeg's accurate integer DCT (Pillow's; TF's default DCT differs by
    up to 4 levels); colour to grey by luminance, grey to colour by copying, alpha dropped;
    another size resized (bilinear, antialiased) and rounded to whole values, within 1 level
    of Pillow's 8-bit resize."""
    tf = _tf()
    img = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, expand_animations=False),
    )
    colour = tf.shape(img)[-1] >= 3
    if shape[2] == 1:
        img = tf.cond(colour, lambda: tf.image.rgb_to_grayscale(img[..., :3]), lambda: img[..., :1])
    else:
        img = tf.cond(colour, lambda: img[..., :3], lambda: tf.image.grayscale_to_rgb(img[..., :1]))
    img = tf.cast(img, tf.float32)
    same = tf.reduce_all(tf.equal(tf.shape(img)[:2], shape[:2]))
    resized = tf.cond(
        same, lambda: img, lambda: tf.round(tf.image.resize(img, shape[:2], antialias=True))
    )
    return tf.ensure_shape(resized, shape)


def export_and_check(
    model: keras.Model, out: Path, golden: np.ndarray, classes: list[str]
) -> tuple[dict, dict]:
    """Export ``model`` to ``out`` and load it afresh; fail unless it reproduces the model."""
    tf = _tf()
    if len(classes) != model.outputs[0].shape[-1]:
        raise VerificationFailed(
            f"the model gives {model.outputs[0].shape[-1]} scores for {len(classes)} classes"
        )
    export_image(model, out, classes)
    loaded = tf.saved_model.load(str(out))
    sig = signature_of(loaded)
    if len(sig["inputs"]) != 1:
        raise VerificationFailed(f"exported signature has inputs {list(sig['inputs'])}, expected 1")
    input_name = next(iter(sig["inputs"]))
    served = call_signature(loaded, {input_name: golden})
    expected = np.asarray(model.predict(golden, verbose=0))
    output_name = "scores"
    diff = float(np.max(np.abs(served[output_name] - expected)))
    if not diff <= config.EXPORT_TOLERANCE:
        raise VerificationFailed(
            f"the exported SavedModel does not reproduce the Keras model: max abs diff {diff:.3g}"
            f" > {config.EXPORT_TOLERANCE}",
            hint="nothing was stored",
        )
    golden_doc = {
        "input_name": input_name,
        "output_name": output_name,
        "inputs": golden.tolist(),
        "outputs": served[output_name].tolist(),
        "max_abs_diff_vs_keras": diff,
        "encoded": _check_encoded(model, loaded, golden),
    }
    return sig, golden_doc


def _check_encoded(model: keras.Model, loaded: object, golden: np.ndarray) -> dict:
    """The golden images as PNGs (their pixels rounded to whole values, as a PNG holds
    them) through ``predict_image_bytes``: the Keras model's scores on the rounded pixels,
    or VerificationFailed. What stage 7 sends TF Serving (base64, as REST carries bytes)."""
    import base64

    tf = _tf()
    pixels = np.clip(np.rint(np.asarray(golden)), 0, config.PIXEL_MAX).astype(np.uint8)
    pngs = [tf.io.encode_png(p).numpy() for p in pixels]
    served = call_signature(
        loaded, {config.BYTES_INPUT: np.array(pngs, dtype=object)}, config.BYTES_SIGNATURE
    )
    expected = np.asarray(model.predict(pixels.astype(np.float32), verbose=0))
    diff = float(np.max(np.abs(served["scores"] - expected)))
    if not diff <= config.EXPORT_TOLERANCE:
        raise VerificationFailed(
            f"the exported {config.BYTES_SIGNATURE} signature does not reproduce the Keras "
            f"model on the decoded images: max abs diff {diff:.3g} > {config.EXPORT_TOLERANCE}",
            hint="nothing was stored",
        )
    return {
        "signature": config.BYTES_SIGNATURE,
        "input_name": config.BYTES_INPUT,
        "b64": [base64.b64encode(b).decode() for b in pngs],
        "outputs": served["scores"].tolist(),
        "max_abs_diff_vs_keras": diff,
    }


def _inputs(ws: Workspace) -> tuple[Path, dict, dict, dict]:
    """What stage 4 packages, checked: the model, its evaluation, data manifest, training."""
    model_path = ws.require(ws.model / "model.keras", "train")
    evaluation = read_json(ws.require(ws.eval / "metrics.json", "test"))
    data_manifest = read_json(ws.require(ws.data / "manifest.json", "build"))
    train_info = read_json(ws.require(ws.model / "train.json", "train"))
    if not evaluation.get("passed"):
        raise GateFailed(
            "the model in the workspace did not pass `tfship test`; it will not be packaged"
        )
    if evaluation.get("model_sha256") != train_info.get("model_sha256"):
        raise DataError(
            "eval/metrics.json is for another model than model/model.keras",
            hint="run `tfship test` again",
        )
    return model_path, evaluation, data_manifest, train_info


def package(
    ws_root: Path, store: ArtifactStore, model_name: str, version: int | None = None
) -> PackageResult:
    """Stage 4: export, verify, write lineage and warm-up, and put the version in the store."""
    check_model_name(model_name)
    ws = Workspace(ws_root)
    model_path, evaluation, data_manifest, train_info = _inputs(ws)
    if version is None:  # time-based, but always above what the store already holds
        version = max(default_version(), max(store.versions(model_name), default=0) + 1)
    version = check_version(version)
    if data_manifest.get("kind") == "table":
        return _package_table(ws, store, model_name, version, data_manifest, train_info)
    test = load_split(ws.data / "test.npz")
    golden = test.images[: config.GOLDEN_BATCH]
    _tf()  # quietly, before Keras loads it

    model = load_model(model_path)
    with ws.stage_output("package") as out:
        vdir = out / str(version)
        classes = class_names(data_manifest)
        sig, golden_doc = export_and_check(model, vdir, golden, classes)
        extra = vdir / "assets.extra"
        extra.mkdir()
        shutil.copy2(model_path, extra / "model.keras")
        # The first test rows (a random sample: the split is shuffled), at most HELD_OUT_ROWS
        # and HELD_OUT_IMAGE_BYTES of pixels: what retrain and deploy judge the model on,
        # whatever the data's size (a table's package carries its first HELD_OUT_ROWS).
        row_bytes = int(np.prod(test.images.shape[1:])) * 4
        held = slice(0, min(config.HELD_OUT_ROWS, config.HELD_OUT_IMAGE_BYTES // row_bytes))
        np.savez_compressed(extra / "test.npz", images=test.images[held], labels=test.labels[held])
        if (ws.data / sch.SCHEMA_FILE).exists():  # the data's schema travels with the model
            shutil.copy2(ws.data / sch.SCHEMA_FILE, extra / sch.SCHEMA_FILE)
        write_warmup(
            extra / "tf_serving_warmup_requests", model_name, {golden_doc["input_name"]: golden}
        )
        manifest = _manifest(model_name, version, data_manifest, evaluation, train_info)
        manifest.update(
            num_classes=data_manifest["num_classes"],
            classes=classes,
            # what a client sends: pixel values 0-255 (the graph rescales them). A package
            # without it took [0, 1]: retrain refuses to change that under its clients.
            input_range=[0.0, config.PIXEL_MAX],
            examples_api="classify",  # the classify signature stage 7 checks
            # the training data's statistics: what a retrain measures drift against
            data_stats=data_manifest.get("stats"),
            metrics={
                "accuracy": evaluation["metrics"]["accuracy"],
                "loss": evaluation["metrics"]["loss"],
                "per_class_recall": evaluation["metrics"]["per_class"]["recall"],
            },
            signature=sig,
            golden=golden_doc,
        )
        result = _store(ws, out, store, vdir, manifest)
    return result


def _manifest(
    model_name: str, version: int, data_manifest: dict, evaluation: dict, train_info: dict
) -> dict:
    """The lineage every package carries, whatever its data."""
    tf = _tf()
    import keras

    return {
        "model_name": model_name,
        "version": version,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data_hash": data_manifest["data_hash"],
        "data_origin": data_manifest["origin"],
        "data_source": data_manifest.get("source", data_manifest["origin"]),
        "data_sha256": data_manifest.get("data_sha256"),  # `tfship ci plan` compares with it
        "code_commit": code_commit(),
        "build_url": os.environ.get("CIRCLE_BUILD_URL"),
        "thresholds": evaluation["thresholds"],
        "tf_version": tf.__version__,
        "keras_version": keras.__version__,
        "train": {k: train_info.get(k) for k in ("epochs_run", "init_model", "settings")},
        # Same data + these seeds + the locked versions = the same weights (--seed).
        "seeds": {"split": data_manifest["seed"], "train": train_info["settings"]["seed"]},
    }


def _store(
    ws: Workspace, out: Path, store: ArtifactStore, vdir: Path, manifest: dict
) -> PackageResult:
    """Hash the version's files into its manifest and put it in the store."""
    model_name, version = manifest["model_name"], manifest["version"]
    manifest["files"] = tree_hashes(vdir)
    write_json(vdir / MANIFEST, manifest)
    state = store.put(model_name, version, vdir, manifest)
    result = PackageResult(
        model_name, version, store.uri, state, str((ws.package / str(version)).absolute())
    )
    write_json(out / "package.json", result.to_dict())
    event("package", f"stored {state}", model=model_name, version=version, store=store.uri)
    return result


def _plain(values: np.ndarray) -> list:
    """A column as JSON: float32 numbers with the 7 significant digits that round-trip them
    (24.0, 25.3, not 25.299999237060547), strings as they are."""
    if values.dtype.kind == "f":
        return [float(f"{x:.7g}") for x in values.tolist()]
    return values.tolist()


def _package_table(
    ws: Workspace,
    store: ArtifactStore,
    model_name: str,
    version: int,
    data_manifest: dict,
    train_info: dict,
) -> PackageResult:
    """Stage 4 for a table: export both signatures, check the export on real test rows."""
    tf = _tf()

    from tfship.table_model import export_table  # imports TF

    model_path = ws.model / "model.keras"
    evaluation = read_json(ws.eval / "metrics.json")
    label, classes = data_manifest["label"], data_manifest["classes"]
    kinds = train_info["inputs"]
    stats = TableStats.from_dict(read_json(ws.data / "stats.json"))
    means = numeric_means(stats, kinds)
    inputs, labels = typed_rows(  # what retrain re-scores: bounded, however big the split
        ws.data / "test.csv", kinds, means, label, classes, limit=config.HELD_OUT_ROWS
    )
    golden = take(inputs, slice(0, config.GOLDEN_BATCH))
    model = load_model(model_path)
    with ws.stage_output("package") as out:
        vdir = out / str(version)
        schema = sch.read_schema(ws.data / sch.SCHEMA_FILE)
        ints = {f.name for f in schema.feature if sch.feature_type(f) == "INT"}
        export_table(model, vdir, kinds, classes, ints, means)
        loaded = tf.saved_model.load(str(vdir))
        sig = signature_of(loaded)
        output_name = "scores" if classes is not None else "prediction"
        served = call_signature(loaded, golden)[output_name]
        expected = np.asarray(model({k: tf.constant(v) for k, v in golden.items()}))
        expected = expected if classes is not None else expected[:, 0]
        diff = float(np.max(np.abs(served - expected)))
        if not diff <= config.EXPORT_TOLERANCE:
            raise VerificationFailed(
                f"the exported SavedModel does not reproduce the Keras model: max abs diff "
                f"{diff:.3g} > {config.EXPORT_TOLERANCE}",
                hint="nothing was stored",
            )
        extra = vdir / "assets.extra"
        extra.mkdir()
        shutil.copy2(model_path, extra / "model.keras")
        shutil.copy2(ws.data / sch.SCHEMA_FILE, extra / sch.SCHEMA_FILE)
        shutil.copy2(ws.data / "stats.json", extra / "stats.json")  # retrain's drift baseline
        np.savez_compressed(
            extra / "test_rows.npz", labels=labels, **{f"input.{k}": v for k, v in inputs.items()}
        )
        write_warmup(extra / "tf_serving_warmup_requests", model_name, golden)
        manifest = _manifest(model_name, version, data_manifest, evaluation, train_info)
        keep = ("accuracy", "auc", "baseline_accuracy", "rmse", "mae", "r2", "baseline_rmse")
        manifest.update(
            kind="table",
            task=data_manifest["task"],
            label=label,
            classes=classes,
            metrics={k: v for k, v in evaluation["metrics"].items() if k in keep},
            signature=sig,
            golden={
                "input_name": None,
                "output_name": output_name,
                "inputs": {k: _plain(v) for k, v in golden.items()},
                # INT inputs: a tf.Example carries them as int64 (Classify/Regress)
                "int_inputs": sorted(ints & set(golden)),
                "outputs": served.tolist(),
                "max_abs_diff_vs_keras": diff,
            },
        )
        result = _store(ws, out, store, vdir, manifest)
    return result
