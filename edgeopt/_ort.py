"""The one place that creates ONNX Runtime sessions (used by export checks, passes and the runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def ort_session(path: str | Path, threads: int | None = None, optimization: str = "all"):
    """A CPU InferenceSession with `threads` intra-op threads (None/0 = the runtime's default)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_run_all(path: str | Path, samples: list[dict[str, np.ndarray]], threads: int | None = None) -> list[dict[str, np.ndarray]]:
    """Run every sample through the ONNX file; outputs keyed by the graph's output names."""
    s = ort_session(path, threads)
    ins = [i.name for i in s.get_inputs()]
    outs = [o.name for o in s.get_outputs()]
    return [dict(zip(outs, s.run(outs, {n: x[n] for n in ins}), strict=True)) for x in samples]


def ort_latency_ms(path: str | Path, sample: dict[str, np.ndarray], runs: int = 20, warmup: int = 3, threads: int | None = None) -> float:
    """Median latency in ms of one sample on ONNX Runtime (used by pass reports, not by the harness)."""
    import time

    s = ort_session(path, threads)
    ins = [i.name for i in s.get_inputs()]
    feed = {n: sample[n] for n in ins}
    for _ in range(warmup):
        s.run(None, feed)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        s.run(None, feed)
        ts.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ts))
