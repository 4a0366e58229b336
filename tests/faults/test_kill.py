"""`tfship deploy` and `tfship retrain` killed with SIGKILL at each of their steps: nothing
half-served, nothing half-written, the next run recovers.

Every kill lands at a step the test waits for, not after a sleep: a log line the command
printed, an upload folder appearing on the host, a request to TF Serving held by a proxy, a
decision file appearing. So each kill point is reached on every run, fast machine or slow.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from fault_proxy import ForwardingProxy
from helpers import FAST_TRAIN, clean_env, make_version, run_cli, serve_model, start_sshd
from tfship.retrain import DECISION_FILE
from tfship.store import MANIFEST, verify_tree
from tfship.workspace import tree_hashes

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]

STEP_TIMEOUT = 120.0  # seconds a command may take to reach a kill point on a loaded machine


def _versions_are_whole(model_dir: Path) -> list[int]:
    """Every numeric version folder holds exactly its manifest's files (else raises)."""
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    for v in versions:
        manifest = json.loads((model_dir / str(v) / MANIFEST).read_text())
        verify_tree(tree_hashes(model_dir / str(v)), manifest, str(v))
    return versions


class HoldingProxy(ForwardingProxy):
    """An HTTP forwarder in front of `tfship serve` that can hold one chosen request.

    ``hold(pattern, nth)``: the ``nth`` request whose ``METHOD path`` matches ``pattern``
    waits (``held`` is set) until ``release()``; every other request is forwarded as is.
    """

    def __init__(self, upstream: str) -> None:
        self.held = threading.Event()
        self._release = threading.Event()
        self._rule: tuple[re.Pattern, int] | None = None
        self._seen = 0
        self._lock = threading.Lock()
        super().__init__(upstream)

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        self._maybe_hold(f"{method} {path}")
        return self.forward(method, path, body)

    def hold(self, pattern: str, nth: int = 1) -> None:
        with self._lock:
            self._rule, self._seen = (re.compile(pattern), nth), 0
            self.held.clear()
            self._release.clear()

    def release(self) -> None:
        with self._lock:
            self._rule = None
        self._release.set()

    def _maybe_hold(self, request: str) -> None:
        with self._lock:
            if self._rule is None or not self._rule[0].search(request):
                return
            self._seen += 1
            if self._seen != self._rule[1]:
                return
        self.held.set()
        self._release.wait(STEP_TIMEOUT)

    def close(self) -> None:
        self.release()
        super().close()


