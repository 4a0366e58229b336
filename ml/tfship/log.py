"""Logs for CI consoles: one line per event, naming the stage (and version/host if known)."""

from __future__ import annotations

import sys
import time


def event(stage: str, message: str, **fields: object) -> None:
    """Print one log line to stderr: ``<UTC time> <stage> <message> k=v ...``."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    extra = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    line = f"{stamp} [{stage}] {message}" + (f" {extra}" if extra else "")
    print(line, file=sys.stderr, flush=True)


def quiet_tensorflow() -> None:
    """Silence TF's C++ start-up chatter; it buries the lines a CI reader needs."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
