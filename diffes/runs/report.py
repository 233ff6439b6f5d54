"""``diffes report``: one self-contained HTML page about a run, with its figures as PNG files beside it.

Everything shown comes from the run directory: the checkpoints (one per generation) give the progress and
every evaluated schedule, the latest one the best schedule and hall of fame, the library the cost of each
level, and the routed model the sample grids. A run still in progress gets a report of what it has so far.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from diffes.errors import CheckpointError, ConfigError
from diffes.io import atomic_path, read_json
from diffes.pruning.library import PruningLibrary
from diffes.runs.config import RunConfig
from diffes.runs.job import macs_fraction, uniform_genome
from diffes.runs.report_plots import (
    Curve,
    Scored,
    StepsBaseline,
    plot_costs,
    plot_hall_of_fame,
    plot_progress,
    plot_schedule,
)
from diffes.runs.rundir import RunDir
from diffes.search import SearchState, best, pareto_front
from diffes.search.joint import JointBudget

__all__ = [
    "REPORT_FILE",
    "Curve",
    "ReportData",
    "Scored",
    "StepsBaseline",
    "fewer_steps_curve",
    "load_report_data",
    "population_share",
    "render_html",
    "write_figures",
    "write_report",
]

REPORT_FILE = "report.html"
STEPS_FRACTIONS = (0.25, 0.5, 0.75)  # the dense model with fewer steps: these costs (where the search could go)


@dataclass
class ReportData:
    """What the report shows, read from a run directory."""

    run: RunDir
    config: RunConfig
    library: PruningLibrary
    state: SearchState  # the latest checkpoint
    curve: list[Curve]
    best: Scored
    uniform: Scored
    hall_of_fame: list[Scored]
    front: list[Scored]  # empty unless the search is multi-objective (nsga2)
    finished: bool
    fewer_steps: list[StepsBaseline] = field(default_factory=list)  # the dense model with fewer steps
    fewer_steps_skipped: str | None = None  # why DPM-Solver++ is not among them

    @property
    def levels(self) -> tuple[float, ...]:
        return tuple(self.library.config.levels)

    @property
    def joint(self) -> JointBudget | None:
        """The joint space when the run searched steps and caching too."""
        budget = self.state.budget
        return budget if isinstance(budget, JointBudget) else None

    def stage_levels(self, genome: Sequence[int]) -> tuple[int, ...]:
        """The pruning level of each stage (a joint genome also holds its step count and caching)."""
        return self.joint.decode(genome).levels if self.joint else tuple(genome)

    def as_levels(self, scored: Scored) -> Scored:
        return Scored(self.stage_levels(scored.genome), scored.distance, scored.cost)

    def macs(self, genome: Sequence[int]) -> float:
        """MACs per image as a fraction of the dense run's (the reference run's, in a joint search)."""
        return macs_fraction(self.state.budget, self.library, tuple(genome))

    def choice(self, genome: Sequence[int]) -> str:
        """A joint genome's step count and caching, in words ("" for a plain schedule)."""
        if self.joint is None:
            return ""
        c = self.joint.decode(genome)
        return (
            f"{c.steps} of {self.joint.reference_steps} reference steps, compute every {list(c.every)} step per stage"
        )

    @property
    def evaluated(self) -> list[Scored]:
        return [Scored(g, d, self.state.budget.cost(g)) for g, d in self.state.cache.items()]


def _states(run: RunDir) -> list[SearchState]:
    gens = run.generations()
    if not gens:
        raise CheckpointError(
            f"run={str(run.path)!r}: no checkpoints yet; wait until generation 0 is written "
            f"(`diffes status {run.path}`) or resume the run with `diffes resume {run.path}`"
        )
    states = []
    for gen in gens:
        data = read_json(run.checkpoint_path(gen))
        if not isinstance(data, dict) or "search" not in data:
            raise CheckpointError(f"{run.checkpoint_path(gen)}: not a diffes checkpoint; the file is corrupt")
        states.append(SearchState.from_json(data["search"]))
    return states


