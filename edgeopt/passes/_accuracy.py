"""Accuracy drop of an optimized model on the evaluation split, for passes that control it (quantize's
`max_drop`) and the figures prune's recovery reports.

The evaluation split is `ctx.eval_samples` / `ctx.eval_references` (disjoint from the calibration samples,
filled from the user's `--data`); without it the calibration samples and their references stand in, and
`where` says so. The drop, in points (0-100):
- with labels (`ctx.eval_labels`, classification): top-1 accuracy of the fp32 reference against the labels
  minus the artifact's, both on the evaluation split;
- otherwise: 100 x (1 - agreement with fp32), the agreement being the task's own figure
  (top-1, mAP@0.5 against the fp32 detections, next-token or zero-shot agreement).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeopt.errors import EdgeoptError
from edgeopt.fidelity import task_metrics
from edgeopt.passes.base import PassContext

# the task's agreement with fp32, first found wins (the keys the job gate reads too)
AGREEMENT_KEYS = ("top1_agreement", "map50", "next_token_agreement", "zeroshot_top1_agreement")


@dataclass
class Drop:
    """The drop of one artifact: `points` (the figure gated on), what it measures, and its parts."""

    points: float
    metric: str  # "top1_accuracy" (against labels) or an agreement key of AGREEMENT_KEYS
    reference: float  # fp32's figure (accuracy in %, or 100 for agreement with itself)
    artifact: float  # the artifact's figure, same unit
    n: int
    cosine: float


@dataclass
class EvalSplit:
    samples: list[dict[str, np.ndarray]]
    references: list[dict[str, np.ndarray]]
    labels: np.ndarray | None
    where: str


def evaluation_split(ctx: PassContext) -> EvalSplit:
    """The evaluation split, else the calibration samples (labels only come with the evaluation split)."""
    if ctx.eval_samples and len(ctx.eval_references) == len(ctx.eval_samples):
        labels = None if ctx.eval_labels is None else np.asarray(ctx.eval_labels).reshape(-1)
        if labels is not None and len(labels) != len(ctx.eval_samples):
            raise EdgeoptError(
                f"{len(labels)} evaluation labels for {len(ctx.eval_samples)} evaluation samples",
                "the data loader must give one label per evaluation sample",
            )
        return EvalSplit(ctx.eval_samples, ctx.eval_references, labels, f"the evaluation split ({len(ctx.eval_samples)} samples)")
    return EvalSplit(
        ctx.samples, ctx.references, None,
        f"the {len(ctx.samples)} calibration samples (no evaluation split: pass --data for one)",
    )


def _top1(outs: list[dict[str, np.ndarray]], name: str) -> np.ndarray:
    return np.concatenate([np.asarray(o[name]).reshape(-1, np.shape(o[name])[-1]) for o in outs]).argmax(-1)


def accuracy_drop(ctx: PassContext, split: EvalSplit, outs: list[dict[str, np.ndarray]]) -> Drop:
    """The drop of `outs` (the artifact run on `split.samples`), in points; see the module docstring."""
    m = task_metrics(ctx.task, split.references, outs)
    cosine = float(m.get("cosine", float("nan")))
    if split.labels is not None and ctx.task == "classification":
        name = ctx.output_names[0]
        ref, got = _top1(split.references, name), _top1(outs, name)
        if len(ref) != len(split.labels):
            raise EdgeoptError(
                f"{len(ref)} predictions for {len(split.labels)} labels on {split.where}",
                "evaluation samples must hold one image each",
            )
        ref_acc = 100.0 * float(np.mean(ref == split.labels))
        acc = 100.0 * float(np.mean(got == split.labels))
        return Drop(ref_acc - acc, "top1_accuracy", ref_acc, acc, len(ref), cosine)
    key = next((k for k in AGREEMENT_KEYS if k in m), None)
    if key is None:
        raise EdgeoptError(
            f"max_drop needs an agreement metric, and task {ctx.task!r} has none (metrics: {', '.join(sorted(m))})",
            "use quantize:mixed with a cosine target (quantize:mixed,target=0.999) for this model",
        )
    return Drop(100.0 * (1.0 - float(m[key])), key, 100.0, 100.0 * float(m[key]), len(split.samples), cosine)
