"""Meter interface. A meter is started before the measured window and stopped after it.

Two kinds of source exist: energy counters (RAPL, NVML: a cumulative joule count) and power meters
(INA3221, tegrastats, Android battery, Monsoon: instantaneous watts). Both are sampled in a thread with
a host timestamp, so the energy of any sub-window (the runner's timed loop, not its model loading) can be
integrated afterwards, and an idle baseline measured just before can be subtracted. The meter's name is
always stored with the figure.

Meters read files through a `FileAccess` so the same parser serves this machine and a board over SSH/adb.
"""

from __future__ import annotations

import glob as _glob
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edgeopt.errors import EdgeoptError


class MeterError(EdgeoptError):
    """A meter that is absent, unreadable or returned something we cannot parse."""


class FileAccess:
    """Read sysfs-style one-line files and expand globs on the machine being measured (here: this one)."""

    def read_many(self, paths: list[str]) -> list[str | None]:
        out: list[str | None] = []
        for p in paths:
            try:
                out.append(Path(p).read_text().strip())
            except OSError:
                out.append(None)
        return out

    def read(self, path: str) -> str | None:
        return self.read_many([path])[0]

    def glob(self, pattern: str) -> list[str]:
        return sorted(_glob.glob(pattern))


class RootedFiles(FileAccess):
    """Absolute sysfs paths read under another root: a copied /sys tree (fixtures, a board's snapshot)."""

    def __init__(self, root: str | Path) -> None:
        self.root = str(Path(root).resolve())

    def read_many(self, paths: list[str]) -> list[str | None]:
        return super().read_many([self.root + p for p in paths])

    def glob(self, pattern: str) -> list[str]:
        n = len(self.root)
        return [p[n:] for p in super().glob(self.root + pattern)]


LOCAL_FILES = FileAccess()


@dataclass(frozen=True)
class MeterTarget:
    """The machine a meter reads: its files (sysfs), and the argv that runs a command there (None where
    there is no such way, e.g. a phone reached only through adb's file reads)."""

    files: FileAccess = LOCAL_FILES
    shell_prefix: list[str] | None = field(default_factory=list)


LOCAL_TARGET = MeterTarget()


class Meter(ABC):
    """One energy source. `read()` returns cumulative joules (kind="counter") or watts (kind="power")."""

    name: str = ""
    kind: Literal["counter", "power"] = "power"
    interval: float = 0.05  # seconds between samples

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    @abstractmethod
    def read(self) -> float:
        """Cumulative joules (counter) or instantaneous watts (power) right now."""

    def available(self) -> tuple[bool, str]:
        """(True, description) when the meter can be read, else (False, why)."""
        try:
            self.read()
        except (MeterError, OSError, ValueError) as e:
            return False, str(e)
        return True, self.name

    # -- sampling -----------------------------------------------------------------------------------
    def _sample(self) -> tuple[float, float]:
        """One reading, stamped at the middle of the read: a read over ssh/adb takes a varying fraction of a
        second, and a stamp taken before (or after) it would shift each sample by that varying delay."""
        t0 = time.monotonic()
        v = self.read()
        return (t0 + time.monotonic()) / 2, v

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self._sample())
            except (MeterError, OSError, ValueError) as e:
                self.error = str(e)
                return
            self._stop.wait(self.interval)

    def start(self) -> None:
        """Begin sampling in a background thread (one sample taken at once)."""
        self.samples = [self._sample()]
        self.error = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"meter-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> float:
        """Stop sampling; joules over the whole sampled window."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 + self.interval)
        self.samples.append(self._sample())
        return energy_between(self.samples, self.kind, self.samples[0][0], self.samples[-1][0])

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the meter (a streaming process, a USB handle)."""


def _interp(samples: list[tuple[float, float]], t: float) -> float:
    if t <= samples[0][0]:
        return samples[0][1]
    for (t0, v0), (t1, v1) in zip(samples, samples[1:], strict=False):
        if t0 <= t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return samples[-1][1]


def energy_between(samples: list[tuple[float, float]], kind: str, t0: float, t1: float) -> float:
    """Joules between host times t0 and t1: counter difference (interpolated) or trapezoid of power."""
    if not samples:
        raise MeterError("the meter took no samples", "lengthen the run or shorten the meter's interval")
    if t1 <= t0:
        return 0.0
    if kind == "counter":
        return _interp(samples, t1) - _interp(samples, t0)
    pts = [(t0, _interp(samples, t0))] + [(t, v) for t, v in samples if t0 < t < t1] + [(t1, _interp(samples, t1))]
    return sum((b[0] - a[0]) * (a[1] + b[1]) / 2.0 for a, b in zip(pts, pts[1:], strict=False))


def mean_power(samples: list[tuple[float, float]], kind: str) -> float:
    """Average watts over the samples (the idle baseline)."""
    if len(samples) < 2:
        raise MeterError("too few samples for an idle baseline", "lengthen the idle window")
    dur = samples[-1][0] - samples[0][0]
    return energy_between(samples, kind, samples[0][0], samples[-1][0]) / dur if dur > 0 else 0.0


def idle_baseline(meter: Meter, seconds: float) -> float:
    """Watts drawn with nothing running, measured for `seconds` just before a measurement."""
    meter.start()
    time.sleep(seconds)
    meter.stop()
    return mean_power(meter.samples, meter.kind)


def no_meter_reason() -> str:
    """Why this machine has no energy figure (said in the result instead of a number)."""
    rapl = Path("/sys/class/powercap")
    why = []
    zones = list(rapl.glob("intel-rapl:*")) if rapl.is_dir() else []
    if not zones:
        why.append("no RAPL powercap interface (/sys/class/powercap/intel-rapl:*)")
    else:
        why.append("RAPL energy_uj is not readable here (root only since Linux 5.10)")
    why.append("no NVIDIA GPU (NVML)")
    return "no energy meter on this device: " + ", ".join(why)
