"""Client for TensorFlow Serving (and ``tfship serve``): status, wait, metadata, predict.

REST by default (``http://host:8501``); gRPC with ``transport="grpc"`` (``host:8500``).
TF Serving's error answers become :class:`~tfship.errors.ServingError` subclasses carrying the
server's own message. Every call has a timeout; connection errors and 502/503/504 answers are
retried a bounded number of times with backoff; nothing waits forever.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

from tfship import config
from tfship.errors import MissingExtra, ServingError, ServingNotReady
from tfship.log import quiet_tensorflow
from tfship.settings import Setting, setting
from tfship.store import check_label, check_model_name

RETRY_STATUS = (502, 503, 504)
_NOT_READY_HINTS = {
    "LOADING": "TF Serving retries a failed load (--max_num_load_retries, "
    "--load_retry_interval_micros: 5 x 60 s by default) and shows LOADING meanwhile; its log "
    "says why the load fails",
    "not listening": "TF Serving never answered: it opens its ports only once every model has "
    "a version AVAILABLE; check that it runs and that its log shows the load",
}


class ServingNotFound(ServingError):
    """404: no such model, version or servable."""


class ServingBadRequest(ServingError):
    """400: TF Serving refused the request (shape, dtype, signature...)."""


class ServingUnreachable(ServingError):
    """Nothing answers at the address (connection refused, timed out).

    Not always a failure: ``tensorflow_model_server`` opens no port until every model has a
    version AVAILABLE (``model_servers/server.cc``), so a fresh host refuses connections
    until its first version has loaded.
    """


@dataclass
class VersionState:
    """One row of the model status answer."""

    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""


HOSTNAME = Setting(
    None,
    "DEPLOY_SERVER_HOSTNAME",
    "Deploy host (SSH), or several comma-separated (a fleet). Empty: a local folder served by "
    "`tfship serve`.",
)


@dataclass
class ServingSettings:
    """Where TF Serving answers, and how to talk to it."""

    url: str | None = setting(
        None,
        "TF_SERVING_URL",
        "TF Serving address. Default: http://$DEPLOY_SERVER_HOSTNAME:8501, else the local "
        "serving `tfship run` started, else http://127.0.0.1:8501.",
    )
    transport: str = setting(
        "rest",
        "TFSHIP_SERVING_TRANSPORT",
        "REST (url http://host:8501) or gRPC (url host:8500).",
        choices=("rest", "grpc"),
    )
    hostname: str | None = HOSTNAME.field()

    def resolved_url(self, local_base: str = "serving") -> str:
        """The URL; else the (first) deploy host on 8501; else the local serving that
        ``tfship run`` started (``<local_base>/serve.json``); else localhost:8501."""
        import json
        from pathlib import Path

        if self.url:
            return self.url
        host = (self.hostname or "").split(",")[0].strip()
        if host:
            return f"http://{host}:{config.REST_PORT}"
        state = Path(local_base) / "serve.json"
        if state.is_file():
            try:
                return f"http://127.0.0.1:{int(json.loads(state.read_text())['rest_port'])}"
            except (ValueError, KeyError, OSError):
                pass
        return f"http://127.0.0.1:{config.REST_PORT}"


def _has_grpc_api() -> bool:
    """Whether gRPC can be spoken: grpcio and the TF Serving API protos (the train extra)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("grpc", "tensorflow_serving"))


