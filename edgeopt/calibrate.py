"""`calibrated` weights: make a randomly initialised model confident on real data, so that agreement
metrics (top-1 agreement, KL) become sensitive to what an optimisation does.

No official weights can be downloaded here, and with random weights the logits are nearly flat: any
noise flips top-1 and the metric says nothing. The calibrated mode, deterministic for a given seed:
1. builds the model with `torch.manual_seed(seed)`;
2. re-estimates every BatchNorm's statistics on real images (scikit-learn's bundled `load_digits`
   images, upsampled, plus the scikit-image photographs the model is checked on);
3. for a classifier, trains on `load_digits` (1797 8x8 greyscale digits shipped inside scikit-learn,
   bilinearly upsampled to the model's input size, stacked to 3 channels, normalised like the model's
   inputs; digit d is the label for logit d, i.e. the 10 classes map onto the first 10 logits): the
   classifier head only, on cached body features (timm's forward_features/forward_head), or the whole
   model when it has no such split. Held-out accuracy and mean top-1 probability go into the label.
Other tasks get step 2 only, and the label says so. A user's own checkpoint always wins over this.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeopt.errors import EdgeoptError

if TYPE_CHECKING:
    import torch

    from edgeopt.models.registry import ModelSpec

DATASET = "sklearn.datasets.load_digits (8x8, 10 classes) bilinearly upsampled to the input size; digit d -> logit d"


def digit_images(spec: ModelSpec, n: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n digits (in a fixed shuffled order, from `offset`) as model inputs, and their labels."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    inp = spec.inputs[0]
    if len(inp.shape) != 4 or inp.shape[1] not in (1, 3):
        raise EdgeoptError(f"calibrated weights need an image input (N, C, H, W); {spec.name} has {inp.shape}")
    d = load_digits()
    order = np.random.default_rng(1234).permutation(len(d.target))[offset : offset + n]
    x = torch.from_numpy(d.images[order].astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=tuple(inp.shape[2:]), mode="bilinear", align_corners=False)
    x = x.repeat(1, inp.shape[1], 1, 1)
    mean = torch.tensor(spec.extras.get("mean", (0.485, 0.456, 0.406))[: inp.shape[1]]).reshape(1, -1, 1, 1)
    std = torch.tensor(spec.extras.get("std", (0.229, 0.224, 0.225))[: inp.shape[1]]).reshape(1, -1, 1, 1)
    return ((x - mean) / std).float(), torch.from_numpy(d.target[order].astype(np.int64))


def reestimate_bn(module: torch.nn.Module, batches: list[torch.Tensor] | list[tuple]) -> int:
    """Reset BN running statistics and re-estimate them (cumulative average) over the batches.

    A batch is one input tensor or a tuple of positional inputs. Used for calibrated weights and by
    the prune pass (a pruned network's BN statistics no longer describe its activations)."""
    import torch
    from torch import nn

    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    saved = {m: m.momentum for m in bns}
    module.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        with torch.no_grad():
            for b in batches:
                module(*b) if isinstance(b, tuple) else module(b)
    finally:
        for m in bns:
            m.momentum = saved[m]
        module.eval()
    return len(bns)


def _head_split(module: torch.nn.Module) -> tuple[list[torch.nn.Parameter], Any, Any] | None:
    """(head parameters, features_fn, head_fn) for timm-style classifiers, else None."""
    if not (hasattr(module, "forward_features") and hasattr(module, "forward_head") and hasattr(module, "get_classifier")):
        return None
    heads = module.get_classifier()
    heads = list(heads) if isinstance(heads, (tuple, list)) else [heads]
    params = [p for h in heads for p in h.parameters()]
    if not params:
        return None
    return params, module.forward_features, module.forward_head


def calibrate(
    module: torch.nn.Module, spec: ModelSpec, seed: int = 0, train_images: int = 200, test_images: int = 100,
    epochs: int = 60, bn_images: int = 64,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Calibrate `module` (in place, returned) and the weights label that names what was done."""
    import torch
    import torch.nn.functional as F

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    label: dict[str, Any] = {"kind": "calibrated", "seed": seed}
    photos = [torch.from_numpy(s[spec.inputs[0].name]) for s in spec.sample_inputs(8)]
    if spec.task == "classification" and len(spec.inputs) == 1:
        xtr, ytr = digit_images(spec, train_images)
        xte, yte = digit_images(spec, test_images, offset=train_images)
        batches = [torch.cat(photos)] + list(xtr[:bn_images].split(16))
    else:
        batches = [torch.cat(photos)]
    label["bn_layers_reestimated"] = reestimate_bn(module, batches)
    label["bn_images"] = sum(int(b.shape[0]) for b in batches)
    if spec.task != "classification" or len(spec.inputs) != 1:
        label["trained"] = "nothing (BatchNorm statistics only: no labelled data for this task here)"
        label["seconds"] = round(time.perf_counter() - t0, 1)
        return module.eval(), label

    label["dataset"] = DATASET
    split = _head_split(module)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    if split is not None:
        params, feats_fn, head_fn = split
        with torch.no_grad():
            ftr = torch.cat([feats_fn(b) for b in xtr.split(25)])
            fte = torch.cat([feats_fn(b) for b in xte.split(25)])
        run_tr, run_te = (lambda i: head_fn(ftr[i])), (lambda: head_fn(fte))
        label["trained"] = "classifier head on frozen body features"
    else:
        params = list(module.parameters())
        run_tr, run_te = (lambda i: module(xtr[i])), (lambda: module(xte))
        label["trained"] = "whole model"
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=1e-2 if split is not None else 3e-3)
    g = torch.Generator().manual_seed(seed)
    n = xtr.shape[0]
    with torch.enable_grad():
        for _ in range(epochs):
            for idx in torch.randperm(n, generator=g).split(50):
                opt.zero_grad()
                loss = F.cross_entropy(run_tr(idx), ytr[idx])
                loss.backward()
                opt.step()
    for p in module.parameters():
        p.requires_grad_(False)
    module.train()
    module.eval()  # drops eval-time caches built before training
    with torch.no_grad():
        logits = run_te()
    prob = logits.softmax(-1)
    label.update({
        "train_images": int(n), "test_images": int(xte.shape[0]), "epochs": epochs,
        "test_accuracy": round(float((logits.argmax(-1) == yte).float().mean()), 4),
        "mean_top1_prob": round(float(prob.max(-1).values.mean()), 4),
        "seconds": round(time.perf_counter() - t0, 1),
    })
    return module, label


def build_calibrated(spec: ModelSpec, seed: int = 0, **kwargs: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build `spec` with a fixed seed and calibrate it: the same call gives the same weights.

    Muted branches are revived first (`edgeopt.models.liveinit`): calibrated on a network whose residual branches
    add 1e-5 of their output, efficientformer_l1 would be its stem, downsamplers and head."""
    import torch

    from edgeopt.models.liveinit import describe, revive_muted_branches

    torch.manual_seed(seed)
    module = spec.build(init_seed=seed)
    counts = revive_muted_branches(module)
    module, label = calibrate(module, spec, seed=seed, **kwargs)
    note = describe(counts)
    return module, {**label, **counts, **({"revived": note} if note else {})}
