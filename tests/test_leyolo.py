"""LeYOLO: cards vs the paper, ONNX export + ORT parity, post-processing (numpy vs torchvision),
official checkpoints (state dict and ultralytics pickle, loaded without ultralytics), bad input."""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import numpy as np
import pytest
import torch

from edgeopt.errors import CheckpointError
from edgeopt.models import build, get_spec
from edgeopt.models.leyolo import VARIANTS, build_leyolo, detect, letterbox, torchvision_nms, ultralytics_macs
from edgeopt.postprocess import decode, map50, nms, postprocess, scale_boxes

ALL = [f"leyolo_{v}" for v in VARIANTS]


@pytest.mark.parametrize("name", ALL)
def test_card_params_and_macs_match_paper(name):
    """Params within 3% (they are exact) and MACs within 5% at every resolution the paper reports."""
    spec = get_spec(name)
    v = name.split("_", 1)[1]
    m = build(name, device="meta")
    params = sum(p.numel() for p in m.parameters())
    assert params == spec.extras["params_exact"], params
    assert abs(params / 1e6 / spec.paper.params_m - 1) < 0.03
    for size, gflops in VARIANTS[v]["gflops"].items():
        conv_macs, ul_macs = ultralytics_macs(m, size)
        paper_macs = gflops / 2 * 1e9  # the paper's GFLOPs are 2 x MACs
        assert abs(ul_macs / paper_macs - 1) < 0.05, (size, ul_macs, paper_macs)
        # FlopCounterMode's conv-only count sits below by the BN share, as the card's note says
        assert -0.08 < conv_macs / paper_macs - 1 < 0.0, (size, conv_macs, paper_macs)
    assert spec.paper.macs_g == pytest.approx(VARIANTS[v]["gflops"][spec.inputs[0].shape[-1]] / 2)


def test_layer_list_matches_official_yaml_shapes():
    """Spot checks against the official YAML as parsed by ultralytics (channels after width scaling)."""
    small = build_leyolo("small", device="meta")
    # width 1.33: 16 -> 24, 576 -> 768 expansion, SPPF 96 -> 128, DNiN class branch max(ch0, 80)
    assert small.model[0].c.weight.shape == (24, 3, 3, 3)
    assert small.model[10].layers[0].c.weight.shape == (768, 88, 1, 1)
    assert small.model[14].cv2.conv.weight.shape == (128, 256, 1, 1)
    det = small.model[35]
    assert det.cv2[0][0].conv.weight.shape == (64, 48, 1, 1) and det.cv3[0][0].conv.weight.shape == (80, 48, 1, 1)
    assert det.cv3[0][1].conv.weight.shape == (80, 1, 3, 3)  # depthwise
    # e=None with pw=False: the P3 head block is depthwise on the concat width (88 + 48)
    assert small.model[22].layers[0].c.weight.shape == (136, 1, 3, 3)
    medium = build_leyolo("medium", device="meta")
    assert [type(m).__name__ for m in medium.model][-1] == "Detect" and len(medium.model) == 43
    assert medium.froms[-1] == [27, 32, 37]


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    return build("leyolo_nano")


@pytest.fixture(scope="module")
def nano_outputs(nano):
    spec = get_spec("leyolo_nano")
    with torch.inference_mode():
        return [tuple(t.numpy() for t in nano(torch.from_numpy(s["images"]))) for s in spec.sample_inputs(2)]


def test_sample_inputs_are_letterboxed_photos():
    spec = get_spec("leyolo_nano")
    (s,) = spec.sample_inputs(1)
    x = s["images"]
    assert x.shape == (1, 3, 320, 320) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    from edgeopt.models.inputs import photo

    img = photo("astronaut")  # 512x512: no padding; coffee is 400x600: grey bars top and bottom
    _, meta = letterbox(photo("coffee"), 320)
    assert meta["pad_x"] == 0 and meta["pad_y"] > 0 and meta["gain"] == pytest.approx(320 / 600)
    assert img.shape[:2] == (512, 512)


def test_decode_matches_ultralytics_dfl(nano, nano_outputs):
    """Our numpy DFL decode equals the torch formulation with the module's own DFL conv (weights 0..15)."""
    outs = nano_outputs[0]
    boxes, scores = decode(outs)
    dfl = nano.model[-1].dfl.conv
    ref = []
    for o, s in zip(outs, (8, 16, 32), strict=True):
        t = torch.from_numpy(o)
        b, _, h, w = t.shape
        box = t[:, :64].reshape(b, 4, 16, h * w).transpose(2, 1).softmax(1)
        dist = dfl(box).view(b, 4, h * w)[0].T  # (hw, 4) ltrb
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        anc = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)
        ref.append(torch.cat([anc - dist[:, :2], anc + dist[:, 2:]], -1) * s)
    np.testing.assert_allclose(boxes, torch.cat(ref).detach().numpy(), atol=1e-3)
    assert scores.shape == (sum(o.shape[2] * o.shape[3] for o in outs), 80)


