"""One loaded version: a TensorFlow session over the SavedModel, run as TF Serving runs it.

TF Serving loads a version into a ``SavedModelBundle`` (a session + the MetaGraphDef) and
runs every request through ``Session::Run`` on the signature's tensor names. So does this:
``tf.compat.v1.Session`` with ``saved_model.loader.load``. That gives, for free and exactly,
what the real server answers: the kernel's own error text (``Matrix size-incompatible: ...``,
not Python's ``Graph execution error:``), a request tensor of the wrong dtype refused
(``Expects arg[0] to be float but int64 is provided``) instead of cast, and no shape check
beyond the graph's own.

Request validation follows, in order and words:

- predict: ``servables/tensorflow/predict_util.cc`` (``RunPredict``,
  ``VerifyRequestInputsSize``, ``PreProcessPrediction``) and TF's
  ``cc/saved_model/util.cc`` ``GetInputValues``;
- classify / regress: ``classifier.cc`` / ``regressor.cc`` (``Get*SignatureDef``,
  ``PreProcess*``, ``PostProcess*Result``) and ``util.cc``
  ``InputToSerializedExampleTensor``;
- multi-inference: ``multi_inference.cc`` ``TensorFlowMultiInferenceRunner::Infer``;
- warmup: ``saved_model_warmup.cc`` / ``saved_model_warmup_util.cc``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from google.protobuf.message import DecodeError
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    inference_pb2,
    input_pb2,
    prediction_log_pb2,
)

from tfship.server.monitoring import REGISTRY
from tfship.server.status import RpcError, from_tf_error
from tfship.server.tensors import dtype_of, to_ndarray

DEFAULT_SIGNATURE = "serving_default"
PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
WARMUP_FILE = "tf_serving_warmup_requests"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")  # tensorflow/cc/saved_model/constants.h
MAX_WARMUP_RECORDS = 1000  # saved_model_warmup_util.h WarmupConsts::kMaxNumRecords

Row = list[tuple[str, float | None]]  # one example's (label, score) pairs


@dataclass
class ServableOptions:
    """Flags that change how a version runs (``main.cc``)."""

    method_name_check: bool = False  # --enable_signature_method_name_check
    warmup: bool = True  # --enable_model_warmup
    warmup_iterations: int = 1  # --num_request_iterations_for_warmup (0 = 1)


def check_bundle(path: str, shown: str) -> None:
    """``session_bundle/oss/session_bundle_util.cc`` ``LoadSessionBundleOrSavedModelBundle``:
    a folder without ``saved_model.pb`` (or ``.pbtxt``: ``MaybeSavedModelDirectory``) is
    NOT_FOUND before anything loads; a TF1 Session Bundle is refused.

    This is what a version listed before its ``saved_model.pb`` was written meets.
    """
    if os.path.exists(os.path.join(path, "export.meta")):
        raise RpcError("UNIMPLEMENTED", "Session Bundle is deprecated and removed.")
    if not any(os.path.exists(os.path.join(path, f)) for f in SAVED_MODEL_FILES):
        raise RpcError(
            "NOT_FOUND",
            "Specified file path does not appear to contain a SavedModel bundle (should have "
            f"a file called `saved_model.pb`)\nSpecified file path: {shown}",
        )


def signature_text(sig: meta_graph_pb2.SignatureDef) -> str:
    """``SignatureDef::DebugString()`` (the text format), as upstream errors embed it."""
    return text_format.MessageToString(sig)


def _shape_text(array: np.ndarray) -> str:
    """``TensorShape::DebugString()``: ``[2,3]``."""
    return "[" + ",".join(str(d) for d in array.shape) + "]"


def _dtype_enum_name(array: np.ndarray) -> str:
    """``DataType_Name``: ``DT_FLOAT``..."""
    return types_pb2.DataType.Name(dtype_of(array))


def examples_of(input_proto: input_pb2.Input) -> list[bytes]:
    """``InputToSerializedExampleTensor``: one serialized tf.Example per example.

    With a context, each is the context's bytes followed by the example's (a protobuf merge
    by concatenation, byte for byte what upstream feeds).
    """
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in input_proto.example_list.examples]
    if kind == "example_list_with_context":
        ctx = input_proto.example_list_with_context.context.SerializeToString()
        return [ctx + e.SerializeToString() for e in input_proto.example_list_with_context.examples]
    return []


class Servable:
    """A loaded SavedModel version and the RPCs that run on it."""

    def __init__(
        self,
        name: str,
        version: int,
        path: str,
        options: ServableOptions | None = None,
        source: str | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path  # a local folder (a bucket's version is copied first)
        self.source = source or path  # the path as configured: what messages and metrics name
        self.options = options or ServableOptions()
        check_bundle(path, self.source)
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        try:
            with self.graph.as_default():
                meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)
        except BaseException:
            self.session.close()
            raise
        self.signature_defs: dict[str, meta_graph_pb2.SignatureDef] = dict(meta.signature_def)
        self._outputs: dict[str, object] = {}
        self._users = 0  # requests holding this version (ServableHandle references)
        self._idle = threading.Condition()

    def acquire(self) -> None:
        """A request starts using this version (the manager's lock is held while it does)."""
        with self._idle:
            self._users += 1

    def release(self) -> None:
        """A request is done with this version."""
        with self._idle:
            self._users -= 1
            self._idle.notify_all()

    def close(self, timeout: float = 60.0) -> None:
        """Release the session once no request uses it (BasicManager unloads a servable only
        when its last ServableHandle is gone)."""
        with self._idle:
            self._idle.wait_for(lambda: self._users == 0, timeout)
        self.session.close()

    # --- the session ------------------------------------------------------------------------
    def _tf_output(self, tensor_name: str):
        found = self._outputs.get(tensor_name)
        if found is None:
            try:
                found = self.graph.get_tensor_by_name(tensor_name)._as_tf_output()
            except (KeyError, ValueError) as exc:
                raise RpcError("INVALID_ARGUMENT", f"Tensor {tensor_name} not found") from exc
            self._outputs[tensor_name] = found
        return found

    def run(
        self, feeds: dict[str, np.ndarray], fetches: list[str], api: str = ""
    ) -> list[np.ndarray]:
        """``Session::Run`` on tensor names; a failure is the session's own status."""
        feed = {self._tf_output(n): v for n, v in feeds.items()}
        fetch = [self._tf_output(n) for n in fetches]
        started = time.monotonic()
        try:
            out = self.session._call_tf_sessionrun(None, feed, fetch, [], None)
        except tf.errors.OpError as exc:
            raise from_tf_error(exc) from exc
        except (TypeError, ValueError) as exc:  # a feed NumPy cannot make a tensor of
            raise RpcError("INVALID_ARGUMENT", str(exc)) from exc
        if api:
            micros = (time.monotonic() - started) * 1e6
            REGISTRY.runtime_latency.add(micros, self.name, api, "TF1")
        return list(out)

    # --- predict ----------------------------------------------------------------------------
    def predict_signature(self, signature_name: str) -> tuple[str, meta_graph_pb2.SignatureDef]:
        """``RunPredict``'s lookup: FAILED_PRECONDITION for an unknown key."""
        name = signature_name or DEFAULT_SIGNATURE
        sig = self.signature_defs.get(name)
        if sig is None:
            raise RpcError("FAILED_PRECONDITION", f'Serving signature key "{name}" not found.')
        return name, sig

    def rest_input_dtypes(self, signature_name: str) -> dict[str, int]:
        """``http_rest_api_handler.cc`` ``GetInfoMap``: the REST lookup, with its own words."""
        name = signature_name or DEFAULT_SIGNATURE
        sig = self.signature_defs.get(name)
        if sig is None:
            raise RpcError(
                "INVALID_ARGUMENT", f'Serving signature name: "{name}" not found in signature def'
            )
        if not sig.inputs:
            raise RpcError(
                "INVALID_ARGUMENT",
                f"Failed to get input map for signature: {signature_name or 'DEFAULT'}",
            )
        return {k: t.dtype for k, t in sig.inputs.items()}

    def predict(
        self,
        signature_name: str,
        inputs: dict[str, np.ndarray | tensor_pb2.TensorProto],
        output_filter: Iterable[str] = (),
    ) -> tuple[str, dict[str, np.ndarray]]:
        """Predict: (the signature name used, outputs by alias).

        Inputs are NumPy arrays (REST, converted by the signature's dtypes) or TensorProtos
        (gRPC, converted by their own dtype once the request has passed the checks).
        """
        name, sig = self.predict_signature(signature_name)
        if self.options.method_name_check and sig.method_name not in (PREDICT, CLASSIFY, REGRESS):
            raise RpcError(
                "INTERNAL",
                "Expected prediction signature method_name to be one of {"
                f"{PREDICT}, {CLASSIFY}, {REGRESS}}}. Was: {sig.method_name}",
            )
        _verify_inputs_size(sig, inputs)
        feeds = _input_values(sig, inputs)
        aliases: list[str] = []
        for alias in output_filter:
            if alias not in sig.outputs:
                raise RpcError(
                    "INVALID_ARGUMENT",
                    f"output tensor alias not found in signature: {alias} Outputs expected to "
                    f"be in the set {{{','.join(sorted(sig.outputs))}}}.",
                )
            if alias in aliases:
                raise RpcError("INVALID_ARGUMENT", f"duplicate output tensor alias: {alias}")
            aliases.append(alias)
        aliases = aliases or list(sig.outputs)
        values = self.run(feeds, [sig.outputs[a].name for a in aliases], api="Predict")
        return name, dict(zip(aliases, values, strict=True))

    # --- classify / regress -------------------------------------------------------------------
    def _example_signature(self, signature_name: str, method: str):
        name = signature_name or DEFAULT_SIGNATURE
        sig = self.signature_defs.get(name)
        if sig is None:
            raise RpcError("INVALID_ARGUMENT", f"No signature was found with the name: {name}")
        if self.options.method_name_check and sig.method_name != method:
            kind = "classification" if method == CLASSIFY else "regression"
            raise RpcError(
                "INVALID_ARGUMENT",
                f"Expected {kind} signature method_name to be {method}. Was: {sig.method_name}",
            )
        return name, sig

    def classify(self, signature_name: str, examples: list[bytes]) -> tuple[str, list[Row]]:
        """Classify: (the signature name used, per example its (label, score) pairs)."""
        name, sig = self._example_signature(signature_name, CLASSIFY)
        input_name, outputs = preprocess_classification(sig)
        tensors = self._run_examples({input_name}, outputs, examples, "Classify")
        return name, postprocess_classification(sig, len(examples), outputs, tensors)

    def regress(self, signature_name: str, examples: list[bytes]) -> tuple[str, list[float]]:
        """Regress: (the signature name used, one value per example)."""
        name, sig = self._example_signature(signature_name, REGRESS)
        input_name, outputs = preprocess_regression(sig)
        tensors = self._run_examples({input_name}, outputs, examples, "Regress")
        return name, postprocess_regression(sig, len(examples), outputs, tensors)

    def _run_examples(
        self, input_names: set[str], outputs: list[str], examples: list[bytes], api: str
    ) -> list[np.ndarray]:
        if not examples:
            raise RpcError("INVALID_ARGUMENT", "Input is empty.")
        batch = np.array(examples, dtype=object)
        return self.run({n: batch for n in sorted(input_names)}, outputs, api=api)

    def multi_inference(
        self, request: inference_pb2.MultiInferenceRequest
    ) -> inference_pb2.MultiInferenceResponse:
        """MultiInference: several classify/regress tasks over one input, one session run."""
        model_name, seen = "", set()
        inputs: set[str] = set()
        outputs: set[str] = set()
        for task in request.tasks:
            if not task.model_spec.name:
                raise RpcError("INVALID_ARGUMENT", "Found ModelSpec with an empty model name.")
            if model_name and task.model_spec.name != model_name:
                raise RpcError(
                    "INVALID_ARGUMENT",
                    "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
                )
            model_name = model_name or task.model_spec.name
            name = task.model_spec.signature_name or DEFAULT_SIGNATURE
            if name in seen:
                raise RpcError("INVALID_ARGUMENT", f"Duplicate evaluation of signature: {name}")
            seen.add(name)
            sig = self.signature_defs.get(name)
            if sig is None:
                raise RpcError(
                    "INVALID_ARGUMENT", f"Requested signature not found in model graph: {name}"
                )
            if task.method_name == CLASSIFY:
                input_name, names = preprocess_classification(sig)
            elif task.method_name == REGRESS:
                input_name, names = preprocess_regression(sig)
            else:
                raise RpcError(
                    "UNIMPLEMENTED", f"Unsupported signature method_name: {task.method_name}"
                )
            inputs.add(input_name)
            outputs.update(names)
        fetch = sorted(outputs)
        examples = examples_of(request.input)
        tensors = self._run_examples(inputs, fetch, examples, "")
        REGISTRY.example_counts.add(len(examples), model_name)
        REGISTRY.example_count_total.increment(model_name, by=len(examples))
        response = inference_pb2.MultiInferenceResponse()
        for task in request.tasks:
            sig = self.signature_defs[task.model_spec.signature_name or DEFAULT_SIGNATURE]
            result = response.results.add()
            if task.method_name == CLASSIFY:
                rows = postprocess_classification(sig, len(examples), fetch, tensors)
                fill_classification(result.classification_result, rows)
            else:
                values = postprocess_regression(sig, len(examples), fetch, tensors)
                for v in values:
                    result.regression_result.regressions.add(value=v)
            result.model_spec.name = task.model_spec.name
            result.model_spec.signature_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
            result.model_spec.version.value = self.version
        return response

    # --- warmup -------------------------------------------------------------------------------
    def warmup(self) -> int:
        """Replay ``assets.extra/tf_serving_warmup_requests``; any failure fails the load."""
        local = os.path.join(self.path, "assets.extra", WARMUP_FILE)
        if not self.options.warmup or not os.path.exists(local):
            return 0
        path = f"{self.source.rstrip('/')}/assets.extra/{WARMUP_FILE}"
        started, count, status = time.monotonic(), 0, "OK"
        try:
            for record in _records(local, path):
                log = prediction_log_pb2.PredictionLog()
                try:
                    log.ParseFromString(record)
                except DecodeError as exc:
                    raise RpcError(
                        "INVALID_ARGUMENT",
                        f"Failed to parse warmup record: {record.decode(errors='replace')} "
                        f"from {path}",
                    ) from exc
                for _ in range(max(self.options.warmup_iterations, 1)):
                    self._warmup_request(log)
                count += 1
                if count > MAX_WARMUP_RECORDS:
                    raise RpcError(
                        "INVALID_ARGUMENT",
                        f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) "
                        f"at {path}",
                    )
        except RpcError as exc:
            status = str(exc)
            raise
        finally:
            micros = (time.monotonic() - started) * 1e6
            REGISTRY.warmup_latency.add(micros, self.source, status)
            REGISTRY.warmup_records.increment(self.source, status, by=count)
        return count

    def _warmup_request(self, log: prediction_log_pb2.PredictionLog) -> None:
        """``saved_model_warmup.cc`` ``RunWarmupRequest``."""
        kind = log.WhichOneof("log_type")
        if kind == "predict_log":
            req = log.predict_log.request
            self.predict(req.model_spec.signature_name, dict(req.inputs), req.output_filter)
        elif kind == "classify_log":
            req = log.classify_log.request
            self.classify(req.model_spec.signature_name, examples_of(req.input))
        elif kind == "regress_log":
            req = log.regress_log.request
            self.regress(req.model_spec.signature_name, examples_of(req.input))
        elif kind == "multi_inference_log":
            self.multi_inference(log.multi_inference_log.request)
        elif kind in ("session_run_log", "predict_streamed_log"):
            number = prediction_log_pb2.PredictionLog.DESCRIPTOR.fields_by_name[kind].number
            raise RpcError("UNIMPLEMENTED", f"Unsupported log_type for warmup: {number}")


