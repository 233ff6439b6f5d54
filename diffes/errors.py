"""The errors a user can cause. Each message is one line: field, bad value, fix."""

from __future__ import annotations

__all__ = [
    "DiffesError",
    "ConfigError",
    "MissingWeightsError",
    "CheckpointError",
    "UnsupportedModelError",
    "ClusterError",
]


class DiffesError(Exception):
    """Base class of every error a user can cause; the CLI prints it in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class ConfigError(DiffesError, ValueError):
    """A bad value for a named field (flag, config key or argument)."""

    def __init__(self, field: str, value: object, fix: str) -> None:
        self.field, self.value, self.fix = field, value, fix
        super().__init__(f"{field}={value!r}: {fix}")


class MissingWeightsError(DiffesError, FileNotFoundError):
    """A weights file that cannot be found or fetched."""


class CheckpointError(DiffesError):
    """A run directory, checkpoint or routed export that is corrupt or does not match."""


class UnsupportedModelError(DiffesError, TypeError):
    """A model or module type diffes cannot handle."""


class ClusterError(DiffesError, RuntimeError):
    """A Ray cluster that cannot be reached or cannot host the requested workers."""
