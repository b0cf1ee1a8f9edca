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