def _records(local: str, shown: str) -> Iterable[bytes]:
    """TFRecord records, with TF's reader messages (DATA_LOSS gets upstream's hint).

    ``shown`` replaces ``local`` in messages: a bucket's version is read from a copy.
    """
    try:
        yield from tf.compat.v1.io.tf_record_iterator(local)
    except tf.errors.DataLossError as exc:
        message = exc.message.replace(local, shown)
        raise RpcError(
            "DATA_LOSS", f"{message}. Please verify your warmup data is in TFRecord format."
        ) from exc
    except tf.errors.OpError as exc:
        error = from_tf_error(exc)
        raise RpcError(error.code, error.message.replace(local, shown)) from exc


def _verify_inputs_size(sig: meta_graph_pb2.SignatureDef, inputs: dict) -> None:
    """``predict_util.cc`` ``VerifyRequestInputsSize``."""
    n_req, n_sig = len(inputs), len(sig.inputs)
    if n_req > n_sig or (n_req < n_sig and not sig.defaults):
        req, expected = sorted(inputs), sorted(sig.inputs)
        extra = sorted(set(req) - set(expected))
        missing = sorted(set(expected) - set(req))
        raise RpcError(
            "INVALID_ARGUMENT",
            f"input size does not match signature: {n_req}!={n_sig} "
            f"len({{{','.join(req)}}}) != len({{{','.join(expected)}}}). "
            f"Sent extra: {{{','.join(extra)}}}. "
            f"Missing but required: {{{','.join(missing)}}}.",
        )


