"""ONNX graphs with external data: `model.onnx` plus ONE `model.onnx.data` in the bundle.

Export (both exporters, forced), the layout copy (several data files merged, locations outside the graph's
folder refused), bundles (the data file hashed, verified, counted in the size), the device runner, the
quantize modes on an external-data graph, a push to a real sshd, and (slow) a real graph over 2 GiB.
Real ONNX Runtime throughout; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _sshd import sshd_missing

import edgeopt
from edgeopt._ort import ALIGN, copy_onnx, onnx_bytes, ort_run_all, uses_external_data
from edgeopt.bundle import load_bundle
from edgeopt.errors import BundleError, EdgeoptError

SPEC = "ext_data_mlp_test"
BIG_SPEC = "ext_data_big_embedding_test"


# -- models -----------------------------------------------------------------------------------------------


def _mlp(**_kw):
    import torch
    from torch import nn

    torch.manual_seed(0)

    class MLP(nn.Module):
        """Token MLP: MatMul with constant weights (what int4 quantizes), then a pooled classifier head."""

        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(128, 256)
            self.fc2 = nn.Linear(256, 128)
            self.head = nn.Linear(128, 10)

        def forward(self, x):
            h = torch.relu(self.fc1(x))
            return self.head((x + self.fc2(h)).mean(1))

    return MLP().eval()


def _mlp_samples(n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((1, 8, 128)).astype(np.float32)} for _ in range(n)]


# 530_000 rows x 1024 float32 = 2.17 GB (> 2 GiB): a Gather table protobuf cannot hold inline.
BIG_ROWS, BIG_DIM, BIG_STRIDE = 530_000, 1024, 997


def _big(**_kw):
    import torch
    from torch import nn

    class Table(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(BIG_ROWS, BIG_DIM)

        def forward(self, ids):
            return self.emb(ids).mean(1)

    torch.manual_seed(0)
    m = Table()
    with torch.no_grad():  # rows the samples read hold values; the rest is zeros (cheap to make)
        m.emb.weight.zero_()
        m.emb.weight[::BIG_STRIDE] = torch.randn(len(range(0, BIG_ROWS, BIG_STRIDE)), BIG_DIM)
    return m.eval()


def _big_samples(n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(2)
    return [{"ids": (rng.integers(0, BIG_ROWS // BIG_STRIDE, (1, 8)) * BIG_STRIDE).astype(np.int64)} for _ in range(n)]


def _register() -> None:
    from edgeopt.models.registry import _REGISTRY, InputSpec, ModelSpec, _discover, register

    _discover()
    if SPEC not in _REGISTRY:
        register(ModelSpec(name=SPEC, family="ext_data_test", task="classification", builder=_mlp,
                           inputs=(InputSpec("x", (1, 8, 128)),), outputs=("logits",), sample_inputs=_mlp_samples,
                           description="test-only token MLP"))
    if BIG_SPEC not in _REGISTRY:
        register(ModelSpec(name=BIG_SPEC, family="ext_data_test", task="classification", builder=_big,
                           inputs=(InputSpec("ids", (1, 8), "int64"),), outputs=("logits",), sample_inputs=_big_samples,
                           description="test-only 2.17 GB embedding table"))


def _compile_external(out: Path, passes: str | None = None, **kw) -> Path:
    """Compile the MLP through the normal path with the export's external-data threshold at 0 bytes."""
    import edgeopt.export

    _register()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(edgeopt.export, "EXTERNAL_DATA_MIN_BYTES", 0)
        return edgeopt.compile(SPEC, passes=passes, output=out, samples=4, **kw).path


def _locations(path: Path) -> set[str]:
    import onnx

    from edgeopt._ort import _all_tensors

    m = onnx.load(str(path), load_external_data=False)
    return {e.value for t in _all_tensors(m) for e in t.external_data if e.key == "location"}


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory) -> Path:
    return _compile_external(tmp_path_factory.mktemp("ext") / "fp32.bundle")


