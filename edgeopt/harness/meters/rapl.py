"""Linux RAPL through powercap: `/sys/class/powercap/intel-rapl:N/energy_uj` (µJ, cumulative).

Only the top-level package zones (`intel-rapl:N`) are summed: their sub-zones (`intel-rapl:N:M`, core,
uncore, dram) are parts of the package figure and would be counted twice. Each counter wraps at its
`max_energy_range_uj`; the meter unwraps by adding the range whenever a reading goes backwards, so it
must be sampled at least once per wrap period (minutes at package power; the sampler runs every 50 ms).
Since Linux 5.10 energy_uj is readable by root only (CVE-2020-8694).
"""

from __future__ import annotations

import re
from typing import Any

from edgeopt.harness.meters.base import LOCAL_FILES, FileAccess, Meter, MeterError, MeterTarget
from edgeopt.harness.meters.registry import METERS

_TOP = re.compile(r"intel-rapl:\d+$")


class RaplMeter(Meter):
    name = "rapl"
    kind = "counter"

    def __init__(self, files: FileAccess = LOCAL_FILES, root: str = "/sys/class/powercap") -> None:
        super().__init__()
        self.files = files
        self.zones = [z for z in files.glob(f"{root}/intel-rapl:*") if _TOP.search(z)]
        if not self.zones:
            raise MeterError(f"no RAPL package zones under {root}", "RAPL needs an Intel/AMD x86 CPU and the intel_rapl driver")
        ranges = files.read_many([f"{z}/max_energy_range_uj" for z in self.zones])
        self.names = files.read_many([f"{z}/name" for z in self.zones])
        self.ranges = [int(r) if r and r.isdigit() else 0 for r in ranges]
        self._last: list[int | None] = [None] * len(self.zones)
        self._offset = [0] * len(self.zones)

    def raw(self) -> list[int]:
        vals = self.files.read_many([f"{z}/energy_uj" for z in self.zones])
        if any(v is None for v in vals):
            raise MeterError("RAPL energy_uj is not readable", "run as root (Linux >= 5.10 restricts it) or chmod the files")
        try:
            return [int(v) for v in vals]  # type: ignore[arg-type]
        except ValueError as e:
            raise MeterError(f"RAPL energy_uj is not an integer: {e}") from None

    def read(self) -> float:
        """Cumulative joules over all packages since this meter was created, wrap-arounds unwrapped."""
        total = 0
        for i, v in enumerate(self.raw()):
            last = self._last[i]
            if last is not None and v < last:
                if not self.ranges[i]:
                    raise MeterError(f"RAPL zone {self.zones[i]} went backwards and has no max_energy_range_uj")
                self._offset[i] += self.ranges[i]
            self._last[i] = v
            total += v + self._offset[i]
        return total / 1e6


@METERS.register("rapl")
def _make(target: MeterTarget, **opts: Any) -> Meter:
    return RaplMeter(target.files, **opts)
