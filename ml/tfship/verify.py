"""Stage 7: verify what TF Serving actually serves, against the package's manifest.

The checks (all against the specific version's endpoint, so they test exactly what was
deployed): the version is AVAILABLE; the served signature equals the manifest's; the golden
inputs give the manifest's outputs (tolerance 1e-4); accuracy on a sample of the held-out test
set reaches the gate; p95 latency over N single-row requests is under ``max_p95_ms``.

:func:`verify_version` is used by deploy and rollback too; :func:`test_deployed` is the stage:
it also writes ``<workspace>/deployed/`` (verify.json, junit.xml, report.md).
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfship import config
from tfship.errors import DataError, ServingError, VerificationFailed
from tfship.log import event
from tfship.report import Check, check_table, failed, summary, write_junit
from tfship.serving import ServingClient, ServingSettings
from tfship.settings import setting
from tfship.store import MANIFEST
from tfship.tables import take
from tfship.workspace import Workspace, read_json, write_json


@dataclass
class VerifySettings:
    """Thresholds and sizes for stage 7 (and the checks of deploy and rollback)."""

    min_accuracy: float | None = setting(
        None,
        "TFSHIP_SERVED_MIN_ACCURACY",
        "Served accuracy gate. Default: the gate recorded in the manifest.",
        value_type=float,
        min=0,
        max=1,
    )
    samples: int = setting(
        200, "TFSHIP_VERIFY_SAMPLES", "Held-out test rows sent for the accuracy check.", min=1
    )
    latency_requests: int = setting(
        50, "TFSHIP_LATENCY_REQUESTS", "Single-row requests timed for p50/p95 latency.", min=1
    )
    max_p95_ms: float = setting(
        250.0, "TFSHIP_MAX_P95_MS", "p95 latency gate, milliseconds.", min=0
    )
    wait_seconds: float = setting(
        60.0,
        "TFSHIP_WAIT_SECONDS",
        "How long TF Serving may take to make the version AVAILABLE.",
        min=0,
    )
    tolerance: float = config.SERVING_TOLERANCE


@dataclass
class VersionSettings:
    """Stage 7: which version to verify (default: the workspace's package)."""

    version: int | None = setting(
        None,
        "TFSHIP_EXPECTED_VERSION",
        "Version to verify. Default: the one in workspace/package/.",
        value_type=int,
    )
    manifest: Path | None = setting(
        None,
        "TFSHIP_MANIFEST",
        "A package's assets.extra/tfship.json, instead of workspace/package/.",
        kind="existing-file",
    )


@dataclass
class VerifyResult:
    """What stage 7 found: ``verify.json``."""

    result: dict

    def to_dict(self) -> dict:
        return self.result

    def summary(self) -> str:
        r, lat = self.result, self.result["latency_ms"]
        return (
            f"verified {r['model']} version {r['version']} at {r['url']}: accuracy "
            f"{r['accuracy']:.4f}, p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms"
        )


def load_test_split(package_dir: Path) -> tuple[np.ndarray | dict[str, np.ndarray], np.ndarray]:
    """The held-out test split that travels in the package: images, or a table's columns by
    input name (``test_rows.npz``), and the labels."""
    rows = package_dir / "assets.extra" / "test_rows.npz"
    path = rows if rows.exists() else package_dir / "assets.extra" / "test.npz"
    try:
        with np.load(path, allow_pickle=False) as npz:
            if path == rows:
                cols = {k.removeprefix("input."): npz[k] for k in npz.files if k != "labels"}
                return cols, npz["labels"]
            return npz["images"], npz["labels"]
    except FileNotFoundError as exc:
        raise DataError(f"{path} not found: the package has no test split") from exc


def _golden_inputs(golden: dict) -> dict[str, np.ndarray]:
    """The golden batch as the request sends it: one float32 image array, or a table's
    columns (numbers as float32, strings as they are)."""
    if golden["input_name"] is not None:
        return {golden["input_name"]: np.asarray(golden["inputs"], np.float32)}
    out = {}
    for k, v in golden["inputs"].items():
        a = np.asarray(v)
        out[k] = a.astype(np.float32) if a.dtype.kind in "fi" else a
    return out


def _quality(manifest: dict, out: np.ndarray, labels: np.ndarray, s: VerifySettings) -> tuple:
    """(name, value, gate) of the served model on held-out rows: accuracy, or R2 for a
    regression."""
    if manifest.get("task") == "regression":
        ss_tot = float(np.sum((labels - labels.mean()) ** 2))
        r2 = 1 - float(np.sum((out - labels) ** 2)) / ss_tot if ss_tot > 0 else 0.0
        return "served r2", r2, float(manifest["thresholds"]["min_r2"])
    accuracy = float(np.mean(out.argmax(axis=1) == labels))
    gate = s.min_accuracy if s.min_accuracy is not None else manifest["thresholds"]["min_accuracy"]
    return "served accuracy", accuracy, float(gate)


def verify_version(
    client: ServingClient,
    manifest: dict,
    version: int,
    images: np.ndarray | dict[str, np.ndarray],
    labels: np.ndarray,
    s: VerifySettings,
    stage: str = "test-deployed",
) -> tuple[list[Check], dict]:
    """Run every stage-7 check against ``version``; return (checks, measurements)."""
    checks: list[Check] = []
    facts: dict = {"version": version, "model": client.model, "url": client.shown}

    waited = client.wait_available(version, timeout=s.wait_seconds)
    facts["seconds_to_available"] = round(waited, 3)
    checks.append(Check("available", 1.0, "==", 1.0, f"version {version} AVAILABLE"))

    served = client.signature(version)
    expected = manifest["signature"]
    same = served["inputs"] == expected["inputs"] and served["outputs"] == expected["outputs"]
    checks.append(
        Check(
            "signature",
            float(same),
            "==",
            1.0,
            "" if same else f"served {served}, manifest {expected}",
        )
    )
    if not same:
        return checks, facts

    golden = manifest["golden"]
    output_name = golden["output_name"]
    out = client.predict(_golden_inputs(golden), version=version)
    out = np.asarray(out[output_name] if isinstance(out, dict) else out)
    exp = np.asarray(golden["outputs"])
    detail = _unusable(out, exp.shape)
    diff = float("inf") if detail else float(np.max(np.abs(out - exp)))
    facts["golden_max_abs_diff"] = diff
    checks.append(Check("golden outputs max abs diff", diff, "<=", s.tolerance, detail))

    n = min(s.samples, len(labels))
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(labels), size=n, replace=False))
    request = (
        (lambda rows: rows)
        if isinstance(images, dict)
        else (lambda rows: {golden["input_name"]: rows})
    )
    probs = client.predict(request(take(images, idx)), version=version)
    probs = np.asarray(probs[output_name] if isinstance(probs, dict) else probs)
    broken = _unusable(probs, (n, *exp.shape[1:]))
    detail = broken or f"{n} test rows"
    # NaN or the wrong shape: the served model is broken, not merely worse.
    name, value, gate = _quality(manifest, probs, labels[idx], s)
    accuracy = value if n and not broken else 0.0
    facts["accuracy"] = accuracy
    facts["accuracy_rows"] = int(n)
    checks.append(Check(name, accuracy, ">=", gate, detail))

    for extra in (_examples_check, _encoded_check):
        check = extra(client, manifest, version, s)
        if check is not None:
            checks.append(check)

    times = []
    for i in range(s.latency_requests):
        row = take(images, [idx[i % max(n, 1)] if n else 0])  # a batch of one
        start = time.perf_counter()
        client.predict(request(row), version=version)
        times.append((time.perf_counter() - start) * 1000)
    p50, p95 = (float(np.percentile(times, q)) for q in (50, 95)) if times else (0.0, 0.0)
    facts["latency_ms"] = {"p50": round(p50, 3), "p95": round(p95, 3), "n": len(times)}
    checks.append(Check("latency p95 ms", p95, "<=", s.max_p95_ms, f"p50 {p50:.2f} ms"))
    event(
        stage,
        "verified" if not failed(checks) else "verification failed",
        model=client.model,
        version=version,
        accuracy=f"{accuracy:.4f}",
        p95_ms=f"{p95:.1f}",
    )
    return checks, facts


