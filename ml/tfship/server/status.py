"""Status codes and error texts as TF Serving reports them.

TF Serving carries ``absl::Status`` values end to end: the gRPC front end sends the code and
the message (``model_servers/grpc_status_util.cc`` ``ToGRPCStatus``, which cuts messages over
1024 bytes), the REST front end maps the code to an HTTP status
(``model_servers/http_server.cc`` ``ToHTTPStatusCode``) and puts the message in
``{"error": ...}``. gRPC and TF share the code numbers.
"""

from __future__ import annotations

CODES = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}
NAMES = {number: name for name, number in CODES.items()}

# http_server.cc ToHTTPStatusCode; anything else (UNKNOWN, INTERNAL, DATA_LOSS) is 500.
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

GRPC_MESSAGE_LIMIT = 1024  # grpc_status_util.cc kErrorMessageLimit


class RpcError(Exception):
    """A failure with a status name (``NOT_FOUND``...) and TF Serving's message text."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        """``absl::Status::ToString()``: ``CODE: message``."""
        return f"{self.code}: {self.message}"


def code_name(number: int) -> str:
    """Status number -> name (``UNKNOWN`` for numbers TF does not define)."""
    return NAMES.get(number, "UNKNOWN")


def from_tf_error(exc: BaseException) -> RpcError:
    """A TensorFlow ``OpError`` (or anything else) as the status TF Serving would return.

    An ``OpError`` raised by a session run carries the C++ status untouched: its own code and
    the kernel's message, as ``predict_util.cc`` ``RunPredict`` returns it.
    """
    if isinstance(exc, RpcError):
        return exc
    number = getattr(exc, "error_code", None)
    message = getattr(exc, "message", None)
    if isinstance(number, int) and isinstance(message, str):
        return RpcError(code_name(number), message)
    if isinstance(exc, FileNotFoundError):
        return RpcError("NOT_FOUND", str(exc))
    return RpcError("UNKNOWN", str(exc) or type(exc).__name__)


def grpc_message(message: str) -> str:
    """The message as the gRPC front end sends it: over 1024 bytes it is cut (ToGRPCStatus)."""
    data = message.encode()
    if len(data) <= GRPC_MESSAGE_LIMIT:
        return message
    return data[:GRPC_MESSAGE_LIMIT].decode(errors="ignore") + "...TRUNCATED"


def not_found_servable(name: str, version: int | None) -> RpcError:
    """``basic_manager.cc``: the request names no AVAILABLE servable."""
    spec = f"Latest({name})" if version is None else f"Specific({name}, {version})"
    return RpcError("NOT_FOUND", f"Servable not found for request: {spec}")