def _input_values(sig: meta_graph_pb2.SignatureDef, inputs: dict) -> dict[str, np.ndarray]:
    """TF ``GetInputValues``: feeds by tensor name, signature defaults filling the gaps."""
    feeds: dict[str, np.ndarray] = {}
    used: list[str] = []
    for alias, info in sig.inputs.items():
        if alias in inputs:
            value = inputs[alias]
            if isinstance(value, tensor_pb2.TensorProto):  # gRPC: parsed here, as upstream
                value = to_ndarray(value, alias)
            feeds[info.name] = value
            used.append(alias)
        elif alias in sig.defaults:
            feeds[info.name] = to_ndarray(sig.defaults[alias], alias)
        else:
            raise RpcError(
                "INVALID_ARGUMENT",
                f"Signature input alias: {alias}(feed name: {info.name}) not found in request "
                "and no default value provided. Inputs expected to be in the request "
                f"{{{','.join(sorted(inputs))}}}, or default input alias set: "
                f"{','.join(sorted(sig.defaults))}",
            )
    if len(used) != len(inputs):
        raise RpcError(
            "INVALID_ARGUMENT",
            f"Inputs contains invalid name. Used request inputs: {','.join(sorted(used))}, "
            f"request input: {','.join(sorted(inputs))}",
        )
    return feeds


