"""bench/llm_genai.py: onnxruntime-genai's builder + Generator against edgeopt's export + numpy loop.

The table logic is checked on a made-up result (fast); the whole small path (random Phi in Hugging Face layout,
the builder, genai's generate loop, edgeopt's export and loop) runs once under `slow` (about a minute).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import llm_genai  # noqa: E402


def _side(rate: float) -> dict:
    return {"load_s": 0.5, "prefill_tps": {"34": rate * 10, "128": rate * 20}, "new_tokens": 8, "decode_steps": 7,
            "decode_sps": rate, "peak_rss_gb": 1.5}


def test_prompt_lengths_leave_room_for_the_image_tokens():
    assert llm_genai.prompt_lengths("32,128,512") == [34, 128, 512]


def test_table_has_both_sides_and_says_where_export_figures_come_from():
    res = {"widths": llm_genai.widths(True), "threads": 2, "onnxruntime": "x", "onnxruntime_genai": "y",
           "hf": {"params": 40_000_000, "wall_s": 3.0, "peak_rss_gb": 0.9, "hf_bytes": 1},
           "builder": {"wall_s": 12.0, "peak_rss_gb": 1.1, "bytes": 60 * 2**20},
           "genai": _side(400.0), "edgeopt": _side(300.0),
           "edgeopt_export": {"external": "/x", "export_s": 100.0, "bytes": 3 * 2**30}}
    rows = {r[0]: r[1:] for r in llm_genai.table_rows(res)}
    assert rows["decode steps/s (8 new tokens)"] == ("400.00", "300.00")
    assert rows["prefill tokens/s, 128-token prompt"] == ("8000.0", "6000.0")
    assert "read from export.json" in rows["export: wall s"][1]
    assert rows["export: peak RSS GiB"][1].startswith("not measured here")
    assert rows["model on disk"] == ("60 MiB (one graph)", "3.00 GiB (prefill + decode graphs)")
    only = llm_genai.table_rows({k: v for k, v in res.items() if k not in ("edgeopt", "edgeopt_export")})
    assert all(r[2] == "-" for r in only)


def test_a_full_size_run_writes_its_block_and_leaves_the_page(tmp_path, monkeypatch):
    page = tmp_path / "llm.md"
    page.write_text("# LLM\n\nfindings\n\n<!-- llm-genai:start -->\nNot measured yet.\n<!-- llm-genai:end -->\n\ntail\n")
    res = {"widths": llm_genai.widths(False), "threads": 2, "onnxruntime": "x", "onnxruntime_genai": "y",
           "hf": {"params": 2_779_683_840, "wall_s": 50.0, "peak_rss_gb": 6.0, "hf_bytes": 1},
           "builder": {"wall_s": 70.0, "peak_rss_gb": 15.0, "bytes": 2 * 2**30},
           "genai": _side(10.0), "edgeopt": _side(9.0), "edgeopt_export": {"wall_s": 400.0, "peak_rss_gb": 13.0, "bytes": 4 * 2**30}}
    monkeypatch.setattr(llm_genai, "run", lambda a, work: res)
    for k in ("EDGEOPT_DOCS_STAGE", "EDGEOPT_DOCS_ALLOW_CONTAMINATED", "EDGEOPT_DOCS_MAX_FOREIGN_SHARE"):
        monkeypatch.delenv(k, raising=False)
    assert llm_genai.main(["--out", str(page), "--work", str(tmp_path / "w"), "--max-foreign-share", "1.0"]) == 0
    text = page.read_text()
    assert "Not measured yet" not in text and "| decode steps/s (8 new tokens) | 10.00 | 9.00 |" in text
    assert text.startswith("# LLM") and "findings" in text and text.rstrip().endswith("tail")
    assert "Regenerate: `" in text and "2.78 B params" in text


@pytest.mark.slow
def test_small_path_runs_both_sides(tmp_path):
    pytest.importorskip("onnxruntime_genai")
    pytest.importorskip("transformers")
    out = tmp_path / "res.json"
    rc = llm_genai.main(["--small", "--no-write", "--prompts", "34", "--repeats", "1", "--new-tokens", "4",
                         "--work", str(tmp_path / "work"), "--json", str(out), "--max-foreign-share", "1.0"])
    assert rc == 0
    res = json.loads(out.read_text())
    for side in ("genai", "edgeopt"):
        assert res[side]["new_tokens"] == 4 and res[side]["decode_sps"] > 0, side
        assert res[side]["prefill_tps"]["34"] > 0 and res[side]["peak_rss_gb"] > 0
    assert res["builder"]["bytes"] > 0 and res["builder"]["peak_rss_gb"] > 0
    assert res["edgeopt_export"]["parts"]["decode"]["matmul_nbits"] > 0
    assert res["edgeopt"]["image_tokens"] == llm_genai.NUM_IMAGE_TOKENS


@pytest.mark.slow
def test_builder_drops_transformers_qk_layernorm(tmp_path):
    """The finding docs/llm.md rests on: onnxruntime-genai's Phi builder ignores `qk_layernorm` (no error, no
    norm in the attention). If a release starts expressing it, this fails and the page needs revisiting."""
    pytest.importorskip("onnxruntime_genai")
    onnx = pytest.importorskip("onnx")
    hf, out = tmp_path / "hf", tmp_path / "og"
    llm_genai.write_random_phi(hf, small=True, qk_layernorm=True)
    assert json.loads((hf / "config.json").read_text())["qk_layernorm"] is True
    llm_genai.run_measured([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out),
                            "-p", "fp32", "-e", "cpu", "-c", str(tmp_path / "cache"), "--extra_options", "hf_token=false"],
                           tmp_path / "builder.log")
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    attn_norms = [n.name for n in graph.node if "/attn/" in n.name and "norm" in n.name.lower()]
    assert attn_norms == [], attn_norms
    assert not any("layernorm" in i.name and ("q_" in i.name or "k_" in i.name) for i in graph.initializer)
