"""ONNX Runtime: the embedded default. The artifact is the (possibly quantized) ONNX file itself.

A graph with external data is bundled as `model.onnx` plus ONE data file `model.onnx.data` beside it (the
pipeline's data files merged, locations rewritten; edgeopt._ort.copy_onnx): the bundle hashes, pushes and
verifies the data file like any other file, and the session opens `model.onnx` by path, so ONNX Runtime
reads the data from beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeopt._ort import DATA_SUFFIX, copy_onnx, ort_session
from edgeopt.errors import EdgeoptError
from edgeopt.runtimes.base import Backend, CompileInput, CompileResult, Mode, Session, register_backend

if TYPE_CHECKING:
    from edgeopt.bundle import Manifest
    from edgeopt.llm import OnnxVLM


ARTIFACT = "model.onnx"


class OrtSession(Session):
    def __init__(self, path: Path, threads: int | None = None) -> None:
        self._s = ort_session(path, threads)
        self.input_names = [i.name for i in self._s.get_inputs()]
        self.output_names = [o.name for o in self._s.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(inputs)
        outs = self._s.run(self.output_names, {n: inputs[n] for n in self.input_names})
        return dict(zip(self.output_names, outs, strict=True))


@register_backend
class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    device_runtimes = ("onnxruntime",)
    consumes = "onnx"
    # The quantize pass rewrites the ONNX graph (edgeopt.passes.quantize) and this backend runs the result.
    modes = (
        Mode("fp32", None, ARTIFACT, "the exported graph as is", auto_rank=1),
        Mode("fp16", "quantize:fp16", ARTIFACT, "fp16 weights and compute (fp32 I/O)", auto_rank=10),
        Mode("dynamic", "quantize:dynamic", ARTIFACT, "int8 weights, activations quantized at run time", auto_rank=8),
        Mode("int8", "quantize:int8", ARTIFACT, "static QDQ int8, calibrated on real samples", auto_rank=2,
             repair=("mixed", "quantize:mode=mixed")),
    )
    generative = True  # load_generator: edgeopt.llm.OnnxVLM over the bundle's three graphs
    runs_pipeline_onnx = True  # compile() copies the graph (and its data); load() opens it with edgeopt._ort's settings
    targets = ("host", "cpu")

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError:
            return False, "onnxruntime is not installed (pip install onnxruntime)"
        return True, ort.__version__

    def compile(self, inp: CompileInput, out_dir: Path, target: str, options: dict[str, Any]) -> CompileResult:
        import onnx
        import onnxruntime as ort

        if inp.onnx_path is None:
            raise EdgeoptError("onnxruntime needs an ONNX graph and none was exported")
        external = copy_onnx(inp.onnx_path, out_dir / ARTIFACT)
        precision = options.get("precision", "fp32")
        return CompileResult(
            artifact=ARTIFACT,
            precision=precision,
            target=target or "host",
            tools={"onnxruntime": ort.__version__, "onnx": onnx.__version__},
            details={"external_data": ARTIFACT + DATA_SUFFIX} if external else {},
        )

    def load(self, bundle_dir: Path, manifest: Manifest, threads: int | None = None) -> Session:
        return OrtSession(bundle_dir / manifest.artifact, threads)

    def load_generator(self, bundle_dir: Path, manifest: Manifest, threads: int | None = None) -> OnnxVLM:
        from edgeopt.llm import OnnxVLM

        if manifest.generation is None:
            raise EdgeoptError(f"{bundle_dir} is not a generative bundle", "profile it as it is; it has one graph")
        g = manifest.generation.graphs
        return OnnxVLM(bundle_dir / g["vision"], bundle_dir / g["prefill"], bundle_dir / g["decode"], threads)
