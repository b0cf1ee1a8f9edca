"""Apache TVM (Relax, 0.27): ONNX -> Relax -> fused TIR -> scheduled (MetaSchedule's best measured schedule
where a tuning database has one, else a default schedule from its rules, nothing measured) -> one .so.

Bundle layout: `model.so` (the Relax VM executable and all kernels, linked for the target; cross-linked
with aarch64-linux-gnu-gcc for arm boards) + `params.npz` (the weights, in the order `main` takes them,
after the inputs, already in the layouts its kernels read: NHWC convolutions, pre-packed tiles). Weights stay
outside the .so so the device side needs only numpy to read them; retrained weights need a recompile (with the
same tuning_db it measures nothing) because their layout is part of the build.

The device side (`load`) needs `tvm.runtime` + `tvm.relax.VirtualMachine` and numpy: never torch.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import struct
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeopt.errors import EdgeoptError, last_line
from edgeopt.runtimes.base import Backend, CompileInput, CompileResult, Mode, Session, register_backend

if TYPE_CHECKING:
    from edgeopt.bundle import Manifest


ARTIFACT = "model.so"
PARAMS = "params.npz"
TUNING_DIR = "tuning"  # copy of the tuning database inside the bundle (option bundle_tuning_db)
# How functions without a tuning record are scheduled (option schedule): "default" applies MetaSchedule's rules
# with tile sizes chosen by rule, nothing measured (`_tvm_tune.default_schedule`); "none" leaves the legalized
# loop nests as they are (scalar, single-threaded).
SCHEDULES = ("default", "none")
# Layout of the convolutions (option layout): "NHWC" converts them (activations NHWC, weights OHWI) and transforms
# the weights once at compile time (`to_nhwc`); "NCHW" keeps the ONNX graph's layout.
LAYOUTS = ("NHWC", "NCHW")
_TRANSFORM_PARAMS = "main_transform_params"
_RUNS_ON = "the target CPU it was built for"
EM_AARCH64 = 183
EM_X86_64 = 62


def import_tvm():
    """Import tvm without dragging in torch when torch is not loaded yet.

    apache-tvm-ffi 0.1.x runs `import torch` at import time (a work-around for a Windows symbol clash)
    when torch is installed. That costs seconds and breaks the runner's promise never to load torch, so
    on the device side we hide torch for the duration of the import; it stays importable afterwards.
    """
    if "tvm" in sys.modules or "torch" in sys.modules:
        return importlib.import_module("tvm")
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
    try:
        return importlib.import_module("tvm")
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]


class UnsupportedOpError(EdgeoptError):
    """An ONNX node TVM's Relax frontend cannot convert."""


