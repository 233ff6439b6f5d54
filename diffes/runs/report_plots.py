"""The report's figures: search progress, the best schedule, the hall of fame, cost vs distance.

Every figure is drawn on its own ``Figure`` with the Agg canvas (no pyplot, no global backend) in one shared
style, and written atomically as a PNG. Colors mean the same thing in every figure: blue is the searched
schedule, orange the uniform schedule at the same budget, gray the rest of the search, green (and purple) the
dense model sampling with fewer steps.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator, PercentFormatter

from diffes.io import atomic_path

__all__ = [
    "BEST",
    "UNIFORM",
    "SEARCH",
    "SPARSITY_CMAP",
    "Curve",
    "Scored",
    "StepsBaseline",
    "plot_progress",
    "plot_schedule",
    "plot_hall_of_fame",
    "plot_costs",
]

BEST = "#2563eb"
UNIFORM = "#ea580c"
SEARCH = "#94a3b8"
STEPS_COLORS = ("#16a34a", "#9333ea", "#0891b2")  # the dense model with fewer steps, one color per sampler
INK = "#1e293b"
MUTED = "#64748b"
SPARSITY_CMAP = "YlGnBu"
DPI = 150

STYLE: Any = {  # Any: matplotlib's stubs type the keys as a Literal of every rcParam
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.labelsize": 10,
    "axes.labelcolor": INK,
    "axes.edgecolor": "#cbd5e1",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e2e8f0",
    "grid.linewidth": 0.8,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "legend.frameon": False,
    "legend.fontsize": 9,
    "text.color": INK,
}


@dataclass(frozen=True)
class Curve:
    """One generation of the search: the best distance so far and the population's distances."""

    generation: int
    best: float
    population: tuple[float, ...]


@dataclass(frozen=True)
class Scored:
    """A schedule with its distance to the dense model (``None``: never evaluated) and its relative cost."""

    genome: tuple[int, ...]
    distance: float | None
    cost: float


@dataclass(frozen=True)
class StepsBaseline:
    """The dense model sampling with ``steps`` of the run's ``num_steps`` steps on ``sampler``, scored against the
    same teacher: cost ``steps / num_steps`` on the schedules' cost axis."""

    sampler: str
    steps: int
    num_steps: int
    distance: float

    @property
    def cost(self) -> float:
        return self.steps / self.num_steps


@contextmanager
def _figure(path: Path, width: float, height: float) -> Iterator[Figure]:
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        yield fig
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def plot_progress(curve: Sequence[Curve], uniform: float | None, metric: str, path: str | os.PathLike[str]) -> Path:
    """Best distance per generation over the min..max band and median of each generation's population."""
    path = Path(path)
    gens = np.array([c.generation for c in curve])
    pops = [np.array(c.population) for c in curve]
    with _figure(path, 5.8, 4.2) as fig:
        ax = fig.subplots()
        lo, med, hi = (np.array([f(p) for p in pops]) for f in (np.min, np.median, np.max))
        ax.fill_between(gens, lo, hi, color=SEARCH, alpha=0.25, lw=0, label="population min–max")
        for g, p in zip(gens, pops):
            ax.scatter(np.full(len(p), g), p, s=9, color=SEARCH, alpha=0.7, lw=0, zorder=2)
        ax.plot(gens, med, color=MUTED, lw=1.2, ls="--", label="population median")
        ax.plot(gens, [c.best for c in curve], color=BEST, lw=2.2, marker="o", ms=4.5, label="best so far", zorder=3)
        if uniform is not None:
            ax.axhline(uniform, color=UNIFORM, lw=1.4, ls=":", label=f"uniform schedule ({uniform:.3g})")
        ax.set_title("Search progress (lower is better)")
        ax.set_xlabel("generation")
        ax.set_ylabel(f"distance to dense ({metric})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(gens) == 1:
            ax.set_xlim(gens[0] - 0.5, gens[0] + 0.5)
        fig.legend(loc="outside lower center", ncols=2)
        ax.margins(y=0.12)
    return path


def _level_labels(levels: Sequence[float]) -> list[str]:
    return [f"L{i} · {_pct(f)}" for i, f in enumerate(levels)]


def plot_schedule(
    best: Sequence[int],
    uniform: Sequence[int],
    share: np.ndarray,
    levels: Sequence[float],
    path: str | os.PathLike[str],
) -> Path:
    """Stages (x) by levels (y): the best schedule's cell per stage, labelled with its sparsity, over the share
    of the final population at each (stage, level); the uniform schedule's cells outlined."""
    path = Path(path)
    n_stages, n_levels = len(best), len(levels)
    with _figure(path, 5.8, 4.2) as fig:
        ax = fig.subplots()
        ax.grid(False)
        image = ax.imshow(share, origin="lower", aspect="auto", cmap="Greys", vmin=0, vmax=1.6, alpha=0.9)
        _schedule_cells(ax, best, uniform, levels)
        ax.plot([], [], marker="s", ms=9, ls="", color=BEST, label="best schedule (cell: sparsity)")
        ax.plot([], [], marker="s", ms=9, ls="", mfc="none", mec=UNIFORM, mew=1.8, label="uniform at the same budget")
        _stage_ticks(ax, n_stages)
        ax.set_yticks(range(n_levels), _level_labels(levels))
        ax.set_xlim(-0.5, n_stages - 0.5)
        ax.set_ylim(-0.5, n_levels - 0.5)
        ax.set_title("Best schedule: sparsity per stage")
        ax.set_xlabel("stage (early, noisy steps → late, clean steps)")
        ax.set_ylabel("level · sparsity")
        fig.legend(loc="outside lower center", ncols=2)
        bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, format=PercentFormatter(1.0, decimals=0))
        bar.set_label("share of final population", color=MUTED)
        bar.ax.set_ylim(0, 1)
        bar.outline.set_visible(False)
    return path


