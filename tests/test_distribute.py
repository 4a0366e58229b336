"""tf.distribute: the strategy TF_CONFIG asks for, who writes, and two local workers that
train one model together, on a table and on images (Keras 3 under
MultiWorkerMirroredStrategy, for real)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys

import pytest
from helpers import clean_env, run_cli
from tfship.distribute import (
    DEFAULT,
    MIRRORED,
    MULTI_WORKER,
    Cluster,
    choose,
    parse_tf_config,
)
from tfship.errors import ConfigError
from tfship.workspace import sha256_file


def tf_config(workers: int, task: str = "worker", index: int = 0, chief: int = 0) -> str:
    cluster = {"worker": [f"127.0.0.1:{2000 + i}" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["127.0.0.1:1999"]
    return json.dumps({"cluster": cluster, "task": {"type": task, "index": index}})


@pytest.mark.parametrize(
    ("text", "gpus", "expected"),
    [
        (None, 0, DEFAULT),
        ("", 2, MIRRORED),
        (tf_config(1), 0, DEFAULT),  # a cluster of one worker is one process
        (tf_config(1), 1, MIRRORED),
        (tf_config(2), 0, MULTI_WORKER),
        (tf_config(2, index=1), 4, MULTI_WORKER),  # GPUs or not, several workers win
        (tf_config(1, task="chief", chief=1), 0, MULTI_WORKER),  # chief + one worker
    ],
)
def test_the_strategy_follows_tf_config_then_the_gpus(text, gpus, expected):
    assert choose(parse_tf_config(text), gpus) == expected


@pytest.mark.parametrize(
    ("text", "chief"),
    [
        (None, True),
        (tf_config(2, index=0), True),  # no chief task: worker 0 is the chief
        (tf_config(2, index=1), False),
        (tf_config(2, index=0, chief=1), False),  # a chief task exists: it writes
        (tf_config(2, task="chief", chief=1), True),
    ],
)
def test_only_the_chief_writes(text, chief):
    assert parse_tf_config(text).chief is chief


def test_a_cluster_records_its_size_and_task():
    assert parse_tf_config(tf_config(3, index=2)) == Cluster(3, "worker", 2, False)
    assert parse_tf_config(tf_config(3, index=2)).task == "worker:2"
    assert Cluster().task is None and Cluster().workers == 1


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "TF_CONFIG is not a cluster description"),
        ('["a list"]', "TF_CONFIG is not a cluster description"),
        (
            json.dumps({"cluster": {"worker": ["a:1", "b:2"], "ps": ["c:3"]}}),
            "TF_CONFIG has ps tasks",
        ),
        (
            json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "evaluator"}}),
            "this task is 'evaluator'",
        ),
    ],
)
def test_a_tf_config_tfship_cannot_train_with_is_a_config_error(text, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        parse_tf_config(text)


def test_without_tf_config_or_gpus_training_uses_tfs_default_strategy():
    from tfship.distribute import describe, strategy

    s = strategy(Cluster())
    assert describe(s, Cluster()) == {
        "strategy": DEFAULT,
        "replicas": 1,
        "workers": 1,
        "task": None,
    }


def free_ports(n: int) -> list[int]:
    """``n`` loopback ports free now (held open together, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


EPOCH = re.compile(r"\[train\] (epoch \d+ .*) s=[\d.]+$")


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("data", ["wine", "digits"])  # a table's CSV; an image set's pixels
def test_two_local_workers_train_one_model_and_only_the_chief_writes_it(tmp_path, data):
    base = tmp_path / "base"
    base.mkdir()
    assert run_cli("build", "--data", data, cwd=base).code == 0
    before = sorted(p.relative_to(base).as_posix() for p in base.rglob("*"))
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs, dirs = [], []
    try:
        for index in range(2):
            work = tmp_path / f"worker{index}"
            shutil.copytree(base, work)
            config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tfship", "train", "--epochs", "2", "--json"],
                    cwd=work,
                    env=clean_env(TF_CONFIG=json.dumps(config)),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
            dirs.append(work)
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]

    chief, other = dirs
    info = json.loads((chief / "workspace" / "model" / "train.json").read_text())
    run = {"strategy": MULTI_WORKER, "replicas": 2, "workers": 2}
    assert info["distribute"] == {**run, "task": "worker:0"}
    assert info["epochs_run"] == 2
    model = chief / "workspace" / "model" / "model.keras"
    assert info["model_sha256"] == sha256_file(model)
    assert json.loads(outs[0][0]) == info
    # The other worker trained (its result says so) and wrote nothing at all.
    assert json.loads(outs[1][0])["distribute"] == {**run, "task": "worker:1"}
    assert sorted(p.relative_to(other).as_posix() for p in other.rglob("*")) == before
    # One model: every epoch's (all-reduced) metrics are the same on both workers.
    epochs = [[m[1] for line in err.splitlines() if (m := EPOCH.search(line))] for _, err in outs]
    assert len(epochs[0]) == 2 and epochs[0] == epochs[1], epochs
    for _, err in outs:
        training = next(line for line in err.splitlines() if "[train] training" in line)
        assert "strategy=MultiWorkerMirroredStrategy replicas=2" in training
        noise = [line for line in err.splitlines() if line.strip() and "[train] " not in line]
        assert noise == [], noise  # TF's own logs stay quiet with two workers too
