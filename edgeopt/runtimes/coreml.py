"""Core ML: PyTorch -> ML program `.mlpackage` with coremltools 9, optionally weight-compressed.

Conversion goes through `torch.export` (the path coremltools recommends), falling back to
`torch.jit.trace` when export fails; compute precision is fp32 or fp16. Weight compression uses
`coremltools.optimize.coreml` (post-training, data-free):
  w8        8-bit linear (symmetric) weights
  pal6/pal4 6- or 4-bit k-means palettization (scikit-learn does the clustering)
  prune50   magnitude pruning to the given sparsity (default 0.5), stored sparse
Choose with `--option compression=...` (and `precision=fp16`), or a `quantize:int8` pass, which this
backend implements as w8 and `quantize:fp16` as fp16 compute.

Core ML runs only on Apple platforms. On Linux, compile() converts and checks what can be checked
without the framework: the spec (inputs/outputs, ML program opset), MIL op counts, weight metadata
(sparsity, unique values per tensor) and sizes; `details["host_runnable"]` holds the reason the host
cannot run it, so the api records fidelity as not measured. load() on a non-Apple machine raises a clear
error; on macOS it runs `MLModel.predict`.
"""

from __future__ import annotations

import platform
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeopt.errors import EdgeoptError
from edgeopt.runtimes.base import (
    Backend,
    CompileInput,
    CompileResult,
    Mode,
    Session,
    dist_versions,
    register_backend,
    torch_converter,
)

if TYPE_CHECKING:
    from edgeopt.bundle import Manifest


ARTIFACT = "model.mlpackage"
COMPRESSIONS = ("none", "w8", "pal6", "pal4", "prune50")
_COMPRESSION_ALIASES = {"int8": "w8", "linear8": "w8", "palettize6": "pal6", "palettize4": "pal4", "prune": "prune50", "": "none"}
_TARGETS = ("iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15")
_RUNS_ON = "macOS, iOS"
NOT_ON_THIS_HOST = "Core ML runs only on macOS/iOS; this host is {system}: the artifact was converted and its spec checked, not run"


def on_apple() -> bool:
    return platform.system() == "Darwin"


def resolve(inp: CompileInput, options: dict[str, Any]) -> tuple[str, str]:
    """(compute precision fp32|fp16, compression) from a delegated quantize pass and the options."""
    return resolve_request(inp.delegated.get("quantize"), options)


def resolve_request(q: dict[str, Any] | None, options: dict[str, Any]) -> tuple[str, str]:
    """resolve() from a delegated quantize config alone, so check_request can refuse before any work."""
    precision = str(options.get("precision", "fp32")).lower()
    compression = str(options.get("compression", "none")).lower()
    compression = _COMPRESSION_ALIASES.get(compression, compression)
    if q:
        mode = str(q.get("mode", "int8")).lower()
        m = next((m for m in CoreMLBackend.modes if mode in m.modes), None)
        if m is None:
            quantize = ", ".join(f"quantize:{c.modes[0]} ({c.precision})" for c in CoreMLBackend.modes if c.modes)
            raise EdgeoptError(
                f"coreml cannot implement quantize mode {mode!r}",
                f"supported on coreml: {quantize}; or --option compression=pal4|pal6|prune50",
            )
        if m.precision in COMPRESSIONS:
            compression = m.precision
        else:
            precision = m.precision
    precision = {"float16": "fp16", "half": "fp16", "float32": "fp32"}.get(precision, precision)
    if precision not in ("fp32", "fp16"):
        raise EdgeoptError(f"coreml compute precision {precision!r} is not supported", "use precision=fp32 or fp16; compress weights with compression=w8|pal6|pal4|prune50")
    if compression not in COMPRESSIONS:
        raise EdgeoptError(f"unknown coreml compression {compression!r}", f"use one of: {', '.join(COMPRESSIONS)}")
    return precision, compression


def mil_ops(spec: Any) -> tuple[Counter, str]:
    """Count the MIL operations of an ML program spec (main function) and return its opset name."""
    f = spec.mlProgram.functions["main"]
    block = f.block_specializations[f.opset]
    return Counter(op.type for op in block.operations), f.opset


