"""ONNX Runtime's quantization tools, driven from a QuantizeConfig: pre-processing, static and dynamic int8,
fp16 and weight-only int4. Each function reads `src` and writes `dst` (never `src`) and returns the details
that go into the pass report. The quantize modes (`quantize_modes.py`) and mixed precision
(`_sensitivity.py`) are built from these.

External data: a result is written with external data (`dst` + ONE `dst.name + ".data"`, edgeopt._ort's
layout) when `src` has external data or exceeds `EXTERNAL_DATA_ABOVE` (about 1.8 GB); ORT's tools get
`use_external_data_format` for it, and every write goes through `staged_onnx` (temporary names, renamed
into place, a stale data file removed). Dynamic int8 of such a graph does not use ORT's tool, which holds
about three copies of the graph in memory: `dynamic_int8_streamed` reads one weight at a time.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from edgeopt._ort import (
    DATA_SUFFIX,
    EXTERNAL_DATA_ABOVE,
    ExternalRef,
    aligned_offset,
    copy_region,
    data_file,
    external_refs,
    load_onnx,
    point_external,
    remove_onnx,
    save_onnx,
    staged_onnx,
    uses_external_data,
)
from edgeopt.errors import EdgeoptError
from edgeopt.passes._measure import op_histogram
from edgeopt.passes.base import PassContext
from edgeopt.passes.quantize_config import QuantizeConfig


class SampleReader:
    """ORT's CalibrationDataReader (`get_next`, `rewind`) over the pass context's real samples; iterating it
    yields the same feeds (what `qdq_loss_debug.collect_activations` takes)."""

    def __init__(self, samples: list[dict[str, np.ndarray]], names: list[str]) -> None:
        self._data = [{n: s[n] for n in names} for s in samples]
        self._it = iter(self._data)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._data)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self._data)


def wants_external_data(src: Path) -> bool:
    """Whether a graph made from `src` is saved with external data: `src` is larger than
    EXTERNAL_DATA_ABOVE, its data file `NAME.onnx.data` lies beside it, or its graph names external data."""
    src = Path(src)
    return src.stat().st_size > EXTERNAL_DATA_ABOVE or data_file(src).is_file() or uses_external_data(src)


def _shared_small(graph, max_elements: int) -> tuple[dict[str, Any], set[str]]:
    import onnx

    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    small = {t.name: t for t in graph.initializer if t.data_type in floats and len(t.dims) <= 1 and math.prod(t.dims) <= max_elements}
    uses = Counter(i for n in graph.node for i in n.input if i in small)
    return small, {k for k, v in uses.items() if v > 1}


def unshare_initializers(src: Path, dst: Path, max_elements: int = 4096) -> int:
    """Give each consumer of a shared small float initializer its own copy; writes dst when any was shared.

    ORT's QDQ quantizer copies a bias that several nodes read and names the copy NAME + a digit, which can
    collide with an existing tensor: torch's exporter names values val_N, so the copy of `val_37` can be
    `val_376`, an activation, and quantize_static fails with "Quantization parameter shared mode is not
    supported for weight" (or mislabels a tensor). Shared biases and norm parameters (1-D, small) are what
    it copies; big shared weights (tied embeddings) stay shared so the model does not grow. A graph with
    external data is read with its data (only when something is shared) and written with external data.
    Returns how many copies were made."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    small, shared = _shared_small(model.graph, max_elements)
    if not shared:
        return 0
    external = wants_external_data(src)
    if external:
        model = load_onnx(src)
        small, shared = _shared_small(model.graph, max_elements)
    g = model.graph
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
    save_onnx(model, dst, external=True if external else None)
    return made


