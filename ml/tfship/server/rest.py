"""TF Serving's REST API (port 8501) over :class:`~tfship.server.core.ServerCore`.

Request parsing and response writing follow tensorflow_serving/util/json_tensor.cc and
model_servers/http_rest_api_handler.cc: the same routes (case-insensitive, ``/v1/`` only), row
(``instances``) and columnar (``inputs``) formats, ``{"b64": ...}`` strings, NaN/Infinity,
float formatting (shortest of ``%g`` and ``%.9g`` that round-trips, whole numbers with ``.0``),
and errors as ``{"error": "<message>"}`` with TF Serving's HTTP code for each status.
"""

from __future__ import annotations

import base64
import json
import math
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from google.protobuf import json_format

from tfship.server.core import RpcError, ServerCore

HTTP_CODE = {
    "OK": 200,
    "CANCELLED": 499,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}

PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.I,
)
STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.I,
)
MAX_BODY_BYTES = 64 * 1024 * 1024
FLOAT32_MAX = float(np.finfo(np.float32).max)

# DataType enum -> (name in messages, kind). Kinds decide which JSON values are accepted.
DTYPES = {
    1: ("float", "float"),
    2: ("double", "float"),
    3: ("int32", "int"),
    4: ("uint8", "int"),
    5: ("int16", "int"),
    6: ("int8", "int"),
    7: ("string", "string"),
    9: ("int64", "int"),
    10: ("bool", "bool"),
    19: ("half", "float"),
    22: ("uint32", "int"),
    23: ("uint64", "int"),
}
NUMPY = {
    1: np.float32,
    2: np.float64,
    3: np.int32,
    4: np.uint8,
    5: np.int16,
    6: np.int8,
    7: object,
    9: np.int64,
    10: np.bool_,
    19: np.float16,
    22: np.uint32,
    23: np.uint64,
}


# --------------------------------------------------------------------------------------------
# JSON -> tensors
# --------------------------------------------------------------------------------------------


def _json_text(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _json_type(value: object) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _is_b64(value: object) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _scalar(value: object, dtype: int) -> object:
    name, kind = DTYPES.get(dtype, (str(dtype), "?"))
    if kind == "?":
        raise RpcError(
            "UNIMPLEMENTED", f"Conversion of JSON Value: {_json_text(value)} to type: {name}"
        )
    if isinstance(value, dict):
        if kind == "string":
            if not _is_b64(value):
                raise RpcError(
                    "INVALID_ARGUMENT",
                    f"JSON Value: {_json_text(value)} not formatted correctly for base64 data",
                )
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError as exc:
                raise RpcError("INVALID_ARGUMENT", "Unable to base64 decode") from exc
        raise _type_error(value, name)
    ok = {
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "string": isinstance(value, str),
        "bool": isinstance(value, bool),
    }[kind]
    if not ok:
        raise _type_error(value, name)
    too_big = isinstance(value, float) and math.isfinite(value) and abs(value) > FLOAT32_MAX
    if kind == "float" and dtype == 1 and too_big:
        raise RpcError(
            "INVALID_ARGUMENT",
            f"Cannot convert JSON value: {_json_text(value)} to float without loss of precision.",
        )
    return value.encode() if kind == "string" else value


def _type_error(value: object, name: str) -> RpcError:
    return RpcError(
        "INVALID_ARGUMENT",
        f"JSON Value: {_json_text(value)} Type: "
        f"{_json_type(value)} is not of expected type: {name}",
    )


def _shape(value: object) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: object, level: int, shape: list[int], dtype: int, out: list) -> None:
    if not isinstance(value, list):
        if level != len(shape):
            raise RpcError(
                "INVALID_ARGUMENT",
                f"JSON Value: {_json_text(value)} found at "
                f"incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {len(shape)}",
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
            f"Encountered list at unexpected size: {len(value)} "
            f"at level: {level} expected size: {shape[level]}",
        )
    for v in value:
        _fill(v, level + 1, shape, dtype, out)


def to_array(value: object, dtype: int) -> np.ndarray:
    """One JSON value (scalar or nested lists) -> a NumPy array of the signature's dtype."""
    shape = _shape(value)
    flat: list = []
    _fill(value, 0, shape, dtype, flat)
    arr = np.array(flat, dtype=NUMPY.get(dtype, object))
    return arr.reshape(shape)


