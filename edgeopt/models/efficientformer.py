"""EfficientFormer (Li et al., NeurIPS 2022), built by timm.

Paper figures include the distillation head (timm keeps it; eval output is the mean of both heads).
"""

from __future__ import annotations

from edgeopt.models._timm import timm_classifier_spec
from edgeopt.models.registry import PaperFigures, register

_SRC = "Li et al. 2022, EfficientFormer, Table 1 (params with distillation head; GMACs at 224)"


def _filter(sd, model):
    from timm.models.efficientformer import checkpoint_filter_fn

    return checkpoint_filter_fn(sd, model)


for _v, _p, _m in (("l1", 12.29, 1.30), ("l3", 31.41, 3.93), ("l7", 82.23, 10.17)):
    register(
        timm_classifier_spec(
            f"efficientformer_{_v}",
            "efficientformer",
            f"efficientformer_{_v}",
            PaperFigures(params_m=_p, macs_g=_m, resolution=(224, 224), source=_SRC),
            filter_fn=_filter,
            description=f"EfficientFormer-{_v.upper()}: MetaBlocks 4D (pool mixer) then 3D (attention), ImageNet-1k",
        )
    )


# EfficientFormerV2 (Li et al., ICCV 2023). The README figures omit the distillation head that timm
# keeps, so timm's builds count 3.60 / 6.19 / 12.71 / 26.32 M against 3.5 / 6.1 / 12.6 / 26.1 M (all
# within 3%). The official repo's key layout differs from timm's and timm ships no filter for it, so
# `_filter_v2` maps it (facts from snap-research/EfficientFormer models/efficientformer_v2.py).
_SRC_V2 = "Li et al. 2023, EfficientFormerV2, official README table (params, GMACs at 224)"
_V2_NOTE = "README says MACs; params without the distillation head (timm keeps it: +0.1-0.2 M)"


def _filter_v2(sd, model):
    return efficientformer_v2_official_to_timm(sd)


def efficientformer_v2_official_to_timm(sd: dict) -> dict:
    """Rename an official EfficientFormerV2 state dict (`patch_embed`, `network.N`) to timm's layout.

    Official `network` alternates stages (even indices) and downsampling `Embedding`s (odd indices);
    conv+BN pairs are `Sequential`s (`.0`/`.1`) or sibling names (`fc1` + `norm1`) where timm uses
    `ConvNorm` (`.conv`/`.bn`). Buffers the official code persists (`attention_bias_idxs`) are dropped:
    timm recomputes them.
    """
    import re

    if "stem.conv1.conv.weight" in sd:
        return sd
    out = {}
    for k, v in sd.items():
        if k.endswith("attention_bias_idxs"):
            continue
        k = re.sub(r"^patch_embed\.0\.", "stem.conv1.conv.", k)
        k = re.sub(r"^patch_embed\.1\.", "stem.conv1.bn.", k)
        k = re.sub(r"^patch_embed\.3\.", "stem.conv2.conv.", k)
        k = re.sub(r"^patch_embed\.4\.", "stem.conv2.bn.", k)
        m = re.match(r"^network\.(\d+)\.(.*)$", k)
        if m:
            idx, rest = int(m.group(1)), m.group(2)
            if idx % 2 == 0:  # a stage: network.{2s}.{block}.* -> stages.s.blocks.{block}.*
                b, rest2 = rest.split(".", 1)
                k = f"stages.{idx // 2}.blocks.{b}.{rest2}"
            else:  # downsampling Embedding before stage (idx+1)/2
                s = (idx + 1) // 2
                rest = re.sub(r"^(proj|conv)\.", "conv.conv.", rest)
                rest = re.sub(r"^(norm|bn)\.", "conv.bn.", rest)
                k = f"stages.{s}.downsample.{rest}"
        k = k.replace(".mlp.norm1.", ".mlp.fc1.bn.").replace(".mlp.mid_norm.", ".mlp.mid.bn.")
        k = k.replace(".mlp.norm2.", ".mlp.fc2.bn.")
        k = re.sub(r"\.mlp\.(fc1|mid|fc2)\.(weight|bias)$", r".mlp.\1.conv.\2", k)
        k = re.sub(r"\.(q|k|v|v_local|stride_conv)\.0\.", r".\1.conv.", k)
        k = re.sub(r"\.(q|k|v|v_local|stride_conv)\.1\.", r".\1.bn.", k)
        k = k.replace(".q.local.0.", ".q.local.")
        k = re.sub(r"\.q\.proj\.0\.", ".q.proj.conv.", k)
        k = re.sub(r"\.q\.proj\.1\.", ".q.proj.bn.", k)
        k = re.sub(r"\.proj\.1\.", ".proj.conv.", k)
        k = re.sub(r"\.proj\.2\.", ".proj.bn.", k)
        if re.search(r"\.layer_scale_[12]$", k):  # official (dim, 1, 1) -> timm's LayerScale2d (dim,)
            k, v = re.sub(r"\.layer_scale_([12])$", r".ls\1.gamma", k), v.reshape(-1)
        k = k.replace("dist_head.", "head_dist.")
        out[k] = v
    return out


for _v, _p, _m in (("s0", 3.5, 0.40), ("s1", 6.1, 0.65), ("s2", 12.6, 1.25), ("l", 26.1, 2.56)):
    register(
        timm_classifier_spec(
            f"efficientformerv2_{_v}",
            "efficientformer",
            f"efficientformerv2_{_v}",
            PaperFigures(params_m=_p, macs_g=_m, resolution=(224, 224), source=_SRC_V2, note=_V2_NOTE),
            filter_fn=_filter_v2,
            description=f"EfficientFormerV2-{_v.upper()}: 4D FFN + local/global attention stages, ImageNet-1k",
        )
    )