def preprocess(src: Path, dst: Path) -> Path:
    """ORT's quantization pre-processing (shape inference + graph optimisation) then `unshare_initializers`;
    src itself (untouched) when pre-processing fails and nothing needed unsharing. External data as the
    module says."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgeopt._ort import ort_session

    external = wants_external_data(src)
    # ORT's optimisation step can emit a graph ORT itself will not load ("Attempt to replace the existing
    # tensor" on TinyGPT-V's rotary embedding); then pre-process without it.
    for skip_optimization in (False, True):
        try:
            with staged_onnx(dst) as tmp:
                quant_pre_process(
                    str(src), str(tmp), skip_symbolic_shape=True, skip_optimization=skip_optimization,
                    save_as_external_data=external, all_tensors_to_one_file=True,
                    external_data_location=dst.name + DATA_SUFFIX,
                )
            ort_session(dst)
            break
        except Exception:  # noqa: BLE001 - pre-processing is an optimisation; fall back as far as the raw graph
            remove_onnx(dst)
    else:
        return dst if unshare_initializers(src, dst) else src
    unshare_initializers(dst, dst)
    return dst


def _conv_group_shape(node: Any, weights: dict[str, Any]) -> tuple[int, list[int]] | None:
    """(group, weight dims) of a Conv whose weight is a 4-D initializer, else None."""
    w = weights.get(node.input[1]) if len(node.input) > 1 else None
    if w is None or len(w.dims) != 4:
        return None
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return group, list(w.dims)


# Activations ORT's session optimiser removes between a Conv and a QuantizeLinear (the quantized range clips
# as they would), so a float Conv -> Relu -> QuantizeLinear still fuses into QLinearConv: their consumers
# must stay float as well.
_DROPPED_BEFORE_Q = ("Relu", "Clip")


def slow_int8_nodes(graph: Any) -> dict[str, str]:
    """Nodes static int8 leaves in float because ONNX Runtime's CPU int8 kernel for them is slower than
    fp32: node name -> why (for the pass report).

    - A grouped Conv that is neither dense (group 1) nor depthwise with one input and one output channel
      per group (weight [C, 1, k, k] with group C) -- e.g. MobileOne/FastViT's stride-2 "depthwise" convs
      with two output channels per group, [2C, 1, 7, 7] with group C. ORT's QLinearConv has a fast kernel
      for dense and for depthwise convs only; any other grouped conv runs one tiny im2col GEMM per group:
      on mobileclip_s0_image the 6 such convs took about a third of the int8 model's time (about 1% each
      in fp32).
    - AveragePool (not GlobalAveragePool): ORT's QLinearAveragePool took a quarter of efficientformer_l1's
      int8 time (its 14 PoolFormer token mixers), fp32 AveragePool about 1% of the fp32 time.

    Their readers stay float too (through a Relu or Clip, which ORT drops before a QuantizeLinear, to the
    nodes after it): were the output quantized, ORT's session optimiser would fuse DequantizeLinear -> op ->
    QuantizeLinear into the int8 kernel all the same (for a Conv it quantizes the float weight itself).
    Excluding the node alone (`exclude_nodes`) therefore changes nothing at run time."""
    weights = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out: dict[str, str] = {}
    for n in graph.node:
        if n.domain not in ("", "ai.onnx") or not n.name:
            continue
        if n.op_type == "Conv" and (gs := _conv_group_shape(n, weights)) is not None:
            group, (c_out, c_in_per_group, kh, kw) = gs
            if group == 1 or (c_in_per_group == 1 and c_out == group):
                continue
            why = (f"grouped Conv (group {group}, weight [{c_out}, {c_in_per_group}, {kh}, {kw}]): ORT's int8 "
                   "QLinearConv has no fast kernel for it (one small GEMM per group), slower than fp32")
        elif n.op_type == "AveragePool":
            why = "AveragePool: ORT's int8 QLinearAveragePool is several times slower than fp32 AveragePool"
        else:
            continue
        out.setdefault(n.name, why)
        front = list(consumers.get(n.output[0], []))
        while front:
            c = front.pop()
            if c.name and c.name not in out:  # ORT's quantizer excludes nodes by name
                out[c.name] = f"reads the float {n.op_type} {n.name!r} (else ORT fuses it into its int8 kernel)"
                if c.op_type in _DROPPED_BEFORE_Q:
                    front += consumers.get(c.output[0], [])
    return out


def _quant_types() -> dict[str, Any]:
    from onnxruntime.quantization import QuantType

    return {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}


def static_int8(
    src: Path, dst: Path, cfg: QuantizeConfig, ctx: PassContext,
    extra_exclude: list[str] | None = None, cache: Path | None = None, pre: Path | None = None,
) -> dict[str, Any]:
    """Static int8 of `src` into `dst`, calibrated on the context's samples. `cache` reuses calibration
    ranges across calls (mixed precision); `pre` is an already pre-processed copy of src."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    own_pre = pre is None
    if pre is None:
        pre = preprocess(src, dst.with_name(dst.stem + ".pre.onnx"))
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[cfg.calibration]
    qt = _quant_types()
    nodes_to_exclude = list(cfg.exclude_nodes) + list(extra_exclude or [])
    float_by_rule: list[dict[str, str]] = []
    if cfg.exclude_ops or cfg.float_slow_ops:
        import onnx

        g = onnx.load(str(pre), load_external_data=False).graph
        nodes_to_exclude += [n.name for n in g.node if n.op_type in cfg.exclude_ops]
        if cfg.float_slow_ops:
            ops = {n.name: n.op_type for n in g.node}
            slow = slow_int8_nodes(g)
            float_by_rule = [{"node": k, "op": ops[k], "why": v} for k, v in slow.items()]
            nodes_to_exclude += [k for k in slow if k not in nodes_to_exclude]
    extra: dict[str, Any] = {}
    if cfg.calibration == "percentile":
        extra["CalibPercentile"] = cfg.percentile
    samples = ctx.samples[: cfg.calibration_samples]
    fmt = QuantFormat.QDQ if cfg.format == "qdq" else QuantFormat.QOperator
    try:
        with staged_onnx(dst) as tmp:
            quantize_static(
                str(pre), str(tmp), SampleReader(samples, ctx.input_names),
                quant_format=fmt, per_channel=cfg.per_channel,
                activation_type=qt[cfg.activation_type], weight_type=qt[cfg.weight_type],
                op_types_to_quantize=list(cfg.op_types) or None,
                calibrate_method=method, nodes_to_exclude=nodes_to_exclude, extra_options=extra,
                calibration_cache_path=str(cache) if cache is not None else None,
                use_external_data_format=wants_external_data(pre),
            )
    finally:
        if own_pre and pre != src:
            remove_onnx(pre)
    return {"calibration_samples": len(samples), "nodes_excluded": nodes_to_exclude, "float_by_rule": float_by_rule}


