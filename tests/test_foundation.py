"""The one real path: efficientformer_l1 -> ONNX (checked) -> bundle -> runner -> store."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeopt
from edgeopt.bundle import load_bundle, write_bundle
from edgeopt.errors import BundleError, EdgeoptError, SpecError
from edgeopt.passes.pipeline import parse_pipeline
from edgeopt.store import Store


def test_manifest_records_export_parity_and_fidelity(l1_bundle):
    m = load_bundle(l1_bundle).manifest
    assert m["export"]["exporter"] in ("dynamo", "torchscript")
    if m["export"]["exporter"] == "torchscript":
        assert m["export"]["fallback_reason"]
    assert m["export"]["parity"]["cosine"] > 0.9999
    assert m["export"]["parity"]["max_abs"] < 1e-3
    assert m["fidelity"]["cosine"] > 0.9999 and m["precision"] == "fp32"
    assert m["weights"]["kind"] == "random"
    ref_in = load_bundle(l1_bundle).reference_inputs()
    assert list(ref_in) == ["image"] and ref_in["image"].shape == (1, 3, 224, 224)
    # reference inputs are real photographs, normalised: not constant, not uniform noise
    x = ref_in["image"]
    assert 0.3 < float(x.std()) < 3.0 and abs(float(x.mean())) < 2.0
    for rel, sha in m["files"].items():
        assert len(sha) == 64 and (l1_bundle / rel).is_file()


def test_manifest_names_the_slow_stages(l1_bundle, l1_int8_bundle):
    # compile_seconds: each stage's exclusive seconds, which add up to the total with `other`
    for b in (l1_bundle, l1_int8_bundle):
        cs = load_bundle(b).manifest["compile_seconds"]
        for stage in ("build", "reference", "export", "parity", "backend", "fidelity"):
            assert cs[stage] >= 0, (stage, cs)
        assert cs["export"] > 0 and cs["total"] > cs["export"]
        assert sum(v for k, v in cs.items() if k != "total") == pytest.approx(cs["total"], abs=0.01)
    assert load_bundle(l1_int8_bundle).manifest["compile_seconds"]["passes"] > 0  # the quantize pass itself


def test_stage_clock_is_exclusive():
    import time

    from edgeopt._util import StageClock

    c = StageClock()
    with c.stage("outer"):
        time.sleep(0.05)
        with c.stage("inner"):
            time.sleep(0.1)
        time.sleep(0.05)
    with c.stage("inner"):
        time.sleep(0.02)
    r = c.report()
    assert list(r) == ["outer", "inner", "other", "total"]
    assert 0.09 <= r["outer"] < 0.2 and 0.11 <= r["inner"] < 0.25
    assert r["outer"] + r["inner"] + r["other"] == pytest.approx(r["total"], abs=0.005)


def test_int8_is_smaller_and_close(l1_bundle, l1_int8_bundle):
    fp32, q = load_bundle(l1_bundle), load_bundle(l1_int8_bundle)
    assert q.manifest["precision"] == "int8"
    assert q.size_bytes() < 0.4 * fp32.size_bytes()
    assert 0.98 < q.manifest["fidelity"]["cosine"] < 1.0
    assert q.manifest["passes"][0]["name"] == "quantize"
    assert "QuantizeLinear" in (q.artifact).read_bytes().decode("latin1")


def test_runner_never_imports_torch_and_checks_outputs(l1_int8_bundle):
    p = subprocess.run(
        [sys.executable, "-m", "edgeopt.runner", str(l1_int8_bundle), "--warmup", "1", "--runs", "3", "--min-seconds", "0"],
        capture_output=True, text=True, check=True,
    )
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["torch_loaded"] is False
    assert res["outputs_match"] is True and res["runs"] >= 3
    for k in ("p50", "p90", "p99", "mean", "std"):
        assert res["latency_ms"][k] > 0
    assert res["peak_rss_mb"] > 10 and res["init_ms"] > 0


def test_runner_module_imports_no_torch():
    code = "import sys, edgeopt.runner, edgeopt.bundle, edgeopt.runtimes.onnxruntime; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_tampered_bundle_is_refused(l1_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(l1_bundle, copy)
    with open(copy / "model.onnx", "r+b") as f:
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(BundleError, match="sha256 of model.onnx"):
        load_bundle(copy)
    p = subprocess.run([sys.executable, "-m", "edgeopt.runner", str(copy)], capture_output=True, text=True)
    assert p.returncode == 2 and "sha256" in json.loads(p.stdout)["error"]


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path)
    with pytest.raises(BundleError, match="not a folder"):
        load_bundle(tmp_path / "missing")


def test_interrupted_write_leaves_nothing(tmp_path):
    final = tmp_path / "out.bundle"
    with pytest.raises(RuntimeError, match="boom"), write_bundle(final) as w:
        (w.root / "model.onnx").write_bytes(b"partial")
        raise RuntimeError("boom")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_budget_broken_writes_no_bundle(tmp_path):
    out = tmp_path / "q.bundle"
    with pytest.raises(EdgeoptError, match="fidelity budget"):
        edgeopt.compile("efficientformer_l1", passes="quantize:int8", output=out, fidelity=0.999999, samples=2)
    assert not out.exists()


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("quantize:int8", [("quantize", {"__shorthand__": "int8"})]),
        ("reparam,quantize:mode=int8,calibration=percentile", [("reparam", {}), ("quantize", {"mode": "int8", "calibration": "percentile"})]),
        ("reparam,prune:ratio=0.3,quantize:int8", [("reparam", {}), ("prune", {"ratio": 0.3}), ("quantize", {"__shorthand__": "int8"})]),
        ([{"prune": {"ratio": 0.5}}, "quantize:int8"], [("prune", {"ratio": 0.5}), ("quantize", {"__shorthand__": "int8"})]),
        (None, []),
    ],
)
def test_parse_pipeline(spec, expected):
    assert parse_pipeline(spec) == expected


@pytest.mark.parametrize("bad,msg", [("calibration=minmax", "before any pass"), ("quantize,,x", "empty item")])
def test_parse_pipeline_errors(bad, msg):
    with pytest.raises(SpecError, match=msg):
        parse_pipeline(bad)


def test_profile_stores_one_row_per_key(l1_bundle, db_url):
    r1 = edgeopt.profile(l1_bundle, runs=3, warmup=1, min_seconds=0, db=db_url)
    assert r1["energy"] is None and "no energy meter" in r1["energy_reason"]
    assert r1["device"]["arch"] and r1["device"]["cores"] >= 1
    edgeopt.profile(l1_bundle, runs=3, warmup=1, min_seconds=0, db=db_url)  # same key: replaces
    rows = Store(db_url).measurements()
    assert len(rows) == 1 and rows[0]["model"] == "efficientformer_l1" and rows[0]["outputs_match"] is True
    edgeopt.profile(l1_bundle, runs=4, warmup=1, min_seconds=0, db=db_url)  # another protocol: a new row
    assert len(Store(db_url).measurements()) == 2


def test_store_refuses_duplicate_and_keeps_db_intact(l1_bundle, db_url):
    res = edgeopt.profile(l1_bundle, runs=2, warmup=0, min_seconds=0, db=db_url)
    st = Store(db_url)
    with pytest.raises(EdgeoptError, match="already stored"):
        st.add_measurement(load_bundle(l1_bundle).manifest, res)
    assert len(st.measurements()) == 1
    assert st.has(load_bundle(l1_bundle).sha256, res["device"]["uri"], res["protocol_key"])


def test_min_seconds_is_honoured(l1_int8_bundle):
    from edgeopt.measurement import MeasureRequest, Protocol
    from edgeopt.runner import run_bundle

    res = run_bundle(str(l1_int8_bundle), MeasureRequest(Protocol(warmup=0, runs=1, min_seconds=0.5)))
    assert res.latency_ms.mean * res.runs >= 450


def test_summarize_percentiles():
    from edgeopt.measurement import summarize

    x = np.arange(1, 101, dtype=np.float64)
    lat, cv = summarize(list(x))
    assert lat.p50 == pytest.approx(50.5) and lat.p50 == pytest.approx(np.percentile(x, 50))
    assert lat.p99 == pytest.approx(99.01) and lat.p90 == pytest.approx(np.percentile(x, 90))
    assert cv == pytest.approx(np.std(x, ddof=1) / 50.5)


def test_measurement_round_trips_through_the_runner_codec():
    """What the runner prints is what the harness reads: one JSON line, typed on both sides."""
    from edgeopt.errors import DeviceError
    from edgeopt.measurement import Energy, Measurement, MeasureRequest, Protocol, summarize

    lat, cv = summarize([1.0, 2.0, 3.0])
    m = Measurement("ab" * 32, "m", "onnxruntime", "fp32", lat, cv, 3, check={"cosine": 1.0}, energy=Energy("rapl", 1, 1, 0, 0.3, 0.3, 5))
    back = Measurement.from_runner_output("some runtime log line\n" + m.to_json() + "\n", "here")
    assert back == m and back.energy.meter == "rapl" and back["latency_ms"]["p50"] == 2.0
    with pytest.raises(DeviceError, match="runner on here failed: boom"):
        Measurement.from_runner_output('{"error": "boom"}', "here")
    with pytest.raises(DeviceError, match="printed no result"):
        Measurement.from_runner_output("Segmentation fault", "here")
    req = MeasureRequest(Protocol(runs=3, pin_cpus="0"), image="/x.png")
    assert MeasureRequest.from_json(req.to_json()) == req


def test_public_api_lists_models():
    assert "efficientformer_l1" in edgeopt.list_models()
    assert Path(edgeopt.load_bundle.__code__.co_filename).name == "bundle.py"


def test_peak_rss_is_the_programs_own_not_its_parents():
    """getrusage's ru_maxrss survives execve, so a runner started by a large process (a bench script, --auto
    with torch loaded) would report that process's peak; the runner reads its own high-water mark."""
    import subprocess
    import sys

    ballast = bytearray(600 * 1024 * 1024)  # resident in this (parent) process
    ballast[::4096] = b"x" * len(ballast[::4096])
    out = subprocess.run([sys.executable, "-c", "from edgeopt._loop import peak_rss_mb; print(peak_rss_mb())"],
                         capture_output=True, text=True, check=True).stdout
    assert float(out) < 300, f"the child reports {out.strip()} MiB: its parent's peak, not its own"
    del ballast
