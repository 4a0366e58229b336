"""60 s of load on `tfship serve` (8 clients: 6 REST, 2 gRPC) while `tfship deploy` ships a
new version over SSH every 10 s: no failed request, every deploy verified, every version seen
answering, memory flat (old versions are released)."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from helpers import make_version, run_cli, start_serve, start_sshd
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from test_swaps import rss_mb

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

SECONDS = 60
EVERY = 10
CLIENTS_REST = 6
CLIENTS_GRPC = 2


def test_sixty_seconds_of_load_with_a_deploy_every_ten_seconds(packaged, tmp_path):
    sshd = start_sshd(tmp_path / "sshd")
    base = tmp_path / "models"
    (base / "digits").mkdir(parents=True)
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    versions = [2000 + i for i in range(SECONDS // EVERY + 1)]  # the first one before the load
    for v in versions:
        make_version(packaged, pkgs, v)
    # TF Serving's default poll (1 s): the deploys wait for it like they would on a real host.
    # Nothing deployed yet: the server waits with closed ports; the first deploy brings it up.
    served = start_serve(
        tmp_path, "--model_name", "digits", "--model_base_path", f"{base}/digits", wait=False
    )
    env = sshd.env(DEPLOY_SERVER_PATH=str(base), TF_SERVING_URL=served.rest)

    def deploy(v: int):
        return run_cli(
            "deploy",
            "--package",
            str(pkgs / str(v)),
            "--latency-requests",
            "10",
            "--json",
            cwd=pkgs,
            env=env,
        )

    image = np.zeros((1, 8, 8, 1), np.float32)
    body = {"instances": image.tolist()}
    failures: list[str] = []
    counts = [0] * (CLIENTS_REST + CLIENTS_GRPC)
    seen: set[int] = set()
    stop = threading.Event()

    def rest_client(i: int) -> None:
        s = requests.Session()
        while not stop.is_set():
            try:
                r = s.post(f"{served.rest}/v1/models/digits:predict", json=body, timeout=10)
                if r.status_code != 200 or len(r.json()["predictions"][0]["scores"]) != 10:
                    failures.append(f"REST {r.status_code} {r.text[:100]}")
            except requests.RequestException as exc:
                failures.append(f"REST {type(exc).__name__}")
            counts[i] += 1

    def grpc_client(i: int) -> None:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(served.grpc))
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "digits"
        req.inputs["image"].CopyFrom(tf.make_tensor_proto(image))
        while not stop.is_set():
            try:
                resp = stub.Predict(req, timeout=10)
                seen.add(resp.model_spec.version.value)
            except grpc.RpcError as exc:
                failures.append(f"gRPC {exc.code().name} {exc.details()}")
            counts[i] += 1

    r = deploy(versions[0])
    assert r.code == 0, r.err
    threads = [threading.Thread(target=rest_client, args=(i,)) for i in range(CLIENTS_REST)]
    threads += [
        threading.Thread(target=grpc_client, args=(CLIENTS_REST + i,)) for i in range(CLIENTS_GRPC)
    ]
    results, rss = [], {}
    start = time.monotonic()
    for t in threads:
        t.start()
    try:
        for n, v in enumerate(versions[1:], start=1):
            time.sleep(max(0.0, start + n * EVERY - EVERY / 2 - time.monotonic()))
            r = deploy(v)
            results.append((v, r.code, r.err[-400:]))
            time.sleep(0.5)  # the unloaded version's memory is released after its END
            rss[n] = round(rss_mb(served.proc.pid), 1)
        time.sleep(max(0.0, start + SECONDS - time.monotonic()))
        status = requests.get(f"{served.rest}/v1/models/digits", timeout=5).json()
    finally:
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        served.stop()
        sshd.stop()

    print(
        f"{sum(counts)} requests in {elapsed:.0f} s ({min(counts)}..{max(counts)} per client); "
        f"RSS {rss}"
    )
    assert [(v, code) for v, code, _ in results] == [(v, 0) for v in versions[1:]], results
    assert failures == [], failures[:5]
    assert elapsed >= SECONDS and min(counts) > 100, counts
    assert seen == set(versions), sorted(seen)  # each version answered while it served
    on_disk = sorted(int(p.name) for p in (base / "digits").iterdir() if p.name.isdigit())
    assert on_disk == versions[-3:]  # --keep 3: the old ones were removed as it went
    states = {int(s["version"]): s["state"] for s in status["model_version_status"]}
    assert states.pop(versions[-1]) == "AVAILABLE" and set(states.values()) <= {"END"}, status
    # Each version kept loaded after its END would cost ~3.4 MB here; over 5 deploys that is
    # within this test's RSS noise (+-10 MB with 8 clients), so this bound only catches gross
    # growth. test_swaps measures the release of old versions over 20 swaps.
    growth = rss[len(versions) - 1] - rss[1]
    assert growth < 40, f"RSS grew {growth:.0f} MB over {len(versions) - 2} deploys: {rss}"
