"""Energy meters: one interface, the meter's name always stored with the figure."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgeopt.harness.meters.base import (
    LOCAL_FILES,
    LOCAL_TARGET,
    FileAccess,
    Meter,
    MeterError,
    MeterTarget,
    energy_between,
    idle_baseline,
    no_meter_reason,
)
from edgeopt.harness.meters.registry import METERS

if TYPE_CHECKING:
    from edgeopt.harness.devices.base import Device

__all__ = [
    "LOCAL_FILES", "METERS", "FileAccess", "Meter", "MeterError", "MeterTarget", "auto_meters", "energy_between",
    "idle_baseline", "make_meter", "meters_from_profile", "no_meter_reason",
]

# Meters looked for on this machine when a local device names none.
AUTO_LOCAL = ("rapl", "nvml", "ina3221")


def make_meter(spec: str | dict[str, Any], target: MeterTarget = LOCAL_TARGET) -> Meter:
    """One meter from a devices.yaml entry: a name (`rapl`) or a mapping (`{name: ina3221, rail: VDD_IN}`)."""
    from edgeopt.harness.meters.registry import make_meter as _make

    return _make(spec, target)


def meters_from_profile(specs: list, device: Device) -> list[Meter]:
    target = MeterTarget(device.files(), device.shell_prefix())
    return [make_meter(s, target) for s in specs]


def auto_meters(target: MeterTarget = LOCAL_TARGET) -> tuple[list[Meter], str | None]:
    """Meters found on this machine (RAPL, NVML, INA3221), or ([], why none)."""
    found: list[Meter] = []
    why = []
    for name in AUTO_LOCAL:
        try:
            m = make_meter(name, target)
            ok, reason = m.available()
        except MeterError as e:
            ok, reason = False, e.message
        if ok:
            found.append(m)
        else:
            why.append(f"{name}: {reason}")
    return found, None if found else "no energy meter on this device: " + "; ".join(why)
