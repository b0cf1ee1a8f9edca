"""Core ML backend on Linux: real coremltools conversions to .mlpackage, spec checks, compression.

Running the package needs macOS (device_tests has the `macos` case); here we check what Linux can:
the saved package's interface, MIL ops, weight compression ops and sizes, and the clear refusal to run.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("coremltools")

import edgeopt  # noqa: E402
from edgeopt.bundle import load_bundle  # noqa: E402
from edgeopt.errors import EdgeoptError  # noqa: E402
from edgeopt.runtimes import get_backend  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _tiny import tiny_spec  # noqa: E402

TINY = tiny_spec().name
LINUX = platform.system() != "Darwin"
SMALL = {"weight_threshold": 256}  # the tiny model's tensors are small; compress them anyway


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("coreml")
    variants = {
        "fp32": (None, {}),
        "fp16": (None, {"precision": "fp16"}),
        "w8": ("quantize:int8", SMALL),  # the quantize pass is delegated: 8-bit linear weights
        "pal4": (None, {"compression": "pal4", **SMALL}),
        "prune50": (None, {"compression": "prune50", **SMALL}),
    }
    return {
        k: edgeopt.compile(TINY, backend="coreml", passes=p, options=o, output=root / f"{k}.bundle", samples=2).path
        for k, (p, o) in variants.items()
    }


def test_fp32_package_spec_and_ops(bundles):
    b = load_bundle(bundles["fp32"])
    m = b.manifest
    assert m["artifact"] == "model.mlpackage" and b.artifact.is_dir()
    assert (b.artifact / "Manifest.json").is_file()
    assert any(rel.endswith("weight.bin") for rel in m["files"])  # bundle.py hashed the folder's files
    d = m["backend_details"]
    assert d["frontend"]["name"] == "torch.export" and d["opset"].startswith("CoreML")
    assert d["mil_ops"]["conv"] == 3 and d["mil_ops"]["softmax"] == 1 and d["mil_ops"]["linear"] >= 2
    assert d["compute_precision"] == "fp32" and d["compressed_weight_ops"] == {}
    assert d["package_bytes"] == b.size_bytes() and d["weights_bytes"] > 4 * 3000
    import coremltools as ct

    spec = ct.models.MLModel(str(b.artifact), skip_model_load=True).get_spec()
    assert [i.name for i in spec.description.input] == ["image"]
    assert list(spec.description.input[0].type.multiArrayType.shape) == [1, 3, 64, 64]
    assert [o.name for o in spec.description.output] == ["logits"]


@pytest.mark.skipif(not LINUX, reason="on macOS the artifact runs; device_tests covers it")
def test_not_runnable_here_is_recorded_and_refused(bundles):
    m = load_bundle(bundles["fp32"]).manifest
    assert "runs only on macOS" in m["backend_details"]["host_runnable"]
    assert "runs only on macOS" in m["fidelity_note"] and m["fidelity"] == {}
    with pytest.raises(EdgeoptError, match="cannot run on Linux: Core ML exists only on macOS"):
        get_backend("coreml").load(bundles["fp32"], m)
    p = subprocess.run([sys.executable, "-m", "edgeopt.runner", str(bundles["fp32"])], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "only on macOS" in json.loads(p.stdout.strip().splitlines()[-1])["error"]


def test_compression_changes_size_and_ops(bundles):
    size = {k: load_bundle(p).manifest["backend_details"]["weights_bytes"] for k, p in bundles.items()}
    assert size["fp16"] < 0.6 * size["fp32"]
    assert size["w8"] < size["fp16"] and size["pal4"] < size["w8"]
    d = {k: load_bundle(p).manifest["backend_details"] for k, p in bundles.items()}
    assert d["fp16"]["mil_ops"].get("cast", 0) >= 1  # fp32 input cast to fp16 compute
    assert "constexpr_lut_to_dense" in d["pal4"]["compressed_weight_ops"]
    assert any("sparse" in k for k in d["prune50"]["compressed_weight_ops"])
    assert any(k in d["w8"]["compressed_weight_ops"] for k in ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"))
    m = load_bundle(bundles["w8"]).manifest
    assert m["precision"] == "w8" and m["delegated_passes"]["quantize"]["mode"] == "int8"
    assert load_bundle(bundles["pal4"]).manifest["tools"]["scikit-learn"]


def test_bad_options_are_clear(tmp_path):
    with pytest.raises(EdgeoptError, match="unknown coreml compression 'pal3'.*pal4"):
        edgeopt.compile(TINY, backend="coreml", options={"compression": "pal3"}, output=tmp_path / "a", samples=1)
    with pytest.raises(EdgeoptError, match="unknown Core ML deployment target 'iOS9'.*iOS17"):
        edgeopt.compile(TINY, backend="coreml", options={"deployment_target": "iOS9"}, output=tmp_path / "b", samples=1)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_unsupported_quantize_mode_is_refused_before_any_work(tmp_path):
    said: list[str] = []
    with pytest.raises(EdgeoptError, match="coreml cannot implement quantize mode 'int4'.*quantize:int8") as ei:
        edgeopt.compile(TINY, backend="coreml", passes="quantize:mode=int4", output=tmp_path / "a", samples=1, progress=said.append)
    assert "supported on coreml" in ei.value.hint
    assert said == [] and not (tmp_path / "a").exists()  # refused before the model was built


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["none", "w8", "pal6", "pal4", "prune50"])
def test_efficientformer_l1_compressions(tmp_path, compression):
    b = edgeopt.compile("efficientformer_l1", backend="coreml", options={"compression": compression, "precision": "fp16"}, output=tmp_path / "b", samples=1)
    d = b.manifest["backend_details"]
    assert d["mil_ops"]["conv"] >= 30
    limit = {"none": 26e6, "w8": 14e6, "pal6": 10e6, "pal4": 7e6, "prune50": 20e6}[compression]
    assert d["weights_bytes"] < limit
