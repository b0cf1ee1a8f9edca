"""Fidelity of an optimized model against its fp32 reference, per task.

Output-level metrics (cosine of mean-centred outputs, SNR in dB, max abs diff) are always reported:
they stay meaningful with random weights. Task metrics (top-1 agreement, ...) are only as meaningful as
the weights they were measured on, which is why every report names those weights.
numpy only: the device runner uses `output_metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from edgeopt._registry import Registry
from edgeopt.stats import Figure, bootstrap_ci

TaskMetric = Callable[[Sequence[dict[str, np.ndarray]], Sequence[dict[str, np.ndarray]]], dict[str, float]]
# task -> its metric function (classification's is built into task_metrics); the functions below register here.
TASK_METRICS: Registry[TaskMetric] = Registry("task metric")


def _flat(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).ravel()


def cosine(ref: np.ndarray, out: np.ndarray, centred: bool = True) -> float:
    """Cosine similarity; centred by default, since raw logits share a large common offset."""
    r, o = _flat(ref), _flat(out)
    if centred:
        r, o = r - r.mean(), o - o.mean()
    nr, no = np.linalg.norm(r), np.linalg.norm(o)
    if nr == 0 and no == 0:
        return 1.0
    if nr == 0 or no == 0:
        return 0.0
    return float(np.dot(r, o) / (nr * no))


def snr_db(ref: np.ndarray, out: np.ndarray) -> float:
    r, o = _flat(ref), _flat(out)
    noise = np.sum((r - o) ** 2)
    sig = np.sum(r**2)
    if noise == 0:
        return float("inf")
    return float(10 * np.log10(max(sig, 1e-30) / noise))


def output_metrics(refs: Sequence[dict[str, np.ndarray]], outs: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """Cosine (min over samples and outputs), SNR (dB, min) and max abs diff over all samples and outputs."""
    cos, snr, mad = [], [], 0.0
    for ref, out in zip(refs, outs, strict=True):
        for name, r in ref.items():
            if name not in out:
                continue
            o = out[name]
            if np.shape(o) != np.shape(r):
                raise ValueError(f"output {name!r} has shape {np.shape(o)}, reference {np.shape(r)}")
            if not np.issubdtype(np.asarray(r).dtype, np.floating):
                # integer outputs (token ids, indices): exact agreement is the metric
                same = float(np.mean(np.asarray(r) == np.asarray(o)))
                cos.append(same)
                snr.append(float("inf") if same == 1.0 else 0.0)
                continue
            cos.append(cosine(r, o))
            snr.append(snr_db(r, o))
            mad = max(mad, float(np.max(np.abs(_flat(r) - _flat(o)))) if np.size(r) else 0.0)
    return {"cosine": float(min(cos)) if cos else 1.0, "snr_db": float(min(snr)) if snr else float("inf"), "max_abs": mad}


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def classification_metrics(ref_logits: Sequence[np.ndarray], logits: Sequence[np.ndarray]) -> dict[str, float]:
    """Top-1/top-5 agreement with the fp32 model's predictions and mean KL(fp32 || optimized)."""
    r = np.concatenate([np.asarray(a, np.float64).reshape(-1, np.shape(a)[-1]) for a in ref_logits])
    o = np.concatenate([np.asarray(a, np.float64).reshape(-1, np.shape(a)[-1]) for a in logits])
    top1 = float(np.mean(r.argmax(-1) == o.argmax(-1)))
    k = min(5, r.shape[-1])
    top5_sets = np.argsort(-o, axis=-1)[:, :k]
    top5 = float(np.mean([ri in s for ri, s in zip(r.argmax(-1), top5_sets, strict=True)]))
    pr, po = _softmax(r), _softmax(o)
    kl = float(np.mean(np.sum(pr * (np.log(pr + 1e-12) - np.log(po + 1e-12)), axis=-1)))
    return {"top1_agreement": top1, "top5_agreement": top5, "kl": kl}


def task_metrics(task: str, refs: Sequence[dict[str, np.ndarray]], outs: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """Output metrics plus the task's own metrics where the task defines them."""
    m = output_metrics(refs, outs)
    if task == "classification":
        name = next(iter(refs[0]))
        m.update(classification_metrics([r[name] for r in refs], [o[name] for o in outs]))
    elif task in TASK_METRICS:
        m.update(TASK_METRICS.get(task)(refs, outs))
    return m


def _rows(arrs: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, np.float64).reshape(-1, np.shape(a)[-1]) for a in arrs])


