import os
import stat
import subprocess
import sys
import time

import pytest
import torch

import diffes.io
from diffes.errors import CheckpointError, ConfigError
from diffes.io import (
    TEMP_PREFIX,
    atomic_dir,
    atomic_path,
    check_file_path,
    check_folder_path,
    read_json,
    read_tensors,
    remove_stale_temps,
    write_json,
    write_tensors,
)


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "state.json"
    write_json(target, {"generation": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"generation": 2, "trunc')
        raise RuntimeError("killed mid-write")
    assert read_json(target) == {"generation": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def test_finished_file_gets_the_mode_open_would_give(tmp_path):
    # mkstemp alone would leave 0o600, unreadable by Ray workers running as another user
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", [1])
        (tmp_path / "b.json").write_text("[1]")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == stat.S_IMODE(os.stat(tmp_path / "b.json").st_mode)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o644


def test_tensors_round_trip_and_corruption(tmp_path):
    path = tmp_path / "t.safetensors"
    write_tensors(path, {"w": torch.arange(6.0).view(2, 3).t()}, metadata={"k": "v"})
    assert torch.equal(read_tensors(path)["w"], torch.arange(6.0).view(2, 3).t())
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="corrupt"):
        read_tensors(path)
    with pytest.raises(CheckpointError, match="missing"):
        read_tensors(tmp_path / "none.safetensors")


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n "a": 1,\n}')
    with pytest.raises(CheckpointError, match=r"bad\.json: not valid JSON .* line 3"):
        read_json(path)


def test_read_json_refuses_garbage_and_wrong_shapes(tmp_path):
    path = tmp_path / "c.json"
    for content, message in [
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"[" * 100_000, "not valid JSON"),
        (b"1" * 5000, "not valid JSON"),  # an integer too long to convert
        (b"", "not valid JSON"),
    ]:
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=message):
            read_json(path)
    path.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"c\.json: top level: input should be a valid dictionary"):
        read_json(path, dict)
    path.write_text('{"a": {"b": [1, "x"]}}')
    with pytest.raises(CheckpointError, match=r"c\.json: a\.b\[1\]: input should be a valid integer"):
        read_json(path, dict[str, dict[str, list[int]]])
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_json(tmp_path)  # a folder


def test_tensors_of_garbage(tmp_path):
    path = tmp_path / "t.safetensors"
    for content in (b"", b"\x00" * 7, b"\xff" * 64, (10**6).to_bytes(8, "little") + b"{}"):
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match="not a readable safetensors file"):
            read_tensors(path)


def test_tensor_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_tensors(tmp_path / "t.safetensors", {"w": torch.zeros(2)})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "t.safetensors").st_mode) == 0o644  # safetensors alone gives 0o600


def fill(folder, text):
    (folder / "sub").mkdir()
    (folder / "sub" / "a.txt").write_text(text)
    os.chmod(folder / "sub" / "a.txt", 0o600)  # as safetensors and save_pretrained leave their files


def test_atomic_dir_is_whole_with_umask_modes(tmp_path):
    target = tmp_path / "out"
    old = os.umask(0o022)
    try:
        with atomic_dir(target) as tmp:
            fill(tmp, "one")
    finally:
        os.umask(old)
    assert (target / "sub" / "a.txt").read_text() == "one"
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert stat.S_IMODE((target / "sub").stat().st_mode) == 0o755
    assert stat.S_IMODE((target / "sub" / "a.txt").stat().st_mode) == 0o644
    with pytest.raises(RuntimeError), atomic_dir(target, replace=True) as tmp:
        fill(tmp, "two")
        raise RuntimeError("failed mid-write")
    assert (target / "sub" / "a.txt").read_text() == "one" and os.listdir(tmp_path) == ["out"]
    with atomic_dir(target, replace=True) as tmp:
        fill(tmp, "three")
    assert (target / "sub" / "a.txt").read_text() == "three" and os.listdir(tmp_path) == ["out"]


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this pid until the system wraps around


def test_an_interrupted_write_leaves_nothing_after_the_next(tmp_path):
    target = tmp_path / "export"
    host = diffes.io._host()
    # what SIGKILL leaves: a half-written temp folder of a dead writer (and one of a swapped-out old export)
    killed = tmp_path / f"{TEMP_PREFIX}{host}-{dead_pid()}-0badcafe-export"
    fill_dir = killed / "pipeline"
    fill_dir.mkdir(parents=True)
    (fill_dir / "weights.safetensors").write_bytes(b"\x00" * 1000)
    swapped = tmp_path / f"{TEMP_PREFIX}{host}-{dead_pid()}-0badcaff-export"
    swapped.mkdir()
    # not stale: another target, a live writer, a foreign host's fresh write, and files that merely look alike
    other = tmp_path / f"{TEMP_PREFIX}{host}-{dead_pid()}-0badcafe-export2"
    live = tmp_path / f"{TEMP_PREFIX}{host}-{os.getppid()}-0badcafe-export"
    foreign = tmp_path / f"{TEMP_PREFIX}otherhost-1-0badcafe-export"
    for path in (other, live, foreign):
        path.mkdir()
    (tmp_path / ".export.new.x1y2").mkdir()
    with atomic_dir(target, replace=True) as tmp:
        fill(tmp, "complete")
    assert (target / "sub" / "a.txt").read_text() == "complete"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([".export.new.x1y2", "export", other.name, live.name, foreign.name])
    old = time.time() - 2 * 24 * 3600
    os.utime(foreign, (old, old))  # a day-old write from another machine was abandoned
    assert remove_stale_temps(target) == [foreign]


def test_folder_and_file_paths_blocked_by_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match=r"out=.*afile is a file, not a folder"):
        check_folder_path("out", tmp_path / "afile" / "out")
    with pytest.raises(ConfigError, match="that is a file"):
        check_folder_path("out", tmp_path / "afile")
    with pytest.raises(ConfigError, match="that is a folder"):
        check_file_path("output", tmp_path)
    with pytest.raises(ConfigError, match="NUL"):
        check_file_path("output", tmp_path / "a\0b")
    assert check_folder_path("out", tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