class ServingClient:
    """Talk to one TF Serving model over REST or gRPC."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        timeout: float = config.REQUEST_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.2,
        transport: str = "rest",
        shown: str | None = None,
    ) -> None:
        """``shown``: the server as messages and reports name it, when ``url`` is not what a
        person knows it by (an SSH tunnel's local end)."""
        if transport not in ("rest", "grpc"):
            raise ValueError(f"transport must be rest or grpc, not {transport}")
        if transport == "grpc" and not _has_grpc_api():
            # tensorflow-serving-api depends on TensorFlow: the slim install speaks REST only.
            raise MissingExtra(
                "gRPC needs tensorflow-serving-api, which is in tfship's train extra",
                hint='pip install "tfship[train]", or use REST: --transport rest '
                "(TFSHIP_SERVING_TRANSPORT=rest) with the url http://host:8501",
            )
        self.url = url.rstrip("/")
        self.shown = shown or self.url
        self.model = check_model_name(model)  # it becomes part of every URL path
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.transport = transport
        self._session = None
        self._stubs = None

    # --- plumbing ----------------------------------------------------------------------------
    def _path(self, version: int | None = None, label: str | None = None) -> str:
        path = f"{self.url}/v1/models/{self.model}"
        if version is not None:
            path += f"/versions/{int(version)}"
        elif label is not None:
            path += f"/labels/{check_label(label)}"
        return path

    def _rest(self, method: str, url: str, body: dict | None = None) -> dict:
        import requests

        if self._session is None:
            self._session = requests.Session()
        attempt = 0
        while True:
            try:
                resp = self._session.request(method, url, json=body, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt >= self.retries:
                    raise ServingUnreachable(
                        f"{self.shown} unreachable after {attempt + 1} tries "
                        f"({type(exc).__name__})",
                        hint="is TF Serving running, and is TF_SERVING_URL right? (it opens its "
                        "ports only once a version has loaded)",
                    ) from exc
            else:
                if resp.status_code not in RETRY_STATUS or attempt >= self.retries:
                    return self._decode(resp)
            attempt += 1
            time.sleep(self.backoff * 2 ** (attempt - 1))

    def _decode(self, resp) -> dict:
        try:
            doc = resp.json()
        except ValueError:
            doc = {"error": resp.text.strip()[:200] or resp.reason}
        if resp.status_code == 200:
            return doc
        message = doc.get("error", str(doc)) if isinstance(doc, dict) else str(doc)
        cls = {404: ServingNotFound, 400: ServingBadRequest}.get(resp.status_code, ServingError)
        raise cls(f"TF Serving {resp.status_code}: {message}", status=resp.status_code)

    def _grpc(self):
        if self._stubs is None:
            import grpc

            quiet_tensorflow()  # the TF Serving API protos load TensorFlow
            from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

            target = urlsplit(self.url).netloc or self.url
            channel = grpc.insecure_channel(target)
            self._stubs = (
                prediction_service_pb2_grpc.PredictionServiceStub(channel),
                model_service_pb2_grpc.ModelServiceStub(channel),
            )
        return self._stubs

    def _call_grpc(self, fn, request):
        import grpc

        attempt = 0
        while True:
            try:
                return fn(request, timeout=self.timeout)
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    attempt += 1
                    time.sleep(self.backoff * 2 ** (attempt - 1))
                    continue
                cls = {
                    grpc.StatusCode.NOT_FOUND: ServingNotFound,
                    grpc.StatusCode.INVALID_ARGUMENT: ServingBadRequest,
                    grpc.StatusCode.UNAVAILABLE: ServingUnreachable,
                }.get(code, ServingError)
                raise cls(f"TF Serving {code.name}: {exc.details()}") from exc

    def _spec(
        self, spec, version: int | None, label: str | None = None, signature: str | None = None
    ) -> None:
        spec.name = self.model
        if version is not None:
            spec.version.value = int(version)
        elif label is not None:
            spec.version_label = check_label(label)
        if signature:
            spec.signature_name = signature

    # --- API ---------------------------------------------------------------------------------
    def status(self, version: int | None = None) -> list[VersionState]:
        """Every version TF Serving knows of this model, highest first."""
        if self.transport == "grpc":
            from tensorflow_serving.apis import get_model_status_pb2

            req = get_model_status_pb2.GetModelStatusRequest()
            self._spec(req.model_spec, version)
            resp = self._call_grpc(self._grpc()[1].GetModelStatus, req)
            import grpc

            names = {c.value[0]: c.name for c in grpc.StatusCode}
            return [
                VersionState(
                    s.version,
                    get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
                    names.get(s.status.error_code, "UNKNOWN"),
                    s.status.error_message,
                )
                for s in resp.model_version_status
            ]
        doc = self._rest("GET", self._path(version))
        return [
            VersionState(
                int(s["version"]),
                s["state"],
                s.get("status", {}).get("error_code", "OK"),
                s.get("status", {}).get("error_message", ""),
            )
            for s in doc.get("model_version_status", [])
        ]

    def available_versions(self) -> list[int]:
        """AVAILABLE versions, highest first ([] if the model is unknown)."""
        try:
            return sorted(
                (s.version for s in self.status() if s.state == "AVAILABLE"), reverse=True
            )
        except ServingNotFound:
            return []

    def serving_version(self) -> int | None:
        """The version that answers requests without a version: the highest AVAILABLE."""
        versions = self.available_versions()
        return versions[0] if versions else None

    def wait_available(
        self, version: int, timeout: float = config.AVAILABLE_TIMEOUT, poll: float = 0.1
    ) -> float:
        """Wait until ``version`` is AVAILABLE; return seconds waited.

        Raises :class:`ServingNotReady` on timeout, or at once if the version failed to load.
        """
        start = time.monotonic()
        last = "not listed"
        while True:
            try:
                rows = self.status(version)
            except ServingNotFound:
                rows = []
            except ServingUnreachable:
                rows, last = [], "not listening"
            except ServingError as exc:
                rows, last = [], str(exc)
            for row in rows:
                if row.state == "AVAILABLE":
                    return time.monotonic() - start
                last = row.state
                if row.state == "END" and row.error_code != "OK":
                    raise ServingNotReady(
                        f"version {version} of {self.model} failed to load: "
                        f"{row.error_code}: {row.error_message.splitlines()[0][:300]}"
                    )
            if time.monotonic() - start > timeout:
                raise ServingNotReady(
                    f"version {version} of {self.model} not AVAILABLE after {timeout:g} s "
                    f"(last state: {last})",
                    hint=_NOT_READY_HINTS.get(last, "raise --wait-seconds for a large model"),
                )
            time.sleep(poll)

    def metadata(self, version: int | None = None) -> dict:
        """The model's SignatureDefs, as TF Serving's REST metadata JSON."""
        if self.transport == "grpc":
            from google.protobuf import json_format
            from tensorflow_serving.apis import get_model_metadata_pb2

            req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
            self._spec(req.model_spec, version)
            resp = self._call_grpc(self._grpc()[0].GetModelMetadata, req)
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            resp.metadata["signature_def"].Unpack(sig_map)
            return {
                "model_spec": {
                    "name": resp.model_spec.name,
                    "version": str(resp.model_spec.version.value),
                },
                "metadata": {
                    "signature_def": json_format.MessageToDict(
                        sig_map,
                        preserving_proto_field_name=True,
                        always_print_fields_with_no_presence=True,
                    )
                },
            }
        path = self._path(version) + "/metadata"
        return self._rest("GET", path)

    def signature(self, version: int | None = None, name: str = config.SIGNATURE_NAME) -> dict:
        """One signature as ``{inputs: {k: {dtype, shape}}, outputs: ...}`` (manifest format)."""
        sigs = self.metadata(version)["metadata"]["signature_def"]["signature_def"]
        if name not in sigs:
            raise ServingBadRequest(f"signature {name} not served (have: {', '.join(sigs)})")

        def spec(info: dict) -> dict:
            shape = info.get("tensor_shape", {})
            if shape.get("unknown_rank"):
                return {"dtype": info["dtype"], "shape": None}
            return {"dtype": info["dtype"], "shape": [int(d["size"]) for d in shape.get("dim", [])]}

        sig = sigs[name]
        return {
            "name": name,
            "inputs": {k: spec(v) for k, v in sorted(sig["inputs"].items())},
            "outputs": {k: spec(v) for k, v in sorted(sig["outputs"].items())},
        }

    def predict(
        self,
        inputs: np.ndarray | dict[str, np.ndarray],
        version: int | None = None,
        label: str | None = None,
        signature: str | None = None,
    ) -> np.ndarray | dict[str, np.ndarray]:
        """Predict on a batch; one output -> array, several -> dict by output name."""
        if self.transport == "grpc":
            import tensorflow as tf
            from tensorflow_serving.apis import predict_pb2

            if not isinstance(inputs, dict):
                raise ValueError("gRPC predict needs inputs keyed by input name")
            req = predict_pb2.PredictRequest()
            self._spec(req.model_spec, version, label, signature)
            for k, v in inputs.items():
                req.inputs[k].CopyFrom(tf.make_tensor_proto(np.asarray(v)))
            resp = self._call_grpc(self._grpc()[0].Predict, req)
            out = {k: tf.make_ndarray(v) for k, v in resp.outputs.items()}
            return next(iter(out.values())) if len(out) == 1 else out
        payload: dict = {
            "inputs": (
                {k: np.asarray(v).tolist() for k, v in inputs.items()}
                if isinstance(inputs, dict)
                else np.asarray(inputs).tolist()
            )
        }
        if signature:
            payload["signature_name"] = signature
        doc = self._rest("POST", self._path(version, label) + ":predict", payload)
        outputs = doc["outputs"]
        if isinstance(outputs, dict):
            return {k: np.asarray(v) for k, v in outputs.items()}
        return np.asarray(outputs)

    def classify_or_regress(
        self, api: str, examples: list[dict], version: int | None = None
    ) -> list:
        """TF Serving's Classify or Regress API over REST (``api``: ``classify`` or
        ``regress``) on ``examples`` (feature name -> value, as its JSON examples take them:
        a whole number is an int64 feature, a float a float one, a string bytes), through the
        signature of the same name; its ``results``."""
        if api not in ("classify", "regress"):
            raise ValueError(f"api must be classify or regress, not {api}")
        body = {"signature_name": api, "examples": examples}
        return self._rest("POST", self._path(version) + f":{api}", body)["results"]

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
