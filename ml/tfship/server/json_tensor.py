"""REST bodies <-> tensors, as ``tensorflow_serving/util/json_tensor.cc`` does it.

The body is parsed, and values in error messages are printed, as rapidjson does
(:mod:`tfship.server.rapidjson`). Each JSON value is converted by the *signature's* dtype
(``AddValueToTensor``): integers must fit the type class rapidjson assigns them (so ``2**63``
for an int64 input is a type error), a float input takes any number (too large ones become
infinity), and int8/int16/uint8 inputs wrap as C++ narrowing does.
"""

from __future__ import annotations

import base64
import json
import math
import re

import numpy as np

from tfship.server.rapidjson import debug_string, escape, json_type
from tfship.server.status import RpcError

# DataType enum -> (name in messages, NumPy type, rapidjson class accepted).
DTYPES: dict[int, tuple[str, type, str]] = {
    1: ("float", np.float32, "number"),
    2: ("double", np.float64, "number"),
    3: ("int32", np.int32, "int"),
    4: ("uint8", np.uint8, "int"),
    5: ("int16", np.int16, "int"),
    6: ("int8", np.int8, "int"),
    7: ("string", object, "string"),
    9: ("int64", np.int64, "int64"),
    10: ("bool", np.bool_, "bool"),
    22: ("uint32", np.uint32, "uint"),
    23: ("uint64", np.uint64, "uint64"),
}
# Types json_tensor.cc has no conversion for (the names its UNIMPLEMENTED error uses).
UNCONVERTIBLE = {14: "bfloat16", 17: "uint16", 18: "complex128", 19: "half", 8: "complex64"}

_RANGES = {
    "int": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}


# --------------------------------------------------------------------------------------------
# JSON -> tensors
# --------------------------------------------------------------------------------------------


def is_b64(value: object) -> bool:
    """``IsValBase64Object``: an object whose only key is ``b64``, a string."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def b64decode(text: str) -> bytes:
    """``absl::Base64Unescape``: the standard alphabet, whitespace skipped, padding optional."""
    clean = re.sub(r"\s", "", text)
    if not re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", clean) or len(clean.rstrip("=")) % 4 == 1:
        raise RpcError("INVALID_ARGUMENT", "Unable to base64 decode")
    body = clean.rstrip("=")
    return base64.b64decode(body + "=" * (-len(body) % 4))


def _type_error(value: object, name: str) -> RpcError:
    return RpcError(
        "INVALID_ARGUMENT",
        f"JSON Value: {debug_string(value)} Type: {json_type(value)} is not of expected type: "
        f"{name}",
    )


def _scalar(value: object, dtype: int) -> object:
    """``AddValueToTensor`` for one leaf (plus the base64 objects of string inputs)."""
    if dtype not in DTYPES:
        name = UNCONVERTIBLE.get(dtype, f"unknown dtype enum ({dtype})")
        raise RpcError(
            "UNIMPLEMENTED", f"Conversion of JSON Value: {debug_string(value)} to type: {name}"
        )
    name, _, kind = DTYPES[dtype]
    if isinstance(value, dict):
        if kind != "string":
            raise _type_error(value, name)
        if not is_b64(value):
            raise RpcError(
                "INVALID_ARGUMENT",
                f"JSON Value: {debug_string(value)} not formatted correctly for base64 data",
            )
        return b64decode(value["b64"])
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "number":
        if not number:
            raise _type_error(value, name)
        return float(value)
    if kind == "string":
        if not isinstance(value, str):
            raise _type_error(value, name)
        return value.encode()
    if kind == "bool":
        if not isinstance(value, bool):
            raise _type_error(value, name)
        return value
    low, high = _RANGES[kind]
    if not (number and isinstance(value, int) and low <= value <= high):
        raise _type_error(value, name)
    return value


def _shape(value: object) -> list[int]:
    """``GetDenseTensorShape``: sizes along the first element of each level."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: object, level: int, shape: list[int], dtype: int, out: list) -> None:
    """``FillTensorProto``."""
    if not isinstance(value, list):
        if level != len(shape):
            raise RpcError(
                "INVALID_ARGUMENT",
                f"JSON Value: {debug_string(value)} found at incorrect level: {level + 1} in "
                f"the JSON DOM. Expected at level: {len(shape)}",
            )
        out.append(_scalar(value, dtype))
        return
    if level >= len(shape):
        raise RpcError(
            "INVALID_ARGUMENT",
            f"Encountered list at unexpected level: {level} expected < {len(shape)}",
        )
    if len(value) != shape[level]:
        raise RpcError(
            "INVALID_ARGUMENT",
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected "
            f"size: {shape[level]}",
        )
    for v in value:
        _fill(v, level + 1, shape, dtype, out)


