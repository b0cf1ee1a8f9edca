"""The machine edgeopt runs on. The runner still runs in its own process, so its peak RSS and
crashes are its own and the figures mean the same as on a remote board."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgeopt.bundle import Bundle
from edgeopt.errors import DeviceError
from edgeopt.harness.devices.base import Device, pinned, register_device


def linux_cpu_info() -> dict[str, Any]:
    """CPU model, frequencies and governor from /proc and /sys (Linux), empty where absent."""
    out: dict[str, Any] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")) and ":" in line:
                out["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpu0 = Path("/sys/devices/system/cpu/cpu0/cpufreq")
    for key, name in (("scaling_governor", "governor"), ("scaling_cur_freq", "freq_khz"), ("cpuinfo_max_freq", "max_freq_khz")):
        try:
            v = (cpu0 / key).read_text().strip()
            out[name] = int(v) if v.isdigit() else v
        except OSError:
            pass
    return out


def runtimes_present() -> dict[str, str]:
    """Versions of the runtimes importable here (without importing torch)."""
    import importlib.metadata as md

    found = {}
    for dist in ("onnxruntime", "apache-tvm", "ai-edge-litert", "tflite-runtime", "coremltools", "executorch"):
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return found


@register_device
class LocalDevice(Device):
    scheme = "local"

    def info(self) -> dict[str, Any]:
        import psutil

        return {
            "uri": self.uri,
            "arch": platform.machine(),
            "os": f"{platform.system()} {platform.release()}",
            "cores": os.cpu_count(),
            "memory_mb": psutil.virtual_memory().total // (1024 * 1024),
            "python": platform.python_version(),
            **linux_cpu_info(),
            "runtimes": runtimes_present(),
            "emulated": False,
        }

    def push(self, bundle: Bundle) -> str:
        return str(Path(bundle.path).resolve())

    def push_file(self, local: Path) -> str:
        return str(Path(local).resolve())

    def shell_prefix(self) -> list[str] | None:
        return []

    def meters(self) -> tuple[list[Any], str | None]:
        """The profile's meters where it names some, else those found on this machine (RAPL, NVML, INA3221)."""
        if self.options.get("meters"):
            return super().meters()
        from edgeopt.harness.meters import auto_meters

        return auto_meters()

    def run_module(self, module: str, args: list[str], timeout: float, pin_cpus: str | None = None) -> str:
        # A profile's `prefix` (e.g. ["nice", "-n", "-5"]) wraps the Python command.
        prefix = [str(x) for x in self.options.get("prefix") or []]
        cmd = pinned([*prefix, self.options.get("python", sys.executable), "-m", module, *args], pin_cpus)
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{module} on {self.uri} did not finish within {timeout:.0f} s", "raise --timeout or lower --runs") from None
        if p.returncode < 0:
            raise DeviceError(f"{module} on {self.uri} was killed by signal {-p.returncode}", (p.stderr.strip().splitlines() or [""])[-1])
        return p.stdout if p.stdout.strip() else p.stderr
