"""TF Serving's gRPC API (``--port``): PredictionService and ModelService.

Built on tensorflow-serving-api's generated servicers, over the same
:class:`~tfship.server.core.ServerCore` as the REST API. Each RPC follows its upstream
implementation (``model_servers/prediction_service_impl.cc``, ``model_service_impl.cc``,
``servables/tensorflow/*_impl.cc``): ``Missing ModelSpec`` when the request has none, the
status of a failure sent as the gRPC status (messages over 1024 bytes cut, as
``ToGRPCStatus`` does), response tensors in the typed fields unless
``--enable_serialization_as_tensor_content``, and messages up to 2 GiB each way
(``server.cc`` ``SetMaxMessageSize(INT_MAX)``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent import futures

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
    status_pb2,
)

from tfship.server.config import from_proto
from tfship.server.core import ServerCore
from tfship.server.monitoring import REGISTRY
from tfship.server.servable import examples_of, fill_classification
from tfship.server.status import CODES, RpcError, grpc_message
from tfship.server.tensors import to_proto

MAX_MESSAGE = 2**31 - 1


def _abort(context: grpc.ServicerContext, exc: RpcError):
    code = getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN)
    context.abort(code, grpc_message(exc.message))


def _spec(request) -> tuple[str, int | None, str | None]:
    """(name, version, label) of a request's model spec; ``Missing ModelSpec`` without one."""
    if not request.HasField("model_spec"):
        raise RpcError("INVALID_ARGUMENT", "Missing ModelSpec")
    spec = request.model_spec
    version = spec.version.value if spec.HasField("version") else None
    label = spec.version_label if spec.WhichOneof("version_choice") == "version_label" else None
    return spec.name, version, label


def _timed(api: str, method: Callable):
    """Record ``request_count`` and ``request_latency`` as PredictionServiceImpl does."""

    def wrapper(self, request, context):
        started = time.monotonic()
        name = request.model_spec.name
        try:
            response = method(self, request, context)
        except RpcError as exc:
            REGISTRY.request_count.increment(name, exc.code)
            return _abort(context, exc)
        REGISTRY.request_latency.add((time.monotonic() - started) * 1e6, name, api, "GRPC")
        REGISTRY.request_count.increment(name, "OK")
        return response

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress, MultiInference, GetModelMetadata."""

    def __init__(self, core: ServerCore, as_content: bool = False) -> None:
        self.core = core
        self.as_content = as_content

    def _predict(self, request, context):
        with self.core.handle(*_spec(request)) as servable:
            name, outputs = servable.predict(
                request.model_spec.signature_name,
                dict(request.inputs),
                list(request.output_filter),
            )
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.signature_name = name
        response.model_spec.version.value = servable.version
        for alias, value in outputs.items():
            response.outputs[alias].CopyFrom(to_proto(value, self.as_content))
        return response

    def _classify(self, request, context):
        with self.core.handle(*_spec(request)) as servable:
            name, rows = servable.classify(
                request.model_spec.signature_name, examples_of(request.input)
            )
        response = classification_pb2.ClassificationResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.signature_name = name
        response.model_spec.version.value = servable.version
        fill_classification(response.result, rows)
        return response

    def _regress(self, request, context):
        with self.core.handle(*_spec(request)) as servable:
            name, values = servable.regress(
                request.model_spec.signature_name, examples_of(request.input)
            )
        response = regression_pb2.RegressionResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.signature_name = name
        response.model_spec.version.value = servable.version
        for v in values:
            response.result.regressions.add(value=v)
        return response

    Predict = _timed("Predict", _predict)  # noqa: N815
    Classify = _timed("Classify", _classify)  # noqa: N815
    Regress = _timed("Regress", _regress)  # noqa: N815

    def MultiInference(self, request, context):  # noqa: N802
        """``multi_inference_helper.cc``: the servable named by the first task."""
        try:
            spec = request.tasks[0].model_spec if request.tasks else None
            holder = inference_pb2.InferenceTask()
            if spec is not None:
                holder.model_spec.CopyFrom(spec)
            else:
                holder.model_spec.SetInParent()
            with self.core.handle(*_spec(holder)) as servable:
                return servable.multi_inference(request)
        except RpcError as exc:
            return _abort(context, exc)

    def GetModelMetadata(self, request, context):  # noqa: N802
        """``get_model_metadata_impl.cc``: only ``signature_def`` is supported."""
        try:
            if not request.HasField("model_spec"):
                raise RpcError("INVALID_ARGUMENT", "Missing ModelSpec")
            if not request.metadata_field:
                raise RpcError(
                    "INVALID_ARGUMENT",
                    "GetModelMetadataRequest must specify at least one metadata_field",
                )
            for field in request.metadata_field:
                if field != "signature_def":
                    raise RpcError("INVALID_ARGUMENT", f"Metadata field {field} is not supported")
            servable = self.core.servable(*_spec(request))
        except RpcError as exc:
            return _abort(context, exc)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in servable.signature_defs.items():
            sig_map.signature_def[key].CopyFrom(sig)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(sig_map)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus, HandleReloadConfigRequest."""

    def __init__(self, core: ServerCore) -> None:
        self.core = core

    def GetModelStatus(self, request, context):  # noqa: N802
        """``get_model_status_impl.cc``: a version label is not looked at (all versions)."""
        try:
            if not request.HasField("model_spec"):
                raise RpcError("INVALID_ARGUMENT", "Missing ModelSpec")
            spec = request.model_spec
            version = spec.version.value if spec.HasField("version") else None
            rows = self.core.status(spec.name, version)
        except RpcError as exc:
            return _abort(context, exc)
        response = get_model_status_pb2.GetModelStatusResponse()
        for r in rows:
            s = response.model_version_status.add(version=r.version)
            s.state = get_model_status_pb2.ModelVersionStatus.State.Value(r.state)
            s.status.error_code = CODES.get(r.error_code, 2)
            s.status.error_message = r.error_message
        return response

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        """``model_service_impl.cc``: the reload's status is also the RPC's status.

        It returns once every newly added model has a version AVAILABLE (or failed).
        """
        response = model_management_pb2.ReloadConfigResponse()
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise RpcError(
                    "INVALID_ARGUMENT",
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                    "ModelConfigList is currently supported",
                )
            self.core.reload(from_proto(request.config))
        except RpcError as exc:
            response.status.CopyFrom(
                status_pb2.StatusProto(error_code=CODES.get(exc.code, 2), error_message=exc.message)
            )
            return _abort(context, exc)
        return response


def start_grpc(
    core: ServerCore, host: str, port: int, as_content: bool = False
) -> tuple[grpc.Server, int]:
    """Start the gRPC server; return it and the bound port."""
    workers = 4 * (os.cpu_count() or 1)  # --grpc_max_threads' default
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(core, as_content), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, bound
