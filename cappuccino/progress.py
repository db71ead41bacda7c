"""The progress bar of long jobs (PPO training, pre-training)."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
)
from rich.text import Text

console = Console()


def print_line(text: str) -> None:
    """One line to copy or grep (a command, a link, a log line): never wrapped, never read as markup."""
    console.print(text, soft_wrap=True, markup=False, highlight=False)


def eta_seconds(elapsed: float, done: int, total: int) -> float | None:
    """Seconds left at the average rate so far; None before the first step is done."""
    return elapsed * (total - done) / done if done > 0 else None


def clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


class EtaColumn(ProgressColumn):
    """Time left at the average rate since the start: shown from the first update on, where
    rich's own column waits for a second one (its rate needs two samples)."""

    def render(self, task: Task) -> Text:
        left = eta_seconds(task.elapsed or 0.0, int(task.completed), int(task.total or 0))
        if task.finished:
            return Text(f"took {clock(task.finished_time or 0.0)}", style="progress.elapsed")
        return Text("eta -:--:--" if left is None else f"eta {clock(left)}", style="progress.remaining")


@contextmanager
def progress_bar(label: str, total: int, enabled: bool) -> Iterator[Callable[[int, str | None], None]]:
    """Yields ``advance(done, stats)``: moves the bar to ``done`` steps and, when ``stats`` is
    given, shows it beside the bar, with the time left from the first update on. Without a
    terminal (nohup, CI, a cluster log) rich draws nothing until the end, so a plain line with
    the elapsed and remaining time is printed at the first update, then every tenth of the way."""
    columns = (
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"), EtaColumn(),
    )  # fmt: skip
    with Progress(*columns, console=console, disable=not enabled, transient=False) as progress:
        task = progress.add_task(label, total=total, stats="")
        start = time.monotonic()
        next_report = 1  # the first update

        def advance(done: int, stats: str | None = None) -> None:
            nonlocal next_report
            done = min(done, total)
            if stats is None:
                progress.update(task, completed=done)
                return
            progress.update(task, completed=done, stats=stats)
            if enabled and not console.is_terminal and done >= next_report:
                elapsed = time.monotonic() - start
                left = eta_seconds(elapsed, done, total)
                line = f"{label} {done:,}/{total:,} steps  {stats}  elapsed {clock(elapsed)}  eta {clock(left or 0.0)}"
                print_line(line)
                next_report = done + max(total // 10, 1)

        yield advance
