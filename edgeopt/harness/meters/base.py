"""Meter interface. A meter is started before the measured window and stopped after it; it returns
joules over the window (energy counters) or integrates sampled power (power meters)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path


class Meter(ABC):
    name: str = ""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> float:
        """Joules consumed since start()."""


def no_meter_reason() -> str:
    """Why this machine has no energy figure (said in the result instead of a number)."""
    rapl = Path("/sys/class/powercap")
    why = []
    if not any(rapl.glob("intel-rapl:*")) if rapl.is_dir() else True:
        why.append("no RAPL powercap interface (/sys/class/powercap/intel-rapl:*)")
    else:
        why.append("RAPL energy_uj is not readable here")
    why.append("no NVIDIA GPU (NVML)")
    return "no energy meter on this device: " + ", ".join(why)
