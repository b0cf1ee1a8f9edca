"""SHViT: Single-Head Vision Transformer with memory-efficient macro design (Yun & Ro, CVPR 2024), built by timm.

S1-S3 run at 224, S4 at 256 (as in the paper). The official repo (ysj9909/SHViT) names its stages
`blocks1..3` and keeps each downsampling section inside the next stage's Sequential; timm splits it out as
`stages.i.downsample`, so `shvit_official_to_timm` renames official checkpoints (timm's own filter only
unwraps `model`).

Pruning SHViT's single-head attention needs a rule of its own; it lives with the prune pass, in
`edgeopt/passes/prune_rules/shvit.py` (models lie below passes and do not import them).
"""

from __future__ import annotations

import re

from edgeopt.models._timm import timm_classifier_spec
from edgeopt.models.registry import PaperFigures, register

_SRC = "Yun & Ro 2024, SHViT, Table 5/6 (params, FLOPs at 224; S4 at 256)"
_NOTE = "paper says FLOPs, means MACs (timm's counts match the MAC reading)"

def shvit_official_to_timm(sd: dict) -> dict:
    """Rename an official SHViT state dict to timm's layout.

    Official `blocks{s+1}` holds, for s >= 1: [0] a Sequential(Residual(DW conv), Residual(FFN)), [1] the
    PatchMerging, [2] another Sequential(Residual(DW), Residual(FFN)), then the stage's BasicBlocks from
    index 3; timm calls the first five modules `downsample.0..4` and the rest `blocks.0..`.
    """
    if any(k.startswith("stages.") for k in sd):
        return sd
    out = {}
    for k, v in sd.items():
        m = re.match(r"^blocks(\d)\.(\d+)\.(.*)$", k)
        if m:
            s, j, rest = int(m.group(1)) - 1, int(m.group(2)), m.group(3)
            if s == 0:
                k = f"stages.0.blocks.{j}.{rest}"
            elif j in (0, 2):  # Sequential(Residual(dw), Residual(ffn)) -> downsample.{0,1} / {3,4}
                sub, rest2 = rest.split(".", 1)
                k = f"stages.{s}.downsample.{j // 2 * 3 + int(sub)}.{rest2}"
            elif j == 1:
                k = f"stages.{s}.downsample.2.{rest}"
            else:
                k = f"stages.{s}.blocks.{j - 3}.{rest}"
        out[k] = v
    return out

def _filter(sd, model):
    return shvit_official_to_timm(sd)

for _v, _p, _m, _r in (
    ("s1", 6.3, 0.241, 224),
    ("s2", 11.4, 0.366, 224),
    ("s3", 14.2, 0.601, 224),
    ("s4", 16.5, 0.986, 256),
):
    register(
        timm_classifier_spec(
            f"shvit_{_v}",
            "shvit",
            f"shvit_{_v}",
            PaperFigures(params_m=_p, macs_g=_m, resolution=(_r, _r), source=_SRC, note=_NOTE),
            filter_fn=_filter,
            description=f"SHViT-{_v.upper()}: 16x16 patchify stem, single-head partial attention, ImageNet-1k",

        )
    )