def package_size(path: Path) -> dict[str, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    weights = sum(p.stat().st_size for p in files if p.name == "weight.bin")
    return {"package_bytes": sum(p.stat().st_size for p in files), "weights_bytes": weights}


class CoreMLSession(Session):
    """MLModel.predict on macOS; outputs converted back to numpy float32 in the spec's names."""

    def __init__(self, path: Path, manifest: dict[str, Any], compute_units: str = "ALL") -> None:
        import coremltools as ct

        units = getattr(ct.ComputeUnit, compute_units.upper(), None)
        if units is None:
            raise EdgeoptError(f"unknown Core ML compute units {compute_units!r}", "use ALL, CPU_ONLY, CPU_AND_GPU or CPU_AND_NE")
        self._m = ct.models.MLModel(str(path), compute_units=units)
        self.input_names = manifest.input_names
        self.output_names = manifest.output_names

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(inputs)
        out = self._m.predict({n: np.ascontiguousarray(inputs[n], dtype=np.float32) for n in self.input_names})
        return {n: np.asarray(out[n], dtype=np.float32) for n in self.output_names}

    def close(self) -> None:
        self._m = None


@register_backend
class CoreMLBackend(Backend):
    name = "coreml"
    device_runtimes = ("coremltools",)
    consumes = "torch"
    # The capability matrix's Core ML cells; `--option compression=pal6` (6-bit palettization) builds too.
    # `modes` here are the quantize-pass modes this backend implements: fp16 compute, or 8-bit weights.
    modes = (
        Mode("fp32", None, ARTIFACT, "ML program, fp32 compute", runs_on=_RUNS_ON),
        Mode("fp16", None, ARTIFACT, "ML program, fp16 compute", options={"precision": "fp16"}, runs_on=_RUNS_ON,
             modes=("fp16", "float16")),
        Mode("w8", "quantize:int8", ARTIFACT, "8-bit linear weights, fp16 compute", options={"precision": "fp16"},
             runs_on=_RUNS_ON, modes=("int8",)),
        Mode("pal4", None, ARTIFACT, "4-bit k-means palettized weights", options={"precision": "fp16", "compression": "pal4"},
             runs_on=_RUNS_ON),
        Mode("prune50", None, ARTIFACT, "50% magnitude-pruned weights, sparse storage",
             options={"precision": "fp16", "compression": "prune50"}, runs_on=_RUNS_ON),
    )
    targets = ("host", *_TARGETS)
    implements = ("quantize",)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """Usable to convert wherever coremltools imports; to run, only on macOS (load() says so)."""
        try:
            import importlib.metadata as md

            return True, f"coremltools {md.version('coremltools')}" + ("" if on_apple() else " (convert only: runs on macOS/iOS)")
        except Exception:  # noqa: BLE001 - PackageNotFoundError and friends
            return False, "coremltools is not installed (pip install 'edgeopt[coreml]')"

    def check_request(self, passes: list[Any], options: dict[str, Any]) -> None:
        """Refuse a quantize mode / precision / compression Core ML cannot build before any slow work."""
        self.refuse_accuracy_control(passes)
        q = next((p.config.model_dump(mode="json") for p in passes if p.name in self.implements), None)
        resolve_request(q, options)

    def compile(self, inp: CompileInput, out_dir: Path, target: str, options: dict[str, Any]) -> CompileResult:
        ct = torch_converter(self.name, "coremltools", "coreml", inp)
        precision, compression = resolve(inp, options)
        deploy = target if target in _TARGETS else str(options.get("deployment_target", "iOS17"))
        if deploy not in _TARGETS:
            raise EdgeoptError(f"unknown Core ML deployment target {deploy!r}", f"known: {', '.join(_TARGETS)}")
        t0 = time.perf_counter()
        mlmodel, frontend = _convert(ct, inp, precision, deploy)
        convert_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        mlmodel, cdetails = _compress(mlmodel, compression, options)
        compress_s = time.perf_counter() - t1
        path = out_dir / ARTIFACT
        mlmodel.save(str(path))
        spec = _validate(ct, path, inp)
        ops, opset = mil_ops(spec)
        label = compression if compression != "none" else precision
        details: dict[str, Any] = {
            "frontend": frontend,
            "compute_precision": precision,
            "compression": compression,
            "compression_details": cdetails,
            "deployment_target": deploy,
            "opset": opset,
            "mil_ops": dict(ops.most_common()),
            "mil_op_count": int(sum(ops.values())),
            # constexpr_* ops decompress weights at load: their count proves what compression did
            "compressed_weight_ops": {k: v for k, v in ops.items() if k.startswith("constexpr_")},
            "compute_units": str(options.get("compute_units", "ALL")),
            "weights": _weights_summary(mlmodel, int(options.get("weight_threshold", 2048))),
            **package_size(path),
            "convert_seconds": round(convert_s, 2),
            "compress_seconds": round(compress_s, 2),
            "host_runnable": True if on_apple() else NOT_ON_THIS_HOST.format(system=platform.system()),
        }
        tools = dist_versions("coremltools", *(("scikit-learn",) if compression.startswith("pal") else ()))
        return CompileResult(artifact=ARTIFACT, precision=label, target=deploy, tools=tools, details=details)

    def load(self, bundle_dir: Path, manifest: Manifest, threads: int | None = None) -> Session:
        if not on_apple():
            raise EdgeoptError(
                f"Core ML bundle {bundle_dir.name} cannot run on {platform.system()}: Core ML exists only on macOS/iOS",
                "profile it on a Mac (e.g. --device ssh://user@mac) or compile for --backend onnxruntime / tflite",
            )
        units = manifest.backend_details.get("compute_units", "ALL")
        return CoreMLSession(bundle_dir / manifest.artifact, manifest, units)


def _convert(ct: Any, inp: CompileInput, precision: str, deploy: str) -> tuple[Any, dict[str, Any]]:
    """torch.export first; torch.jit.trace when export fails (the reason is recorded)."""
    import torch

    module = inp.module.eval()
    args = tuple(torch.from_numpy(np.ascontiguousarray(inp.samples[0][n])) for n in inp.input_names)
    kw = dict(
        inputs=[ct.TensorType(name=n, shape=a.shape, dtype=np.float32) for n, a in zip(inp.input_names, args, strict=True)],
        outputs=[ct.TensorType(name=n) for n in inp.output_names],
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        minimum_deployment_target=getattr(ct.target, deploy),
    )
    frontend: dict[str, Any] = {"name": "torch.export"}
    try:
        with torch.no_grad():
            ep = torch.export.export(module, args).run_decompositions({})
        return ct.convert(ep, **kw), frontend
    except Exception as e:  # noqa: BLE001 - fall back, and say why
        frontend = {"name": "torch.jit.trace", "export_failed": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
    try:
        with torch.no_grad():
            traced = torch.jit.trace(module, args)
        return ct.convert(traced, **kw), frontend
    except Exception as e:  # noqa: BLE001 - name the op coremltools could not convert
        import re

        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        ops = sorted(set(re.findall(r"(?:aten::|aten\.|op[ '\"]+)([A-Za-z_][\w.]*)", str(e))))
        hint = (f"op {', '.join(ops)} has no Core ML conversion; replace it in the model or use --backend onnxruntime" if ops
                else "coremltools did not name the op it failed on (edgeopt --debug shows its traceback); use --backend onnxruntime or tflite")
        raise EdgeoptError(f"coremltools could not convert {inp.model_name}: {msg}", hint) from None


def _compress(mlmodel: Any, compression: str, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    import coremltools.optimize.coreml as cto

    if compression == "none":
        return mlmodel, {}
    threshold = int(options.get("weight_threshold", 2048))  # small tensors (biases, norms) stay float
    if compression == "w8":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", weight_threshold=threshold)
        return cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op)), {"mode": "linear_symmetric int8, per channel", "weight_threshold": threshold}
    if compression.startswith("pal"):
        nbits = int(compression[3:])
        try:
            import sklearn  # noqa: F401 - k-means palettization needs it
        except ImportError:
            raise EdgeoptError("k-means palettization needs scikit-learn", "pip install scikit-learn") from None
        op = cto.OpPalettizerConfig(nbits=nbits, mode="kmeans", weight_threshold=threshold)
        return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op)), {"mode": f"{nbits}-bit k-means lookup table, per tensor", "weight_threshold": threshold}
    sparsity = float(options.get("sparsity", 0.5))
    if not 0.0 < sparsity < 1.0:
        raise EdgeoptError(f"sparsity {sparsity} is out of range", "use a fraction between 0 and 1, e.g. sparsity=0.5")
    op = cto.OpMagnitudePrunerConfig(target_sparsity=sparsity, weight_threshold=threshold)
    return cto.prune_weights(mlmodel, cto.OptimizationConfig(global_config=op)), {"mode": "magnitude pruning, unstructured", "target_sparsity": sparsity, "weight_threshold": threshold}


