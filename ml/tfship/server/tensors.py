"""TensorProto <-> NumPy, with TensorFlow's C++ semantics (``Tensor::FromProto``, ``AsProtoField``).

The gRPC API carries tensors as ``TensorProto``. TF Serving converts a request tensor by its
*own* dtype (never the signature's: a wrong dtype is the session's error, not a cast) and
writes responses into the typed repeated fields (``float_val``...) unless
``--enable_serialization_as_tensor_content`` asks for raw ``tensor_content``
(``servables/tensorflow/predict_util.cc`` ``PostProcessPredictionResult``).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from tfship.server.status import RpcError

# TF's DataTypeString(): the names its error messages use.
DTYPE_NAMES = {
    types_pb2.DT_FLOAT: "float",
    types_pb2.DT_DOUBLE: "double",
    types_pb2.DT_INT32: "int32",
    types_pb2.DT_UINT8: "uint8",
    types_pb2.DT_INT16: "int16",
    types_pb2.DT_INT8: "int8",
    types_pb2.DT_STRING: "string",
    types_pb2.DT_COMPLEX64: "complex64",
    types_pb2.DT_INT64: "int64",
    types_pb2.DT_BOOL: "bool",
    types_pb2.DT_QINT8: "qint8",
    types_pb2.DT_QUINT8: "quint8",
    types_pb2.DT_QINT32: "qint32",
    types_pb2.DT_BFLOAT16: "bfloat16",
    types_pb2.DT_QINT16: "qint16",
    types_pb2.DT_QUINT16: "quint16",
    types_pb2.DT_UINT16: "uint16",
    types_pb2.DT_COMPLEX128: "complex128",
    types_pb2.DT_HALF: "half",
    types_pb2.DT_RESOURCE: "resource",
    types_pb2.DT_VARIANT: "variant",
    types_pb2.DT_UINT32: "uint32",
    types_pb2.DT_UINT64: "uint64",
}

# Tensor::AsProtoField: which repeated field holds each dtype's values.
_FIELD = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_QINT8: "int_val",
    types_pb2.DT_QUINT8: "int_val",
    types_pb2.DT_QINT16: "int_val",
    types_pb2.DT_QUINT16: "int_val",
    types_pb2.DT_QINT32: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
    types_pb2.DT_COMPLEX64: "scomplex_val",
    types_pb2.DT_COMPLEX128: "dcomplex_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_BFLOAT16: "half_val",
}


def dtype_name(dtype: int) -> str:
    """DataTypeString of a ``types_pb2`` enum value (``float``, ``int64``...)."""
    return DTYPE_NAMES.get(dtype, f"unknown dtype enum ({dtype})")


def dtype_of(array: np.ndarray) -> int:
    """The ``types_pb2`` enum of a NumPy array (object arrays hold strings)."""
    if array.dtype == object or array.dtype.kind in "SU":
        return types_pb2.DT_STRING
    return tf.dtypes.as_dtype(array.dtype).as_datatype_enum


def to_ndarray(proto: tensor_pb2.TensorProto, alias: str) -> np.ndarray:
    """A request TensorProto as NumPy, in the proto's own dtype (``Tensor::FromProto``).

    A typed field with fewer values than the shape holds is padded with its last value and
    an empty one is zeros, as TF does; what TF cannot parse is ``tensor parsing error``
    (TF ``cc/saved_model/util.cc`` ``GetInputValues``).
    """
    try:
        shape = [d.size for d in proto.tensor_shape.dim]
        if any(d < 0 for d in shape) or proto.dtype not in _FIELD:
            raise ValueError("bad shape or dtype")
        if proto.tensor_content or proto.dtype == types_pb2.DT_STRING:
            return tf.make_ndarray(proto)
        field = getattr(proto, _FIELD[proto.dtype])
        n = int(np.prod(shape, dtype=np.int64))
        if len(field) > n and proto.dtype not in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128):
            trimmed = tensor_pb2.TensorProto()
            trimmed.CopyFrom(proto)
            del getattr(trimmed, _FIELD[proto.dtype])[n:]
            proto = trimmed
        return tf.make_ndarray(proto)
    except (ValueError, TypeError, IndexError) as exc:
        raise RpcError("INVALID_ARGUMENT", f"tensor parsing error: {alias}") from exc


def _encode_strings(values: list[bytes]) -> bytes:
    """TF's EncodeStringList: every length as a varint, then every string's bytes."""
    out = bytearray()
    for v in values:
        n = len(v)
        while True:
            byte = n & 0x7F
            n >>= 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                break
    return bytes(out) + b"".join(values)


def _as_bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def to_proto(array: np.ndarray, as_content: bool = False) -> tensor_pb2.TensorProto:
    """A response tensor: typed fields (``AsProtoField``), or ``tensor_content`` if asked."""
    array = np.asarray(array)
    dtype = dtype_of(array)
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for d in array.shape:
        proto.tensor_shape.dim.add(size=d)
    flat = array.reshape(-1)
    if dtype == types_pb2.DT_STRING:
        values = [_as_bytes(v) for v in flat.tolist()]
        if as_content:
            proto.tensor_content = _encode_strings(values)
        else:
            proto.string_val.extend(values)
        return proto
    if as_content:
        little = flat.astype(flat.dtype.newbyteorder("<"))
        proto.tensor_content = np.ascontiguousarray(little).tobytes()
        return proto
    field = getattr(proto, _FIELD[dtype])
    if dtype in (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16):
        field.extend(flat.view(np.uint16).astype(np.int32).tolist())  # the raw 16 bits
    elif dtype in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128):
        field.extend(np.stack([flat.real, flat.imag], axis=-1).reshape(-1).tolist())
    else:
        field.extend(flat.tolist())
    return proto
