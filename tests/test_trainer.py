"""``--trainer package.module``: a user's run_fn trains a table's model end to end, and every
way a trainer can be wrong is one line naming the module and the fix, with nothing written."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import ROOT, clean_env, run_cli
from tfship.errors import ConfigError
from tfship.train import TrainSettings, train

WIDE_DEEP = "examples.trainers.wide_deep"


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_wide_and_deep_example_passes_the_gates_and_its_trainer_is_in_the_lineage(tmp_path):
    env = clean_env(PYTHONPATH=str(ROOT))
    assert run_cli("build", "--data", "reviews", cwd=tmp_path).code == 0  # text, category, number
    # 30 epochs: test accuracy 0.977-0.989 over train seeds 1-5 (gate 0.90), AUC >= 0.999.
    r = run_cli("train", "--epochs", "30", "--trainer", WIDE_DEEP, "--json", cwd=tmp_path, env=env)
    assert r.code == 0, r.err
    info = json.loads(r.out)
    assert info["trainer"] == info["settings"]["trainer"] == WIDE_DEEP
    assert info["distribute"] == {"strategy": "default", "replicas": 1, "workers": 1, "task": None}
    assert f"trainer={WIDE_DEEP} strategy=default replicas=1" in r.err
    r = run_cli("test", "--json", cwd=tmp_path)  # loads the model without the trainer module
    assert r.code == 0, r.err
    metrics = json.loads(r.out)["metrics"]
    assert metrics["accuracy"] >= 0.95 and metrics["auc"] > 0.99
    r = run_cli("package", "--version", "1", "--json", cwd=tmp_path)  # the SavedModel exports
    assert r.code == 0, r.err
    vdir = Path(json.loads(r.out)["path"])
    lineage = json.loads((vdir / "assets.extra" / "tfship.json").read_text())
    assert lineage["train"]["settings"]["trainer"] == WIDE_DEEP


def test_the_documented_example_is_the_example_file():
    doc = (ROOT / "docs" / "trainer.md").read_text()
    source = (ROOT / "examples" / "trainers" / "wide_deep.py").read_text()
    assert f"```python\n{source}```" in doc


# --- trainers that are wrong, each run through the library (TF loads once per session) ---


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> Path:
    """A folder whose workspace holds the built reviews table."""
    root = tmp_path_factory.mktemp("reviews")
    assert run_cli("build", "--data", "reviews", cwd=root).code == 0
    return root


@pytest.fixture
def fresh(reviews, tmp_path) -> Path:
    """A workspace of its own holding the built reviews table (for a trainer that succeeds)."""
    shutil.copytree(reviews / "workspace", tmp_path / "ws" / "workspace")
    return tmp_path / "ws"


@pytest.fixture
def trainer_module(tmp_path, monkeypatch):
    """``trainer_module(source) -> name``: a module of that source, importable, uniquely named."""
    count = iter(range(1000))
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str) -> str:
        name = f"trainer_{tmp_path.name}_{next(count)}".replace("-", "_")
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    return write


HEAD = """
import keras

def inputs(ctx, names=None):
    return {
        n: keras.Input(shape=(), name=n, dtype="float32" if k == "numeric" else "string")
        for n, k in ctx.inputs.items()
        if names is None or n in names
    }

def model_on(inp, units=2, activation="softmax", loss="sparse_categorical_crossentropy"):
    x = keras.layers.Reshape((1,))(inp["stars"])
    model = keras.Model(inp, keras.layers.Dense(units, activation=activation)(x))
    if loss:
        model.compile("adam", loss)
    return model

