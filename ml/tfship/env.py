"""Settings from the environment: the ``.env`` file, and secrets that must never leak."""

from __future__ import annotations

from pathlib import Path


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
