"""SIGTERM (a scheduler's preemption) stops a command like Ctrl-C: exit 143, one line, handler restored."""

from __future__ import annotations

import argparse
import os
import signal
import time

import pytest

import diffes.cli
from diffes.cli import main


def test_sigterm_interrupts_a_command_like_ctrl_c(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reached: list[str] = []

    def long_command(args: argparse.Namespace) -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises at the next bytecode, long before this ends
            reached.append("end")
        finally:
            reached.append("finally")  # cleanup runs, as for Ctrl-C: atomic writes remove their temp files

    monkeypatch.setattr(diffes.cli, "cmd_inspect", long_command)
    before = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    assert main(["inspect", "anything"]) == 128 + signal.SIGTERM
    assert time.monotonic() - started < 4
    assert reached == ["finally"]
    assert capsys.readouterr().err == "diffes: terminated (SIGTERM)\n"
    assert signal.getsignal(signal.SIGTERM) is before  # a library caller keeps its own handler afterwards


def test_ctrl_c_still_exits_130(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(args: argparse.Namespace) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(diffes.cli, "cmd_inspect", interrupted)
    assert main(["inspect", "anything"]) == 130
    assert capsys.readouterr().err == "diffes: interrupted\n"
