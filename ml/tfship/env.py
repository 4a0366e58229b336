"""Settings from the environment: the ``.env`` file, and secrets that must never leak."""

from __future__ import annotations

import os
from pathlib import Path

from tfship import config


def load_dotenv_file(path: Path | None = None) -> Path | None:
    """Read ``./.env`` (or ``path``) into the environment; real variables win over the file.

    The file is only read, never copied: it must not end up in a workspace or artifact.
    """
    path = path or Path.cwd() / ".env"
    if not path.is_file():
        return None
    from dotenv import load_dotenv

    load_dotenv(path, override=False)
    return path


def secret_values() -> list[str]:
    """The secrets set in this process, to scrub from anything we print or write."""
    return [v for k in config.SECRET_ENV if (v := os.environ.get(k)) and len(v) >= 4]


def redact(text: str) -> str:
    """Replace every known secret value in ``text`` with ``***``."""
    for value in secret_values():
        text = text.replace(value, "***")
    return text
