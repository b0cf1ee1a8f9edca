"""The device side's timing loop and result printing, shared by the runner and the end-to-end runner.

Standard library only (and edgeopt.measurement): it runs on boards.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from edgeopt.measurement import Measurement, summarize


def summary_dict(latencies_ms: list[float]) -> dict[str, Any]:
    """`{"latency_ms": {...}, "cv", "runs"}` of a list of latencies: the shape of the end-to-end sections."""
    from dataclasses import asdict

    lat, cv = summarize(latencies_ms)
    return {"latency_ms": asdict(lat), "cv": cv, "runs": len(latencies_ms)}


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process in MiB, None where unknown.

    Linux: VmHWM of /proc/self/status, the high-water mark of this program's own memory (getrusage's ru_maxrss
    survives execve, so a runner started from a large parent would report the parent's peak). Elsewhere:
    getrusage (macOS counts bytes)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return ru / 1024.0 if sys.platform != "darwin" else ru / (1024.0 * 1024.0)
    except (ImportError, OSError):
        return None


def measure_session(run: Callable[[], Any], warmup: int, runs: int, min_seconds: float, max_seconds: float | None = None) -> list[float]:
    """Call `run()` `warmup` times, then until both `runs` calls and `min_seconds` have passed."""
    for _ in range(warmup):
        run()
    lat: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        run()
        t1 = time.perf_counter()
        lat.append((t1 - t0) * 1e3)
        elapsed = t1 - start
        if len(lat) >= runs and elapsed >= min_seconds:
            break
        if max_seconds is not None and elapsed >= max_seconds and len(lat) >= 1:
            break
    return lat


def print_result(measure: Callable[[], Measurement | dict[str, Any]]) -> int:
    """Print the result as one JSON object, or {"error": ...} with exit code 2: the harness reads exactly
    one object from every runner, whatever happened."""
    try:
        res = measure()
    except Exception as e:  # noqa: BLE001 - the harness reads this JSON; it must always get one object
        print(json.dumps({"error": f"{type(e).__name__}: {getattr(e, 'message', None) or e}"}))
        return 2
    if isinstance(res, Measurement):
        if res.loop_end is not None:  # how long ago the timed loop ended, for the host's energy window
            res.after_loop_s = time.monotonic() - res.loop_end
            res.loop_end = None
        print(res.to_json())
    else:
        print(json.dumps(res))
    return 0


