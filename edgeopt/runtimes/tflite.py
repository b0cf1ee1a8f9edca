"""LiteRT (TFLite): PyTorch -> `.tflite` with litert-torch, run with the ai-edge-litert interpreter.

Host side (`compile`) converts the torch module after torch passes; inputs stay NCHW as in PyTorch.
Precisions:
  fp32     litert_torch.convert as is
  fp16     fp32 conversion, then ai-edge-quantizer's float-casting recipe (fp16 weights, fp32 compute)
  dynamic  PT2E dynamic quantization (int8 per-channel weights, activations quantized at run time)
  int8     PT2E static quantization with litert-torch's XNNPACK-style symmetric quantizer (torchao PT2E),
           activations calibrated on the real sample images; int8 inputs, float outputs (see _float_outputs)
`TFLiteBackend.modes` declares these with the quantize modes / precision option spellings that ask for
each. A `quantize:MODE` pass in the pipeline is delegated here (`implements = ("quantize",)`), so the same
pipeline string picks the precision on every backend; int4 and mixed (ONNX-graph rewrites) are refused
before any work (`check_request`), naming what works.

Device side (`load`) needs only numpy and `ai_edge_litert` (or the older `tflite_runtime` where that is
all a board has): never torch. Models that would need TensorFlow Flex (Select TF) ops are refused at
compile time with the op names, because a device interpreter without the Flex delegate cannot run them.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeopt.errors import EdgeoptError, first_line
from edgeopt.runtimes.base import (
    Backend,
    CompileInput,
    CompileResult,
    Mode,
    Session,
    dist_versions,
    quantize_options_not_applied,
    register_backend,
    torch_converter,
)

if TYPE_CHECKING:
    from edgeopt.bundle import Manifest


ARTIFACT = "model.tflite"
SIGNATURE = "serving_default"

# quantize-pass options this backend honours; any other non-default option is reported as not applied
_HONOURED = {"mode", "calibration_samples", "per_channel"}


def _interpreter_class() -> tuple[Any, str]:
    """The interpreter class and the package providing it (ai-edge-litert first, then tflite_runtime)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter, "tflite_runtime"
    except ImportError:
        raise EdgeoptError(
            "no TFLite interpreter on this machine", "pip install ai-edge-litert (or tflite-runtime on older boards)"
        ) from None


def precision_for(raw: str, source: str) -> str:
    """The precision this backend builds for a quantize mode / precision option, or a clear refusal
    (`Backend.mode_for` over `TFLiteBackend.modes`)."""
    return TFLiteBackend.mode_for(raw, source).precision


