"""Tiny real ONNX Runtime bundles for harness tests (a Gemm + Relu graph; reference outputs from numpy).

They go through the same BundleWriter as `edgeopt compile`, so the runner, the sha256 checks and the store
treat them exactly like a compiled model; they just take milliseconds instead of a minute to make.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeopt.bundle import Bundle, Manifest, load_bundle, write_bundle


def tiny_bundle(path: Path, seed: int = 0, n: int = 64, model: str = "tiny_mlp", broken: bool = False, passes: list | None = None,
                cosine: float = 1.0, layers: int = 1, batch: int = 1) -> Bundle:
    """`layers` Gemm + Relu layers of width n on `batch` rows (the cost grows linearly with `layers`; with one
    row a call is bound by reading the weights, with tens of rows by arithmetic)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    wb = [((rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32), (rng.standard_normal(n) * 0.1).astype(np.float32)) for _ in range(layers)]
    x = rng.standard_normal((batch, n)).astype(np.float32)
    y = x
    nodes, inits = [], []
    for i, (w, b) in enumerate(wb):
        y = np.maximum(y @ w + b, 0)
        src, dst = "x" if i == 0 else f"a{i}", "y" if i == layers - 1 else f"a{i + 1}"
        suffix = "" if i == 0 else str(i)
        nodes += [helper.make_node("Gemm", [src, f"w{suffix}", f"b{suffix}"], [f"h{suffix}"]), helper.make_node("Relu", [f"h{suffix}"], [dst])]
        inits += [numpy_helper.from_array(w, f"w{suffix}"), numpy_helper.from_array(b, f"b{suffix}")]
    g = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, n])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, n])],
        initializer=inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    with write_bundle(path, overwrite=True) as wr:
        (wr.root / "model.onnx").write_bytes(b"not an onnx file" if broken else m.SerializeToString())
        wr.write_reference({"x": x}, {"y": y})
        wr.finish(Manifest.draft({
            "model": {"name": model, "family": "tiny", "task": "classification"}, "weights": {"kind": "random"},
            "backend": "onnxruntime", "target": "host", "precision": "fp32", "artifact": "model.onnx",
            "inputs": [{"name": "x", "shape": [batch, n], "dtype": "float32"}], "outputs": [{"name": "y", "shape": [batch, n], "dtype": "float32"}],
            "passes": passes or [], "fidelity": {"cosine": cosine}, "check": {"cosine_min": 0.999},
            "onnx_ir": onnx.IR_VERSION,
        }))
    return load_bundle(path)


def tiny_tvm_bundle(path: Path, seed: int = 0, n: int = 32) -> Bundle:
    """The same Gemm + Relu graph compiled by edgeopt's real TVM backend (Relax -> .so) into a bundle."""
    import tempfile

    from edgeopt.runtimes.base import CompileInput, get_backend

    src = tiny_bundle(Path(tempfile.mkdtemp(prefix="tiny-onnx-")) / "b", seed=seed, n=n)
    x, y = src.reference_inputs(), src.reference_outputs()
    be = get_backend("tvm")
    with tempfile.TemporaryDirectory() as work, write_bundle(path, overwrite=True) as wr:
        inp = CompileInput(model_name="tiny_mlp", task="classification", input_names=["x"], output_names=["y"], samples=[x],
                           onnx_path=src.artifact, workdir=Path(work))
        res = be.compile(inp, wr.root, "host", {"precision": "fp32"})
        wr.write_reference(x, y)
        wr.finish(Manifest.draft({
            "model": {"name": "tiny_mlp", "family": "tiny", "task": "classification"}, "weights": {"kind": "random"},
            "backend": "tvm", "target": res.target, "precision": res.precision, "artifact": res.artifact,
            "inputs": [{"name": "x", "shape": [1, n], "dtype": "float32"}], "outputs": [{"name": "y", "shape": [1, n], "dtype": "float32"}],
            "passes": [], "backend_details": res.details, "fidelity": {"cosine": 1.0}, "check": {"cosine_min": 0.999},
        }))
    return load_bundle(path)
