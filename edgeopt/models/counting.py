"""Counting parameters and MACs the same way for every model (FlopCounterMode; works on `meta`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(module: torch.nn.Module, example: dict[str, torch.Tensor] | tuple) -> int:
    """MACs of one forward pass (FlopCounterMode counts FLOPs = 2 x MACs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        if isinstance(example, dict):
            module(**example)
        else:
            module(*example)
    return fc.get_total_flops() // 2