def test_numpy_nms_agrees_with_torchvision(nano_outputs):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 300, (500, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(5, 80, (500, 2)).astype(np.float32)], 1)
    scores = rng.uniform(0, 1, 500).astype(np.float32)
    for thr in (0.3, 0.45, 0.7):
        np.testing.assert_array_equal(nms(boxes, scores, thr), torchvision_nms(boxes, scores, thr))
    # the whole chain on real head outputs (class logits scaled up so that many boxes pass conf)
    for outs in nano_outputs:
        hot = [np.concatenate([o[:, :64], (o[:, 64:] - o[:, 64:].mean()) * 40], 1) for o in outs]
        a = postprocess(hot, conf=0.25)
        b = detect(hot, conf=0.25)
        assert len(a) > 5
        np.testing.assert_array_equal(a, b)


def test_boxes_in_photo_coordinates():
    meta = {"gain": 0.5, "pad_x": 0.0, "pad_y": 10.0, "w": 600.0, "h": 400.0}
    out = scale_boxes(np.array([[10, 20, 110, 220]], np.float32), meta)
    np.testing.assert_allclose(out, [[20, 20, 220, 400]])  # y2 = (220 - 10) / 0.5 = 420, clipped to h


def test_map50():
    g = np.array([[0, 0, 10, 10, 1, 3], [20, 20, 40, 40, 1, 5]], np.float32)
    assert map50([g], [g]) == pytest.approx(1.0)
    half = np.array([[0, 0, 10, 10, 0.9, 3], [20, 20, 40, 40, 0.9, 1]], np.float32)  # class 5 box mislabelled
    assert map50([g], [half]) == pytest.approx(0.5)


def _decisive(module, name: str = "leyolo_nano", scale: float = 2.0, bias: float = -5.0):
    """Random init gives features that hardly depend on the image (BN running stats at their defaults),
    so every anchor scores alike and detection rankings are decided by rounding noise. Re-estimate the BN
    statistics on the sample photos (as a trained network would have them) and set the class logits'
    scale/offset, so that the detections, and the mAP between two runtimes, mean something."""
    spec = get_spec(name)
    x = torch.from_numpy(np.concatenate([s["images"] for s in spec.sample_inputs(4)]))
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration pass
    module.train()
    with torch.no_grad():
        module(x)
        for branch in module.model[-1].cv3:
            branch[-1].weight.mul_(scale)
            branch[-1].bias.fill_(bias)
    return module.eval()


def test_compile_nano_onnx_ort_parity(tmp_path):
    """Default end-to-end: build, export, ORT parity, bundle, fidelity with the detection metric."""
    import edgeopt.api as api

    torch.manual_seed(0)
    b = api.compile("leyolo_nano", output=tmp_path / "nano.bundle", samples=2, module=_decisive(build("leyolo_nano"), "leyolo_nano"))
    par = b.manifest["export"]["parity"]
    assert par["cosine"] > 0.9999 and par["rel_max_abs"] < 1e-3
    fid = b.manifest["fidelity"]
    assert fid["map50"] > 0.97 and fid["gt_boxes"] >= 20 and fid["gt_fallback_images"] == 0
    assert [o["shape"] for o in b.manifest["outputs"]] == [[1, 144, 40, 40], [1, 144, 20, 20], [1, 144, 10, 10]]


# ---------------------------------------------------------------------------------- checkpoints


def test_state_dict_checkpoint_roundtrip(tmp_path, nano, nano_outputs):
    path = tmp_path / "nano_sd.pt"
    torch.save({"model": nano.state_dict()}, path)
    m = build("leyolo_nano", weights=path)
    x = torch.from_numpy(get_spec("leyolo_nano").sample_inputs(1)[0]["images"])
    with torch.inference_mode():
        np.testing.assert_array_equal(m(x)[0].numpy(), nano_outputs[0][0])