def dynamic_int8(src: Path, dst: Path, cfg: QuantizeConfig) -> dict[str, Any]:
    """Dynamic int8: weights quantized here, activations at run time.

    A graph with external data, or above EXTERNAL_DATA_ABOVE (`wants_external_data`), goes through
    `dynamic_int8_streamed` (MatMul weights only, one weight in memory at a time). Any other graph is
    pre-processed and quantized by ONNX Runtime's `quantize_dynamic`, which loads the whole graph (about
    three times its size in memory) and quantizes every op type it supports (MatMul, Gemm, Conv, ...)."""
    if wants_external_data(src):
        return dynamic_int8_streamed(src, dst, cfg)
    from onnxruntime.quantization import quantize_dynamic

    pre = preprocess(src, dst.with_name(dst.stem + ".pre.onnx"))
    try:
        with staged_onnx(dst) as tmp:
            quantize_dynamic(
                str(pre), str(tmp), weight_type=_quant_types()[cfg.weight_type], per_channel=cfg.per_channel,
                op_types_to_quantize=list(cfg.op_types) or None, nodes_to_exclude=list(cfg.exclude_nodes),
                use_external_data_format=wants_external_data(pre),
            )
    finally:
        if pre != src:
            remove_onnx(pre)
    return {"method": "onnxruntime quantize_dynamic", "weight_type": cfg.weight_type}


# The streamed path quantizes this many bytes of float rows of a weight at a time (its float temporaries).
_BLOCK_BYTES = 64 * 1024**2
# Tensors smaller than this stay inside the graph's protobuf (save_onnx's threshold).
_INLINE_BELOW = 1024


