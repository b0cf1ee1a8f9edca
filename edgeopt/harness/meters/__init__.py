"""Energy meters: one interface, the meter's name always stored with the figure."""

from edgeopt.harness.meters.base import Meter, no_meter_reason

__all__ = ["Meter", "no_meter_reason"]
