"""Random init without muted branches, for figures measured without a checkpoint.

Two inits mute whole residual branches, which trained weights never do:
- timm zero-initialises the scale of the last norm in some residual branches (shvit: 35 BatchNorms): with gamma 0
  a branch outputs a constant, LiteRT's converter folds it away (shvit_s1 fp32 .tflite 6.6 MB with 18 of 77
  convs against 25.9 MB of ONNX), and the features left are so small that int8 rounds them off (cosine 0);
- layer scales start at 1e-5 (EfficientFormer's ls1/ls2, MobileCLIP's layer_scale): each branch adds 1e-5 of
  its output, so pruning or quantizing it changes nothing measurable (--auto on mobileclip kept a 30 % pruned
  encoder at cosine 0.99999).
Both are set to 1 (timm's init for every other norm scale), and the weights label says how many.
"""

from __future__ import annotations

from typing import Any

MUTED_SCALE_MAX = 1e-4  # a layer scale whose every element is one constant at most this is still at its init


def revive_muted_branches(module: Any) -> dict[str, int]:
    """Set zero norm scales and constant tiny layer scales to 1, in place; how many of each."""
    import torch

    kinds = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.LayerNorm, torch.nn.GroupNorm)  # and subclasses (timm's BatchNormAct2d)
    norms = revived = 0
    with torch.no_grad():
        for mod in module.modules():
            w = getattr(mod, "weight", None)
            if isinstance(mod, kinds) and w is not None and w.numel() and bool(torch.all(w == 0)):
                w.fill_(1.0)
                norms += 1
        for p in module.parameters():
            v = p.detach().flatten()
            if v.numel() and 0 < float(v[0].abs()) <= MUTED_SCALE_MAX and bool(torch.all(v == v[0])):
                p.fill_(1.0)
                revived += 1
    return {"revived_norms": norms, "revived_layer_scales": revived}


def describe(counts: dict[str, int]) -> str | None:
    """The weights-label note for what revive_muted_branches did (None when it did nothing)."""
    what = [f"{counts['revived_norms']} zero-initialised residual-branch norm scales"] * bool(counts["revived_norms"])
    what += [f"{counts['revived_layer_scales']} layer scales (1e-5 at init)"] * bool(counts["revived_layer_scales"])
    if not what:
        return None
    return f"{' and '.join(what)} set to 1 (at their init they make those branches dead or mute)"