def parse_json(body: bytes) -> dict:
    """Parse a request body as rapidjson does for TF Serving (NaN/Infinity allowed)."""
    if not body:
        raise RpcError("INVALID_ARGUMENT", "JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RpcError(
            "INVALID_ARGUMENT",
            f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}",
        ) from exc
    if not text.strip():
        raise RpcError(
            "INVALID_ARGUMENT", f"JSON Parse error: The document is empty. at offset: {len(text)}"
        )
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        reason = {
            "Expecting value": "Invalid value.",
            "Extra data": "The document root must not be followed by other values.",
            "Unterminated string starting at": "Missing a closing quotation mark in string.",
        }.get(exc.msg, "Invalid value.")
        raise RpcError(
            "INVALID_ARGUMENT", f"JSON Parse error: {reason} at offset: {exc.pos}"
        ) from exc
    except RecursionError as exc:
        raise RpcError("INVALID_ARGUMENT", "JSON Parse error: nesting too deep") from exc
    if not isinstance(doc, dict):
        raise RpcError("INVALID_ARGUMENT", f"JSON Value: {_json_text(doc)} Is not object")
    return doc


def signature_name_of(doc: dict) -> str:
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise RpcError(
            "INVALID_ARGUMENT",
            f"JSON Value: {_json_text(doc)} not formatted "
            "correctly. 'signature_name' key must be a string value.",
        )
    return name


def predict_inputs(doc: dict, inputs_info: dict[str, int]) -> tuple[dict[str, np.ndarray], str]:
    """The request's tensors by input name, and its format ("row" or "columnar")."""
    if "instances" in doc and "inputs" in doc:
        raise RpcError(
            "INVALID_ARGUMENT",
            f"JSON Value: {_json_text(doc)} Not formatted "
            "correctly expecting only one of 'inputs' or "
            "'instances' keys to exist ",
        )
    if "instances" in doc:
        rows = doc["instances"]
        if not isinstance(rows, list):
            raise RpcError(
                "INVALID_ARGUMENT",
                f"JSON Value: {_json_text(doc)} Excepting 'instances' to be an list/array",
            )
        if not rows:
            raise RpcError(
                "INVALID_ARGUMENT", f"JSON Value: {_json_text(doc)} No values in 'instances' array"
            )
        return _from_instances(rows, inputs_info), "row"
    if "inputs" in doc:
        return _from_inputs(doc["inputs"], inputs_info), "columnar"
    raise RpcError("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key")


def _is_object(v: object) -> bool:
    return isinstance(v, dict) and not _is_b64(v)


