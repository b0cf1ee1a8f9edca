"""Before/after figures for pass reports (params and MACs of a torch module, node counts of an ONNX graph,
ORT latency), and `TorchPass`, the run every torch pass shares, which fills them.

A torch pass's worth is decided by what the exported graph does on a runtime, not by its MAC count, so
each torch pass can export its input and output (into the pass's scratch folder) and time both on ONNX
Runtime side by side. The export of the *input* is cached per module object in `ctx.extras`, so a
pipeline of several torch passes exports each intermediate model once.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from edgeopt.passes.base import ConfigT, Pass, PassContext, PassReport


def op_histogram(path: Path) -> dict[str, int]:
    """Node count per op type of an ONNX file."""
    import onnx

    out: dict[str, int] = {}
    for n in onnx.load(str(path), load_external_data=False).graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def onnx_node_count(path: Path) -> int:
    return sum(op_histogram(path).values())


def torch_inputs(ctx: PassContext, i: int = 0) -> tuple:
    from edgeopt.export import to_torch_inputs

    return to_torch_inputs(ctx.samples[i], ctx.input_names)


def run_torch(module: Any, ctx: PassContext, n: int | None = None) -> list[dict[str, np.ndarray]]:
    from edgeopt.export import torch_outputs

    return [torch_outputs(module, s, ctx.input_names, ctx.output_names) for s in ctx.samples[:n]]


def params_macs(module: Any, ctx: PassContext) -> tuple[int, int | None]:
    from edgeopt.models.counting import count_macs, count_params

    try:
        macs = int(count_macs(module, torch_inputs(ctx)))
    except Exception:  # noqa: BLE001 - a model FlopCounterMode cannot run still gets its params counted
        macs = None
    return int(count_params(module)), macs


def rel_max_diff(refs: list[dict[str, np.ndarray]], outs: list[dict[str, np.ndarray]]) -> float:
    """Largest |ref - out| relative to the reference's largest magnitude (the 'equal within 1e-4' test)."""
    worst = 0.0
    for r, o in zip(refs, outs, strict=True):
        for k, a in r.items():
            if not np.issubdtype(a.dtype, np.floating):
                if not np.array_equal(a, o[k]):
                    return float("inf")
                continue
            scale = max(float(np.max(np.abs(a))), 1e-12)
            worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - o[k].astype(np.float64)))) / scale)
    return worst


def export_for_report(module: Any, ctx: PassContext, tag: str) -> Path | None:
    """Export `module` to ONNX in the scratch folder (cached per module object); None when it cannot."""
    from edgeopt.export import export_onnx

    cache: dict[int, Path | None] = ctx.extras.setdefault("_report_exports", {})
    key = id(module)
    if key in cache:
        return cache[key]
    path = ctx.workdir / f"report_{tag}_{len(cache)}.onnx"
    try:
        export_onnx(module, ctx.samples[0], ctx.input_names, ctx.output_names, path)
    except Exception:  # noqa: BLE001 - the report then says the latency could not be measured
        path = None
    cache[key] = path
    # keep the module alive while cached, so its id() is not reused by another object
    ctx.extras.setdefault("_report_modules", []).append(module)
    return path


def fill_graph_figures(rep: PassReport, before: Any, after: Any, ctx: PassContext, runs: int = 20) -> None:
    """Set nodes_before/after and latency_ms_before/after on the report: ONNX Runtime, each graph in a process of
    its own, alternating rounds (`edgeopt._timed_worker.ort_latencies`)."""
    from edgeopt._timed_worker import ort_latencies

    pb = export_for_report(before, ctx, f"{rep.name}_in")
    pa = export_for_report(after, ctx, f"{rep.name}_out")
    if pb is None or pa is None:
        rep.notes.append("ONNX export for the latency report failed; latency not measured")
        return
    rep.nodes_before, rep.nodes_after = onnx_node_count(pb), onnx_node_count(pa)
    lat = ort_latencies({"before": pb, "after": pa}, ctx.samples[0], runs=runs)
    rep.latency_ms_before, rep.latency_ms_after = lat["before"], lat["after"]


class TorchPass(Pass[ConfigT]):
    """A pass on the torch module. `run` gives every torch pass's report the same figures: params and MACs
    before and after, the pass's own time, then (see `measure_latency`) the ONNX node count and ORT latency
    of its input and output; a subclass implements `transform`."""

    works_on: ClassVar[Literal["torch", "onnx"]] = "torch"

    @abstractmethod
    def transform(self, model: Any, ctx: PassContext, rep: PassReport) -> Any:
        """Return the transformed copy of `model` (never mutate the input); add changes and notes to `rep`."""

    def measure_latency(self, rep: PassReport) -> bool:
        """Whether to export input and output and time both for the report: the config's `measure_latency`."""
        return bool(getattr(self.config, "measure_latency", True))

    def run(self, model: Any, ctx: PassContext) -> tuple[Any, PassReport]:
        rep = self.new_report()
        t0 = time.perf_counter()
        rep.params_before, rep.macs_before = params_macs(model, ctx)
        out = self.transform(model, ctx, rep)
        rep.params_after, rep.macs_after = params_macs(out, ctx)
        rep.seconds = time.perf_counter() - t0
        if self.measure_latency(rep):
            fill_graph_figures(rep, model, out, ctx)
        return out, rep
