from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from diffes.pruning.calibration import CalibrationSet
from diffes.stages import StageSchedule


class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            raise RuntimeError("boom")
        return x


def _calib(*inputs: torch.Tensor) -> CalibrationSet:
    return CalibrationSet(StageSchedule(2, (0,)), [[((x,), {}) for x in inputs]])


def test_replay_runs_every_call_with_its_hooks_then_removes_them() -> None:
    model, seen = Boom(), []
    hook = partial(model.register_forward_pre_hook, lambda m, args: seen.append(args[0].clone()))
    _calib(torch.zeros(2), -torch.ones(2)).replay(model, 0, [hook])
    assert [x.tolist() for x in seen] == [[0.0, 0.0], [-1.0, -1.0]]
    assert not model._forward_pre_hooks


def test_replay_removes_hooks_when_a_call_or_a_registration_fails() -> None:
    model = Boom()
    hook = partial(model.register_forward_pre_hook, lambda m, args: None)
    with pytest.raises(RuntimeError, match="boom"):
        _calib(torch.zeros(2), torch.ones(2)).replay(model, 0, [hook])
    assert not model._forward_pre_hooks

    def broken() -> None:
        raise KeyError("no such module")

    with pytest.raises(KeyError):
        _calib(torch.zeros(2)).replay(model, 0, [hook, broken])  # type: ignore[list-item]
    assert not model._forward_pre_hooks
