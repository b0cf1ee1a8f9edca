"""`adb://SERIAL`: an Android phone or board over adb (adbutils; the adb server must be running).

Files go to `/data/local/tmp/edgeopt/` (the one place an app-less shell may write and execute). Two ways
to run, chosen by the device profile:

* `python: /data/data/com.termux/files/usr/bin/python` (Termux with numpy + the runtime): edgeopt's own
  runner, pushed as the same device-side zip as for ssh://, so results carry the output check.
* `binary: /data/local/tmp/benchmark_model` (TFLite's native benchmark tool, for a LiteRT bundle): its
  timing lines are parsed into the runner's JSON shape; there is no output check (`outputs_match: null`).

Bundles are pushed once per sha256: the phone's `sha256sum` of every file is compared with the manifest
and the push is skipped when all match. Battery power (`current_now` x `voltage_now`) is the default meter.
Parsing is tested on recorded outputs; a real phone runs `device_tests` (no phone is attached to CI).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from edgeopt.bundle import MANIFEST, Bundle
from edgeopt.errors import DeviceError, DeviceUnreachable
from edgeopt.harness.devices.base import Device, pinned, register_device
from edgeopt.harness.meters.base import FileAccess
from edgeopt.measurement import Latency, Measurement, MeasureRequest

ROOT = "/data/local/tmp/edgeopt"
_GETPROP = re.compile(r"^\[([^\]]+)\]: \[(.*)\]$")
_BM_COUNT = re.compile(r"count=(\d+) first=(\d+) curr=(\d+) min=(\d+) max=(\d+) avg=([\d.e+]+) std=(\d+)")
_BM_TIMINGS = re.compile(r"Inference timings in us: Init: ([\d.]+), First inference: ([\d.]+), Warmup \(avg\): ([\d.e+]+), Inference \(avg\): ([\d.e+]+)")
_BM_MEM = re.compile(r"Memory footprint delta from the start of the tool \(MB\): init=([\d.]+) overall=([\d.]+)")
_BM_PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring: ([\d.]+)")


def parse_getprop(text: str) -> dict[str, str]:
    """`getprop` output (`[key]: [value]` lines) as a dict."""
    out = {}
    for line in text.splitlines():
        m = _GETPROP.match(line.strip())
        if m:
            out[m.group(1)] = m.group(2)
    return out


def parse_meminfo_mb(text: str) -> int | None:
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return None


def parse_cpufreq(text: str) -> dict[str, dict[str, Any]]:
    """Lines `cpuN governor cur_khz max_khz` (from the loop in `info`) -> per-core dict."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0].startswith("cpu"):
            out[parts[0]] = {"governor": parts[1], "cur_khz": int(parts[2]) if parts[2].isdigit() else None, "max_khz": int(parts[3]) if parts[3].isdigit() else None}
    return out


def parse_benchmark_model(text: str, bundle: Bundle | None = None) -> Measurement:
    """TFLite `benchmark_model` output -> a Measurement (latencies from its summary lines).

    The tool prints count/min/max/avg/std per phase, not each run, so p50/p90/p99 are not available: they
    are None and `mean` is the tool's average."""
    counts = [m.groups() for m in _BM_COUNT.finditer(text)]
    t = _BM_TIMINGS.search(text)
    if not counts or not t:
        last = (text.strip().splitlines() or ["(no output)"])[-1]
        raise DeviceError(f"benchmark_model printed no timings: {last[:200]}", "check the --graph path and that the binary runs on this phone")
    n, _first, _curr, mn, mx, avg, std = counts[-1]
    mean_ms = float(avg) / 1e3
    mem = _BM_PEAK.search(text) or _BM_MEM.search(text)
    m = bundle.manifest if bundle is not None else None
    return Measurement(
        bundle_sha256=m.bundle_sha256 if m else "", model=m.model.name if m else "", backend=m.backend if m else "tflite",
        precision=m.precision if m else None,
        latency_ms=Latency(p50=None, p90=None, p99=None, mean=mean_ms, std=int(std) / 1e3, min=int(mn) / 1e3, max=int(mx) / 1e3),
        cv=(int(std) / 1e3) / mean_ms if mean_ms else None, runs=int(n),
        init_ms=float(t.group(1)) / 1e3, first_inference_ms=float(t.group(2)) / 1e3, outputs_match=None,
        peak_rss_mb=float(mem.groups()[-1]) if mem else None,
        timing="TFLite benchmark_model summary (no per-run latencies: percentiles unavailable)",
    )


