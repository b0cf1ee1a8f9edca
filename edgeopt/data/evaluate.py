"""Accuracy against the data's labels: top-1 for classifiers, zero-shot top-1 for MobileCLIP (class names as
prompts through the model's own text tower), COCO mAP for detectors. Each with the fp32 reference's figure,
the artifact's, the artifact's 95 % interval and the drop's (edgeopt.stats.Accuracy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeopt.data.prepare import Dataset
from edgeopt.stats import Accuracy

TEMPLATE = "a photo of a {}."


def zero_shot_text_embeds(module: Any, class_names: Sequence[str], template: str = TEMPLATE) -> np.ndarray | None:
    """L2-normalised text embeddings [K, D] of the class prompts through the fp32 module's text tower (a
    whole MobileCLIP model's `text_encoder`), or None when the module has no text tower."""
    import torch

    from edgeopt.models.mobileclip import tokenize

    tower = getattr(module, "text_encoder", None)
    if tower is None:
        return None
    tok = torch.from_numpy(tokenize([template.format(c) for c in class_names]))
    with torch.inference_mode():
        emb = torch.cat([tower(t) for t in tok.split(64)])
    return torch.nn.functional.normalize(emb.float(), dim=-1).numpy()


def accuracy(ds: Dataset, refs: Sequence[dict[str, np.ndarray]], outs: Sequence[dict[str, np.ndarray]],
             output_names: Sequence[str], text_embeds: np.ndarray | None = None) -> tuple[Accuracy | None, str | None]:
    """(accuracy on the evaluation split, None) where the data is labelled and the model can be scored against
    the labels; else (None, why not)."""
    labels = ds.eval_labels
    if ds.format == "coco":
        from edgeopt.data.coco import coco_accuracy

        return coco_accuracy(ds.catalog, ds.evaluation, refs, outs, output_names), None
    if labels is None:
        return None, "unlabelled data: agreement with fp32 only"
    if ds.kind == "classifier":
        name = output_names[0]
        r = np.concatenate([np.asarray(x[name]).reshape(-1, np.shape(x[name])[-1]) for x in refs]).argmax(-1)
        o = np.concatenate([np.asarray(x[name]).reshape(-1, np.shape(x[name])[-1]) for x in outs]).argmax(-1)
        return Accuracy.paired("top1", r == labels, o == labels), None
    if ds.kind == "clip":
        if text_embeds is None or "image_embeds" not in output_names:
            return None, "zero-shot accuracy needs the whole MobileCLIP model (its text tower); this graph gives embedding agreement only"
        r = np.concatenate([np.asarray(x["image_embeds"]).reshape(-1, text_embeds.shape[1]) for x in refs]) @ text_embeds.T
        o = np.concatenate([np.asarray(x["image_embeds"]).reshape(-1, text_embeds.shape[1]) for x in outs]) @ text_embeds.T
        return Accuracy.paired("zero_shot_top1", r.argmax(-1) == labels, o.argmax(-1) == labels), None
    return None, f"no labelled metric for {ds.kind}"


def check_outputs_cover_classes(ds: Dataset, refs: Sequence[dict[str, np.ndarray]], output_names: Sequence[str]) -> int | None:
    """For classifiers: the number of logits when the data has more classes than that (an error for the caller)."""
    if ds.kind != "classifier" or ds.catalog.num_classes is None or not refs:
        return None
    width = int(np.shape(refs[0][output_names[0]])[-1])
    return width if ds.catalog.num_classes > width else None


GREEDY_STEPS = 8


def greedy_tokens(run: Any, samples: Sequence[dict[str, np.ndarray]], steps: int = GREEDY_STEPS, ids: str = "suffix_ids") -> np.ndarray:
    """Greedy continuations [n, steps] of single-graph VLM samples: each step appends the argmax of the
    first-token `logits` to `ids` and runs the graph again (no KV cache: the graph takes the longer prompt)."""
    out = np.zeros((len(samples), steps), np.int64)
    for i, s in enumerate(samples):
        cur = dict(s)
        for t in range(steps):
            logits = np.asarray(run(cur)["logits"])
            tok = int(logits.reshape(-1, logits.shape[-1])[-1].argmax())
            out[i, t] = tok
            cur[ids] = np.concatenate([cur[ids], np.asarray([[tok]], cur[ids].dtype)], axis=1)
    return out
