from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import zoo_pipeline

from diffes.cli import main
from diffes.errors import ConfigError, UnsupportedModelError
from diffes.pruning import LevelGrid, PruningConfig, PruningLibrary, build_library, prune_copy, trace_structure
from diffes.pruning.build import level_costs
from diffes.pruning.cost import count_macs, count_params
from diffes.stages import StageSchedule


@pytest.fixture(scope="module")
def library() -> PruningLibrary:
    torch.set_flush_denormal(True)
    pipe = zoo_pipeline("dit-digits", trained=True)
    return build_library(
        pipe, PruningConfig(stages=3, steps=6, calibration_samples=8, plan_cache_mb=0.5), progress=False
    )


def same_plan(a: object, b: object) -> bool:
    pa, pb = a.__dict__, b.__dict__
    if pa.keys() != pb.keys():
        return False
    slices = all(d == pb["slices"][k][0] and torch.equal(i, pb["slices"][k][1]) for k, (d, i) in pa["slices"].items())
    repl = pa["replacements"].keys() == pb["replacements"].keys() and all(
        torch.equal(t, pb["replacements"][k]) for k, t in pa["replacements"].items()
    )
    rest = all(pa[k] == pb[k] for k in ("stage", "level", "overrides", "kept_units", "skipped"))
    return slices and repl and rest


def test_save_load_round_trip_gives_identical_plans(library: PruningLibrary, tmp_path: Path) -> None:
    library.save(tmp_path / "lib")
    loaded = PruningLibrary.load(tmp_path / "lib")
    assert [c.macs for c in loaded.costs] == [c.macs for c in library.costs]
    for stage in range(library.num_stages):
        for level in (1, 4, 7):
            assert same_plan(loaded.plan(stage, level), library.plan(stage, level))
    assert not list((tmp_path / "lib").glob("*.pkl")) and not list((tmp_path / "lib").glob("*.pt"))


def test_plans_are_nested_within_a_stage_and_stage_specific(library: PruningLibrary) -> None:
    group = library.structure.groups[1].name  # an MLP
    for stage in range(library.num_stages):
        kept = [set(library.kept_units(stage, lv)[group]) for lv in range(library.num_levels)]
        assert all(denser >= sparser for denser, sparser in zip(kept, kept[1:]))
    per_stage = [tuple(library.kept_units(s, 5)[group]) for s in range(library.num_stages)]
    assert len(set(per_stage)) > 1  # Taylor per stage: different stages keep different units


def test_costs_are_counted_on_the_pruned_module(library: PruningLibrary) -> None:
    model = zoo_pipeline("dit-digits", trained=True).denoiser
    call = lambda m: m(torch.randn(1, 1, 8, 8), torch.tensor([500]), class_labels=torch.tensor([3]))  # noqa: E731
    for level in (0, 3, 7):
        pruned = prune_copy(model, library.structure, library.shape_plan(level)) if level else model
        assert library.costs[level].macs == count_macs(pruned, call)
        assert library.costs[level].params == count_params(pruned)
    macs = [c.macs for c in library.costs]
    assert macs == sorted(macs, reverse=True) and macs[-1] < 0.4 * macs[0]
    library.measure_latency(model, call, repeats=3)
    assert all(c.latency and c.latency > 0 for c in library.costs)


def test_costs_fall_back_to_real_copies(library: PruningLibrary, monkeypatch: pytest.MonkeyPatch) -> None:
    """The build counts on meta-device copies (no weights held; the test above checks them against real pruned
    copies); a model the meta device cannot run is counted on real copies, to the same MACs and parameters."""
    model = zoo_pipeline("dit-digits", trained=True).denoiser
    example = ((torch.randn(2, 1, 8, 8), torch.tensor([500, 500])), {"class_labels": torch.tensor([3, 3])})
    built = [(c.macs, c.params) for c in library.costs]

    def no_meta(model: torch.nn.Module) -> torch.nn.Module:
        raise NotImplementedError("no meta kernel")

    monkeypatch.setattr("diffes.pruning.cost.meta_copy", no_meta)
    assert [(c.macs, c.params) for c in level_costs(model, library, example)] == built


def test_plan_cache_is_bounded(library: PruningLibrary) -> None:
    library.clear_cache()
    for level in range(1, library.num_levels):
        library.plan(0, level)
    assert sum(p.nbytes() for p in library._cache.values()) <= 0.5 * 2**20 or len(library._cache) == 1


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: LevelGrid((0.0, 1.0)), "levels=1.0"),
        (lambda: LevelGrid(()), "levels=[]"),
        (lambda: LevelGrid.parse("0,0.3,0.2"), "levels=[0.0, 0.3, 0.2]"),
        (lambda: PruningConfig(stages=30, steps=20), "stages=30"),
        (lambda: PruningConfig(importance="random"), "importance='random'"),
        (lambda: StageSchedule.uniform(5, 0), "stages=0"),
    ],
)
def test_bad_input_is_a_one_line_config_error(make: object, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()  # type: ignore[operator]
    assert field in str(info.value) and "\n" not in str(info.value)


def test_head_count_levels() -> None:
    assert LevelGrid.parse("heads:8,6,4,2").fractions == (0.0, 0.25, 0.5, 0.75)


def test_unprunable_model_names_its_type() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    with pytest.raises(UnsupportedModelError, match="model=Sequential: "):
        trace_structure(model, lambda m: m(torch.randn(2, 4)))


def test_prune_and_inspect_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lib"
    args = [
        "prune",
        "--model",
        "unet-digits",
        "--stages",
        "2",
        "--steps",
        "4",
        "--calibration-samples",
        "4",
        "--out",
        str(out),
    ]
    assert main([*args, "--importance", "magnitude", "--levels", "0,0.25,0.5"]) == 0
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "importance=magnitude" in text and text.count("%") >= 6
    assert main(args) == 2  # the library is already there
    assert "--force" in capsys.readouterr().err
