"""Device-side runner: `python -m edgeopt.runner BUNDLE [--warmup W --runs N --min-seconds S --threads T]`.

Loads a bundle (refusing it if any sha256 differs), checks the artifact's outputs on the bundle's own
reference inputs, measures latency LoadGen-style (warm-up, then until both a run count and a duration are
reached) and prints one JSON object on stdout. Needs only numpy and the bundle's runtime: never torch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def summarize(latencies_ms: list[float]) -> dict[str, Any]:
    """Percentiles, mean, std and coefficient of variation of a list of latencies (ms)."""
    a = np.asarray(latencies_ms, dtype=np.float64)
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return {
        "latency_ms": {
            "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)),
            "mean": mean,
            "std": std,
            "min": float(a.min()),
            "max": float(a.max()),
        },
        "cv": std / mean if mean > 0 else 0.0,
        "runs": int(a.size),
    }


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process in MiB (Linux/macOS), None where unknown."""
    try:
        import resource

        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return ru / 1024.0 if sys.platform != "darwin" else ru / (1024.0 * 1024.0)
    except (ImportError, OSError):
        return None


def measure_session(run, warmup: int, runs: int, min_seconds: float, max_seconds: float | None = None) -> list[float]:
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


def run_bundle(
    path: str,
    warmup: int = 5,
    runs: int = 20,
    min_seconds: float = 1.0,
    threads: int | None = None,
    max_seconds: float | None = None,
    verify: bool = True,
) -> dict[str, Any]:
    from edgeopt.bundle import load_bundle
    from edgeopt.fidelity import output_metrics
    from edgeopt.runtimes.base import get_backend

    bundle = load_bundle(path, verify=verify)
    backend = get_backend(bundle.backend)
    ok, why = backend.available()
    if not ok:
        raise RuntimeError(f"backend {bundle.backend} is not available on this device: {why}")
    t0 = time.perf_counter()
    session = backend.load(bundle.path, bundle.manifest, threads=threads)
    init_ms = (time.perf_counter() - t0) * 1e3

    inputs = bundle.reference_inputs()
    refs = bundle.reference_outputs()
    outs = session.run(inputs)
    check = output_metrics([refs], [{k: outs[k] for k in refs if k in outs}])
    cos_min = bundle.manifest.get("check", {}).get("cosine_min", 0.999)
    check["cosine_min"] = cos_min
    outputs_match = bool(set(refs) <= set(outs) and check["cosine"] >= cos_min)

    lat = measure_session(lambda: session.run(inputs), warmup, runs, min_seconds, max_seconds)
    result: dict[str, Any] = {
        "bundle_sha256": bundle.sha256,
        "model": bundle.model,
        "backend": bundle.backend,
        "precision": bundle.manifest.get("precision"),
        **summarize(lat),
        "warmup": warmup,
        "threads": threads,
        "init_ms": init_ms,
        "peak_rss_mb": peak_rss_mb(),
        "outputs_match": outputs_match,
        "check": check,
        "energy": None,
        "platform": {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version(), "pid": os.getpid()},
        "torch_loaded": "torch" in sys.modules,
    }
    session.close()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeopt.runner", description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--max-seconds", type=float, default=None, help="stop after this long even if --runs is not reached")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-verify", action="store_true", help="skip the sha256 check (the harness verified on push)")
    a = ap.parse_args(argv)
    return print_result(lambda: run_bundle(a.bundle, a.warmup, a.runs, a.min_seconds, a.threads, a.max_seconds, verify=not a.no_verify))


def print_result(measure: Callable[[], dict[str, Any]]) -> int:
    """Print the measurement as one JSON object, or {"error": ...} with exit code 2: the harness reads
    exactly one object from every runner, whatever happened."""
    try:
        res = measure()
    except Exception as e:  # noqa: BLE001 - the harness reads this JSON; it must always get one object
        print(json.dumps({"error": f"{type(e).__name__}: {getattr(e, 'message', None) or e}"}))
        return 2
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