def _curve(state: SearchState) -> Curve:
    population = tuple(state.cache[g] for island in state.populations for g in island)
    return Curve(state.generation, state.cache[state.hall_of_fame[0]], population)


def _uniform(run: RunDir, state: SearchState) -> Scored:
    genome = uniform_genome(state.budget)
    distance = state.cache.get(genome)
    summary = run.best()
    if distance is None and summary and tuple(summary.get("uniform", {}).get("genome", ())) == genome:
        distance = float(summary["uniform"]["distance"])  # evaluated once at the end of the run
    return Scored(genome, distance, state.budget.cost(genome))


def load_report_data(run: RunDir) -> ReportData:
    states = _states(run)
    state, config = states[-1], run.config()
    library = PruningLibrary.load(run.library_dir)
    genome, distance, cost = best(state)
    scored = lambda g: Scored(g, state.cache[g], state.budget.cost(g))  # noqa: E731
    front = [scored(g) for g, _, _ in pareto_front(state)] if state.config.algorithm == "nsga2" else []
    summary = run.best()
    finished = summary is not None and summary.get("generation") == state.generation >= config.search.generations
    return ReportData(
        run=run,
        config=config,
        library=library,
        state=state,
        curve=[_curve(s) for s in states],
        best=Scored(genome, distance, cost),
        uniform=_uniform(run, state),
        hall_of_fame=[scored(g) for g in state.hall_of_fame],
        front=front,
        finished=finished,
        **_summary_baselines(summary),
    )


def _summary_baselines(summary: dict[str, Any] | None) -> dict[str, Any]:
    """The equal-cost baselines ``diffes search`` wrote into best.json (none before the run finished)."""
    summary = summary or {}
    entries = [summary.get("fewer_steps") or {}, summary.get("fewer_steps_dpm_solver") or {}]
    points = [
        StepsBaseline(e["sampler"], int(e["steps"]), int(e["num_steps"]), float(e["distance"]))
        for e in entries
        if "distance" in e
    ]
    return {"fewer_steps": points, "fewer_steps_skipped": entries[1].get("skipped")}


def fewer_steps_curve(data: ReportData) -> ReportData:
    """``data`` with the dense model sampled at several step counts, on the pipeline's sampler and on
    DPM-Solver++, scored against the run's teacher (loads the model). The step counts: the budget's, and those of
    ``STEPS_FRACTIONS`` that cost no less than the cheapest schedule the search could pick (one step of ten can be
    so far off that it flattens every schedule on the plot)."""
    from diffes.fitness.baselines import equal_cost_steps, steps_curve
    from diffes.fitness.teacher import Teacher
    from diffes.runs.context import load_adapter, make_metric

    teacher, budget = Teacher.load(data.run.teacher_file), data.state.budget
    n, cheapest = teacher.steps, float(getattr(budget, "cheapest", 0.0))  # n: the dense run the costs are relative to
    wanted = {k for f in STEPS_FRACTIONS if (k := equal_cost_steps(n, f)) / n >= cheapest - 1e-9}
    steps = sorted(wanted - {n} | {equal_cost_steps(n, budget.fraction)})
    if not steps:
        return data
    adapter = load_adapter(data.config)
    points, skipped = steps_curve(adapter, teacher, make_metric(data.config), n, steps)
    curve = [StepsBaseline(p.sampler, p.steps, p.num_steps, p.distance) for p in points]
    return replace(data, fewer_steps=curve, fewer_steps_skipped=skipped)


def population_share(state: SearchState, num_levels: int) -> np.ndarray:
    """(levels, stages): the share of the population (all islands) that uses each level at each stage."""
    budget = state.budget
    to_levels = budget.decode if isinstance(budget, JointBudget) else None
    genomes = np.array([to_levels(g).levels if to_levels else g for island in state.populations for g in island])
    return np.stack([(genomes == lv).mean(axis=0) for lv in range(num_levels)])


