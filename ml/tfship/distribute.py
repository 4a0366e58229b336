"""tf.distribute for training (tables and images): which strategy, which process writes, and
Keras 3's gaps.

:func:`strategy` chooses, in this order: ``TF_CONFIG`` describing more than one worker ->
``MultiWorkerMirroredStrategy`` (every worker runs the same ``tfship train`` with its own
``TF_CONFIG`` task); GPUs present -> ``MirroredStrategy`` over them; else TensorFlow's default
strategy (one process, no distribution: training is byte-reproducible).

Decisions, stated once here:

- ``--batch-size`` is the **global** batch: a step consumes ``batch_size`` rows split across
  the replicas (TF's convention for ``experimental_distribute_dataset``). The same settings
  take the same number of steps with the same learning rate on one process or eight; more
  workers make a step cheaper, they do not change the optimisation. Raise ``--batch-size``
  (and ``--learning-rate``) yourself to use a bigger cluster for throughput.
- A single CSV (or an image split's ``.npz``) cannot be sharded by file, so each worker reads
  it whole and keeps its share of the elements (``AutoShardPolicy.DATA``); the seeded shuffle
  is the same on every worker.
- Only the chief (task type ``chief``, or ``worker`` 0 when the cluster has no chief) writes
  the workspace. The others save their copy to a temporary folder and delete it, as TF's
  multi-worker Keras tutorial does, and exit 0.

``TF_CONFIG`` is TensorFlow's own variable, read by TF's cluster resolver; it is parsed here
only to decide (:func:`parse_tf_config`, :func:`choose`), never written. TensorFlow is
imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tfship.errors import ConfigError

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

TF_CONFIG = "TF_CONFIG"
MULTI_WORKER, MIRRORED, DEFAULT = "MultiWorkerMirroredStrategy", "MirroredStrategy", "default"


@dataclass(frozen=True)
class Cluster:
    """This process's place in ``TF_CONFIG``'s cluster; one process is a cluster of one."""

    workers: int = 1
    task_type: str | None = None
    task_index: int = 0
    has_chief: bool = False

    @property
    def chief(self) -> bool:
        """The process that writes: ``chief``, else worker 0 of a cluster without one."""
        if self.task_type is None or self.task_type == "chief":
            return True
        return self.task_type == "worker" and self.task_index == 0 and not self.has_chief

    @property
    def task(self) -> str | None:
        return f"{self.task_type}:{self.task_index}" if self.task_type else None


def parse_tf_config(text: str | None) -> Cluster:
    """The cluster ``TF_CONFIG`` describes (``{"cluster": {"worker": [...]}, "task": {...}}``).

    Only chief and worker tasks train here: parameter servers and evaluators are refused.
    """
    if not text or not text.strip():
        return Cluster()
    try:
        config = json.loads(text)
        cluster = config.get("cluster") or {}
        task = config.get("task") or {}
        chiefs, workers = list(cluster.get("chief") or []), list(cluster.get("worker") or [])
        extra = sorted(set(cluster) - {"chief", "worker"})
        task_type, task_index = task.get("type"), int(task.get("index", 0))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"TF_CONFIG is not a cluster description ({exc})",
            hint='expected {"cluster": {"worker": ["host:port", ...]}, '
            '"task": {"type": "worker", "index": 0}}',
        ) from exc
    if extra:
        raise ConfigError(
            f"TF_CONFIG has {', '.join(extra)} tasks: tfship trains with chief and worker "
            "tasks only (MultiWorkerMirroredStrategy)",
            hint="drop them from TF_CONFIG's cluster",
        )
    size = len(chiefs) + len(workers)
    if size > 1 and task_type not in ("chief", "worker"):
        raise ConfigError(
            f"TF_CONFIG describes {size} workers but this task is {task_type!r}",
            hint='set "task": {"type": "worker", "index": N} (or "chief")',
        )
    return Cluster(size, task_type if size > 1 else None, task_index, bool(chiefs))


def current_cluster() -> Cluster:
    """The cluster of this process, from ``TF_CONFIG``."""
    return parse_tf_config(os.environ.get(TF_CONFIG))


def choose(cluster: Cluster, gpus: int) -> str:
    """Which strategy: multi-worker if the cluster has several workers, else mirrored over
    the GPUs if there are any, else TF's default strategy."""
    if cluster.workers > 1:
        return MULTI_WORKER
    return MIRRORED if gpus > 0 else DEFAULT