def elf_machine(path: str | Path) -> int:
    """The e_machine field of an ELF file (62 = x86-64, 183 = AArch64); raises if it is not ELF."""
    with open(path, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF":
        raise EdgeoptError(f"{path} is not an ELF file")
    endian = "<" if head[5] == 1 else ">"
    return struct.unpack(endian + "H", head[18:20])[0]


class TvmSession(Session):
    """A Relax VM over the bundle's .so, with its weights uploaded once at load."""

    def __init__(self, so_path: Path, params_path: Path, input_names: list[str], output_names: list[str], threads: int | None) -> None:
        tvm = import_tvm()
        from tvm import relax

        if threads:
            cfg = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
            if cfg is not None:
                cfg(0, int(threads))
        self._dev = tvm.cpu(0)
        self._tensor = tvm.runtime.tensor
        lib = tvm.runtime.load_module(str(so_path))
        self._vm = relax.VirtualMachine(lib, self._dev)
        self._main = self._vm["main"]
        with np.load(params_path) as z:
            keys = sorted(z.files)  # p00000, p00001, ...: zero-padded, so sorted order is call order
            self._params = [self._tensor(np.asarray(z[k], order="C"), self._dev) for k in keys]
        self.input_names = list(input_names)
        self.output_names = list(output_names)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(inputs)
        args = [self._tensor(np.asarray(inputs[n], order="C"), self._dev) for n in self.input_names]
        out = self._main(*args, *self._params)
        outs = [out] if hasattr(out, "numpy") else list(out)
        if len(outs) != len(self.output_names):
            raise EdgeoptError(f"the TVM module returned {len(outs)} outputs, the bundle names {len(self.output_names)}", "recompile the bundle")
        return {n: o.numpy() for n, o in zip(self.output_names, outs, strict=True)}

    def close(self) -> None:
        self._params = []
        self._main = None
        self._vm = None


@contextlib.contextmanager
def _node_tracker(state: dict[str, Any]):
    """Remember which ONNX node the Relax importer is converting, so a failure can name it.

    The importer passes the node's name to `_convert_operator` in attr["tvm_custom"]; we wrap that one
    method (restored on exit) to note the op type and node name before delegating to it.
    """
    from tvm.relax.frontend.onnx import onnx_frontend as fe

    cls = fe.ONNXGraphImporter
    orig = cls._convert_operator

    def tracked(self, op_name, inputs, attrs, opset):
        state["op"] = op_name
        state["node"] = (attrs.get("tvm_custom") or {}).get("name")
        return orig(self, op_name, inputs, attrs, opset)

    cls._convert_operator = tracked
    try:
        yield
    finally:
        cls._convert_operator = orig


def _integer_initializers_as_constants(model):
    """A copy of the graph whose int64/int32 initializers (shapes, axes, indices: structure, not weights) are
    Constant nodes. The importer keeps every initializer as a parameter of `main`, so a shape held in one (the target
    shape of an Expand, say) would be known only at run time, and Relax cannot build a shape it cannot compute
    ahead (mobileclip's final normalisation: "PrimExpr ... has not been computed")."""
    import onnx
    from onnx import TensorProto, helper

    # int64/int32: ONNX's shape, axis and index types. Not int8/uint8: a QDQ graph's quantized weights are those,
    # and weights stay in params.npz, outside the .so.
    ints = {TensorProto.INT64, TensorProto.INT32}
    moved = [t for t in model.graph.initializer if t.data_type in ints and t.data_location != TensorProto.EXTERNAL]
    if not moved:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = {t.name for t in moved}
    kept = [t for t in out.graph.initializer if t.name not in names]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    inputs = [i for i in out.graph.input if i.name not in names]
    del out.graph.input[:]
    out.graph.input.extend(inputs)
    nodes = [helper.make_node("Constant", [], [t.name], name=f"edgeopt_const_{t.name}", value=t) for t in moved]
    nodes += list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def import_onnx(model) -> Any:
    """ONNX ModelProto -> Relax IRModule with the weights as trailing parameters of `main`.

    Shape-typed initializers become constants first (`_integer_initializers_as_constants`). Unsupported ops are
    found before conversion and named with their nodes; a converter that fails part-way is reported with the
    op and node it was converting.
    """
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    model = _integer_initializers_as_constants(model)

    known = set(_get_convert_map()) | {"If", "Constant"}
    bad: dict[str, list[str]] = {}
    for i, node in enumerate(model.graph.node):
        if node.op_type not in known:
            bad.setdefault(node.op_type, []).append(node.name or f"#{i}")
    if bad:
        what = "; ".join(f"{op} (nodes: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" for op, names in bad.items())
        raise UnsupportedOpError(
            f"TVM's ONNX frontend cannot convert: {what}",
            "run this model with --backend onnxruntime, or add a graph pass that rewrites these ops",
        )
    state: dict[str, Any] = {}
    sink = io.StringIO()  # the importer prints whole input lists on failure; keep the message short
    try:
        with _node_tracker(state), contextlib.redirect_stdout(sink):
            return from_onnx(model, keep_params_in_input=True)
    except EdgeoptError:
        raise
    except Exception as e:  # noqa: BLE001 - any converter failure becomes one line naming the node
        raise UnsupportedOpError(
            f"TVM could not convert ONNX op {state.get('op', '?')} (node {state.get('node') or '?'}): {last_line(e)}",
            "run this model with --backend onnxruntime, or add a graph pass that rewrites this node",
        ) from e


def run_lifted(mod, weights: list[np.ndarray]) -> tuple[Any, list[np.ndarray]]:
    """`LiftTransformParams`: every computation of `main` that depends on its weights alone moves into a function of
    its own, which is built for this host and run here once. Returns the module without that function and the
    weights the new `main` takes. The artifact keeps its weights outside the .so (params.npz) in their final form,
    and the device side does no weight work (`to_nhwc`, `pack_weights`)."""
    import tvm
    from tvm import relax

    mod = relax.transform.LiftTransformParams()(mod)
    if not any(gv.name_hint == _TRANSFORM_PARAMS for gv in mod.functions):
        return mod, weights
    dce = relax.transform.DeadCodeElimination
    lifted = dce([_TRANSFORM_PARAMS])(tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv.name_hint != "main"}))
    dev = tvm.cpu(0)
    vm = relax.VirtualMachine(tvm.compile(lifted, target="llvm"), dev)
    out = vm[_TRANSFORM_PARAMS]([tvm.runtime.tensor(np.asarray(w, order="C"), dev) for w in weights])
    new = [o.numpy() for o in ([out] if hasattr(out, "numpy") else out)]
    rest = dce(["main"])(tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv.name_hint != _TRANSFORM_PARAMS}))
    return rest, new


