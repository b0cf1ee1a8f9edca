"""The quantize pass's options: one schema for ONNX Runtime quantization (`quantize.py`) and for the
backends that take the pass delegated (LiteRT and Core ML read `mode`, `calibration`, `calibration_samples`
and `per_channel` from its dumped dict), so the names stay generic.

Ranges are checked here, when the pipeline string is parsed, whichever backend runs the pass.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from edgeopt.passes.base import PassConfig, in_range

# The default static int8 format; docs/passes.md has the measurement behind it (`bench/passes.py --quant-types`).
DEFAULT_FORMAT = "qdq"


class QuantizeConfig(PassConfig):
    mode: Literal["int8", "dynamic", "fp16", "int4", "mixed"] = "int8"
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    format: Literal["qdq", "qoperator"] = DEFAULT_FORMAT  # type: ignore[assignment]
    calibration_samples: Annotated[int, in_range("[1, inf)")] = 8
    percentile: Annotated[float, in_range("(0, 100]")] = 99.999
    # op types to quantize (empty: every type ORT can quantize), e.g. "Conv|MatMul|Gemm"
    op_types: list[str] = []
    # op types / node names to leave in float (e.g. "Softmax|LayerNormalization")
    exclude_ops: list[str] = []
    exclude_nodes: list[str] = []
    # int8 / mixed (ONNX Runtime): leave in float the patterns whose int8 kernel on ORT's CPU is slower than
    # fp32 (`_ort_quant.slow_int8_nodes`: grouped convs that are not depthwise, AveragePool; and their readers)
    float_slow_ops: bool = True
    keep_io_types: bool = True  # fp16: fp32 inputs and outputs, casts inside
    block_size: Literal[16, 32, 64, 128, 256] = 32  # int4: weights per block (sizes MatMulNBits takes)
    symmetric: bool = True  # int4
    accuracy_level: int | None = 4  # int4: MatMulNBits compute type (4 = int8 compute on CPU)
    target: float | None = None  # mixed: minimum cosine; default the pipeline's budget, else 0.999
    # mixed: give up when this share of quantized nodes must stay float
    max_float_fraction: Annotated[float, in_range("(0, 1]")] = 0.5
    # int8 / mixed: accuracy control (NNCF's max_drop): keep the most sensitive nodes in float until the drop
    # on the evaluation split is at most this many points (accuracy against labels, else top-1 agreement)
    max_drop: Annotated[float | None, in_range("[0, 100]")] = None

    @field_validator("max_drop")
    @classmethod
    def _max_drop_needs_static_int8(cls, value: float | None, info: ValidationInfo) -> float | None:
        mode = info.data.get("mode")
        if value is not None and mode not in ("int8", "mixed"):
            raise PydanticCustomError("max_drop_mode", "keeps static int8 nodes in float, and mode {mode} has none (use int8 or mixed)", {"mode": repr(mode)})
        return value