def _validate(ct: Any, path: Path, inp: CompileInput) -> Any:
    """Reload the saved package (without the Core ML framework) and check its interface against the spec."""
    m = ct.models.MLModel(str(path), skip_model_load=True)
    spec = m.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise EdgeoptError(f"coremltools wrote a {spec.WhichOneof('Type')} model, not an ML program", "this is a bug in the coreml backend")
    ins = {i.name: list(i.type.multiArrayType.shape) for i in spec.description.input}
    outs = [o.name for o in spec.description.output]
    want = {n: list(inp.samples[0][n].shape) for n in inp.input_names}
    if ins != want or outs != list(inp.output_names):
        raise EdgeoptError(
            f"the .mlpackage interface {ins} -> {outs} does not match the spec {want} -> {list(inp.output_names)}",
            "this is a bug in the coreml backend",
        )
    if not list(path.rglob("weight.bin")):
        raise EdgeoptError(f"{path.name} holds no weight.bin", "coremltools wrote an incomplete package; retry")
    return spec


def _weights_summary(mlmodel: Any, threshold: int) -> dict[str, Any]:
    """Per-tensor weight metadata (sparsity, distinct values), summarised: proves what compression did."""
    import coremltools.optimize.coreml as cto

    md = cto.get_weights_metadata(mlmodel, weight_threshold=threshold)
    if not md:
        return {"tensors": 0}
    n = [int(np.prod(w.val.shape)) for w in md.values()]
    sparsity = [float(w.sparsity) for w in md.values()]
    uniq = [int(w.unique_values) for w in md.values()]
    total = sum(n)
    return {
        "tensors": len(md),
        "elements": total,
        "sparsity_weighted": round(sum(s * k for s, k in zip(sparsity, n, strict=True)) / total, 4),
        "max_unique_values": max(uniq),
        "median_unique_values": int(np.median(uniq)),
        "largest": max(md, key=lambda k: int(np.prod(md[k].val.shape))),
    }
