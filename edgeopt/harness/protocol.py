"""The measurement protocol: the same on every device, so figures from different boards compare.

    measure(device, bundle, protocol) -> Measurement

Warm-up, then runs until both a minimum count and a minimum duration are met (LoadGen style); the device
does the timing (`Device.run`); this side waits for the device to cool to its idle temperature (where it
has a sensor), measures an idle power baseline (where it has a meter), samples the meters while the device
runs, and adds: the device snapshot, energy per inference with the idle baseline subtracted (or `null`
with the reason), temperatures before/after and a throttling flag. In end-to-end mode the device also
measures the latency from an image file through pre- and post-processing.

Energy window: meters are sampled on the host clock while the device measures; the timed loop ended
`after_loop_s` (reported by the device) before its result arrived, and lasted `runs x mean`, so energy is
integrated over that window only, not over model loading.

Contamination: the runner reports how much of its cores other processes took during the timed loop
(`edgeopt.contention`). A flagged result is measured again, up to `protocol.remeasure` times; the last
one is kept with its flag and the number of attempts, or, with `protocol.strict`, refused (`Contaminated`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgeopt.bundle import Bundle, load_bundle
from edgeopt.contention import Contamination
from edgeopt.errors import Contaminated
from edgeopt.harness.devices.base import Device
from edgeopt.harness.meters.base import Meter, MeterError, energy_between, idle_baseline, no_meter_reason
from edgeopt.harness.thermal import ThermalReader, cool_down, throttle_check
from edgeopt.measurement import Energy, Measurement, MeasureRequest, Protocol

__all__ = ["MeasureRequest", "Measurement", "Protocol", "measure"]


def _cool(device: Device, reader: ThermalReader, protocol: Protocol) -> dict[str, Any]:
    """Wait for the device to come back to its idle temperature (taken the first time it is seen)."""
    out: dict[str, Any] = {}
    if device.idle_c is None:
        device.idle_c = reader.snapshot().max_c
    if protocol.cooldown and device.idle_c is not None:
        out["cooldown"] = cool_down(reader, device.idle_c, protocol.cooldown_tolerance_c, protocol.cooldown_timeout_s)
    return out


def _baselines(meters: list[Meter], seconds: float) -> tuple[dict[str, float], str | None]:
    """Idle watts per meter; a meter that fails its baseline is dropped with the reason."""
    idle: dict[str, float] = {}
    why = None
    for m in meters:
        try:
            idle[m.name] = idle_baseline(m, seconds)
        except MeterError as e:
            why = f"meter {m.name} failed: {e.message}"
    return idle, why


def _energy(m: Meter, idle_w: float, res: Measurement, t_end: float) -> Energy:
    window = res.runs * res.latency_ms.mean / 1e3
    joules = energy_between(m.samples, m.kind, t_end - window, t_end)
    net = joules - idle_w * window
    return Energy(meter=m.name, joules_window=joules, window_s=window, idle_watts=idle_w,
                  joules_per_inference=net / res.runs, joules_per_inference_gross=joules / res.runs, samples=len(m.samples))


def measure(device: Device, bundle: Bundle | str | Path, protocol: Protocol, device_info: dict[str, Any] | None = None) -> Measurement:
    """Cool down, sample the meters, run one measurement of a bundle on a device, and complete it."""
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    info = device_info if device_info is not None else device.info()

    thermal: dict[str, Any] = {}
    reader = device.thermal()
    before = None
    if reader is not None:
        thermal.update(_cool(device, reader, protocol))
        before = reader.snapshot()
        thermal["before_c"] = before.temps_c
    else:
        thermal["note"] = f"no thermal sensor readable on {device.uri}"

    meters, why_none = device.meters()
    idle_w, why_failed = _baselines(meters, protocol.idle_seconds)
    why_none = why_failed or why_none
    meters = [m for m in meters if m.name in idle_w]
    for m in meters:
        m.start()
    try:
        res, t_end = _run_clean(device, bundle, protocol)
    finally:
        for m in meters:
            try:
                m.stop()
            except MeterError:
                pass

    if meters:
        res.energy = _energy(meters[0], idle_w[meters[0].name], res, t_end)
        res.energy_reason = None
    else:
        res.energy = None
        res.energy_reason = why_none or no_meter_reason()
    if res.generation is not None and res.energy is not None:
        res.generation.energy_per_token_j = res.energy.joules_per_inference  # a generative run's latency is per decoded token
    for m in meters:
        m.close()  # streaming meters (tegrastats) end their process here
    if reader is not None and before is not None:
        after = reader.snapshot()
        thermal["after_c"] = after.temps_c
        thermal.update(throttle_check(before, after, protocol.throttle_c))
    res.thermal = thermal
    res.throttled = thermal.get("throttled")
    res.pinning = protocol.pin_cpus
    res.device = {**info, "uri": info.get("uri") or device.id, "emulated": device.emulated}
    res.protocol = protocol.to_dict()
    res.protocol_key = protocol.key()
    if protocol.strict and res.contamination is not None and res.contamination.flagged:
        c = res.contamination
        raise Contaminated(f"{bundle.manifest.model.name} on {device.uri}: other processes took {100 * (c.foreign_cpu_share or 0):.0f}% of the "
                           f"run's cores (limit {100 * c.threshold:.0f}%; load {c.load_before} -> {c.load_after}) in each of {c.attempts} attempts"
                           + (f"; the most: {c.who()}" if c.others else ""),
                           "stop the other work on the device and measure again, or drop --strict to keep a flagged result")
    return res


def _run_clean(device: Device, bundle: Bundle, protocol: Protocol) -> tuple[Measurement, float]:
    """Run the measurement, again while it comes back flagged (at most `protocol.remeasure` more times).

    Returns the last result and the host's monotonic time at the end of its timed loop."""
    attempts = 0
    while True:
        attempts += 1
        res = device.run(bundle, MeasureRequest(protocol))
        t_end = time.monotonic() - (res.after_loop_s or 0.0)
        if res.contamination is None:
            res.contamination = Contamination.unmeasured(f"{device.uri} times the model without edgeopt's runner", protocol.max_foreign_share)
        res.contamination.attempts = attempts
        if not res.contamination.flagged or attempts > protocol.remeasure:
            return res, t_end