"""


@pytest.mark.parametrize(
    ("body", "needle", "fix"),
    [
        ("", "the module has no function run_fn", "define run_fn(ctx) -> keras.Model"),
        (
            "def run_fn(ctx):\n    return 1 / 0\n",
            "run_fn raised ZeroDivisionError: division by zero",
            "fix run_fn",
        ),
        ("def run_fn(ctx):\n    pass\n", "run_fn returned NoneType", "return the model"),
        (
            "def run_fn(ctx):\n    return model_on(inputs(ctx), loss=None)\n",
            "run_fn returned a model that is not compiled",
            "call model.compile(",
        ),
        (
            "def run_fn(ctx):\n"
            "    extra = keras.Input(shape=(), name='rating')\n"
            "    return model_on({**inputs(ctx), 'rating': extra})\n",
            "inputs ['rating'] are not features of the data",
            "one keras.Input(shape=(), name=NAME) for each NAME in ctx.inputs",
        ),
        (
            "def run_fn(ctx):\n    return model_on(inputs(ctx, names={'stars'}))\n",
            "no input for ['channel', 'review']",
            "for each NAME in ctx.inputs (review, channel, stars)",
        ),
        (
            "def run_fn(ctx):\n"
            "    as_number = keras.Input(shape=(), name='channel')\n"
            "    return model_on({**inputs(ctx), 'channel': as_number})\n",
            "input 'channel' is float32 but the feature is categorical",
            "dtype='string'",
        ),
        (
            "def run_fn(ctx):\n    return model_on(inputs(ctx), units=1, activation='sigmoid')\n",
            "a classifier over 2 classes outputs",
            "Dense(len(ctx.classes), activation='softmax')",
        ),
        (
            "def run_fn(ctx):\n    return model_on(inputs(ctx), activation=None)\n",
            "the model's outputs are not probabilities",
            "end in a softmax",
        ),
        (
            "def run_fn(ctx):\n    return model_on(inputs(ctx), loss='categorical_crossentropy')\n",
            "fitting the model raised ValueError",
            "compile the model to match",
        ),
    ],
)
def test_a_wrong_trainer_is_a_config_error_and_writes_nothing(
    reviews, trainer_module, body, needle, fix
):
    name = trainer_module(HEAD + body)
    with pytest.raises(ConfigError) as err:
        train(reviews / "workspace", TrainSettings(epochs=1, trainer=name))
    assert str(err.value).startswith(f"--trainer {name}: ")
    assert needle in err.value.message, err.value.message
    assert fix in (err.value.hint or ""), err.value.hint
    assert "\n" not in str(err.value)
    assert not (reviews / "workspace" / "model").exists()


@pytest.mark.parametrize(
    ("module", "needle"),
    [
        ("no_such_trainer_module", "cannot import no_such_trainer_module (No module named"),
        ("trainers/wide_deep.py", "expected a module name like trainers.wide_deep"),
        ("pkg.mod:run_fn", "expected a module name"),
    ],
)
def test_a_trainer_that_cannot_be_imported_is_named(reviews, module, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        train(reviews / "workspace", TrainSettings(epochs=1, trainer=module))
    assert not (reviews / "workspace" / "model").exists()


def test_a_module_that_fails_while_importing_is_named(reviews, trainer_module):
    name = trainer_module("def run_fn(ctx)\n    return None\n")
    with pytest.raises(ConfigError, match=f"--trainer {name}: importing it raised SyntaxError"):
        train(reviews / "workspace", TrainSettings(epochs=1, trainer=name))


def test_the_cli_says_it_in_one_line_with_exit_2_and_no_traceback(reviews, tmp_path):
    (tmp_path / "broken_trainer.py").write_text("def run_fn(ctx):\n    raise KeyError('x')\n")
    env = clean_env(PYTHONPATH=str(tmp_path))
    r = run_cli("train", "--trainer", "broken_trainer", cwd=reviews, env=env)
    assert r.code == 2, r.err
    assert r.err_lines[-1] == (
        "tfship train: bad setting: --trainer broken_trainer: run_fn raised KeyError: 'x' "
        "(fix run_fn (tfship --debug train shows the traceback))"
    )
    assert "Traceback" not in r.err
    assert [line for line in r.err_lines if "[train]" not in line] == [r.err_lines[-1]]
    assert not (reviews / "workspace" / "model").exists()


def test_images_take_model_fn_not_a_trainer(cli, tmp_path):
    assert cli("build").code == 0
    with pytest.raises(ConfigError, match="--trainer is for tables; images take --model-fn"):
        train(tmp_path / "workspace", TrainSettings(epochs=1, trainer=WIDE_DEEP))


# --- what run_fn may do ---


def test_run_fn_may_extend_the_default_model_and_fit_it_with_ctx_fit(fresh, trainer_module):
    name = trainer_module(
        """
        import keras

        def run_fn(ctx):
            base = ctx.default_model()  # compiled, in ctx.strategy.scope()
            assert set(ctx.inputs) == {t.name for t in base.inputs}
            history = ctx.fit(base)
            assert history is ctx.history and len(history["loss"]) >= 1
            return base
        """
    )
    result = train(fresh / "workspace", TrainSettings(epochs=2, trainer=name))
    assert result.info["epochs_run"] == 2  # ctx.fit's history; the model was not fitted again
    assert result.info["trainer"] == name
    history = json.loads((fresh / "workspace" / "model" / "history.json").read_text())
    assert len(history["loss"]) == 2


def test_a_regression_trainer_may_output_one_value_per_row(tmp_path, trainer_module):
    assert run_cli("build", "--data", "diabetes", cwd=tmp_path).code == 0
    name = trainer_module(
        """
        import keras

        def run_fn(ctx):
            with ctx.strategy.scope():
                inp = {n: keras.Input(shape=(), name=n) for n in ctx.inputs}
                cols = [keras.layers.Reshape((1,))(v) for v in inp.values()]
                x = keras.layers.Concatenate()(cols)
                out = keras.layers.Reshape(())(keras.layers.Dense(1)(x))  # shape (N,)
                model = keras.Model(inp, out)
                model.compile(keras.optimizers.Adam(0.05), "mse")
            return model
        """
    )
    train(tmp_path / "workspace", TrainSettings(epochs=2, trainer=name))
    import keras
    import numpy as np

    model = keras.models.load_model(tmp_path / "workspace" / "model" / "model.keras")
    row = {t.name: np.array([1.0], "float32") for t in model.inputs}
    assert np.asarray(model(row)).shape == (1, 1)  # what export, test and retrain read
    assert model.optimizer is not None  # still compiled: retrain fine-tunes it


LOAD = """
import sys
import keras
from tfship.table_model import load_model
try:
    keras.models.load_model(sys.argv[1])
    print("keras loaded it without the module")
