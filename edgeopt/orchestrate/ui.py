"""Terminal UI of the orchestration layer: the sweep's progress (rich, on stderr).

Two bars (compile units, measure jobs) with elapsed time and ETA, and one line per board with the jobs it has
measured, what it is measuring now, and why it went away if it did. Thread-safe (rich's Progress is)."""

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
    """The sweep's progress: compile and measure bars, and a line per board."""

    def __init__(self, enabled: bool = True) -> None:
        cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
        self.prog = Progress(*cols, console=console, disable=not enabled)
        self.boards = Progress(TextColumn("  {task.description}"), TextColumn("{task.completed:>4.0f} measured"), TextColumn("{task.fields[now]}"),
                               console=console, disable=not enabled)
        self._compile: Any = None
        self._measure: Any = None
        self._board: dict[str, Any] = {}
        self._live: Any = None
        self.enabled = enabled

    def __enter__(self) -> SweepProgress:
        if self.enabled:
            from rich.console import Group
            from rich.live import Live

            self._live = Live(Group(self.prog, self.boards), console=console, refresh_per_second=4)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def start(self, units: int, jobs: int, boards: list[str] | None = None) -> None:
        self._compile = self.prog.add_task("compile", total=units)
        self._measure = self.prog.add_task("measure", total=jobs)
        for b in boards or []:
            self._board[b] = self.boards.add_task(b, total=None, now="")

    def compiled(self) -> None:
        self.prog.advance(self._compile)

    def measuring(self, board: str, what: str) -> None:
        """Say what a board is measuring now."""
        if board in self._board:
            self.boards.update(self._board[board], now=what)

    def measured(self, board: str | None = None) -> None:
        self.prog.advance(self._measure)
        if board in self._board:
            self.boards.update(self._board[board], advance=1, now="")

    def board_down(self, board: str, why: str | None) -> None:
        if board in self._board and why:
            self.boards.update(self._board[board], now=f"[red]down: {why[:100]}[/red]")
