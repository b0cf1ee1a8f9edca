"""Post-processing and task metrics in numpy: detection (letterbox in, DFL decode, class scores, NMS, photo
coordinates, mAP) and images (PSNR, SSIM).

numpy only (never torch): the device runner and the fidelity metric use it. The host may pass
torchvision's NMS as `nms_fn` (see `edgeopt.models.leyolo.detect`); both follow the same contract,
so their results can be compared box for box.

Input: the raw head maps of a YOLOv8-style anchor-free head (LeYOLO), one (1, 4*reg_max + nc, h, w)
array per stride, ordered from the finest stride to the coarsest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

DEFAULT_STRIDES = (8, 16, 32)
PAD_VALUE = 114  # ultralytics letterbox grey


def _levels(outputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[np.ndarray]:
    arrs = list(outputs.values()) if isinstance(outputs, Mapping) else list(outputs)
    return [np.asarray(a, np.float32) for a in arrs]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


def decode(
    outputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    strides: Sequence[int] = DEFAULT_STRIDES,
    reg_max: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw head maps -> (boxes (A, 4) xyxy in network-input pixels, class scores (A, nc) in [0, 1]).

    DFL: each side's distance is the expectation of a softmax over reg_max bins, times the stride,
    measured from the cell centre (anchor at (x + 0.5, y + 0.5) * stride), exactly as ultralytics.
    Batch size must be 1 (what edge deployment runs)."""
    levels = _levels(outputs)
    if len(levels) != len(strides):
        raise ValueError(f"{len(levels)} head maps but {len(strides)} strides")
    boxes, scores = [], []
    bins = np.arange(reg_max, dtype=np.float32)
    for a, s in zip(levels, strides, strict=True):
        if a.ndim != 4 or a.shape[0] != 1 or a.shape[1] <= 4 * reg_max:
            raise ValueError(f"head map of shape {a.shape}: expected (1, 4*{reg_max} + classes, h, w)")
        _, c, h, w = a.shape
        flat = a[0].reshape(c, h * w).T  # (hw, c)
        box = flat[:, : 4 * reg_max].reshape(-1, 4, reg_max)
        box = box - box.max(-1, keepdims=True)
        p = np.exp(box)
        p /= p.sum(-1, keepdims=True)
        dist = (p * bins).sum(-1)  # (hw, 4): left, top, right, bottom in cells
        ys, xs = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
        ax, ay = xs.ravel() + 0.5, ys.ravel() + 0.5
        xyxy = np.stack([ax - dist[:, 0], ay - dist[:, 1], ax + dist[:, 2], ay + dist[:, 3]], -1) * s
        boxes.append(xyxy)
        scores.append(_sigmoid(flat[:, 4 * reg_max :]))
    return np.concatenate(boxes), np.concatenate(scores)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between (N, 4) and (M, 4) xyxy boxes."""
    a = np.asarray(a, np.float64)[:, None, :]
    b = np.asarray(b, np.float64)[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy NMS: indices of kept boxes, highest score first; a box is dropped when its IoU with a
    kept box is > iou (torchvision's rule, so the two agree)."""
    boxes = np.asarray(boxes, np.float32)
    order = np.argsort(-np.asarray(scores, np.float32), kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iw = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        ih = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = iw * ih
        ov = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(ov > iou)]
    return np.asarray(keep, dtype=np.int64)


def letterbox(img: np.ndarray, size: int, pad_value: int = PAD_VALUE) -> tuple[np.ndarray, dict[str, float]]:
    """Resize keeping the aspect ratio, pad to size x size with grey 114 (ultralytics LetterBox, centred).

    Returns float32 1x3xHxW in [0, 1] and the mapping back to the photo: {gain, pad_x, pad_y, w, h}
    (what `scale_boxes` undoes). Here, not in models/leyolo.py, because the device-side end-to-end runner
    needs it without torch."""
    from PIL import Image

    h, w = img.shape[:2]
    r = min(size / h, size / w)
    nw, nh = int(round(w * r)), int(round(h * r))
    dw, dh = (size - nw) / 2, (size - nh) / 2
    left, top = int(round(dw - 0.1)), int(round(dh - 0.1))
    canvas = np.full((size, size, 3), pad_value, np.uint8)
    canvas[top : top + nh, left : left + nw] = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    x = canvas.astype(np.float32).transpose(2, 0, 1)[None] / 255.0
    return np.ascontiguousarray(x), {"gain": r, "pad_x": float(left), "pad_y": float(top), "w": float(w), "h": float(h)}


def scale_boxes(boxes: np.ndarray, meta: Mapping[str, float]) -> np.ndarray:
    """Undo the letterbox (gain, pad_x, pad_y) and clip to the photo (w, h)."""
    out = np.array(boxes, np.float32, copy=True)
    out[:, [0, 2]] = (out[:, [0, 2]] - meta["pad_x"]) / meta["gain"]
    out[:, [1, 3]] = (out[:, [1, 3]] - meta["pad_y"]) / meta["gain"]
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, meta["w"])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, meta["h"])
    return out


