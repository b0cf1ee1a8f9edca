"""COCO detection accuracy: mAP@0.5:0.95 and mAP@0.5 against the annotations, through a maintained evaluator
(faster-coco-eval, the C++ reimplementation of pycocotools' COCOeval that gives its figures), with a paired
bootstrap over images for the interval on the artifact's mAP and on the drop from the fp32 reference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeopt.data.formats import Catalog, DataError
from edgeopt.data.prepare import Split
from edgeopt.stats import Accuracy

BOOTSTRAP = 100
CONF = 0.001  # the detection threshold COCO mAP is measured at (ultralytics' val default)


def _evaluator() -> tuple[Any, Any]:
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError:
        raise DataError("COCO mAP needs the faster-coco-eval package", "pip install 'edgeopt[data]'") from None
    return COCO, COCOeval_faster


def detections(outs: Sequence[dict[str, np.ndarray]], split: Split, category_ids: Sequence[int], output_names: Sequence[str]) -> list[list[dict[str, Any]]]:
    """Per image: COCO result dicts (bbox x, y, w, h in the photo's pixels, score, category id)."""
    from edgeopt.postprocess import postprocess

    res = []
    for o, meta in zip(outs, split.meta, strict=True):
        d = postprocess([o[n] for n in output_names], conf=CONF, meta=meta)
        res.append([
            {"bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": float(s), "category_id": int(category_ids[int(c)])}
            for x1, y1, x2, y2, s, c in d if int(c) < len(category_ids)
        ])
    return res


def _gt_by_image(coco: dict[str, Any]) -> tuple[dict[int, dict[str, Any]], dict[int, list[dict[str, Any]]]]:
    images = {int(im["id"]): im for im in coco["images"]}
    anns: dict[int, list[dict[str, Any]]] = {}
    for a in coco["annotations"]:
        anns.setdefault(int(a["image_id"]), []).append(a)
    return images, anns


def coco_map(coco: dict[str, Any], image_ids: Sequence[int], dets: Sequence[list[dict[str, Any]]]) -> tuple[float, float]:
    """(mAP@0.5:0.95, mAP@0.5) of per-image detections on these images (an id may repeat: bootstrap draws)."""
    COCO, COCOeval = _evaluator()
    images, anns = _gt_by_image(coco)
    gt_images, gt_anns, results = [], [], []
    for new_id, (old, det) in enumerate(zip(image_ids, dets, strict=True), 1):
        im = images[int(old)]
        gt_images.append({"id": new_id, "file_name": im.get("file_name", ""), "width": im.get("width", 0), "height": im.get("height", 0)})
        for a in anns.get(int(old), []):
            x, y, w, h = (float(v) for v in a["bbox"])
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": new_id, "category_id": int(a["category_id"]), "bbox": [x, y, w, h],
                            "area": float(a.get("area", w * h)), "iscrowd": int(a.get("iscrowd", 0))})
        results.extend({**d, "image_id": new_id} for d in det)
    if not gt_anns:
        return float("nan"), float("nan")
    if not results:
        return 0.0, 0.0
    gt = COCO({"images": gt_images, "annotations": gt_anns, "categories": coco["categories"]})
    ev = COCOeval(gt, gt.loadRes(results), iouType="bbox", print_function=lambda *a, **k: None)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    s0, s1 = float(ev.stats[0]), float(ev.stats[1])
    return (s0 if s0 >= 0 else float("nan")), (s1 if s1 >= 0 else float("nan"))


def coco_accuracy(cat: Catalog, split: Split, refs: Sequence[dict[str, np.ndarray]], outs: Sequence[dict[str, np.ndarray]],
                  output_names: Sequence[str], resamples: int = BOOTSTRAP, seed: int = 0) -> Accuracy:
    """mAP@0.5:0.95 of the fp32 reference and of the artifact on the split, the artifact's bootstrap interval and
    the paired bootstrap interval of the drop (points); mAP@0.5 of both in `extra`."""
    assert cat.coco is not None
    ids = [int(r.image_id) for r in split.records if r.image_id is not None]
    dr = detections(refs, split, cat.category_ids, output_names)
    da = detections(outs, split, cat.category_ids, output_names)
    ref, ref50 = coco_map(cat.coco, ids, dr)
    art, art50 = coco_map(cat.coco, ids, da)
    rng = np.random.default_rng(seed)
    arts, drops = [], []
    for _ in range(resamples):
        idx = rng.integers(0, len(ids), len(ids))
        sid = [ids[i] for i in idx]
        a = coco_map(cat.coco, sid, [da[i] for i in idx])[0]
        r = coco_map(cat.coco, sid, [dr[i] for i in idx])[0]
        if np.isfinite(a) and np.isfinite(r):
            arts.append(a)
            drops.append(100.0 * (r - a))
    lo, hi = (float(np.quantile(arts, 0.025)), float(np.quantile(arts, 0.975))) if arts else (float("nan"), float("nan"))
    dlo, dhi = (float(np.quantile(drops, 0.025)), float(np.quantile(drops, 0.975))) if drops else (float("nan"), float("nan"))
    return Accuracy("map50_95", ref, art, len(ids), (lo, hi), (dlo, dhi),
                    extra={"map50": {"reference": _r(ref50), "artifact": _r(art50)}, "bootstrap_resamples": resamples})


def _r(v: float) -> float | None:
    return None if not np.isfinite(v) else round(float(v), 6)
