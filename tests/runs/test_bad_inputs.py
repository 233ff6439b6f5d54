"""A corpus of user mistakes and damaged files, run through ``diffes.cli.main`` in-process: each exits 2 with
exactly one line on stderr that names the field, no traceback, and creates or changes nothing."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from valid_files import tiny_library, write_routed, write_run

from diffes.cli import main
from diffes.errors import ConfigError
from diffes.runs.rundir import check_run_name

Snapshot = dict[str, tuple[int, int]]


def snapshot(root: Path) -> Snapshot:
    """Every entry under ``root`` with its size and modification time (links not followed)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(folder, name))
            out[os.path.relpath(os.path.join(folder, name), root)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture()
def rejects(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """``rejects(*argv)``: the one error line of ``diffes *argv``, checked as the module docstring says."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQDM_DISABLE", "1")

    def run(*argv: str) -> str:
        before = snapshot(tmp_path)
        capsys.readouterr()
        code = main(list(argv))
        err = capsys.readouterr().err
        lines = err.splitlines()
        assert code == 2, err
        assert len(lines) == 1 and lines[0].startswith("diffes: error: "), err
        assert "Traceback" not in err and len(lines[0]) < 400, err
        assert snapshot(tmp_path) == before, "the failed command created or changed files"
        return lines[0]

    return run


# ---- run names: one plain folder name, and the run directory stays under the runs directory ----

BAD_NAMES = ["../escaped", "/tmp/diffes-abs-escape", "a/b", ".", "..", "a\\b", "x" * 300, "new\nline", "tab\tname"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_run_names(rejects: Callable[..., str], tmp_path: Path, name: str) -> None:
    (tmp_path / "runs").mkdir()
    assert "name=" in rejects("search", "--runs-dir", str(tmp_path / "runs"), "--name", name)
    assert not Path("/tmp/diffes-abs-escape").exists()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "nul\0byte", "../x", "/abs"])
def test_check_run_name(name: str) -> None:
    with pytest.raises(ConfigError, match="name="):
        check_run_name(name)


def test_run_name_that_links_outside(rejects: Callable[..., str], tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs" / "link").symlink_to(tmp_path / "elsewhere")
    assert "leads outside" in rejects("search", "--runs-dir", str(tmp_path / "runs"), "--name", "link")


@pytest.mark.parametrize("runs_dir", ["afile", "afile/runs"])
def test_runs_dir_under_a_file(rejects: Callable[..., str], tmp_path: Path, runs_dir: str) -> None:
    (tmp_path / "afile").write_text("x")
    assert "runs_dir=" in rejects("search", "--runs-dir", str(tmp_path / runs_dir), "--name", "r")


# ---- flag type errors: one line naming the flag, not a usage dump ----

FLAG_ERRORS = [
    (("search", "--budget", "half"), "--budget"),
    (("search", "--population", "many"), "--population"),
    (("search", "--stages", "1.5"), "--stages"),
    (("search", "--probe-seed", "x"), "--probe-seed"),
    (("search", "--budget"), "--budget"),
    (("search", "--bogus-flag"), "--bogus-flag"),
    (("export", "r"), "--out"),
    (("export", "r", "--out", "o", "--budget", "half"), "--budget"),
    (("resume",), "run"),
    (("resume", "r", "--generations", "x"), "--generations"),
    (("status",), "run"),
    (("generate", "--steps", "many"), "--steps"),
    (("generate", "--seed", "1e3"), "--seed"),
    (("generate", "--guidance", "strong"), "--guidance"),
    (("generate", "--guidance-kind", "sideways"), "--guidance-kind"),
    (("prune", "--stages", "x", "--out", "o"), "--stages"),
    (("prune",), "--out"),
    (("report", "r", "--per-class", "x"), "--per-class"),
    ((), "command"),
    (("frobnicate",), "frobnicate"),
    (("search", "--budget", "h" * 5000), "--budget"),
]


@pytest.mark.parametrize(("argv", "field"), FLAG_ERRORS)
def test_flag_errors(rejects: Callable[..., str], argv: tuple[str, ...], field: str) -> None:
    assert field in rejects(*argv)


def test_help_stays_full(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: diffes search") and "--budget" in out and len(out.splitlines()) > 20


# ---- damaged run files: status, resume, export, report, inspect ----


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run after generation 0, with its library, and a routed export (copied before each damage)."""
    root = tmp_path_factory.mktemp("valid")
    pipe, library = tiny_library()
    write_run(root / "run", library)
    write_routed(root / "routed", pipe, library)
    return root


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def without(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda d: {k: v for k, v in d.items() if k != key}


def setting(key: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda d: {**d, key: value}


def garbage(path: Path) -> None:
    path.write_bytes(b"\x89\xff\xfe garbage \x00\x01")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


CKPT = "checkpoints/gen_0000.json"
DAMAGE: list[tuple[str, str, Callable[[Path], None], str]] = [
    # (command, file in the run, damage, what the error line names)
    ("status", "config.json", garbage, "config.json: not UTF-8"),
    ("status", "config.json", lambda p: p.write_text("[1, 2]"), "config.json: top level"),
    ("status", "config.json", truncate, "config.json: not valid JSON"),
    ("status", CKPT, garbage, "gen_0000.json: not UTF-8"),
    ("status", CKPT, truncate, "gen_0000.json: not valid JSON"),
    ("status", CKPT, lambda p: edit_json(p, setting("search", 7)), "gen_0000.json: search"),
    ("status", CKPT, lambda p: edit_json(p, without("rng")), "gen_0000.json: rng"),
    ("status", CKPT, lambda p: edit_json(p, setting("generation", 5)), "gen_0000.json: generation"),
    ("status", CKPT, lambda p: edit_json(p, lambda d: {**d, "rng": {**d["rng"], "torch": "AAAA"}}), "rng"),
    ("status", CKPT, lambda p: edit_json(p, lambda d: {**d, "search": without("cache")(d["search"])}), "cache"),
    ("status", CKPT, lambda p: edit_json(p, lambda d: {**d, "search": {**d["search"], "budget": 1}}), "budget"),
    ("status", "best.json", garbage, "best.json"),
    ("status", "best.json", lambda p: edit_json(p, setting("genome", "best")), "best.json: genome"),
    ("resume", "config.json", garbage, "config.json"),
    ("resume", "config.json", lambda p: p.write_text('"a string"'), "config.json: top level"),
    ("export", CKPT, lambda p: edit_json(p, without("rng")), "gen_0000.json: rng"),
    ("export", "library/library.json", lambda p: edit_json(p, without("costs")), "library.json: costs"),
    ("export", "library/library.json", garbage, "library.json"),
    ("export", "library/library.json", lambda p: edit_json(p, setting("config", [])), "library.json: config"),
    ("export", "library/scores.safetensors", truncate, "scores.safetensors"),
    ("report", CKPT, lambda p: edit_json(p, setting("search", 7)), "search"),
]


@pytest.mark.parametrize(("command", "name", "damage", "named"), DAMAGE, ids=[f"{d[0]}-{d[3]}" for d in DAMAGE])
def test_damaged_run_files(
    rejects: Callable[..., str],
    valid: Path,
    tmp_path: Path,
    command: str,
    name: str,
    damage: Callable[[Path], None],
    named: str,
) -> None:
    run = Path(shutil.copytree(valid / "run", tmp_path / "run"))
    damage(run / name)
    extra = ["--out", str(tmp_path / "out")] if command == "export" else []
    assert named in rejects(command, str(run), *extra)


def test_missing_or_non_run_folders(rejects: Callable[..., str], tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    for command in ("status", "resume", "export", "report"):
        extra = ["--out", str(tmp_path / "out")] if command == "export" else []
        for path in (tmp_path / "nothing", tmp_path / "afile"):
            assert "not a diffes run" in rejects(command, str(path), *extra)


def test_inspect_damaged_library(rejects: Callable[..., str], valid: Path, tmp_path: Path) -> None:
    library = Path(shutil.copytree(valid / "run" / "library", tmp_path / "lib"))
    edit_json(library / "library.json", lambda d: {**d, "costs": "cheap"})
    assert "library.json: costs" in rejects("inspect", str(library))
    garbage(library / "library.json")
    assert "library.json" in rejects("inspect", str(library))


# ---- export --out and --budget ----


@pytest.mark.parametrize(
    ("out", "budget", "named"),
    [
        ("afile/out", None, "out="),
        ("afile", None, "out="),
        ("full", None, "out="),
        ("new", "0", "budget=0.0"),
        ("new", "1.5", "budget=1.5"),
        ("new", "0.01", "budget=0.01"),  # below every evaluated schedule
    ],
)
def test_export_out_and_budget(
    rejects: Callable[..., str], valid: Path, tmp_path: Path, out: str, budget: str | None, named: str
) -> None:
    run = shutil.copytree(valid / "run", tmp_path / "run")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    extra = ["--budget", budget] if budget is not None else []
    assert named in rejects("export", str(run), "--out", str(tmp_path / out), *extra)


# ---- generate ----


def test_generate_mistakes(rejects: Callable[..., str], tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    assert "output=" in rejects("generate", "-o", str(tmp_path / "adir"))
    assert "steps=0" in rejects("generate", "--steps", "0")
    line = rejects("generate", "--classes", "0-99999", "--steps", "1", "--per-class", "1")
    assert "classes=" in line and len(line) < 300


def test_generate_output_under_a_file(rejects: Callable[..., str], tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    line = rejects("generate", "--classes", "0", "--steps", "1", "--per-class", "1", "-o", "afile/grid.png")
    assert "output=" in line and "afile is a file" in line


ROUTED_DAMAGE: list[tuple[str, Callable[[Path], None], str]] = [
    ("routing.json", lambda p: edit_json(p, without("files")), "routing.json: files"),
    ("routing.json", lambda p: edit_json(p, setting("levels", "fast")), "routing.json: levels"),
    ("routing.json", lambda p: edit_json(p, without("pipeline_files")), "pipeline_files"),
    ("routing.json", garbage, "routing.json: not UTF-8"),
    ("pipeline/transformer/diffusion_pytorch_model.safetensors", truncate, "diffusion_pytorch_model.safetensors"),
    ("pipeline/transformer/config.json", lambda p: p.unlink(), "config.json: file is missing"),
    ("library/plans.json", lambda p: p.write_text("{}"), "plans.json"),
]


@pytest.mark.parametrize(("name", "damage", "named"), ROUTED_DAMAGE, ids=[d[0] for d in ROUTED_DAMAGE])
def test_generate_from_damaged_export(
    rejects: Callable[..., str], valid: Path, tmp_path: Path, name: str, damage: Callable[[Path], None], named: str
) -> None:
    routed = Path(shutil.copytree(valid / "routed", tmp_path / "routed"))
    damage(routed / name)
    assert named in rejects("generate", "--routed", str(routed), "--classes", "0", "--steps", "2", "--per-class", "1")
