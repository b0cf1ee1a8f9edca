"""quantize: ONNX Runtime quantization of the exported graph.

Modes (the config shape is shared with the LiteRT and Core ML backends, which read `mode`,
`calibration`, `calibration_samples`, `per_channel` from a delegated pass, so names stay generic):
- int8: static quantization, per-channel int8 weights, activations calibrated on the real sample inputs
  (MinMax, Entropy or Percentile). The format and activation/weight types default to the combination
  measured fastest on this x86 machine (docs/passes.md, `bench/passes.py --quant-types`).
- dynamic: dynamic int8 (weights quantized offline, activations at run time; no calibration).
- fp16: float16 weights and compute; `keep_io_types` (default on) keeps fp32 inputs/outputs.
- int4: weight-only 4-bit blocks (`MatMulNBits`) for MatMul with constant weights (transformer linears).
- mixed: static int8, then, while the fidelity budget (`target`, else the pipeline's `--fidelity`,
  else 0.999) is broken, keep the most sensitive nodes in float (edgeopt/passes/_sensitivity.py).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeopt.errors import EdgeoptError
from edgeopt.passes.base import Pass, PassConfig, PassContext, PassReport, register_pass

# The default static format/types, from the measurement in docs/passes.md (see module docstring).
DEFAULT_FORMAT = "qdq"


class QuantizeConfig(PassConfig):
    mode: Literal["int8", "dynamic", "fp16", "int4", "mixed"] = "int8"
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    format: Literal["qdq", "qoperator"] = DEFAULT_FORMAT  # type: ignore[assignment]
    calibration_samples: int = 8
    percentile: float = 99.999
    # op types to quantize (empty: every type ORT can quantize), e.g. "Conv|MatMul|Gemm"
    op_types: list[str] = []
    # op types / node names to leave in float (e.g. "Softmax|LayerNormalization")
    exclude_ops: list[str] = []
    exclude_nodes: list[str] = []
    keep_io_types: bool = True  # fp16: fp32 inputs and outputs, casts inside
    block_size: int = 32  # int4: weights per quantization block
    symmetric: bool = True  # int4
    accuracy_level: int | None = 4  # int4: MatMulNBits compute type (4 = int8 compute on CPU)
    target: float | None = None  # mixed: minimum cosine; default the pipeline's budget, else 0.999
    max_float_fraction: float = 0.5  # mixed: give up when this share of quantized nodes must stay float


def onnx_node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def op_histogram(path: Path) -> dict[str, int]:
    import onnx

    out: dict[str, int] = {}
    for n in onnx.load(str(path), load_external_data=False).graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


class _Reader:
    """ORT CalibrationDataReader over the pass context's real samples."""

    def __init__(self, samples: list[dict[str, np.ndarray]], names: list[str]) -> None:
        self._data = [{n: s[n] for n in names} for s in samples]
        self._it = iter(self._data)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._data)


def unshare_initializers(src: Path, dst: Path, max_elements: int = 4096) -> int:
    """Give each consumer of a shared small float initializer its own copy; writes dst when any was shared.

    Why: ORT's QDQ quantizer copies a bias that several nodes read and names the copy NAME + a digit,
    which can collide with an existing tensor (torch's exporter names values val_37, val_376, ...): on
    shvit_s1 the copy of InstanceNormalization's bias `val_37` became `val_376`, an activation, and
    quantize_static then failed with "Quantization parameter shared mode is not supported for weight".
    Shared biases and norm parameters (1-D, small) are where this happens; big shared weights (tied
    embeddings) are left shared so the model does not grow. Returns how many copies were made."""
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

    # ORT's optimisation step can emit a graph ORT itself will not load (seen on TinyGPT-V's rotary
    # embedding: "Attempt to replace the existing tensor"); then pre-process without it.
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