def to_array(value: object, dtype: int) -> np.ndarray:
    """One JSON value (scalar or nested lists) -> an array of the signature's dtype.

    Integers are narrowed as C++ narrows ``int_val`` into int8/int16/uint8 (300 is 44 as
    uint8), floats as ``(float)double`` (1e39 is inf as float32).
    """
    shape = _shape(value)
    flat: list = []
    _fill(value, 0, shape, dtype, flat)
    numpy_type = DTYPES[dtype][1] if dtype in DTYPES else object
    if numpy_type is object:
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
    elif np.issubdtype(numpy_type, np.integer):
        wide = np.uint64 if numpy_type == np.uint64 else np.int64
        arr = np.array(flat, dtype=wide).astype(numpy_type)
    else:
        with np.errstate(over="ignore"):
            arr = np.array(flat, dtype=np.float64).astype(numpy_type)
    return arr.reshape(shape)


def signature_name_of(doc: dict) -> str:
    """``FillSignature``: the optional ``signature_name`` string."""
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise RpcError(
            "INVALID_ARGUMENT",
            f"JSON Value: {debug_string(doc)} not formatted correctly. 'signature_name' key "
            "must be a string value.",
        )
    return name


def predict_inputs(doc: dict, info: dict[str, int]) -> tuple[dict[str, np.ndarray], str]:
    """``FillPredictRequestFromJson``: tensors by input name, and the format (row/columnar)."""
    if "instances" in doc and "inputs" in doc:
        raise RpcError(
            "INVALID_ARGUMENT",
            f"JSON Value: {debug_string(doc)} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist ",
        )
    if "instances" in doc:
        rows = doc["instances"]
        if not isinstance(rows, list):
            raise RpcError(
                "INVALID_ARGUMENT",
                f"JSON Value: {debug_string(doc)} Excepting 'instances' to be an list/array",
            )
        if not rows:
            raise RpcError(
                "INVALID_ARGUMENT",
                f"JSON Value: {debug_string(doc)} No values in 'instances' array",
            )
        return _from_instances(rows, info), "row"
    if "inputs" in doc:
        return _from_inputs(doc["inputs"], info), "columnar"
    raise RpcError("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key")


def _is_object(v: object) -> bool:
    return isinstance(v, dict) and not is_b64(v)


def _from_instances(rows: list, info: dict[str, int]) -> dict[str, np.ndarray]:
    """``FillTensorMapFromInstancesList``."""
    if not isinstance(rows[0], dict) and len(info) > 1:
        raise RpcError(
            "INVALID_ARGUMENT",
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map",
        )
    as_objects = _is_object(rows[0])
    names = sorted(info)
    columns: dict[str, list] = {n: [] for n in names}
    shapes: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if as_objects:
            if not _is_object(row):
                raise RpcError(
                    "INVALID_ARGUMENT", f"Expecting object but got list at item {i} of input list"
                )
            for key, value in row.items():
                try:
                    if key not in info:
                        raise RpcError(
                            "INVALID_ARGUMENT", f"JSON object: does not have named input: {key}"
                        )
                    _add_item(columns, shapes, key, value, info[key])
                except RpcError as exc:
                    raise RpcError(
                        "INVALID_ARGUMENT",
                        f"Failed to process element: {i} key: {key} of 'instances' list. "
                        f"Error: {exc}",
                    ) from exc
            if set(row) != set(names):
                raise RpcError(
                    "INVALID_ARGUMENT",
                    f"Failed to process element: {i} of 'instances' list. JSON object: "
                    f"{debug_string(row)} keys must be equal to: {','.join(names)}",
                )
        else:
            if _is_object(row):
                raise RpcError(
                    "INVALID_ARGUMENT",
                    f"Expecting value/list but got object at item {i} of input list",
                )
            try:
                _add_item(columns, shapes, names[0], row, info[names[0]])
            except RpcError as exc:
                raise RpcError(
                    "INVALID_ARGUMENT",
                    f"Failed to process element: {i} of 'instances' list. Error: {exc}",
                ) from exc
    return {n: np.stack(v) for n, v in columns.items() if v}


