"""End-to-end mode for detection: image file -> letterbox -> raw YOLOv8-style head maps -> DFL decode + NMS
(edgeopt.postprocess, numpy) -> boxes in the photo's pixels, run by the device-side e2e runner through the
protocol on the local device."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from edgeopt.bundle import Manifest, write_bundle
from edgeopt.harness.devices import get_device
from edgeopt.harness.protocol import Protocol, measure
from edgeopt.postprocess import letterbox
from edgeopt.postprocess import postprocess as head_postprocess

SIZE, NC, REG = 64, 3, 16
C = 4 * REG + NC


def _head_bundle(path: Path) -> Path:
    """A real ONNX graph with LeYOLO's output contract: (1, 3, 64, 64) -> three (1, 4*16+3, h, w) maps at
    strides 8/16/32 (one strided conv each), class 0 favoured so that NMS has overlapping boxes to drop."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeopt._ort import ort_session

    rng = np.random.default_rng(0)
    nodes, inits, outs = [], [], []
    for i, s in enumerate((8, 16, 32)):
        w = (rng.standard_normal((C, 3, s, s)) * 0.05).astype(np.float32)
        b = np.zeros(C, np.float32)
        b[4 * REG:] = (1.5, -1.0, -3.0)  # class logits: class 0 above the 0.25 threshold, others mostly below
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Conv", ["images", f"w{i}", f"b{i}"], [f"p{i + 3}"], kernel_shape=[s, s], strides=[s, s]))
        outs.append(helper.make_tensor_value_info(f"p{i + 3}", TensorProto.FLOAT, [1, C, SIZE // s, SIZE // s]))
    g = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])], outs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    x = rng.random((1, 3, SIZE, SIZE), dtype=np.float32)
    with write_bundle(path, overwrite=True) as wr:
        (wr.root / "model.onnx").write_bytes(m.SerializeToString())
        ref = dict(zip(["p3", "p4", "p5"], ort_session(wr.root / "model.onnx").run(None, {"images": x}), strict=True))
        wr.write_reference({"images": x}, ref)
        wr.finish(Manifest.draft({
            "model": {"name": "tiny_head", "family": "tiny", "task": "detection"}, "weights": {"kind": "random"},
            "backend": "onnxruntime", "target": "host", "precision": "fp32", "artifact": "model.onnx",
            "inputs": [{"name": "images", "shape": [1, 3, SIZE, SIZE], "dtype": "float32"}],
            "outputs": [{"name": n, "shape": list(a.shape), "dtype": "float32"} for n, a in ref.items()],
            "passes": [], "fidelity": {}, "check": {"cosine_min": 0.999}, "onnx_ir": onnx.IR_VERSION,
        }))
    return path


@pytest.mark.parametrize("where", ["local", "ssh"])
def test_detection_e2e_runs_decode_and_nms_in_photo_pixels(where, request, tmp_path):
    """On `local` and on the loopback ssh:// board, which runs only the device-side files it was sent."""
    from PIL import Image

    from edgeopt._ort import ort_session

    bundle = _head_bundle(tmp_path / "head.bundle")
    photo = (np.random.default_rng(1).random((90, 150, 3)) * 255).astype(np.uint8)  # 150 x 90: letterboxed with padding
    Image.fromarray(photo).save(tmp_path / "photo.png")
    if where == "local":
        dev = get_device("local")
    else:
        sshd = request.getfixturevalue("sshd")
        dev = get_device(sshd.uri, identity=str(sshd.identity), known_hosts=str(sshd.trusted_known_hosts()), python=sys.executable,
                         remote_dir=str(tmp_path / "board"))
    try:
        res = measure(dev, bundle, Protocol(warmup=1, runs=3, min_seconds=0, end_to_end=str(tmp_path / "photo.png"), cooldown=False))
    finally:
        dev.close()
    e2e = res["e2e"]
    assert e2e["task"] == "detection" and e2e["end_to_end"]["runs"] >= 3 and e2e["postprocess_ms_p50"] > 0

    # The same chain on the host, step by step: the letterbox, the graph, the numpy decode + NMS.
    x, meta = letterbox(np.asarray(Image.open(tmp_path / "photo.png").convert("RGB")), SIZE)
    assert meta["pad_y"] > 0 and meta["pad_x"] == 0  # the wide photo is padded top and bottom
    maps = ort_session(bundle / "model.onnx").run(None, {"images": x})
    want = head_postprocess(maps, meta=meta)
    got = e2e["output"]
    assert 1 <= len(got) == len(want)
    np.testing.assert_allclose([d["box"] for d in got], want[:, :4], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose([d["score"] for d in got], want[:, 4], rtol=1e-5)
    assert [d["label"] for d in got] == want[:, 5].astype(int).tolist()
    boxes = np.asarray([d["box"] for d in got])
    assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= 150).all() and (boxes[:, [1, 3]] <= 90).all()  # photo pixels
    above = sum(int((1 / (1 + np.exp(-m[0, 4 * REG:])) > 0.25).any(0).sum()) for m in maps)
    assert len(got) < above  # NMS dropped overlapping candidates