def static_int8(
    src: Path, dst: Path, cfg: QuantizeConfig, ctx: PassContext,
    extra_exclude: list[str] | None = None, cache: Path | None = None, pre: Path | None = None,
) -> dict[str, Any]:
    """Static int8 of `src` into `dst`. `cache` reuses calibration ranges across calls (mixed mode);
    `pre` is an already pre-processed copy of src."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    own_pre = pre is None
    if pre is None:
        pre = preprocess(src, dst.with_name(dst.stem + ".pre.onnx"))
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[cfg.calibration]
    qt = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
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
        str(pre), str(dst), _Reader(samples, ctx.input_names),
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
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pre = preprocess(src, dst.with_name(dst.stem + ".pre.onnx"))
    qt = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    quantize_dynamic(
        str(pre), str(dst), weight_type=qt[cfg.weight_type], per_channel=cfg.per_channel,
        op_types_to_quantize=list(cfg.op_types) or None, nodes_to_exclude=list(cfg.exclude_nodes),
    )
    if pre != src:
        pre.unlink(missing_ok=True)
    return {"weight_type": cfg.weight_type}


def to_fp16(src: Path, dst: Path, cfg: QuantizeConfig) -> dict[str, Any]:
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
    """MatMulNBits on every MatMul whose weight is a constant 2-D initializer."""
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


@register_pass
class QuantizePass(Pass):
    name = "quantize"
    works_on = "onnx"
    Config = QuantizeConfig
    shorthand_key = "mode"
    description = "ONNX Runtime quantization: static int8 (calibrated on real samples), dynamic, fp16, int4, mixed"

    def applies_to(self, model: Any, ctx: PassContext) -> tuple[bool, str]:
        cfg: QuantizeConfig = self.config  # type: ignore[assignment]
        if cfg.calibration_samples < 1:
            return False, "calibration_samples must be at least 1"
        if cfg.mode == "int4" and cfg.block_size not in (16, 32, 64, 128, 256):
            return False, f"int4 block_size {cfg.block_size} is not one of 16, 32, 64, 128, 256"
        return True, ""

    def run(self, model: Path, ctx: PassContext) -> tuple[Path, PassReport]:
        cfg: QuantizeConfig = self.config  # type: ignore[assignment]
        rep = self.new_report()
        t0 = time.perf_counter()
        model = Path(model)
        dst = ctx.workdir / f"quantize_{cfg.mode}.onnx"
        if cfg.mode == "int8":
            details = static_int8(model, dst, cfg, ctx)
            rep.notes.append(
                f"static {cfg.format.upper()}, {cfg.activation_type} activations x {cfg.weight_type} weights"
                f"{' per channel' if cfg.per_channel else ''}, {cfg.calibration} calibration on {details['calibration_samples']} real samples"
            )
        elif cfg.mode == "dynamic":
            details = dynamic_int8(model, dst, cfg)
            rep.notes.append(f"dynamic int8: {cfg.weight_type} weights, activations quantized at run time")
        elif cfg.mode == "fp16":
            details = to_fp16(model, dst, cfg)
            rep.notes.append("fp16 weights and compute" + ("; fp32 inputs/outputs kept" if cfg.keep_io_types else ""))
        elif cfg.mode == "int4":
            details = weight_int4(model, dst, cfg)
            rep.notes.append(
                f"weight-only int4 (MatMulNBits, blocks of {cfg.block_size}) on {details['matmul_nbits']} MatMuls; "
                f"{details['gemm_left_float']} Gemm and {details['matmul_left_float']} other MatMul left float"
            )
        else:
            from edgeopt.passes._sensitivity import mixed_precision

            target = cfg.target if cfg.target is not None else (ctx.budget if ctx.budget is not None else 0.999)
            details = mixed_precision(model, dst, cfg, ctx, target)
            rep.notes.append(details.pop("summary"))
        rep.seconds = time.perf_counter() - t0
        rep.size_before, rep.size_after = model.stat().st_size, dst.stat().st_size
        rep.nodes_before, rep.nodes_after = onnx_node_count(model), onnx_node_count(dst)
        rep.precision = cfg.mode
        rep.changes.append(details)
        return dst, rep