def to_nhwc(mod, weights: list[np.ndarray]) -> tuple[Any, list[np.ndarray]]:
    """The module with its convolutions in NHWC (weights OHWI), and its weights in the layout the new `main` takes.

    In NCHW the innermost loop of a convolution runs along the image width (56 down to 7 pixels here), too short
    for the default schedule's 16-lane vectors; in NHWC it runs along the output channels (48 to 448), and a 1x1
    convolution becomes a plain matrix product. `ConvertLayout` inserts the transposes at the boundaries of the
    NHWC regions; the weight transposes depend only on weights and run once at compile time (`run_lifted`)."""
    from tvm import relax

    # conv2d_transpose stays NCHW: Relax legalizes it in no other layout (mobile_r2l's upsampling tail)
    mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"], "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]})(mod)
    return run_lifted(mod, weights)


def pack_weights(mod, weights: list[np.ndarray]) -> tuple[Any, list[np.ndarray]]:
    """Weights pre-packed in the order each kernel reads them. A module prepared with `layout_free` marks the
    weights its TIR functions take as layout-free (`AttachAttrLayoutFreeBuffers`); MetaSchedule's `RewriteLayout`
    postprocessor, part of both the default schedules and the tuned ones, then gives a convolution or matmul
    weight the layout of its tiles (the block of the reduction and output-channel loops the inner kernel walks
    contiguous) and puts the rewrite at the top of the kernel. `SplitLayoutRewritePreproc` moves these rewrites out
    of the kernels and `run_lifted` runs them once at compile time, so at run time a kernel reads its weights
    sequentially instead of with one stride per tile level. A module without such marks comes back as it was."""
    import tvm
    from tvm import relax

    return run_lifted(tvm.transform.Sequential([relax.transform.SplitLayoutRewritePreproc(),
                                                relax.transform.FoldConstant()])(mod), weights)


