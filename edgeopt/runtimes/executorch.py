"""ExecuTorch: PyTorch -> `.pte` program lowered to the XNNPACK delegate, run by `executorch.runtime`.

Host side (`compile`) exports the torch module after torch passes (`torch.export`), lowers it with
`to_edge_transform_and_lower` and XNNPACK's partitioner, and serialises the program. Precisions:
  fp32     the exported graph as is, XNNPACK fp32 kernels
  int8     PT2E static quantization with XNNPACK's own quantizer (symmetric int8, per-channel weights),
           activations calibrated on the compile input's samples (the calibration split with `--data`);
           float inputs and outputs (the quantize/dequantize at the edges run inside the delegate)
A `quantize:MODE` pass is delegated here (`implements = ("quantize",)`), as on LiteRT.

Delegation coverage goes into the manifest (`backend_details["delegation"]`): per op, how many nodes ran in
XNNPACK and how many fell back to ExecuTorch's own CPU kernels (portable/optimized), and the kernels the
program calls outside the delegate. An op XNNPACK does not take runs on those kernels and is named there
(`fallback_ops`); with the option `strict_delegation=true` it is an error naming the op instead. An op
that neither XNNPACK nor ExecuTorch's kernel library has fails the compile with the op named: never an
artifact that fails to load on the device, never a silently slow one.

Device side (`load`): `executorch.runtime` (Runtime.get, load_program, load_method, execute). Its Python
bindings are linked against libtorch and `import torch` on import, so this backend alone needs torch on
the device: the manifest says so (`backend_details["device_needs"]`), the capability table says so
(`Mode.runs_on`), and `available()` refuses with the fix where torch is missing. docs/backends.md says why.
"""

from __future__ import annotations

import os
import re
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


ARTIFACT = "model.pte"
METHOD = "forward"
# What the device needs besides numpy and this runtime: executorch's Python bindings import torch.
DEVICE_NEEDS = ("torch",)
_RUNS_ON = "Linux, macOS, Android, arm64 boards with executorch's Python runtime (needs torch on the device)"

# quantize-pass options this backend honours; any other non-default option is reported as not applied
_HONOURED = {"mode", "calibration_samples", "per_channel"}
# structural nodes that carry no computation (tuple indexing of a delegate's or a split's outputs)
_STRUCTURAL = {"getitem"}


def _runtime_module() -> Any:
    """`executorch.runtime`, or an EdgeoptError that says what is missing (executorch itself, or torch)."""
    try:
        import torch  # noqa: F401 - executorch's bindings are linked against libtorch and import it
    except ImportError:
        raise EdgeoptError(
            "executorch's Python runtime needs torch, and torch is not installed here",
            "pip install torch (this backend alone needs it on the device: see docs/backends.md), or use another backend",
        ) from None
    try:
        import executorch.runtime as rt
    except ImportError:
        raise EdgeoptError("executorch is not installed here", "pip install 'edgeopt[executorch]'") from None
    try:
        # registers quantized_decomposed's out-variant kernels with this runtime: an int8 program whose
        # dequantize runs outside the XNNPACK partition calls them, and without them load_method fails
        # (OperatorMissing) in every process but the one that compiled the program
        import executorch.kernels.quantized  # noqa: F401
    except ImportError:
        pass  # a program that needs them then fails to load with the runtime's own message
    return rt


class ExecuTorchSession(Session):
    """One loaded `.pte` method; numpy in, numpy out, outputs named by position."""

    def __init__(self, path: Path, input_names: list[str], output_names: list[str], threads: int | None = None) -> None:
        rt = _runtime_module()
        import torch

        self._torch = torch
        _set_threads(threads)
        try:
            self._program = rt.Runtime.get().load_program(path)
            self._method = self._program.load_method(METHOD)
        except Exception as e:  # noqa: BLE001 - the runtime raises RuntimeError/ValueError with its own codes
            raise EdgeoptError(f"the ExecuTorch runtime cannot load {path.name}: {first_line(e)}",
                               "recompile the bundle with this edgeopt and executorch version") from None
        if self._method is None:
            raise EdgeoptError(f"{path.name} has no method {METHOD!r}", "recompile the bundle with this edgeopt")
        self.input_names = list(input_names)
        self.output_names = list(output_names)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(inputs)
        feed = [self._torch.from_numpy(dense(inputs[n])) for n in self.input_names]
        outs = self._method.execute(feed)
        if len(outs) != len(self.output_names):
            raise EdgeoptError(f"the program returned {len(outs)} outputs, the spec names {len(self.output_names)}",
                               "this model's forward() outputs do not match its spec; report it as a bug")
        return {n: o.numpy() if hasattr(o, "numpy") else np.asarray(o) for n, o in zip(self.output_names, outs, strict=True)}

    def close(self) -> None:
        self._method = None
        self._program = None


