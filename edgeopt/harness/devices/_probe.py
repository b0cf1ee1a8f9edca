"""Device snapshot probe: a stdlib-only script that prints one JSON object describing the machine it runs on.

Remote devices run this file's source with the board's own Python (`python3 - < _probe.py`), so it must not
import edgeopt or anything outside the standard library. Local and remote snapshots come from the same code,
so they compare field by field.
"""

import glob
import json
import os
import platform


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _int(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def cpu_info():
    out = {}
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("model name", "hardware", "cpu model", "processor") and ":" in line:
            val = line.split(":", 1)[1].strip()
            if key == "processor" and val.isdigit():
                continue
            out.setdefault("cpu_model", val)
        elif key == "cpu part" and ":" in line:  # arm: the core's part number (0xd08 Cortex-A72, 0xd0b A76, ...)
            out.setdefault("cpu_part", line.split(":", 1)[1].strip().lower())
        elif key in ("features", "flags") and ":" in line:  # arm: asimd, asimddp, ...; x86: avx2, avx512f, ...
            out.setdefault("cpu_features", sorted(line.split(":", 1)[1].split()))
    # Per-core frequencies and governors: big.LITTLE boards differ per cluster.
    freqs, govs = {}, set()
    for d in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq")):
        cpu = d.split("/")[-2]
        cur, mx = _int(_read(d + "/scaling_cur_freq")), _int(_read(d + "/cpuinfo_max_freq"))
        if cur or mx:
            freqs[cpu] = {"cur_khz": cur, "max_khz": mx}
        g = _read(d + "/scaling_governor")
        if g:
            govs.add(g)
    if freqs:
        out["freqs_khz"] = freqs
        first = next(iter(freqs.values()))
        out["freq_khz"], out["max_freq_khz"] = first["cur_khz"], first["max_khz"]
    if govs:
        out["governor"] = ",".join(sorted(govs))
    return out


def memory_mb():
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return None


def os_name():
    rel = _read("/etc/os-release") or ""
    for line in rel.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"') + " / " + platform.system() + " " + platform.release()
    return platform.system() + " " + platform.release()


def runtimes():
    found = {}
    try:
        import importlib.metadata as md
    except ImportError:  # pragma: no cover - Python < 3.8
        return found
    # executorch's Python runtime imports torch, so torch is listed too (what an executorch bundle needs there)
    for dist in ("onnxruntime", "apache-tvm", "tvm", "ai-edge-litert", "tflite-runtime", "coremltools", "executorch", "torch", "numpy"):
        try:
            found[dist] = md.version(dist)
        except Exception:  # noqa: BLE001 - PackageNotFoundError or a broken dist
            pass
    return found


def thermal_zones():
    zones = {}
    for d in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        t = _int(_read(d + "/temp"))
        if t is not None:
            zones[(_read(d + "/type") or os.path.basename(d))] = t / 1000.0
    return zones


def probe():
    return {
        "arch": platform.machine(),
        "os": os_name(),
        "hostname": platform.node(),
        "cores": os.cpu_count(),
        "memory_mb": memory_mb(),
        "python": platform.python_version(),
        **cpu_info(),
        "thermal_c": thermal_zones(),
        "runtimes": runtimes(),
    }


if __name__ == "__main__":
    print(json.dumps(probe()))