def postprocess(
    outputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = 300,
    meta: Mapping[str, float] | None = None,
    strides: Sequence[int] = DEFAULT_STRIDES,
    reg_max: int = 16,
    max_nms: int = 30000,
    nms_fn: Callable[[np.ndarray, np.ndarray, float], np.ndarray] = nms,
) -> np.ndarray:
    """Head maps -> detections (N, 6): x1, y1, x2, y2, score, class; best first.

    One label per box (its best class, as ultralytics' default), class-aware NMS by offsetting each
    class's boxes far apart, at most `max_det` results. With `meta` (from the letterbox) the boxes are
    in the photo's pixels, else in network-input pixels."""
    boxes, scores = decode(outputs, strides, reg_max)
    cls = scores.argmax(1)
    best = scores[np.arange(len(cls)), cls]
    m = best > conf
    boxes, best, cls = boxes[m], best[m], cls[m]
    if best.size > max_nms:
        top = np.argsort(-best, kind="stable")[:max_nms]
        boxes, best, cls = boxes[top], best[top], cls[top]
    if best.size == 0:
        return np.zeros((0, 6), np.float32)
    offset = cls[:, None].astype(np.float32) * 7680.0  # ultralytics' max_wh: classes never overlap
    keep = np.asarray(nms_fn(boxes + offset, best, iou), dtype=np.int64)[:max_det]
    out = boxes[keep]
    if meta is not None:
        out = scale_boxes(out, meta)
    return np.concatenate([out, best[keep, None], cls[keep, None].astype(np.float32)], 1).astype(np.float32)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO-style AP: interpolated precision at 101 recall points (0 where the recall is never reached)."""
    recall = np.asarray(recall, np.float64)
    pr = np.maximum.accumulate(np.asarray(precision, np.float64)[::-1])[::-1] if len(recall) else np.zeros(0)
    idx = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    return float(np.mean([pr[i] if i < len(pr) else 0.0 for i in idx]))


def map50(gts: Sequence[np.ndarray], preds: Sequence[np.ndarray], iou_thr: float = 0.5) -> float:
    """mAP@0.5 over classes present in the ground truth. gts/preds: per image (N, 6) arrays as
    `postprocess` returns (preds scored; gt score column ignored). nan when there is no ground truth."""
    classes = sorted({int(c) for g in gts for c in g[:, 5]})
    if not classes:
        return float("nan")
    aps = []
    for c in classes:
        n_gt = 0
        recs: list[tuple[float, bool]] = []
        for g, p in zip(gts, preds, strict=True):
            gb = g[g[:, 5] == c, :4]
            pc = p[p[:, 5] == c]
            pc = pc[np.argsort(-pc[:, 4], kind="stable")]
            n_gt += len(gb)
            used = np.zeros(len(gb), bool)
            ious = box_iou(pc[:, :4], gb) if len(gb) and len(pc) else np.zeros((len(pc), len(gb)))
            for k in range(len(pc)):
                hit = False
                if len(gb):
                    cand = np.where(~used & (ious[k] >= iou_thr))[0]
                    if cand.size:
                        j = cand[np.argmax(ious[k, cand])]
                        used[j] = hit = True
                recs.append((float(pc[k, 4]), hit))
        if n_gt == 0:
            continue
        recs.sort(key=lambda t: -t[0])
        tp = np.cumsum([h for _, h in recs], dtype=np.float64) if recs else np.zeros(0)
        fp = np.cumsum([not h for _, h in recs], dtype=np.float64) if recs else np.zeros(0)
        recall = tp / n_gt
        precision = tp / np.maximum(tp + fp, 1e-12)
        aps.append(average_precision(recall, precision))
    return float(np.mean(aps)) if aps else float("nan")


# ------------------------------------------------------------------------ image metrics (light_field)


def psnr(ref: np.ndarray, out: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (inf when identical)."""
    mse = float(np.mean((np.asarray(ref, np.float64) - np.asarray(out, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def _gauss_filter(x: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    """Separable Gaussian blur over the last two axes, 'valid' region only (as Wang et al. and skimage)."""
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-(t**2) / (2 * sigma**2))
    k /= k.sum()
    win = np.lib.stride_tricks.sliding_window_view(x, 2 * radius + 1, axis=-1) @ k
    return np.lib.stride_tricks.sliding_window_view(win, 2 * radius + 1, axis=-2) @ k


def ssim(ref: np.ndarray, out: np.ndarray, data_range: float = 1.0) -> float:
    """Mean structural similarity (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03) of
    (..., H, W) images, averaged over channels and batch."""
    x = np.asarray(ref, np.float64)
    y = np.asarray(out, np.float64)
    if x.shape != y.shape or x.ndim < 2 or min(x.shape[-2:]) < 11:
        raise ValueError(f"ssim needs equal shapes of at least 11x11, got {x.shape} and {y.shape}")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _gauss_filter(x), _gauss_filter(y)
    sxx = _gauss_filter(x * x) - mx * mx
    syy = _gauss_filter(y * y) - my * my
    sxy = _gauss_filter(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())
