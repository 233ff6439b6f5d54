"""The errors a user can cause. Each message is one line: field, bad value, fix."""

from __future__ import annotations

__all__ = [
    "DiffesError",
    "ConfigError",
    "MissingWeightsError",
    "CheckpointError",
    "UnsupportedModelError",
    "ClusterError",
    "echo",
]


class DiffesError(Exception):
    """Base class of every error a user can cause; the CLI prints it in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


# The longest echo of a bad value: a pasted file or a 100,000-class range must not become a 700 KB line.
MAX_ECHO = 80


def echo(value: object, limit: int = MAX_ECHO) -> str:
    """``repr(value)``, cut to ``limit`` characters with ``...`` where it is longer."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ConfigError(DiffesError, ValueError):
    """A bad value for a named field (flag, config key or argument)."""

    def __init__(self, field: str, value: object, fix: str) -> None:
        self.field, self.value, self.fix = field, value, fix
        super().__init__(f"{field}={echo(value)}: {fix}")


class MissingWeightsError(DiffesError, FileNotFoundError):
    """A weights file that cannot be found or fetched."""


class CheckpointError(DiffesError):
    """A run directory, checkpoint or routed export that is corrupt or does not match."""


class UnsupportedModelError(DiffesError, TypeError):
    """A model or module type diffes cannot handle."""


class ClusterError(DiffesError, RuntimeError):
    """A Ray cluster that cannot be reached or cannot host the requested workers."""
