"""The meter registry: name -> factory(MeterTarget, **options) -> Meter. Each meter module registers itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgeopt._registry import Registry
from edgeopt.harness.meters.base import Meter, MeterError, MeterTarget

METERS: Registry[Callable[..., Meter]] = Registry(
    "meter",
    lazy={name: f"edgeopt.harness.meters.{name}" for name in ("rapl", "nvml", "ina3221", "tegrastats", "android", "monsoon")},
    error=MeterError,
)


def make_meter(spec: str | dict[str, Any], target: MeterTarget) -> Meter:
    """One meter from a devices.yaml entry: a name (`rapl`) or a mapping (`{name: ina3221, rail: VDD_IN}`)."""
    opts = dict(spec) if isinstance(spec, dict) else {"name": spec}
    return METERS.get(str(opts.pop("name")))(target, **opts)
