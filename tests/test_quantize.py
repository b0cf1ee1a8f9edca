"""quantize pass: static int8 (QDQ and QOperator), dynamic, fp16, weight-only int4, mixed precision.

A small conv + token-MLP model (its 3-D linears export as MatMul, like a transformer's) exported once,
run on real photographs; every artifact is run on ONNX Runtime and compared with the fp32 graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from _passes_util import export, make_ctx, tiny_net
from torch import nn

from edgeopt._ort import ort_run_all, ort_session
from edgeopt.errors import EdgeoptError, SpecError
from edgeopt.passes._measure import op_histogram
from edgeopt.passes.pipeline import build_pipeline, run_pipeline


class TokenNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 64, 4, 4)
        self.norm = nn.LayerNorm(64)
        self.fc1, self.fc2 = nn.Linear(64, 256), nn.Linear(256, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)  # (1, 64 tokens, 64)
        t = t + self.fc2(nn.functional.gelu(self.fc1(self.norm(t))))
        return self.head(t.mean(1))


@pytest.fixture(scope="module")
def token_model(tmp_path_factory):
    torch.manual_seed(0)
    net = TokenNet().eval()
    work = tmp_path_factory.mktemp("q")
    ctx = make_ctx(net, work)
    return export(net, ctx, work / "fp32.onnx"), ctx


def _run(spec: str, model_ctx) -> tuple[Path, dict, dict]:
    path, ctx = model_ctx
    (p,) = build_pipeline(spec)
    out, rep = p.run(path, ctx)
    return out, rep.to_dict(), ctx.fidelity(ort_run_all(out, ctx.samples))


def test_every_mode_has_a_strategy():
    import typing

    from edgeopt.passes.quantize import QuantizeConfig
    from edgeopt.passes.quantize_modes import QUANTIZE_MODES

    assert set(QUANTIZE_MODES.names()) == set(typing.get_args(QuantizeConfig.model_fields["mode"].annotation))


@pytest.mark.parametrize("spec, option", [
    ("quantize:int4,block_size=48", "block_size"),
    ("quantize:int8,calibration_samples=0", "calibration_samples"),
    ("quantize:mixed,max_float_fraction=0", "max_float_fraction"),
    ("quantize:int8,percentile=101", "percentile"),
    ("quantize:int9", "mode"),
])
def test_bad_options_fail_when_the_pipeline_is_parsed(spec, option):
    with pytest.raises(SpecError, match=f"pass 'quantize': option {option}: "):
        build_pipeline(spec)


def test_int8_static_qdq_default(token_model):
    out, rep, fid = _run("quantize:int8", token_model)
    ops = op_histogram(out)
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    assert rep["size_after"] < rep["size_before"] and rep["precision"] == "int8"
    assert fid["cosine"] > 0.99


def test_int8_qoperator(token_model):
    out, _, fid = _run("quantize:int8,format=qoperator", token_model)
    ops = op_histogram(out)
    assert ops.get("QLinearConv", 0) + ops.get("QLinearMatMul", 0) > 0
    assert fid["cosine"] > 0.99


def test_dynamic(token_model):
    out, rep, fid = _run("quantize:dynamic", token_model)
    ops = op_histogram(out)
    assert ops.get("DynamicQuantizeLinear", 0) + ops.get("DynamicQuantizeMatMul", 0) + ops.get("MatMulInteger", 0) > 0
    assert fid["cosine"] > 0.99


@pytest.mark.parametrize("keep", [True, False])
def test_fp16_io_types(token_model, keep):
    path, ctx = token_model
    (p,) = build_pipeline(f"quantize:fp16,keep_io_types={str(keep).lower()}")
    out, rep = p.run(path, ctx)
    s = ort_session(out)
    want = "tensor(float)" if keep else "tensor(float16)"
    assert s.get_inputs()[0].type == want and s.get_outputs()[0].type == want
    feed = {"image": ctx.samples[0]["image"].astype(np.float32 if keep else np.float16)}
    got = s.run(None, feed)[0].astype(np.float32)
    ref = ctx.references[0]["logits"]
    cos = float(np.dot((ref - ref.mean()).ravel(), (got - got.mean()).ravel()) / (np.linalg.norm(ref - ref.mean()) * np.linalg.norm(got - got.mean())))
    assert cos > 0.999
    assert rep.size_after < 0.7 * rep.size_before


def test_int4_weight_only_matmul(token_model):
    out, rep, fid = _run("quantize:int4", token_model)
    assert op_histogram(out).get("MatMulNBits", 0) >= 2  # fc1, fc2 on (1, 64, C) tokens
    assert rep["changes"][0]["matmul_nbits"] >= 2
    assert fid["cosine"] > 0.99


def test_int4_refuses_a_model_without_matmul(tmp_path):
    net = tiny_net()
    ctx = make_ctx(net, tmp_path)
    path = export(net, ctx, tmp_path / "cnn.onnx")
    (p,) = build_pipeline("quantize:int4")
    with pytest.raises(EdgeoptError, match="no MatMul"):
        p.run(path, ctx)


def test_mixed_keeps_sensitive_nodes_float_until_budget_holds(token_model):
    _, _, int8 = _run("quantize:int8", token_model)
    target = 1 - (1 - int8["cosine"]) / 3  # int8 misses this; float nodes must close the gap
    out, rep, fid = _run(f"quantize:mixed,target={target}", token_model)
    ch = rep["changes"][0]
    assert ch["float_nodes"], rep["notes"]
    assert fid["cosine"] >= target
    assert all("dB" in n["why"] for n in ch["float_nodes"])
    assert "kept the" in rep["notes"][0]


def test_mixed_uses_the_pipeline_budget_and_keeps_all_int8_when_it_holds(token_model):
    path, ctx = token_model
    res = run_pipeline(build_pipeline("quantize:mixed"), None, ctx, export=lambda m, p: (path, {}),
                       evaluate_torch=lambda m: [], evaluate_onnx=lambda p: ort_run_all(p, ctx.samples), budget=0.9)
    ch = res.reports[0].changes[0]
    assert ch["target"] == 0.9 and ch["float_nodes"] == []
    assert onnx.load(str(res.onnx_path)).graph.node  # a real graph came out


def _shared_bias_graph(path: Path) -> Path:
    """Two convs reading one bias `val_3`, and an activation named `val_30` (a Reshape output read by a
    Mul): ORT's quantizer copies the shared bias as `val_3` + '0' = `val_30`, the clash seen on shvit_s1
    after reparam+lowrank (torch's exporter names values val_N)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w1"),
        numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2, "w2"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "val_3"),
        numpy_helper.from_array(np.array([1, 8, 32, 32], np.int64), "shape"),
        numpy_helper.from_array(rng.standard_normal((8, 1, 1)).astype(np.float32), "k"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "val_3"], ["a"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("Reshape", ["a", "shape"], ["val_30"], name="rs"),
        helper.make_node("Mul", ["val_30", "k"], ["r"], name="mul"),
        helper.make_node("Conv", ["r", "w2", "val_3"], ["logits"], pads=[1, 1, 1, 1], name="c2"),
    ]
    g = helper.make_graph(nodes, "shared_bias", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 8, 32, 32])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(path))
    return path


