"""Mixed precision for ONNX Runtime static int8: keep the most sensitive nodes in float until the budget holds.

Sensitivity of a node = how much signal-to-quantization-noise ratio (SQNR, dB, against the float
model's own tensor) the quantized model loses across that node: SQNR of its inputs minus SQNR of its
output, both taken from one run of the fully quantized model next to the float model (ORT's
`qdq_loss_debug` collects the tensors). A node that adds much noise (a Softmax whose range the int8
grid cannot hold, a Gemm with outlier weights) ranks first. Then, with calibration ranges computed once
and cached, the top-k nodes are left in float for k = 1, 2, 4, ... until a criterion holds, and a binary
search finds the smallest such k (`keep_float_until`). The criterion is a cosine budget for quantize:mixed
(`mixed_precision`) and an accuracy drop on the evaluation split for quantize:int8,max_drop
(`accuracy_controlled`). The report lists the nodes kept in float and their SQNR drop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt._ort import copy_onnx, remove_onnx
from edgeopt.errors import EdgeoptError
from edgeopt.passes._ort_quant import SampleReader, preprocess, static_int8, wants_external_data
from edgeopt.passes.base import PassContext
from edgeopt.passes.quantize_config import QuantizeConfig

_CAP_DB = 120.0


def _sqnr(ref: list[np.ndarray], out: list[np.ndarray]) -> float:
    a = np.concatenate([np.asarray(x, np.float64).ravel() for x in ref])
    b = np.concatenate([np.asarray(x, np.float64).ravel() for x in out])
    n, d = np.linalg.norm(a), np.linalg.norm(a - b)
    if d == 0:
        return _CAP_DB
    return float(min(_CAP_DB, 20 * math.log10(max(n, 1e-30) / d)))


def rank_nodes(float_pre: Path, qdq: Path, ctx: PassContext, samples: int = 4) -> list[dict[str, Any]]:
    """Quantized nodes of `float_pre`, most sensitive first: [{node, op, sqnr_in, sqnr_out, drop_db}]."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        modify_model_output_intermediate_tensors,
    )

    work = ctx.workdir
    aug_f, aug_q = work / "sens_float.onnx", work / "sens_qdq.onnx"
    big = wants_external_data(float_pre)  # above 2 GB the augmented graphs must keep their tensors outside
    modify_model_output_intermediate_tensors(str(float_pre), str(aug_f), save_as_external_data=big)
    modify_model_output_intermediate_tensors(str(qdq), str(aug_q), save_as_external_data=big)
    data = ctx.samples[:samples]
    fa = collect_activations(str(aug_f), SampleReader(data, ctx.input_names))
    qa = collect_activations(str(aug_q), SampleReader(data, ctx.input_names))
    remove_onnx(aug_f)
    remove_onnx(aug_q)

    # In the QDQ model an activation keeps its float name up to its QuantizeLinear, and its
    # dequantized value is NAME_DequantizeLinear_Output: that is what the next node reads.
    def quantized_value(name: str) -> list[np.ndarray] | None:
        return qa.get(name + "_DequantizeLinear_Output") or qa.get(name + "_DequantizeLinear_Output_1") or qa.get(name)

    qgraph = onnx.load(str(qdq), load_external_data=False).graph
    float_ops_in_q = {n.name for n in qgraph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")}
    dq_fed = set()
    for n in qgraph.node:
        if any(i.endswith("_DequantizeLinear_Output") or "DequantizeLinear" in i for i in n.input):
            dq_fed.add(n.name)
    fgraph = onnx.load(str(float_pre), load_external_data=False).graph
    ranked = []
    for node in fgraph.node:
        if node.name not in float_ops_in_q or node.name not in dq_fed:
            continue  # not quantized by ORT (or removed): keeping it float changes nothing
        outs = [o for o in node.output if o in fa and quantized_value(o) is not None]
        ins = [i for i in node.input if i in fa and quantized_value(i) is not None]
        if not outs:
            continue
        s_out = min(_sqnr(fa[o], quantized_value(o)) for o in outs)
        s_in = min((_sqnr(fa[i], quantized_value(i)) for i in ins), default=_CAP_DB)
        ranked.append({"node": node.name, "op": node.op_type, "sqnr_in_db": round(s_in, 2), "sqnr_out_db": round(s_out, 2),
                       "drop_db": round(s_in - s_out, 2)})
    ranked.sort(key=lambda r: -r["drop_db"])
    return ranked


@dataclass
class FloatSearch:
    """The outcome of `keep_float_until`: the nodes kept in float (most sensitive first, with why), every
    count tried and its figures, the ranking, and whether the criterion was met within the budget."""

    met: bool
    kept: list[dict[str, Any]]
    tried: dict[int, dict[str, float]]
    ranked: list[dict[str, Any]]
    limit: int
    int8_path: Path  # the all-int8 artifact (k = 0), for the latency comparison


Judge = Callable[[Path], tuple[bool, dict[str, float]]]


def keep_float_until(src: Path, dst: Path, cfg: QuantizeConfig, ctx: PassContext, judge: Judge) -> FloatSearch:
    """Static int8 of src into dst with the fewest most-sensitive nodes in float for which `judge(path)`
    says yes; at most `cfg.max_float_fraction` of the quantized nodes. The one search behind
    quantize:mixed (a cosine target) and quantize:int8,max_drop (an accuracy drop).

    `judge` runs a candidate artifact and returns (criterion met, its figures). dst is written only when
    the criterion is met; otherwise the result says `met=False` with the figures of the largest count tried."""
    work = ctx.workdir
    pre = preprocess(src, work / "mixed.pre.onnx")
    cache = work / "mixed.calibration.json"
    cache.unlink(missing_ok=True)
    int8 = cfg.model_copy(update={"mode": "int8"})
    tried: dict[int, dict[str, float]] = {}

    def attempt(exclude: list[str], path: Path) -> bool:
        static_int8(src, path, int8, ctx, extra_exclude=exclude, cache=cache, pre=pre)
        ok, figures = judge(path)
        tried[len(exclude)] = figures
        return ok

    full = work / "mixed_k0.onnx"
    if attempt([], full):
        copy_onnx(full, dst)
        return FloatSearch(True, [], tried, [], 0, full)
    # rank on a QDQ model (the debug matching needs QDQ even when the output format is QOperator)
    qdq = full
    if cfg.format != "qdq":
        qdq = work / "mixed_rank_qdq.onnx"
        static_int8(src, qdq, cfg.model_copy(update={"mode": "int8", "format": "qdq"}), ctx, cache=cache, pre=pre)
    ranked = rank_nodes(pre, qdq, ctx)
    limit = max(1, int(len(ranked) * cfg.max_float_fraction))
    names = [r["node"] for r in ranked]
    best: int | None = None
    lo, k = 0, 1
    while k <= limit:
        if attempt(names[:k], work / f"mixed_k{k}.onnx"):
            best = k
            break
        lo, k = k, min(limit, k * 2) if k < limit else limit + 1
    if best is None:
        return FloatSearch(False, [], tried, ranked, limit, full)
    hi = best
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(names[:mid], work / f"mixed_k{mid}.onnx"):
            hi = mid
        else:
            lo = mid
    copy_onnx(work / f"mixed_k{hi}.onnx", dst)
    kept = [{**r, "why": f"adds {r['drop_db']} dB of quantization noise (SQNR {r['sqnr_in_db']} -> {r['sqnr_out_db']} dB)"}
            for r in ranked[:hi]]
    return FloatSearch(True, kept, tried, ranked, limit, full)


def op_counts(nodes: list[dict[str, Any]]) -> str:
    """'2 Conv, 1 Gemm' for a list of ranked nodes."""
    ops: dict[str, int] = {}
    for r in nodes:
        ops[r["op"]] = ops.get(r["op"], 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(ops.items()))


def mixed_precision(src: Path, dst: Path, cfg: QuantizeConfig, ctx: PassContext, target: float) -> dict[str, Any]:
    """Static int8 of src into dst with the fewest float nodes that keep cosine >= target."""
    from edgeopt._ort import ort_run_all

    if ctx.fidelity is None:
        raise EdgeoptError("quantize:mixed needs the pipeline's fidelity function", "run it through edgeopt.compile")
    fidelity = ctx.fidelity

    def judge(path: Path) -> tuple[bool, dict[str, float]]:
        cos = float(fidelity(ort_run_all(path, ctx.samples))["cosine"])
        return cos >= target, {"cosine": cos}

    res = keep_float_until(src, dst, cfg, ctx, judge)
    tried = {k: v["cosine"] for k, v in sorted(res.tried.items())}
    if res.met and not res.kept:
        return {"summary": f"mixed: static int8 already meets cosine {target} ({tried[0]:.6f}); no node kept in float",
                "target": target, "float_nodes": [], "tried": tried}
    if not res.met:
        raise EdgeoptError(
            f"quantize:mixed: keeping the {res.limit} most sensitive of {len(res.ranked)} quantized nodes in float still gives "
            f"cosine {tried[max(tried)]:.6f} < {target}",
            "use quantize:fp16 or quantize:dynamic, raise quantize:max_float_fraction, or relax --fidelity",
        )
    hi = len(res.kept)
    return {
        "summary": (
            f"mixed: static int8 gave cosine {tried[0]:.6f} < {target}; kept the {hi} most sensitive of {len(res.ranked)} "
            f"quantized nodes in float ({op_counts(res.kept)}) -> cosine {tried[hi]:.6f}"
        ),
        "target": target,
        "float_nodes": res.kept,
        "tried": {str(k): v for k, v in tried.items()},
        "ranking_top10": res.ranked[:10],
    }


def accuracy_controlled(src: Path, dst: Path, cfg: QuantizeConfig, ctx: PassContext, max_drop: float,
                        target: float | None = None) -> dict[str, Any]:
    """Static int8 of src into dst with the fewest float nodes that keep the accuracy drop on the evaluation
    split within `max_drop` points (NNCF's accuracy control; `_accuracy.py` defines the drop), and cosine
    >= `target` as well when one is given (quantize:mixed with max_drop). Latency of the fp32 input, the
    all-int8 graph and the result, timed side by side on ORT, goes into the details."""
    from edgeopt._ort import ort_run_all
    from edgeopt._timed_worker import ort_latencies
    from edgeopt.passes._accuracy import accuracy_drop, evaluation_split

    split = evaluation_split(ctx)
    last: dict[str, Any] = {}

    def judge(path: Path) -> tuple[bool, dict[str, float]]:
        d = accuracy_drop(ctx, split, ort_run_all(path, split.samples))
        last["drop"] = d
        ok = d.points <= max_drop + 1e-9 and (target is None or d.cosine >= target)
        return ok, {"drop_points": round(d.points, 4), d.metric: round(d.artifact, 4), "cosine": d.cosine}

    res = keep_float_until(src, dst, cfg, ctx, judge)
    d = last["drop"]
    what = (f"top-1 accuracy against the labels (fp32 {d.reference:.2f}%)" if d.metric == "top1_accuracy"
            else f"{d.metric} with fp32")
    goal = f"drop <= {max_drop} points" + (f" and cosine >= {target}" if target is not None else "")
    k0 = res.tried[0]
    if not res.met:
        worst = res.tried[max(res.tried)]
        raise EdgeoptError(
            f"quantize max_drop={max_drop}: static int8 drops {k0['drop_points']:.2f} points of {what} on {split.where}; keeping the "
            f"{res.limit} most sensitive of {len(res.ranked)} quantized nodes in float still drops {worst['drop_points']:.2f}"
            + (f" (cosine {worst['cosine']:.6f})" if target is not None else ""),
            "raise max_drop or quantize:max_float_fraction, or use quantize:fp16; no bundle was written",
        )
    lat = ort_latencies({"fp32": src, "int8": res.int8_path, "result": dst}, ctx.samples[0])
    hi = len(res.kept)
    if hi == 0:
        summary = f"accuracy control: static int8 already meets {goal} ({k0['drop_points']:.2f} points of {what} on {split.where}); no node kept in float"
    else:
        summary = (f"accuracy control: static int8 dropped {k0['drop_points']:.2f} points of {what} on {split.where}; kept the {hi} most "
                   f"sensitive of {len(res.ranked)} quantized nodes in float ({op_counts(res.kept)}) -> {res.tried[hi]['drop_points']:.2f} points; "
                   f"ORT {lat['int8']:.2f} ms all-int8 -> {lat['result']:.2f} ms")
    return {
        "summary": summary,
        "max_drop": max_drop,
        "target": target,
        "metric": d.metric,
        "evaluated_on": split.where,
        "evaluation_samples": d.n,
        "reference": d.reference if d.metric == "top1_accuracy" else None,
        "drop_int8": k0["drop_points"],
        "drop": res.tried[hi]["drop_points"],
        "float_nodes": res.kept,
        "tried": {str(k): v for k, v in sorted(res.tried.items())},
        "ranking_top10": res.ranked[:10],
        "latency_ms": lat,
    }
