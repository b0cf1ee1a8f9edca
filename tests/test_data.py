"""The user's data (edgeopt.data, compile --data): formats, splits, intervals, calibration from the data, accuracy
against labels, COCO mAP, prompts, the gates, and every bad input failing before slow work with nothing written.

Real data only, made here from what packages ship: scikit-learn's digits written as a labelled PNG folder,
scikit-image's photographs as a COCO set whose annotations are the fp32 model's own detections (mAP 1.0 by
construction), prompts for tinygpt_v_tiny. No network.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeopt import api
from edgeopt.bundle import Manifest, read_manifest
from edgeopt.data import DataError, DataRequest, choose_splits, content_sha256, scan
from edgeopt.errors import EdgeoptError
from edgeopt.stats import Accuracy, Figure, gate_at_least, gate_max_drop, min_samples_for_lower_bound, wilson

DIGITS_MODEL = "tiny_digits_test"


# ------------------------------------------------------------------------------------------------ fixtures


def digits_spec():
    """A registered 32x32 classifier with timm's split (forward_features / forward_head / get_classifier), so that
    `calibrated` weights (edgeopt.calibrate: head trained on load_digits) classify the digits in a second."""
    from edgeopt.models.registry import _REGISTRY, InputSpec, ModelSpec, _discover, register

    _discover()
    if DIGITS_MODEL not in _REGISTRY:
        def build(**_kw):
            import torch
            from torch import nn

            class DigitsNet(nn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    self.conv = nn.Conv2d(3, 4, 3, padding=1)
                    self.head = nn.Linear(8 * 8 * 7, 10)

                def forward_features(self, x):
                    p = nn.functional.avg_pool2d(x, 4)
                    return torch.cat([p, nn.functional.avg_pool2d(torch.relu(self.conv(x)), 4)], 1).flatten(1)

                def forward_head(self, f):
                    return self.head(f)

                def get_classifier(self):
                    return self.head

                def forward(self, x):
                    return self.forward_head(self.forward_features(x))

            return DigitsNet().eval()

        def samples(n: int):
            from edgeopt.models.inputs import image_samples

            return image_samples(n, "image", (32, 32), crop_pct=1.0)

        register(ModelSpec(name=DIGITS_MODEL, family="tiny_test", task="classification", builder=build,
                           inputs=(InputSpec("image", (1, 3, 32, 32)),), outputs=("logits",), sample_inputs=samples,
                           extras={"crop_pct": 1.0, "num_classes": 10}, description="test-only digits classifier"))
    return _REGISTRY[DIGITS_MODEL]


def write_digits(root: Path, n: int, classes: int = 10) -> Path:
    """The first n load_digits images (of the first `classes` digits) as 8x8 greyscale PNGs in class folders."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.flatnonzero(d.target < classes)[:n]
    for i in keep:
        folder = root / str(d.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((d.images[i] * 16).clip(0, 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("data") / "digits", 300)


@pytest.fixture(scope="module")
def digits_bundle(tmp_path_factory, digits) -> Path:
    digits_spec()
    out = tmp_path_factory.mktemp("bundles") / "digits-int8.bundle"
    return api.compile(DIGITS_MODEL, passes="quantize:int8", weights="calibrated", output=out, data=digits,
                       calib_samples=32, eval_samples=200).path


# ------------------------------------------------------------------------------------------------ statistics


def test_wilson_intervals_and_what_a_gate_can_resolve():
    lo, hi = wilson(8, 8)
    assert 0.67 < lo < 0.68 and hi == 1.0  # 8/8 agreement: the truth may be as low as 0.68
    assert min_samples_for_lower_bound(0.99) == 381 and wilson(381, 381)[0] >= 0.99 > wilson(380, 380)[0]
    res = gate_at_least(Figure.proportion("top1_agreement", np.ones(8, bool)), 0.99)
    assert res.status == "unresolved" and res.need_n == 381 and "8 samples" in res.reason
    assert gate_at_least(Figure.proportion("top1_agreement", np.ones(400, bool)), 0.99).status == "pass"
    assert gate_at_least(Figure.proportion("top1_agreement", np.r_[np.ones(390), np.zeros(10)].astype(bool)), 0.99).status == "fail"
    # a paired drop: 2 samples lost, none gained, on 1000
    acc = Accuracy.paired("top1", np.ones(1000, bool), np.r_[np.zeros(2), np.ones(998)].astype(bool))
    assert acc.drop_points == pytest.approx(0.2) and acc.drop_points_ci95[1] > 0.2
    assert gate_max_drop(acc, 1.0).status == "pass" and gate_max_drop(acc, 0.3).status in ("fail", "unresolved")
    assert gate_max_drop(Accuracy.paired("top1", np.ones(50, bool), np.ones(50, bool)), 0.5).status == "unresolved"


# ------------------------------------------------------------------------------------------------ formats


def test_formats_are_detected_from_the_path(tmp_path, digits):
    cat = scan(DataRequest(digits))
    assert cat.format == "image_folder" and cat.class_names == [str(i) for i in range(10)] and len(cat.records) == 300
    assert {r.label for r in cat.records if r.image.parent.name == "7"} == {7}  # sorted folder names -> 0..K-1
    # --labels: another mapping (reversed order), human names from the rest of each line
    lab = tmp_path / "labels.txt"
    lab.write_text("".join(f"{d} digit {d}, numeral\n" for d in range(9, -1, -1)))
    cat = scan(DataRequest(digits, labels=lab))
    assert {r.label for r in cat.records if r.image.parent.name == "7"} == {2} and cat.class_names[0] == "digit 9"
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted((digits / "3").iterdir())[:5]:
        (flat / p.name).write_bytes(p.read_bytes())
    assert scan(DataRequest(flat)).format == "image_folder_unlabelled"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "What is this?", "image": "flat/' + sorted(flat.iterdir())[0].name + '"}\n\n{"prompt": "Hi"}\n')
    cat = scan(DataRequest(prompts))
    assert cat.format == "prompts" and [r.line for r in cat.records] == [1, 3] and cat.records[0].image is not None
    with pytest.raises(DataError, match="a folder of images"):
        scan(DataRequest(tmp_path / "labels.txt"))


def test_splits_are_seeded_disjoint_and_capped():
    c, e, rest = choose_splits(1000, 128, 512, seed=0)
    assert (len(c), len(e), len(rest)) == (128, 512, 360) and not set(c) & set(e)
    c2, e2, _ = choose_splits(1000, 128, 512, seed=0)
    assert (c == c2).all() and (e == e2).all()
    c, e, rest = choose_splits(40, 128, 512)  # capped by the data, in proportion
    assert len(c) + len(e) == 40 and len(c) >= 1 and len(e) >= 1 and not set(c) & set(e)


def test_content_hash_covers_names_and_bytes(tmp_path, digits):
    files = sorted((digits / "1").iterdir())[:3]
    h = content_sha256(files, digits)
    assert h == content_sha256(list(reversed(files)), digits)
    copy = tmp_path / "copy" / "1"
    copy.mkdir(parents=True)
    for p in files:
        (copy / p.name).write_bytes(p.read_bytes())
    assert content_sha256(sorted(copy.iterdir()), tmp_path / "copy") == h
    (copy / files[0].name).rename(copy / "renamed.png")
    assert content_sha256(sorted(copy.iterdir()), tmp_path / "copy") != h


# ------------------------------------------------------------------------------------------------ compile --data


def test_digits_int8_calibrated_on_the_data_with_accuracy_and_intervals(digits_bundle):
    m = read_manifest(digits_bundle)
    d = m.to_json()
    assert d["data"]["format"] == "image_folder" and d["data"]["calibration"] == 32 and d["data"]["evaluation"] == 200
    assert len(d["data"]["sha256"]) == 64 and m.data is not None and m.data.classes == 10
    q = next(p for p in m.passes if p["name"] == "quantize")
    assert q["config"]["calibration_samples"] == 32  # calibrated on the whole calibration split, not 8 photographs
    f = m.fidelity
    acc = f["accuracy"]
    assert set(acc) >= {"metric", "reference", "artifact", "n", "ci95"} and acc["metric"] == "top1" and acc["n"] == 200
    assert acc["reference"] > 0.7, acc  # the calibrated weights classify the digits
    assert acc["ci95"][0] <= acc["artifact"] <= acc["ci95"][1] and abs(acc["drop_points"]) < 10
    ag = f["agreement"]
    assert ag["metric"] == "top1_agreement" and ag["n"] == 200 and ag["ci95"][0] <= ag["value"] == f["top1_agreement"]
    assert f["evaluated_on"] == "data: evaluation split" and f["n"] == 200
    # the bundle round-trips through the typed manifest
    assert Manifest.from_json(d).data == m.data


def test_without_data_the_manifest_says_the_bundled_photographs(tmp_path):
    digits_spec()
    m = api.compile(DIGITS_MODEL, output=tmp_path / "b", samples=4).manifest
    assert m.data is None and m.to_json()["data"] is None
    assert m.fidelity["evaluated_on"] == "bundled photographs" and m.fidelity["n"] == 4
    assert m.fidelity["agreement"]["n"] == 4 and m.fidelity["agreement"]["ci95"][0] < 0.6
    from edgeopt.report import evaluated_on, fidelity_lines

    assert evaluated_on(m.fidelity) == "4 bundled photos" and "4 bundled photographs" in fidelity_lines(m)[0]
    old = m.to_json()
    old.pop("data")
    assert Manifest.from_json(old).data is None  # bundles written before --data still load


def test_max_drop_gate_on_the_pessimistic_end(tmp_path, digits):
    digits_spec()
    # 0.5 points cannot be shown on 60 samples: refused before any model is built
    with pytest.raises(EdgeoptError, match="cannot be resolved on 60 evaluation samples") as e:
        api.compile(DIGITS_MODEL, output=tmp_path / "b", data=digits, calib_samples=8, eval_samples=60, max_drop=0.5)
    assert "--eval-samples 765" in e.value.hint and not (tmp_path / "b").exists()
    b = api.compile(DIGITS_MODEL, output=tmp_path / "ok", data=digits, calib_samples=8, eval_samples=60, max_drop=10.0,
                    weights="calibrated")
    assert b.manifest.fidelity["gate"]["status"] == "pass"


def test_cli_compile_with_data_prints_the_data_and_writes_no_store(tmp_path, digits, monkeypatch, capsys):
    from edgeopt.cli import main

    digits_spec()
    monkeypatch.setenv("EDGEOPT_DB", f"sqlite:///{tmp_path / 'r.db'}")
    rc = main(["compile", DIGITS_MODEL, "-o", str(tmp_path / "b"), "--data", str(digits), "--calib-samples", "8", "--eval-samples", "40"])
    out = capsys.readouterr().out
    assert rc == 0 and "data: image_folder" in out and "n=40" in out
    rc = main(["compile", DIGITS_MODEL, "-o", str(tmp_path / "c"), "--data", str(tmp_path / "nothing")])
    assert rc == 1 and "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "c").exists() and not (tmp_path / "r.db").exists()


def test_gate_of_an_auto_search_on_data_uses_the_lower_bound(digits_bundle):
    from edgeopt.orchestrate.jobs import Gate

    m = read_manifest(digits_bundle)
    assert "unresolved" in (Gate(0.0, 0.99).check(m) or "")  # 200 samples cannot show 0.99
    lo = m.fidelity["agreement"]["ci95"][0]
    assert Gate(0.0, lo - 1e-6).check(m) is None and Gate(0.0, min(0.985, lo + 0.01)).check(m) is not None


def test_jobs_reuse_a_bundle_only_when_made_on_the_same_data(tmp_path, digits):
    from edgeopt.orchestrate.jobs import CompileUnit, compile_or_reuse

    digits_spec()
    unit, folder = CompileUnit(DIGITS_MODEL, "", "onnxruntime"), tmp_path / "u.bundle"
    req = DataRequest(digits, calib_samples=8, eval_samples=16)
    a = compile_or_reuse(unit, folder, data=req)
    assert a.manifest.data.path == str(digits.resolve()) and compile_or_reuse(unit, folder, data=req).sha256 == a.sha256
    b = compile_or_reuse(unit, folder, samples=2)  # the bundled photographs now: not the same bundle
    assert b.manifest.data is None and b.manifest.fidelity["n"] == 2


@pytest.mark.slow
def test_litert_int8_calibrates_on_the_calibration_split(tmp_path, digits):
    digits_spec()
    b = api.compile(DIGITS_MODEL, backend="tflite", passes="quantize:int8", output=tmp_path / "t", data=digits,
                    calib_samples=24, eval_samples=40, weights="calibrated")
    assert b.manifest.delegated_passes["quantize"]["calibration_samples"] == 24
    assert b.manifest.fidelity["accuracy"]["n"] == 40


def test_sweep_file_takes_data(tmp_path):
    from edgeopt.orchestrate.sweep import load_sweep

    f = tmp_path / "s.yaml"
    f.write_text("models: [efficientformer_l1]\ndata: digits\n")
    cfg = load_sweep(f)
    assert cfg.data == "digits" and cfg.compile.data == str(tmp_path / "digits")


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_inputs_fail_before_slow_work_and_write_nothing(tmp_path, digits, monkeypatch):
    import edgeopt.models.registry as registry

    digits_spec()
    built = []
    real_build = registry.ModelSpec.build
    monkeypatch.setattr(registry.ModelSpec, "build", lambda self, *a, **k: built.append(self.name) or real_build(self, *a, **k))

    def fails(data, match, **kw):
        out = tmp_path / "never.bundle"
        with pytest.raises(DataError, match=match):
            api.compile(DIGITS_MODEL, output=out, data=data, **{"calib_samples": 4, "eval_samples": 8, **kw})
        assert not out.exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    fails(empty, "holds no images")
    bad = tmp_path / "bad"
    write_digits(bad, 20)
    broken = bad / "3" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    fails(bad, "cannot read image .*broken.png", calib_samples=30, eval_samples=30)
    eleven = tmp_path / "eleven"
    write_digits(eleven, 20)
    (eleven / "z_extra").mkdir()
    (eleven / "z_extra" / "x.png").write_bytes((eleven / "0" / next(iter(sorted(p.name for p in (eleven / "0").iterdir())))).read_bytes())
    fails(eleven, "11 classes but tiny_digits_test has 10 outputs")
    assert not built  # none of these built the model
    # --skip-bad-images skips and counts
    b = api.compile(DIGITS_MODEL, output=tmp_path / "skip", data=bad, calib_samples=30, eval_samples=30, skip_bad_images=True)
    assert b.manifest.data.skipped == 1 and b.manifest.data.calibration + b.manifest.data.evaluation == 20


def test_bad_coco_and_prompts_files_are_named(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")
    js = tmp_path / "instances_val.json"
    js.write_text('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [}')
    with pytest.raises(DataError, match="malformed JSON \\(line 1"):
        scan(DataRequest(tmp_path))
    js.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "gone.jpg"}], "annotations": [],
                              "categories": [{"id": 1, "name": "x"}]}))
    with pytest.raises(DataError, match="name 1 image\\(s\\) missing .*gone.jpg"):
        scan(DataRequest(tmp_path))
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "fine"}\n{"prompt": "also fine"}\n{"prompt": 3}\n')
    with pytest.raises(DataError, match="line 3: no \"prompt\" string"):
        scan(DataRequest(p))
    p.write_text('{"prompt": "fine"}\nnot json\n')
    with pytest.raises(DataError, match="line 2: not JSON"):
        scan(DataRequest(p))