def _examples_check(
    client: ServingClient, manifest: dict, version: int, s: VerifySettings
) -> Check | None:
    """The ``classify`` (or a table's ``regress``) signature, through TF Serving's Classify
    (or Regress) API on the golden rows as ``tf.Example``s: the same outputs as Predict's
    golden ones. An image is its pixels as one float list. None (no such check) over gRPC
    (REST's JSON examples only), and for a package whose manifest predates the signature
    (a table's without ``int_inputs``, an image's without ``examples_api``)."""
    golden = manifest["golden"]
    if client.transport != "rest":
        return None
    if manifest.get("kind") == "table":
        ints = golden.get("int_inputs")
        if ints is None:
            return None
        api = "classify" if manifest.get("classes") else "regress"
        columns = golden["inputs"]
        rows = len(next(iter(columns.values())))
        examples = [_example(columns, i, set(ints)) for i in range(rows)]
    elif manifest.get("examples_api") == "classify":
        api, name = "classify", golden["input_name"]
        # floats, written with a decimal point: JSON whole numbers become an int64 list
        examples = [
            {name: [float(v) for v in np.asarray(image, float).ravel()]}
            for image in golden["inputs"]
        ]
        rows = len(examples)
    else:
        return None
    try:
        results = client.classify_or_regress(api, examples, version=version)
    except ServingError as exc:
        return Check(f"{api} API max abs diff", float("inf"), "<=", s.tolerance, str(exc))
    try:
        if api == "classify":  # per example: [[class, score], ...] in the classes' order
            got = np.asarray([[score for _, score in r] for r in results], dtype=float)
        else:
            got = np.asarray(results, dtype=float)
    except (TypeError, ValueError):
        return Check(f"{api} API max abs diff", float("inf"), "<=", s.tolerance, "bad results")
    exp = np.asarray(golden["outputs"], dtype=float)
    detail = _unusable(got, exp.shape)
    diff = float("inf") if detail else float(np.max(np.abs(got - exp)))
    return Check(f"{api} API max abs diff", diff, "<=", s.tolerance, detail or f"{rows} examples")