def test_int8_survives_a_shared_bias_whose_copy_name_clashes(tmp_path):
    from _passes_util import make_ctx as _mk
    from onnxruntime.quantization import QuantFormat, quantize_static

    from edgeopt.passes._ort_quant import SampleReader, unshare_initializers

    src = _shared_bias_graph(tmp_path / "shared.onnx")
    ctx = _mk(nn.Identity(), tmp_path, n=2)
    float_out = ort_run_all(src, ctx.samples)
    ctx.references = float_out
    # the clash is real: ORT's own quantizer fails on this graph as it is
    with pytest.raises(ValueError, match="shared mode"):
        quantize_static(str(src), str(tmp_path / "raw.onnx"), SampleReader(ctx.samples, ["image"]), quant_format=QuantFormat.QDQ, per_channel=True)
    before = src.read_bytes()
    assert unshare_initializers(src, tmp_path / "unshared.onnx") == 1
    assert src.read_bytes() == before  # the source graph is never rewritten in place
    g = onnx.load(str(tmp_path / "unshared.onnx")).graph
    assert [n.input[2] for n in g.node if n.op_type == "Conv"] == ["val_3", "val_3__copy2"]
    out, rep = build_pipeline("quantize:int8")[0].run(src, ctx)
    q = ort_run_all(out, ctx.samples)
    cos = float(np.dot(q[0]["logits"].ravel(), float_out[0]["logits"].ravel())
                / np.linalg.norm(q[0]["logits"]) / np.linalg.norm(float_out[0]["logits"]))
    assert cos > 0.99 and op_histogram(out).get("QuantizeLinear", 0) >= 2


