"""Logs for CI consoles: one line per event, naming the stage (and version/host if known).

Also where TensorFlow is loaded: :func:`quiet_tensorflow` imports it without the C++
start-up chatter (absl's "All log messages before absl::InitializeLog()", oneDNN, cudart,
cpu_feature_guard) that would bury tfship's own lines in a CI console. ``--debug`` (or
``TFSHIP_DEBUG=1``) shows everything.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator

DEBUG_ENV = "TFSHIP_DEBUG"

# Lines TensorFlow's C++ runtime writes to fd 2 while it loads. absl/TSL log lines look like
# `I0000 00:00:1795460433.842125    4606 cudart_stub.cc:31] ...` (severity, date, time, thread,
# file:line). TF_CPP_MIN_LOG_LEVEL does not reach the ones logged before absl is initialised.
_TF_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IWE]\d{4} [\d:.]+ +\d+ \S+:\d+\]"
    r"|To enable the following instructions:)"
)


def event(stage: str, message: str, **fields: object) -> None:
    """Print one log line to stderr: ``<UTC time> <stage> <message> k=v ...``."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    extra = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    line = f"{stamp} [{stage}] {message}" + (f" {extra}" if extra else "")
    print(line, file=sys.stderr, flush=True)


def debug_enabled() -> bool:
    """True when ``--debug`` / ``TFSHIP_DEBUG`` asks for everything, TensorFlow's logs too."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def _stderr_fd_captured() -> Iterator[list[str]]:
    """Send file descriptor 2 (C/C++ writes included) to a temp file for the block.

    Yields a list that holds the captured text once the block has ended.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    captured: list[str] = []
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace"))


def strip_tf_noise(text: str) -> str:
    """``text`` without TensorFlow's C++ start-up log lines (anything else is kept)."""
    lines = text.splitlines(keepends=True)
    return "".join(line for line in lines if line.strip() and not _TF_NOISE.match(line))


def quiet_tensorflow() -> None:
    """Import TensorFlow and Keras once, quietly (see the module docstring).

    TF_ENABLE_ONEDNN_OPTS=0 always: oneDNN's reordered float sums give run-to-run and
    CPU-to-CPU differences, and training must be reproducible (same data + seed = same
    weights). Anything else written to stderr during the import is passed through, and
    everything is shown if the import fails.
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    if "tensorflow" in sys.modules and "keras" in sys.modules:
        return
    if debug_enabled():
        import keras  # noqa: F401
        import tensorflow  # noqa: F401

        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    captured: list[str] = []
    try:
        with _stderr_fd_captured() as captured:
            import keras  # noqa: F401
            import tensorflow as tf
    except BaseException:
        sys.stderr.write("".join(captured))  # TF's own words on why it did not load
        raise
    sys.stderr.write(strip_tf_noise("".join(captured)))
    sys.stderr.flush()
    tf.get_logger().setLevel("ERROR")
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
