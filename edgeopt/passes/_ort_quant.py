"""ONNX Runtime's quantization tools, driven from a QuantizeConfig: pre-processing, static and dynamic int8,
fp16 and weight-only int4. Each function reads `src` and writes `dst` (never `src`) and returns the details
that go into the pass report. The quantize modes (`quantize_modes.py`) and mixed precision
(`_sensitivity.py`) are built from these.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.errors import EdgeoptError
from edgeopt.passes._measure import op_histogram
from edgeopt.passes.base import PassContext
from edgeopt.passes.quantize_config import QuantizeConfig


class SampleReader:
    """ORT's CalibrationDataReader (`get_next`, `rewind`) over the pass context's real samples; iterating it
    yields the same feeds (what `qdq_loss_debug.collect_activations` takes)."""

    def __init__(self, samples: list[dict[str, np.ndarray]], names: list[str]) -> None:
        self._data = [{n: s[n] for n in names} for s in samples]
        self._it = iter(self._data)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._data)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self._data)


def unshare_initializers(src: Path, dst: Path, max_elements: int = 4096) -> int:
    """Give each consumer of a shared small float initializer its own copy; writes dst when any was shared.

    ORT's QDQ quantizer copies a bias that several nodes read and names the copy NAME + a digit, which can
    collide with an existing tensor: torch's exporter names values val_N, so the copy of `val_37` can be
    `val_376`, an activation, and quantize_static fails with "Quantization parameter shared mode is not
    supported for weight" (or mislabels a tensor). Shared biases and norm parameters (1-D, small) are what
    it copies; big shared weights (tied embeddings) stay shared so the model does not grow. Returns how
    many copies were made."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    g = model.graph
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in g.initializer):
        return 0  # a model with external data keeps its layout (copies would point into another folder)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    small = {t.name: t for t in g.initializer if t.data_type in floats and len(t.dims) <= 1 and math.prod(t.dims) <= max_elements}
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            if i in small:
                uses[i] = uses.get(i, 0) + 1
    shared = {k for k, v in uses.items() if v > 1}
    if not shared:
        return 0
    taken = {t.name for t in g.initializer} | {v.name for v in list(g.input) + list(g.output)}
    taken |= {o for n in g.node for o in n.output}
    made, seen = 0, dict.fromkeys(shared, 0)
    for n in g.node:
        for j, i in enumerate(n.input):
            if i not in shared:
                continue
            seen[i] += 1
            if seen[i] == 1:
                continue  # the first consumer keeps the original
            k = seen[i]
            while f"{i}__copy{k}" in taken:
                k += 1
            name = f"{i}__copy{k}"
            copy = onnx.TensorProto()
            copy.CopyFrom(small[i])
            copy.name = name
            g.initializer.append(copy)
            taken.add(name)
            n.input[j] = name
            made += 1
    tmp = dst.with_name(dst.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(dst)
    return made


def preprocess(src: Path, dst: Path) -> Path:
    """ORT's quantization pre-processing (shape inference + graph optimisation) then `unshare_initializers`;
    src itself (untouched) when pre-processing fails and nothing needed unsharing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgeopt._ort import ort_session

    # ORT's optimisation step can emit a graph ORT itself will not load ("Attempt to replace the existing
    # tensor" on TinyGPT-V's rotary embedding); then pre-process without it.
    for skip_optimization in (False, True):
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True, skip_optimization=skip_optimization)
            ort_session(dst)
            break
        except Exception:  # noqa: BLE001 - pre-processing is an optimisation; fall back as far as the raw graph
            dst.unlink(missing_ok=True)
    else:
        return dst if unshare_initializers(src, dst) else src
    unshare_initializers(dst, dst)
    return dst


def _quant_types() -> dict[str, Any]:
    from onnxruntime.quantization import QuantType

    return {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}


def static_int8(
    src: Path, dst: Path, cfg: QuantizeConfig, ctx: PassContext,
    extra_exclude: list[str] | None = None, cache: Path | None = None, pre: Path | None = None,
) -> dict[str, Any]:
    """Static int8 of `src` into `dst`, calibrated on the context's samples. `cache` reuses calibration
    ranges across calls (mixed precision); `pre` is an already pre-processed copy of src."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    own_pre = pre is None
    if pre is None:
        pre = preprocess(src, dst.with_name(dst.stem + ".pre.onnx"))
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[cfg.calibration]
    qt = _quant_types()
    nodes_to_exclude = list(cfg.exclude_nodes) + list(extra_exclude or [])
    if cfg.exclude_ops:
        import onnx

        g = onnx.load(str(pre), load_external_data=False).graph
        nodes_to_exclude += [n.name for n in g.node if n.op_type in cfg.exclude_ops]
    extra: dict[str, Any] = {}
    if cfg.calibration == "percentile":
        extra["CalibPercentile"] = cfg.percentile
    samples = ctx.samples[: cfg.calibration_samples]
    fmt = QuantFormat.QDQ if cfg.format == "qdq" else QuantFormat.QOperator
    quantize_static(
        str(pre), str(dst), SampleReader(samples, ctx.input_names),
        quant_format=fmt, per_channel=cfg.per_channel,
        activation_type=qt[cfg.activation_type], weight_type=qt[cfg.weight_type],
        op_types_to_quantize=list(cfg.op_types) or None,
        calibrate_method=method, nodes_to_exclude=nodes_to_exclude, extra_options=extra,
        calibration_cache_path=str(cache) if cache is not None else None,
    )
    if own_pre and pre != src:
        pre.unlink(missing_ok=True)
    return {"calibration_samples": len(samples), "nodes_excluded": nodes_to_exclude}


def dynamic_int8(src: Path, dst: Path, cfg: QuantizeConfig) -> dict[str, Any]:
    """Dynamic int8: weights quantized here, activations at run time."""
    from onnxruntime.quantization import quantize_dynamic

    pre = preprocess(src, dst.with_name(dst.stem + ".pre.onnx"))
    quantize_dynamic(
        str(pre), str(dst), weight_type=_quant_types()[cfg.weight_type], per_channel=cfg.per_channel,
        op_types_to_quantize=list(cfg.op_types) or None, nodes_to_exclude=list(cfg.exclude_nodes),
    )
    if pre != src:
        pre.unlink(missing_ok=True)
    return {"weight_type": cfg.weight_type}


def to_fp16(src: Path, dst: Path, cfg: QuantizeConfig) -> dict[str, Any]:
    """float16 weights and compute; `keep_io_types` keeps fp32 inputs and outputs (casts inside)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    blocked = list(cfg.exclude_ops) or None
    out = convert_float_to_float16(
        model, keep_io_types=cfg.keep_io_types, op_block_list=blocked, node_block_list=list(cfg.exclude_nodes) or None,
    )
    onnx.save(out, str(dst))
    return {"keep_io_types": cfg.keep_io_types}


def weight_int4(src: Path, dst: Path, cfg: QuantizeConfig) -> dict[str, Any]:
    """MatMulNBits on every MatMul whose weight is a constant 2-D initializer; an error when there is none."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    before = sum(1 for n in model.graph.node if n.op_type == "MatMul")
    gemms = sum(1 for n in model.graph.node if n.op_type == "Gemm")
    q = MatMulNBitsQuantizer(
        model, bits=4, block_size=cfg.block_size, is_symmetric=cfg.symmetric, accuracy_level=cfg.accuracy_level,
        nodes_to_exclude=list(cfg.exclude_nodes), op_types_to_quantize=("MatMul",),
    )
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)
    after = op_histogram(dst)
    n4 = after.get("MatMulNBits", 0)
    if n4 == 0:
        dst.unlink(missing_ok=True)
        raise EdgeoptError(
            f"quantize:int4 found no MatMul with a constant weight to quantize ({before} MatMul, {gemms} Gemm nodes)",
            "int4 is weight-only for transformer linears; use quantize:int8 or quantize:dynamic for this model",
        )
    return {"matmul_nbits": n4, "matmul_left_float": after.get("MatMul", 0), "gemm_left_float": after.get("Gemm", 0),
            "block_size": cfg.block_size, "symmetric": cfg.symmetric}
