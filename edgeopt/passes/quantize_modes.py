"""The quantize pass's modes, one strategy each, registered in `QUANTIZE_MODES` under the config's `mode`.

A mode is a function `(src, dst, cfg, ctx) -> (details, note)`: it writes the quantized copy of the ONNX
file `src` to `dst` and returns the details for the report's `changes` and a one-line note.
- int8: static quantization, per-channel int8 weights, activations calibrated on the real sample inputs
  (MinMax, Entropy or Percentile); format and types default to QDQ, uint8 activations x int8 weights.
- dynamic: dynamic int8 (weights quantized offline, activations at run time; no calibration).
- fp16: float16 weights and compute; `keep_io_types` (default on) keeps fp32 inputs/outputs.
- int4: weight-only 4-bit blocks (`MatMulNBits`) for MatMul with constant weights (transformer linears).
- mixed: static int8, then, while the fidelity budget (`target`, else the pipeline's `--fidelity`,
  else 0.999) is broken, keep the most sensitive nodes in float (`_sensitivity.py`).
- `max_drop` (int8 or mixed): accuracy control, the same search with the accuracy drop on the evaluation
  split as its criterion (and, for mixed, the cosine budget as well): `_sensitivity.accuracy_controlled`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeopt._registry import Registry
from edgeopt.errors import SpecError
from edgeopt.passes._ort_quant import dynamic_int8, static_int8, to_fp16, weight_int4
from edgeopt.passes._sensitivity import accuracy_controlled, mixed_precision
from edgeopt.passes.base import PassContext
from edgeopt.passes.quantize_config import QuantizeConfig

QuantizeMode = Callable[[Path, Path, QuantizeConfig, PassContext], tuple[dict[str, Any], str]]

QUANTIZE_MODES: Registry[QuantizeMode] = Registry("quantize mode", error=SpecError)


@QUANTIZE_MODES.register("int8")
def int8(src: Path, dst: Path, cfg: QuantizeConfig, ctx: PassContext) -> tuple[dict[str, Any], str]:
    if cfg.max_drop is not None:
        details = accuracy_controlled(src, dst, cfg, ctx, cfg.max_drop)
        return details, details.pop("summary")
    details = static_int8(src, dst, cfg, ctx)
    weights = f"{cfg.weight_type} weights" + (" per channel" if cfg.per_channel else "")
    calibration = f"{cfg.calibration} calibration on {details['calibration_samples']} real samples"
    note = f"static {cfg.format.upper()}, {cfg.activation_type} activations x {weights}, {calibration}"
    return details, note + _float_by_rule_note(details["float_by_rule"])


def _float_by_rule_note(nodes: list[dict[str, str]]) -> str:
    """'; 12 nodes left float (6 Conv, 6 Add): ...' for the nodes `slow_int8_nodes` kept in float."""
    if not nodes:
        return ""
    counts = ", ".join(f"{v} {k}" for k, v in sorted(Counter(n["op"] for n in nodes).items()))
    return (f"; {len(nodes)} nodes left float ({counts}): ops whose int8 kernel on ONNX Runtime's CPU is slower "
            "than fp32 (grouped convs that are not depthwise, AveragePool) and their readers; "
            "float_slow_ops=false quantizes them")


@QUANTIZE_MODES.register("dynamic")
def dynamic(src: Path, dst: Path, cfg: QuantizeConfig, ctx: PassContext) -> tuple[dict[str, Any], str]:
    details = dynamic_int8(src, dst, cfg)
    streamed = str(details.get("method", "")).startswith("streamed")
    return details, f"dynamic int8: {cfg.weight_type} weights, activations quantized at run time" + ("; MatMul only, streamed" if streamed else "")


@QUANTIZE_MODES.register("fp16")
def fp16(src: Path, dst: Path, cfg: QuantizeConfig, ctx: PassContext) -> tuple[dict[str, Any], str]:
    note = "fp16 weights and compute" + ("; fp32 inputs/outputs kept" if cfg.keep_io_types else "")
    return to_fp16(src, dst, cfg), note


@QUANTIZE_MODES.register("int4")
def int4(src: Path, dst: Path, cfg: QuantizeConfig, ctx: PassContext) -> tuple[dict[str, Any], str]:
    details = weight_int4(src, dst, cfg)
    note = (
        f"weight-only int4 (MatMulNBits, blocks of {cfg.block_size}) on {details['matmul_nbits']} MatMuls; "
        f"{details['gemm_left_float']} Gemm and {details['matmul_left_float']} other MatMul left float"
    )
    return details, note


@QUANTIZE_MODES.register("mixed")
def mixed(src: Path, dst: Path, cfg: QuantizeConfig, ctx: PassContext) -> tuple[dict[str, Any], str]:
    target = cfg.target if cfg.target is not None else (ctx.budget if ctx.budget is not None else 0.999)
    if cfg.max_drop is not None:
        details = accuracy_controlled(src, dst, cfg, ctx, cfg.max_drop, target=target)
        return details, details.pop("summary")
    details = mixed_precision(src, dst, cfg, ctx, target)
    return details, details.pop("summary")
