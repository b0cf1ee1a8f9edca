"""Jetson INA3221 power monitors through sysfs. Two layouts exist:

* JetPack 4 (L4T 32, `ina3221x` iio driver): `.../iio:deviceN/rail_name_K` and `in_power K_input` in mW.
* JetPack 5/6 (L4T 35/36, mainline `ina3221` hwmon driver): `.../hwmon/hwmonN/inK_label`, `inK_input` bus
  voltage in mV and `currK_input` in mA, K = 1..3. Channel 7 (`in7`, "sum of shunt voltages") and any
  label starting with "sum" are skipped: they restate the other channels.

The board's total is the input rail (`VDD_IN`, `POM_5V_IN`) where present; otherwise the sum of the rails
(which then misses what no rail covers; the meter's name says which was used).
"""

from __future__ import annotations

import re
from typing import Any

from edgeopt.harness.meters.base import LOCAL_FILES, FileAccess, Meter, MeterError, MeterTarget
from edgeopt.harness.meters.registry import METERS

TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "VDD_IN_SYS", "VIN_SYS_5V0")
ROOTS = ("/sys/bus/i2c/drivers/ina3221x", "/sys/bus/i2c/drivers/ina3221")


def discover(files: FileAccess, roots: tuple[str, ...] = ROOTS) -> dict[str, tuple[str, ...]]:
    """Rail name -> the files that give its power: ("mw", path) for iio or ("mv_ma", volt, curr) for hwmon."""
    rails: dict[str, tuple[str, ...]] = {}
    for root in roots:
        for name_file in files.glob(f"{root}/*/iio:device*/rail_name_*"):
            k = name_file.rsplit("_", 1)[1]
            base = name_file.rsplit("/", 1)[0]
            label = files.read(name_file)
            if label:
                rails[label] = ("mw", f"{base}/in_power{k}_input")
        for label_file in files.glob(f"{root}/*/hwmon/hwmon*/in*_label"):
            m = re.search(r"/in(\d+)_label$", label_file)
            label = files.read(label_file)
            if not m or not label or label.lower().startswith("sum") or int(m.group(1)) > 3:
                continue
            base = label_file.rsplit("/", 1)[0]
            k = m.group(1)
            rails[label] = ("mv_ma", f"{base}/in{k}_input", f"{base}/curr{k}_input")
    return rails


def rail_watts(rails: dict[str, tuple[str, ...]], values: dict[str, str | None]) -> dict[str, float]:
    """Watts per rail from the raw file contents."""
    out = {}
    for name, spec in rails.items():
        if spec[0] == "mw":
            v = values.get(spec[1])
            if v is not None:
                out[name] = int(v) / 1e3
        else:
            mv, ma = values.get(spec[1]), values.get(spec[2])
            if mv is not None and ma is not None:
                out[name] = int(mv) * int(ma) / 1e6
    return out


class Ina3221Meter(Meter):
    kind = "power"

    def __init__(self, files: FileAccess = LOCAL_FILES, rail: str | None = None, roots: tuple[str, ...] = ROOTS) -> None:
        super().__init__()
        self.files = files
        self.rails = discover(files, roots)
        if not self.rails:
            raise MeterError("no INA3221 rails in sysfs", "this is not a Jetson, or the ina3221 driver is not loaded")
        if rail is None:
            rail = next((r for r in TOTAL_RAILS if r in self.rails), None)
        if rail is not None and rail not in self.rails:
            raise MeterError(f"INA3221 has no rail {rail!r}", f"rails here: {', '.join(self.rails)}")
        self.rail = rail
        self.name = f"ina3221:{rail}" if rail else "ina3221:sum(" + "+".join(self.rails) + ")"
        self.paths = sorted({p for spec in self.rails.values() for p in spec[1:]})

    def read_rails(self) -> dict[str, float]:
        vals = dict(zip(self.paths, self.files.read_many(self.paths), strict=True))
        return rail_watts(self.rails, vals)

    def read(self) -> float:
        w = self.read_rails()
        if self.rail:
            if self.rail not in w:
                raise MeterError(f"INA3221 rail {self.rail} is not readable")
            return w[self.rail]
        return sum(w.values())


@METERS.register("ina3221")
def _make(target: MeterTarget, **opts: Any) -> Meter:
    return Ina3221Meter(target.files, **opts)