class Watched:
    """A tfship command in the background whose stderr lines are collected as they come."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tfship", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def printed(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def kill_when(self, reached: Callable[[], bool], what: str) -> bool:
        """SIGKILL as soon as ``reached()``; True if it was killed, False if it had ended."""
        deadline = time.monotonic() + STEP_TIMEOUT
        while not reached():
            if self.proc.poll() is not None:
                self._reader.join(5)
                if self.proc.returncode != 0:
                    pytest.fail(f"ended ({self.proc.returncode}) before {what}: {self.lines}")
                return False
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"did not reach {what} in {STEP_TIMEOUT:g} s: {self.lines}")
            time.sleep(0.01)  # polling a condition, not waiting for luck
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._reader.join(5)
        return True


def test_sigkill_at_each_step_of_a_deploy(packaged, tmp_path):
    sshd = start_sshd(tmp_path / "sshd")
    base = tmp_path / "models"
    model_dir = base / "digits"
    model_dir.mkdir(parents=True)
    served = serve_model(tmp_path, model_dir)
    # TF Serving opens its ports once a first version loads: the proxy goes in front after
    # the first deploy, and the deploys then reach the server through it.
    proxy = HoldingProxy(served.rest)
    env = sshd.env(DEPLOY_SERVER_PATH=str(base), TF_SERVING_URL=served.rest)
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    fast = ["--latency-requests", "3", "--wait-seconds", "20"]

    def uploading(w: Watched, v: int):
        return lambda: w.printed("] uploading")

    def upload_in_progress(w: Watched, v: int):
        # the host's upload folder holds some of the version's files, not yet all
        return lambda: any(
            p.name.startswith(".incoming-") and any(f.is_file() for f in p.rglob("*"))
            for p in model_dir.iterdir()
        )

    def installed(w: Watched, v: int):
        return lambda: w.printed("] installed")

    def held(pattern: str, nth: int):
        def point(w: Watched, v: int):
            proxy.hold(pattern.format(v=v), nth)
            return proxy.held.is_set

        return point

    def verified(w: Watched, v: int):
        return lambda: w.printed("] deployed and verified")

    kill_points = {
        "at the upload's start": uploading,
        "during the upload": upload_in_progress,
        "once the version is in place": installed,
        "at the first check of the new version": held(r"^POST .*/versions/{v}:predict", 1),
        "during the latency checks": held(r"^POST .*/versions/{v}:predict", 3),
        "after the verification": verified,
    }
    try:
        first = make_version(packaged, pkgs, 2000)
        r = run_cli("deploy", "--package", str(first), *fast, cwd=tmp_path, env=env)
        assert r.code == 0, r.err
        env["TF_SERVING_URL"] = proxy.url
        killed = []
        for i, (what, point) in enumerate(kill_points.items()):
            version = 3000 + i
            pkg = make_version(packaged, pkgs, version)
            w = Watched(["deploy", "--package", str(pkg), *fast], tmp_path, env)
            if w.kill_when(point(w, version), what):
                killed.append(what)
            proxy.release()
            # Whatever step it died at: no half version, and a whole one answers.
            versions = _versions_are_whole(model_dir)
            doc = requests.get(f"{served.rest}/v1/models/digits", timeout=5).json()
            answering = max(
                int(s["version"]) for s in doc["model_version_status"] if s["state"] == "AVAILABLE"
            )
            assert answering in versions, what
            # The next run recovers: a dead process's lock is broken, leftovers cleaned.
            r = run_cli("deploy", "--package", str(pkg), *fast, cwd=tmp_path, env=env)
            assert r.code == 0, (what, r.err)
            assert not [
                p.name
                for p in model_dir.iterdir()
                if p.name.startswith((".incoming-", ".tfship-lock"))
            ], what
        # Every step but the last is reached while the command still runs; the last may race
        # the command's own exit, and then nothing was killed there.
        assert set(kill_points) - set(killed) <= {"after the verification"}, killed
    finally:
        proxy.close()
        served.stop()
        sshd.stop()


def test_sigkill_at_each_step_of_a_retrain(packaged, tmp_path):
    """Killed at any step, a retrain leaves no decision without its model, nothing half-written."""
    root = tmp_path / "site"
    shutil.copytree(packaged, root)
    served = serve_model(tmp_path, root / "store" / "digits")
    env = clean_env(TF_SERVING_URL=served.rest)
    args = ["retrain", "--data", "snaps/new.npz", *FAST_TRAIN]
    ws = root / "workspace"
    decision = ws / "retrain" / DECISION_FILE
    kill_points = {
        "once the champion is found": lambda w: lambda: w.printed("] champion"),
        "when training starts": lambda w: lambda: w.printed("] training"),
        "after the first epoch": lambda w: lambda: w.printed("] epoch 1 "),
        "when the challenger is judged": lambda w: lambda: w.printed("] challenger "),
        "once the decision is written": lambda w: decision.exists,
    }
    try:
        assert run_cli("snapshot", "snaps/new.npz", "--seed", "3", cwd=root, env=env).code == 0
        decisions = []
        for what, point in kill_points.items():
            w = Watched(args, root, env)
            w.kill_when(point(w), what)
            if decision.exists():  # a decision is only ever there with what it speaks of
                d = json.loads(decision.read_text())
                decisions.append(d["decision"])
                assert (ws / "model").exists() == (d["decision"] != "keep-champion"), (what, d)
            stored = (root / "store" / "digits").iterdir()
            assert sorted(p.name for p in stored if p.name != ".history") == ["1000"], what
            assert _versions_are_whole(root / "store" / "digits") == [1000], what
        assert decisions, "no kill landed after a decision was written"
        r = run_cli(*args, "--json", cwd=root, env=env)
        assert r.code == 0, r.err
        assert json.loads(r.out)["decision"] == "deploy-challenger"
        assert (ws / "model").exists()
        assert not [p.name for p in ws.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    finally:
        served.stop()
