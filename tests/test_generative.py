"""Generative bundles (edgeopt/generative.py) and MELT's figures (edgeopt/harness/gen_runner.py), on the tiny
TinyGPT-V: the bundle's layout, the device-side token loop without torch, the first-token check that can
fail, int4 LLM graphs with an fp16 vision graph, sustained runs into the store and the report, SSH, the
user's prompts, and the requests a generative bundle refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeopt
from edgeopt.errors import EdgeoptError
from edgeopt.measurement import MeasureRequest, Protocol

TINY = "tinygpt_v_tiny"
FAST = Protocol(warmup=1, runs=4, min_seconds=0.05, new_tokens=8, threads=1, cooldown=False, remeasure=0)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory) -> Path:
    return edgeopt.compile(TINY, output=tmp_path_factory.mktemp("gen") / "fp32", samples=3).path


def _runner(bundle: Path, protocol: Protocol = FAST) -> dict:
    p = subprocess.run([sys.executable, "-m", "edgeopt.runner", str(bundle), "--request", MeasureRequest(protocol).to_json()],
                       capture_output=True, text=True, timeout=300)
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_bundle_holds_three_graphs_tokenizer_and_reference_tokens(fp32):
    from edgeopt.llm import load_tokenizer

    b = edgeopt.load_bundle(fp32)
    m = b.manifest
    g = m.generation
    assert b.generative and m.artifact == "llm"
    assert set(g.graphs) == {"vision", "prefill", "decode"}
    for rel in g.graphs.values():
        assert rel in m.files and (fp32 / rel).is_file()
    assert load_tokenizer(fp32 / g.tokenizer).get_vocab_size() > 100
    # fp32 ORT reproduces fp32 torch's greedy continuation on every prompt
    assert g.tokens == g.fp32_tokens and len(g.tokens) == 16 and len(set(g.tokens)) > 1
    assert m.fidelity["greedy_sequence_agreement"] == 1.0 and m.fidelity["agreement"]["n"] == 3
    assert np.array_equal(b.reference_outputs()["tokens"][0], g.fp32_tokens)
    assert set(b.reference_inputs()) == {"image", "prefix_ids", "suffix_ids"}
    assert set(m.export) == {"vision", "prefill", "decode"} and all(m.export[r]["parity"]["cosine"] > 0.9999 for r in m.export)


def test_runner_generates_without_torch_and_reports_melt_figures(fp32):
    r = _runner(fp32)
    assert "error" not in r, r
    g = r["generation"]
    assert r["torch_loaded"] is False and r["outputs_match"] is True
    assert g["check"]["matched"] == 4 and g["check"]["matched_fp32"] == 4
    assert [x["prompt_tokens"] for x in g["prefill"]] == [32, 128, 512]
    assert g["prefill"][2]["positions"] > g["prefill"][0]["positions"]
    assert g["decode_tokens_per_s"] > 0 and g["ttft_ms"] > 0 and g["load_ms"] > 0
    assert r["runs"] >= 4 and r["timing"] == "per decoded token"  # latency is per decoded token


def test_a_device_that_generates_other_tokens_is_caught(fp32, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(fp32, bad)
    d = json.loads((bad / "manifest.json").read_text())
    d["generation"]["tokens"] = [(t + 1) % 500 for t in d["generation"]["tokens"]]
    (bad / "manifest.json").write_text(json.dumps(d))
    r = _runner(bad)
    assert r["outputs_match"] is False and r["generation"]["check"]["matched"] == 0


def test_int4_llm_graphs_with_an_fp16_vision_graph(tmp_path, fp32):
    import onnx

    b = edgeopt.compile(TINY, passes="quantize:int4", options={"vision": "fp16"}, output=tmp_path / "int4", samples=3)
    m = b.manifest
    assert m.precision == "int4" and m.backend_details["vision_precision"] == "fp16"
    assert [(p["name"], p["graph"]) for p in m.passes] == [("quantize", "vision"), ("quantize", "prefill"), ("quantize", "decode")]
    ops = {n.op_type for n in onnx.load(str(b.path / m.generation.graphs["decode"])).graph.node}
    assert "MatMulNBits" in ops
    assert m.size_bytes < edgeopt.load_bundle(fp32).manifest.size_bytes
    assert m.fidelity["cosine"] > 0.95 and len(m.generation.tokens) == 16
    r = _runner(b.path)
    assert r["outputs_match"] is True, r["generation"]["check"]


def test_sustained_runs_reach_the_store_and_the_report(fp32, tmp_path):
    from edgeopt.report.html import write_html
    from edgeopt.store import Store

    db = f"sqlite:///{tmp_path / 'r.db'}"
    res = edgeopt.profile(fp32, db=db, protocol=Protocol(**{**FAST.to_dict(), "sustained": 3}))
    g = res.generation
    assert len(g.sustained) == 3 and [r["iteration"] for r in g.sustained] == [1, 2, 3]
    assert g.drift is not None and isinstance(g.throttled, bool)
    assert res.energy is None and res.energy_reason and g.energy_per_token_j is None  # no meter here: said, not faked
    rows = Store(db).measurements()
    assert rows[0]["generation"]["sustained"][2]["tokens_per_s"] > 0
    page = write_html(rows, tmp_path / "report.html", db=db).read_text()
    assert "id='generation'" in page and "data-plot='tokens'" in page


def test_generative_bundle_over_ssh(fp32, sshd, tmp_path):
    from edgeopt.harness.devices import get_device
    from edgeopt.harness.protocol import measure

    dev = get_device(sshd.uri, identity=str(sshd.identity), known_hosts=str(sshd.trusted_known_hosts()),
                     python=sys.executable, remote_dir=str(tmp_path / "board"))
    try:
        res = measure(dev, edgeopt.load_bundle(fp32), FAST)
    finally:
        dev.close()
    assert res.outputs_match is True and res.torch_loaded is False and res.generation.decode_tokens_per_s > 0


@pytest.mark.slow  # another full compile (~25 s); the default run keeps under 15 minutes
def test_users_prompts(tmp_path):
    lines = [{"prompt": p} for p in ("What is in the cup?", "Describe the scene.", "What colour is it?", "Count the objects.", "Where is this?")]
    f = tmp_path / "prompts.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    m = edgeopt.compile(TINY, output=tmp_path / "b", data=f, calib_samples=2, eval_samples=3).manifest
    assert m.data.format == "prompts" and m.fidelity["evaluated_on"] == "data: evaluation split"
    assert m.fidelity["agreement"]["n"] == 3 and m.fidelity["greedy_sequence"]["steps"] == 16


@pytest.mark.parametrize(("kw", "says"), [
    ({"backend": "tflite"}, "builds no generative bundles"),
    ({"passes": "prune:ratio=0.2"}, "graph passes only"),
    ({"options": {"vision": "int3"}}, "not a precision of the vision graph"),
    ({"options": {"tokenizer": "/nonexistent/tokenizer.json"}}, "no such file"),
])
def test_refused_before_any_work(tmp_path, kw, says):
    with pytest.raises(EdgeoptError, match=says):
        edgeopt.compile(TINY, output=tmp_path / "x", **kw)
    assert not (tmp_path / "x").exists()