def _quantize_columns(w: np.ndarray, signed: bool, per_channel: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(quantized weight, scale, zero point) of a 2-D float weight, per output column (`per_channel`: scale
    and zero point of shape [N]) or per tensor (scalars). ORT's defaults for each type: int8 symmetric in
    [-127, 127] with zero point 0; uint8 asymmetric over [min(w, 0), max(w, 0)]. An all-zero column gets
    scale 1 (its values stay exactly 0). Rows are quantized a block at a time, so the float temporaries
    stay near _BLOCK_BYTES whatever the weight's size."""
    axis = 0 if per_channel else None
    lo = np.minimum(w.min(axis=axis), 0).astype(np.float32)
    hi = np.maximum(w.max(axis=axis), 0).astype(np.float32)
    if signed:
        qmin, qmax, qtype = -127, 127, np.int8
        scale = np.maximum(hi, -lo) / np.float32(127)
    else:
        qmin, qmax, qtype = 0, 255, np.uint8
        scale = (hi - lo) / np.float32(255)
    scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
    zero = np.zeros_like(scale) if signed else np.clip(np.rint(-lo / scale), qmin, qmax).astype(np.float32)
    q = np.empty(w.shape, qtype)
    rows = max(1, _BLOCK_BYTES // max(1, w.shape[1] * w.itemsize))
    for i in range(0, w.shape[0], rows):
        block = w[i : i + rows] / scale
        block += zero
        np.rint(block, out=block)
        np.clip(block, qmin, qmax, out=block)
        q[i : i + rows] = block
    return q, scale, zero.astype(qtype)


class _DataWriter:
    """Writes ONE external data file `path` (named `location` in the graph): tensors appended, those over
    ALIGN_ABOVE bytes starting page-aligned (edgeopt._ort's layout), each tensor pointed at its bytes.
    Reads the source tensors' bytes from their own data files (`ExternalRef`s checked by `external_refs`),
    with plain reads, so a tensor's memory is freed with its array."""

    def __init__(self, path: Path, location: str) -> None:
        self._out = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._location = location
        self._sources: dict[Path, IO[bytes]] = {}

    def __enter__(self) -> _DataWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for f in self._sources.values():
            f.close()
        self._out.close()

    def _source(self, ref: ExternalRef) -> IO[bytes]:
        if ref.file not in self._sources:
            self._sources[ref.file] = open(ref.file, "rb")  # noqa: SIM115 - closed by close()
        f = self._sources[ref.file]
        f.seek(ref.offset)
        return f

    def read(self, t: Any, ref: ExternalRef | None) -> np.ndarray:
        """The values of tensor `t`: from `ref` when it has external data, else from the protobuf."""
        from onnx import helper, numpy_helper

        if ref is None:
            return numpy_helper.to_array(t)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
        count = math.prod(t.dims)
        if ref.length != count * dtype.itemsize:
            raise EdgeoptError(
                f"tensor {t.name!r} keeps {ref.length} bytes of external data for shape {list(t.dims)} ({dtype})",
                "the data file belongs to another graph; re-export the model",
            )
        return np.fromfile(self._source(ref), dtype=dtype, count=count).reshape(tuple(t.dims))

    def copy(self, t: Any, ref: ExternalRef) -> None:
        """Append the bytes of `t` (at `ref`) unchanged and point `t` at them."""
        offset = aligned_offset(self._out, ref.length)
        copy_region(self._source(ref), ref.offset, ref.length, self._out, ref.file)
        point_external(t, self._location, offset, ref.length)

    def tensor(self, name: str, arr: np.ndarray) -> Any:
        """A new TensorProto `name` holding `arr`: inline below _INLINE_BELOW bytes, else appended here."""
        import onnx
        from onnx import helper, numpy_helper

        if arr.nbytes < _INLINE_BELOW:
            return numpy_helper.from_array(arr, name)
        arr = np.ascontiguousarray(arr)
        t = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(arr.dtype), dims=arr.shape)
        offset = aligned_offset(self._out, arr.nbytes)
        self._out.write(memoryview(arr).cast("B"))
        point_external(t, self._location, offset, arr.nbytes)
        return t


def _node_inputs(nodes: Any) -> Iterator[str]:
    """Every input name of `nodes` and of the nodes of their subgraphs (which may read outer initializers)."""
    for n in nodes:
        yield from n.input
        for a in n.attribute:
            if a.HasField("g"):
                yield from _node_inputs(a.g.node)
            for sub in a.graphs:
                yield from _node_inputs(sub.node)


def dynamic_int8_streamed(src: Path, dst: Path, cfg: QuantizeConfig) -> dict[str, Any]:
    """Dynamic int8 of a large graph without loading it: what `dynamic_int8` does for a graph with external
    data or above EXTERNAL_DATA_ABOVE.

    Quantizes only MatMul nodes whose second input is a constant 2-D float32 weight (an initializer that is
    not also a graph input): each becomes ONNX Runtime's `com.microsoft.DynamicQuantizeMatMul` (the op
    ORT's own dynamic quantization fuses to: the activation quantized to uint8 at run time), its weight
    quantized per output column (`per_channel`, else per tensor) as `weight_type` (int8 symmetric or uint8
    asymmetric, ORT's defaults). Gemm, Conv and every other op stay float, and there is no pre-processing;
    ORT's `quantize_dynamic` (the path for smaller graphs) also quantizes Gemm and Conv. MatMul is skipped
    when `op_types` is given without it or `exclude_ops` names it; nodes named in `exclude_nodes` stay float.
    A weight shared by several quantized MatMuls is quantized once; its float copy is kept only while some
    other node still reads it.

    The graph is read without its data (the locations checked by `external_refs`); each weight to quantize
    is read alone, and every other external tensor is copied unchanged, in chunks, into ONE data file
    `dst.name + ".data"`, so the peak memory is about one weight and its int8 copy. Written through
    `staged_onnx` (src is never modified). An EdgeoptError when there is no MatMul to quantize."""
    import onnx
    from onnx import TensorProto, helper

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    g = model.graph
    refs = external_refs(model, src.parent, str(src))
    # protobuf hands out one Python object per tensor while it is referenced (here by `refs`): ids are stable
    ref_of = {id(t): ref for t, ref in refs}
    inits = {t.name: t for t in g.initializer}
    overridable = {i.name for i in g.input}

    def constant_weight(name: str) -> bool:
        t = inits.get(name)
        return (t is not None and name not in overridable and t.data_type == TensorProto.FLOAT and len(t.dims) == 2
                and math.prod(t.dims) > 0)

    matmul_allowed = "MatMul" in (cfg.op_types or ["MatMul"]) and "MatMul" not in cfg.exclude_ops
    excluded = set(cfg.exclude_nodes)
    nodes = [n for n in g.node if matmul_allowed and n.op_type == "MatMul" and n.domain in ("", "ai.onnx")
             and n.name not in excluded and constant_weight(n.input[1])]
    if not nodes:
        ops = Counter(n.op_type for n in g.node)
        found = ", ".join(f"{ops.get(op, 0)} {op}" for op in ("MatMul", "Gemm", "Conv"))
        raise EdgeoptError(
            f"quantize:dynamic on {src.name} (a graph with external data) found no MatMul with a constant 2-D "
            f"float32 weight to quantize ({found}; MatMul allowed by op_types/exclude_ops: {matmul_allowed})",
            "large graphs are quantized MatMul by MatMul; for other ops use quantize:fp16 or quantize:int8",
        )
    weights = dict.fromkeys(n.input[1] for n in nodes)
    uses = Counter(_node_inputs(g.node))
    quantized_uses = Counter(i for n in nodes for i in n.input)
    outputs = {o.name for o in g.output}
    keep_float = {w for w in weights if uses[w] > quantized_uses[w] or w in outputs}
    taken = set(inits) | {v.name for v in list(g.input) + list(g.output) + list(g.value_info)}
    taken |= {o for n in g.node for o in n.output}

    def fresh(name: str) -> str:
        k, out = 1, name
        while out in taken:
            k, out = k + 1, f"{name}_{k}"
        taken.add(out)
        return out

    signed = cfg.weight_type == "int8"
    names: dict[str, tuple[str, str, str]] = {}
    added: list[Any] = []
    with staged_onnx(dst) as tmp:
        with _DataWriter(data_file(tmp), dst.name + DATA_SUFFIX) as data:
            for w in weights:
                t = inits[w]
                q, scale, zero = _quantize_columns(data.read(t, ref_of.get(id(t))), signed, cfg.per_channel)
                names[w] = (fresh(f"{w}_quantized"), fresh(f"{w}_scale"), fresh(f"{w}_zero_point"))
                added += [data.tensor(name, arr) for name, arr in zip(names[w], (q, scale, zero), strict=True)]
                del q
            dropped = {w for w in weights if w not in keep_float}
            for t, ref in refs:
                if not (t.name in dropped and t is inits[t.name]):
                    data.copy(t, ref)
        for n in nodes:
            q_name, scale_name, zero_name = names[n.input[1]]
            n.op_type, n.domain = "DynamicQuantizeMatMul", "com.microsoft"
            n.input[1] = q_name
            n.input.extend([scale_name, zero_name])
        for t in [t for t in g.initializer if t.name in dropped]:
            g.initializer.remove(t)
        for v in [v for v in g.value_info if v.name in dropped]:
            g.value_info.remove(v)
        g.initializer.extend(added)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        tmp.write_bytes(model.SerializeToString())
    left = [n.op_type for n in g.node]
    return {"method": "streamed DynamicQuantizeMatMul", "weight_type": cfg.weight_type, "per_channel": cfg.per_channel,
            "dynamic_quantize_matmul": len(nodes), "matmul_left_float": left.count("MatMul"),
            "gemm_left_float": left.count("Gemm")}


def to_fp16(src: Path, dst: Path, cfg: QuantizeConfig) -> dict[str, Any]:
    """float16 weights and compute; `keep_io_types` keeps fp32 inputs and outputs (casts inside). The
    converter reads `src` by path (shape inference on the file works above 2 GB and loads its data)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    external = wants_external_data(src)
    blocked = list(cfg.exclude_ops) or None
    out = convert_float_to_float16(
        str(src), keep_io_types=cfg.keep_io_types, op_block_list=blocked, node_block_list=list(cfg.exclude_nodes) or None,
    )
    save_onnx(out, dst, external=True if external else None)
    return {"keep_io_types": cfg.keep_io_types}


def weight_int4(src: Path, dst: Path, cfg: QuantizeConfig) -> dict[str, Any]:
    """MatMulNBits on every MatMul whose weight is a constant 2-D initializer; an error when there is none."""
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # its logger reports every node at INFO level (thousands of lines on an LLM); the pass report counts them instead
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)

    external = wants_external_data(src)
    model = load_onnx(src)
    before = sum(1 for n in model.graph.node if n.op_type == "MatMul")
    gemms = sum(1 for n in model.graph.node if n.op_type == "Gemm")
    q = MatMulNBitsQuantizer(
        model, bits=4, block_size=cfg.block_size, is_symmetric=cfg.symmetric, accuracy_level=cfg.accuracy_level,
        nodes_to_exclude=list(cfg.exclude_nodes), op_types_to_quantize=("MatMul",),
    )
    q.process()
    with staged_onnx(dst) as tmp:
        q.model.save_model_to_file(str(tmp), use_external_data_format=external)
    after = op_histogram(dst)
    n4 = after.get("MatMulNBits", 0)
    if n4 == 0:
        remove_onnx(dst)
        raise EdgeoptError(
            f"quantize:int4 found no MatMul with a constant weight to quantize ({before} MatMul, {gemms} Gemm nodes)",
            "int4 is weight-only for transformer linears; use quantize:int8 or quantize:dynamic for this model",
        )
    return {"matmul_nbits": n4, "matmul_left_float": after.get("MatMul", 0), "gemm_left_float": after.get("Gemm", 0),
            "block_size": cfg.block_size, "symmetric": cfg.symmetric}
