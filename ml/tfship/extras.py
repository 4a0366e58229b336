"""The slim install and the train extra: what each holds, and loading the extra's modules late.

``pip install tfship`` is what the commands that do not train need (deploy, rollback, status,
test-deployed over REST, notify, history, ci ...); ``pip install "tfship[train]"`` adds
TensorFlow, tensorflow-serving-api, scikit-learn, matplotlib, pyarrow and google-crc32c
(pyproject.toml). Modules that a slim command imports but that use pyarrow only in their
table functions bind it with :func:`lazy_module`, so importing them costs nothing and needs
nothing; a command that does reach the extra on a slim install gets one line naming it
(:class:`tfship.errors.MissingExtra`, from :func:`missing_extra`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tfship.errors import MissingExtra

# Top-level import names that only the train extra installs (directly or as dependencies).
TRAIN_EXTRA_MODULES = frozenset(
    {
        "tensorflow",
        "tensorflow_serving",
        "keras",
        "sklearn",
        "matplotlib",
        "pyarrow",
        "google_crc32c",
        "grpc",
        "PIL",
        "tensorflow_io",
    }
)
INSTALL_TRAIN = 'pip install "tfship[train]"'


def from_train_extra(exc: ModuleNotFoundError) -> bool:
    """Whether ``exc`` is a module of the train extra missing (not a bug, not something else)."""
    return (exc.name or "").split(".")[0] in TRAIN_EXTRA_MODULES


def missing_extra(exc: ModuleNotFoundError, what: str = "this command") -> MissingExtra:
    """The one-line error for a train-extra module that is not installed."""
    return MissingExtra(
        f"{what} needs tfship's train extra ({exc.name} is not installed)", hint=INSTALL_TRAIN
    )


class LazyModule(ModuleType):
    """A module imported on first attribute access (``pa = lazy_module("pyarrow")``).

    For modules a slim command imports whose heavy dependency only some functions use: the
    import happens when such a function runs, and a slim install fails there, with
    :class:`MissingExtra`, instead of at start-up for every command.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._lazy_name = name

    def __getattr__(self, attr: str):
        try:
            module = importlib.import_module(self._lazy_name)
        except ModuleNotFoundError as exc:
            if from_train_extra(exc):
                raise missing_extra(exc) from exc
            raise
        # Later lookups find the attributes here and never come back to __getattr__.
        self.__dict__.update(vars(module))
        return getattr(module, attr)


def lazy_module(name: str) -> ModuleType:
    """``name``, imported when first used (see :class:`LazyModule`)."""
    return LazyModule(name)
