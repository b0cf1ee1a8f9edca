"""LiteRT/TFLite backend: real litert-torch conversions run by the ai-edge-litert interpreter.

Default tests use a tiny registered classifier (tests/_tiny.py, real photos in) so each conversion
takes seconds; efficientformer_l1 at every precision is under `slow`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

import edgeopt  # noqa: E402
from edgeopt.bundle import Manifest, load_bundle  # noqa: E402
from edgeopt.errors import EdgeoptError  # noqa: E402
from edgeopt.runtimes import CompileInput, get_backend  # noqa: E402
from edgeopt.runtimes.tflite import check_no_flex, tflite_ops  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _tiny import tiny_spec  # noqa: E402

TINY = tiny_spec().name


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """The tiny model at all four precisions: fp32, static int8 (through the delegated quantize pass),
    dynamic int8 and fp16 (through the precision option)."""
    root = tmp_path_factory.mktemp("tflite")
    out = {}
    for key, passes, opts in [
        ("fp32", None, {}),
        ("int8", "quantize:int8", {}),
        ("dynamic", None, {"precision": "dynamic"}),
        ("fp16", None, {"precision": "fp16"}),
    ]:
        out[key] = edgeopt.compile(TINY, backend="litert", passes=passes, options=opts, output=root / f"{key}.bundle", samples=4).path
    return out


def test_fp32_bundle_is_faithful_and_runs_without_torch(bundles):
    b = load_bundle(bundles["fp32"])
    m = b.manifest
    assert m["backend"] == "tflite" and m["precision"] == "fp32" and m["artifact"] == "model.tflite"
    assert m["fidelity"]["cosine"] > 0.99999 and m["fidelity"]["top1_agreement"] == 1.0
    d = m["backend_details"]
    assert d["io"] == {"inputs": {"image": "args_0"}, "outputs": {"logits": "output_0"}}
    assert d["ops"].get("CONV_2D", 0) + d["ops"].get("DEPTHWISE_CONV_2D", 0) >= 3
    assert "FULLY_CONNECTED" in d["ops"] and d["custom_ops"] == []
    assert m["tools"]["litert-torch"] and m["tools"]["ai-edge-litert"]
    # the .tflite itself: a TFL3 flatbuffer whose op table matches what the manifest says
    data = b.artifact.read_bytes()
    assert data[4:8] == b"TFL3"
    assert dict(tflite_ops(data)[0]) == d["ops"]
    p = subprocess.run(
        [sys.executable, "-m", "edgeopt.runner", str(b.path), "--warmup", "1", "--runs", "5", "--min-seconds", "0", "--threads", "1"],
        capture_output=True, text=True, timeout=120,
    )
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res.get("error") is None, res
    assert res["torch_loaded"] is False and res["outputs_match"] is True and res["runs"] >= 5
    assert res["check"]["cosine"] > 0.99999


def test_quantize_pass_is_delegated_as_static_int8(bundles):
    m = load_bundle(bundles["int8"]).manifest
    assert m["precision"] == "int8"
    assert m["delegated_passes"]["quantize"]["mode"] == "int8"
    q = m["backend_details"]["quantization"]
    assert q["calibration_samples"] == 4 and "PT2E" in q["method"]
    # calibrated int8 of a tiny net stays close, but is not bit-exact
    assert 0.99 < m["fidelity"]["cosine"] < 0.999999
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(bundles["int8"] / "model.tflite"))
    assert it.get_input_details()[0]["dtype"] == np.int8  # int8 input, quantized by the session
    assert it.get_output_details()[0]["dtype"] == np.float32  # the logits stay float (see _float_outputs)
    assert q["float_outputs"] == ["aten.linear.default"]
    sess = get_backend("tflite").load(bundles["int8"], m, threads=1)
    ref = load_bundle(bundles["int8"]).reference_inputs()
    out = sess.run(ref)
    assert out["logits"].dtype == np.float32 and out["logits"].shape == (1, 10)


def test_dynamic_and_fp16_shrink_the_file_and_stay_close(bundles):
    size = {k: load_bundle(p).size_bytes() for k, p in bundles.items()}
    for k in ("dynamic", "fp16", "int8"):
        assert size[k] < size["fp32"], size
    fid = {k: load_bundle(p).manifest["fidelity"]["cosine"] for k, p in bundles.items()}
    assert fid["fp16"] > 0.99999 and fid["fp16"] < 1.0
    assert 0.99 < fid["dynamic"] < 0.999999
    fp16_ops = load_bundle(bundles["fp16"]).manifest["backend_details"]["ops"]
    assert fp16_ops.get("DEQUANTIZE", 0) >= 3  # fp16 weights dequantized to fp32 at load


def test_static_int8_keeps_small_logits_in_float(tmp_path):
    """shvit_s1's bug in small: logits far below the calibrated int8 output step all quantized to the zero
    point (cosine 0). With the output kept in float they follow the fp32 model."""
    import torch

    spec = tiny_spec()
    m = spec.build().eval()
    with torch.no_grad():  # logits ~1e-5, as random-init shvit_s1's
        m.head.weight.mul_(1e-4)
        m.head.bias.zero_()
    samples = spec.sample_inputs(4)
    with torch.no_grad():
        refs = [m(torch.from_numpy(s["image"])).numpy().ravel() for s in samples]
    assert np.abs(refs[0]).max() < 1e-4
    inp = CompileInput(TINY, "classification", ["image"], ["logits"], samples, module=m,
                       delegated={"quantize": {"mode": "int8"}}, workdir=tmp_path)
    be = get_backend("tflite")
    res = be.compile(inp, tmp_path, "host", {})
    assert res.precision == "int8" and res.details["quantization"]["float_outputs"] == ["aten.linear.default"]
    assert "QUANTIZE" in res.details["ops"]  # the body is still int8
    m = Manifest.draft({"model": {"name": "tiny"}, "backend": "tflite", "artifact": res.artifact, "backend_details": res.details})
    sess = be.load(tmp_path, m, threads=1)
    for s, ref in zip(samples, refs, strict=True):
        y = sess.run(s)["logits"].ravel().astype(np.float64)
        assert y @ ref / (np.linalg.norm(y) * np.linalg.norm(ref) + 1e-30) > 0.999


@pytest.mark.parametrize("mode,why", [("int4", "MatMulNBits"), ("mixed", "node by node on the ONNX graph")])
def test_int4_and_mixed_are_refused_before_any_work(tmp_path, mode, why):
    said: list[str] = []
    with pytest.raises(EdgeoptError, match=f"tflite cannot build quantize mode '{mode}'.*{why}") as ei:
        edgeopt.compile(TINY, backend="litert", passes=f"quantize:mode={mode}", output=tmp_path / "x", samples=1, progress=said.append)
    assert "supported on tflite: fp32, fp16, dynamic" in ei.value.hint and "onnxruntime" in ei.value.hint
    assert said == [] and not (tmp_path / "x").exists()  # refused before the model was even built


def test_unknown_precision_is_a_clear_error(tmp_path):
    with pytest.raises(EdgeoptError, match="cannot build precision 'int3'.*fp32, fp16, dynamic"):
        edgeopt.compile(TINY, backend="tflite", options={"precision": "int3"}, output=tmp_path / "x", samples=1)
    assert not (tmp_path / "x").exists()


def test_op_without_lowering_names_op_and_node(tmp_path):
    import torch

    class Odd(torch.nn.Module):
        def forward(self, x):
            return torch.erfinv(x.clamp(-0.5, 0.5))

    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    inp = CompileInput("odd", "classification", ["x"], ["y"], [{"x": x}], module=Odd().eval(), workdir=tmp_path)
    with pytest.raises(EdgeoptError) as ei:
        get_backend("tflite").compile(inp, tmp_path, "host", {"precision": "fp32"})
    assert "aten.erfinv" in str(ei.value) and "node erfinv" in str(ei.value)
    assert not (tmp_path / "model.tflite").exists()


def test_flex_ops_are_refused_with_their_names(bundles):
    """Rewrite a real model's op table so two ops become Flex custom ops, as TF's converter writes them."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    data = (bundles["fp32"] / "model.tflite").read_bytes()
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    for oc, flex in zip(model.operatorCodes[:2], ("FlexErf", "FlexRoll"), strict=True):
        oc.builtinCode = oc.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
        oc.customCode = flex
    b = flatbuffers.Builder(len(data) + 1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    with pytest.raises(EdgeoptError, match="Flex \\(Select TF\\) ops on tflite: FlexErf, FlexRoll"):
        check_no_flex(bytes(b.Output()), "tiny")
    counts, custom = check_no_flex(data, "tiny")  # the untouched model passes
    assert custom == [] and sum(counts.values()) > 10


@pytest.mark.slow
@pytest.mark.parametrize("precision,min_cos", [("fp32", 0.9999), ("fp16", 0.999), ("dynamic", 0.99), ("int8", 0.95)])
def test_efficientformer_l1_every_precision(tmp_path, precision, min_cos):
    passes = "quantize:int8" if precision == "int8" else None
    opts = {} if precision == "int8" else {"precision": precision}
    b = edgeopt.compile("efficientformer_l1", backend="tflite", passes=passes, options=opts, output=tmp_path / "b", samples=8)
    assert b.manifest["precision"] == precision
    assert b.manifest["fidelity"]["cosine"] > min_cos
    res = edgeopt.profile(b.path, runs=5, warmup=1, min_seconds=0, store=False)
    assert res["outputs_match"] is True
