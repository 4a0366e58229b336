"""rapidjson as TF Serving's REST API uses it: parsing a body, printing values in errors.

``tensorflow_serving/util/json_tensor.cc`` parses with rapidjson (``ParseJson``: NaN and
Infinity allowed, anything after the root value ignored, its error texts) and quotes values
in error messages with ``JsonValueToDebugString`` (rapidjson's pretty writer, arrays on one
line, cut at 256 bytes). :mod:`tfship.server.json_tensor` converts the parsed values.
"""

from __future__ import annotations

import json
import math

from tfship.server.status import RpcError

DEBUG_LIMIT = 256  # json_tensor.cc kMaxJsonDebugStringBytes


# --------------------------------------------------------------------------------------------
# Printing values the way rapidjson does (error messages)
# --------------------------------------------------------------------------------------------


def rapidjson_double(x: float) -> str | None:
    """rapidjson's ``Writer::Double``: shortest digits, ``Prettify``; None for NaN/Inf."""
    if not math.isfinite(x):
        return None
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    sign = "-" if x < 0 else ""
    mantissa, _, exp = repr(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    k = (int(exp) if exp else 0) - len(frac)
    stripped = digits.rstrip("0")
    k += len(digits) - len(stripped)
    digits = stripped or "0"
    kk = len(digits) + k
    if k >= 0 and kk <= 21:
        return f"{sign}{digits}{'0' * k}.0"
    if 0 < kk <= 21:
        return f"{sign}{digits[:kk]}.{digits[kk:]}"
    if -6 < kk <= 0:
        return f"{sign}0.{'0' * -kk}{digits}"
    if len(digits) == 1:
        return f"{sign}{digits}e{kk - 1}"
    return f"{sign}{digits[0]}.{digits[1:]}e{kk - 1}"


def escape(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\b\f\n\r\t":
            out.append({"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif code < 0x20:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def debug_string(value: object, limit: int = DEBUG_LIMIT) -> str:
    """``JsonValueToDebugString``: PrettyWriter (4-space indent, single-line arrays), cut.

    Each writer event (a value, a key, an opening or closing bracket) is written only while
    the text is shorter than ``limit`` bytes, so long values end mid-structure, as upstream.
    """
    out: list[str] = []
    size = 0
    levels: list[list] = []  # [in_array, value_count]

    def prefix() -> str:
        if not levels:
            return ""
        level = levels[-1]
        if level[0]:
            text = ", " if level[1] > 0 else ""
        else:  # in an object: keys and values alternate
            text = (",\n" if level[1] % 2 == 0 else ": ") if level[1] > 0 else "\n"
            if level[1] % 2 == 0:
                text += "    " * len(levels)
        level[1] += 1
        return text

    def emit(text: str) -> bool:
        nonlocal size
        if size >= limit:
            return False
        out.append(text)
        size += len(text.encode())
        return True

    def walk(v: object) -> bool:
        if isinstance(v, dict):
            if not emit(prefix() + "{"):
                return False
            levels.append([False, 0])
            for key, item in v.items():
                if not emit(prefix() + escape(str(key))) or not walk(item):
                    return False
            empty = levels.pop()[1] == 0
            return emit(("" if empty else "\n" + "    " * len(levels)) + "}")
        if isinstance(v, list):
            if not emit(prefix() + "["):
                return False
            levels.append([True, 0])
            for item in v:
                if not walk(item):
                    return False
            levels.pop()
            return emit("]")
        if size >= limit:
            return False
        pre = prefix()
        if v is None:
            return emit(pre + "null")
        if isinstance(v, bool):
            return emit(pre + ("true" if v else "false"))
        if isinstance(v, int):
            return emit(pre + str(v))
        if isinstance(v, float):
            text = rapidjson_double(v)
            if text is None:  # the writer puts the prefix, then refuses NaN/Inf: output ends
                emit(pre)
                return False
            return emit(pre + text)
        return emit(pre + escape(str(v)))

    walk(value)
    return "".join(out)


def json_type(value: object) -> str:
    """rapidjson's type name (``JsonTypeString``)."""
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


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


class _TooBig(ValueError):
    pass


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _TooBig(text)
    return value


def _parse_int(text: str) -> int | float:
    value = int(text)
    if value < -(2**63) or value > 2**64 - 1:  # rapidjson keeps these as doubles
        return float(text)
    return value


_DECODER = json.JSONDecoder(parse_float=_parse_float, parse_int=_parse_int)
_REASONS = {
    "Expecting value": "Invalid value.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Expecting ',' delimiter": "Missing a comma or '}' after an object member.",
    "Invalid \\escape": "Invalid escape character in string.",
    "Invalid control character at": "Invalid encoding in string.",
}


def parse_json(body: bytes) -> dict:
    """``ParseJson``: one JSON object; NaN/Infinity accepted; trailing data ignored."""
    if not body:
        raise RpcError("INVALID_ARGUMENT", "JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RpcError(
            "INVALID_ARGUMENT",
            f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}",
        ) from exc
    start = len(text) - len(text.lstrip(" \t\n\r"))
    if start == len(text):
        raise RpcError(
            "INVALID_ARGUMENT", f"JSON Parse error: The document is empty. at offset: {start}"
        )
    try:
        doc, _ = _DECODER.raw_decode(text, start)  # kParseStopWhenDoneFlag
    except _TooBig as exc:
        at = text.find(str(exc), start)
        raise RpcError(
            "INVALID_ARGUMENT",
            f"JSON Parse error: Number too big to be stored in double. at offset: {at}",
        ) from exc
    except json.JSONDecodeError as exc:
        reason = _REASONS.get(exc.msg, "Invalid value.")
        if exc.msg == "Expecting ',' delimiter" and _inside_array(text, exc.pos):
            reason = "Missing a comma or ']' after an array element."
        raise RpcError(
            "INVALID_ARGUMENT", f"JSON Parse error: {reason} at offset: {exc.pos}"
        ) from exc
    except RecursionError as exc:
        raise RpcError("INVALID_ARGUMENT", "JSON Parse error: Invalid value.") from exc
    if not isinstance(doc, dict):
        raise RpcError("INVALID_ARGUMENT", f"JSON Value: {debug_string(doc)} Is not object")
    return doc


def _inside_array(text: str, pos: int) -> bool:
    """Whether ``pos`` sits inside a JSON array (for rapidjson's comma messages)."""
    depth: list[str] = []
    in_string = escaped = False
    for ch in text[:pos]:
        if in_string:
            escaped = ch == "\\" and not escaped
            in_string = not (ch == '"' and not escaped) if not escaped else True
            continue
        if ch == '"':
            in_string = True
        elif ch in "[{":
            depth.append(ch)
        elif ch in "]}" and depth:
            depth.pop()
    return bool(depth) and depth[-1] == "["
