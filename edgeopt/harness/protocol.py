"""The measurement protocol: the same on every device, so figures from different boards compare.

Warm-up, then runs until both a minimum count and a minimum duration are met (LoadGen style); the runner
does the timing on the device; this side pushes the bundle, waits for the device to cool to its idle
temperature (where it has a sensor), measures an idle power baseline (where it has a meter), runs the
runner (optionally pinned with `taskset`), reads its JSON back and adds: the device snapshot, energy per
inference with the idle baseline subtracted (or `null` with the reason), temperatures before/after and a
throttling flag, and in end-to-end mode the latency from an image file through pre- and post-processing.

Energy window: meters are sampled on the host clock while the runner process lives; the timed loop is the
last `runs x mean` seconds before the runner's result arrives (the runner closes its session and prints
right after the loop), so energy is integrated over that window only, not over model loading.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeopt.bundle import load_bundle
from edgeopt.errors import DeviceError, EdgeoptError
from edgeopt.harness.devices.base import Device
from edgeopt.harness.meters.base import MeterError, energy_between, idle_baseline, no_meter_reason

# Fields that change how long we wait, not what the figures mean: left out of the protocol key.
_NOT_KEYED = ("timeout", "cooldown", "cooldown_timeout_s", "cooldown_tolerance_c", "idle_seconds", "throttle_c")


@dataclass(frozen=True)
class Protocol:
    warmup: int = 5
    runs: int = 20
    min_seconds: float = 1.0
    threads: int | None = None
    timeout: float = 600.0
    pin_cpus: str | None = None  # taskset list, e.g. "0-3"; recorded with the result
    end_to_end: str | None = None  # an image file: also measure decode/resize/normalize + post-processing
    cooldown: bool = True
    cooldown_timeout_s: float = 120.0
    cooldown_tolerance_c: float = 3.0
    throttle_c: float = 85.0
    idle_seconds: float = 2.0  # idle power baseline length (only where a meter exists)

    def key(self) -> str:
        """Hash of what changes the figures (not the timeouts), for resumable sweeps.

        Defaults of the newer fields are left out so keys of older results stay valid; an end-to-end image
        is keyed by its content, not its path."""
        d = asdict(self)
        for k in _NOT_KEYED:
            d.pop(k)
        for k in ("pin_cpus", "end_to_end"):
            if d[k] is None:
                d.pop(k)
        if "end_to_end" in d:
            img = Path(d["end_to_end"])
            if not img.is_file():
                raise EdgeoptError(f"end-to-end image {img} does not exist", "give protocol.end_to_end an image file (JPEG/PNG)")
            d["end_to_end"] = hashlib.sha256(img.read_bytes()).hexdigest()
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def runner_args(self) -> list[str]:
        args = ["--warmup", str(self.warmup), "--runs", str(self.runs), "--min-seconds", str(self.min_seconds)]
        if self.threads:
            args += ["--threads", str(self.threads)]
        return args


def parse_runner_output(stdout: str, device: Device) -> dict[str, Any]:
    """The runner prints one JSON object (possibly after runtime log lines); find and check it."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                res = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "error" in res:
                raise DeviceError(f"runner on {device.uri} failed: {res['error']}")
            return res
    tail = stdout.strip().splitlines()[-1:] or ["(no output)"]
    raise DeviceError(f"runner on {device.uri} printed no result: {tail[0][:300]}")


def _meters(device: Device) -> tuple[list[Any], str | None]:
    if device.scheme == "local":
        from edgeopt.harness.meters import auto_meters

        return auto_meters()
    try:
        ms = device.meters()
    except MeterError as e:
        return [], f"meter on {device.uri} unavailable: {e.message}"
    return ms, None if ms else f"no energy meter configured for {device.uri} (add meters: to its devices.yaml entry)"


def _thermal(device: Device) -> Any | None:
    if device.scheme == "local":
        from edgeopt.harness.thermal import ThermalReader

        r = ThermalReader()
        return r if r.zones else None
    return device.thermal()


