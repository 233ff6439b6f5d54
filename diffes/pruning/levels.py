"""Level grids: which sparsities a stage may take. Level 0 is always the dense model."""

from __future__ import annotations

from dataclasses import dataclass

from diffes.errors import ConfigError

__all__ = ["LevelGrid", "DEFAULT_LEVELS"]

DEFAULT_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


@dataclass(frozen=True)
class LevelGrid:
    """Sparsity fractions in [0, 1), strictly increasing, starting at 0 (dense)."""

    fractions: tuple[float, ...] = DEFAULT_LEVELS

    def __post_init__(self) -> None:
        f = self.fractions
        if not f:
            raise ConfigError("levels", list(f), "give at least one level, e.g. 0,0.1,0.2,...,0.7")
        bad = [x for x in f if not 0.0 <= x < 1.0]
        if bad:
            raise ConfigError("levels", bad[0], "every level must lie in [0, 1); 0 is dense, 0.5 removes half")
        if any(a >= b for a, b in zip(f, f[1:])):
            raise ConfigError("levels", list(f), "levels must increase strictly")
        if f[0] != 0.0:
            raise ConfigError("levels", list(f), "the first level must be 0 (the dense model)")

    @classmethod
    def parse(cls, spec: str | list[float] | tuple[float, ...]) -> LevelGrid:
        """``"0,0.1,...,0.7"``, a list of fractions, or ``"heads:8,6,4,2"`` (heads kept out of the maximum)."""
        if not isinstance(spec, str):
            return cls(tuple(float(x) for x in spec))
        text = spec.strip()
        if not text:
            raise ConfigError("levels", spec, "give at least one level, e.g. 0,0.1,0.2,...,0.7")
        try:
            if text.startswith("heads:"):
                kept = [int(x) for x in text[len("heads:") :].split(",") if x.strip()]
                fractions = [1.0 - k / max(kept) for k in set(kept)] if kept and min(kept) >= 1 else []
                if not fractions:
                    raise ValueError
                return cls(tuple(sorted(fractions)))
            values = tuple(float(x) for x in text.split(","))
        except ValueError:
            raise ConfigError("levels", spec, "use fractions like 0,0.1,0.2 or head counts like heads:8,6,4") from None
        return cls(values)

    def __len__(self) -> int:
        return len(self.fractions)

    def pruned_units(self, level: int, units: int) -> int:
        """How many of ``units`` a level removes; at least one unit always stays."""
        return min(units - 1, round(self.fractions[level] * units))