class AdbFiles(FileAccess):
    def __init__(self, dev: AdbDevice) -> None:
        self.dev = dev

    def read_many(self, paths: list[str]) -> list[str | None]:
        if not paths:
            return []
        script = 'for f in "$@"; do if [ -r "$f" ]; then cat "$f"; else echo "@@MISSING"; fi; echo "@@END"; done'
        out = self.dev.shell(["sh", "-c", script, "sh", *paths])
        vals: list[str | None] = []
        for chunk in out.split("@@END")[: len(paths)]:
            chunk = chunk.strip()
            vals.append(None if chunk == "@@MISSING" else chunk)
        return vals + [None] * (len(paths) - len(vals))

    def glob(self, pattern: str) -> list[str]:
        out = self.dev.shell(["sh", "-c", f'for f in {pattern}; do [ -e "$f" ] && echo "$f"; done; true'])
        return sorted(x.strip() for x in out.splitlines() if x.strip())


@register_device
class AdbDevice(Device):
    """Options: python (Termux python), binary (native benchmark tool), adb_host, adb_port, meters (default [android])."""

    scheme = "adb"

    def __init__(self, uri: str, **options: Any) -> None:
        super().__init__(uri, **options)
        self.serial = uri.split("://", 1)[1].strip("/")
        if not self.serial or not re.match(r"^[A-Za-z0-9_.:\-]+$", self.serial):
            raise DeviceError(f"bad adb device URI {uri!r}", "write adb://SERIAL as `adb devices` lists it")
        self._d = None
        self.last_push_skipped: bool | None = None

    def adb(self):
        if self._d is None:
            try:
                import adbutils
            except ImportError:
                raise DeviceError("adb devices need adbutils", "pip install 'edgeopt[devices]'") from None
            client = adbutils.AdbClient(host=str(self.options.get("adb_host", "127.0.0.1")), port=int(self.options.get("adb_port", 5037)))
            try:
                serials = [d.serial for d in client.device_list()]
            except Exception as e:  # noqa: BLE001 - adbutils raises its own errors for a missing server
                raise DeviceError(f"no adb server at {client.host}:{client.port}: {e}", "start it with `adb start-server`") from None
            if self.serial not in serials:
                raise DeviceError(f"adb device {self.serial} is not attached (attached: {', '.join(serials) or 'none'})", "plug it in, enable USB debugging, accept the key")
            self._d = client.device(serial=self.serial)
        return self._d

    def shell(self, argv: list[str], timeout: float = 60) -> str:
        try:
            return self.adb().shell(shlex.join(argv), timeout=timeout)
        except DeviceError:
            raise
        except Exception as e:  # noqa: BLE001 - the phone went away mid-command
            raise DeviceUnreachable(f"adb device {self.serial} stopped answering: {e}", "check the cable; the device may have rebooted") from None

    def files(self) -> FileAccess:
        return AdbFiles(self)

    def info(self) -> dict[str, Any]:
        props = parse_getprop(self.shell(["getprop"]))
        cpus = parse_cpufreq(self.shell(["sh", "-c", 'for c in /sys/devices/system/cpu/cpu[0-9]*; do n=${c##*/}; echo "$n $(cat $c/cpufreq/scaling_governor 2>/dev/null || echo -) $(cat $c/cpufreq/scaling_cur_freq 2>/dev/null || echo -) $(cat $c/cpufreq/cpuinfo_max_freq 2>/dev/null || echo -)"; done']))
        return {
            "uri": self.uri, "arch": props.get("ro.product.cpu.abi"), "os": f"Android {props.get('ro.build.version.release')} (SDK {props.get('ro.build.version.sdk')})",
            "model": f"{props.get('ro.product.manufacturer', '')} {props.get('ro.product.model', '')}".strip(),
            "cpu_model": props.get("ro.soc.model") or props.get("ro.board.platform") or props.get("ro.hardware"),
            "cores": len(cpus) or None, "freqs_khz": cpus, "governor": ",".join(sorted({c["governor"] for c in cpus.values()})) or None,
            "memory_mb": parse_meminfo_mb(self.shell(["cat", "/proc/meminfo"])), "runtimes": {"python": self.options.get("python"), "binary": self.options.get("binary")},
            "emulated": props.get("ro.kernel.qemu") == "1",
        }

    def push(self, bundle: Bundle) -> str:
        remote = f"{ROOT}/bundles/{bundle.sha256}"
        files = bundle.manifest.files
        out = self.shell(["sh", "-c", 'cd "$1" 2>/dev/null && shift && sha256sum "$@" 2>/dev/null; true', "sh", remote, *files])
        have = {ln.split()[1]: ln.split()[0] for ln in out.splitlines() if len(ln.split()) == 2}
        if all(have.get(k) == v for k, v in files.items()):
            self.last_push_skipped = True
            return remote
        d = self.adb()
        for rel in [*files, MANIFEST]:
            self.shell(["mkdir", "-p", str(Path(remote + "/" + rel).parent)])
            d.sync.push(str(bundle.path / rel), f"{remote}/{rel}")
        self.last_push_skipped = False
        return remote

    def push_file(self, local: Path) -> str:
        from edgeopt._util import sha256_file

        remote = f"{ROOT}/files/{sha256_file(local)[:16]}-{Path(local).name}"
        self.shell(["mkdir", "-p", f"{ROOT}/files"])
        self.adb().sync.push(str(local), remote)
        return remote

    def run_module(self, module: str, args: list[str], timeout: float, pin_cpus: str | None = None) -> str:
        """Run a device-side module with the profile's Python (Termux), edgeopt's files pushed as one zip."""
        if not self.options.get("python"):
            raise DeviceError(f"adb device {self.serial} has no python configured", "set python: (Termux) in devices.yaml, or binary: (benchmark_model) for LiteRT bundles")
        from edgeopt.harness.devices.ssh import device_side_zip

        data, sha = device_side_zip()
        lib = f"{ROOT}/lib/edgeopt-{sha[:16]}.zip"
        if "yes" not in self.shell(["sh", "-c", 'test -f "$1" && echo yes; true', "sh", lib]):
            self.shell(["mkdir", "-p", f"{ROOT}/lib"])
            self.adb().sync.push(data, lib)
        prefix = [str(x) for x in self.options.get("prefix") or []]
        argv = ["timeout", str(max(1, int(timeout))), *pinned([*prefix, "env", f"PYTHONPATH={lib}", str(self.options["python"]), "-m", module, *args], pin_cpus)]
        return self.shell(argv, timeout=timeout + 30)

    def run(self, bundle: Bundle, request: MeasureRequest) -> Measurement:
        """With `python:` the runner measures; with only `binary:` TFLite's benchmark tool does (no output check)."""
        if self.options.get("python") or not self.options.get("binary"):
            return super().run(bundle, request)
        p = request.protocol
        if p.end_to_end:
            raise DeviceError(f"adb device {self.serial} measures with benchmark_model, which has no end-to-end mode", "configure python: (Termux) for end-to-end runs")
        remote = self.push(bundle)
        m = bundle.manifest
        argv = [str(self.options["binary"]), f"--graph={remote}/{m.artifact}",
                f"--warmup_runs={p.warmup}", f"--num_runs={p.runs}", f"--min_secs={p.min_seconds}"]
        if p.threads:
            argv.append(f"--num_threads={p.threads}")
        prefix = [str(x) for x in self.options.get("prefix") or []]
        out = self.shell(["timeout", str(max(1, int(p.timeout))), *pinned([*prefix, *argv], p.pin_cpus)], timeout=p.timeout + 30)
        return parse_benchmark_model(out, bundle)

    def shell_prefix(self) -> list[str] | None:
        return ["adb", "-s", self.serial, "shell"]

    def default_meters(self) -> list[Any]:
        return ["android"]
