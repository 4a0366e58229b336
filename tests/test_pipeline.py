"""Stages 2-4 through the CLI on the default data with tiny epochs."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST_TRAIN, ROOT, clean_env, run_cli, train_failing_model

pytestmark = pytest.mark.slow


def test_package_holds_a_servable_version_with_lineage(packaged):
    vdir = packaged / "store" / "digits" / "1000"
    assert (vdir / "saved_model.pb").is_file()
    manifest = json.loads((vdir / "assets.extra" / "tfship.json").read_text())
    assert manifest["model_name"] == "digits" and manifest["version"] == 1000
    data_manifest = json.loads((packaged / "workspace" / "data" / "manifest.json").read_text())
    assert manifest["data_hash"] == data_manifest["data_hash"]
    assert manifest["signature"]["inputs"] == {
        "image": {"dtype": "DT_FLOAT", "shape": [-1, 8, 8, 1]}
    }
    assert manifest["signature"]["outputs"] == {
        "classes": {"dtype": "DT_STRING", "shape": [-1, 10]},
        "scores": {"dtype": "DT_FLOAT", "shape": [-1, 10]},
    }
    assert manifest["classes"] == [str(c) for c in range(10)]
    assert manifest["input_range"] == [0.0, 255.0]
    assert manifest["code_commit"] and manifest["tf_version"].startswith("2.21")
    assert manifest["thresholds"] == {"min_accuracy": 0.9, "min_class_recall": 0.75}
    assert manifest["seeds"] == {"split": 42, "train": 42}
    # Every file but the manifest is listed with its hash; the workspace copy is the same.
    listed = set(manifest["files"])
    on_disk = {p.relative_to(vdir).as_posix() for p in vdir.rglob("*") if p.is_file()}
    assert on_disk - listed == {"assets.extra/tfship.json"}
    assert {
        "assets.extra/model.keras",
        "assets.extra/tf_serving_warmup_requests",
        "assets.extra/test.npz",
        "variables/variables.index",
    } <= listed
    package_info = json.loads((packaged / "workspace" / "package" / "package.json").read_text())
    assert package_info["version"] == 1000


def test_exported_savedmodel_reproduces_the_golden_outputs(packaged):
    import tensorflow as tf

    vdir = packaged / "store" / "digits" / "1000"
    manifest = json.loads((vdir / "assets.extra" / "tfship.json").read_text())
    fn = tf.saved_model.load(str(vdir)).signatures["serving_default"]
    golden = np.asarray(manifest["golden"]["inputs"], np.float32)
    out = fn(image=tf.constant(golden))
    assert manifest["golden"]["output_name"] == "scores"
    assert np.max(np.abs(out["scores"].numpy() - np.asarray(manifest["golden"]["outputs"]))) <= 1e-5
    assert out["classes"].numpy()[0].tolist() == [str(c).encode() for c in range(10)]
    # The golden rows are raw test pixels 0-255, as a client sends them; the graph rescales.
    assert golden.max() > 1.0 and golden.max() <= 255.0
    # The rescaling is inside the graph: the same pixels over 255 are a (mostly) dark image,
    # and the model's answers change.
    dark = fn(image=tf.constant(golden / 255.0))["scores"].numpy()
    assert np.max(np.abs(dark - out["scores"].numpy())) > 0.1
    # classify: the same images as tf.Examples (H*W*C pixels as a float list), marked as TF
    # Serving's Classify method so that its Classify API takes it.
    from tensorflow.core.protobuf import saved_model_pb2

    classify = tf.saved_model.load(str(vdir)).signatures["classify"]
    examples = [
        tf.train.Example(
            features=tf.train.Features(
                feature={"image": tf.train.Feature(float_list=tf.train.FloatList(value=g.ravel()))}
            )
        ).SerializeToString()
        for g in golden
    ]
    by_example = classify(inputs=tf.constant(examples))["scores"].numpy()
    assert np.max(np.abs(by_example - out["scores"].numpy())) <= 1e-5
    saved = saved_model_pb2.SavedModel.FromString((vdir / "saved_model.pb").read_bytes())
    method = saved.meta_graphs[0].signature_def["classify"].method_name
    assert method == "tensorflow/serving/classify"


def test_warmup_file_is_prediction_logs_for_the_serving_signature(packaged):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = packaged / "store" / "digits" / "1000" / "assets.extra" / "tf_serving_warmup_requests"
    logs = [
        prediction_log_pb2.PredictionLog.FromString(r.numpy())
        for r in tf.data.TFRecordDataset(str(path))
    ]
    assert len(logs) == 2
    req = logs[1].predict_log.request
    assert req.model_spec.name == "digits" and req.model_spec.signature_name == "serving_default"
    assert list(req.inputs) == ["image"]
    assert [d.size for d in req.inputs["image"].tensor_shape.dim] == [8, 8, 8, 1]


def test_eval_outputs_for_circleci(packaged):
    ev = packaged / "workspace" / "eval"
    suite = ET.parse(ev / "junit.xml").getroot().find("testsuite")
    assert suite.get("failures") == "0" and int(suite.get("tests")) == 11
    assert "**Gate PASSED**" in (ev / "report.md").read_text()
    assert (ev / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert (packaged / "workspace" / "model" / "history.png").stat().st_size > 1000


def test_repackaging_the_same_version_is_refused_when_content_differs(packaged, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(packaged, work)
    r = run_cli("package", "--version", "1000", cwd=work)  # new export: new bytes, same version
    assert r.code == 8, r.err
    assert "already exists" in r.err_lines[-1] and "never rewritten" in r.err_lines[-1]


def test_a_failed_gate_exits_3_writes_the_report_and_blocks_packaging(packaged, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(packaged / "workspace", work / "workspace")
    train_failing_model(work)
    r = run_cli("test", cwd=work)
    assert r.code == 3
    assert r.err_lines[-1].startswith("tfship test: gate failed: quality gate failed: accuracy:")
    assert "FAILED (missed by" in r.err_lines[-1]
    assert "**Gate FAILED**" in (work / "workspace" / "eval" / "report.md").read_text()
    r = run_cli("package", cwd=work)
    assert r.code == 3 and "did not pass `tfship test`" in r.err_lines[-1]
    assert not (work / "store").exists()


def test_train_with_a_user_model_function(tmp_path):
    env = clean_env(PYTHONPATH=str(ROOT / "tests" / "fixtures"))
    assert run_cli("build", cwd=tmp_path, env=env).code == 0
    r = run_cli(
        "train",
        "--epochs",
        "1",
        "--model-fn",
        "user_models:tiny_dense",
        "--json",
        cwd=tmp_path,
        env=env,
    )
    assert r.code == 0, r.err
    assert json.loads(r.out)["input_name"] == "pixels"
    r = run_cli(
        "train", "--epochs", "1", "--model-fn", "user_models:unnamed_input", cwd=tmp_path, env=env
    )
    assert r.code == 2 and "input is unnamed" in r.err_lines[-1]
    r = run_cli("train", "--model-fn", "user_models:nope", cwd=tmp_path, env=env)
    assert r.code == 2 and "has no function nope" in r.err_lines[-1]


def test_a_user_model_gets_the_rescaling_in_front_and_a_unit_pixel_model_is_not_fine_tuned(
    tmp_path, monkeypatch
):
    """--model-fn models see [0, 1] as before; the model saved (and served) takes 0-255. A
    champion saved before that (no Rescaling) is refused, not silently fed 0-255 pixels."""
    import keras
    from tfship.errors import ConfigError
    from tfship.model import RESCALING, takes_pixels
    from tfship.train import TrainSettings, train

    env = clean_env(PYTHONPATH=str(ROOT / "tests" / "fixtures"))
    assert run_cli("build", cwd=tmp_path, env=env).code == 0
    args = ("train", "--epochs", "1", "--model-fn", "user_models:tiny_dense")
    assert run_cli(*args, cwd=tmp_path, env=env).code == 0
    model = keras.models.load_model(tmp_path / "workspace" / "model" / "model.keras")
    assert takes_pixels(model) and model.inputs[0].name == "pixels"
    assert model.get_layer(RESCALING).scale == pytest.approx(1 / 255)
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "fixtures"))
    import user_models

    old = user_models.tiny_dense((8, 8, 1), 10)  # as tfship saved models before: no Rescaling
    old.save(tmp_path / "old.keras")
    with pytest.raises(ConfigError, match=r"takes pixels scaled to \[0, 1\]"):
        train(tmp_path / "workspace", TrainSettings(epochs=1), init_model=tmp_path / "old.keras")


def test_stages_say_which_stage_to_run_first(tmp_path):
    r = run_cli("train", *FAST_TRAIN, cwd=tmp_path)
    assert r.code == 2
    assert "run `tfship build` first" in r.err_lines[-1]
    assert not Path(tmp_path / "workspace" / "model").exists()


def test_retrain_refuses_a_champion_packaged_for_unit_pixels(packaged, tmp_path):
    """A champion whose manifest has no input_range took pixels in [0, 1]: retrain says so
    before training a challenger that would take 0-255 under the same clients."""
    from tfship.errors import ConfigError
    from tfship.retrain import find_champion
    from tfship.store import open_store

    root = tmp_path / "store"
    shutil.copytree(packaged / "store", root)
    manifest_path = root / "digits" / "1000" / "assets.extra" / "tfship.json"
    old = json.loads(manifest_path.read_text())
    assert old.pop("input_range") == [0.0, 255.0]
    manifest_path.write_text(json.dumps(old))
    store = open_store(root)
    with pytest.raises(ConfigError, match="the champion, digits version 1000, takes pixels"):
        find_champion(lambda: 1000, "url", store, None, "digits", False, tmp_path / "got")
    manifest_path.write_text(json.dumps({**old, "input_range": [0.0, 255.0]}))
    got = find_champion(lambda: 1000, "url", store, None, "digits", False, tmp_path / "got2")
    assert got is not None and got.version == 1000
