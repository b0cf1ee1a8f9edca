"""reparam: turn training-time structure into the equivalent inference-time structure (torch, exact).

Three steps, each checked numerically, in this order:
1. the library's own re-parameterisation: any submodule with `fuse()` (returns a replacement),
   `reparameterize()` or `switch_to_deploy()` (in place) is called bottom-up, as timm's
   `reparameterize_model` does. This merges RepVGG/MobileOne branches (timm FastViT/MobileOne/MCi) and
   SHViT's Conv2dNorm/NormLinear/Residual(dw). edgeopt's own modules join in by defining `reparameterize()`
   (`merge_branches` below does the arithmetic for RepVGG-style blocks).
2. BatchNorm folding for what is left: Conv/Linear -> BN (into the conv's weights) and BN1d -> Linear
   (into the linear, SHViT's head). Pairs are found by running one sample with hooks and matching the
   tensor a BN reads with the tensor a conv wrote, so it works on models FX cannot trace; a pair whose
   intermediate tensor is also read elsewhere would change the output and is caught by step 4.
3. Residual identity folding: a module computing `x + dwconv(x)` (stride 1, same padding, probed
   numerically) becomes one depthwise conv whose kernel centre is raised by one.
4. The result must equal the input model within `tolerance` (max abs diff relative to the output range).
   When all BN folds together miss it, they are applied one at a time and the offending ones skipped.
"""

from __future__ import annotations

import copy
from typing import Any

from edgeopt.errors import EdgeoptError
from edgeopt.passes._measure import TorchPass, rel_max_diff, run_torch, torch_inputs
from edgeopt.passes.base import PassConfig, PassContext, PassReport, register_pass


class ReparamConfig(PassConfig):
    library: bool = True  # call modules' own fuse()/reparameterize()/switch_to_deploy()
    fold_bn: bool = True
    fold_residual: bool = True
    tolerance: float = 1e-4  # max |diff| / max |reference| allowed on the sample inputs
    measure_latency: bool = True  # export before/after and time both on ONNX Runtime for the report


# ---------------------------------------------------------------------------------------------- helpers
def bn_scale_shift(bn: Any) -> tuple[Any, Any]:
    """BatchNorm in eval as y = x * s + t (per channel)."""
    import torch

    var, mean = bn.running_var, bn.running_mean
    gamma = bn.weight if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(mean)
    s = gamma / torch.sqrt(var + bn.eps)
    return s, beta - mean * s


def fold_bn_into(layer: Any, bn: Any) -> None:
    """layer -> bn becomes layer' (Conv*d or Linear), in place, by torch's `fuse_conv_bn_weights`, whose
    arithmetic holds for any weight with the output channels on dim 0."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    with torch.no_grad():
        layer.weight, layer.bias = fuse_conv_bn_weights(
            layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias,
        )


def fold_bn_before_linear(bn: Any, linear: Any) -> None:
    """bn -> linear on (N, C) features becomes linear': W' = W diag(s), b' = b + W t."""
    import torch

    with torch.no_grad():
        s, t = bn_scale_shift(bn)
        w = linear.weight.clone()
        linear.weight.copy_(w * s.reshape(1, -1))
        extra = w @ t
        if linear.bias is None:
            linear.bias = torch.nn.Parameter(extra.to(w.dtype))
        else:
            linear.bias.add_(extra)


