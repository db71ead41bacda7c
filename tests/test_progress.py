"""The progress bar: time left from the first update, plain lines without a terminal."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.progress import Progress

from cappuccino import progress
from cappuccino.progress import EtaColumn, eta_seconds, progress_bar


def test_eta_is_the_average_rate_so_far_and_unknown_before_any_step():
    assert eta_seconds(elapsed=30.0, done=1, total=10) == pytest.approx(270.0)
    assert eta_seconds(elapsed=30.0, done=10, total=10) == 0.0
    assert eta_seconds(elapsed=30.0, done=0, total=10) is None


def test_eta_column_shows_the_time_left_after_one_update():
    now = [0.0]
    bar = Progress(get_time=lambda: now[0])
    task_id = bar.add_task("PPO", total=100)
    task = bar.tasks[0]
    assert EtaColumn().render(task).plain == "eta -:--:--"
    now[0] = 20.0
    bar.update(task_id, completed=10)  # one update: 10 steps in 20 s, 90 left
    assert EtaColumn().render(task).plain == "eta 0:03:00"


def test_without_a_terminal_the_first_update_prints_a_line_then_every_tenth(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=out, force_terminal=False, width=40))  # lines never wrap
    with progress_bar("PPO", 1000, enabled=True) as advance:
        advance(10, "first")
        advance(50, "quiet")  # not yet a tenth past the first line
        advance(110, "tenth")
    lines = [line for line in out.getvalue().splitlines() if line.startswith("PPO ")]
    assert [line.split("  ")[1] for line in lines[:2]] == ["first", "tenth"]
    assert lines[0].startswith("PPO 10/1,000 steps") and "eta " in lines[0] and "elapsed " in lines[0]


def test_a_disabled_bar_prints_nothing(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=out, force_terminal=False))
    with progress_bar("PPO", 100, enabled=False) as advance:
        advance(10, "stats")
    assert out.getvalue() == ""
