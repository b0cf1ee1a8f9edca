"""QDQ (ONNX Runtime static int8) graphs through TVM: the same QDQ ONNX file run by ORT and by a TVM build.

Relax's ONNX frontend imports QuantizeLinear/DequantizeLinear as relax quantize/dequantize ops and the
legalizer lowers them to float arithmetic (round, clip, cast; conv/matmul run on dequantized floats), so the
TVM artifact must reproduce ORT's int8 results to rounding, not just stay near the fp32 model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

import edgeopt  # noqa: E402
from edgeopt._ort import ort_run_all  # noqa: E402
from edgeopt.bundle import load_bundle  # noqa: E402
from edgeopt.runtimes import get_backend  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _tiny import tiny_spec  # noqa: E402

TINY = tiny_spec().name
PASSES = "reparam,quantize:mode=int8"


@pytest.fixture(scope="module")
def qdq(tmp_path_factory) -> Path:
    """An ORT static-int8 bundle of the tiny model (BN folded by reparam first): its model.onnx is a QDQ graph."""
    root = tmp_path_factory.mktemp("qdq")
    return edgeopt.compile(TINY, backend="onnxruntime", passes=PASSES, output=root / "ort.bundle", samples=4).path


def test_qdq_pipeline_through_tvm_matches_ort(qdq, tmp_path):
    """`reparam,quantize:mode=int8` with --backend tvm: the TVM build of the QDQ graph gives ORT's int8 outputs."""
    import onnx

    ort_b = load_bundle(qdq)
    ops = {n.op_type for n in onnx.load(str(ort_b.artifact)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "BatchNormalization" not in ops
    b = edgeopt.compile(TINY, backend="tvm", passes=PASSES, output=tmp_path / "tvm.bundle", samples=4)
    m = b.manifest
    assert m["precision"] == "int8" and m["backend"] == "tvm"
    assert "quantize/dequantize" in m["backend_details"]["precision_note"]
    # the same deterministic pipeline wrote the same QDQ graph for both backends
    assert m["passes"][-1]["nodes_after"] == ort_b.manifest["passes"][-1]["nodes_after"]
    assert 0.99 < m["fidelity"]["cosine"] < 0.999999  # int8, not silently fp32
    assert m["backend_details"]["prepacked"] is False  # packing would lift the weights' dequantize: floats stored
    with np.load(b.path / m["backend_details"]["params_file"]) as z:  # the int8 weights stay outside the .so
        assert any(z[k].dtype == np.int8 for k in z.files)
    assert m["fidelity"]["cosine"] == pytest.approx(ort_b.manifest["fidelity"]["cosine"], abs=1e-5)
    samples = tiny_spec().sample_inputs(4)
    sess = get_backend("tvm").load(b.path, m, threads=1)
    for s, o in zip(samples, ort_run_all(ort_b.artifact, samples), strict=True):
        y, ref = sess.run(s)["logits"].ravel(), o["logits"].ravel()
        # the same integer grid: at most a rounding tie apart, far tighter than int8 vs fp32
        assert np.max(np.abs(y - ref)) < 1e-3 * max(1.0, float(np.abs(ref).max())), (y[:4], ref[:4])
        assert float(y @ ref / (np.linalg.norm(y) * np.linalg.norm(ref))) > 0.99999
    sess.close()
    r = edgeopt.profile(b.path, runs=3, warmup=1, min_seconds=0, store=False)
    assert r["outputs_match"] is True


def test_tvm_int8_is_labelled_as_computing_in_float(qdq):
    """The label is true: in the Relax module imported from the QDQ graph every conv2d and matmul produces float32
    (an integer kernel would produce int32), so the capability table calls TVM's int8 "computes in float"."""
    import re

    import onnx

    from edgeopt.capabilities import get_cell
    from edgeopt.runtimes.tvm import import_onnx

    text = import_onnx(onnx.load(str(load_bundle(qdq).artifact))).script()
    kernels = re.findall(r'R\.Tensor\([^)]*\), dtype="(\w+)"\) = R\.(?:nn\.conv2d|matmul|nn\.dense)\(', text)
    assert kernels and set(kernels) == {"float32"}, kernels
    assert get_cell("tvm", "int8").label == "int8 (computes in float)"
    assert get_cell("onnxruntime", "int8").label == "int8"