def preprocess_classification(sig: meta_graph_pb2.SignatureDef) -> tuple[str, list[str]]:
    """``classifier.cc`` ``PreProcessClassification``: input tensor and output tensor names."""
    if len(sig.inputs) != 1:
        raise RpcError("INVALID_ARGUMENT", "Expected one input Tensor.")
    if len(sig.outputs) not in (1, 2):
        raise RpcError(
            "INVALID_ARGUMENT", f"Expected one or two output Tensors, found {len(sig.outputs)}"
        )
    if "inputs" not in sig.inputs:
        raise RpcError(
            "INVALID_ARGUMENT",
            f"No classification inputs found in SignatureDef: {signature_text(sig)}",
        )
    if "classes" not in sig.outputs and "scores" not in sig.outputs:
        raise RpcError(
            "INVALID_ARGUMENT",
            'Expected classification signature outputs to contain at least one of "classes" '
            f'or "scores". Signature was: {signature_text(sig)}',
        )
    names = [sig.outputs[k].name for k in ("classes", "scores") if k in sig.outputs]
    return sig.inputs["inputs"].name, names


def postprocess_classification(
    sig: meta_graph_pb2.SignatureDef, n: int, names: list[str], tensors: list[np.ndarray]
) -> list[Row]:
    """``PostProcessClassificationResult``: checks, then (label, score) per class."""
    by_name = dict(zip(names, tensors, strict=True))
    classes = by_name.get(sig.outputs["classes"].name) if "classes" in sig.outputs else None
    scores = by_name.get(sig.outputs["scores"].name) if "scores" in sig.outputs else None
    for what, t, want in (("classes", classes, "DT_STRING"), ("scores", scores, "DT_FLOAT")):
        if t is None:
            continue
        if t.ndim != 2:
            raise RpcError(
                "INVALID_ARGUMENT",
                f"Expected Tensor shape: [batch_size num_classes] but got {_shape_text(t)}",
            )
        if _dtype_enum_name(t) != want:
            raise RpcError(
                "INVALID_ARGUMENT", f"Expected {what} Tensor of {want}. Got: {_dtype_enum_name(t)}"
            )
        if t.shape[0] != n:
            raise RpcError(
                "INVALID_ARGUMENT", f"Expected {what} output batch size of {n}. Got: {t.shape[0]}"
            )
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise RpcError(
            "INVALID_ARGUMENT",
            "Tensors class and score should match in dim_size(1). Got "
            f"{classes.shape[1]} vs. {scores.shape[1]}",
        )
    k = (classes if classes is not None else scores).shape[1]
    rows = []
    for i in range(n):
        row = []
        for c in range(k):
            label = classes[i, c] if classes is not None else b""
            label = label.decode(errors="replace") if isinstance(label, bytes) else str(label)
            row.append((label, float(scores[i, c]) if scores is not None else None))
        rows.append(row)
    return rows


