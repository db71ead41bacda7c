"""The progress bar of long jobs (PPO training, pre-training)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

console = Console()


@contextmanager
def progress_bar(label: str, total: int, enabled: bool) -> Iterator[Callable[[int, str | None], None]]:
    """Yields ``advance(done, stats)``: moves the bar to ``done`` steps and, when ``stats`` is
    given, shows it beside the bar. Without a terminal (nohup, CI, a cluster log) rich draws
    nothing until the end, so a plain line is printed every tenth of the way instead."""
    columns = (
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
        TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=console, disable=not enabled, transient=False) as progress:
        task = progress.add_task(label, total=total, stats="")
        next_report = total // 10

        def advance(done: int, stats: str | None = None) -> None:
            nonlocal next_report
            done = min(done, total)
            if stats is None:
                progress.update(task, completed=done)
                return
            progress.update(task, completed=done, stats=stats)
            if enabled and not console.is_terminal and done >= next_report:
                console.print(f"{label} {done:,}/{total:,} steps  {stats}")
                next_report = done + max(total // 10, 1)

        yield advance
