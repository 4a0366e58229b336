"""TF Serving's REST API (``--rest_api_port``) over :class:`~tfship.server.core.ServerCore`.

Routing and handlers follow ``model_servers/http_server.cc`` (``RestApiRequestDispatcher``),
``http_rest_api_handler.cc`` and ``http_rest_api_util.cc`` (``ParseModelInfo``); the HTTP
layer follows what libevent does for TF Serving's ``net_http`` server:

- only paths matching ``(?i)/v1/.*`` reach the API; anything else gets libevent's HTML 404;
- the path is matched *with* its query string (``Malformed request: POST /v1/...?x=1``);
- model names and labels are percent-decoded after matching (``curl_easy_unescape``);
- request bodies may be chunked or gzip-encoded, and have no size limit;
- errors are ``{"error": ...}`` with the status's HTTP code (``ToHTTPStatusCode``).

With ``--monitoring_config_file`` the Prometheus page is served on its exact path
(``ProcessPrometheusRequest``).
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote_to_bytes

from google.protobuf import json_format
from tensorflow.core.example import example_pb2, feature_pb2

from tfship.log import event
from tfship.server.core import ServerCore
from tfship.server.json_tensor import (
    b64decode,
    error_body,
    format_float,
    is_b64,
    predict_inputs,
    predict_response,
    signature_name_of,
)
from tfship.server.monitoring import REGISTRY
from tfship.server.rapidjson import debug_string, json_type, parse_json
from tfship.server.status import HTTP_CODE, RpcError

PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.I,
)
STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.I,
)
GZIP_LIMIT = 100 * 1024 * 1024  # net_http's gzip inflate limit (compression/gzip_zlib.h)
# libevent's evhttp_send_error page (what a non-/v1/ path gets from TF Serving).
NOT_FOUND_PAGE = (
    "<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n"
    "<H1>Not Found</H1>\n</BODY></HTML>\n"
)


def _decode(arg: str, what: str) -> str:
    """``DecodeArg``: every ``%XX`` decoded, ``+`` left alone."""
    try:
        return unquote_to_bytes(arg).decode()
    except UnicodeDecodeError as exc:
        raise RpcError("INVALID_ARGUMENT", f"Failed to decode {what}:{arg}") from exc


def _version(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    value = int(text)
    if value > 2**63 - 1:
        raise RpcError("INVALID_ARGUMENT", f"Failed to convert version: {text} to numeric.")
    return value


def _spec(name: str, version: int | None, label: str | None) -> tuple[str, int | None, str | None]:
    """``FillModelSpecWithNameVersionAndLabel``."""
    if version is not None and label is not None:
        raise RpcError(
            "INVALID_ARGUMENT",
            f"Both model version ({version}) and model version label ({label}) cannot be supplied.",
        )
    return name, version, label


def status_json(core: ServerCore, name: str, version: int | None) -> str:
    """GetModelStatus as JSON (protobuf's printer: enums by name, defaults printed)."""
    rows = core.status(name, version)
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
    """GetModelMetadata (signature_def) as JSON."""
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


def examples_from_json(doc: dict, method: str) -> list[bytes]:
    """``FillClassificationRequestFromJson``: serialized tf.Examples (context bytes first)."""
    context = doc.get("context")
    ctx = _example(context).SerializeToString() if context is not None else b""
    if "examples" not in doc:
        raise RpcError(
            "INVALID_ARGUMENT",
            f"JSON Value: {debug_string(doc)} When method is {method}, key 'examples' is "
            "expected and was not found",
        )
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise RpcError(
            "INVALID_ARGUMENT",
            f"JSON Value: {debug_string(doc)} Expecting 'examples' value to be an list/array",
        )
    if not examples:
        raise RpcError(
            "INVALID_ARGUMENT",
            f"JSON Value: {debug_string(doc)} 'examples' value is an empty array",
        )
    return [ctx + _example(e).SerializeToString() for e in examples]


def _example(obj: object) -> example_pb2.Example:
    if not isinstance(obj, dict):
        raise RpcError(
            "INVALID_ARGUMENT", f"Example must be JSON object but got JSON {json_type(obj)}"
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
    elif is_b64(v):
        need("bytes_list")
        feature.bytes_list.value.append(b64decode(v["b64"]))
    else:
        raise RpcError(
            "INVALID_ARGUMENT",
            f"Feature: {name} has element with unexpected JSON type: {json_type(v)}",
        )


def handle(core: ServerCore, method: str, path: str, body: bytes) -> tuple[str, str, str, str]:
    """``HttpRestApiHandler::ProcessRequest``: (status name, body, model name, API method)."""
    name, api = "", ""
    try:
        if method == "POST" and (m := PREDICT_RE.fullmatch(path)):
            raw_name, v, raw_label, verb = m.groups()
            name, api = _decode(raw_name, "model name"), verb
            label = _decode(raw_label, "model version label") if raw_label else None
            spec = _spec(name, _version(v), label)
            doc = parse_json(body)
            sig_name = signature_name_of(doc)
            verb = verb.lower()
            if verb == "predict":
                with core.handle(*spec) as servable:
                    inputs, fmt = predict_inputs(doc, servable.rest_input_dtypes(sig_name))
                    _, outputs = servable.predict(sig_name, inputs)
                return "OK", predict_response(outputs, fmt), name, api
            examples = examples_from_json(doc, verb)
            if verb == "classify":
                with core.handle(*spec) as servable:
                    _, rows = servable.classify(sig_name, examples)
                results = ",".join(
                    "["
                    + ",".join(f"[{json.dumps(lbl)},{format_float(s or 0.0)}]" for lbl, s in r)
                    + "]"
                    for r in rows
                )
                return "OK", '{"results":[' + results + "]}", name, api
            with core.handle(*spec) as servable:
                _, values = servable.regress(sig_name, examples)
            text = '{"results":[' + ",".join(format_float(x) for x in values) + "]}"
            return "OK", text, name, api
        if method == "GET" and (m := STATUS_RE.fullmatch(path)):
            raw_name, v, raw_label, meta = m.groups()
            name = _decode(raw_name, "model name") if raw_name else ""
            label = _decode(raw_label, "model version label") if raw_label else None
            spec = _spec(name, _version(v), label)
            if not name:
                raise RpcError("INVALID_ARGUMENT", "Missing model name in request.")
            if meta and meta.lower() == "metadata":
                return "OK", metadata_json(core, *spec), name, api
            return "OK", status_json(core, name, spec[1]), name, api  # a label is not looked at
        raise RpcError("INVALID_ARGUMENT", f"Malformed request: {method} {path}")
    except RpcError as exc:
        return exc.code, error_body(exc.message), name, api
    except Exception as exc:  # a bug must cost one request a 500, never the connection
        event("serve", f"internal error on {method} {path}: {type(exc).__name__}: {exc}")
        return "INTERNAL", error_body(f"Internal: {type(exc).__name__}"), name, api


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
        if self.close_connection:
            self.send_header("Connection", "close")
        # Headers and body in one write (end_headers would flush the headers on their own).
        self._headers_buffer.append(b"\r\n")
        self.wfile.write(b"".join(self._headers_buffer) + data)
        self._headers_buffer = []

    def _body(self) -> bytes:
        """The request body: Content-Length or chunked; gzip inflated as net_http does."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline(3)  # the CRLF after each chunk
            body = b"".join(parts)
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
        if "gzip" in self.headers.get("Content-Encoding", "").lower():
            try:
                inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                body = inflater.decompress(body, GZIP_LIMIT + 1)
                if len(body) > GZIP_LIMIT:
                    body = b""
            except (zlib.error, gzip.BadGzipFile):
                body = b""  # upstream then reports an empty document
        return body

    def _dispatch(self, method: str) -> None:
        try:
            body = self._body()
        except (ValueError, OSError):
            self.close_connection = True
            self._send(400, "Bad Request", "text/html")
            return
        path = self.path  # the whole request target, query string included (uri_path)
        metrics_path = self.server.metrics_path
        if metrics_path and path.split("?", 1)[0] == metrics_path:
            if path != metrics_path:
                self._send(400, f"Unexpected path: {path}. Should be {metrics_path}", "text/plain")
            else:
                self._send(200, REGISTRY.page(), "text/plain")
            return
        if not re.fullmatch(r"(?i)/v1/.*", path, re.S):
            self.close_connection = True
            self._send(404, NOT_FOUND_PAGE, "text/html")
            return
        started = time.monotonic()
        status, text, name, api = handle(self.server.core, method, path, body)
        code = HTTP_CODE.get(status, 500)
        if code == 200:
            REGISTRY.request_latency.add((time.monotonic() - started) * 1e6, name, api, "REST")
        REGISTRY.request_count.increment(name, status)
        self._send(code, text)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")


class RestServer(ThreadingHTTPServer):
    """Threaded HTTP server bound to one address."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self, core: ServerCore, host: str, port: int, metrics_path: str | None = None
    ) -> None:
        self.core = core
        self.metrics_path = metrics_path
        super().__init__((host, port), RestHandler)


def start_rest(
    core: ServerCore, host: str, port: int, metrics_path: str | None = None
) -> tuple[RestServer, threading.Thread]:
    """Start the REST server in a background thread."""
    server = RestServer(core, host, port, metrics_path)
    thread = threading.Thread(target=server.serve_forever, name="tfship-rest", daemon=True)
    thread.start()
    return server, thread
