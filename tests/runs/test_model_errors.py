"""Own-model mistakes: one line naming the field, exit 2, before any library or teacher is built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffes.cli import main


def fails(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("diffes: error: "), err
    return err


def fake_pipeline(root: Path, class_name: str) -> Path:
    """Only model_index.json: these errors must come before any weight is read."""
    folder = root / class_name
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return folder


@pytest.mark.parametrize(
    ("model", "flags", "expected"),
    [
        (
            "DDPMPipeline",
            ["--classes", "1"],
            "pipeline=DDPMPipeline: not supported; diffes runs DiTPipeline, FluxPipeline",
        ),
        ("DiTPipeline", ["--prompts", "p.txt"], "prompts='p.txt': {m} is class-conditional; give --classes"),
        ("DiTPipeline", [], "classes=None: {m} is class-conditional; choose classes with --classes"),
        ("StableDiffusionPipeline", ["--classes", "1"], "classes='1': {m} is a text-to-image model"),
        ("StableDiffusionPipeline", [], "prompts=None: a text-to-image model needs prompts"),
        ("StableDiffusionPipeline", ["--prompts", "missing.txt"], "prompts='missing.txt': no such file"),
        ("StableDiffusionPipeline", ["--prompts", "empty.txt"], "the file holds no prompt"),
        ("StableDiffusionPipeline", ["--prompts", "p.txt", "--metric", "classifier"], "metric='classifier': the digit"),
        (
            "FluxPipeline",
            ["--prompts", "p.txt", "--dtype", "float64"],
            "dtype='float64': use one of 'float32', 'float16' or 'bfloat16'",
        ),
        (
            "FluxPipeline",
            ["--prompts", "p.txt", "--guidance-kind", "double"],
            "guidance_kind='double': use one of 'cfg', 'distilled' or 'none'",
        ),
    ],
)
def test_own_model_mistakes(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    flags: list[str],
    expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.txt").write_text("a digit 3\n")
    (tmp_path / "empty.txt").write_text("\n  \n")
    folder = fake_pipeline(tmp_path, model)
    runs = tmp_path / "runs"
    err = fails(capsys, "search", "--model", str(folder), *flags, "--runs-dir", str(runs))
    assert expected.format(m=str(folder)) in err
    assert not runs.exists()  # nothing created


def test_half_precision_on_cpu_is_refused_before_work(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = fails(capsys, "search", "--dtype", "float16", "--device", "cpu", "--runs-dir", str(tmp_path / "runs"))
    assert "dtype='float16': float16 needs a CUDA device; use float32 or bfloat16 on the CPU" in err
    assert not (tmp_path / "runs").exists()  # refused before the run directory is made


def test_missing_cuda_device_is_refused_before_work(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = fails(capsys, "search", "--device", "cuda:7", "--runs-dir", str(tmp_path / "runs"))
    assert "device='cuda:7': no such CUDA device is visible here" in err
    assert not (tmp_path / "runs").exists()


def test_generate_refuses_prompts_for_a_class_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = fails(capsys, "generate", "--prompt", "a cat", "--steps", "2", "-o", str(tmp_path / "g.png"))
    assert "ZooPipeline takes classes (--classes)" in err
    assert not (tmp_path / "g.png").exists()