def resolve_precision(inp: CompileInput, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The precision to build: a delegated quantize pass wins over the `precision` option."""
    q = inp.delegated.get("quantize")
    if q:
        return precision_for(str(q.get("mode", "int8")), "quantize mode"), dict(q)
    return precision_for(str(options.get("precision", "fp32")), "precision"), {}


def tflite_ops(data: bytes) -> tuple[Counter, list[str]]:
    """Count the operators of a .tflite flatbuffer by name; also return custom (non-builtin) op names.

    Parsing the flatbuffer (not building an interpreter) lets compile() see Flex ops that an interpreter
    without the Flex delegate would refuse to load at all.
    """
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(data, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        if code == schema.BuiltinOperator.CUSTOM:
            codes.append((oc.CustomCode() or b"?").decode())
        else:
            codes.append(names.get(code, str(code)))
    counts: Counter = Counter()
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for j in range(sg.OperatorsLength()):
            counts[codes[sg.Operators(j).OpcodeIndex()]] += 1
    custom = sorted({c for c in codes if c not in names.values()})
    return counts, custom


def _qparams(detail: dict[str, Any]) -> tuple[Any, float | None, int]:
    """(numpy dtype, scale, zero point) of a signature tensor; scale None for float tensors."""
    dtype = np.dtype(detail["dtype"])
    scale, zp = detail.get("quantization", (0.0, 0))
    if np.issubdtype(dtype, np.integer) and scale:
        return dtype, float(scale), int(zp)
    return dtype, None, 0


def check_no_flex(data: bytes, model_name: str) -> tuple[Counter, list[str]]:
    """Refuse a flatbuffer that needs TensorFlow Flex (Select TF) ops, naming them; else return its ops."""
    counts, custom = tflite_ops(data)
    flex = sorted(c for c in custom if c.startswith("Flex"))
    if flex:
        raise EdgeoptError(
            f"{model_name} needs TensorFlow Flex (Select TF) ops on tflite: {', '.join(flex)}",
            "device interpreters without the Flex delegate cannot run them; replace those ops in the model or use --backend onnxruntime",
        )
    return counts, custom


class TFLiteSession(Session):
    """A signature runner over one .tflite file; inputs and outputs renamed to the spec's names."""

    def __init__(self, path: Path, io: dict[str, dict[str, str]], threads: int | None = None) -> None:
        interp_cls, self.runtime = _interpreter_class()
        # ORT's default is every core; the TFLite Python default is one thread. Match ORT for fair figures.
        n = int(threads) if threads else (os.cpu_count() or 1)
        try:
            self._it = interp_cls(model_path=str(path), num_threads=n)
        except (ValueError, RuntimeError) as e:
            raise EdgeoptError(f"the TFLite interpreter cannot load {path.name}: {e}", "recompile the bundle with this edgeopt") from None
        self._runner = self._it.get_signature_runner(SIGNATURE)
        self._in = io["inputs"]  # spec name -> signature name
        self._out = io["outputs"]
        self.input_names = list(self._in)
        self.output_names = list(self._out)
        # A static int8 model has int8 inputs/outputs: (dtype, scale, zero point) per tensor, to quantize
        # float inputs and dequantize outputs here, inside the timed call, as an application would.
        self._qin = {k: _qparams(d) for k, d in self._runner.get_input_details().items()}
        self._qout = {k: _qparams(d) for k, d in self._runner.get_output_details().items()}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(inputs)
        feed = {}
        for name, sig in self._in.items():
            x = np.asarray(inputs[name])
            dtype, scale, zp = self._qin[sig]
            if scale is not None and np.issubdtype(x.dtype, np.floating):
                info = np.iinfo(dtype)
                x = np.clip(np.round(x / scale) + zp, info.min, info.max)
            feed[sig] = np.ascontiguousarray(x, dtype=dtype)
        outs = self._runner(**feed)
        result = {}
        for name, sig in self._out.items():
            y = np.array(outs[sig])
            _, scale, zp = self._qout[sig]
            result[name] = ((y.astype(np.float32) - zp) * scale).astype(np.float32) if scale is not None else y
        return result

    def close(self) -> None:
        self._runner = None
        self._it = None


@register_backend
class TFLiteBackend(Backend):
    name = "tflite"
    device_runtimes = ("ai-edge-litert", "tflite-runtime")
    consumes = "torch"
    modes = (
        Mode("fp32", None, ARTIFACT, "litert-torch conversion", modes=("fp32", "float32", "none"), auto_rank=6),
        Mode("fp16", "quantize:fp16", ARTIFACT, "fp16 weights (ai-edge-quantizer), fp32 compute",
             modes=("fp16", "float16"), auto_rank=9),
        Mode("dynamic", "quantize:dynamic", ARTIFACT, "PT2E dynamic: int8 weights, int8 activations at run time",
             modes=("dynamic", "int8_dynamic", "dynamic_int8", "dynamic-int8"), auto_rank=3),
        Mode("int8", "quantize:int8", ARTIFACT, "PT2E static int8 (XNNPACK quantizer), calibrated; int8 input, float output",
             modes=("int8", "static", "int8_static", "static_int8"), auto_rank=5),
    )
    # int4 and mixed are ONNX graph rewrites with no LiteRT counterpart: refused, not built as something else.
    refusals = {
        "int4": "int4 is ONNX Runtime's weight-only MatMulNBits rewrite; litert-torch's PT2E quantizer has no int4 path here",
        "mixed": "mixed precision picks fp32 fallbacks node by node on the ONNX graph, which tflite does not compile from",
    }
    # A .tflite file is target-neutral: XNNPACK picks kernels for the CPU it runs on.
    targets = ("host", "cpu", "arm64", "aarch64", "x86_64")
    implements = ("quantize",)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            _, pkg = _interpreter_class()
        except EdgeoptError as e:
            return False, f"{e.message} ({e.hint})"
        import importlib.metadata as md

        try:
            return True, f"{pkg} {md.version(pkg.replace('_', '-'))}"
        except md.PackageNotFoundError:
            return True, pkg

    def compile(self, inp: CompileInput, out_dir: Path, target: str, options: dict[str, Any]) -> CompileResult:
        torch_converter(self.name, "litert_torch", "tflite", inp)
        precision, qcfg = resolve_precision(inp, options)
        not_applied = quantize_options_not_applied(qcfg, _HONOURED)
        t0 = time.perf_counter()
        data, qdetails = _convert(inp, precision, qcfg)
        convert_s = time.perf_counter() - t0
        counts, custom = check_no_flex(data, inp.model_name)
        path = out_dir / ARTIFACT
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        io = _signature_io(path, inp.input_names, inp.output_names)
        details: dict[str, Any] = {
            "io": io,
            "signature": SIGNATURE,
            "layout": "NCHW (as in PyTorch; the converter inserts transposes where XNNPACK wants NHWC)",
            "ops": dict(counts.most_common()),
            "op_count": int(sum(counts.values())),
            "custom_ops": custom,
            "size_bytes": len(data),
            "convert_seconds": round(convert_s, 2),
            "quantization": qdetails,
            "host_runnable": True,
        }
        if not_applied:
            details["options_not_applied"] = {k: f"{v!r} has no effect on tflite" for k, v in not_applied.items()}
        tools = dist_versions("litert-torch", "ai-edge-litert", "ai-edge-quantizer", "torchao")
        return CompileResult(artifact=ARTIFACT, precision=precision, target=target or "host", tools=tools, details=details)

    def load(self, bundle_dir: Path, manifest: Manifest, threads: int | None = None) -> Session:
        io = manifest.backend_details.get("io")
        if not io:
            raise EdgeoptError(f"bundle {bundle_dir} has no tflite io map", "recompile it with this edgeopt")
        return TFLiteSession(bundle_dir / manifest.artifact, io, threads)


def _signature_io(path: Path, input_names: list[str], output_names: list[str]) -> dict[str, dict[str, str]]:
    """Map the spec's input/output names to the converter's signature names (args_0, output_0, ...) by position."""
    interp_cls, _ = _interpreter_class()
    it = interp_cls(model_path=str(path))
    sig = it.get_signature_list()[SIGNATURE]
    ins, outs = list(sig["inputs"]), sorted(sig["outputs"], key=_natural)
    ins = sorted(ins, key=_natural)
    if len(ins) != len(input_names) or len(outs) != len(output_names):
        raise EdgeoptError(
            f"the tflite signature has {len(ins)} inputs / {len(outs)} outputs, the spec {len(input_names)} / {len(output_names)}",
            "this model's forward() signature does not match its spec; report it as a bug",
        )
    return {"inputs": dict(zip(input_names, ins, strict=True)), "outputs": dict(zip(output_names, outs, strict=True))}


def _natural(name: str) -> tuple[str, int]:
    head, _, tail = name.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (name, -1)


def _convert(inp: CompileInput, precision: str, qcfg: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """Run litert-torch (and a quantizer) and return the flatbuffer bytes and what was done."""
    import litert_torch
    import torch

    module = inp.module.eval()
    args = tuple(torch.from_numpy(np.ascontiguousarray(inp.samples[0][n])) for n in inp.input_names)
    quant_config = None
    qdetails: dict[str, Any] = {"precision": precision}
    if precision in ("dynamic", "int8"):
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        per_channel = bool(qcfg.get("per_channel", True))
        quantizer = PT2EQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=precision == "dynamic")
        )
        with torch.no_grad():
            gm = torch.export.export(module, args).module()
            gm = prepare_pt2e(gm, quantizer)
            calib = inp.samples[: int(qcfg.get("calibration_samples", 8))] if precision == "int8" else inp.samples[:1]
            for s in calib:
                gm(*(torch.from_numpy(np.ascontiguousarray(s[n])) for n in inp.input_names))
            gm = convert_pt2e(gm, fold_quantize=False)
            float_outputs = _float_outputs(gm) if precision == "int8" else []
        module, quant_config = gm, QuantConfig(pt2e_quantizer=quantizer)
        qdetails.update({
            "method": "PT2E (torchao) with litert-torch's symmetric XNNPACK quantizer",
            "weights": f"int8 symmetric {'per channel' if per_channel else 'per tensor'}",
            "activations": "int8, quantized at run time" if precision == "dynamic" else "int8, histogram observer",
        })
        if precision == "int8":
            qdetails["calibration_samples"] = len(calib)
            qdetails["io"] = "int8 inputs, float32 outputs (the last op's output is not requantized)"
            qdetails["float_outputs"] = float_outputs
    try:
        edge = litert_torch.convert(module, args, quant_config=quant_config)
    except Exception as e:  # noqa: BLE001 - name the op the converter could not lower
        raise EdgeoptError(f"litert-torch could not convert {inp.model_name}: {first_line(e)}", _lowering_hint(e)) from None
    data = bytes(edge.model_content()) if hasattr(edge, "model_content") else _export_bytes(edge, inp.workdir)
    if precision == "fp16":
        data = _float16(data, inp.workdir)
        qdetails.update({"method": "ai-edge-quantizer float casting", "weights": "fp16 (dequantized at load)", "activations": "fp32"})
    return data, qdetails