def _run_e2e(device: Device, remote: str, protocol: Protocol) -> dict[str, Any]:
    image = Path(protocol.end_to_end or "")
    if not image.is_file():
        raise EdgeoptError(f"end-to-end image {image} does not exist", "pass an image file (JPEG/PNG) with --e2e-image")
    args = ["--image", str(image.resolve()), *protocol.runner_args()]
    if device.scheme == "local":
        cmd = [*device.options.get("prefix", []), device.options.get("python", sys.executable), "-m", "edgeopt.harness.e2e_runner", remote, *args]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=protocol.timeout, check=False).stdout
        except subprocess.TimeoutExpired:
            raise DeviceError(f"end-to-end runner on {device.uri} did not finish within {protocol.timeout:.0f} s") from None
    elif hasattr(device, "run_module") and hasattr(device, "push_file"):
        args[1] = device.push_file(image)
        out = device.run_module("edgeopt.harness.e2e_runner", [remote, *args], protocol.timeout)
    else:
        raise DeviceError(f"end-to-end mode is not supported on {device.scheme} devices", "use local or ssh://")
    res = parse_runner_output(out, device)
    res.pop("bundle_sha256", None)
    return res


def measure(device: Device, bundle_path: str | Path, protocol: Protocol, device_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Push, cool down, run and read back one measurement of a bundle on a device."""
    bundle = load_bundle(bundle_path)
    remote = device.push(bundle.path, bundle.sha256)
    info = device_info if device_info is not None else device.info()

    thermal: dict[str, Any] = {}
    reader = _thermal(device)
    before = None
    if reader is not None:
        idle_c = getattr(device, "_idle_c", None)
        if idle_c is None:  # first sight of this device in this process: its idle reading
            idle_c = reader.snapshot().max_c
            device._idle_c = idle_c  # type: ignore[attr-defined]
        if protocol.cooldown and idle_c is not None:
            from edgeopt.harness.thermal import cool_down

            thermal["cooldown"] = cool_down(reader, idle_c, protocol.cooldown_tolerance_c, protocol.cooldown_timeout_s)
        before = reader.snapshot()
        thermal["before_c"] = before.temps_c
    else:
        thermal["note"] = f"no thermal sensor readable on {device.uri}"

    meters, why_none = _meters(device)
    idle_w: dict[str, float] = {}
    for m in meters:
        try:
            idle_w[m.name] = idle_baseline(m, protocol.idle_seconds)
        except MeterError as e:
            why_none = f"meter {m.name} failed: {e.message}"
    meters = [m for m in meters if m.name in idle_w]
    for m in meters:
        m.start()
    prefix_set = False
    if protocol.pin_cpus:
        if "prefix" in device.options:
            raise EdgeoptError(f"{device.uri} already has a command prefix; pin_cpus would replace it", "set one or the other")
        device.options["prefix"] = ["taskset", "-c", protocol.pin_cpus]
        prefix_set = True
    try:
        out = device.run_runner(remote, protocol.runner_args(), protocol.timeout)
        t_end = time.monotonic()
        res = parse_runner_output(out, device)
        if res.get("bundle_sha256") != bundle.sha256:
            raise DeviceError(f"{device.uri} ran bundle {str(res.get('bundle_sha256'))[:12]}, not {bundle.sha256[:12]}")
        if protocol.end_to_end:
            res["e2e"] = _run_e2e(device, remote, protocol)
    finally:
        for m in meters:
            try:
                m.stop()
            except MeterError:
                pass
        if prefix_set:
            device.options.pop("prefix", None)

    if meters:
        m = meters[0]
        window = res["runs"] * res["latency_ms"]["mean"] / 1e3
        joules = energy_between(m.samples, m.kind, t_end - window, t_end)
        net = joules - idle_w[m.name] * window
        res["energy"] = {
            "meter": m.name,
            "joules_window": joules,
            "window_s": window,
            "idle_watts": idle_w[m.name],
            "joules_per_inference": net / res["runs"],
            "joules_per_inference_gross": joules / res["runs"],
            "samples": len(m.samples),
            "estimate": False,
        }
        res["energy_reason"] = None
    else:
        res["energy"] = None
        res["energy_reason"] = why_none or no_meter_reason()
    for m in meters:
        m.close()  # streaming meters (tegrastats) end their process here
    if reader is not None and before is not None:
        from edgeopt.harness.thermal import throttle_check

        after = reader.snapshot()
        thermal["after_c"] = after.temps_c
        thermal.update(throttle_check(before, after, protocol.throttle_c))
    res["thermal"] = thermal
    res["throttled"] = thermal.get("throttled")
    res["pinning"] = protocol.pin_cpus
    res["device"] = dict(info)
    res["device"].setdefault("uri", device.id)
    res["device"]["emulated"] = device.emulated
    res["protocol"] = asdict(protocol)
    res["protocol_key"] = protocol.key()
    return res