# -- export and layout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_export_forced_external_data(exporter, tmp_path):
    from edgeopt.export import export_onnx, torch_outputs

    m, x = _mlp(), _mlp_samples(1)[0]
    path = tmp_path / "exported.onnx"
    info = export_onnx(m, x, ["x"], ["logits"], path, prefer=exporter, external_data=True)
    assert info.exporter == exporter and info.external_data is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported.onnx", "exported.onnx.data"]
    assert _locations(path) == {"exported.onnx.data"} and uses_external_data(path)
    assert onnx_bytes(path) == path.stat().st_size + (tmp_path / "exported.onnx.data").stat().st_size
    ref = torch_outputs(m, x, ["x"], ["logits"])["logits"]
    np.testing.assert_allclose(ort_run_all(path, [x])[0]["logits"], ref, rtol=1e-4, atol=1e-5)
    # the default rule (parameters < 2 GiB): one self-contained file, the earlier data file gone
    info = export_onnx(m, x, ["x"], ["logits"], path, prefer=exporter)
    assert info.external_data is False and sorted(p.name for p in tmp_path.iterdir()) == ["exported.onnx"]


def _scattered_graph(folder: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A graph whose tensors lie in two data files (one in a subfolder, after junk bytes) plus one inline."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((64, 1024)).astype(np.float32)  # 256 KiB
    w2 = rng.standard_normal((1024, 512)).astype(np.float32)  # 2 MiB: page-aligned when merged
    b2 = rng.standard_normal(512).astype(np.float32)
    (folder / "sub").mkdir(parents=True)
    with open(folder / "a.bin", "wb") as f:
        f.write(b"junk" * 25)
        f.write(w1.tobytes())
    (folder / "sub" / "b.bin").write_bytes(b2.tobytes() + w2.tobytes())
    t1, t2, t3 = numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")
    for t, loc, off in ((t1, "a.bin", 100), (t2, "sub/b.bin", b2.nbytes)):
        n = len(t.raw_data)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", loc), ("offset", str(off)), ("length", str(n))):
            e = t.external_data.add()
            e.key, e.value = k, v
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["h2"]),
         helper.make_node("Add", ["h2", "b2"], ["y"])],
        "scattered", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 512])], initializer=[t1, t2, t3])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = folder / "g.onnx"
    path.write_bytes(m.SerializeToString())
    return path, {"x": rng.standard_normal((1, 64)).astype(np.float32)}


def test_copy_onnx_merges_data_files_into_one(tmp_path):
    import onnx

    src, x = _scattered_graph(tmp_path / "src")
    want = ort_run_all(src, [x])[0]["y"]
    before = _tree_hash(src.parent)
    dst = tmp_path / "out" / "model.onnx"
    dst.parent.mkdir()
    assert copy_onnx(src, dst) is True
    assert sorted(p.name for p in dst.parent.iterdir()) == ["model.onnx", "model.onnx.data"]  # no temporaries left
    assert _locations(dst) == {"model.onnx.data"} and _tree_hash(src.parent) == before  # src untouched
    offsets = {t.name: {e.key: int(e.value) for e in t.external_data if e.key != "location"}
               for t in onnx.load(str(dst), load_external_data=False).graph.initializer if t.external_data}
    assert set(offsets) == {"w1", "w2"} and offsets["w2"]["offset"] % ALIGN == 0
    np.testing.assert_array_equal(ort_run_all(dst, [x])[0]["y"], want)
    # a stale data file of an earlier copy is replaced, never appended to
    copy_onnx(src, dst)
    np.testing.assert_array_equal(ort_run_all(dst, [x])[0]["y"], want)
    # an inline graph copied over it: byte for byte, and the old data file removed
    inline = tmp_path / "inline.onnx"
    onnx.save(onnx.load(str(src)), str(inline))
    assert copy_onnx(inline, dst) is False and dst.read_bytes() == inline.read_bytes()
    assert sorted(p.name for p in dst.parent.iterdir()) == ["model.onnx"]


def _relocate(path: Path, name: str, location: str) -> None:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        if t.name == name:
            next(e for e in t.external_data if e.key == "location").value = location
    path.write_bytes(m.SerializeToString())


