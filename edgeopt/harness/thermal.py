"""Thermal state: read sensors, wait for a cool-down, flag throttling.

A phone or a fanless board heats up over a sweep and its clocks drop; a measurement taken hot is not
comparable to one taken cold. Before each measurement the harness waits (up to a limit) until the
hottest sensor is within `tolerance_c` of its idle reading (taken when the device was first seen), and
after it flags the run as throttled when the CPU frequency fell or a sensor passed `throttle_c`.
Where the device has no thermal sensor (this sandbox, most VMs) the result says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from edgeopt.harness.meters.base import LOCAL_FILES, FileAccess

ZONES = "/sys/class/thermal/thermal_zone*"
FREQ = "/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq"


@dataclass
class ThermalSnapshot:
    temps_c: dict[str, float] = field(default_factory=dict)
    freqs_khz: dict[str, int] = field(default_factory=dict)
    t: float = 0.0

    @property
    def max_c(self) -> float | None:
        return max(self.temps_c.values()) if self.temps_c else None


def parse_zones(types: list[str | None], temps: list[str | None], zones: list[str]) -> dict[str, float]:
    """millidegree strings -> {type: °C}; unreadable or absurd readings dropped, duplicate types numbered."""
    out: dict[str, float] = {}
    for z, ty, te in zip(zones, types, temps, strict=True):
        if te is None or not te.lstrip("-").isdigit():
            continue
        c = int(te) / 1000.0
        if not -40.0 < c < 150.0:  # disconnected sensors read e.g. -273 or 255
            continue
        name = ty or z.rsplit("/", 1)[-1]
        if name in out:
            name = f"{name}.{z.rsplit('zone', 1)[-1]}"
        out[name] = c
    return out


class ThermalReader:
    def __init__(self, files: FileAccess = LOCAL_FILES) -> None:
        self.files = files
        self.zones = files.glob(ZONES)
        self.freq_files = files.glob(FREQ)

    def snapshot(self) -> ThermalSnapshot:
        paths = [f"{z}/type" for z in self.zones] + [f"{z}/temp" for z in self.zones] + self.freq_files
        vals = self.files.read_many(paths)
        n = len(self.zones)
        temps = parse_zones(vals[:n], vals[n : 2 * n], self.zones)
        freqs = {}
        for p, v in zip(self.freq_files, vals[2 * n :], strict=True):
            if v and v.isdigit():
                freqs[p.split("/")[-3]] = int(v)
        return ThermalSnapshot(temps, freqs, time.monotonic())


def cool_down(reader: ThermalReader, idle_c: float, tolerance_c: float = 3.0, timeout_s: float = 120.0, poll_s: float = 2.0) -> dict[str, Any]:
    """Wait until the hottest sensor is within tolerance of idle; say how long it took and whether it got there."""
    t0 = time.monotonic()
    snap = reader.snapshot()
    while snap.max_c is not None and snap.max_c > idle_c + tolerance_c and time.monotonic() - t0 < timeout_s:
        time.sleep(poll_s)
        snap = reader.snapshot()
    reached = snap.max_c is None or snap.max_c <= idle_c + tolerance_c
    return {"waited_s": round(time.monotonic() - t0, 2), "reached_idle": reached, "idle_c": idle_c, "start_c": snap.max_c}


def throttle_check(before: ThermalSnapshot, after: ThermalSnapshot, throttle_c: float = 85.0, freq_drop: float = 0.1) -> dict[str, Any]:
    """Throttled when any CPU's frequency fell by more than `freq_drop` or a sensor passed `throttle_c`."""
    reasons = []
    for cpu, f0 in before.freqs_khz.items():
        f1 = after.freqs_khz.get(cpu)
        if f1 is not None and f0 > 0 and f1 < f0 * (1 - freq_drop):
            reasons.append(f"{cpu} {f0 // 1000}->{f1 // 1000} MHz")
    if after.max_c is not None and after.max_c >= throttle_c:
        reasons.append(f"{after.max_c:.1f} C >= {throttle_c:.0f} C")
    return {"throttled": bool(reasons), "reasons": reasons}
