"""quantize: ONNX Runtime quantization of the exported graph.

mode=int8 is static QDQ quantization: per-channel int8 weights, activations calibrated on the real
sample inputs (MinMax, Entropy or Percentile). On x86 the fast kernels are u8 activations x s8 weights
(VNNI/AVX2 `u8s8`), so that is the default here; docs/passes.md holds the measurement behind it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeopt.passes.base import Pass, PassConfig, PassContext, PassReport, register_pass


class QuantizeConfig(PassConfig):
    mode: Literal["int8"] = "int8"
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    calibration_samples: int = 8
    percentile: float = 99.999
    # op types to leave in float (e.g. "Softmax|LayerNormalization")
    exclude_ops: list[str] = []
    exclude_nodes: list[str] = []


def onnx_node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


class _Reader:
    """ORT CalibrationDataReader over the pass context's real samples."""

    def __init__(self, samples: list[dict[str, np.ndarray]], names: list[str]) -> None:
        self._it = iter([{n: s[n] for n in names} for s in samples])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - ORT calls it for some calibrators
        pass


def static_int8(src: Path, dst: Path, cfg: QuantizeConfig, ctx: PassContext) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_name(dst.stem + ".pre.onnx")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    except Exception:  # noqa: BLE001 - pre-processing is an optimisation; quantize the raw graph instead
        pre = src
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[cfg.calibration]
    qt = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    nodes_to_exclude = list(cfg.exclude_nodes)
    if cfg.exclude_ops:
        import onnx

        g = onnx.load(str(pre), load_external_data=False).graph
        nodes_to_exclude += [n.name for n in g.node if n.op_type in cfg.exclude_ops]
    extra: dict[str, Any] = {}
    if cfg.calibration == "percentile":
        extra["CalibPercentile"] = cfg.percentile
    samples = ctx.samples[: cfg.calibration_samples]
    quantize_static(
        str(pre), str(dst), _Reader(samples, ctx.input_names),
        quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
        activation_type=qt[cfg.activation_type], weight_type=qt[cfg.weight_type],
        calibrate_method=method, nodes_to_exclude=nodes_to_exclude, extra_options=extra,
    )
    if pre != src:
        pre.unlink(missing_ok=True)
    return {"calibration_samples": len(samples), "nodes_excluded": nodes_to_exclude}


@register_pass
class QuantizePass(Pass):
    name = "quantize"
    works_on = "onnx"
    Config = QuantizeConfig
    shorthand_key = "mode"
    description = "ONNX Runtime quantization: static int8 QDQ calibrated on real samples"

    def run(self, model: Path, ctx: PassContext) -> tuple[Path, PassReport]:
        cfg: QuantizeConfig = self.config  # type: ignore[assignment]
        rep = self.new_report()
        t0 = time.perf_counter()
        dst = ctx.workdir / f"quantize_{cfg.mode}.onnx"
        details = static_int8(model, dst, cfg, ctx)
        rep.seconds = time.perf_counter() - t0
        rep.size_before, rep.size_after = model.stat().st_size, dst.stat().st_size
        rep.nodes_before, rep.nodes_after = onnx_node_count(model), onnx_node_count(dst)
        rep.precision = cfg.mode
        rep.changes.append(details)
        rep.notes.append(
            f"static QDQ, {cfg.activation_type} activations x {cfg.weight_type} weights"
            f"{' per channel' if cfg.per_channel else ''}, {cfg.calibration} calibration on {details['calibration_samples']} real images"
        )
        return dst, rep
