"""ExecuTorch backend: real `.pte` programs lowered to XNNPACK, run by `executorch.runtime` (no mocks).

The tiny registered classifier (tests/_tiny.py) is compiled fp32 and int8 once per module (seconds each);
small hand-written modules exercise the fallback to ExecuTorch's own kernels and an op nothing can lower.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("executorch.exir")

import edgeopt  # noqa: E402
from edgeopt.bundle import Manifest, load_bundle  # noqa: E402
from edgeopt.errors import EdgeoptError  # noqa: E402
from edgeopt.runtimes import CompileInput, get_backend  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _tiny import tiny_spec  # noqa: E402

TINY = tiny_spec().name


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """fp32 through the command line (its printed summary kept), int8 through the Python API."""
    import contextlib
    import io

    from edgeopt.cli import main

    root = tmp_path_factory.mktemp("executorch")
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        assert main(["compile", TINY, "--backend", "executorch", "-o", str(root / "fp32.bundle"), "--samples", "4"]) == 0
    (root / "fp32.txt").write_text(said.getvalue())
    return {
        "fp32": root / "fp32.bundle",
        "fp32_cli": root / "fp32.txt",
        "int8": edgeopt.compile(TINY, backend="executorch", passes="quantize:int8", output=root / "int8.bundle", samples=4).path,
    }


def _runner(bundle: Path, prelude: str = "") -> dict:
    code = "; ".join(["import sys", *([prelude] if prelude else []), "from edgeopt.runner import main", "sys.exit(main(sys.argv[1:]))"])
    p = subprocess.run(
        [sys.executable, "-c", code, str(bundle), "--warmup", "1", "--runs", "3", "--min-seconds", "0", "--threads", "1"],
        capture_output=True, text=True, timeout=180,
    )
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_fp32_pte_is_faithful_reports_delegation_and_runs_in_the_runner(bundles):
    b = load_bundle(bundles["fp32"])
    m = b.manifest
    assert (m.backend, m.precision, m.artifact) == ("executorch", "fp32", "model.pte")
    assert m.fidelity["cosine"] > 0.99999 and m.fidelity["top1_agreement"] == 1.0
    d = m.backend_details
    assert d["delegate"] == "XnnpackBackend" and d["device_needs"] == ["torch"]
    cov = d["delegation"]
    assert cov["delegated_subgraphs"] >= 1 and cov["delegated_nodes"] > cov["fallback_nodes"]
    assert cov["ops"]["aten.convolution.default"] == {"xnnpack": 3, "portable": 0}
    assert cov["ops"]["aten.linear.default"]["xnnpack"] == 2
    # what the tiny model's graph leaves to ExecuTorch's kernels is named, with the kernels the program calls
    assert cov["fallback_ops"] == sorted(k for k, v in cov["ops"].items() if v["portable"])
    assert all(k.startswith("aten::") and k.endswith(".out") for k in cov["kernels"])
    assert cov["summary"].startswith(f"XNNPACK ran {cov['delegated_nodes']} of {cov['delegated_nodes'] + cov['fallback_nodes']} ops")
    shown = " ".join(bundles["fp32_cli"].read_text().split())  # `edgeopt compile` prints the coverage
    assert "delegation XNNPACK ran" in shown and "aten.mean.dim x1" in shown, shown
    assert m.tools["executorch"] and b.artifact.read_bytes()[4:8] == b"ET12"  # the .pte flatbuffer identifier
    res = _runner(b.path)
    assert res.get("error") is None, res
    assert res["outputs_match"] is True and res["check"]["cosine"] > 0.99999 and res["runs"] >= 3
    assert res["torch_loaded"] is True  # executorch.runtime imports torch: recorded, not hidden


def test_int8_is_calibrated_pt2e_lowered_to_xnnpack(bundles):
    m = load_bundle(bundles["int8"]).manifest
    assert m.precision == "int8" and m.delegated_passes["quantize"]["mode"] == "int8"
    q = m.backend_details["quantization"]
    assert q["calibration_samples"] == 4 and "XNNPACKQuantizer" in q["method"] and "per channel" in q["weights"]
    assert 0.99 < m.fidelity["cosine"] < 0.999999  # close to fp32, not bit-exact
    assert q["float_outputs"] == ["aten.linear.default"]  # the head's output is not requantized
    ops = m.backend_details["delegation"]["ops"]
    assert ops["quantized_decomposed.quantize_per_tensor.default"]["portable"] == 0  # q/dq run inside XNNPACK
    assert ops["aten.convolution.default"] == {"xnnpack": 3, "portable": 0}
    sess = get_backend("executorch").load(bundles["int8"], m, threads=1)
    out = sess.run(load_bundle(bundles["int8"]).reference_inputs())
    assert out["logits"].dtype == np.float32 and out["logits"].shape == (1, 10)
    res = _runner(bundles["int8"])
    assert res.get("error") is None and res["outputs_match"] is True, res


def test_int8_keeps_small_logits_in_float(tmp_path):
    """Logits ~1e-5 (random-init shvit_s1's) quantized by the head to int8 would all be the zero point (cosine 0,
    as it was without the output kept float); with the head in float they follow the fp32 model."""
    import torch

    spec = tiny_spec()
    m = spec.build().eval()
    with torch.no_grad():
        m.head.weight.mul_(1e-4)
        m.head.bias.zero_()
    samples = spec.sample_inputs(4)
    with torch.no_grad():
        refs = [m(torch.from_numpy(s["image"])).numpy().ravel() for s in samples]
    assert np.abs(refs[0]).max() < 1e-4
    inp = CompileInput(TINY, "classification", ["image"], ["logits"], samples, module=m,
                       delegated={"quantize": {"mode": "int8"}}, workdir=tmp_path)
    be = get_backend("executorch")
    res = be.compile(inp, tmp_path, "host", {})
    assert res.precision == "int8" and res.details["quantization"]["float_outputs"] == ["aten.linear.default"]
    assert res.details["delegation"]["ops"]["aten.linear.default"]["portable"] == 0  # still in XNNPACK, in fp32
    man = Manifest.draft({"model": {"name": "tiny"}, "backend": "executorch", "artifact": res.artifact,
                          "inputs": [{"name": "image", "shape": [1, 3, 64, 64], "dtype": "float32"}],
                          "outputs": [{"name": "logits", "shape": [1, 10], "dtype": "float32"}], "backend_details": res.details})
    sess = be.load(tmp_path, man, threads=1)
    for s, ref in zip(samples, refs, strict=True):
        y = sess.run(s)["logits"].ravel().astype(np.float64)
        assert y @ ref / (np.linalg.norm(y) * np.linalg.norm(ref) + 1e-30) > 0.999


def test_runner_without_torch_says_what_is_missing(bundles):
    res = _runner(bundles["fp32"], prelude="sys.modules['torch'] = None")
    assert "needs torch on the device" in res["error"] and "pip install torch" in res["error"]


class _Cumsum:
    """relu (XNNPACK takes it) then cumsum (XNNPACK does not; ExecuTorch's kernel library does)."""

    @staticmethod
    def build():
        import torch

        class M(torch.nn.Module):
            def forward(self, x):
                return torch.cumsum(torch.relu(x), dim=1)

        return M().eval()


def _input(module, tmp_path) -> CompileInput:
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    return CompileInput("odd", "classification", ["x"], ["y"], [{"x": x}], module=module, workdir=tmp_path)


def test_op_xnnpack_does_not_take_runs_on_portable_kernels_and_is_named(tmp_path):
    import torch

    inp = _input(_Cumsum.build(), tmp_path)
    be = get_backend("executorch")
    res = be.compile(inp, tmp_path, "host", {})
    cov = res.details["delegation"]
    assert cov["fallback_ops"] == ["aten.cumsum.default"] and cov["ops"]["aten.relu.default"] == {"xnnpack": 1, "portable": 0}
    assert "aten::cumsum.out" in cov["kernels"] and cov["fallback_where"]["aten.cumsum.default"]
    assert cov["summary"] == "XNNPACK ran 1 of 2 ops in 1 subgraph(s); on ExecuTorch's portable kernels: aten.cumsum.default x1"
    m = Manifest.draft({"model": {"name": "odd"}, "backend": "executorch", "artifact": res.artifact,
                        "inputs": [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}],
                        "outputs": [{"name": "y", "shape": [1, 3, 8, 8], "dtype": "float32"}], "backend_details": res.details})
    y = be.load(tmp_path, m, threads=1).run(inp.samples[0])["y"]
    ref = torch.cumsum(torch.relu(torch.from_numpy(inp.samples[0]["x"])), dim=1).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    # strict delegation: the same model is refused, the op named
    with pytest.raises(EdgeoptError, match="XNNPACK did not take every op of odd: aten.cumsum.default"):
        be.compile(inp, tmp_path / "strict", "host", {"strict_delegation": True})


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_sample_with_a_zero_stride_axis_lowers_and_runs(tmp_path, precision):
    """numpy gives the batch axis that `x[None]` adds stride 0 (mobileclip's samples are made so); ExecuTorch
    refused such an example input ("0 in strides is not supported") and such a feed at run time."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).eval()
    x = np.random.default_rng(0).standard_normal((3, 8, 8)).astype(np.float32)[None]
    assert x.strides[0] == 0 and x.flags.c_contiguous
    inp = CompileInput("odd", "classification", ["x"], ["y"], [{"x": x}], module=model, workdir=tmp_path)
    be = get_backend("executorch")
    res = be.compile(inp, tmp_path, "host", {"precision": precision})
    assert res.precision == precision
    m = Manifest.draft({"model": {"name": "odd"}, "backend": "executorch", "artifact": res.artifact,
                        "inputs": [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}],
                        "outputs": [{"name": "y", "shape": [1, 4, 8, 8], "dtype": "float32"}], "backend_details": res.details})
    y = be.load(tmp_path, m, threads=1).run({"x": x})["y"]
    with torch.no_grad():
        ref = model(torch.from_numpy(np.array(x))).numpy()
    assert np.corrcoef(y.ravel(), ref.ravel())[0, 1] > 0.99


def test_int8_weight_whose_linear_xnnpack_refuses_is_dequantized_by_a_portable_kernel(tmp_path):
    """EVA's attention (TinyGPT-V's vision tower) builds its qkv bias at run time (q bias, zeros, v bias): XNNPACK
    does not take a linear with a computed bias, so the quantized weight's per-channel dequantize runs outside the
    delegate. Lowering needs that op's out variant (executorch.kernels.quantized); without it to_executorch failed
    with "Missing out variants: quantized_decomposed::dequantize_per_channel"."""
    import torch

    class QkvBias(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = torch.nn.Linear(16, 48, bias=False)
            self.q_bias = torch.nn.Parameter(torch.randn(16))
            self.v_bias = torch.nn.Parameter(torch.randn(16))
            self.proj = torch.nn.Linear(48, 8)  # the output's producer, which stays float: the qkv weight is quantized

        def forward(self, x):
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
            return self.proj(torch.nn.functional.linear(x, self.qkv.weight, bias))

    torch.manual_seed(0)
    model = QkvBias().eval()
    samples = [{"x": np.random.default_rng(i).standard_normal((1, 5, 16)).astype(np.float32)} for i in range(4)]
    inp = CompileInput("qkv", "classification", ["x"], ["y"], samples, module=model, delegated={"quantize": {"mode": "int8"}},
                       workdir=tmp_path)
    be = get_backend("executorch")
    res = be.compile(inp, tmp_path, "host", {})
    cov = res.details["delegation"]
    assert res.precision == "int8" and "quantized_decomposed.dequantize_per_channel.default" in cov["fallback_ops"]
    assert "quantized_decomposed::dequantize_per_channel.out" in cov["kernels"]
    m = Manifest.draft({"model": {"name": "qkv"}, "backend": "executorch", "artifact": res.artifact,
                        "inputs": [{"name": "x", "shape": [1, 5, 16], "dtype": "float32"}],
                        "outputs": [{"name": "y", "shape": [1, 5, 8], "dtype": "float32"}], "backend_details": res.details})
    sess = be.load(tmp_path, m, threads=1)
    for s in samples:
        with torch.no_grad():
            ref = model(torch.from_numpy(s["x"])).numpy().ravel()
        y = sess.run(s)["y"].ravel()
        assert y @ ref / (np.linalg.norm(y) * np.linalg.norm(ref)) > 0.99
    # and in a fresh process, as the device runner loads it (the compiling process had registered the kernels)
    probe = ("import sys; from pathlib import Path; from edgeopt.runtimes.executorch import ExecuTorchSession; "
             "ExecuTorchSession(Path(sys.argv[1]), ['x'], ['y'], threads=1); print('LOADED')")
    p = subprocess.run([sys.executable, "-c", probe, str(tmp_path / res.artifact)], capture_output=True, text=True, timeout=300)
    assert "LOADED" in p.stdout, p.stderr[-2000:]


def test_op_nothing_can_lower_fails_with_the_op_named(tmp_path):
    import torch

    class Odd(torch.nn.Module):
        def forward(self, x):
            return torch.erfinv(x.clamp(-0.5, 0.5))

    with pytest.raises(EdgeoptError) as ei:
        get_backend("executorch").compile(_input(Odd().eval(), tmp_path), tmp_path, "host", {})
    assert "aten.erfinv" in str(ei.value) and "aten.erfinv" in ei.value.hint
    assert not (tmp_path / "model.pte").exists()


@pytest.mark.parametrize("mode", ["dynamic", "int4"])
def test_modes_it_does_not_build_are_refused_before_any_work(tmp_path, mode):
    said: list[str] = []
    with pytest.raises(EdgeoptError, match=f"executorch cannot build quantize mode '{mode}'") as ei:
        edgeopt.compile(TINY, backend="executorch", passes=f"quantize:mode={mode}", output=tmp_path / "x", samples=1, progress=said.append)
    assert "supported on executorch: fp32, int8" in ei.value.hint
    assert said == [] and not (tmp_path / "x").exists()


def test_backend_is_in_the_capability_table_and_the_auto_grid():
    from edgeopt import capabilities as cap
    from edgeopt.harness.devices import _probe
    from edgeopt.orchestrate.boards import plan_build
    from edgeopt.runtimes.table import auto_grid, capability_table

    table = [(b, m.precision) for b, m in capability_table()]
    assert ("executorch", "fp32") in table and ("executorch", "int8") in table
    assert cap.how("executorch", "int8") == {"backend": "executorch", "passes": "quantize:int8", "options": {}}
    assert "torch" in cap.get_cell("executorch", "fp32").runs_on
    grid = [(b, m.precision) for b, m in auto_grid()]
    assert ("executorch", "int8") in grid and ("executorch", "fp32") in grid
    assert all(b == "onnxruntime" for b, _ in auto_grid(["onnxruntime"]))  # an explicit list keeps it out
    # plain ORT first; then the int8 paths cheapest to compile first; unique ranks, so a stable order
    assert grid[:5] == [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("tflite", "dynamic"), ("executorch", "int8"),
                        ("tflite", "int8")]
    ranks = [m.auto_rank for _, m in auto_grid()]
    assert len(set(ranks)) == len(ranks)
    # the local snapshot reports it; a board without it does not build it
    assert "executorch" in _probe.runtimes() and "torch" in _probe.runtimes()
    build = plan_build({"arch": "x86_64", "runtimes": {"onnxruntime": "1.20"}}, ["onnxruntime", "executorch"], label="b")
    assert build.backends == ("onnxruntime",) and "no executorch runtime" in build.why_not("executorch")
    assert get_backend("executorch").available()[0] is True


@pytest.mark.slow
@pytest.mark.parametrize("precision,min_cos", [("fp32", 0.9999), ("int8", 0.99)])
def test_efficientformer_l1(tmp_path, precision, min_cos):
    from edgeopt import capabilities as cap

    module, label = cap.live_weights("efficientformer_l1")
    b = edgeopt.compile("efficientformer_l1", backend="executorch", passes="quantize:int8" if precision == "int8" else None,
                        output=tmp_path / "b", samples=8, module=module, weights_info=label)
    assert b.manifest.precision == precision and b.manifest.fidelity["cosine"] > min_cos
    cov = b.manifest.backend_details["delegation"]
    assert cov["delegated_nodes"] > 10 * cov["fallback_nodes"]
    res = edgeopt.profile(b.path, runs=5, warmup=1, min_seconds=0, store=False)
    assert res["outputs_match"] is True