def fill_classification(result, rows: list[Row]) -> None:
    """A ClassificationResult proto from (label, score) rows (unset score stays unset)."""
    for row in rows:
        classifications = result.classifications.add()
        for label, score in row:
            cl = classifications.classes.add(label=label)
            if score is not None:
                cl.score = score


def preprocess_regression(sig: meta_graph_pb2.SignatureDef) -> tuple[str, list[str]]:
    """``regressor.cc`` ``PreProcessRegression``."""
    if len(sig.inputs) != 1:
        raise RpcError("INVALID_ARGUMENT", "Expected one input Tensor.")
    if len(sig.outputs) != 1:
        raise RpcError("INVALID_ARGUMENT", "Expected one output Tensor.")
    if "inputs" not in sig.inputs:
        raise RpcError(
            "INVALID_ARGUMENT",
            f"No regression inputs found in SignatureDef: {signature_text(sig)}",
        )
    if "outputs" not in sig.outputs:
        raise RpcError(
            "INVALID_ARGUMENT",
            f"No regression outputs found in SignatureDef: {signature_text(sig)}",
        )
    return sig.inputs["inputs"].name, [sig.outputs["outputs"].name]


def postprocess_regression(
    sig: meta_graph_pb2.SignatureDef, n: int, names: list[str], tensors: list[np.ndarray]
) -> list[float]:
    """``PostProcessRegressionResult``."""
    name = sig.outputs["outputs"].name
    by_name = dict(zip(names, tensors, strict=True))
    if name not in by_name:
        raise RpcError("INVALID_ARGUMENT", f"Could not find output tensor '{name}'")
    t = by_name[name]
    if not (t.ndim == 1 or (t.ndim == 2 and t.shape[1] == 1)):
        raise RpcError(
            "INVALID_ARGUMENT",
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but "
            f"got {_shape_text(t)}",
        )
    if t.shape[0] != n:
        raise RpcError(
            "INVALID_ARGUMENT",
            f"Input batch size did not match output batch size: {n} vs. {t.shape[0]}",
        )
    if _dtype_enum_name(t) != "DT_FLOAT":
        raise RpcError(
            "INVALID_ARGUMENT", f"Expected output Tensor of DT_FLOAT.  Got: {_dtype_enum_name(t)}"
        )
    if t.size != n:
        raise RpcError("INVALID_ARGUMENT", f"Expected output batch size to be {n}.  Got: {t.size}")
    return [float(v) for v in t.reshape(-1)]