def _schedule_cells(ax: Any, best: Sequence[int], uniform: Sequence[int], levels: Sequence[float]) -> None:
    size = _cell_font(len(best))
    for stage, level in enumerate(best):
        ax.add_patch(Rectangle((stage - 0.4, level - 0.36), 0.8, 0.72, color=BEST, zorder=3))
        if size:
            text = _pct(levels[level]) if len(best) <= 12 else f"{100 * levels[level]:.0f}"
            ax.text(stage, level, text, ha="center", va="center", color="white", fontsize=size, fontweight="bold",
                    zorder=4)  # fmt: skip
    for stage, level in enumerate(uniform):
        ax.add_patch(Rectangle((stage - 0.47, level - 0.45), 0.94, 0.9, fill=False, ec=UNIFORM, lw=1.8, zorder=5))


def _cell_font(n_stages: int) -> float | None:
    """Font size for a number in each stage's cell; None when the cells are too narrow for text."""
    return 9.0 if n_stages <= 12 else 7.0 if n_stages <= 24 else None


def _stage_ticks(ax: Any, n_stages: int) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(nbins=min(n_stages, 16), integer=True))


def plot_hall_of_fame(
    rows: Sequence[tuple[str, Scored]], levels: Sequence[float], path: str | os.PathLike[str]
) -> Path:
    """One row per schedule (hall of fame, best first, then the uniform baseline), cells colored by sparsity."""
    path = Path(path)
    matrix = np.array([[levels[lv] for lv in s.genome] for _, s in rows])
    n_rows, n_stages = matrix.shape
    with _figure(path, 5.8, 1.0 + 0.36 * n_rows) as fig:
        ax = fig.subplots()
        ax.grid(False)
        image = ax.imshow(matrix, aspect="auto", cmap=SPARSITY_CMAP, vmin=0, vmax=max(max(levels), 1e-9))
        _numbers(ax, matrix, max(levels))
        _stage_ticks(ax, n_stages)
        _row_labels(ax, rows)
        if n_rows > 1 and rows[-1][0] == "uniform":
            ax.axhline(n_rows - 1.5, color="white", lw=4)
        ax.set_title("Hall of fame vs uniform: sparsity per stage")
        ax.set_xlabel("stage")
        bar = fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01, format=PercentFormatter(1.0, decimals=0))
        bar.outline.set_visible(False)
    return path


