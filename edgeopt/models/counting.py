"""Counting parameters and MACs the same way for every model (FlopCounterMode; works on `meta`).

Papers count MACs in different conventions. `count_macs(..., convention=...)` names the one a card
uses (`PaperFigures.macs_convention`), so every family is checked against its paper by one function:
- "flop_counter": torch's FlopCounterMode (matmuls and convolutions; no norms or activations);
- "ultralytics": what ultralytics/thop report (used by LeYOLO): the same convolutions plus 4 ops per
  output element of every BatchNorm, which FlopCounterMode ignores (~5-7% of LeYOLO's total).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

CONVENTIONS = ("flop_counter", "ultralytics")


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(module: torch.nn.Module, example: dict[str, torch.Tensor] | tuple, convention: str = "flop_counter") -> int:
    """MACs of one forward pass in the given convention (FlopCounterMode counts FLOPs = 2 x MACs)."""
    import torch
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    if convention not in CONVENTIONS:
        raise ValueError(f"unknown MAC convention {convention!r}; known: {', '.join(CONVENTIONS)}")
    bn_elems = [0]
    hooks = []
    if convention == "ultralytics":
        hooks = [m.register_forward_hook(lambda _m, _i, o: bn_elems.__setitem__(0, bn_elems[0] + o.numel()))
                 for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            if isinstance(example, dict):
                module(**example)
            else:
                module(*example)
    finally:
        for h in hooks:
            h.remove()
    return fc.get_total_flops() // 2 + 4 * bn_elems[0]