def dense(a: np.ndarray) -> np.ndarray:
    """`a` in C order with a real stride on every axis. numpy gives an axis of size 1 added by `x[None]` stride
    0 and still calls the array contiguous; ExecuTorch derives a tensor's dim order from its strides and refuses
    a 0 ("0 in strides is not supported"), at export and at run time."""
    if a.flags.c_contiguous and 0 not in a.strides:
        return a
    return np.array(a, order="C", copy=True)


def _set_threads(threads: int | None) -> None:
    """Size XNNPACK's thread pool (process-wide) like ORT's default: every core unless told otherwise."""
    try:
        from executorch.extension.pybindings import portable_lib
    except ImportError:
        return
    reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)
    if reset is not None:
        reset(int(threads) if threads else (os.cpu_count() or 1))


def precision_for(raw: str, source: str) -> str:
    return ExecuTorchBackend.mode_for(raw, source).precision


def resolve_precision(inp: CompileInput, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The precision to build: a delegated quantize pass wins over the `precision` option."""
    q = inp.delegated.get("quantize")
    if q:
        return precision_for(str(q.get("mode", "int8")), "quantize mode"), dict(q)
    return precision_for(str(options.get("precision", "fp32")), "precision"), {}


@register_backend
class ExecuTorchBackend(Backend):
    name = "executorch"
    device_runtimes = ("executorch",)
    consumes = "torch"
    modes = (
        Mode("fp32", None, ARTIFACT, "torch.export -> .pte, XNNPACK delegate (fp32); unlowered ops on ExecuTorch's CPU kernels",
             runs_on=_RUNS_ON, modes=("fp32", "float32", "none"), auto_rank=7),
        Mode("int8", "quantize:int8", ARTIFACT, "PT2E static int8 (XNNPACK quantizer, per-channel weights), calibrated; XNNPACK delegate",
             runs_on=_RUNS_ON, modes=("int8", "static", "int8_static", "static_int8"), auto_rank=4),
    )
    refusals = {
        "dynamic": "this backend builds static int8 (calibrated); dynamic int8 is on tflite and onnxruntime",
        "fp16": "XNNPACK fp16 is not built here; fp16 is on tflite and onnxruntime",
        "int4": "int4 is ONNX Runtime's weight-only MatMulNBits rewrite; not built for ExecuTorch here",
        "mixed": "mixed precision picks fp32 fallbacks node by node on the ONNX graph, which executorch does not compile from",
    }
    # A .pte with the XNNPACK delegate is target-neutral: XNNPACK picks kernels for the CPU it runs on.
    targets = ("host", "cpu", "arm64", "aarch64", "x86_64")
    implements = ("quantize",)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            _runtime_module()
        except EdgeoptError as e:
            return False, f"{e.message} ({e.hint})"
        import importlib.metadata as md

        try:
            return True, f"executorch {md.version('executorch')}"
        except md.PackageNotFoundError:
            return True, "executorch"

    def compile(self, inp: CompileInput, out_dir: Path, target: str, options: dict[str, Any]) -> CompileResult:
        torch_converter(self.name, "executorch.exir", "executorch", inp)
        precision, qcfg = resolve_precision(inp, options)
        not_applied = quantize_options_not_applied(qcfg, _HONOURED)
        strict = str(options.get("strict_delegation", False)).lower() in ("1", "true", "yes")
        t0 = time.perf_counter()
        data, delegation, qdetails = _lower(inp, precision, qcfg)
        lower_s = time.perf_counter() - t0
        _check_kernels(delegation, inp.model_name)
        if strict and delegation["fallback_ops"]:
            raise EdgeoptError(
                f"XNNPACK did not take every op of {inp.model_name}: {', '.join(delegation['fallback_ops'])} "
                "would run on ExecuTorch's portable kernels",
                "drop strict_delegation to accept the fallback, replace those ops in the model, or use another backend",
            )
        path = out_dir / ARTIFACT
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        details: dict[str, Any] = {
            "method": METHOD,
            "delegate": "XnnpackBackend",
            "delegation": delegation,
            "device_needs": list(DEVICE_NEEDS),
            "size_bytes": len(data),
            "lower_seconds": round(lower_s, 2),
            "quantization": qdetails,
            "host_runnable": True,
        }
        if not_applied:
            details["options_not_applied"] = {k: f"{v!r} has no effect on executorch" for k, v in not_applied.items()}
        tools = dist_versions("executorch", "torch", "torchao")
        return CompileResult(artifact=ARTIFACT, precision=precision, target=target or "host", tools=tools, details=details)

    def load(self, bundle_dir: Path, manifest: Manifest, threads: int | None = None) -> Session:
        return ExecuTorchSession(bundle_dir / manifest.artifact, manifest.input_names, manifest.output_names, threads)


def _lower(inp: CompileInput, precision: str, qcfg: dict[str, Any]) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    """Export, (quantize,) lower to XNNPACK and serialise; return the program bytes, the delegation
    coverage and what quantization did."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    module = inp.module.eval()
    args = tuple(torch.from_numpy(dense(inp.samples[0][n])) for n in inp.input_names)
    qdetails: dict[str, Any] = {"precision": precision}
    if precision == "int8":
        # the out variants of quantized_decomposed's ops (a dequantize left outside the XNNPACK partition runs
        # on them), registered by `_runtime_module`; without them to_executorch fails with "Missing out variants"
        _runtime_module()
    try:
        with torch.no_grad():
            if precision == "int8":
                module, q = _quantize(module, args, inp, qcfg)
                qdetails.update(q)
            ep = torch.export.export(module, args)
            edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
            delegation = delegation_coverage(edge.exported_program().graph_module)
            prog = edge.to_executorch()
    except EdgeoptError:
        raise
    except Exception as e:  # noqa: BLE001 - name the op ExecuTorch could not take
        raise EdgeoptError(f"ExecuTorch could not lower {inp.model_name}: {first_line(e)}", _lowering_hint(e)) from None
    delegation["kernels"] = program_kernels(prog)
    return bytes(prog.buffer), delegation, qdetails


def _quantize(module: Any, args: tuple, inp: CompileInput, qcfg: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """PT2E static int8 with XNNPACK's quantizer, calibrated on the compile input's samples."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    per_channel = bool(qcfg.get("per_channel", True))
    gm = torch.export.export(module, args).module()
    # The ops that produce the graph's outputs stay float (the model's last linear, usually): quantizing them
    # would return int8-resolution logits, all the zero point where they are small next to the calibrated
    # range (LiteRT's `_float_outputs` fixes the same failure; docs/backends.md, shvit_s1). XNNPACK runs them
    # in fp32 on the dequantized input.
    out = next(n for n in gm.graph.nodes if n.op == "output")
    producers = _output_producers(out)
    quantizer = (XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
                 .set_filter_function(lambda n: n.name not in producers))
    gm = prepare_pt2e(gm, quantizer)
    calib = inp.samples[: int(qcfg.get("calibration_samples", 8))]
    for s in calib:
        gm(*(torch.from_numpy(dense(s[n])) for n in inp.input_names))
    gm = convert_pt2e(gm)
    return gm, {
        "method": "PT2E (torchao) with ExecuTorch's XNNPACKQuantizer",
        "weights": f"int8 symmetric {'per channel' if per_channel else 'per tensor'}",
        "activations": "int8 per tensor, calibrated (histogram observers)",
        "calibration_samples": len(calib),
        "io": "float32 inputs and outputs (quantize/dequantize at the edges run in the delegate)",
        "float_outputs": sorted(producers.values()),
    }


def _output_producers(out: Any) -> dict[str, str]:
    """{node name: op} of the call_function nodes whose results are the graph's outputs."""
    import torch.fx as fx

    found: dict[str, str] = {}

    def visit(a: Any) -> Any:
        if isinstance(a, fx.Node) and a.op == "call_function":
            found[a.name] = _op_name(a.target)
        return a

    fx.node.map_arg(out.args, visit)
    return found


def _op_name(target: Any) -> str:
    """aten.linear.default for torch's and the edge dialect's op overloads alike."""
    import torch

    if isinstance(target, torch._ops.OpOverload):  # its __name__ lacks the namespace; str() has it
        return str(target)
    return getattr(target, "__name__", None) or str(target)  # EdgeOpOverload's __name__: aten.cumsum.default


def delegation_coverage(gm: Any) -> dict[str, Any]:
    """Which ops of a lowered edge program ran in XNNPACK and which fell back to ExecuTorch's CPU kernels.

    Counts call_function nodes inside each lowered XNNPACK module (delegated) and at the top level outside
    any delegate (fallback); tuple indexing (getitem) carries no computation and is left out."""
    delegated: Counter = Counter()
    fallback: Counter = Counter()
    fallback_nodes: dict[str, list[str]] = {}
    subgraphs = 0
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = _op_name(node.target)
        if name == "executorch_call_delegate":
            subgraphs += 1
            lowered = getattr(gm, node.args[0].target)
            for n in lowered.original_module.graph.nodes:
                if n.op == "call_function" and _op_name(n.target) not in _STRUCTURAL:
                    delegated[_op_name(n.target)] += 1
            continue
        if name in _STRUCTURAL:
            continue
        fallback[name] += 1
        fallback_nodes.setdefault(name, []).append(node.name)
    total = sum(delegated.values()) + sum(fallback.values())
    ops = {k: {"xnnpack": delegated.get(k, 0), "portable": fallback.get(k, 0)} for k in sorted(set(delegated) | set(fallback))}
    fell = ", ".join(f"{k} x{n}" for k, n in sorted(fallback.items()))
    summary = (f"XNNPACK ran {sum(delegated.values())} of {total} ops in {subgraphs} subgraph(s); "
               + (f"on ExecuTorch's portable kernels: {fell}" if fell else "nothing fell back"))
    return {
        "summary": summary,
        "delegated_subgraphs": subgraphs,
        "delegated_nodes": int(sum(delegated.values())),
        "fallback_nodes": int(sum(fallback.values())),
        "delegated_share": round(sum(delegated.values()) / total, 4) if total else 1.0,
        "fallback_ops": sorted(fallback),
        "fallback_where": fallback_nodes,
        "ops": ops,
    }


def program_kernels(prog: Any) -> list[str]:
    """The operator kernels the serialised program calls outside any delegate (`aten::cumsum.out`, ...)."""
    names = set()
    for plan in prog.executorch_program.execution_plan:
        for op in plan.operators:
            names.add(f"{op.name}.{op.overload}" if op.overload else op.name)
    return sorted(names)


def _check_kernels(delegation: dict[str, Any], model_name: str) -> None:
    """Refuse a program that calls a kernel this ExecuTorch runtime does not register: it would not load on
    the device. The check runs against the host's runtime, the same wheel a device installs."""
    try:
        registered = set(_runtime_module().Runtime.get().operator_registry.operator_names)
    except EdgeoptError:
        return
    missing = [k for k in delegation.get("kernels", []) if k not in registered]
    if missing:
        raise EdgeoptError(
            f"{model_name} needs ExecuTorch kernels its runtime does not have: {', '.join(missing)}",
            "XNNPACK did not take these ops and ExecuTorch's kernel library lacks them; replace them in the model or use another backend",
        )


def _lowering_hint(e: BaseException) -> str:
    ops = sorted(set(re.findall(r"aten[.:]+\w+(?:\.\w+)?", str(e))))
    if ops:
        return (f"op {', '.join(ops)} has no ExecuTorch lowering (not in the Core ATen opset or no kernel); "
                "replace it in the model or use --backend onnxruntime")
    return "see ExecuTorch's message (edgeopt --debug shows the traceback); replace the op it names or use --backend onnxruntime"