def _float_outputs(gm: Any) -> list[str]:
    """Keep a static int8 graph's outputs in float: drop the quantize -> dequantize pair feeding each output.

    PT2E quantizes every annotated op's output, the graph outputs included, so the model would return int8
    logits whose step is the calibrated output range / 256. Where the logits are small next to that range
    (shvit_s1 with random weights: ~1e-5 against a 2.4e-4 step) every logit became the zero point (cosine
    0). Without the pair, the last op (the classifier's linear) still takes int8 inputs and int8 weights,
    and only its result stays float, as an application wants it anyway. Returns the ops whose outputs were
    kept in float.
    """
    out = next(n for n in gm.graph.nodes if n.op == "output")
    kept: list[str] = []

    def unwrap(a: Any) -> Any:
        if getattr(a, "op", None) == "call_function" and "dequantize" in str(a.target):
            q = a.args[0]
            if getattr(q, "op", None) == "call_function" and "quantize" in str(q.target) and "dequantize" not in str(q.target):
                src = q.args[0]
                kept.append(str(src.target))
                return src
        return a

    import torch.fx as fx

    out.args = fx.node.map_arg(out.args, unwrap)
    if kept:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return kept


def _export_bytes(edge: Any, workdir: Path | None) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory(dir=workdir) as d:
        p = Path(d) / "m.tflite"
        edge.export(str(p))
        return p.read_bytes()


