"""Terminal UI of the orchestration layer: the sweep's progress bars (rich, on stderr)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


class SweepProgress:
    """Two bars: compile units and measure jobs, with elapsed time and ETA. Thread-safe (rich's Progress is)."""

    def __init__(self, enabled: bool = True) -> None:
        cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
        self.prog = Progress(*cols, console=console, disable=not enabled)
        self._compile: Any = None
        self._measure: Any = None

    def __enter__(self) -> SweepProgress:
        self.prog.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.prog.__exit__(*exc)

    def start(self, units: int, jobs: int) -> None:
        self._compile = self.prog.add_task("compile", total=units)
        self._measure = self.prog.add_task("measure", total=jobs)

    def compiled(self) -> None:
        self.prog.advance(self._compile)

    def measured(self) -> None:
        self.prog.advance(self._measure)
