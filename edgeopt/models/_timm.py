"""Shared glue for families that timm implements: build without a hub, read timm's eval transform,
and load a timm-layout or official checkpoint through timm's own key filter."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from edgeopt.models.checkpoints import load_into
from edgeopt.models.inputs import image_samples
from edgeopt.models.registry import InputSpec, ModelSpec, PaperFigures


def build_timm(arch: str, device: str = "cpu", **kwargs: Any):
    import timm
    import torch

    with torch.device(device):
        return timm.create_model(arch, pretrained=False, **kwargs)


def timm_eval_cfg(arch: str) -> dict[str, Any]:
    """timm's pretrained config for `arch` (input size, mean/std, crop) without touching the network."""
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    return cfg.to_dict() if cfg is not None else {}


def load_timm_checkpoint(arch: str, module, path: Path, filter_fn: Callable | None = None) -> None:
    """Accept both timm's key layout and the official repo's (mapped by timm's checkpoint filter)."""

    def key_map(sd):
        own = module.state_dict()
        if filter_fn is not None and not all(k in own for k in sd):
            sd = filter_fn(sd, module)
        return sd

    load_into(module, path, key_map=key_map, variant=arch)


def timm_classifier_spec(
    name: str,
    family: str,
    arch: str,
    paper: PaperFigures,
    filter_fn: Callable | None = None,
    description: str = "",
    resolution: int | None = None,
) -> ModelSpec:
    """A ModelSpec for a timm ImageNet classifier: one image input, logits out."""
    cfg = timm_eval_cfg(arch)
    _, h, w = cfg.get("input_size", (3, 224, 224))
    if resolution is not None:
        h = w = resolution
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    crop = float(cfg.get("crop_pct", 0.875))
    extra: dict[str, Any] = {"img_size": (h, w)} if resolution is not None else {}
    return ModelSpec(
        name=name,
        family=family,
        task="classification",
        builder=partial(build_timm, arch, **extra),
        inputs=(InputSpec("image", (1, 3, h, w)),),
        outputs=("logits",),
        sample_inputs=partial(image_samples, input_name="image", size=(h, w), mean=mean, std=std, crop_pct=crop),
        paper=paper,
        load_checkpoint=partial(load_timm_checkpoint, arch, filter_fn=filter_fn),
        description=description,
        extras={"timm_arch": arch, "mean": mean, "std": std, "crop_pct": crop, "num_classes": 1000},
    )