def _float16(data: bytes, workdir: Path | None) -> bytes:
    """fp16 weights through ai-edge-quantizer (the LiteRT stack's own quantizer; no TensorFlow needed)."""
    import tempfile

    from ai_edge_quantizer import quantizer

    recipe = [{
        "regex": ".*", "operation": "*", "algorithm_key": "float_casting",
        "op_config": {"weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"}, "compute_precision": "FLOAT", "explicit_dequantize": True},
    }]
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        src, dst = Path(d) / "fp32.tflite", Path(d) / "fp16.tflite"
        src.write_bytes(data)
        q = quantizer.Quantizer(str(src))
        q.load_quantization_recipe(recipe)
        q.quantize().export_model(str(dst), overwrite=True)
        return dst.read_bytes()


def _lowering_hint(e: BaseException) -> str:
    import re

    ops = sorted(set(re.findall(r"aten[.:]+\w+(?:\.\w+)?", str(e))))
    nodes = sorted(set(re.findall(r"While executing %(\w+)", str(e))))
    if ops:
        where = f" (node {', '.join(nodes)})" if nodes else ""
        return f"op {', '.join(ops)}{where} has no LiteRT lowering; replace it in the model or use --backend onnxruntime"
    return "see the converter's message; replace the op it names or use --backend onnxruntime"
