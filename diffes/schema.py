"""Schemas of the files diffes reads back. A loader states the shape it needs as a typed schema (a TypedDict
or one of our dataclasses); ``validate`` checks parsed JSON against it with pydantic and turns the first
mismatch into a one-line ``CheckpointError`` that names the file and the key.

Validation is pydantic's lax mode: JSON arrays become tuples, an integral float an int, and nothing else
is guessed. Schemas are declared with ``extra="allow"`` (``Record``) where the loader hands the validated
dict on, so keys a newer writer adds are kept instead of silently dropped.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from diffes.errors import CheckpointError, DiffesError, echo

__all__ = ["CORRUPT", "RECORD", "NonNegative", "Positive", "Uint32", "validate", "reading", "where"]

RECORD = ConfigDict(extra="allow")
"""The pydantic config of a schema whose validated dict is handed on: unknown keys are kept."""

NonNegative = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]
Uint32 = Annotated[int, Field(ge=0, lt=2**32)]

CORRUPT = "the file is corrupt"


@functools.cache
def _adapter(schema: Any) -> TypeAdapter[Any]:
    return TypeAdapter(schema)


def where(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a key path: ``search.populations[0][2]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "top level"


def validate(schema: Any, data: object, source: str | os.PathLike[str], fix: str = CORRUPT) -> Any:
    """``data`` checked (and lax-converted) against ``schema``, else a CheckpointError naming ``source`` and
    the first bad key."""
    try:
        return _adapter(schema).validate_python(data)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        problem = first["msg"][0].lower() + first["msg"][1:]
        if first["type"] != "missing":
            problem += f" (got {echo(first['input'], 40)})"
        raise CheckpointError(f"{source}: {where(first['loc'])}: {problem}; {fix}") from None
    except CheckpointError:
        raise
    except DiffesError as e:  # a dataclass check that is not a ValueError, which pydantic would report itself
        raise CheckpointError(f"{source}: {e}; {fix}") from None


@contextmanager
def reading(source: str | os.PathLike[str], fix: str = CORRUPT) -> Iterator[None]:
    """Around code that builds objects from validated data: what their own checks still find (a value no
    diffes ever wrote, such as a budget above 1) becomes a CheckpointError naming ``source``."""
    try:
        yield
    except CheckpointError:
        raise
    except DiffesError as e:
        raise CheckpointError(f"{source}: {e}; {fix}") from None
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, ArithmeticError) as e:
        raise CheckpointError(f"{source}: {type(e).__name__}: {echo(e.args[0] if e.args else '', 60)}; {fix}") from None
