"""Config files and flags of the wrong type or range: one line naming the key, exit 2, nothing created, and
no torch import needed to say so (the checks run before the job imports anything heavy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffes.cli import main
from diffes.runs.config import RunConfig, load_config_file

TOML_CASES = [
    ('probes = "two"', "probes='two': use a whole number"),
    ('stages = "5"', "stages='5': use a whole number"),
    ("levels = 3", "levels=3: use fractions like"),
    ("levels = [0, true]", "levels=[0, True]: use fractions"),
    ("model = 7", "model=7: use a text value"),
    ('workers = "all"', "workers='all': use a whole number"),
    ('prefix_cache_mb = "big"', "prefix_cache_mb='big': input should be a number"),
    ('compensate = "false"', "compensate='false': use true or false"),
    ('export = "no"', "export='no': use true or false"),
    ("nested = 2", "nested=2: use true or false"),
    ("budget = true", "budget=True: input should be a number"),
    ('algorithm = "hill-climb"', "algorithm='hill-climb': use one of 'ga', 'nsga2' or 'islands'"),
    ('metric = "fid"', "metric='fid': use one of 'auto'"),
    ('cost = "watts"', "cost='watts': use one of 'macs' or 'latency'"),
    ('executor = "slurm"', "executor='slurm': use one of 'local' or 'ray'"),
    ("probe_seed = -1", "probe_seed=-1: use a seed in [0, 2**63)"),
    ("prefix_cache_mb = -5", "prefix_cache_mb=-5.0: use a size in MB >= 0"),
    ("seed = 99999999999999999999999", "seed=99999999999999999999999: use a seed in [0, 2**63)"),
    ('device = "banana"', "device='banana': use cpu, cuda or cuda:N"),
    ("height = 0", "height=0: use a positive image size"),
    ("cache_mb = 5", "cache_mb=5: unknown config key"),
    ("guidance = -1", "guidance=-1.0: use a value >= 0"),
    ("[search]\nbudget = 2", "budget=2.0: use a fraction of the dense cost in (0, 1]"),
    ("[search]\nnot_a_key = 2", "not_a_key=2: unknown key of [search]"),
    ("search = 3", "search=3: unknown config key"),
    ("budget = 0.5\nbudget = 0.4", "cannot parse it: Cannot overwrite a value (at line 2, column 13)"),
    ("budget = ", "cannot parse it: Invalid value (at line 1, column 10)"),
    ("[[x]", "cannot parse it"),
]


def fails(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("diffes: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(("text", "expected"), TOML_CASES)
def test_bad_toml_values(capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "run.toml"
    config.write_text(text + "\n")
    runs = tmp_path / "runs"
    assert expected in fails(capsys, "search", "--config", str(config), "--runs-dir", str(runs))
    assert not runs.exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("probes: two", "probes='two': use a whole number"),
        ("compensate: 'false'", "compensate='false': use true or false"),
        ("budget: [0.5\nstages: 3", "cannot parse it (line 2, column 7)"),
        ("- a\n- b", "the file must hold a table"),
    ],
)
def test_bad_yaml(capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(text + "\n")
    assert expected in fails(capsys, "search", "--config", str(config), "--runs-dir", str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


def test_binary_and_unknown_config_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    binary = tmp_path / "run.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage\x80")
    assert "not a text file" in fails(capsys, "search", "--config", str(binary))
    other = tmp_path / "run.ini"
    other.write_text("budget = 0.5\n")
    assert "use a .toml, .yaml or .yml file" in fails(capsys, "search", "--config", str(other))
    assert "no such file" in fails(capsys, "search", "--config", str(tmp_path / "missing.toml"))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--budget", "half"], "argument --budget: invalid float value: 'half'"),
        (["--probes", "0"], "probes=0: use at least 1 probe per condition"),
        (["--probe-seed", "-3"], "probe_seed=-3"),
        (["--prefix-cache-mb", "-1"], "prefix_cache_mb=-1.0"),
        (["--dtype", "int8"], "dtype='int8': use one of"),
        (["--levels", "0,0.5,0.5"], "levels=[0.0, 0.5, 0.5]: levels must increase strictly"),
        (["--workers", "-2"], "workers=-2"),
        (["--device", "gpu0"], "device='gpu0'"),
    ],
)
def test_bad_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path, flags: list[str], expected: str) -> None:
    assert expected in fails(capsys, "search", *flags, "--runs-dir", str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


def test_tables_and_flat_keys_agree(tmp_path: Path) -> None:
    flat, tables = tmp_path / "flat.toml", tmp_path / "tables.toml"
    flat.write_text('budget = 0.4\nstages = 5\nmetric = "psnr"\nexport = false\n')
    tables.write_text(
        '[search]\nbudget = 0.4\n[pruning]\nstages = 5\n[fitness]\nmetric = "psnr"\n[execution]\nexport = false\n'
    )
    a, b = (RunConfig.from_dict(load_config_file(p)) for p in (flat, tables))
    assert a == b and a.search.budget == 0.4 and a.pruning.stages == 5 and not a.execution.export
    assert a.pruning.seed == a.search.seed  # one seed per run
