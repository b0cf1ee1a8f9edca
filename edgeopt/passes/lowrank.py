"""lowrank: SVD factorisation of Linear and 1x1 Conv layers (PELA-style), only where it lowers MACs (torch).

W (out x in) = U S V^T truncated to rank r becomes two layers: in -> r (V^T, no bias) and r -> out
(U S, the original bias). Per position that costs r (in + out) MACs instead of in x out, so a layer is
factorised only when r < in*out / (in + out) (times `max_cost`). The rank is the smallest that keeps
`energy` of the squared singular values, or `rank_ratio` x min(in, out) when that is given, rounded up
to `round_to`. Random weights have a flat spectrum (nearly full rank at any useful energy), so on them
this pass rightly changes little; trained and calibrated weights are where it bites. Every layer
considered is in the report with its rank, energy kept and MACs per position.
"""

from __future__ import annotations

import copy
import math
from typing import Annotated, Any

from edgeopt.passes._measure import TorchPass, run_torch
from edgeopt.passes.base import PassConfig, PassContext, PassReport, in_range, register_pass


class LowrankConfig(PassConfig):
    energy: Annotated[float, in_range("(0, 1]")] = 0.95  # keep this share of sum(s^2)
    # if set: rank = ratio x min(in, out), overriding energy
    rank_ratio: Annotated[float | None, in_range("(0, 1]")] = None
    round_to: Annotated[int, in_range("[1, inf)")] = 8
    min_features: int = 64  # skip layers narrower than this on either side
    max_cost: float = 0.9  # factorise only if the new MACs are below this share of the old
    skip: list[str] = []  # module-name prefixes left alone
    measure_latency: bool = True


def choose_rank(s: Any, cfg: LowrankConfig) -> tuple[int, float]:
    """(rank, share of energy kept) for singular values s (descending)."""
    import torch

    full = s.numel()
    e = (s.double() ** 2).cumsum(0)
    total = float(e[-1]) if full else 0.0
    if cfg.rank_ratio is not None:
        r = max(1, math.ceil(cfg.rank_ratio * full))
    else:
        r = int(torch.searchsorted(e, torch.tensor(cfg.energy * total, dtype=e.dtype)).item()) + 1
    r = min(full, math.ceil(r / cfg.round_to) * cfg.round_to)
    return r, (float(e[r - 1]) / total if total > 0 else 1.0)


def factorise(layer: Any, r: int) -> Any:
    """Two-layer replacement of a Linear or 1x1 Conv2d at rank r (same input/output layout)."""
    import torch
    from torch import nn

    conv = isinstance(layer, nn.Conv2d)
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1).double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    sq = s[:r].sqrt()
    a = (sq[:, None] * vh[:r]).to(layer.weight.dtype)  # r x in
    b = (u[:, :r] * sq[None, :]).to(layer.weight.dtype)  # out x r
    bias = layer.bias is not None
    if conv:
        first = nn.Conv2d(layer.in_channels, r, 1, stride=layer.stride, bias=False)
        second = nn.Conv2d(r, layer.out_channels, 1, bias=bias)
        first.weight.data.copy_(a[:, :, None, None])
        second.weight.data.copy_(b[:, :, None, None])
    else:
        first = nn.Linear(layer.in_features, r, bias=False)
        second = nn.Linear(r, layer.out_features, bias=bias)
        first.weight.data.copy_(a)
        second.weight.data.copy_(b)
    if bias:
        second.bias.data.copy_(layer.bias.detach())
    return nn.Sequential(first, second)


def _candidate(m: Any) -> tuple[int, int] | None:
    from torch import nn

    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    if (
        isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1 and m.padding in ((0, 0), 0)
        and m.dilation == (1, 1)
    ):
        return m.in_channels, m.out_channels
    return None


@register_pass
class LowrankPass(TorchPass[LowrankConfig]):
    name = "lowrank"
    shorthand_key = "energy"
    description = "SVD factorisation of Linear / 1x1 Conv where it lowers MACs"

    def measure_latency(self, rep: PassReport) -> bool:
        return self.config.measure_latency and any(c["applied"] for c in rep.changes)

    def transform(self, model: Any, ctx: PassContext, rep: PassReport) -> Any:
        import torch

        cfg = self.config
        out = copy.deepcopy(model).eval()
        done = 0
        with torch.no_grad():
            for name, m in list(out.named_modules()):
                dims = _candidate(m)
                if dims is None or any(name == p or name.startswith(p + ".") for p in cfg.skip):
                    continue
                fin, fout = dims
                if min(fin, fout) < cfg.min_features:
                    continue
                s = torch.linalg.svdvals(m.weight.detach().reshape(fout, -1).double())
                r, kept = choose_rank(s, cfg)
                old, new = fin * fout, r * (fin + fout)
                row = {"module": name, "type": type(m).__name__, "in": fin, "out": fout, "rank": r,
                       "energy_kept": round(kept, 6), "macs_per_position": [old, new]}
                if new >= cfg.max_cost * old:
                    row["applied"] = False
                    row["why"] = f"rank {r} would cost {new / old:.0%} of the MACs (limit {cfg.max_cost:.0%})"
                else:
                    out.set_submodule(name, factorise(m, r))
                    row["applied"] = True
                    done += 1
                rep.changes.append(row)
        out.eval()
        # touch the outputs once so a layer that cannot take the new shape fails here, named by the pipeline
        run_torch(out, ctx, 1)
        rule = f"rank_ratio {cfg.rank_ratio}" if cfg.rank_ratio is not None else f"energy {cfg.energy}"
        rep.notes.append(f"{done} of {len(rep.changes)} Linear/1x1 layers factorised ({rule}, rank rounded to {cfg.round_to})")
        if done == 0:
            rep.notes.append("no layer's spectrum allows a cheaper factorisation at this setting")
        return out
