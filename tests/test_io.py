import os
import stat

import pytest
import torch

from diffes.errors import CheckpointError
from diffes.io import atomic_path, read_json, read_tensors, write_json, write_tensors


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
