"""compile --auto: candidates compiled, infeasible ones never measured, front and winner kept."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeopt.orchestrate.auto import Candidate, auto_compile, confirmed_winner, pareto_front
from edgeopt.store import Store


def _c(lat, cos, size, status="measured"):
    c = Candidate("onnxruntime", "fp32")
    c.latency_ms, c.cosine, c.size_bytes, c.status = lat, cos, size, status
    return c


def test_pareto_front_keeps_only_non_dominated():
    a, b, c, d = _c(10, 0.999, 100), _c(5, 0.99, 50), _c(12, 0.998, 120), _c(3, 0.9, 200)
    front = pareto_front([a, b, c, d, _c(1, 1.0, 1, status="infeasible")])
    assert c not in front and {id(x) for x in front} == {id(d), id(b), id(a)}
    assert [x.latency_ms for x in front] == [3, 5, 10]


def test_a_tie_in_the_confirm_rounds_goes_to_the_higher_fidelity():
    fp32, int8, pruned = _c(1.0, 0.99999, 400), _c(1.0, 0.9993, 100), _c(1.0, 0.9991, 300)
    # int8 fastest in two of three rounds, slower in one: no clear difference -> the fp32 artifact wins
    assert confirmed_winner([fp32, int8], [[1.00, 1.02, 0.98], [0.97, 0.99, 1.01]]) == (0, 1)
    # int8 faster in every round by 30 %: it wins on speed although its cosine is lower
    assert confirmed_winner([fp32, int8], [[1.00, 1.02, 0.98], [0.70, 0.71, 0.69]]) == (1, 1)
    # pruned clearly slower than int8, fp32 tied with int8: fp32
    assert confirmed_winner([int8, pruned, fp32], [[0.70, 0.72, 0.69], [0.90, 0.91, 0.92], [0.71, 0.69, 0.73]]) == (2, 0)


def test_auto_picks_fastest_within_budget(tmp_path, monkeypatch):
    import edgeopt.orchestrate.auto

    monkeypatch.setattr(edgeopt.orchestrate.auto, "CONFIRM_FACTOR", 1e9)  # both candidates go through the confirm stage
    db = f"sqlite:///{tmp_path / 'a.db'}"
    res = auto_compile(
        "efficientformer_l1", tmp_path / "win.bundle", fidelity=0.5, min_agreement=0.0, backends=["onnxruntime"],
        precisions=["fp32", "int8"], stage2=False, runs=3, warmup=1, min_seconds=0, db=db, workdir=tmp_path / "cands",
    )
    # The budget is loose on purpose: int8's top-1 on random weights depends on the CPU's int8 kernels (it passed 0.99
    # on an AVX512-VNNI host and missed it on CI); this test is about picking the fastest, the gate has its own tests.
    measured = [c for c in res.candidates if c.status == "measured"]
    assert len(measured) == 2, [(c.label, c.status, c.reason) for c in res.candidates]
    # the fastest by its confirm rounds, unless those cannot tell it from the other and the other keeps more fidelity
    pick, fastest = confirmed_winner(measured, [c.confirm_ms[1:] for c in measured])
    assert res.winner is measured[pick]
    assert pick == fastest or measured[pick].cosine > measured[fastest].cosine
    man = json.loads((tmp_path / "win.bundle" / "manifest.json").read_text())
    assert man["auto"]["winner"]["label"] == res.winner.label and man["auto"]["front"]
    st = Store(db)
    assert len(st.measurements()) == 2  # the confirm stage replaced each candidate's row, it did not add one
    for c in measured:  # stage 1, then ranked on the median of CONFIRM_ROUNDS interleaved rounds: the stored one
        rounds = edgeopt.orchestrate.auto.CONFIRM_ROUNDS
        assert len(c.confirm_ms) == 1 + rounds and c.latency_ms == sorted(c.confirm_ms[1:])[(rounds - 1) // 2]
        assert {m["id"]: m["p50_ms"] for m in st.measurements()}[c.measurement_id] == pytest.approx(c.latency_ms)
    assert {j["stage"] for j in st.jobs()} == {"confirm"}
    assert st.run_config(res.run_id)["result"]["winner"]["bundle_sha256"] == man["bundle_sha256"]
    assert {j["status"] for j in st.jobs()} == {"ok"}
    # the front for this model/device as a plot
    png = tmp_path / "front.png"
    p = subprocess.run([sys.executable, "-m", "edgeopt.cli", "report", "--db", db, "--model", "efficientformer_l1",
                        "--device", "local", "--plot", str(png)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_auto_budget_nobody_meets_names_closest(tmp_path):
    db = f"sqlite:///{tmp_path / 'a.db'}"
    res = auto_compile(
        "efficientformer_l1", tmp_path / "win.bundle", fidelity=0.9999999, backends=["onnxruntime"], precisions=["int8"],
        stage2=False, runs=2, warmup=0, min_seconds=0, db=db, workdir=tmp_path / "cands",
    )
    assert res.winner is None and not (tmp_path / "win.bundle").exists()
    (c,) = res.closest()
    assert c.status == "infeasible" and "missed by" in c.reason
    assert Store(db).measurements() == []  # infeasible candidates are never measured
    assert Store(db).jobs(status="failed")[0]["stage"] == "fidelity"


def test_narrow_int8_miss_is_followed_by_its_repair(tmp_path):
    """ORT int8 that misses the budget narrowly is followed at once by int8 after reparam, and when that misses
    too, by mixed precision with the budget as its target (`Mode.repair`), which keeps the most sensitive nodes
    float until the budget holds."""
    import edgeopt

    sys.path.insert(0, str(Path(__file__).parent))
    from _tiny import tiny_spec

    name = tiny_spec().name
    cos = edgeopt.compile(name, passes="quantize:int8", output=tmp_path / "probe.bundle", samples=8).manifest.fidelity["cosine"]
    assert cos < 1.0
    budget = 1.0 - (1.0 - cos) / 2  # int8 misses by half its error: well within the narrow margin
    res = auto_compile(name, tmp_path / "win.bundle", fidelity=budget, min_agreement=0.0, backends=["onnxruntime"],
                       precisions=["int8"], stage2=False, runs=2, warmup=0, min_seconds=0,
                       db=f"sqlite:///{tmp_path / 'a.db'}", workdir=tmp_path / "cands")
    int8, retry, *rest = res.candidates
    assert (int8.label, int8.status) == ("onnxruntime/int8", "infeasible")
    assert retry.label == "onnxruntime/int8 + reparam" and retry.retry_of == "onnxruntime/int8"
    assert any("trying onnxruntime/int8 + reparam next" in n for n in res.notes)
    # the tiny model has nothing reparam changes numerically (no norm to fold, no branch to merge): the retry
    # misses as int8 did, and mixed precision follows it
    assert retry.status == "infeasible" and retry.cosine == pytest.approx(int8.cosine, abs=1e-9)
    (fix,) = rest
    assert fix.label == "onnxruntime/mixed" and fix.passes == f"quantize:mode=mixed,target={budget}"
    assert fix.status == "measured" and fix.cosine >= budget and res.winner.label == "onnxruntime/mixed"
    assert any("onnxruntime/int8 + reparam missed the budget (cosine" in n and "trying onnxruntime/mixed next" in n for n in res.notes)
    # a wide miss (more than 10x the error the budget allows) gets no repair
    res = auto_compile(name, tmp_path / "w2.bundle", fidelity=1.0 - (1.0 - cos) / 20, min_agreement=0.0, backends=["onnxruntime"],
                       precisions=["int8"], stage2=False, runs=2, warmup=0, min_seconds=0,
                       db=f"sqlite:///{tmp_path / 'b.db'}", workdir=tmp_path / "cands2")
    assert [c.label for c in res.candidates] == ["onnxruntime/int8"] and res.winner is None


def test_auto_cli_reports_miss(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "edgeopt.cli", "compile", "efficientformer_l1", "--auto", "-o", str(tmp_path / "w"),
         "--backends", "onnxruntime", "--precisions", "int8", "--fidelity", "0.9999999", "--db", f"sqlite:///{tmp_path / 'c.db'}"],
        capture_output=True, text=True,
    )
    assert p.returncode == 1 and "no candidate meets" in p.stderr and "missed by" in p.stderr


@pytest.mark.parametrize("bad", ["nope_model"])
def test_auto_unknown_model(tmp_path, bad):
    from edgeopt.errors import EdgeoptError

    with pytest.raises(EdgeoptError, match="unknown model"):
        auto_compile(bad, tmp_path / "w")


def test_task_agreement_picks_the_task_metric():
    from edgeopt.orchestrate.auto import task_agreement

    assert task_agreement({"cosine": 1.0, "top1_agreement": 0.875}) == ("top1_agreement", 0.875)
    assert task_agreement({"cosine": 0.9999999, "map50": 0.33}) == ("map50", 0.33)
    assert task_agreement({"cosine": 1.0, "psnr_db": 40.0}) is None  # light field: no agreement metric


def test_auto_agreement_gate_names_the_metric(tmp_path):
    """A candidate within the cosine budget is still infeasible when the task's answer changed (here: an
    impossible 1.01; no plain fp32 candidate in the search, so the gate keeps it)."""
    res = auto_compile(
        "efficientformer_l1", tmp_path / "w.bundle", fidelity=0.0, min_agreement=1.01, backends=["onnxruntime"],
        precisions=["int8"], stage2=False, runs=2, warmup=0, min_seconds=0, db=f"sqlite:///{tmp_path / 'a.db'}",
        workdir=tmp_path / "cands",
    )
    (c,) = res.closest()
    assert res.winner is None and c.status == "infeasible" and c.cosine > 0.0
    assert c.reason.startswith("top1_agreement ") and " < 1.01 (missed by " in c.reason


def test_auto_agreement_gate_never_above_the_fp32_floor(tmp_path):
    """The plain fp32 artifact is the model itself: the gate comes down to what it agrees (the metric's noise
    floor), so an impossible 1.01 becomes 1.0 and the fp32 artifact is feasible, with a note saying so."""
    res = auto_compile(
        "efficientformer_l1", tmp_path / "w.bundle", fidelity=0.99, min_agreement=1.01, backends=["onnxruntime"],
        precisions=["fp32"], stage2=False, runs=2, warmup=0, min_seconds=0, db=f"sqlite:///{tmp_path / 'a.db'}",
        workdir=tmp_path / "cands",
    )
    assert res.winner is not None and res.winner.label == "onnxruntime/fp32" and res.winner.agreement == 1.0
    assert any("gate lowered from 1.01 to 1.000" in n for n in res.notes), res.notes