# ------------------------------------------------------------------------------------------------ COCO, prompts


def test_coco_evaluator_on_a_hand_built_case():
    from edgeopt.data.coco import coco_map

    coco = {"images": [{"id": 1, "file_name": "a", "width": 100, "height": 100}, {"id": 2, "file_name": "b", "width": 100, "height": 100}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
                            {"id": 2, "image_id": 2, "category_id": 3, "bbox": [50, 50, 30, 30], "area": 900, "iscrowd": 0}],
            "categories": [{"id": 3, "name": "c"}]}
    exact = [[{"bbox": [10, 10, 20, 20], "score": 0.9, "category_id": 3}], [{"bbox": [50, 50, 30, 30], "score": 0.8, "category_id": 3}]]
    assert coco_map(coco, [1, 2], exact) == (pytest.approx(1.0), pytest.approx(1.0))
    one = [exact[0], []]  # half the objects found, at full precision: AP = 0.5 on the 101-point recall grid
    assert coco_map(coco, [1, 2], one)[0] == pytest.approx(0.50495, abs=1e-3)
    assert coco_map(coco, [1, 2], [[], []]) == (0.0, 0.0)


def make_coco_set(root: Path):
    """Six photographs and annotations = the fp32 leyolo_nano's own detections above one score (the 30 best over all
    images, so no other detection of any class outranks one of them): the reference's mAP@0.5:0.95 is 1.0."""
    import torch
    from PIL import Image

    from edgeopt.data.coco import detections
    from edgeopt.data.formats import Record
    from edgeopt.data.prepare import Split, preprocessor
    from edgeopt.export import torch_outputs
    from edgeopt.models import get_spec
    from edgeopt.models.inputs import PHOTOS, photo

    spec = get_spec("leyolo_nano")
    torch.manual_seed(0)
    module = spec.build()
    # random init scores every anchor alike (1e-4): BN statistics from photographs and decisive class logits
    # (as tests/test_leyolo.py does) make the detections depend on the image
    x = torch.from_numpy(np.concatenate([s["images"] for s in spec.sample_inputs(4)]))
    for mod in module.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None
    module.train()
    with torch.no_grad():
        module(x)
        for branch in module.model[-1].cv3:
            branch[-1].weight.mul_(2.0)
            branch[-1].bias.fill_(-5.0)
    module.eval()
    (root / "images").mkdir()
    prep = preprocessor(spec, "detection")
    images, anns = [], []
    cats = list(range(1, 81))
    for i, name in enumerate(PHOTOS[:6], 1):
        img = photo(name)[::2, ::2]
        Image.fromarray(img).save(root / "images" / f"{name}.png")
        x, meta = prep(Record(), img)
        split = Split("one", [Record(image_id=i)], [x], [meta])
        dets = detections([torch_outputs(module, x, ["images"], list(spec.outputs))], split, cats, list(spec.outputs))[0]
        images.append({"id": i, "file_name": f"{name}.png", "width": img.shape[1], "height": img.shape[0]})
        anns += [{"image_id": i, "category_id": d["category_id"], "bbox": d["bbox"], "score": d["score"]} for d in dets]
    # the ground truth: every detection above one score for all images (so no other detection of any class outranks it)
    cut = sorted((a["score"] for a in anns), reverse=True)[29]
    anns = [{"id": k, "image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "area": a["bbox"][2] * a["bbox"][3], "iscrowd": 0} for k, a in enumerate((a for a in anns if a["score"] >= cut), 1)]
    (root / "instances_val.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                           "categories": [{"id": c, "name": f"c{c}"} for c in cats]}))
    return spec, module


def test_coco_accuracy_is_one_by_construction(tmp_path):
    from edgeopt.data import accuracy, prepare
    from edgeopt.export import torch_outputs

    spec, module = make_coco_set(tmp_path)
    ds = prepare(DataRequest(tmp_path, calib_samples=2, eval_samples=4), spec)
    refs = [torch_outputs(module, s, ["images"], list(spec.outputs)) for s in ds.evaluation.samples]
    acc, why = accuracy(ds, refs, refs, list(spec.outputs))
    assert why is None and acc.metric == "map50_95" and acc.n == 4
    assert acc.reference == pytest.approx(1.0) and acc.artifact == pytest.approx(1.0) and acc.ci95[0] == pytest.approx(1.0)
    assert acc.drop_points_ci95 == (pytest.approx(0.0), pytest.approx(0.0)) and acc.extra["map50"]["reference"] == pytest.approx(1.0)


@pytest.mark.slow
def test_compile_on_a_coco_set(tmp_path):
    from edgeopt.data.formats import Catalog

    spec, module = make_coco_set(tmp_path)
    assert isinstance(scan(DataRequest(tmp_path)), Catalog)
    m = api.compile("leyolo_nano", output=tmp_path / "b", data=tmp_path, calib_samples=2, eval_samples=4, module=module).manifest
    acc = m.fidelity["accuracy"]
    assert acc["metric"] == "map50_95" and acc["n"] == 4 and acc["reference"] == pytest.approx(1.0)
    assert acc["artifact"] > 0.9 and acc["map50"]["reference"] == pytest.approx(1.0) and len(acc["ci95"]) == 2
    assert m.fidelity["agreement"]["metric"] == "map50" and m.data.format == "coco" and m.data.classes == 80


def test_mobileclip_zero_shot_through_its_text_tower(tmp_path):
    """A labelled folder for the whole MobileCLIP model: class names become prompts through its text tower."""
    from PIL import Image

    from edgeopt.data import accuracy, prepare, zero_shot_text_embeds
    from edgeopt.export import torch_outputs
    from edgeopt.models import get_spec
    from edgeopt.models.inputs import photo

    for cls, names in {"cat": ("chelsea",), "cup_of_coffee": ("coffee",), "rocket": ("rocket",)}.items():
        (tmp_path / cls).mkdir()
        for n in names:
            for k, step in enumerate((1, 2)):
                Image.fromarray(photo(n)[::step, ::step]).save(tmp_path / cls / f"{n}{k}.png")
    spec = get_spec("mobileclip_s0")
    ds = prepare(DataRequest(tmp_path, calib_samples=1, eval_samples=5), spec)
    assert ds.kind == "clip" and ds.catalog.class_names == ["cat", "cup of coffee", "rocket"]
    assert ds.evaluation.samples[0]["text"].shape == (8, 77)  # the graph's own prompts stay its text input
    module = spec.build()
    text = zero_shot_text_embeds(module, ds.catalog.class_names)
    assert text.shape == (3, 512) and np.allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    refs = [torch_outputs(module, s, ["image", "text"], list(spec.outputs)) for s in ds.evaluation.samples]
    acc, why = accuracy(ds, refs, refs, list(spec.outputs), text)
    assert why is None and acc.metric == "zero_shot_top1" and acc.n == 5 and acc.reference == acc.artifact and acc.drop_points == 0
    # the image encoder alone has no text tower: agreement only, and it says so
    img = get_spec("mobileclip_s0_image")
    ds2 = prepare(DataRequest(tmp_path, calib_samples=1, eval_samples=5), img)
    assert accuracy(ds2, refs, refs, ["image_embeds"], None)[0] is None


def test_prompts_for_tinygpt_v(tmp_path):
    from PIL import Image

    from edgeopt.models.inputs import photo

    Image.fromarray(photo("coffee")).save(tmp_path / "coffee.png")
    lines = [{"prompt": "What is in the cup?", "image": "coffee.png"}, {"prompt": "Describe the scene."},
             {"prompt": "What colour is it?", "image": "coffee.png"}, {"prompt": "Count the objects."}, {"prompt": "Where is this?"}]
    f = tmp_path / "prompts.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    m = api.compile("tinygpt_v_tiny_whole", output=tmp_path / "b", data=f, calib_samples=2, eval_samples=3).manifest
    assert m.data.format == "prompts" and (m.data.calibration, m.data.evaluation) == (2, 3)
    ag = m.fidelity["agreement"]
    assert ag["metric"] == "next_token_agreement" and ag["n"] == 3 and ag["value"] == 1.0
    g = m.fidelity["greedy_sequence"]
    assert g["n"] == 3 and g["value"] == 1.0 and g["steps"] == 8  # fp32 ORT reproduces fp32 torch's continuations


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-x", "-q"]))
