"""Jetson `tegrastats`: one line per interval with rails as `NAME CUR/AVG`.

JetPack 5/6 print units (`VDD_IN 5832mW/5852mW`); JetPack 4 boards print bare numbers in mW
(`POM_5V_IN 2545/2547`). Temperatures appear as `CPU@24.5C`. The meter runs
`tegrastats --interval MS` as a streaming process (locally or through the device's shell) and uses the
current (first) value of the input rail.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from typing import Any

from edgeopt.harness.meters.base import Meter, MeterError, MeterTarget
from edgeopt.harness.meters.registry import METERS

_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")
NOT_RAILS = {"RAM", "SWAP", "IRAM", "LFB"}


def parse_line(line: str) -> dict:
    """{'rails_mw': {name: (cur, avg)}, 'temps_c': {name: C}} from one tegrastats line."""
    rails = {m.group(1): (int(m.group(2)), int(m.group(3))) for m in _RAIL.finditer(line) if m.group(1) not in NOT_RAILS}
    temps = {m.group(1): float(m.group(2)) for m in _TEMP.finditer(line)}
    return {"rails_mw": rails, "temps_c": temps}


def total_watts(parsed: dict, rail: str | None = None) -> float:
    rails = parsed["rails_mw"]
    if rail:
        if rail not in rails:
            raise MeterError(f"tegrastats line has no rail {rail!r}", f"rails: {', '.join(rails) or 'none'}")
        return rails[rail][0] / 1e3
    for r in TOTAL_RAILS:
        if r in rails:
            return rails[r][0] / 1e3
    if not rails:
        raise MeterError("tegrastats line has no power rails", "run tegrastats as root on a Jetson")
    return sum(c for c, _ in rails.values()) / 1e3


class TegrastatsMeter(Meter):
    """Power from a running `tegrastats`; `argv_prefix` runs it elsewhere (e.g. the ssh command of a board)."""

    kind = "power"

    def __init__(self, interval_ms: int = 100, rail: str | None = None, argv_prefix: list[str] | None = None, exe: str = "tegrastats") -> None:
        super().__init__()
        self.interval = interval_ms / 1e3
        self.rail = rail
        self.name = f"tegrastats:{rail or 'input'}"
        self.cmd = [*(argv_prefix or []), exe, "--interval", str(interval_ms)]
        self.proc: subprocess.Popen | None = None
        self.latest: float | None = None
        self.temps: dict[str, float] = {}
        self._reader: threading.Thread | None = None

    def _pump(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            p = parse_line(line)
            try:
                self.latest = total_watts(p, self.rail)
                self.temps = p["temps_c"]
            except MeterError as e:
                self.error = str(e)

    def _ensure(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            try:
                self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            except FileNotFoundError:
                raise MeterError(f"{self.cmd[0]} not found", "tegrastats exists on Jetson boards only") from None
            self._reader = threading.Thread(target=self._pump, daemon=True)
            self._reader.start()
            deadline = time.monotonic() + 5
            while self.latest is None and time.monotonic() < deadline and self.proc.poll() is None:
                time.sleep(0.02)
        if self.latest is None:
            raise MeterError("tegrastats printed no power line", self.error or "run it as root on a Jetson")

    def read(self) -> float:
        self._ensure()
        return float(self.latest)  # type: ignore[arg-type]

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


@METERS.register("tegrastats")
def _make(target: MeterTarget, **opts: Any) -> Meter:
    return TegrastatsMeter(argv_prefix=target.shell_prefix, **opts)