def test_classification_e2e_keeps_the_imagenet_recipe(tmp_path):
    from PIL import Image

    from edgeopt.harness.e2e_runner import postprocess, preprocess

    Image.new("RGB", (40, 30), (250, 10, 10)).save(tmp_path / "red.png")
    x, meta = preprocess(str(tmp_path / "red.png"), [1, 3, 16, 16], {})
    assert meta is None and x.shape == (1, 3, 16, 16) and x[0, 0].mean() > 1.5 > 0 > x[0, 1].mean()
    assert postprocess("classification", {"y": np.array([[0.1, 3.0, 0.2]])})[0][0] == 1
    with pytest.raises(ValueError, match="square RGB"):
        preprocess(str(tmp_path / "red.png"), [1, 3, 32, 48], {}, "detection")


@pytest.mark.slow
def test_leyolo_nano_e2e_matches_host_detect(tmp_path):
    """The real LeYOLO-Nano bundle, end to end on a photo: the device-side numpy chain gives the host's
    (torch model + torchvision NMS) detections."""
    import torch
    from PIL import Image
    from skimage import data
    from test_leyolo import _decisive

    import edgeopt.api as api
    from edgeopt.models import build
    from edgeopt.models.leyolo import detect

    torch.manual_seed(0)
    module = _decisive(build("leyolo_nano"), "leyolo_nano")
    b = api.compile("leyolo_nano", output=tmp_path / "nano.bundle", samples=2, module=module)
    photo = data.astronaut()
    Image.fromarray(photo).save(tmp_path / "astronaut.png")
    res = measure(get_device("local"), b.path, Protocol(warmup=1, runs=2, min_seconds=0, end_to_end=str(tmp_path / "astronaut.png"), cooldown=False))
    got = res["e2e"]["output"]
    x, meta = letterbox(np.asarray(Image.open(tmp_path / "astronaut.png").convert("RGB")), b.manifest.inputs[0].shape[2])
    with torch.no_grad():
        outs = [o.numpy() for o in module(torch.from_numpy(x))]
    want = detect(outs, meta=meta)
    assert len(got) == len(want) >= 1
    from edgeopt.postprocess import box_iou

    # Near-equal scores may be ordered differently by ORT and torch: pair each box with the host's box of the
    # same class it overlaps most (class-aware NMS keeps one box per class where classes share a place).
    same = np.asarray([d["label"] for d in got])[:, None] == want[None, :, 5].astype(int)
    iou = box_iou(np.asarray([d["box"] for d in got]), want[:, :4]) * same
    assert (iou.max(1) > 0.99).all() and len(set(iou.argmax(1).tolist())) == len(want)


def test_board_side_files_hold_what_detection_e2e_imports(tmp_path):
    """A real board has no edgeopt installed: only the zip the ssh:// device pushes. Import the e2e runner's
    detection chain from that zip alone (this checkout's editable-install finder removed)."""
    import subprocess

    from edgeopt.harness.devices.ssh import device_side_zip

    bundle = _head_bundle(tmp_path / "head.bundle")  # the plain runner's outputs check, from the zip alone too
    z = tmp_path / "edgeopt-device.zip"
    z.write_bytes(device_side_zip()[0])
    code = (
        "import sys\n"
        "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        f"sys.path.insert(0, {str(z)!r})\n"
        "import numpy as np\n"
        "import edgeopt\n"
        f"assert edgeopt.__file__.startswith({str(z)!r}), edgeopt.__file__\n"
        "from edgeopt.harness.e2e_runner import postprocess\n"
        "maps = [np.zeros((1, 67, s, s), np.float32) for s in (8, 4, 2)]\n"
        "print(len(postprocess('detection', dict(zip('abc', maps)), list('abc'))))\n"
        "from edgeopt.runner import run_bundle\n"
        "from edgeopt.measurement import MeasureRequest, Protocol\n"
        f"print(run_bundle({str(bundle)!r}, MeasureRequest(Protocol(warmup=0, runs=1, min_seconds=0))).outputs_match)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-800:]
    n, match = r.stdout.split()
    assert int(n) >= 1 and match == "True"
