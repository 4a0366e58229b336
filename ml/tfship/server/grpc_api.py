"""TF Serving's gRPC API (port 8500): PredictionService and ModelService.

Built on tensorflow-serving-api's generated servicers, over the same
:class:`~tfship.server.core.ServerCore` as the REST API, so both answer alike.
"""

from __future__ import annotations

from concurrent import futures

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
    status_pb2,
)

from tfship.server.core import RpcError, ServerCore, configs_from_proto


def _spec(core: ServerCore, spec):
    version = spec.version.value if spec.HasField("version") else None
    label = spec.version_label or None
    return core.servable(spec.name, version, label)


def _abort(context: grpc.ServicerContext, exc: RpcError):
    context.abort(getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN), exc.message)


def _examples(input_proto) -> list[bytes]:
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in input_proto.example_list.examples]
    if kind == "example_list_with_context":
        ctx = input_proto.example_list_with_context.context
        out = []
        for e in input_proto.example_list_with_context.examples:
            merged = type(ctx)()
            merged.CopyFrom(ctx)
            merged.MergeFrom(e)
            out.append(merged.SerializeToString())
        return out
    raise RpcError("INVALID_ARGUMENT", "Input is empty")


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress, GetModelMetadata."""

    def __init__(self, core: ServerCore) -> None:
        self.core = core

    def Predict(self, request, context):  # noqa: N802
        try:
            servable = _spec(self.core, request.model_spec)
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            outputs = servable.run(
                request.model_spec.signature_name, inputs, list(request.output_filter) or None
            )
        except RpcError as exc:
            return _abort(context, exc)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = request.model_spec.signature_name or "serving_default"
        for k, v in outputs.items():
            response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
        return response

    def Classify(self, request, context):  # noqa: N802
        try:
            servable = _spec(self.core, request.model_spec)
            rows = servable.classify(request.model_spec.signature_name, _examples(request.input))
        except RpcError as exc:
            return _abort(context, exc)
        response = classification_pb2.ClassificationResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        for row in rows:
            c = response.result.classifications.add()
            for label, score in row:
                c.classes.add(label=label, score=score)
        return response

    def Regress(self, request, context):  # noqa: N802
        try:
            servable = _spec(self.core, request.model_spec)
            values = servable.regress(request.model_spec.signature_name, _examples(request.input))
        except RpcError as exc:
            return _abort(context, exc)
        response = regression_pb2.RegressionResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        for v in values:
            response.result.regressions.add(value=v)
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802
        try:
            if list(request.metadata_field) != ["signature_def"]:
                raise RpcError(
                    "INVALID_ARGUMENT", "Metadata field signature_def is the only one supported"
                )
            servable = _spec(self.core, request.model_spec)
        except RpcError as exc:
            return _abort(context, exc)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in servable.signature_defs.items():
            sig_map.signature_def[key].CopyFrom(sig)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(sig_map)
        return response

    def MultiInference(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not supported")


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus, HandleReloadConfigRequest."""

    def __init__(self, core: ServerCore) -> None:
        self.core = core

    def GetModelStatus(self, request, context):  # noqa: N802
        spec = request.model_spec
        try:
            version = spec.version.value if spec.HasField("version") else None
            rows = self.core.status(spec.name, version, spec.version_label or None)
        except RpcError as exc:
            return _abort(context, exc)
        response = get_model_status_pb2.GetModelStatusResponse()
        for r in rows:
            s = response.model_version_status.add(version=r.version)
            s.state = get_model_status_pb2.ModelVersionStatus.State.Value(r.state)
            s.status.error_code = getattr(grpc.StatusCode, r.error_code).value[0]
            s.status.error_message = r.error_message
        return response

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        response = model_management_pb2.ReloadConfigResponse()
        try:
            self.core.set_configs(configs_from_proto(request.config))
            self.core.poll()
        except RpcError as exc:
            response.status.CopyFrom(
                status_pb2.StatusProto(
                    error_code=getattr(grpc.StatusCode, exc.code).value[0],
                    error_message=exc.message,
                )
            )
        return response


def start_grpc(core: ServerCore, host: str, port: int, workers: int = 8) -> tuple[grpc.Server, int]:
    """Start the gRPC server; return it and the bound port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(core), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, bound
