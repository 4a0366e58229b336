"""Benchmark: `tfship serve` throughput and latency, REST and gRPC, 1 and 8 clients.

Beside it, the floor: the in-process `tf.saved_model.load(...).signatures[...]` call on the
same single-row inputs. Goal: REST p50 within 3 ms of the in-process call with one client,
and throughput that grows with concurrency on 2 cores. Run by hand:
`python bench/serving.py [--requests 400]`; writes bench/results/serving.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import demo_package, save  # noqa: E402


def percentiles(ms: list[float]) -> dict:
    return {
        "p50": round(float(np.percentile(ms, 50)), 3),
        "p99": round(float(np.percentile(ms, 99)), 3),
    }


def drive(call, clients: int, per_client: int) -> dict:
    """Run ``call()`` per_client times in each of ``clients`` threads; latency and rate."""
    lat: list[float] = []
    lock = threading.Lock()

    def worker():
        local = []
        for _ in range(per_client):
            t = time.perf_counter()
            call()
            local.append((time.perf_counter() - t) * 1000)
        with lock:
            lat.extend(local)

    for _ in range(min(20, per_client)):  # warm connections and caches
        call()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {
        "clients": clients,
        "requests": len(lat),
        "rps": round(len(lat) / elapsed, 1),
        **percentiles(lat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400, help="requests per client")
    args = parser.parse_args()
    from tfship.log import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf
    from helpers import start_serve
    from tfship.serving import ServingClient

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = demo_package(work).parent
        version = max(int(p.name) for p in base.iterdir() if p.name.isdigit())
        manifest = json.loads((base / str(version) / "assets.extra" / "tfship.json").read_text())
        row = np.asarray(manifest["golden"]["inputs"][:1], np.float32)
        fn = tf.saved_model.load(str(base / str(version))).signatures["serving_default"]
        tensor = tf.constant(row)
        results = {"in_process": drive(lambda: fn(image=tensor), 1, args.requests)}
        served = start_serve(work, "--model_name", "digits", "--model_base_path", str(base))
        try:
            for transport, url in (("rest", served.rest), ("grpc", served.grpc)):
                for clients in (1, 8):
                    local = threading.local()

                    def call(url=url, transport=transport, local=local):
                        if not hasattr(local, "c"):
                            local.c = ServingClient(url, "digits", transport=transport)
                        local.c.predict({"image": row})

                    per = args.requests if clients == 1 else max(args.requests // 4, 50)
                    results[f"{transport}_{clients}"] = drive(call, clients, per)
        finally:
            served.stop()
    floor = results["in_process"]["p50"]
    rest_gap = results["rest_1"]["p50"] - floor
    rows = "\n".join(
        f"| {k} | {v['clients']} | {v['rps']:.0f} | {v['p50']:.2f} | {v['p99']:.2f} |"
        for k, v in results.items()
    )
    md = f"""## Serving (`tfship serve`, demo model, single-row predict)

| path | clients | requests/s | p50 ms | p99 ms |
|---|---|---|---|---|
{rows}

REST p50 is {rest_gap:.2f} ms above the in-process call (goal: within 3 ms). Throughput with 8
clients vs 1: REST x{results["rest_8"]["rps"] / results["rest_1"]["rps"]:.2f}, gRPC
x{results["grpc_8"]["rps"] / results["grpc_1"]["rps"]:.2f} (clients and server share the 2 cores).
"""
    save("serving", {"results": results, "rest_p50_gap_ms": round(rest_gap, 3)}, md)
    print(md)


if __name__ == "__main__":
    main()