def strategy(cluster: Cluster | None = None) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy for this process (see :func:`choose`).

    Call it before any other TensorFlow op: ``MultiWorkerMirroredStrategy`` configures the
    collective ops, which TF only allows at start-up.
    """
    import tensorflow as tf  # heavy: only when training

    cluster = cluster or current_cluster()
    if cluster.workers > 1:  # GPUs are not even listed: that would initialise TF first
        return tf.distribute.MultiWorkerMirroredStrategy()
    if choose(cluster, len(tf.config.list_physical_devices("GPU"))) == MIRRORED:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def name_of(s: tf.distribute.Strategy) -> str:
    """The strategy's public name (``tf.distribute.<name>``), or ``default`` for TF's default
    (no-op) strategy."""
    import tensorflow as tf

    # MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy: ask isinstance.
    for name in (MULTI_WORKER, MIRRORED):
        if isinstance(s, getattr(tf.distribute, name)):
            return name
    # Not `s is tf.distribute.get_strategy()`: inside another strategy's scope that is it.
    name = type(s).__name__
    return DEFAULT if name == "_DefaultDistributionStrategy" else name


def describe(s: tf.distribute.Strategy, cluster: Cluster) -> dict:
    """What the model manifest and the log record of the run's distribution."""
    return {
        "strategy": name_of(s),
        "replicas": int(s.num_replicas_in_sync),
        "workers": cluster.workers,
        "task": cluster.task,
    }


def shard(ds: tf.data.Dataset, cluster: Cluster) -> tf.data.Dataset:
    """A dataset the strategy may split between workers: by element (``DATA``), since one
    CSV file (or one ``.npz`` read through a generator) cannot be split by file. Unchanged on
    a single process."""
    if cluster.workers <= 1:
        return ds
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


@contextlib.contextmanager
def keras_fit_support(
    model: keras.Model, s: tf.distribute.Strategy, ds: tf.data.Dataset
) -> Iterator[None]:
    """Let ``model.fit`` / ``model.evaluate`` run under a non-default strategy in Keras 3.

    Keras 3.15 (TF 2.21) fails under ``MultiWorkerMirroredStrategy`` in two places, both
    read in ``keras/src/backend/tensorflow/trainer.py`` and open upstream
    (keras-team/keras#20585, tensorflow/tensorflow#72388):

    1. ``_maybe_symbolic_build`` takes the first distributed batch and calls
       ``strategy.reduce("MEAN", batch, axis=None)`` on the whole (features, label) structure;
       ``Strategy.reduce`` does not take nests (its own "TODO: support value being a nest"),
       and a mean of string features has no meaning anyway: "Attempt to convert a value
       ({'age': PerReplica...}) with an unsupported type (<class 'dict'>) to a Tensor".
       All it needs is shapes and dtypes, so the model is built here from the dataset's
       ``element_spec`` (inside the strategy's scope) and that step is skipped.
    2. ``reduce_per_replica(..., "auto")`` reduces each step's logs with
       ``strategy.reduce("MEAN", v, axis=0)`` in multi-worker mode; the logs are scalars:
       "Invalid reduction dimension 0 for input with 0 dimensions". The steps' scalar logs
       are given one axis here, so that mean is over the replicas' (equal) values.

    Both are instance attributes removed on exit: the saved model is Keras's own. Nothing
    changes under the default strategy.
    """
    import tensorflow as tf

    if name_of(s) == DEFAULT:
        yield
        return
    with s.scope():
        model._symbolic_build(data_batch=ds.element_spec)
    patches = {"_maybe_symbolic_build": lambda iterator=None, data_batch=None: None}
    if isinstance(s, tf.distribute.MultiWorkerMirroredStrategy):
        cls = type(model)

        def with_axis(step):  # a bound method of the model's class: the user's train_step too
            def run(data):
                logs = step(model, data)
                return {
                    k: tf.expand_dims(v, 0) if v.shape.rank == 0 else v for k, v in logs.items()
                }

            return run

        patches["train_step"] = with_axis(cls.train_step)
        patches["test_step"] = with_axis(cls.test_step)
    for name, fn in patches.items():
        object.__setattr__(model, name, fn)  # past Keras's attribute tracking
    model.train_function = model.test_function = None  # traced again with the patches
    try:
        yield
    finally:
        for name in patches:
            vars(model).pop(name, None)
        model.train_function = model.test_function = None