def merge_branches(convs: list[tuple[Any, Any | None]], identity_bn: Any | None, out_conv: Any) -> None:
    """RepVGG/MobileOne merge: sum of (conv_i -> bn_i) branches (+ bn(identity)) into `out_conv` in place.

    Every conv must share stride/groups/out channels; smaller kernels are zero-padded to `out_conv`'s
    kernel (centred). `identity_bn` (or None) is the BN-only skip branch (needs in == out channels).
    `out_conv` must have a bias. This is the arithmetic an edgeopt module's `reparameterize()` calls.
    """
    import torch
    import torch.nn.functional as F

    kh, kw = out_conv.kernel_size
    w_sum = torch.zeros_like(out_conv.weight)
    b_sum = torch.zeros(out_conv.out_channels, dtype=out_conv.weight.dtype)
    with torch.no_grad():
        for conv, bn in convs:
            w = conv.weight
            b = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, dtype=w.dtype)
            if bn is not None:
                s, t = bn_scale_shift(bn)
                w, b = w * s.reshape(-1, 1, 1, 1), b * s + t
            ph, pw = (kh - w.shape[2]) // 2, (kw - w.shape[3]) // 2
            w_sum += F.pad(w, [pw, pw, ph, ph])
            b_sum += b
        if identity_bn is not None:
            in_per_group = out_conv.in_channels // out_conv.groups
            ident = torch.zeros_like(out_conv.weight)
            for c in range(out_conv.out_channels):
                ident[c, c % in_per_group, kh // 2, kw // 2] = 1.0
            s, t = bn_scale_shift(identity_bn)
            w_sum += ident * s.reshape(-1, 1, 1, 1)
            b_sum += t
        out_conv.weight.copy_(w_sum)
        out_conv.bias.copy_(b_sum)


# ------------------------------------------------------------------------------------------ step 1
def library_reparam(model: Any) -> list[dict[str, Any]]:
    """Bottom-up walk calling fuse()/reparameterize()/switch_to_deploy(), as timm does; in place."""
    done: list[dict[str, Any]] = []

    def walk(m: Any, prefix: str) -> None:
        for name, child in list(m.named_children()):
            full = f"{prefix}{name}"
            if hasattr(child, "fuse") and callable(child.fuse):
                new = child.fuse()
                if new is not child:
                    setattr(m, name, new)
                    done.append({"module": full, "type": type(child).__name__, "how": "fuse()", "into": type(new).__name__})
                    child = new
            elif hasattr(child, "reparameterize") and callable(child.reparameterize):
                child.reparameterize()
                done.append({"module": full, "type": type(child).__name__, "how": "reparameterize()"})
            elif hasattr(child, "switch_to_deploy") and callable(child.switch_to_deploy):
                child.switch_to_deploy()
                done.append({"module": full, "type": type(child).__name__, "how": "switch_to_deploy()"})
            walk(child, full + ".")

    walk(model, "")
    return done


# ------------------------------------------------------------------------------------------ step 2
def find_bn_pairs(model: Any, example: tuple) -> list[tuple[str, str, str]]:
    """[(kind, layer name, bn name)] with kind 'layer_bn' (conv/linear -> bn) or 'bn_linear'."""
    import torch
    from torch import nn

    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    bns = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    names = {}
    for n, m in model.named_modules():
        names.setdefault(id(m), []).append(n)
    calls: dict[str, int] = {}
    wrote: dict[int, str] = {}  # id(output tensor) -> conv name
    bn_reads: dict[str, tuple[int, int]] = {}  # bn name -> (id(input), ndim)
    bn_wrote: dict[int, str] = {}
    lin_reads: dict[str, tuple[int, int]] = {}
    keep: list[Any] = []  # hold tensors so their ids stay unique during the pass
    hooks = []

    def post(name: str, is_bn: bool):
        def hook(mod, inp, out):
            calls[name] = calls.get(name, 0) + 1
            keep.append(out)
            if is_bn:
                keep.append(inp[0])
                bn_reads[name] = (id(inp[0]), inp[0].dim())
                bn_wrote[id(out)] = name
            else:
                wrote[id(out)] = name
                if isinstance(mod, nn.Linear):
                    keep.append(inp[0])
                    lin_reads[name] = (id(inp[0]), inp[0].dim())
        return hook

    for n, m in model.named_modules():
        if len(names[id(m)]) != 1 or not n:
            continue  # shared module objects: folding one use would change the others
        if isinstance(m, bns) and m.track_running_stats and m.running_mean is not None:
            hooks.append(m.register_forward_hook(post(n, True)))
        elif isinstance(m, convs) and getattr(m, "padding_mode", "zeros") == "zeros":
            hooks.append(m.register_forward_hook(post(n, False)))
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    mods = dict(model.named_modules())
    pairs: list[tuple[str, str, str]] = []
    for bn, (tid, ndim) in bn_reads.items():
        layer = wrote.get(tid)
        if layer and calls.get(layer) == 1 and calls.get(bn) == 1:
            if isinstance(mods[layer], nn.Linear) and ndim != 2:
                continue  # Linear on (N, L, C) then BN1d on dim 1 is not a per-output-channel scale
            if mods[layer].weight.shape[0] == mods[bn].num_features:
                pairs.append(("layer_bn", layer, bn))
    used_bn = {p[2] for p in pairs}
    for lin, (tid, ndim) in lin_reads.items():
        bn = bn_wrote.get(tid)
        if bn and bn not in used_bn and ndim == 2 and calls.get(lin) == 1 and calls.get(bn) == 1:
            if mods[lin].in_features == mods[bn].num_features:
                pairs.append(("bn_linear", lin, bn))
    return pairs


def apply_bn_pair(model: Any, pair: tuple[str, str, str]) -> None:
    from torch import nn

    kind, layer, bn = pair
    mods = dict(model.named_modules())
    if kind == "layer_bn":
        fold_bn_into(mods[layer], mods[bn])
    else:
        fold_bn_before_linear(mods[bn], mods[layer])
    model.set_submodule(bn, nn.Identity())


# ------------------------------------------------------------------------------------------ step 3
def _sole_dwconv(m: Any) -> Any | None:
    """The one depthwise stride-1 same-padding Conv2d that holds all of m's parameters, else None."""
    from torch import nn

    if isinstance(m, nn.Conv2d):
        convs = [m]
    else:
        convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
        others = [c for c in m.modules() if c is not m and not isinstance(c, (nn.Conv2d, nn.Identity, nn.Dropout, nn.Sequential))]
        if others:
            return None
    if len(convs) != 1:
        return None
    c = convs[0]
    if sum(p.numel() for p in m.parameters()) != sum(p.numel() for p in c.parameters()):
        return None
    kh, kw = c.kernel_size
    ok = (
        c.groups == c.in_channels == c.out_channels and c.stride == (1, 1) and c.dilation == (1, 1)
        and kh % 2 == 1 and kw % 2 == 1 and c.padding == (kh // 2, kw // 2) and c.padding_mode == "zeros"
    )
    return c if ok else None


def fold_residual_identities(model: Any) -> list[dict[str, Any]]:
    """Replace modules that compute x + dwconv(x) (checked on a random probe) by one conv; in place."""
    import torch

    done = []
    for name, m in list(model.named_modules()):
        children = list(m.children())
        if not name or len(children) != 1 or list(m.parameters(recurse=False)):
            continue
        conv = _sole_dwconv(children[0])
        if conv is None:
            continue
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, conv.in_channels, 9, 9, generator=g, dtype=conv.weight.dtype)
        with torch.no_grad():
            try:
                y = m(x)
            except Exception:  # noqa: BLE001 - a module that does not take this probe is not a residual
                continue
            expect = x + conv(x)
            if y.shape != expect.shape or not torch.allclose(y, expect, rtol=1e-5, atol=1e-5):
                continue
            new = copy.deepcopy(conv)
            kh, kw = new.kernel_size
            new.weight[:, 0, kh // 2, kw // 2] += 1.0
        model.set_submodule(name, new)
        done.append({"module": name, "type": type(m).__name__, "how": "x + dwconv(x) -> dwconv with identity"})
    return done


# -------------------------------------------------------------------------------------------- pass
@register_pass
class ReparamPass(TorchPass[ReparamConfig]):
    name = "reparam"
    description = "fold BatchNorm, merge multi-branch blocks, fold residual identities (exact)"

    def transform(self, model: Any, ctx: PassContext, rep: PassReport) -> Any:
        cfg = self.config
        refs = run_torch(model, ctx)
        example = torch_inputs(ctx)
        out = copy.deepcopy(model).eval()

        if cfg.library:
            lib = library_reparam(out)
            err = rel_max_diff(refs, run_torch(out, ctx))
            if err > cfg.tolerance:
                rep.notes.append(f"library re-parameterisation changed the output by {err:.2e} > {cfg.tolerance}: undone")
                out = copy.deepcopy(model).eval()
                lib = []
            rep.changes += lib
        if cfg.fold_bn:
            base = copy.deepcopy(out)
            pairs = find_bn_pairs(out, example)
            for p in pairs:
                apply_bn_pair(out, p)
            err = rel_max_diff(refs[:1], run_torch(out, ctx, 1))
            if err > cfg.tolerance:
                # one at a time, keeping only folds that hold (a tensor read twice is not foldable)
                out, kept = base, []
                for p in pairs:
                    trial = copy.deepcopy(out)
                    apply_bn_pair(trial, p)
                    if rel_max_diff(refs[:1], run_torch(trial, ctx, 1)) <= cfg.tolerance:
                        out = trial
                        kept.append(p)
                    else:
                        rep.notes.append(f"BN fold {p[1]} / {p[2]} skipped: its input is read elsewhere")
                pairs = kept
            rep.changes += [
                {"module": bn, "how": "BN folded into preceding " + layer if kind == "layer_bn" else "BN folded into following " + layer}
                for kind, layer, bn in pairs
            ]
        if cfg.fold_residual:
            res = fold_residual_identities(out)
            rep.changes += res
        err = rel_max_diff(refs, run_torch(out, ctx))
        if err > cfg.tolerance:
            raise EdgeoptError(
                f"reparam changed {ctx.model_name}'s output by {err:.2e} of its range (> {cfg.tolerance})",
                "run reparam:fold_residual=false or reparam:library=false to find the step, and report the model",
            )
        out.eval()
        rep.notes.append(f"{len(rep.changes)} rewrites; output equal within {err:.1e} of its range on {len(refs)} samples")
        if not rep.changes:
            rep.notes.append("nothing to re-parameterise in this model")
        return out