def _encoded_check(
    client: ServingClient, manifest: dict, version: int, s: VerifySettings
) -> Check | None:
    """An image model's ``predict_image_bytes`` signature on the golden images as PNGs (REST
    carries them as ``{"b64": ...}``, gRPC as a string tensor): the scores the package
    recorded for them. None for a package without it (a table's, or an older image's)."""
    encoded = manifest["golden"].get("encoded")
    if not encoded:
        return None
    name = f"{encoded['signature']} max abs diff"
    if client.transport == "rest":
        value: object = [{"b64": b} for b in encoded["b64"]]
    else:
        value = np.array([base64.b64decode(b) for b in encoded["b64"]], dtype=object)
    try:
        out = client.predict(
            {encoded["input_name"]: value}, version=version, signature=encoded["signature"]
        )
    except ServingError as exc:
        return Check(name, float("inf"), "<=", s.tolerance, str(exc))
    got = np.asarray(out["scores"] if isinstance(out, dict) else out)
    exp = np.asarray(encoded["outputs"], dtype=float)
    detail = _unusable(got, exp.shape)
    diff = float("inf") if detail else float(np.max(np.abs(got.astype(float) - exp)))
    return Check(name, diff, "<=", s.tolerance, detail or f"{len(exp)} PNG images")


def _example(columns: dict[str, list], i: int, ints: set[str]) -> dict:
    """Golden row ``i`` as a JSON example: an INT input as a whole number (an int64
    feature). An INT input that is not whole was missing (the golden rows carry the training
    mean there): it is left out, and the graph fills in the same mean."""
    out = {}
    for name, values in columns.items():
        v = values[i]
        if name in ints:
            if not float(v).is_integer():
                continue
            v = int(v)
        out[name] = v
    return out