class GroupedConvNet(nn.Module):
    """A dense conv, then MobileOne/FastViT's stride-2 downsampling: a 7x7 and a 3x3 grouped conv with two
    output channels per group, summed; then a depthwise and a 1x1 conv. `relu_after_down`: a ReLU instead
    of the sum (ORT drops a ReLU before a QuantizeLinear)."""

    def __init__(self, relu_after_down: bool = False) -> None:
        super().__init__()
        self.relu_after_down = relu_after_down
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 32, 7, stride=2, padding=3, groups=16)
        self.down3 = nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=16)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw = nn.Conv2d(32, 10, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.down(x)) if self.relu_after_down else self.down(x) + self.down3(x)
        return self.pw(torch.relu(self.dw(x))).mean((2, 3))


def _ort_optimized_convs(path: Path, tmp: Path) -> dict[str, list[int]]:
    """Group sizes of the float Conv (FusedConv: Conv + Relu) and the int8 QLinearConv nodes in the graph
    ORT actually runs (its session optimiser fuses DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp / f"{path.stem}.ort_opt.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    convs: dict[str, list[int]] = {"Conv": [], "QLinearConv": []}
    for n in onnx.load(so.optimized_model_filepath).graph.node:
        op = "Conv" if n.op_type == "FusedConv" else n.op_type
        if op in convs:
            convs[op].append(next((a.i for a in n.attribute if a.name == "group"), 1))
    return {k: sorted(v) for k, v in convs.items()}


def _grouped(relu: bool, tmp_path_factory):
    torch.manual_seed(0)
    net = GroupedConvNet(relu).eval()
    work = tmp_path_factory.mktemp("qg")
    ctx = make_ctx(net, work)
    return export(net, ctx, work / "fp32.onnx"), ctx


@pytest.fixture(scope="module")
def grouped_model(tmp_path_factory):
    return _grouped(False, tmp_path_factory)


def test_int8_leaves_grouped_non_depthwise_conv_float(grouped_model, tmp_path):
    from edgeopt.passes._ort_quant import slow_int8_nodes

    path, _ = grouped_model
    g = onnx.load(str(path)).graph
    ops = {n.name: n.op_type for n in g.node}
    # the two grouped convs and the Add that reads them; neither the dense, the depthwise nor the 1x1 conv
    assert sorted(ops[k] for k in slow_int8_nodes(g)) == ["Add", "Conv", "Conv"]
    out, rep, fid = _run("quantize:int8", grouped_model)
    convs = _ort_optimized_convs(out, tmp_path)
    assert convs == {"Conv": [16, 16], "QLinearConv": [1, 1, 32]}  # grouped float on ORT; stem, dw, pw int8
    assert sorted(r["op"] for r in rep["changes"][0]["float_by_rule"]) == ["Add", "Conv", "Conv"]
    assert "3 nodes left float (1 Add, 2 Conv)" in rep["notes"][0]
    assert fid["cosine"] > 0.99


def test_int8_float_slow_ops_false_quantizes_grouped_conv(grouped_model, tmp_path):
    out, rep, fid = _run("quantize:int8,float_slow_ops=false", grouped_model)
    assert _ort_optimized_convs(out, tmp_path) == {"Conv": [], "QLinearConv": [1, 1, 16, 16, 32]}
    assert rep["changes"][0]["float_by_rule"] == [] and "left float" not in rep["notes"][0]
    assert fid["cosine"] > 0.99


def test_int8_excluding_only_the_grouped_conv_is_not_enough(grouped_model, tmp_path):
    """Why the rule keeps the consumers float too: with the grouped convs alone excluded, their inputs and
    outputs are still quantized and ORT fuses them into QLinearConv at session creation all the same."""
    path, _ = grouped_model
    g = onnx.load(str(path)).graph
    grouped = [n.name for n in g.node if n.op_type == "Conv" and any(a.name == "group" and a.i == 16 for a in n.attribute)]
    assert len(grouped) == 2
    out, _, _ = _run(f"quantize:int8,float_slow_ops=false,exclude_nodes={'|'.join(grouped)}", grouped_model)
    assert _ort_optimized_convs(out, tmp_path)["QLinearConv"] == [1, 1, 16, 16, 32]


def test_int8_grouped_conv_then_relu_stays_float(tmp_path_factory, tmp_path):
    """ORT drops a Relu between a Conv and a QuantizeLinear, so the rule keeps the Relu's reader float too."""
    model = _grouped(True, tmp_path_factory)
    out, rep, fid = _run("quantize:int8", model)
    assert sorted(r["op"] for r in rep["changes"][0]["float_by_rule"]) == ["Conv", "Conv", "Relu"]
    assert _ort_optimized_convs(out, tmp_path) == {"Conv": [16, 32], "QLinearConv": [1, 1]}
    assert fid["cosine"] > 0.99


