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

import json
import re
import shlex
from pathlib import Path
from typing import Any

from edgeopt.errors import DeviceError
from edgeopt.harness.devices.base import Device, register_device
from edgeopt.harness.meters.base import FileAccess

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


def parse_benchmark_model(text: str) -> dict[str, Any]:
    """TFLite `benchmark_model` output -> the runner's JSON shape (latencies from its summary lines).

    The tool prints count/min/max/avg/std per phase, not each run, so p50/p90/p99 are not available: they
    are reported as None and `mean` is the tool's average."""
    counts = [m.groups() for m in _BM_COUNT.finditer(text)]
    t = _BM_TIMINGS.search(text)
    if not counts or not t:
        last = (text.strip().splitlines() or ["(no output)"])[-1]
        raise DeviceError(f"benchmark_model printed no timings: {last[:200]}", "check the --graph path and that the binary runs on this phone")
    n, _first, _curr, mn, mx, avg, std = counts[-1]
    mean_ms = float(avg) / 1e3
    res: dict[str, Any] = {
        "latency_ms": {"p50": None, "p90": None, "p99": None, "mean": mean_ms, "std": int(std) / 1e3, "min": int(mn) / 1e3, "max": int(mx) / 1e3},
        "cv": (int(std) / 1e3) / mean_ms if mean_ms else None,
        "runs": int(n),
        "init_ms": float(t.group(1)) / 1e3,
        "first_inference_ms": float(t.group(2)) / 1e3,
        "outputs_match": None,
        "timing": "TFLite benchmark_model summary (no per-run latencies: percentiles unavailable)",
    }
    mem = _BM_PEAK.search(text) or _BM_MEM.search(text)
    res["peak_rss_mb"] = float(mem.groups()[-1]) if mem else None
    return res


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
            raise DeviceError(f"adb device {self.serial} stopped answering: {e}", "check the cable; the device may have rebooted") from None

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

    def push(self, bundle_dir: Path, sha256: str) -> str:
        from edgeopt.bundle import load_bundle

        b = load_bundle(bundle_dir)
        remote = f"{ROOT}/bundles/{sha256}"
        files = dict(b.manifest["files"])
        files["manifest.json"] = None  # type: ignore[assignment]
        out = self.shell(["sh", "-c", 'cd "$1" 2>/dev/null && shift && sha256sum "$@" 2>/dev/null; true', "sh", remote, *b.manifest["files"]])
        have = {ln.split()[1]: ln.split()[0] for ln in out.splitlines() if len(ln.split()) == 2}
        if all(have.get(k) == v for k, v in b.manifest["files"].items()):
            self.last_push_skipped = True
            return remote
        d = self.adb()
        for rel in files:
            self.shell(["mkdir", "-p", str(Path(remote + "/" + rel).parent)])
            d.sync.push(str(b.path / rel), f"{remote}/{rel}")
        self.last_push_skipped = False
        return remote

    def run_runner(self, remote_bundle: str, args: list[str], timeout: float) -> str:
        t = str(max(1, int(timeout)))
        prefix = [str(x) for x in self.options.get("prefix") or []]
        if self.options.get("python"):
            from edgeopt.harness.devices.ssh import device_side_zip

            data, sha = device_side_zip()
            lib = f"{ROOT}/lib/edgeopt-{sha[:16]}.zip"
            if "yes" not in self.shell(["sh", "-c", 'test -f "$1" && echo yes; true', "sh", lib]):
                self.shell(["mkdir", "-p", f"{ROOT}/lib"])
                self.adb().sync.push(data, lib)
            argv = ["timeout", t, *prefix, "env", f"PYTHONPATH={lib}", str(self.options["python"]), "-m", "edgeopt.runner", remote_bundle, *args]
            return self.shell(argv, timeout=timeout + 30)
        if self.options.get("binary"):
            manifest = json.loads(self.shell(["cat", f"{remote_bundle}/manifest.json"]))
            a = dict(zip(args[::2], args[1::2], strict=False))
            argv = ["timeout", t, *prefix, str(self.options["binary"]), f"--graph={remote_bundle}/{manifest['artifact']}",
                    f"--warmup_runs={a.get('--warmup', 5)}", f"--num_runs={a.get('--runs', 20)}", f"--min_secs={a.get('--min-seconds', 1)}"]
            if "--threads" in a:
                argv.append(f"--num_threads={a['--threads']}")
            res = parse_benchmark_model(self.shell(argv, timeout=timeout + 30))
            res.update({"bundle_sha256": manifest["bundle_sha256"], "model": manifest["model"]["name"], "backend": manifest["backend"], "precision": manifest.get("precision")})
            return json.dumps(res)
        raise DeviceError(f"adb device {self.serial} has neither python nor binary configured", "set python: (Termux) or binary: (benchmark_model) in devices.yaml")

    def meters(self) -> list[Any]:
        from edgeopt.harness.meters import meters_from_profile

        return meters_from_profile(self.options.get("meters") or ["android"], self.files(), device=self)

    def thermal(self) -> Any | None:
        from edgeopt.harness.thermal import ThermalReader

        r = ThermalReader(self.files())
        return r if r.zones else None