def _unusable(out: np.ndarray, shape: tuple[int, ...]) -> str:
    """Why served outputs cannot be compared (wrong shape, NaN/inf), or "" if they can."""
    if out.shape != tuple(shape):
        return f"outputs of shape {list(out.shape)}, expected {list(shape)}"
    if not np.issubdtype(out.dtype, np.number) or not np.all(np.isfinite(out)):
        bad = int(np.size(out) - np.count_nonzero(np.isfinite(out.astype(float, copy=False))))
        return f"{bad} of {out.size} outputs are NaN or infinite"
    return ""


def package_manifest(ws: Workspace, manifest_path: Path | None = None) -> tuple[dict, Path]:
    """The manifest of the packaged version in the workspace (or at ``manifest_path``)."""
    if manifest_path is None:
        info = read_json(ws.require(ws.package / "package.json", "package"))
        vdir = ws.package / str(info["version"])
        manifest_path = vdir / MANIFEST
    manifest_path = Path(manifest_path)
    return read_json(manifest_path), manifest_path.parent.parent


def render(checks: list[Check], facts: dict) -> str:
    verdict = "PASSED" if not failed(checks) else "FAILED"
    lat = facts.get("latency_ms", {})
    return "\n".join(
        [
            "## Deployed model",
            "",
            f"**Verification {verdict}** for {facts['model']} version {facts['version']} at "
            f"{facts['url']}: {summary(checks)}",
            "",
            check_table(checks),
            "",
            f"Latency over {lat.get('n', 0)} single-row requests: p50 {lat.get('p50', 0):.2f} ms, "
            f"p95 {lat.get('p95', 0):.2f} ms.",
            "",
        ]
    )


def test_deployed(
    ws_root: Path,
    serving: ServingSettings,
    model_name: str,
    s: VerifySettings,
    which: VersionSettings | None = None,
    shown: str | None = None,
) -> VerifyResult:
    """Stage 7: verify the served model; write ``deployed/``; raise VerificationFailed.
    ``shown``: how reports name the server, when its URL is a tunnel's local end."""
    which = which or VersionSettings()
    ws = Workspace(ws_root)
    manifest, package_dir = package_manifest(ws, which.manifest)
    version = which.version if which.version is not None else int(manifest["version"])
    images, labels = load_test_split(package_dir)
    url = serving.resolved_url()
    client = ServingClient(url, model_name, transport=serving.transport, shown=shown)
    started = time.monotonic()
    try:
        checks, facts = verify_version(client, manifest, version, images, labels, s)
    except ServingError as exc:
        checks = [Check("available", 0.0, "==", 1.0, str(exc))]
        facts = {"version": version, "model": model_name, "url": client.shown, "error": str(exc)}
    finally:
        client.close()
    result = {"passed": not failed(checks), "checks": [c.to_dict() for c in checks], **facts}
    with ws.stage_output("test-deployed") as out:
        write_json(out / "verify.json", result)
        write_junit(out / "junit.xml", "tfship.test-deployed", checks, time.monotonic() - started)
        (out / "report.md").write_text(render(checks, facts))
    if not result["passed"]:
        raise VerificationFailed(
            f"deployed model failed verification: {summary(checks)}",
            hint=f"report: {ws.deployed / 'report.md'}",
        )
    return VerifyResult(json.loads(json.dumps(result, default=float)))