def is_qdq(model) -> bool:
    """Whether an ONNX graph holds quantize/dequantize nodes (the quantize pass's QDQ format)."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def relax_graph(model, layout: str = "NHWC") -> tuple[Any, list[np.ndarray], list[str]]:
    """ONNX ModelProto -> (Relax module whose `main` takes the inputs then the weights, the weights, the steps
    taken). The one front half of every TVM build: `TvmBackend.compile` and bench/tvm_tuning.py.

    `layout="NHWC"` converts the convolutions (`to_nhwc`) of a float graph. A QDQ graph keeps NCHW: lifting its
    weight transposes would dequantize the int8 weights at compile time and store them as floats."""
    from tvm import relax

    if layout not in LAYOUTS:
        raise EdgeoptError(f"unknown TVM layout {layout!r}", f"use -O layout={' or -O layout='.join(LAYOUTS)}")
    mod = import_onnx(model)
    mod, params = relax.frontend.detach_params(mod)
    weights = [p.numpy() for p in params.get("main", [])]
    steps = ["relax ONNX frontend"]
    if layout == "NHWC" and any(n.op_type == "Conv" for n in model.graph.node):
        if is_qdq(model):
            steps.append("convolutions kept NCHW (a QDQ graph: its int8 weights stay int8)")
        else:
            mod, weights = to_nhwc(mod, weights)
            steps.append("ConvertLayout(conv2d: NHWC, OHWI) + LiftTransformParams (weights transposed at compile time)")
    return mod, weights, steps


@register_backend
class TvmBackend(Backend):
    name = "tvm"
    device_runtimes = ("apache-tvm",)
    consumes = "onnx"
    # The quantize pass rewrites the ONNX graph; its QDQ nodes are imported as quantize/dequantize ops.
    modes = (
        Mode("fp32", None, ARTIFACT, "Relax build for this CPU: convolutions NHWC, default schedules (MetaSchedule's rules, no measurement), "
             "weights pre-packed in each kernel's tile order at compile time, untuned",
             runs_on=_RUNS_ON, auto_rank=11),
        Mode("int8", "quantize:int8", ARTIFACT,
             "ORT's QDQ graph imported into Relax; Relax has no integer kernels for it, so quantize/dequantize are lowered to "
             "float arithmetic and conv/matmul run on the dequantized floats (int8's rounding, not its speed), untuned",
             runs_on=_RUNS_ON, computes="float"),
    )
    targets = ("host", "x86-host", "aarch64", "cortex-a76", "cortex-a78ae", "cortex-a72")

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            tvm = import_tvm()
            import tvm_ffi
        except ImportError as e:
            return False, f"apache-tvm is not installed ({e.name}); pip install 'edgeopt[tvm]'"
        except Exception as e:  # noqa: BLE001 - a broken TVM install must not crash backend listing
            return False, f"apache-tvm failed to import: {type(e).__name__}: {e}"
        ffi = getattr(tvm_ffi, "__version__", "?")
        if ffi.startswith("0.1.15"):
            return False, f"apache-tvm-ffi {ffi} segfaults in save_json; pip install apache-tvm-ffi==0.1.14.post1"
        return True, tvm.__version__

    # ------------------------------------------------------------------ host side
    def compile(self, inp: CompileInput, out_dir: Path, target: str, options: dict[str, Any]) -> CompileResult:
        import onnx
        import tvm
        import tvm_ffi

        from edgeopt.runtimes import _tvm_targets as tt
        from edgeopt.runtimes import _tvm_tune as tune

        if inp.onnx_path is None:
            raise EdgeoptError("the TVM backend compiles an ONNX graph and none was exported")
        opts = dict(options)
        trials = int(opts.pop("tune_trials", 0) or 0)
        minutes = float(opts.pop("tune_minutes", 0) or 0) or None
        info = tt.resolve_target(target, num_cores=opts.pop("num_cores", None))
        if trials < 0 or (minutes is not None and minutes < 0):
            raise EdgeoptError("tune_trials and tune_minutes must be >= 0", "e.g. --tune-trials 200 --tune-minutes 10")
        tuning = trials > 0 or minutes is not None
        if tuning and info.host_runnable() is not True:
            raise EdgeoptError(
                f"cannot tune for {info.name} on this host: MetaSchedule must run each candidate on the target CPU",
                "tune on the board itself (edgeopt compile there with --target host), or pass tuning_db=DIR from such a run",
            )
        tgt = tvm.target.Target(info.target)
        say = opts.pop("progress", None) or (lambda _m: None)

        t0 = time.perf_counter()
        model = onnx.load(str(inp.onnx_path))
        graph_inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
        graph_outputs = [o.name for o in model.graph.output]
        mod, weights, pipeline = relax_graph(model, str(opts.pop("layout", "NHWC")).upper())
        import_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        # Weight pre-packing (option prepack, true by default): each kernel's weights laid out in the order its
        # schedule reads them, once at compile time (`pack_weights`); false keeps the layout option's layout.
        prepack = opts.pop("prepack", True)
        if not isinstance(prepack, bool):
            raise EdgeoptError(f"-O prepack takes true or false, not {prepack!r}", "e.g. -O prepack=false (weights in the graph's layout)")
        if prepack and is_qdq(model):
            prepack = False  # packing lifts the weights' dequantize with their re-layout: int8 weights stored as floats
            pipeline.append("weights not pre-packed (a QDQ graph: its int8 weights stay int8)")
        mod = tune.prepare(mod, tgt, layout_free=prepack)
        pipeline += tune.PREPARE_STEPS
        if prepack:
            pipeline.append(tune.LAYOUT_FREE_STEP)
        details: dict[str, Any] = {}
        db_dir: Path | None = None
        if tuning:
            db_dir = Path(opts.pop("tune_dir", None) or tune.default_db_dir(info.name))
            rep = tune.tune(mod, tgt, db_dir, trials, minutes, int(tgt.attrs.get("num-cores", 1) or 1), progress=say)
            details["tuning"] = rep.to_dict()
        elif opts.get("tuning_db"):
            db_dir = Path(opts.pop("tuning_db"))
            if not (db_dir / tune.RECORD_FILE).is_file():
                raise EdgeoptError(f"tuning_db {db_dir} holds no {tune.RECORD_FILE}", "pass the folder a tuned compile wrote (see backend_details.tuning.db_dir)")
        schedule = str(opts.pop("schedule", "default"))
        if schedule not in SCHEDULES:
            raise EdgeoptError(f"unknown TVM schedule {schedule!r}", "use -O schedule=default (MetaSchedule's rules, no measurement) "
                               "or -O schedule=none (the bare loop nests)")
        unscheduled: list[str] = []
        mod = tune.apply_database(mod, tgt, db_dir, default_schedules=schedule == "default", unscheduled=unscheduled)
        if unscheduled:
            details["unscheduled"] = unscheduled  # kept their bare loop nests
        if db_dir is not None:
            pipeline.append(f"MetaScheduleApplyDatabase({db_dir})")
        if schedule == "default":
            pipeline.append("default schedules for the functions without a tuning record (MetaSchedule's rules, tiles by rule, nothing measured)")
        details["schedule"] = schedule
        if db_dir is not None:
            if opts.pop("bundle_tuning_db", False):
                import shutil

                shutil.copytree(db_dir, out_dir / TUNING_DIR, ignore=shutil.ignore_patterns("logs", "*.repair"))
        if prepack:
            mod, weights = pack_weights(mod, weights)
            pipeline.append("SplitLayoutRewritePreproc + LiftTransformParams (weights pre-packed at compile time)")
        pipeline.append("tvm.compile default build pipeline (opt_level 3)")
        with tvm.transform.PassContext(opt_level=3):
            ex = tvm.compile(mod, target=tgt)
        build_s = time.perf_counter() - t0

        so = out_dir / ARTIFACT
        tmp = out_dir / f".{ARTIFACT}.tmp.so"
        if info.cross_cc:
            from tvm.support.cc import cross_compiler

            cc_path = tt.check_toolchain(info)
            ex.export_library(str(tmp), fcompile=cross_compiler(cc_path))
        else:
            ex.export_library(str(tmp))
        tmp.replace(so)
        want = EM_AARCH64 if info.arch == "aarch64" else EM_X86_64
        got = elf_machine(so)
        if got != want:
            raise EdgeoptError(f"linked {so.name} for ELF machine {got}, expected {want} ({info.arch})", "check the cross compiler (CC) in use")
        np.savez(out_dir / PARAMS, **{f"p{i:05d}": w for i, w in enumerate(weights)})

        details.update(
            {
                "target_name": info.name,
                "target": info.target,
                "arch": info.arch,
                "host_runnable": info.host_runnable(),
                "linker": info.cross_cc or "host cc",
                "pipeline": pipeline,
                "tuned": db_dir is not None,
                "prepacked": prepack,
                "tune_trials": trials,
                "tune_minutes": minutes,
                "params_file": PARAMS,
                "num_params": len(weights),
                "io": {"inputs": graph_inputs, "outputs": graph_outputs},
                "seconds": {"import": import_s, "build": build_s},
            }
        )
        precision = options.get("precision", "fp32")
        if precision != "fp32":
            details["precision_note"] = "QDQ nodes are imported as quantize/dequantize ops; kernels compute in float"
        return CompileResult(
            artifact=ARTIFACT,
            precision=precision,
            target=info.name,
            tools={"apache-tvm": tvm.__version__, "apache-tvm-ffi": getattr(tvm_ffi, "__version__", "?"), "onnx": onnx.__version__},
            details=details,
        )

    # ---------------------------------------------------------------- device side
    def load(self, bundle_dir: Path, manifest: Manifest, threads: int | None = None) -> Session:
        bundle_dir = Path(bundle_dir)
        details = manifest.backend_details
        io_names = details.get("io") or {}
        inputs = io_names.get("inputs") or manifest.input_names
        outputs = io_names.get("outputs") or manifest.output_names
        so = bundle_dir / manifest.artifact
        params = bundle_dir / details.get("params_file", PARAMS)
        if not so.is_file() or not params.is_file():
            raise EdgeoptError(f"TVM bundle {bundle_dir} lacks {so.name} or {params.name}", "recompile the bundle")
        return TvmSession(so, params, inputs, outputs, threads)