@pytest.mark.parametrize("where", ["parent", "absolute", "link"])
def test_location_outside_the_graph_folder_is_refused(where, tmp_path):
    from edgeopt.runtimes.base import CompileInput, get_backend

    src, _ = _scattered_graph(tmp_path / "src")
    outside = tmp_path / "outside.bin"
    shutil.copyfile(src.parent / "a.bin", outside)
    if where == "parent":
        _relocate(src, "w1", "../outside.bin")
    elif where == "absolute":
        _relocate(src, "w1", str(outside))
    else:
        os.symlink(outside, src.parent / "link.bin")
        _relocate(src, "w1", "link.bin")
    with pytest.raises(EdgeoptError, match="outside the graph's folder"):
        copy_onnx(src, tmp_path / "model.onnx")
    inp = CompileInput(model_name="g", task="classification", input_names=["x"], output_names=["y"], samples=[],
                       onnx_path=src, workdir=tmp_path)
    out = tmp_path / "bundle"
    out.mkdir()
    with pytest.raises(EdgeoptError, match="outside the graph's folder"):
        get_backend("onnxruntime").compile(inp, out, "host", {})
    assert not (out / "model.onnx").exists() and not (out / "model.onnx.data").exists()


def test_truncated_source_data_is_refused(tmp_path):
    src, _ = _scattered_graph(tmp_path / "src")
    with open(src.parent / "sub" / "b.bin", "r+b") as f:
        f.truncate(4096)
    with pytest.raises(EdgeoptError, match="truncated"):
        copy_onnx(src, tmp_path / "model.onnx")


# -- bundles ----------------------------------------------------------------------------------------------


