"""The capability matrix: its table builds valid compile calls, its docs match its data, and every cell
marked as working in docs/capabilities.json (the data behind docs/capabilities.md) does work.

By default only the cheapest recorded working cells are re-checked (one per backend; TVM and ExecuTorch, whose
cheapest cells take 30-40 s here, left to tests/test_tvm.py and tests/test_executorch.py, which compile and run
their bundles through the same `edgeopt.compile` and runner); `-m slow` re-checks every one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edgeopt import capabilities as cap
from edgeopt.errors import EdgeoptError
from edgeopt.passes.pipeline import build_pipeline
from edgeopt.runtimes import get_backend

REPO = Path(__file__).resolve().parents[1]
JSON = REPO / "docs" / "capabilities.json"
sys.path.insert(0, str(REPO / "bench"))
import _matrix as mx  # noqa: E402  (the matrix renderer lives with the bench scripts)


def test_every_cell_is_a_valid_compile_call():
    for c in cap.CELLS:
        kw = cap.how(c.backend, c.precision)
        be = get_backend(kw["backend"])
        build_pipeline(kw["passes"])  # parses: the pass and its options exist
        if be.consumes == "torch" and kw["passes"]:
            assert "quantize" in be.implements  # graph passes on a torch backend must be delegated
    assert cap.how("litert", "int8") == {"backend": "tflite", "passes": "quantize:int8", "options": {}}
    with pytest.raises(EdgeoptError, match="no capability cell tflite/int3.*tflite/int8"):
        cap.get_cell("tflite", "int3")


def test_every_family_has_a_representative():
    fams = cap.families()
    assert "efficientformer" in fams
    for f in fams:
        assert cap.get_cell("onnxruntime", "fp32") and cap.representative(f)
    with pytest.raises(EdgeoptError, match="unknown model family 'nope'"):
        cap.representative("nope")


def test_live_weights_revive_zero_init_norm_scales():
    """shvit's residual branches end in a BatchNorm with gamma 0 (timm's init): dead branches that converters
    fold away; EfficientFormer's layer scales start at 1e-5. The figures' weights set those scales to 1; a
    model with neither is built as usual."""
    import torch

    m, label = cap.live_weights("shvit_s1")
    assert label["revived_norms"] == 35 and "set to 1" in label["note"]
    assert not any(isinstance(x, torch.nn.BatchNorm2d) and bool(torch.all(x.weight == 0)) for x in m.modules())
    m, label = cap.live_weights("efficientformer_l1")  # ls1/ls2 layer scales, 1e-5 at init, mute each branch
    assert label["revived_layer_scales"] == 30 and label["revived_norms"] == 0
    assert all(bool(torch.all(b.ls1.gamma == 1)) for b in m.stages[0].blocks)
    a, la = cap.live_weights("leyolo_nano")  # neither: built as usual, with the fixed seed
    b, _ = cap.live_weights("leyolo_nano")
    assert la == {"kind": "random", "seed": 0, "revived_norms": 0, "revived_layer_scales": 0}
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_render_numbers_reasons_and_ratios():
    rs = [
        cap.Result("fam", "m1", "onnxruntime", "fp32", "works", p50_ms=10.0, cosine=1.0),
        cap.Result("fam", "m1", "tflite", "dynamic", "works", p50_ms=4.0, cosine=0.9991),
        cap.Result("fam", "m1", "tvm", "fp32", "fails", reason="op X has no lowering"),
        cap.Result("fam", "m1", "coreml", "fp16", "converts", reason="Core ML runs only on macOS/iOS"),
        cap.Result("fam2", "m2", "tvm", "fp32", "fails", reason="op X has no lowering"),
    ]
    mx.add_ratios(rs)
    assert rs[1].ort_ratio == pytest.approx(0.4) and rs[2].ort_ratio is None
    side_by_side = cap.Result("fam", "m1", "tflite", "int8", "works", p50_ms=4.0, extra={"ort_p50_ms": 5.0})
    mx.add_ratios([*rs, side_by_side])  # ORT timed right after the cell wins over ORT fp32's own cell
    assert side_by_side.ort_ratio == pytest.approx(0.8)
    md = mx.render_markdown(rs, {"date": "d", "machine": "m", "samples": 4})
    assert "| fam (`m1`) | ✅ 1.00×, cos 1.00000 | ✅ 0.40×, cos 0.99910 | ❌ [1] | 🍎 converts [2] |" in md
    assert "| fam2 (`m2`) | · | · | ❌ [1] | · |" in md  # the same reason keeps its number
    assert "1. op X has no lowering" in md and "2. Core ML runs only on macOS/iOS" in md
    # the blocks are written by bench/_doc.py (tests/test_bench_docs.py)


def _recorded() -> tuple[list[cap.Result], dict]:
    if not JSON.is_file():
        pytest.skip("docs/capabilities.json not generated yet (python bench/capabilities.py)")
    return mx.load(JSON)


def test_docs_and_readme_match_the_data():
    results, meta = _recorded()
    mx.add_ratios(results)
    matrix = mx.render_markdown(results, meta)
    assert matrix in (REPO / "docs" / "capabilities.md").read_text()
    readme = (REPO / "README.md").read_text()
    assert "<!-- capabilities:start -->\n" + matrix in readme


def _working() -> list[cap.Result]:
    results, _ = _recorded()
    return [r for r in results if r.status in ("works", "converts")]


# Backends whose own test files compile and run their bundles (see the module doc).
_OWN_TESTS = ("tvm", "executorch")


def _cheap() -> list[cap.Result]:
    best: dict[str, cap.Result] = {}
    for r in _working() if JSON.is_file() else []:
        if r.backend in _OWN_TESTS:
            continue
        if r.backend not in best or (r.compile_s or 1e9) < (best[r.backend].compile_s or 1e9):
            best[r.backend] = r
    return list(best.values())


def _check(r: cap.Result, tmp_path: Path) -> None:
    got = cap.try_cell(r.model, cap.get_cell(r.backend, r.precision), tmp_path / "b", samples=2, runs=3, min_seconds=0.0)
    assert got.status == r.status, got.reason
    if r.cosine is not None and got.cosine is not None:
        # random-init weights are rebuilt for each compile, so allow a little drift for quantized cells
        assert got.cosine >= min(r.cosine - 0.02, 0.999)


@pytest.mark.parametrize("r", _cheap(), ids=lambda r: r.key)
def test_cheap_working_cells_still_work(r, tmp_path):
    _check(r, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("r", _working() if JSON.is_file() else [], ids=lambda r: r.key)
def test_every_working_cell_still_works(r, tmp_path):
    _check(r, tmp_path)