class PoolMixerNet(nn.Module):
    """PoolFormer's token mixer (EfficientFormer): x + (avgpool(x) - x) between two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.pw = nn.Conv2d(16, 10, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + (self.pool(x) - x)
        return self.pw(x).mean((2, 3))


def _ort_optimized_ops(path: Path, tmp: Path) -> dict[str, int]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp / f"{path.stem}.ort_opt.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return op_histogram(Path(so.optimized_model_filepath))


@pytest.mark.parametrize("float_slow_ops", [True, False])
def test_int8_average_pool_float_unless_asked(tmp_path, float_slow_ops):
    torch.manual_seed(0)
    net = PoolMixerNet().eval()
    ctx = make_ctx(net, tmp_path)
    model = export(net, ctx, tmp_path / "fp32.onnx"), ctx
    out, rep, fid = _run(f"quantize:int8,float_slow_ops={str(float_slow_ops).lower()}", model)
    ops = _ort_optimized_ops(out, tmp_path)
    assert ops.get("QLinearConv", 0) == 2
    if float_slow_ops:
        assert ops.get("AveragePool", 0) == 1 and "QLinearAveragePool" not in ops
        assert "AveragePool" in {r["op"] for r in rep["changes"][0]["float_by_rule"]}
    else:
        assert ops.get("QLinearAveragePool", 0) == 1 and "AveragePool" not in ops
    assert fid["cosine"] > 0.99


def test_delegating_backends_know_the_ort_only_defaults():
    # LiteRT and ExecuTorch report an ORT-only option as not applied when it differs from this table
    from edgeopt.passes.quantize_config import QuantizeConfig
    from edgeopt.runtimes.base import ORT_ONLY_QUANTIZE_DEFAULTS, quantize_options_not_applied

    defaults = QuantizeConfig().model_dump(mode="json")
    assert {k: defaults[k] for k in ORT_ONLY_QUANTIZE_DEFAULTS} == ORT_ONLY_QUANTIZE_DEFAULTS
    assert quantize_options_not_applied(defaults, {"mode"}) == {}
    assert quantize_options_not_applied({**defaults, "float_slow_ops": False}, {"mode"}) == {"float_slow_ops": False}