def agreement_figure(task: str, refs: Sequence[dict[str, np.ndarray]], outs: Sequence[dict[str, np.ndarray]]) -> Figure | None:
    """The task's agreement with fp32 as a `Figure` (value, n, 95 % interval), or None where the task has none.

    Proportions (top-1, next token, zero-shot top-1 agreement; n = rows of the output) get a Wilson interval;
    a detector's mAP@0.5 against the fp32 detections a seeded bootstrap over images. The value equals the
    matching key of `task_metrics`."""
    if not refs:
        return None
    if task == "classification":
        name = next(iter(refs[0]))
        r, o = _rows([x[name] for x in refs]), _rows([x[name] for x in outs])
        return Figure.proportion("top1_agreement", r.argmax(-1) == o.argmax(-1))
    if task in ("language_model", "vlm"):
        name = "logits" if "logits" in refs[0] else next(k for k in refs[0] if np.issubdtype(np.asarray(refs[0][k]).dtype, np.floating))
        r, o = _rows([x[name] for x in refs]), _rows([x[name] for x in outs])
        return Figure.proportion("next_token_agreement", r.argmax(-1) == o.argmax(-1))
    if task == "clip":
        if all("logits_per_image" in x for x in refs) and all("logits_per_image" in x for x in outs):
            r, o = _rows([x["logits_per_image"] for x in refs]), _rows([x["logits_per_image"] for x in outs])
            return Figure.proportion("zeroshot_top1_agreement", r.argmax(-1) == o.argmax(-1))
        return None
    if task == "detection":
        return detection_agreement_figure(refs, outs)
    return None


def detection_agreement_figure(refs: Sequence[dict[str, np.ndarray]], outs: Sequence[dict[str, np.ndarray]], resamples: int = 100) -> Figure:
    """mAP@0.5 of the artifact's detections against the fp32 detections (as `detection_metrics`), with a
    bootstrap interval over images."""
    from edgeopt.postprocess import map50, postprocess

    gts, preds = [], []
    for r, o in zip(refs, outs, strict=True):
        g, conf = postprocess(r, conf=0.25), 0.001
        if len(g) == 0:
            g, conf = postprocess(r, conf=0.0, max_det=10), 0.0
        gts.append(g)
        preds.append(postprocess({k: o[k] for k in r}, conf=conf))
    value = map50(gts, preds)
    ci = bootstrap_ci(lambda idx: map50([gts[i] for i in idx], [preds[i] for i in idx]), len(gts), resamples=resamples)
    return Figure("map50", value, len(gts), ci)


def register_task_metric(task: str) -> Callable[[TaskMetric], TaskMetric]:
    """Decorator: `fn(refs, outs) -> {metric: value}` adds the task's own metrics to task_metrics()."""
    return TASK_METRICS.register(task)


