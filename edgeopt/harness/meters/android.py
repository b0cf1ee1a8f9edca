"""Android battery power over adb: `current_now` (µA) x `voltage_now` (µV) from
`/sys/class/power_supply/battery/`.

The sign of current_now differs by vendor (negative while discharging on Pixels, positive on others) and
some kernels report mA, so the magnitude is used and values below 10 000 are read as mA (documented
heuristic). While the USB cable charges the phone, the battery current is net of the charger: disable
charging (`dumpsys battery unplug`, or a USB power switch) before measuring.
"""

from __future__ import annotations

from typing import Any

from edgeopt.harness.meters.base import FileAccess, Meter, MeterError, MeterTarget
from edgeopt.harness.meters.registry import METERS

BATTERY = "/sys/class/power_supply/battery"


def battery_watts(current_now: str | None, voltage_now: str | None) -> float:
    """Watts from the raw sysfs strings (µA, µV)."""
    if current_now is None or voltage_now is None:
        raise MeterError("battery current_now/voltage_now not readable", "this device exposes no fuel gauge to adb shell")
    try:
        i = abs(int(current_now.strip()))
        v = int(voltage_now.strip())
    except ValueError:
        raise MeterError(f"battery readings are not integers: {current_now!r}, {voltage_now!r}") from None
    if 0 < i < 10_000:  # a kernel that reports mA
        i *= 1000
    if v < 100_000:  # mV instead of µV
        v *= 1000
    return i * 1e-6 * v * 1e-6


def parse_dumpsys_battery(text: str) -> dict[str, str]:
    """`dumpsys battery` as a dict (level, voltage in mV, temperature in 0.1 °C, powered states)."""
    out = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


class AndroidBatteryMeter(Meter):
    name = "android-battery"
    kind = "power"
    interval = 0.2  # each sample is one adb round trip

    def __init__(self, files: FileAccess, root: str = BATTERY) -> None:
        super().__init__()
        self.files = files
        self.paths = [f"{root}/current_now", f"{root}/voltage_now"]

    def read(self) -> float:
        cur, volt = self.files.read_many(self.paths)
        return battery_watts(cur, volt)


@METERS.register("android")
def _make(target: MeterTarget, **opts: Any) -> Meter:
    return AndroidBatteryMeter(target.files, **opts)
