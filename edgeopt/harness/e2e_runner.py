"""Device-side end-to-end runner: image file -> decode, resize, normalize -> model -> post-process.

`python -m edgeopt.harness.e2e_runner BUNDLE --image IMG [--warmup W --runs N --min-seconds S --threads T]`
prints one JSON object with the model-only latency and the end-to-end latency measured side by side on the
same session, plus the pre- and post-processing medians. Needs numpy, Pillow and the bundle's runtime
(never torch). Pre-processing: classification models get the timm/ImageNet recipe (resize shorter side to
size/0.875, centre crop, /255, mean/std; a manifest `preprocess` entry may give its own mean/std/crop_pct);
detection models the ultralytics letterbox (aspect kept, grey padding, /255), as they were trained.
Post-processing: classification -> softmax + top-5; detection -> `edgeopt.postprocess.postprocess` for
YOLOv8-style raw head maps (DFL decode, class scores, class-aware NMS, boxes back in the photo's pixels;
LeYOLO) or confidence filter + NMS for an already decoded (1, 4+C, N) output.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess(path: str, shape: list[int], cfg: dict[str, Any], task: str = "classification") -> tuple[np.ndarray, dict[str, float] | None]:
    """Decode an image file into the model's NCHW float32 input; for detection also the letterbox's mapping
    back to the photo (None otherwise)."""
    from PIL import Image

    if len(shape) != 4 or shape[1] not in (1, 3):
        raise ValueError(f"end-to-end mode needs an NCHW image input, this model takes {shape}")
    h, w = int(shape[2]), int(shape[3])
    if task == "detection":
        from edgeopt.postprocess import letterbox

        if h != w or shape[1] != 3:
            raise ValueError(f"the detection letterbox needs a square RGB input, this model takes {shape}")
        with Image.open(path) as im:
            return letterbox(np.asarray(im.convert("RGB")), h)
    crop = float(cfg.get("crop_pct", 0.875))
    with Image.open(path) as im:
        im = im.convert("RGB" if shape[1] == 3 else "L")
        scale = max(h, w) / crop / min(im.size)
        im = im.resize((max(w, round(im.size[0] * scale)), max(h, round(im.size[1] * scale))), Image.BILINEAR)
        left, top = (im.size[0] - w) // 2, (im.size[1] - h) // 2
        im = im.crop((left, top, left + w, top + h))
        a = np.asarray(im, dtype=np.float32) / 255.0
    if a.ndim == 2:
        a = a[..., None]
    mean = np.asarray(cfg.get("mean", IMAGENET_MEAN), dtype=np.float32)[: a.shape[2]]
    std = np.asarray(cfg.get("std", IMAGENET_STD), dtype=np.float32)[: a.shape[2]]
    return np.ascontiguousarray(((a - mean) / std).transpose(2, 0, 1)[None]), None


def softmax_top5(logits: np.ndarray) -> list[tuple[int, float]]:
    z = logits.reshape(-1).astype(np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    idx = np.argsort(-p)[:5]
    return [(int(i), float(p[i])) for i in idx]


def detections(out: np.ndarray, conf: float = 0.25, iou: float = 0.45) -> list[dict[str, Any]]:
    """Decoded YOLO-style output (1, 4+C, N) or (1, N, 4+C), boxes as cx,cy,w,h -> kept boxes after NMS."""
    from edgeopt.postprocess import nms

    a = out[0]
    if a.shape[0] < a.shape[1]:
        a = a.T
    cls = a[:, 4:]
    score, label = cls.max(1), cls.argmax(1)
    m = score >= conf
    b, score, label = a[m, :4], score[m], label[m]
    xyxy = np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)
    keep: list[int] = []
    for c in np.unique(label):
        idx = np.nonzero(label == c)[0]
        keep += [int(idx[k]) for k in nms(xyxy[idx], score[idx], iou)]
    return [{"box": xyxy[k].tolist(), "score": float(score[k]), "label": int(label[k])} for k in keep]


def postprocess(task: str, outs: dict[str, np.ndarray], names: list[str] | None = None, meta: dict[str, float] | None = None) -> Any:
    """The task's post-processing of one inference's outputs (in the manifest's output order `names`)."""
    arrs = [outs[n] for n in names] if names else list(outs.values())
    first = arrs[0]
    if task == "detection":
        if len(arrs) > 1 and all(a.ndim == 4 for a in arrs):  # raw head maps, finest stride first (LeYOLO)
            from edgeopt.postprocess import postprocess as head_postprocess

            det = head_postprocess(arrs, meta=meta)
            return [{"box": d[:4].tolist(), "score": float(d[4]), "label": int(d[5])} for d in det]
        return detections(first)
    if task == "classification":
        return softmax_top5(first)
    return {k: list(v.shape) for k, v in outs.items()}


def run(path: str, image: str, warmup: int, runs: int, min_seconds: float, threads: int | None) -> dict[str, Any]:
    from edgeopt._loop import measure_session, summary_dict
    from edgeopt.bundle import load_bundle
    from edgeopt.runtimes.base import get_backend

    bundle = load_bundle(path)
    m = bundle.manifest
    spec = m.inputs[0]
    task = m.model.task
    cfg = m.preprocess or {}
    names = m.output_names or None
    session = get_backend(bundle.backend).load(bundle.path, m, threads=threads)
    pre_ms: list[float] = []
    post_ms: list[float] = []
    result: dict[str, Any] = {}

    def e2e() -> None:
        t0 = time.perf_counter()
        x, meta = preprocess(image, spec.shape, cfg, task)
        t1 = time.perf_counter()
        outs = session.run({spec.name: x})
        t2 = time.perf_counter()
        result["post"] = postprocess(task, outs, names, meta)
        pre_ms.append((t1 - t0) * 1e3)
        post_ms.append((time.perf_counter() - t2) * 1e3)

    x, _ = preprocess(image, spec.shape, cfg, task)
    model_only = summary_dict(measure_session(lambda: session.run({spec.name: x}), warmup, runs, min_seconds))
    full = summary_dict(measure_session(e2e, warmup, runs, min_seconds))
    session.close()
    return {
        "bundle_sha256": bundle.sha256,
        "model_only": model_only,
        "end_to_end": full,
        "preprocess_ms_p50": float(np.median(pre_ms)),
        "postprocess_ms_p50": float(np.median(post_ms)),
        "task": task,
        "output": result.get("post"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeopt.harness.e2e_runner")
    ap.add_argument("bundle")
    ap.add_argument("--image", required=True)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--min-seconds", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    from edgeopt._loop import print_result

    return print_result(lambda: run(a.bundle, a.image, a.warmup, a.runs, a.min_seconds, a.threads))


if __name__ == "__main__":
    sys.exit(main())