@register_task_metric("detection")
def detection_metrics(refs: Sequence[dict[str, np.ndarray]], outs: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """mAP@0.5 of the optimized model's detections, taking the fp32 model's detections as ground truth.

    Ground truth per image: fp32 detections scoring > 0.25 (after NMS); with none (random weights) its
    10 best detections instead, so the figure still compares the two models' rankings."""
    from edgeopt.postprocess import map50, postprocess

    gts, preds, fallback = [], [], 0
    for r, o in zip(refs, outs, strict=True):
        g, conf = postprocess(r, conf=0.25), 0.001
        if len(g) == 0:
            g, conf, fallback = postprocess(r, conf=0.0, max_det=10), 0.0, fallback + 1
        gts.append(g)
        preds.append(postprocess({k: o[k] for k in r}, conf=conf))
    return {"map50": map50(gts, preds), "gt_boxes": float(sum(len(g) for g in gts)), "gt_fallback_images": float(fallback)}


@register_task_metric("light_field")
def light_field_metrics(refs: Sequence[dict[str, np.ndarray]], outs: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """PSNR (dB) and SSIM of each render against the fp32 render (images in [0, 1]); min PSNR, mean SSIM."""
    from edgeopt.postprocess import psnr, ssim

    name = next(iter(refs[0]))
    ps = [psnr(r[name], o[name]) for r, o in zip(refs, outs, strict=True)]
    ss = [ssim(r[name], o[name]) for r, o in zip(refs, outs, strict=True)]
    return {"psnr_db": float(min(ps)), "psnr_db_mean": float(np.mean(ps)), "ssim": float(np.mean(ss))}


def log_softmax(x: np.ndarray) -> np.ndarray:
    z = np.asarray(x, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def perplexity(logits: np.ndarray, token_ids: np.ndarray) -> float:
    """exp(mean NLL) of `token_ids` under `logits` (..., V) predicting them position by position."""
    lp = log_softmax(np.asarray(logits).reshape(-1, np.shape(logits)[-1]))
    ids = np.asarray(token_ids).reshape(-1)
    return float(np.exp(-lp[np.arange(ids.size), ids].mean()))


def language_model_metrics(refs: Sequence[dict[str, np.ndarray]], outs: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """Next-token (top-1) and top-5 agreement with the fp32 model, KL, and the perplexity change.

    The perplexity is measured on the text every sample has: the fp32 model's own greedy next tokens
    (fp32's perplexity on them vs the optimized model's); `perplexity()` serves a real text sample."""
    name = "logits" if "logits" in refs[0] else next(k for k in refs[0] if np.issubdtype(np.asarray(refs[0][k]).dtype, np.floating))
    m = classification_metrics([r[name] for r in refs], [o[name] for o in outs])
    r = np.concatenate([np.asarray(a[name], np.float64).reshape(-1, np.shape(a[name])[-1]) for a in refs])
    o = np.concatenate([np.asarray(a[name], np.float64).reshape(-1, np.shape(a[name])[-1]) for a in outs])
    tgt = r.argmax(-1)
    ppl_ref, ppl = perplexity(r, tgt), perplexity(o, tgt)
    return {
        "next_token_agreement": m["top1_agreement"], "top5_agreement": m["top5_agreement"], "kl": m["kl"],
        "greedy_ppl_fp32": ppl_ref, "greedy_ppl": ppl, "ppl_change": ppl / ppl_ref - 1.0,
    }


# A VLM's graph ends in the language model's logits: the same metric applies.
register_task_metric("language_model")(language_model_metrics)
register_task_metric("vlm")(language_model_metrics)


@register_task_metric("clip")
def clip_metrics(refs: Sequence[dict[str, np.ndarray]], outs: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """CLIP graphs (whole model or one encoder): embedding cosine with fp32 and zero-shot agreement.

    `embed_cosine_min`: the smallest plain cosine between an fp32 and an optimized embedding row (image
    and text embeddings alike; they are L2-normalised, so this is what a retrieval score sees).
    Where the graph also yields `logits_per_image` (image x prompts): `zeroshot_top1_agreement` (same best
    prompt) and `zeroshot_rank_agreement` (mean Spearman correlation of the prompts' ranking per image).
    """
    cos: list[float] = []
    for ref, out in zip(refs, outs, strict=True):
        for name in ("image_embeds", "text_embeds"):
            if name in ref and name in out:
                r = np.asarray(ref[name], np.float64).reshape(-1, np.shape(ref[name])[-1])
                o = np.asarray(out[name], np.float64).reshape(-1, np.shape(out[name])[-1])
                num = np.sum(r * o, axis=-1)
                den = np.linalg.norm(r, axis=-1) * np.linalg.norm(o, axis=-1)
                cos.extend(np.where(den > 0, num / np.maximum(den, 1e-30), 0.0).tolist())
    m: dict[str, float] = {}
    if cos:
        m["embed_cosine_min"] = float(min(cos))
        m["embed_cosine_mean"] = float(np.mean(cos))
    if all("logits_per_image" in r for r in refs) and all("logits_per_image" in o for o in outs):
        r = np.concatenate([np.asarray(a["logits_per_image"], np.float64).reshape(-1, np.shape(a["logits_per_image"])[-1]) for a in refs])
        o = np.concatenate([np.asarray(a["logits_per_image"], np.float64).reshape(-1, np.shape(a["logits_per_image"])[-1]) for a in outs])
        m["zeroshot_top1_agreement"] = float(np.mean(r.argmax(-1) == o.argmax(-1)))
        m["zeroshot_rank_agreement"] = float(np.mean([_spearman(a, b) for a, b in zip(r, o, strict=True)]))
    return m


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two score vectors (1.0 when both are constant or of length 1)."""
    if a.size < 2:
        return 1.0
    ra, rb = np.argsort(np.argsort(a)).astype(np.float64), np.argsort(np.argsort(b)).astype(np.float64)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.linalg.norm(ra) * np.linalg.norm(rb)
    return float(np.dot(ra, rb) / den) if den > 0 else 1.0


def check_threshold(cos: float) -> float:
    """Minimum cosine a device must reach on the bundle's reference sample.

    Slightly below what the host measured for this artifact, to allow for another CPU's rounding
    (fp32 artifacts: 0.999; quantized ones: host cosine minus half the host's own loss, minus 0.001)."""
    return float(max(0.0, min(0.999, cos - 0.001 - 0.5 * (1.0 - cos))))