except Exception:
    pass
model = load_model(sys.argv[1])
print(type(model.layers[-1]).__name__)
"""


def test_a_custom_layer_loads_in_a_fresh_process_through_the_recorded_trainer(
    fresh, tmp_path, trainer_module
):
    name = trainer_module(
        """
        import keras

        @keras.saving.register_keras_serializable(package="tfship_test")
        class Halve(keras.layers.Layer):
            def call(self, x):
                return x * 0.5 + 0.25

        def run_fn(ctx):
            with ctx.strategy.scope():
                inp = {
                    n: keras.Input(shape=(), name=n, dtype="string" if k != "numeric" else None)
                    for n, k in ctx.inputs.items()
                }
                x = keras.layers.Reshape((1,))(inp["stars"])
                p = keras.layers.Dense(1, activation="sigmoid")(x)
                out = keras.layers.Concatenate()([1 - Halve()(p), Halve()(p)])
                model = keras.Model(inp, out)
                model.compile("adam", "sparse_categorical_crossentropy")
            return model
        """
    )
    train(fresh / "workspace", TrainSettings(epochs=1, trainer=name))
    model_path = fresh / "workspace" / "model" / "model.keras"
    p = subprocess.run(
        [sys.executable, "-c", LOAD, str(model_path)],
        env=clean_env(PYTHONPATH=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["Concatenate"]  # keras alone could not; the trainer's import did


def test_fine_tuning_a_trainers_model_names_that_trainer_in_the_lineage(
    fresh, tmp_path, trainer_module
):
    name = trainer_module("def run_fn(ctx):\n    return ctx.default_model()\n")
    train(fresh / "workspace", TrainSettings(epochs=1, trainer=name))
    champion = tmp_path / "champion"  # as retrain holds it: the model and its lineage
    shutil.move(fresh / "workspace" / "model", champion)
    result = train(
        fresh / "workspace", TrainSettings(epochs=1), init_model=champion / "model.keras"
    )
    assert result.info["settings"]["trainer"] is None
    assert result.info["trainer"] == name  # whose architecture was fine-tuned
    assert result.info["init_model"] == str(champion / "model.keras")