def _from_instances(rows: list, info: dict[str, int]) -> dict[str, np.ndarray]:
    if not isinstance(rows[0], dict) and len(info) > 1:
        raise RpcError(
            "INVALID_ARGUMENT",
            "instances is a plain list, but expecting list of "
            "objects as multiple input tensors required as per "
            "tensorinfo_map",
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
                if key not in info:
                    raise RpcError(
                        "INVALID_ARGUMENT",
                        f"Failed to process element: {i} key: "
                        f"{key} of 'instances' list. Error: "
                        "INVALID_ARGUMENT: JSON object: does not "
                        f"have named input: {key}",
                    )
                _add_item(columns, shapes, key, value, info[key], i, key)
            if set(row) != set(names):
                raise RpcError(
                    "INVALID_ARGUMENT",
                    f"Failed to process element: {i} of "
                    f"'instances' list. JSON object: "
                    f"{_json_text(row)} keys must be equal to: "
                    f"{','.join(names)}",
                )
        else:
            if _is_object(row):
                raise RpcError(
                    "INVALID_ARGUMENT",
                    f"Expecting value/list but got object at item {i} of input list",
                )
            _add_item(columns, shapes, names[0], row, info[names[0]], i, None)
    return {n: np.stack(v) if v else np.empty((0,)) for n, v in columns.items() if v}


def _add_item(columns, shapes, name, value, dtype, i, key) -> None:
    try:
        arr = to_array(value, dtype)
    except RpcError as exc:
        where = f"{i} key: {key}" if key else f"{i}"
        raise RpcError(
            exc.code,
            f"Failed to process element: {where} of 'instances' list. "
            f"Error: {exc.code}: {exc.message}",
        ) from exc
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
    if not _is_object(value):
        if len(info) > 1:
            raise RpcError(
                "INVALID_ARGUMENT",
                "inputs is a plain value/list, but expecting an "
                "object as multiple input tensors required as "
                "per tensorinfo_map",
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
            return json.dumps(v.decode("utf-8", errors="replace"))
        if isinstance(v, str):
            return json.dumps(v)
        return str(int(v))
    return "[" + ",".join(_write(a, as_bytes) for a in arr) + "]"


def predict_response(outputs: dict[str, np.ndarray], fmt: str) -> str:
    """``{"predictions": ...}`` (row) or ``{"outputs": ...}`` (columnar)."""
    names = sorted(outputs)
    several = len(names) > 1
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
                f"Tensor name: {n} has inconsistent batch size: "
                f"{outputs[n].shape[0]} expecting: {batch}",
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


def examples_from_json(doc: dict) -> list[bytes]:
    """Classify/regress request body -> serialized tf.Examples (context merged in)."""
    from tensorflow.core.example import example_pb2

    context = doc.get("context")
    ctx = _example(context) if context is not None else None
    if "examples" not in doc:
        raise RpcError(
            "INVALID_ARGUMENT",
            f"JSON Value: {_json_text(doc)} When method is "
            "classify, key 'examples' is expected and was not found",
        )
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise RpcError(
            "INVALID_ARGUMENT",
            f"JSON Value: {_json_text(doc)} Expecting 'examples' value to be an list/array",
        )
    if not examples:
        raise RpcError(
            "INVALID_ARGUMENT", f"JSON Value: {_json_text(doc)} 'examples' value is an empty array"
        )
    out = []
    for e in examples:
        ex = _example(e)
        if ctx is not None:
            merged = example_pb2.Example()
            merged.CopyFrom(ctx)
            merged.MergeFrom(ex)
            ex = merged
        out.append(ex.SerializeToString())
    return out


def _example(obj: object):
    from tensorflow.core.example import example_pb2, feature_pb2

    if not isinstance(obj, dict):
        raise RpcError(
            "INVALID_ARGUMENT", f"Example must be JSON object but got JSON {_json_type(obj)}"
        )
    ex = example_pb2.Example()
    for name, content in obj.items():
        feature = feature_pb2.Feature()
        for v in content if isinstance(content, list) else [content]:
            _add_feature_value(feature, name, v)
        ex.features.feature[name].CopyFrom(feature)
    return ex


def _add_feature_value(feature, name: str, v: object) -> None:
    kind = feature.WhichOneof("kind")

    def need(k: str) -> None:
        if kind not in (None, k):
            expecting = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}[kind]
            raise RpcError(
                "INVALID_ARGUMENT",
                f"Unexpected element type in feature: {name} expecting type: {expecting}",
            )

    if isinstance(v, bool):
        need("int64_list")
        feature.int64_list.value.append(int(v))
    elif isinstance(v, int):
        need("int64_list")
        feature.int64_list.value.append(v)
    elif isinstance(v, float):
        need("float_list")
        feature.float_list.value.append(v)
    elif isinstance(v, str):
        need("bytes_list")
        feature.bytes_list.value.append(v.encode())
    elif _is_b64(v):
        need("bytes_list")
        feature.bytes_list.value.append(base64.b64decode(v["b64"]))
    else:
        raise RpcError(
            "INVALID_ARGUMENT",
            f"Feature: {name} has element with unexpected JSON type: {_json_type(v)}",
        )


# --------------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------------


def status_json(core: ServerCore, name: str, version: int | None, label: str | None) -> str:
    rows = core.status(name, version, label)
    return json.dumps(
        {
            "model_version_status": [
                {
                    "version": str(r.version),
                    "state": r.state,
                    "status": {"error_code": r.error_code, "error_message": r.error_message},
                }
                for r in rows
            ]
        },
        indent=1,
    )


def metadata_json(core: ServerCore, name: str, version: int | None, label: str | None) -> str:
    from tensorflow_serving.apis import get_model_metadata_pb2

    servable = core.servable(name, version, label)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in servable.signature_defs.items():
        sig_map.signature_def[key].CopyFrom(sig)
    doc = {
        "model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
        "metadata": {
            "signature_def": json_format.MessageToDict(
                sig_map, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
        },
    }
    return json.dumps(doc, indent=1)


def handle(core: ServerCore, method: str, path: str, body: bytes) -> tuple[int, str]:
    """Route one request; return (HTTP status, JSON body)."""
    try:
        if method == "POST" and (m := PREDICT_RE.fullmatch(path)):
            name, v, label, verb = m.groups()
            version = int(v) if v else None
            doc = parse_json(body)
            sig_name = signature_name_of(doc)
            servable = core.servable(name, version, label)
            if verb.lower() == "predict":
                sig, _ = servable.signature(sig_name)
                info = {k: t.dtype for k, t in sig.inputs.items()}
                if not info:
                    raise RpcError(
                        "INVALID_ARGUMENT",
                        f"Failed to get input map for signature: {sig_name or 'DEFAULT'}",
                    )
                inputs, fmt = predict_inputs(doc, info)
                return 200, predict_response(servable.run(sig_name, inputs), fmt)
            examples = examples_from_json(doc)
            if verb.lower() == "classify":
                rows = servable.classify(sig_name, examples)
                return 200, '{"results":[' + ",".join(
                    "[" + ",".join(f"[{json.dumps(lbl)},{format_float(s)}]" for lbl, s in r) + "]"
                    for r in rows
                ) + "]}"
            values = servable.regress(sig_name, examples)
            return 200, '{"results":[' + ",".join(format_float(x) for x in values) + "]}"
        if method == "GET" and (m := STATUS_RE.fullmatch(path)):
            name, v, label, meta = m.groups()
            if not name:
                raise RpcError("INVALID_ARGUMENT", "Missing model name in request.")
            version = int(v) if v else None
            if meta:
                return 200, metadata_json(core, name, version, label)
            return 200, status_json(core, name, version, label)
        raise RpcError("INVALID_ARGUMENT", f"Malformed request: {method} {path}")
    except RpcError as exc:
        return HTTP_CODE.get(exc.code, 500), json.dumps({"error": exc.message})
    except Exception as exc:  # a bug must cost one request a 500, never the connection
        from tfship.log import event

        event("serve", f"internal error on {method} {path}: {type(exc).__name__}: {exc}")
        return 500, json.dumps({"error": f"Internal: {type(exc).__name__}"})


class RestHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler; ``server.core`` is the shared ServerCore."""

    protocol_version = "HTTP/1.1"
    server_version = "tfship-serve"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # one line per load/unload is the log; per-request lines would drown it

    def setup(self) -> None:
        super().setup()
        # Keep-alive answers are small: without NODELAY, Nagle + delayed ACK add ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, code: int, body: str, content_type: str = "application/json") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        # Headers and body in one write (end_headers would flush the headers on their own).
        self._headers_buffer.append(b"\r\n")
        self.wfile.write(b"".join(self._headers_buffer) + data)
        self._headers_buffer = []

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._send(
                429,
                json.dumps(
                    {
                        "error": f"Request body of {length} bytes exceeds the "
                        f"limit of {MAX_BODY_BYTES} bytes"
                    }
                ),
            )
            return
        body = self.rfile.read(length) if length else b""
        if not re.match(r"(?i)/v1/", path):
            self._send(404, "Not Found", "text/plain")
            return
        code, text = handle(self.server.core, method, path, body)
        self._send(code, text)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")


class RestServer(ThreadingHTTPServer):
    """Threaded HTTP server bound to one address."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, core: ServerCore, host: str, port: int) -> None:
        self.core = core
        super().__init__((host, port), RestHandler)


def start_rest(core: ServerCore, host: str, port: int) -> tuple[RestServer, threading.Thread]:
    """Start the REST server in a background thread."""
    server = RestServer(core, host, port)
    thread = threading.Thread(target=server.serve_forever, name="tfship-rest", daemon=True)
    thread.start()
    return server, thread
