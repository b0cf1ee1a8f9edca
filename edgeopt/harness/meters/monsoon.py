"""Monsoon HVPM power monitor through the optional `monsoon` package (Monsoon Solutions' Python API).

Install with `pip install monsoon`; the HVPM must be on USB and powering the device. Samples the main
channel's current (mA) at the monitor's voltage and integrates it like any power meter.
"""

from __future__ import annotations

from typing import Any

from edgeopt.harness.meters.base import Meter, MeterError, MeterTarget
from edgeopt.harness.meters.registry import METERS


class MonsoonMeter(Meter):
    name = "monsoon-hvpm"
    kind = "power"

    def __init__(self, serial: int | None = None, voltage: float = 4.2) -> None:
        super().__init__()
        try:
            import Monsoon.HVPM as HVPM  # noqa: N811 - the package's own module name
            import Monsoon.pmapi as pmapi
        except ImportError:
            raise MeterError("the monsoon package is not installed", "pip install monsoon (and connect the HVPM over USB)") from None
        try:
            self.mon = HVPM.Monsoon()
            self.mon.setup_usb(serial, pmapi.USB_protocol())
            self.mon.setVout(voltage)
        except Exception as e:  # noqa: BLE001 - the vendor API raises bare exceptions
            raise MeterError(f"cannot open the Monsoon HVPM: {e}", "check USB and that no other program holds it") from None
        self.voltage = voltage

    def read(self) -> float:
        from Monsoon import sampleEngine

        eng = sampleEngine.SampleEngine(self.mon)
        eng.disableCSVOutput()
        eng.ConsoleOutput(False)
        eng.startSampling(50)
        samples = eng.getSamples()
        cur_ma = samples[sampleEngine.channels.MainCurrent]
        if not cur_ma:
            raise MeterError("the Monsoon returned no samples")
        return sum(cur_ma) / len(cur_ma) / 1e3 * self.voltage

    def close(self) -> None:
        try:
            self.mon.closeDevice()
        except Exception:  # noqa: BLE001
            pass


@METERS.register("monsoon")
def _make(target: MeterTarget, **opts: Any) -> Meter:
    return MonsoonMeter(**opts)
