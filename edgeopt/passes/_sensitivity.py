"""Mixed precision for ONNX Runtime static int8: keep the most sensitive nodes in float until the budget holds.

Sensitivity of a node = how much signal-to-quantization-noise ratio (SQNR, dB, against the float
model's own tensor) the quantized model loses across that node: SQNR of its inputs minus SQNR of its
output, both taken from one run of the fully quantized model next to the float model (ORT's
`qdq_loss_debug` collects the tensors). A node that adds much noise (a Softmax whose range the int8
grid cannot hold, a Gemm with outlier weights) ranks first. Then, with calibration ranges computed once
and cached, the top-k nodes are left in float for k = 1, 2, 4, ... until the cosine budget holds, and a
binary search finds the smallest such k. The report lists the nodes kept in float and their SQNR drop.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.errors import EdgeoptError
from edgeopt.passes._ort_quant import SampleReader, preprocess, static_int8
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
    modify_model_output_intermediate_tensors(str(float_pre), str(aug_f))
    modify_model_output_intermediate_tensors(str(qdq), str(aug_q))
    data = ctx.samples[:samples]
    fa = collect_activations(str(aug_f), SampleReader(data, ctx.input_names))
    qa = collect_activations(str(aug_q), SampleReader(data, ctx.input_names))
    aug_f.unlink(missing_ok=True)
    aug_q.unlink(missing_ok=True)

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


def mixed_precision(src: Path, dst: Path, cfg: QuantizeConfig, ctx: PassContext, target: float) -> dict[str, Any]:
    """Static int8 of src into dst with the fewest float nodes that keep cosine >= target."""
    from edgeopt._ort import ort_run_all

    if ctx.fidelity is None:
        raise EdgeoptError("quantize:mixed needs the pipeline's fidelity function", "run it through edgeopt.compile")
    work = ctx.workdir
    pre = preprocess(src, work / "mixed.pre.onnx")
    cache = work / "mixed.calibration.json"
    cache.unlink(missing_ok=True)
    int8 = cfg.model_copy(update={"mode": "int8"})
    tried: dict[int, float] = {}

    def attempt(exclude: list[str], path: Path) -> float:
        static_int8(src, path, int8, ctx, extra_exclude=exclude, cache=cache, pre=pre)
        return float(ctx.fidelity(ort_run_all(path, ctx.samples))["cosine"])

    full = work / "mixed_k0.onnx"
    tried[0] = attempt([], full)
    if tried[0] >= target:
        shutil.copyfile(full, dst)
        return {"summary": f"mixed: static int8 already meets cosine {target} ({tried[0]:.6f}); no node kept in float",
                "target": target, "float_nodes": [], "tried": tried}
    # rank on a QDQ model (the debug matching needs QDQ even when the output format is QOperator)
    qdq = full
    if cfg.format != "qdq":
        qdq = work / "mixed_rank_qdq.onnx"
        static_int8(src, qdq, cfg.model_copy(update={"format": "qdq"}), ctx, cache=cache, pre=pre)
    ranked = rank_nodes(pre, qdq, ctx)
    limit = max(1, int(len(ranked) * cfg.max_float_fraction))
    names = [r["node"] for r in ranked]
    best: int | None = None
    lo, k = 0, 1
    while k <= limit:
        tried[k] = attempt(names[:k], work / f"mixed_k{k}.onnx")
        if tried[k] >= target:
            best = k
            break
        lo, k = k, min(limit, k * 2) if k < limit else limit + 1
    if best is None:
        raise EdgeoptError(
            f"quantize:mixed: keeping the {limit} most sensitive of {len(ranked)} quantized nodes in float still gives "
            f"cosine {tried[max(tried)]:.6f} < {target}",
            "use quantize:fp16 or quantize:dynamic, raise quantize:max_float_fraction, or relax --fidelity",
        )
    hi = best
    while hi - lo > 1:
        mid = (lo + hi) // 2
        tried[mid] = attempt(names[:mid], work / f"mixed_k{mid}.onnx")
        if tried[mid] >= target:
            hi = mid
        else:
            lo = mid
    shutil.copyfile(work / f"mixed_k{hi}.onnx", dst)
    kept = ranked[:hi]
    ops = {}
    for r in kept:
        ops[r["op"]] = ops.get(r["op"], 0) + 1
    return {
        "summary": (
            f"mixed: static int8 gave cosine {tried[0]:.6f} < {target}; kept the {hi} most sensitive of {len(ranked)} "
            f"quantized nodes in float ({', '.join(f'{v} {k}' for k, v in sorted(ops.items()))}) -> cosine {tried[hi]:.6f}"
        ),
        "target": target,
        "float_nodes": [{**r, "why": f"adds {r['drop_db']} dB of quantization noise (SQNR {r['sqnr_in_db']} -> {r['sqnr_out_db']} dB)"} for r in kept],
        "tried": {str(k): v for k, v in sorted(tried.items())},
        "ranking_top10": ranked[:10],
    }