def _add_item(columns, shapes, name, value, dtype) -> None:
    """``AddInstanceItem``: every row of one input must have the same size and shape."""
    arr = to_array(value, dtype)
    if name in shapes and shapes[name] != list(arr.shape):
        if int(np.prod(shapes[name])) != arr.size:
            msg = f"Expecting tensor size: {int(np.prod(shapes[name]))} but got: {arr.size}"
        else:
            msg = (
                f"Expecting shape [{','.join(map(str, shapes[name]))}] but got: "
                f"[{','.join(map(str, arr.shape))}]"
            )
        raise RpcError("INVALID_ARGUMENT", msg)
    shapes[name] = list(arr.shape)
    columns[name].append(arr)


def _from_inputs(value: object, info: dict[str, int]) -> dict[str, np.ndarray]:
    """``FillTensorMapFromInputsMap``."""
    if not _is_object(value):
        if len(info) > 1:
            raise RpcError(
                "INVALID_ARGUMENT",
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map",
            )
        name = next(iter(info))
        return {name: to_array(value, info[name])}
    out = {}
    for name in sorted(info):
        if name not in value:
            raise RpcError("INVALID_ARGUMENT", f"Missing named input: {name} in 'inputs' object.")
        out[name] = to_array(value[name], info[name])
    return out


# --------------------------------------------------------------------------------------------
# tensors -> JSON
# --------------------------------------------------------------------------------------------


# AddSingleValueAndAdvance writes these; any other output dtype is an error.
_WRITABLE = {
    np.dtype(t)
    for t in (
        np.float32,
        np.float64,
        np.int32,
        np.int16,
        np.int8,
        np.uint8,
        np.int64,
        np.bool_,
        np.uint32,
        np.uint64,
    )
}


def format_float(value: float, single: bool = True) -> str:
    """TF Serving's WriteDecimal: ``%g``, or ``%.9g``/``%.17g`` if that does not round-trip."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:g}"
    cast = np.float32 if single else float
    if cast(float(text)) != cast(value):
        text = f"{value:.9g}" if single else f"{value:.17g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _write(arr: np.ndarray, as_bytes: bool) -> str:
    if not isinstance(arr, np.ndarray | np.generic):  # an element of a string (object) tensor
        arr = np.asarray(arr, dtype=object)
    if arr.ndim == 0:
        v = arr.item()
        if arr.dtype.kind == "f":
            return format_float(float(v), arr.dtype != np.float64)
        if arr.dtype.kind == "b":
            return "true" if v else "false"
        if isinstance(v, bytes):
            if as_bytes:
                return json.dumps({"b64": base64.b64encode(v).decode()})
            return json.dumps(v.decode("utf-8", errors="replace"), ensure_ascii=False)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        return str(int(v))
    return "[" + ",".join(_write(a, as_bytes) for a in arr) + "]"


def predict_response(outputs: dict[str, np.ndarray], fmt: str) -> str:
    """``{"predictions": ...}`` (row) or ``{"outputs": ...}`` (columnar)."""
    names = sorted(outputs)
    several = len(names) > 1
    for n in names:
        if outputs[n].dtype not in _WRITABLE and outputs[n].dtype != object:
            from tfship.server.tensors import dtype_name, dtype_of  # TF: only on this error

            raise RpcError(
                "INVALID_ARGUMENT",
                f"Failed to write JSON value for tensor type: {dtype_name(dtype_of(outputs[n]))}",
            )
    if fmt == "columnar":
        if several:
            body = ",".join(
                f"{json.dumps(n)}:{_write(outputs[n], n.endswith('_bytes'))}" for n in names
            )
            return '{"outputs":{' + body + "}}"
        n = names[0]
        return '{"outputs":' + _write(outputs[n], n.endswith("_bytes")) + "}"
    batch = None
    for n in names:
        if outputs[n].ndim == 0:
            raise RpcError("INVALID_ARGUMENT", f"Tensor name: {n} has no shape information ")
        if batch is not None and outputs[n].shape[0] != batch:
            raise RpcError(
                "INVALID_ARGUMENT",
                f"Tensor name: {n} has inconsistent batch size: {outputs[n].shape[0]} "
                f"expecting: {batch}",
            )
        batch = outputs[n].shape[0]
    rows = []
    for i in range(batch or 0):
        if several:
            rows.append(
                "{"
                + ",".join(
                    f"{json.dumps(n)}:{_write(outputs[n][i], n.endswith('_bytes'))}" for n in names
                )
                + "}"
            )
        else:
            rows.append(_write(outputs[names[0]][i], names[0].endswith("_bytes")))
    return '{"predictions":[' + ",".join(rows) + "]}"


def error_body(message: str) -> str:
    """``MakeJsonFromStatus``: the pretty-written ``{"error": ...}``."""
    return "{\n    " + '"error": ' + escape(message) + "\n}"
