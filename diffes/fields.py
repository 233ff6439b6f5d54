"""Field types and metadata shared by the configuration dataclasses (torch-free).

The configs are plain frozen dataclasses; pydantic validates them from files and flags (``RunConfig.from_dict``)
with these strict types, so ``"5"`` is not an int, ``"false"`` is not a bool and a bool is not a number,
while ``__post_init__`` checks ranges and cross-field rules with one-line ``ConfigError``s.
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Any

from pydantic import BeforeValidator, Strict

__all__ = ["Bool", "Int", "Number", "Text", "option"]

Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Text = Annotated[str, Strict()]


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("Input should be a number")
    return float(value)


Number = Annotated[float, BeforeValidator(_number)]


def option(default: Any, help: str | None = None) -> Any:
    """A config field; ``help`` makes it a flag of ``diffes search`` and a config-file key (and is the flag's
    help text, so the two cannot drift apart)."""
    return field(default=default, metadata={"help": help} if help else {})
