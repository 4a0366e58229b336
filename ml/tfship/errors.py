"""One exception type per failure family, each with its own exit code.

The CLI turns these into one line on stderr and the exit code below; a traceback is only
ever shown for an unexpected error (exit 1), or with ``--debug``.
"""

from __future__ import annotations


class TfshipError(Exception):
    """Base of every expected failure. ``str(err)`` is the one line a person reads."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class DataError(TfshipError):
    """Input data is missing, unreadable or fails validation. Nothing was written."""

    exit_code = 2
    kind = "bad input"


class ConfigError(TfshipError):
    """A setting is missing or invalid (flag, environment variable, .env)."""

    exit_code = 2
    kind = "bad setting"


class MissingExtra(TfshipError):
    """This command needs tfship's train extra: pip install "tfship[train]"."""

    exit_code = 2
    kind = "not installed"


class GateFailed(TfshipError):
    """A quality gate failed: the model is not good enough to ship."""

    exit_code = 3
    kind = "gate failed"


class DeployError(TfshipError):
    """A deploy failed; the message says what is serving now."""

    exit_code = 4
    kind = "deploy failed"


class ServingError(TfshipError):
    """TF Serving answered with an error, or could not be reached."""

    exit_code = 5
    kind = "serving error"

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None):
        super().__init__(message, hint=hint)
        self.status = status


class ServingNotReady(ServingError):
    """A model version did not become AVAILABLE in time."""

    kind = "serving not ready"


class VerificationFailed(TfshipError):
    """The deployed model does not behave as the package says it should."""

    exit_code = 6
    kind = "verification failed"


class ApiError(TfshipError):
    """The CircleCI API refused or failed a request."""

    exit_code = 7
    kind = "CircleCI API error"


class StoreError(TfshipError):
    """The artifact store or a package is inconsistent (missing, hash mismatch, rewrite)."""

    exit_code = 8
    kind = "store error"


class HostError(TfshipError):
    """A deploy host could not be reached or refused us (SSH, host key, permissions)."""

    exit_code = 9
    kind = "host error"


class StaleChampion(TfshipError):
    """What is serving changed since the retrain compared against it."""

    exit_code = 10
    kind = "stale approval"


EXIT_INTERRUPTED = 130
