"""SHViT's prune rule: timm's single-head attention block (SHSA) is traced as one leaf with its own pruner.

SHSA splits its input channels into an attended part (`pdim`) and a pass-through part, flattens q/k/v and
reshapes the attention result back to channels; torch-pruning's reshape-index analysis infers 0 channels
there. Traced as one leaf (`prune.opaque_leaves`), SHSA is pruned by `SHSAPruner`, which removes residual
channels from the pre-norm, the qkv input, the value and the projection consistently. With
`protect_attention` (the prune pass's default) every SHSA is frozen instead.
"""

from __future__ import annotations

from typing import Any

from edgeopt.passes.prune_rules import PRUNE_RULES, PruneRule


def _conv_bn(m: Any) -> tuple[Any, Any]:
    """(conv, bn or None) of timm's Conv2dNorm, or (conv, None) once reparam fused it."""
    from torch import nn

    if isinstance(m, nn.Conv2d):
        return m, None
    return m.c, m.bn


def _shsa_type() -> type | None:
    try:
        from timm.models.shvit import SHSA
    except ImportError:
        return None
    return SHSA


def shsa_pruner(shsa: type) -> Any:
    """torch-pruning pruner for timm's SHSA, traced as one leaf.

    Residual channel i < pdim feeds the attention (pre_norm, qkv input) and, since pdim is shared by the
    split of x and of qkv, takes value channel i and projection input i with it; channel i >= pdim only
    reaches the projection's input. Output channels are the projection's outputs.
    """
    from torch_pruning.pruner import function as F

    class SHSAPruner(F.BasePruningFunc):
        TARGET_MODULES = (shsa,)

        def prune_out_channels(self, layer: Any, idxs: list[int]) -> Any:
            conv, bn = _conv_bn(layer.proj[1])
            F.prune_conv_out_channels(conv, idxs)
            if bn is not None:
                F.prune_batchnorm_out_channels(bn, idxs)
            return layer

        def prune_in_channels(self, layer: Any, idxs: list[int]) -> Any:
            att = sorted(i for i in idxs if i < layer.pdim)
            if att:
                F.prune_groupnorm_out_channels(layer.pre_norm, att)
                conv, bn = _conv_bn(layer.qkv)
                F.prune_conv_in_channels(conv, att)
                v = [2 * layer.qk_dim + i for i in att]
                F.prune_conv_out_channels(conv, v)
                if bn is not None:
                    F.prune_batchnorm_out_channels(bn, v)
            F.prune_conv_in_channels(_conv_bn(layer.proj[1])[0], sorted(idxs))
            layer.pdim -= len(att)
            layer.dim -= len(idxs)
            return layer

        def get_out_channels(self, layer: Any) -> int:
            return _conv_bn(layer.proj[1])[0].out_channels

        def get_in_channels(self, layer: Any) -> int:
            return layer.dim

    return SHSAPruner()


class ShvitRule(PruneRule):
    reason = "attention blocks"

    def leaf_pruners(self) -> dict[type, Any]:
        shsa = _shsa_type()
        return {} if shsa is None else {shsa: shsa_pruner(shsa)}

    def frozen(self, model: Any, protect_attention: bool) -> list[Any]:
        shsa = _shsa_type()
        if not protect_attention or shsa is None:
            return []
        return [m for m in model.modules() if isinstance(m, shsa)]


PRUNE_RULES.register("shvit")(ShvitRule())