def _fake_ultralytics(monkeypatch):
    """Throwaway classes named like ultralytics' own, only so that the test can write such a pickle."""
    mods = {}
    for name in ("ultralytics", "ultralytics.nn", "ultralytics.nn.tasks", "ultralytics.nn.modules",
                 "ultralytics.nn.modules.conv", "ultralytics.nn.modules.block", "ultralytics.nn.modules.head",
                 "ultralytics.utils"):
        mods[name] = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, mods[name])
    where = {"MnConv": ("conv", "mn_conv"), "Conv": ("conv", "Conv"), "MobileNetV3Block": ("block", "MobileNetV3_BLOCK"),
             "SPPF": ("block", "SPPF"), "DFL": ("block", "DFL"), "Detect": ("head", "Detect")}
    made = {}

    def rename(cls):
        if cls.__name__ not in where:
            return cls
        if cls not in made:
            sub, new = where[cls.__name__]
            mod = f"ultralytics.nn.modules.{sub}"
            made[cls] = type(new, (cls,), {"__module__": mod, "__qualname__": new})
            setattr(mods[mod], new, made[cls])
        return made[cls]

    class DetectionModel(torch.nn.Module):
        pass

    DetectionModel.__module__, DetectionModel.__qualname__ = "ultralytics.nn.tasks", "DetectionModel"
    mods["ultralytics.nn.tasks"].DetectionModel = DetectionModel

    class IterableSimpleNamespace(types.SimpleNamespace):
        pass

    IterableSimpleNamespace.__module__, IterableSimpleNamespace.__qualname__ = "ultralytics.utils", "IterableSimpleNamespace"
    mods["ultralytics.utils"].IterableSimpleNamespace = IterableSimpleNamespace
    return rename, DetectionModel, IterableSimpleNamespace


def test_ultralytics_pickle_loads_without_ultralytics(tmp_path, monkeypatch):
    """An official-format .pt: {'model': <DetectionModel>, ...} pickled half precision, as ultralytics saves."""
    assert importlib.util.find_spec("ultralytics") is None
    torch.manual_seed(1)
    src = build_leyolo("nano").eval()
    with torch.no_grad():  # weights exactly representable in fp16, so the loaded model must match exactly
        for t in [*src.parameters(), *src.buffers()]:
            if t.is_floating_point():
                t.copy_(t.half().float())
    path = tmp_path / "LeYOLONano.pt"
    with monkeypatch.context() as mp:
        rename, DetectionModel, NS = _fake_ultralytics(mp)
        donor = build_leyolo("nano").eval()
        donor.load_state_dict(src.state_dict())
        for mod in donor.modules():
            mod.__class__ = rename(type(mod))
        det = DetectionModel()
        det.model = torch.nn.Sequential(*donor.model)  # ultralytics keeps layers in a Sequential
        det.stride = torch.tensor([8.0, 16.0, 32.0])
        det.names = {i: f"class{i}" for i in range(80)}
        det.yaml = {"nc": 80, "scales": {"n": [1.0, 1.0, 576]}}
        det.args = NS(imgsz=320, task="detect")
        det.model[-1].stride = det.stride
        ckpt = {"date": "2024-05-01", "version": "8.1.0", "epoch": -1, "best_fitness": None, "model": det.half(),
                "ema": None, "updates": None, "optimizer": None, "train_args": {"imgsz": 320}, "train_metrics": {"mAP50": 0.4}}
        torch.save(ckpt, path)
    assert "ultralytics" not in sys.modules
    m = build("leyolo_nano", weights=path)
    x = torch.from_numpy(get_spec("leyolo_nano").sample_inputs(1)[0]["images"])
    with torch.inference_mode():
        for a, b in zip(m(x), src(x), strict=True):
            torch.testing.assert_close(a, b)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.target}",))


def test_malicious_pickle_is_refused_naming_the_class(tmp_path):
    _Evil.target = str(tmp_path / "pwned")
    path = tmp_path / "evil.pt"
    torch.save({"model": _Evil()}, path)
    with pytest.raises(CheckpointError, match=r"'(posix|os)\.system'.*not allowed"):
        build("leyolo_nano", weights=path)
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_for_another_variant_names_key_and_shapes(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(build_leyolo("small").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"'model\.0\.c\.weight' has shape \(24, 3, 3, 3\) in the checkpoint but \(16, 3, 3, 3\)"):
        build("leyolo_nano", weights=path)


def test_missing_checkpoint_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        build("leyolo_nano", weights=tmp_path / "nope.pt")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["leyolo_small", "leyolo_medium", "leyolo_large"])
def test_compile_other_variants(tmp_path, name):
    import edgeopt.api as api

    torch.manual_seed(0)
    b = api.compile(name, output=tmp_path / "b", samples=2, module=_decisive(build(name), name))
    assert b.manifest["export"]["parity"]["cosine"] > 0.9999
    assert b.manifest["fidelity"]["map50"] > 0.97 and b.manifest["fidelity"]["gt_fallback_images"] == 0


class _GetattrGadget:
    def __reduce__(self):
        return (getattr, ("text", "upper"))


class _EvalGadget:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize(("gadget", "name"), [(_GetattrGadget, "builtins.getattr"), (_EvalGadget, "builtins.eval")])
def test_other_code_gadgets_are_refused(tmp_path, gadget, name):
    path = tmp_path / "gadget.pt"
    torch.save({"model": gadget(), "ema": None}, path)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        build("leyolo_nano", weights=path)
