"""The measurement protocol: the same on every device, so figures from different boards compare.

Warm-up, then runs until both a minimum count and a minimum duration are met (LoadGen style); the runner
does the timing on the device; this side pushes the bundle, reads the runner's JSON back, adds the device
snapshot and energy (or `null` with the reason) and returns one Measurement dict.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeopt.bundle import load_bundle
from edgeopt.errors import DeviceError
from edgeopt.harness.devices.base import Device
from edgeopt.harness.meters.base import no_meter_reason


@dataclass(frozen=True)
class Protocol:
    warmup: int = 5
    runs: int = 20
    min_seconds: float = 1.0
    threads: int | None = None
    timeout: float = 600.0

    def key(self) -> str:
        """Hash of what changes the figures (not the timeout), for resumable sweeps."""
        d = asdict(self)
        d.pop("timeout")
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


def measure(device: Device, bundle_path: str | Path, protocol: Protocol, device_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Push, run and read back one measurement of a bundle on a device."""
    bundle = load_bundle(bundle_path)
    remote = device.push(bundle.path, bundle.sha256)
    meters = device.meters()
    for m in meters:
        m.start()
    out = device.run_runner(remote, protocol.runner_args(), protocol.timeout)
    joules = {m.name: m.stop() for m in meters}
    res = parse_runner_output(out, device)
    if res.get("bundle_sha256") != bundle.sha256:
        raise DeviceError(f"{device.uri} ran bundle {str(res.get('bundle_sha256'))[:12]}, not {bundle.sha256[:12]}")
    if joules:
        name, j = next(iter(joules.items()))
        res["energy"] = {"meter": name, "joules_window": j, "estimate": False}
    else:
        res["energy"] = None
        res["energy_reason"] = no_meter_reason() if device.scheme == "local" else f"no energy meter configured for {device.uri}"
    res["device"] = device_info if device_info is not None else device.info()
    res["device"]["emulated"] = device.emulated
    res["protocol"] = asdict(protocol)
    res["protocol_key"] = protocol.key()
    return res