def _numbers(ax: Any, matrix: np.ndarray, top: float) -> None:
    """Each cell's sparsity in percent, white on dark cells; none past 12 stages, where colors must do."""
    if matrix.shape[1] > 12:
        return
    for (r, c), value in np.ndenumerate(matrix):
        color = "white" if value > 0.55 * top else INK
        ax.text(c, r, f"{100 * value:.0f}", ha="center", va="center", fontsize=7.5, color=color)


def _row_labels(ax: Any, rows: Sequence[tuple[str, Scored]]) -> None:
    """Names on the left (best in blue, uniform in orange), distance and cost on the right."""
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    right = ax.secondary_yaxis("right")
    right.set_yticks(range(len(rows)), [_score_label(s) for _, s in rows])
    right.tick_params(length=0, labelsize=8, colors=MUTED)
    for label, (name, _) in zip(ax.get_yticklabels(), rows):
        label.set_color(UNIFORM if name == "uniform" else BEST if name == "#1" else INK)
        label.set_fontweight("bold")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _score_label(s: Scored) -> str:
    distance = "not evaluated" if s.distance is None else f"d {s.distance:.4f}"
    return f"{distance} · cost {_pct(s.cost)}"


def plot_costs(
    evaluated: Sequence[Scored],
    best: Scored,
    uniform: Scored,
    budget: float,
    front: Sequence[Scored],
    measure: str,
    metric: str,
    path: str | os.PathLike[str],
    fewer_steps: Sequence[StepsBaseline] = (),
) -> Path:
    """Cost vs distance of every evaluated schedule, the budget, best and uniform; the Pareto front if given;
    the dense model with fewer steps (one line per sampler, each point labelled with its step count)."""
    path = Path(path)
    with _figure(path, 5.8, 4.2) as fig:
        ax = fig.subplots()
        cost, dist = _xy(evaluated)
        ax.scatter(cost, dist, s=24, color=SEARCH, alpha=0.8, lw=0, label=f"evaluated ({len(evaluated)})")
        if front:
            fc, fd = _xy(front)
            ax.step(fc, fd, where="post", color=BEST, lw=1.4, alpha=0.6, zorder=3)
            ax.scatter(fc, fd, s=34, facecolor="white", edgecolor=BEST, lw=1.5, zorder=4, label="Pareto front")
        ax.axvline(budget, color="#dc2626", lw=1.2, ls="--", label=f"budget {_pct(budget)}")
        ax.scatter(*_xy([best]), s=170, marker="*", color=BEST, edgecolor="white", lw=0.8, zorder=5,
                   label="best")  # fmt: skip
        if uniform.distance is not None:
            ax.scatter(*_xy([uniform]), s=70, marker="D", color=UNIFORM, edgecolor="white",
                       zorder=5, label="uniform")  # fmt: skip
        _steps_lines(ax, fewer_steps)
        ax.set_title("Pareto front: cost vs distance" if front else "Every evaluated schedule: cost vs distance")
        ax.set_xlabel(f"cost per image (fraction of the dense run's {measure})")
        ax.set_ylabel(f"distance to dense ({metric})")
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.margins(x=0.08, y=0.1)
        fig.legend(loc="outside lower center", ncols=3 if front or fewer_steps else 4)
    return path


def _steps_lines(ax: Any, points: Sequence[StepsBaseline]) -> None:
    samplers = list(dict.fromkeys(p.sampler for p in points))
    for sampler, color in zip(samplers, STEPS_COLORS):
        line = sorted((p for p in points if p.sampler == sampler), key=lambda p: p.steps)
        cost, dist = [p.cost for p in line], [p.distance for p in line]
        ax.plot(cost, dist, color=color, lw=1.4, ls="--", marker="o", ms=5, zorder=4,
                label=f"dense, fewer steps ({sampler})")  # fmt: skip
        for p in line:
            ax.annotate(f"{p.steps} steps", (p.cost, p.distance), textcoords="offset points", xytext=(4, 4),
                        fontsize=7.5, color=color)  # fmt: skip


def _xy(points: Sequence[Scored]) -> tuple[np.ndarray, np.ndarray]:
    """Costs and distances as arrays (an unevaluated distance is NaN: not drawn)."""
    cost = np.array([p.cost for p in points], dtype=float)
    return cost, np.array([np.nan if p.distance is None else p.distance for p in points], dtype=float)