def test_bundle_holds_hashes_and_sizes_the_data_file(fp32_bundle):
    b = load_bundle(fp32_bundle)
    m = b.manifest
    data = fp32_bundle / "model.onnx.data"
    assert "model.onnx.data" in m.files and m.files["model.onnx.data"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert m.size_bytes == (fp32_bundle / "model.onnx").stat().st_size + data.stat().st_size == b.size_bytes()
    assert m.backend_details == {"external_data": "model.onnx.data"} and m.export["external_data"] is True
    assert _locations(fp32_bundle / "model.onnx") == {"model.onnx.data"}
    assert m.fidelity["cosine"] > 0.9999
    assert sorted(p.name for p in fp32_bundle.iterdir()) == ["manifest.json", "model.onnx", "model.onnx.data", "reference"]


@pytest.mark.parametrize("damage", ["altered", "truncated", "removed"])
def test_verify_refuses_a_damaged_data_file(damage, fp32_bundle, tmp_path):
    b = tmp_path / "copy.bundle"
    shutil.copytree(fp32_bundle, b)
    data = b / "model.onnx.data"
    if damage == "altered":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "truncated":
        with open(data, "r+b") as f:
            f.truncate(data.stat().st_size - 4)
    else:
        data.unlink()
    want = "model.onnx.data is missing" if damage == "removed" else "sha256 of model.onnx.data"
    with pytest.raises(BundleError, match=want):
        load_bundle(b)
    p = subprocess.run([sys.executable, "-m", "edgeopt.runner", str(b), "--warmup", "0", "--runs", "1", "--min-seconds", "0"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "model.onnx.data" in json.loads(p.stdout.strip().splitlines()[-1])["error"]


def test_runner_loads_and_measures(fp32_bundle):
    p = subprocess.run([sys.executable, "-m", "edgeopt.runner", str(fp32_bundle), "--warmup", "1", "--runs", "5", "--min-seconds", "0"],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["outputs_match"] is True and res["runs"] >= 5 and res["bundle_sha256"] == load_bundle(fp32_bundle).sha256


# -- the quantize modes on an external-data graph --------------------------------------------------------

# dynamic: a graph with external data is quantized MatMul by MatMul (`_ort_quant.dynamic_int8_streamed`)
_MODE_OPS = {"int8": "QuantizeLinear", "dynamic": "DynamicQuantizeMatMul", "fp16": "Cast", "int4": "MatMulNBits"}


@pytest.mark.parametrize("mode", ["int8", "dynamic", "fp16", "int4"])
def test_quantize_modes_keep_external_data(mode, tmp_path):
    from edgeopt.passes._measure import op_histogram

    path = _compile_external(tmp_path / f"{mode}.bundle", passes=f"quantize:{mode}")
    b = load_bundle(path)
    m = b.manifest
    assert "model.onnx.data" in m.files and _locations(path / "model.onnx") == {"model.onnx.data"}
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "model.onnx", "model.onnx.data", "reference"]
    assert op_histogram(path / "model.onnx").get(_MODE_OPS[mode], 0) > 0
    rep = m.passes[-1]
    # sizes count the data files: the exported fp32 weights are 268 KB, its graph file alone a few KB
    assert rep["name"] == "quantize" and rep["size_before"] > 260_000 and 0 < rep["size_after"] < rep["size_before"]
    assert m.fidelity["cosine"] > (0.99 if mode == "int4" else 0.999)
    outs = ort_run_all(path / "model.onnx", [b.reference_inputs()])[0]
    assert np.corrcoef(outs["logits"].ravel(), b.reference_outputs()["logits"].ravel())[0, 1] > 0.99


# -- an SSH board -----------------------------------------------------------------------------------------


@pytest.mark.skipif(sshd_missing() is not None, reason=str(sshd_missing()))
def test_ssh_push_verify_and_profile(sshd, fp32_bundle, tmp_path):
    from edgeopt.harness.devices import get_device
    from edgeopt.harness.protocol import Protocol, measure

    board = tmp_path / "board"
    d = get_device(sshd.uri, identity=str(sshd.identity), known_hosts=str(sshd.trusted_known_hosts()),
                   python=sys.executable, remote_dir=str(board))
    b = load_bundle(fp32_bundle)
    try:
        remote = d.push(b)
        assert d.last_push_skipped is False
        copied = board / "bundles" / b.sha256 / "model.onnx.data"
        assert copied.read_bytes() == (fp32_bundle / "model.onnx.data").read_bytes()
        d.push(b)
        assert d.last_push_skipped is True
        # a damaged data file on the board fails the board's own check and is pushed again
        with open(copied, "r+b") as f:
            f.truncate(16)
        assert d.push(b) == remote and d.last_push_skipped is False
        assert copied.stat().st_size == (fp32_bundle / "model.onnx.data").stat().st_size
        res = measure(d, b.path, Protocol(warmup=1, runs=5, min_seconds=0.0, cooldown=False))
    finally:
        d.close()
    assert res["bundle_sha256"] == b.sha256 and res["outputs_match"] is True and res["runs"] >= 5


# -- a real graph over 2 GiB ------------------------------------------------------------------------------


@pytest.mark.slow
def test_graph_over_2_gib_compiles_verifies_and_runs(tmp_path):
    """A 2.17 GB embedding table through the default rule (no forcing): exported with external data,
    bundled, verified and measured by the runner. Peak memory stays near two copies of the table."""
    _register()
    b = edgeopt.compile(BIG_SPEC, output=tmp_path / "big.bundle", samples=2)
    data = b.path / "model.onnx.data"
    assert b.manifest.export["external_data"] is True and data.stat().st_size > 2 * 1024**3
    assert (b.path / "model.onnx").stat().st_size < 1024**2 and _locations(b.path / "model.onnx") == {"model.onnx.data"}
    assert b.manifest.size_bytes > 2 * 1024**3 and "model.onnx.data" in b.manifest.files
    assert b.manifest.fidelity["cosine"] > 0.9999
    p = subprocess.run([sys.executable, "-m", "edgeopt.runner", str(b.path), "--warmup", "1", "--runs", "3", "--min-seconds", "0"],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["outputs_match"] is True and res["bundle_sha256"] == b.sha256


@pytest.mark.skipif(sshd_missing() is not None, reason=str(sshd_missing()))
def test_ssh_streamed_writes(sshd, fp32_bundle, tmp_path):
    """push_file streams a file (and tolerates a board that already has it and reads nothing); a push that
    outlives push_timeout is killed and said so."""
    from edgeopt.errors import DeviceError
    from edgeopt.harness.devices import get_device

    opts = {"identity": str(sshd.identity), "known_hosts": str(sshd.trusted_known_hosts()), "python": sys.executable,
            "remote_dir": str(tmp_path / "board")}
    big = tmp_path / "blob.bin"
    big.write_bytes(os.urandom(3 * 1024**2))
    d = get_device(sshd.uri, **opts)
    try:
        remote = d.push_file(big)
        assert Path(remote).read_bytes() == big.read_bytes()
        assert d.push_file(big) == remote  # already there: the board reads no stdin
    finally:
        d.close()
    d = get_device(sshd.uri, **opts, push_timeout=0.01)
    try:
        with pytest.raises(DeviceError, match="did not finish within"):
            d.push(load_bundle(fp32_bundle))
    finally:
        d.close()


# -- dynamic int8 of a graph with external data: streamed, one weight at a time -------------------------


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def mlp_external(tmp_path_factory) -> tuple[Path, list[dict[str, np.ndarray]], np.ndarray]:
    """The token MLP exported with external data forced, 16 samples and its fp32 torch outputs on them."""
    from edgeopt.export import export_onnx, torch_outputs

    m, xs = _mlp(), _mlp_samples(16)
    path = tmp_path_factory.mktemp("dyn") / "src" / "fp32.onnx"
    path.parent.mkdir()
    assert export_onnx(m, xs[0], ["x"], ["logits"], path, external_data=True).external_data is True
    return path, xs, np.concatenate([torch_outputs(m, x, ["x"], ["logits"])["logits"] for x in xs])


def test_dynamic_quantize_streams_a_graph_with_external_data(mlp_external, tmp_path):
    import onnx

    from edgeopt.passes.base import PassContext
    from edgeopt.passes.pipeline import build_pipeline

    src, xs, ref = mlp_external
    before = _tree_hash(src.parent)
    ctx = PassContext(model_name="mlp", task="classification", input_names=["x"], output_names=["logits"],
                      samples=xs[:4], references=[], workdir=tmp_path)
    (p,) = build_pipeline("quantize:dynamic")
    out, rep = p.run(src, ctx)
    rep = rep.to_dict()
    ops = {n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node}
    assert "DynamicQuantizeMatMul" in ops and "MatMul" not in ops and "Gemm" in ops  # the 2-D head stays float
    details = rep["changes"][0]
    assert details["method"] == "streamed DynamicQuantizeMatMul" and details["dynamic_quantize_matmul"] == 2
    assert details["gemm_left_float"] == 1 and details["weight_type"] == "int8" and rep["precision"] == "dynamic"
    # one data file, in dst's folder, no temporaries left; src and its data file untouched
    assert out.parent == tmp_path and _locations(out) == {out.name + ".data"}
    assert sorted(q.name for q in tmp_path.iterdir()) == [out.name, out.name + ".data"]
    assert _tree_hash(src.parent) == before
    assert 0 < rep["size_after"] < 0.5 * rep["size_before"]
    got = np.concatenate([o["logits"] for o in ort_run_all(out, xs)])
    fp32 = np.concatenate([o["logits"] for o in ort_run_all(src, xs)])
    assert _cosine(got, fp32) > 0.999 and _cosine(got, ref) > 0.999
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


@pytest.mark.parametrize("key, value", [("weight_type", "uint8"), ("per_channel", False), ("exclude_nodes", "FIRST")])
def test_dynamic_streamed_options(key, value, mlp_external, tmp_path):
    import onnx

    from edgeopt.passes._ort_quant import dynamic_int8
    from edgeopt.passes.quantize_config import QuantizeConfig

    src, xs, ref = mlp_external
    first = next(n.name for n in onnx.load(str(src), load_external_data=False).graph.node if n.op_type == "MatMul")
    cfg = QuantizeConfig(mode="dynamic", **{key: [first] if value == "FIRST" else value})
    dst = tmp_path / "q.onnx"
    details = dynamic_int8(src, dst, cfg)
    g = onnx.load(str(dst), load_external_data=False).graph
    quantized = [n for n in g.node if n.op_type == "DynamicQuantizeMatMul"]
    assert len(quantized) == details["dynamic_quantize_matmul"] == (1 if key == "exclude_nodes" else 2)
    assert details["matmul_left_float"] == (1 if key == "exclude_nodes" else 0)
    assert (first in {n.name for n in quantized}) == (key != "exclude_nodes")  # quantized nodes keep their names
    inits = {t.name: t for t in g.initializer}
    weight, scale = inits[quantized[0].input[1]], inits[quantized[0].input[2]]
    assert weight.data_type == (onnx.TensorProto.UINT8 if value == "uint8" else onnx.TensorProto.INT8)
    assert list(scale.dims) == ([] if key == "per_channel" else [weight.dims[1]])
    got = np.concatenate([o["logits"] for o in ort_run_all(dst, xs)])
    assert _cosine(got, ref) > 0.999


def test_dynamic_streamed_without_a_matmul_to_quantize_is_refused(mlp_external, tmp_path):
    from edgeopt.passes._ort_quant import dynamic_int8
    from edgeopt.passes.quantize_config import QuantizeConfig

    src, _, _ = mlp_external
    with pytest.raises(EdgeoptError, match="found no MatMul with a constant 2-D"):
        dynamic_int8(src, tmp_path / "q.onnx", QuantizeConfig(mode="dynamic", op_types=["Conv"]))
    assert list(tmp_path.iterdir()) == []


def test_compile_dynamic_with_external_data_is_measured(tmp_path):
    """`quantize:dynamic` through api.compile with external data forced (the module passed in): the bundle
    holds the streamed graph and its data file, and the device runner verifies and measures it."""
    _register()
    b = edgeopt.compile(SPEC, passes="quantize:dynamic", output=tmp_path / "dyn.bundle", samples=4,
                        external_data=True, module=_mlp())
    m = b.manifest
    assert m.export["external_data"] is True and "model.onnx.data" in m.files
    assert _locations(b.path / "model.onnx") == {"model.onnx.data"}
    rep = m.passes[-1]
    assert rep["name"] == "quantize" and rep["precision"] == "dynamic"
    assert rep["changes"][0]["method"] == "streamed DynamicQuantizeMatMul"
    assert m.fidelity["cosine"] > 0.999
    p = subprocess.run([sys.executable, "-m", "edgeopt.runner", str(b.path), "--warmup", "1", "--runs", "5", "--min-seconds", "0"],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["outputs_match"] is True and res["runs"] >= 5 and res["bundle_sha256"] == b.sha256


def test_dynamic_streams_an_inline_graph_above_the_threshold(monkeypatch, tmp_path):
    """A graph without external data but above EXTERNAL_DATA_ABOVE (here lowered to 0 bytes) is streamed
    too: its inline weights are read from the protobuf, the quantized ones written to one data file."""
    import edgeopt.passes._ort_quant as ort_quant
    from edgeopt.export import export_onnx

    m, xs = _mlp(), _mlp_samples(8)
    src = tmp_path / "src" / "fp32.onnx"
    src.parent.mkdir()
    assert export_onnx(m, xs[0], ["x"], ["logits"], src, external_data=False).external_data is False
    before = _tree_hash(src.parent)
    monkeypatch.setattr(ort_quant, "EXTERNAL_DATA_ABOVE", 0)
    dst = tmp_path / "q.onnx"
    details = ort_quant.dynamic_int8(src, dst, ort_quant.QuantizeConfig(mode="dynamic"))
    assert details["method"] == "streamed DynamicQuantizeMatMul" and details["dynamic_quantize_matmul"] == 2
    assert _locations(dst) == {"q.onnx.data"} and _tree_hash(src.parent) == before
    got = np.concatenate([o["logits"] for o in ort_run_all(dst, xs)])
    fp32 = np.concatenate([o["logits"] for o in ort_run_all(src, xs)])
    assert _cosine(got, fp32) > 0.999
