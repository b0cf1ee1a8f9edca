"""quantize: ONNX Runtime quantization of the exported graph (onnx).

The options are `QuantizeConfig` (`quantize_config.py`, shared with the backends that quantize on their
own); each `mode` is a strategy in `quantize_modes.py` (int8, dynamic, fp16, int4, mixed), built on ORT's
tools in `_ort_quant.py`. This pass picks the mode, and fills the report: size and node count before and
after (graph plus external data), the precision, and the mode's details and note; with `max_drop` also the ORT latency of the input
and of the result (the details hold the all-int8 latency beside them: the cost of the float nodes).
"""

from __future__ import annotations

import time
from pathlib import Path

from edgeopt._ort import onnx_bytes
from edgeopt.passes._measure import onnx_node_count
from edgeopt.passes.base import Pass, PassContext, PassReport, register_pass
from edgeopt.passes.quantize_config import QuantizeConfig
from edgeopt.passes.quantize_modes import QUANTIZE_MODES

__all__ = ["QuantizeConfig", "QuantizePass"]


@register_pass
class QuantizePass(Pass[QuantizeConfig]):
    name = "quantize"
    works_on = "onnx"
    shorthand_key = "mode"
    description = "ONNX Runtime quantization: static int8 (calibrated on real samples), dynamic, fp16, int4, mixed"

    def run(self, model: Path, ctx: PassContext) -> tuple[Path, PassReport]:
        src, mode = Path(model), self.config.mode
        dst = ctx.workdir / f"quantize_{mode}.onnx"
        t0 = time.perf_counter()
        details, note = QUANTIZE_MODES.get(mode)(src, dst, self.config, ctx)
        rep = self.new_report()
        rep.seconds = time.perf_counter() - t0
        rep.notes.append(note)
        rep.size_before, rep.size_after = onnx_bytes(src), onnx_bytes(dst)  # external data files counted
        rep.nodes_before, rep.nodes_after = onnx_node_count(src), onnx_node_count(dst)
        rep.precision = mode
        lat = details.get("latency_ms")  # accuracy control times the fp32 input and its result side by side
        if lat:
            rep.latency_ms_before, rep.latency_ms_after = lat["fp32"], lat["result"]
        rep.changes.append(details)
        return dst, rep