# ---- figures and samples ----


def write_figures(data: ReportData, out: Path) -> dict[str, Path]:
    """The four figures as PNGs in ``out``, by name: progress, costs (Pareto or scatter), schedule, hall_of_fame."""
    metric, measure = data.config.fitness.metric, _measure(data)
    hof = [(f"#{i + 1}", data.as_levels(s)) for i, s in enumerate(data.hall_of_fame)]
    hof.append(("uniform", data.as_levels(data.uniform)))
    share = population_share(data.state, len(data.levels))
    costs_name = "pareto.png" if data.front else "schedules.png"
    return {
        "progress": plot_progress(data.curve, data.uniform.distance, metric, out / "progress.png"),
        "schedule": plot_schedule(
            data.stage_levels(data.best.genome),
            data.stage_levels(data.uniform.genome),
            share,
            data.levels,
            out / "schedule.png",
        ),
        "hall_of_fame": plot_hall_of_fame(hof, data.levels, out / "hall_of_fame.png"),
        "costs": plot_costs(
            data.evaluated,
            data.best,
            data.uniform,
            data.state.budget.fraction,
            data.front,
            measure,
            metric,
            out / costs_name,
            data.fewer_steps,
        ),
    }


def _samples(data: ReportData, out: Path, per_class: int) -> dict[str, Path]:
    """samples_{dense,best,uniform}.png: one row per class, the same noise in each."""
    from diffes.images import save_grid
    from diffes.runs.samples import sample_schedules

    genomes: dict[str, Sequence[int] | None] = {"dense": None, "best": data.best.genome, "uniform": data.uniform.genome}
    images = sample_schedules(data.run, genomes, per_condition=per_class)
    return {k: save_grid(v, out / f"samples_{k}.png", rows=len(v) // per_class) for k, v in images.items()}


def write_report(run: RunDir, out: Path, per_class: int = 4, baselines: bool = True) -> Path:
    """Write ``out/report.html`` and its PNGs (``per_class=0``: no sample grids; ``baselines=False``: the dense
    model with fewer steps only at the budget, as ``diffes search`` measured it, instead of sampled at several
    step counts); returns the HTML path."""
    out = Path(out)
    if per_class < 0:
        raise ConfigError("per-class", per_class, "use 1 or more samples per class, or 0 to skip the sample grids")
    if out.exists() and not out.is_dir():
        raise ConfigError("out", str(out), "that is a file; give a folder for the report")
    data = load_report_data(run)
    if baselines and run.has_teacher():
        data = fewer_steps_curve(data)
    out.mkdir(parents=True, exist_ok=True)
    figures = write_figures(data, out)
    samples = _samples(data, out, per_class) if per_class else {}
    page = render_html(data, figures, samples)
    path = out / REPORT_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    _shareable([path, *figures.values(), *samples.values()])
    return path


def _shareable(paths: list[Path]) -> None:
    """Atomic writes leave files readable by their owner only; a report is meant to be served and shared."""
    for path in paths:
        path.chmod(0o644)


# ---- the page ----


def _pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}%"


def _si(n: float) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def _seconds(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s >= 1e-3 else f"{s * 1e6:.0f} µs"


def _measure(data: ReportData) -> str:
    return "MACs" if data.config.search.cost == "macs" else data.config.search.cost


def _change(data: ReportData) -> float | None:
    """Best distance relative to the uniform schedule's (-0.4: 40% closer to dense)."""
    u = data.uniform.distance
    return None if u is None or u <= 0 or data.best.distance is None else data.best.distance / u - 1


def _versus(data: ReportData) -> str:
    change = _change(data)
    if change is None:
        return "the uniform schedule was not evaluated"
    return f"best is {abs(change):.1%} {'lower' if change <= 0 else 'higher'}"


def _cards(data: ReportData) -> str:
    macs = data.macs(data.best.genome)
    u = data.uniform.distance
    budget = data.state.budget.fraction
    cards = [
        ("Mean MACs", _pct(macs), f"of dense · {1 / macs:.2f}× fewer" if macs > 0 else "of dense"),
        ("Budget", _pct(budget, 0), f"of dense {_measure(data)} per step"),
        ("Best distance", f"{data.best.distance:.4f}", f"{data.config.fitness.metric} · lower is better"),
        ("Uniform distance", "—" if u is None else f"{u:.4f}", _versus(data)),
        ("Evaluated", f"{len(data.state.cache)}", f"schedules, generations 0–{data.state.generation}"),
    ]
    items = "".join(
        f'<div class="card"><div class="k">{k}</div><div class="v">{html.escape(v)}</div>'
        f'<div class="s">{html.escape(t)}</div></div>'
        for k, v, t in cards
    )
    return f'<div class="cards">{items}</div>'


def _stage_table(data: ReportData) -> str:
    costs, lengths, schedule = data.library.costs, data.library.schedule.stage_lengths(), data.library.schedule
    dense = costs[0]
    latency = all(c.latency for c in costs)
    head = ["Stage", "Steps", "Level", "Sparsity", "MACs / call", "vs dense", "Params"]
    head += ["Latency / call"] if latency else []
    rows = []
    for stage, level in enumerate(data.stage_levels(data.best.genome)):
        c, steps = costs[level], schedule.steps_of(stage)
        rel = c.macs / dense.macs
        cells = [
            str(stage),
            f"{steps.start}–{steps.stop - 1} ({lengths[stage]})",
            f"L{level}",
            _pct(c.fraction, 0),
            _si(c.macs),
            f'<span class="bar"><i style="width:{100 * rel:.1f}%"></i></span>{_pct(rel)}',
            _si(c.params),
        ]
        if latency:
            seconds, dense_seconds = float(c.latency or 0), float(dense.latency or 1)
            cells.append(f"{_seconds(seconds)} ({_pct(seconds / dense_seconds)})")
        rows.append("<tr>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    header = "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
    return f'<table class="stages"><thead>{header}</thead><tbody>{"".join(rows)}</tbody></table>'


def _summary_line(data: ReportData) -> str:
    macs = data.macs(data.best.genome)
    u, change = data.uniform.distance, _change(data)
    versus = "" if u is None else f" vs uniform <b>{u:.4f}</b>"
    versus += "" if change is None else f" ({change:+.1%})".replace("-", "−")
    latency = ""
    if all(c.latency for c in data.library.costs) and data.joint is None:
        latency = f" · mean latency <b>{_pct(data.library.stage_cost(data.best.genome, 'latency'))}</b> of dense"
    steps = "".join(
        f" · dense with {p.steps} of {p.num_steps} steps ({html.escape(p.sampler)}, same cost) <b>{p.distance:.4f}</b>"
        for p in _at_budget(data)
    )
    return (
        f"Mean MACs per step <b>{_pct(macs)}</b> of dense{latency} · budget "
        f"<b>{_pct(data.state.budget.fraction, 0)}</b> of dense {_measure(data)} · distance "
        f"<b>{data.best.distance:.4f}</b>{versus}{steps}"
    )


def _at_budget(data: ReportData) -> list[StepsBaseline]:
    """The fewer-steps baselines with the most steps the budget pays for, one per sampler."""
    from diffes.fitness.baselines import equal_cost_steps

    fraction = data.state.budget.fraction
    return [p for p in data.fewer_steps if p.steps == equal_cost_steps(p.num_steps, fraction)]


def _versus_best(data: ReportData, distance: float) -> str:
    if distance <= 0 or data.best.distance is None:
        return "—"
    return f"{data.best.distance / distance:.2f}×"


def _steps_section(data: ReportData) -> str:
    """The dense model with fewer steps, against the same teacher: what a cost buys without pruning."""
    note = (
        "The dense model sampling the same probes from the same noise with fewer steps, scored against the same "
        "teacher; its cost is steps / run steps, on the plot's cost axis."
    )
    skipped = data.fewer_steps_skipped
    skip = f'<p class="note">DPM-Solver++ not measured: {html.escape(skipped)}.</p>' if skipped else ""
    if not data.fewer_steps:
        none = "Not measured: the run has not finished, or the report was written with <code>--no-baselines</code>."
        return f'<section><h2>Baselines: fewer steps</h2><p class="note">{none}</p>{skip}</section>'
    at_budget = _at_budget(data)
    rows = []
    for p in sorted(data.fewer_steps, key=lambda p: (p.sampler != data.fewer_steps[0].sampler, p.sampler, p.steps)):
        mark = " (same cost as the budget)" if p in at_budget else ""
        cells = [
            html.escape(p.sampler),
            f"{p.steps} of {p.num_steps}{mark}",
            _pct(p.cost),
            f"{p.distance:.4f}",
            _versus_best(data, p.distance),
        ]
        rows.append("<tr>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("Sampler", "Steps", "Cost", "Distance", "Best schedule's distance ÷ this"))
    table = f'<table class="stages steps"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    return f"<section><h2>Baselines: the dense model with fewer steps</h2><p>{note}</p>{table}{skip}</section>"


def _figure_tag(path: Path, alt: str) -> str:
    return f'<img src="{html.escape(path.name)}" alt="{html.escape(alt)}">'


def _samples_html(data: ReportData, samples: dict[str, Path]) -> str:
    if not samples:
        return '<p class="note">Sample grids skipped (<code>--per-class 0</code>).</p>'
    captions = {
        "dense": ("Dense", "100% MACs · the teacher"),
        "best": (
            "Routed (best)",
            f"{_pct(data.macs(data.best.genome))} MACs · distance {data.best.distance:.4f}",
        ),
        "uniform": (
            "Uniform, same budget",
            f"{_pct(data.macs(data.uniform.genome))} MACs"
            + ("" if data.uniform.distance is None else f" · distance {data.uniform.distance:.4f}"),
        ),
    }
    blocks = "".join(
        f'<figure class="{k}"><figcaption><b>{captions[k][0]}</b><span>{html.escape(captions[k][1])}</span>'
        f"</figcaption>{_figure_tag(p, captions[k][0])}</figure>"
        for k, p in samples.items()
    )
    return f'<div class="samples">{blocks}</div><p class="note">One row per class; the same noise in every block.</p>'


def _meta(data: ReportData) -> str:
    c, s = data.config, data.state
    parts = [
        f"model <b>{html.escape(c.model.model)}</b>",
        f"{c.search.algorithm}, {s.generation}/{c.search.generations} generations",
        f"{data.library.num_stages} stages × {len(data.levels)} levels, {data.library.schedule.num_steps} steps",
        f"metric {html.escape(c.fitness.metric)}",
        f"importance {html.escape(data.library.config.importance)}",
    ]
    return " · ".join(parts)


def render_html(data: ReportData, figures: dict[str, Path], samples: dict[str, Path]) -> str:
    name = html.escape(data.run.path.resolve().name)
    genome = html.escape(str(list(data.best.genome)))
    if data.joint is not None:
        genome += f"</code> · {html.escape(data.choice(data.best.genome))} · levels <code>"
        genome += html.escape(str(list(data.stage_levels(data.best.genome))))
    costs_title = "Pareto front" if data.front else "Cost vs distance"
    status = '<span class="badge done">finished</span>' if data.finished else '<span class="badge">in progress</span>'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>diffes report · {name}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body><main>
<header><div class="brand">diffes run report</div><h1>{name} {status}</h1><p class="meta">{_meta(data)}</p>
<p class="genome">best schedule <code>{genome}</code></p></header>
{_cards(data)}
<section><h2>Search</h2><div class="grid">
{_figure_tag(figures["progress"], "search progress")}{_figure_tag(figures["costs"], costs_title)}</div></section>
{_steps_section(data)}
<section><h2>Schedule</h2><div class="grid">
{_figure_tag(figures["schedule"], "best schedule heat map")}{_figure_tag(figures["hall_of_fame"], "hall of fame")}
</div></section>
<section><h2>Cost per stage (best schedule)</h2>{_stage_table(data)}<p class="summary">{_summary_line(data)}</p>
</section>
<section><h2>Samples</h2>{_samples_html(data, samples)}</section>
<footer>written {time.strftime("%Y-%m-%d %H:%M")} by <code>diffes report</code> from {html.escape(str(data.run.path))}
</footer></main></body></html>
"""


CSS = """
:root{--ink:#1e293b;--muted:#64748b;--line:#e2e8f0;--best:#2563eb;--uniform:#ea580c;--bg:#f8fafc}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:1200px;margin:0 auto;padding:28px 32px 40px}
header{margin-bottom:18px}
.brand{color:var(--best);font-weight:700;letter-spacing:.08em;text-transform:uppercase;font-size:12px}
h1{margin:2px 0 4px;font-size:28px}
.badge{font-size:13px;font-weight:600;vertical-align:middle;padding:2px 10px;border-radius:999px;background:#fef3c7;
color:#92400e}.badge.done{background:#dcfce7;color:#166534}
h2{font-size:18px;margin:0 0 12px;padding-bottom:6px;border-bottom:1px solid var(--line)}
.meta{color:var(--muted);margin:0}.meta b{color:var(--ink)}
.genome{margin:6px 0 0}
code{font:13px ui-monospace,SFMono-Regular,Menlo,monospace;background:#eef2ff;color:#3730a3;padding:1px 6px;
border-radius:4px}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:18px 20px;margin:18px 0}
.cards{display:grid;grid-template-columns:repeat(5,1fr);gap:12px}
.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.05em}
.card .v{font-size:24px;font-weight:700;font-variant-numeric:tabular-nums}
.card .s{color:var(--muted);font-size:12.5px}
.card:nth-child(3) .v{color:var(--best)}.card:nth-child(4) .v{color:var(--uniform)}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px;align-items:start}
.grid img{width:100%;height:auto;display:block}
table.stages{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
.stages th{text-align:right;color:var(--muted);font-weight:600;font-size:12.5px;text-transform:uppercase;
letter-spacing:.04em;border-bottom:2px solid var(--line);padding:6px 10px}
.stages td{text-align:right;padding:5px 10px;border-bottom:1px solid var(--line);white-space:nowrap}
.stages th:first-child,.stages td:first-child{text-align:left}
.stages tbody tr:nth-child(even){background:#f8fafc}
.bar{display:inline-block;vertical-align:middle;width:90px;height:8px;background:#e2e8f0;border-radius:4px;
margin-right:8px;overflow:hidden}.bar i{display:block;height:100%;background:var(--best)}
.summary{margin:12px 0 0}
.samples{display:flex;gap:28px;justify-content:center;flex-wrap:wrap}
.samples figure{margin:0}
.samples figcaption{display:flex;flex-direction:column;margin-bottom:6px;padding-left:8px;border-left:4px solid #334155}
.samples figcaption span{color:var(--muted);font-size:13px}
.samples .best figcaption{border-color:var(--best)}.samples .uniform figcaption{border-color:var(--uniform)}
.samples img{display:block;image-rendering:pixelated;border:1px solid var(--line)}
.note{color:var(--muted);font-size:13px;text-align:center;margin:10px 0 0}
footer{color:var(--muted);font-size:12.5px;margin-top:8px}
"""
