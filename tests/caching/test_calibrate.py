"""`diffes calibrate-cache`: deterministic fits written as JSON that round-trips, and one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import zoo_pipeline

from diffes.caching.calibration import Calibration, fit_magcache, fit_teacache
from diffes.caching.rules import MagCacheRule, TeaCacheRule
from diffes.caching.runtime import apply_cache
from diffes.cli import main
from diffes.errors import CheckpointError, ConfigError

ARGS = ["calibrate-cache", "--steps", "4", "--probes", "1", "--classes", "1,2,3,4"]


def test_calibration_is_deterministic_round_trips_and_drives_its_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path in paths:
        assert main([*ARGS, "--rule", "teacache", "--out", str(path)]) == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    printed = capsys.readouterr().out
    assert "4 probes (1 held out)" in printed and "held-out R^2" in printed
    made = Calibration.load(paths[0])
    assert Calibration.from_dict(json.loads(json.dumps(made.to_dict()))) == made
    assert isinstance(made.rule, TeaCacheRule) and made.rule.num_steps == 4 and len(made.rule.coefficients) == 5
    made.check_for("DiTTransformer2DModel", 4)
    with pytest.raises(ConfigError, match="steps=6: the calibration was made at 4 steps"):
        made.check_for("DiTTransformer2DModel", 6)
    with pytest.raises(ConfigError, match="calibration='DiTTransformer2DModel': it was made for another model"):
        made.check_for("UNet2DModel", 4)
    pipe = zoo_pipeline("dit-digits")
    handle = apply_cache(pipe, made.rule)
    pipe([1, 2], num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert handle.summary.actions[0] == handle.summary.actions[-1] == "compute"
    with pytest.raises(ConfigError, match="steps=5: the cache calibration was made at 4"):
        pipe([1], num_inference_steps=5, output_type="pt")
    handle.remove()


def test_fits_recover_known_relations() -> None:
    torch.manual_seed(0)
    # output change = 2 * input change + 0.1, exactly: a perfect fit with R^2 1 on held-out rows too
    steps, rows = 6, 8
    scales = torch.rand(steps, rows) + 0.5
    signals = [torch.ones(rows, 3)]
    outputs = [torch.ones(rows, 3)]
    for t in range(1, steps):
        x = 0.05 * scales[t]
        signals.append(signals[-1] * (1 + x[:, None]))
        outputs.append(outputs[-1] * (1 + (2 * x + 0.1)[:, None]))
    fit = fit_teacache(signals, outputs, probes=8, heldout=2)
    assert fit["heldout_r2"] > 0.999 and fit["heldout_error"] < 1e-6
    mag = fit_magcache(outputs, probes=8, heldout=2)
    assert mag["ratios"][0] == 1.0 and len(mag["ratios"]) == steps
    MagCacheRule(ratios=mag["ratios"]).check_steps(steps)


def test_bad_calibrations_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "c.json"
    cases = [
        ([*ARGS, "--rule", "fastcache", "--out", str(out)], "invalid choice: 'fastcache'"),
        (["calibrate-cache", "--rule", "teacache", "--steps", "2", "--out", str(out)], "steps=2"),
        ([*ARGS, "--rule", "teacache", "--model", "unet-digits", "--out", str(out)], "cache_rule='UNet2DModel'"),
        ([*ARGS, "--rule", "teacache", "--out", str(tmp_path)], "out="),
        ([*ARGS, "--rule", "magcache", "--prompts", "p.txt", "--out", str(out)], "prompts="),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    out.write_text('{"rule": {"rule": "teacache"}}')
    with pytest.raises(CheckpointError, match="not a diffes cache calibration"):
        Calibration.load(out)


def test_generate_applies_a_rule_file_and_refuses_a_wrong_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    calibration, grid = tmp_path / "cal.json", tmp_path / "grid.png"
    assert main([*ARGS, "--rule", "teacache", "--out", str(calibration)]) == 0
    rules = {
        "unknown.json": {"rule": "fastcache"},
        "mask.json": {"rule": "mask", "computed": [1, 0, 1, 0, 1, 0, 1]},
    }
    for name, rule in rules.items():
        (tmp_path / name).write_text(json.dumps(rule))
    common = ["generate", "--classes", "1", "--per-condition", "1", "-o", str(grid)]
    cases = [
        ([*common, "--steps", "6", "--cache", str(calibration)], "steps=6: the calibration was made at 4 steps"),
        ([*common, "--steps", "4", "--cache", str(calibration), "--cache-threshold", "50"], "cache_threshold=50.0"),
        ([*common, "--steps", "4", "--cache", str(tmp_path / "unknown.json")], "cache_rule='fastcache'"),
        ([*common, "--steps", "4", "--cache", str(tmp_path / "mask.json")], "cache_mask=7"),
        ([*common, "--model", "unet-digits", "--steps", "4", "--cache", str(calibration)], "calibration="),
    ]
    capsys.readouterr()
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not grid.exists()
    assert main([*common, "--steps", "4", "--cache", str(calibration), "--cache-threshold", "0.5"]) == 0
    assert "cache: " in capsys.readouterr().out and grid.is_file()
