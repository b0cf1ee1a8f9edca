"""Energy meters: one interface, the meter's name always stored with the figure."""

from __future__ import annotations

from typing import Any

from edgeopt.harness.meters.base import (
    LOCAL_FILES,
    FileAccess,
    Meter,
    MeterError,
    energy_between,
    idle_baseline,
    no_meter_reason,
)

__all__ = ["FileAccess", "Meter", "MeterError", "auto_meters", "energy_between", "idle_baseline", "meters_from_profile", "no_meter_reason"]


def make_meter(spec: str | dict[str, Any], files: FileAccess = LOCAL_FILES, device: Any = None) -> Meter:
    """One meter from a devices.yaml entry: a name (`rapl`) or a mapping (`{name: ina3221, rail: VDD_IN}`)."""
    opts = dict(spec) if isinstance(spec, dict) else {"name": spec}
    name = opts.pop("name")
    if name == "rapl":
        from edgeopt.harness.meters.rapl import RaplMeter

        return RaplMeter(files, **opts)
    if name == "nvml":
        from edgeopt.harness.meters.nvml import NvmlMeter

        return NvmlMeter(**opts)
    if name == "ina3221":
        from edgeopt.harness.meters.ina3221 import Ina3221Meter

        return Ina3221Meter(files, **opts)
    if name == "tegrastats":
        from edgeopt.harness.meters.tegrastats import TegrastatsMeter

        prefix = device.ssh_base() if device is not None and hasattr(device, "ssh_base") else None
        return TegrastatsMeter(argv_prefix=prefix, **opts)
    if name == "android":
        from edgeopt.harness.meters.android import AndroidBatteryMeter

        return AndroidBatteryMeter(files, **opts)
    if name == "monsoon":
        from edgeopt.harness.meters.monsoon import MonsoonMeter

        return MonsoonMeter(**opts)
    raise MeterError(f"unknown meter {name!r}", "use rapl, nvml, ina3221, tegrastats, android or monsoon")


def meters_from_profile(specs: list, files: FileAccess = LOCAL_FILES, device: Any = None) -> list[Meter]:
    return [make_meter(s, files, device) for s in specs]


def auto_meters(files: FileAccess = LOCAL_FILES) -> tuple[list[Meter], str | None]:
    """Meters found on this machine (RAPL, NVML, INA3221), or ([], why none)."""
    found: list[Meter] = []
    why = []
    for name in ("rapl", "nvml", "ina3221"):
        try:
            m = make_meter(name, files)
            ok, reason = m.available()
        except MeterError as e:
            ok, reason = False, e.message
        if ok:
            found.append(m)
        else:
            why.append(f"{name}: {reason}")
    return found, None if found else "no energy meter on this device: " + "; ".join(why)
