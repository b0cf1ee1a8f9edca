"""prune: structured channel pruning with torch-pruning's dependency graph (torch).

Channels are removed from whole coupled groups (a conv, its BN, the residual adds it feeds and every
consumer), so the result is a smaller dense model that every backend runs. Defaults: L2 magnitude
importance (Taylor on the calibration samples as an option), a ratio applied per layer or globally,
channel counts kept multiples of 8 (SIMD-friendly), attention blocks and output layers protected. There
is no training here, so BatchNorm statistics are re-estimated on the calibration samples afterwards (when
reparam ran first there is no BN left: it was folded, and the note says so).

Output layers are found on the dependency graph itself: a conv/linear from which the model output is
reached without passing another conv/linear. Taylor importance needs a loss without labels: for
classification the cross-entropy against the model's own top-1, otherwise half the squared output norm.

Layers torch-pruning cannot handle on its own are declared to it rather than given up on:
- frozen modules: a group touching one (as input or output) is not pruned at all. Grouped convs that
  are neither dense nor depthwise (e.g. MobileCLIP/FastViT's stride-2 7x7 conv with groups = in,
  out = 2 x in) are frozen for every model: torch-pruning's importance and index mapping take
  in/groups == 1 to mean depthwise.
- a family's own layers, through its rule in `prune_rules/` (`PruneRule`): module types traced as one
  leaf with the family's pruner (`opaque_leaves`), and modules to freeze. SHViT's single-head attention
  is one (`prune_rules/shvit.py`).
"""

from __future__ import annotations

import contextlib
import copy
import re
import warnings
from typing import Annotated, Any, Literal

from edgeopt.errors import EdgeoptError
from edgeopt.passes._measure import TorchPass, run_torch, torch_inputs
from edgeopt.passes.base import PassConfig, PassContext, PassReport, in_range, register_pass
from edgeopt.passes.prune_rules import family_rules

_ATTENTION = re.compile(r"attention|attn|multihead", re.I)


class PruneConfig(PassConfig):
    # share of channels removed (per prunable group, or over the model when global)
    ratio: Annotated[float, in_range("(0, 1)")] = 0.3
    scope: Literal["layer", "global"] = "layer"
    importance: Literal["l2", "taylor"] = "l2"
    round_to: Annotated[int, in_range("[1, inf)")] = 8
    # global scope: no group loses more than this share
    max_layer_ratio: Annotated[float, in_range("(0, 1]")] = 0.8
    protect_attention: bool = True
    protect_outputs: bool = True
    ignore: list[str] = []  # module-name prefixes never pruned
    calibration_samples: Annotated[int, in_range("[1, inf)")] = 8
    recalibrate_bn: bool = True
    measure_latency: bool = True
    # recovery: distillation steps from the unpruned model on the calibration samples (0: none); `_recover.py`
    recover: Annotated[int, in_range("[0, 100000]")] = 0
    recover_batch: Annotated[int, in_range("[1, 1024]")] = 16
    recover_lr: Annotated[float, in_range("(0, 0.1]")] = 3e-5  # see docs/passes.md: higher rates lost top-1 on efficientformer_l1
    recover_temperature: Annotated[float, in_range("(0, 100]")] = 2.0
    recover_augment: bool = True  # random resized crop (80-100% of the area) + horizontal flip of image inputs
    recover_mixup: bool = False  # mixup between the batch's images (with recover_augment)


class _Tracker:
    """Forward hooks that name where a trace or a run stopped: inside a module, or right after one."""

    def __init__(self, model: Any, where: str = "<model input>") -> None:
        self.root = type(model).__name__
        self.where = where
        self.hooks = []
        for n, m in model.named_modules():
            if n:
                self.hooks.append(m.register_forward_pre_hook(self._pre(n)))
                self.hooks.append(m.register_forward_hook(self._post(n)))
        self.hooks.append(model.register_forward_hook(self._done))

    def _done(self, mod, args, out) -> None:
        self.where = "torch-pruning's graph analysis, after a complete forward pass (no single layer to blame)"

    def _pre(self, name: str):
        def hook(mod, args):
            self.where = f"layer {name} ({type(mod).__name__})"
        return hook

    def _post(self, name: str):
        def hook(mod, args, out):
            parent = name.rpartition(".")[0] or self.root
            self.where = f"the code right after layer {name} ({type(mod).__name__}) in {parent}.forward"
        return hook

    @property
    def last(self) -> str:
        return self.where

    def close(self) -> None:
        for h in self.hooks:
            h.remove()


def _batch(ctx: PassContext, n: int, start: int = 0) -> tuple:
    """Samples start .. start+n-1 (as far as there are) stacked into one batch per input."""
    import torch

    per = [torch_inputs(ctx, i) for i in range(start, min(start + n, len(ctx.samples)))]
    return tuple(torch.cat([p[j] for p in per]) for j in range(len(per[0])))


def output_layers(dg: Any) -> list[Any]:
    """Conv/linear modules from which a graph output is reached without another conv/linear."""
    from torch import nn

    params = (nn.modules.conv._ConvNd, nn.Linear)
    out = []
    for mod, node in dg.module2node.items():
        if not isinstance(mod, params):
            continue
        stack, seen, reaches_end = list(node.outputs), set(), not node.outputs
        while stack and not reaches_end:
            nxt = stack.pop()
            if id(nxt) in seen:
                continue
            seen.add(id(nxt))
            if isinstance(nxt.module, params):
                continue
            if not nxt.outputs:
                reaches_end = True
            stack.extend(nxt.outputs)
        if reaches_end:
            out.append(mod)
    return out


def recalibrate_bn(model: Any, ctx: PassContext, n: int, per_batch: int = 32) -> int:
    """Reset BN running statistics and re-estimate them on n real samples (cumulative average over
    batches of `per_batch`, so a large calibration set does not need one huge batch)."""
    from edgeopt.calibrate import reestimate_bn

    n = min(n, len(ctx.samples))
    return reestimate_bn(model, [_batch(ctx, min(per_batch, n - start), start) for start in range(0, n, per_batch)])


@contextlib.contextmanager
def opaque_leaves(model: Any, types: tuple[type, ...]):
    """While tracing, each module of `types` is one autograd node from its input to its output.

    torch-pruning follows autograd through a custom layer's insides (its reshapes and matmuls are what
    it cannot analyse); running the module inside an autograd Function hides them, so the traced graph
    sees input -> leaf -> output and the leaf's own pruner does the rest."""
    import torch

    class Opaque(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, fn: Any, x: Any) -> Any:
            return fn(x)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:  # never run: tracing only inspects the graph
            return None, None

    mods = [m for m in model.modules() if types and isinstance(m, types)]
    own = {id(m): m.__dict__["forward"] for m in mods if "forward" in m.__dict__}  # an instance's own forward
    for m in mods:
        real = m.forward
        m.forward = lambda x, _real=real: Opaque.apply(_real, x)
    try:
        yield
    finally:
        for m in mods:
            del m.forward
            if id(m) in own:
                m.forward = own[id(m)]


def frozen_modules(model: Any) -> list[Any]:
    """Layers no group may touch: grouped convs that are neither dense nor depthwise."""
    from torch import nn

    return [
        m for m in model.modules()
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels)
    ]


def _skip_groups_touching(dg: Any, frozen: list[Any]) -> None:
    """Make dg.get_all_groups skip every group with a dependency on a frozen module (in or out)."""
    if not frozen:
        return
    ids = {id(m) for m in frozen}
    inner = dg.get_all_groups

    def get_all_groups(*args: Any, **kwargs: Any):
        for group in inner(*args, **kwargs):
            if not any(id(dep.target.module) in ids for dep, _ in group):
                yield group

    dg.get_all_groups = get_all_groups


@register_pass
class PrunePass(TorchPass[PruneConfig]):
    name = "prune"
    shorthand_key = "ratio"
    description = "structured channel pruning (torch-pruning dependency graph), BN re-estimated on real samples"

    def _importance(self, cfg: PruneConfig):
        import torch_pruning as tp

        if cfg.importance == "taylor":
            return tp.importance.GroupTaylorImportance()
        return tp.importance.GroupMagnitudeImportance(p=2)

    def _taylor_grads(self, model: Any, ctx: PassContext, cfg: PruneConfig) -> None:
        import torch.nn.functional as F

        model.zero_grad()
        for i in range(min(cfg.calibration_samples, len(ctx.samples))):
            model.train()
            model.eval()  # timm's train() drops eval-time caches (attention biases) that hold an old graph
            out = model(*torch_inputs(ctx, i))
            out = out[0] if isinstance(out, (tuple, list)) else next(iter(out.values())) if isinstance(out, dict) else out
            if ctx.task == "classification":
                logits = out.reshape(-1, out.shape[-1])
                loss = F.cross_entropy(logits, logits.argmax(-1).detach())
            else:
                loss = 0.5 * (out.float() ** 2).mean()
            loss.backward()

    def transform(self, model: Any, ctx: PassContext, rep: PassReport) -> Any:
        import torch
        import torch_pruning as tp

        cfg = self.config
        ref_shapes = {k: v.shape for k, v in run_torch(model, ctx, 1)[0].items()}
        work = copy.deepcopy(model).eval()  # the input model is never touched, whatever happens below
        for prm in work.parameters():  # torch-pruning traces through autograd: frozen weights (calibrated
            prm.requires_grad_(True)  # models, a checkpoint loaded for inference) would leave nothing to prune
        example = torch_inputs(ctx)
        rules = family_rules()
        leaves = {t: pruner for rule in rules for t, pruner in rule.leaf_pruners().items()}
        tracker = _Tracker(work)
        try:
            with torch.enable_grad(), warnings.catch_warnings(), opaque_leaves(work, tuple(leaves)):
                warnings.simplefilter("ignore")  # 'unwrapped parameters' (layer scales): pruned on dim 0, as wanted
                dg = tp.DependencyGraph().build_dependency(work, example_inputs=example, customized_pruners=leaves)
        except Exception as e:  # noqa: BLE001 - any trace failure is reported with the layer it reached
            raise EdgeoptError(
                f"prune cannot trace {ctx.model_name}: stopped at {tracker.last}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
                "the model was left untouched; add that module to prune:ignore or drop the prune pass",
            ) from None
        finally:
            tracker.close()

        ignored: list[Any] = []
        reasons: dict[str, int] = {}
        names = {m: n for n, m in work.named_modules()}
        if cfg.protect_outputs:
            outs = output_layers(dg)
            ignored += outs
            reasons["output layers"] = len(outs)
        frozen = frozen_modules(work)
        if frozen:
            reasons["grouped convs (neither dense nor depthwise)"] = len(frozen)
        for rule in rules:
            mods = rule.frozen(work, cfg.protect_attention)
            if mods:
                frozen += mods
                reasons[rule.reason] = reasons.get(rule.reason, 0) + len(mods)
        frozen_ids = {id(m) for m in frozen}
        for n, m in work.named_modules():
            attention = _ATTENTION.search(type(m).__name__) or isinstance(m, torch.nn.MultiheadAttention)
            if cfg.protect_attention and attention and id(m) not in frozen_ids:
                sub = [c for c in m.modules() if isinstance(c, (torch.nn.Linear, torch.nn.modules.conv._ConvNd, torch.nn.MultiheadAttention))]
                ignored += sub
                reasons["attention layers"] = reasons.get("attention layers", 0) + len(sub)
            if any(n == p or n.startswith(p + ".") for p in cfg.ignore):
                ignored.append(m)
                reasons["ignored by option"] = reasons.get("ignored by option", 0) + 1
        ignored = list({id(m): m for m in ignored}.values())

        with torch.enable_grad(), warnings.catch_warnings(), opaque_leaves(work, tuple(leaves)):
            warnings.simplefilter("ignore")
            pruner = tp.pruner.MetaPruner(
                work, example, importance=self._importance(cfg), global_pruning=cfg.scope == "global",
                pruning_ratio=cfg.ratio, max_pruning_ratio=cfg.max_layer_ratio, ignored_layers=ignored + frozen,
                round_to=cfg.round_to, customized_pruners=leaves,
            )
        _skip_groups_touching(pruner.DG, frozen)
        if cfg.importance == "taylor":
            with torch.enable_grad():
                self._taylor_grads(work, ctx, cfg)
        before = {names[m]: (m.weight.shape[0] if hasattr(m, "weight") and m.weight is not None else None) for m in names if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))}
        tracker = _Tracker(work, where="torch-pruning's pruning step (before the pruned model ran)")
        try:
            pruner.step()
            work.zero_grad(set_to_none=True)
            work.train()
            work.eval()  # drops eval-time caches built from the unpruned weights
            got = run_torch(work, ctx, 1)[0]
        except Exception as e:  # noqa: BLE001
            raise EdgeoptError(
                f"prune broke {ctx.model_name} at {tracker.last}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
                "the model was left untouched; add that module to prune:ignore or drop the prune pass",
            ) from None
        finally:
            tracker.close()
        bad = {k: (tuple(got[k].shape), tuple(s)) for k, s in ref_shapes.items() if tuple(got[k].shape) != tuple(s)}
        if bad:
            raise EdgeoptError(f"prune changed output shapes of {ctx.model_name}: {bad}", "protect the output layers (prune:protect_outputs=true)")
        for p in work.parameters():
            p.requires_grad_(False)
        n_bn = recalibrate_bn(work, ctx, self._bn_samples(ctx)) if cfg.recalibrate_bn else 0
        for n, m in work.named_modules():
            if n in before and hasattr(m, "weight") and m.weight is not None and m.weight.shape[0] != before[n]:
                rep.changes.append({"module": n, "type": type(m).__name__, "out_channels": [before[n], int(m.weight.shape[0])]})
        rep.notes.append(
            f"{cfg.scope} {cfg.importance} pruning at ratio {cfg.ratio}, channels rounded to {cfg.round_to}; "
            f"{len(rep.changes)} layers narrowed; protected: " + (", ".join(f"{v} {k}" for k, v in reasons.items()) or "none")
        )
        rep.notes.append(
            f"BatchNorm statistics re-estimated on {min(self._bn_samples(ctx), len(ctx.samples))} real samples ({n_bn} layers)" if n_bn
            else "no BatchNorm to re-estimate" + (" (folded by reparam)" if cfg.recalibrate_bn else " (recalibrate_bn off)")
        )
        if cfg.recover:
            self._recover(model, work, ctx, rep)
        return work

    def _bn_samples(self, ctx: PassContext) -> int:
        """Samples for BN re-estimation: `calibration_samples`, or all of them when recovery follows."""
        return max(self.config.calibration_samples, len(ctx.samples)) if self.config.recover else self.config.calibration_samples

    def _recover(self, teacher: Any, student: Any, ctx: PassContext, rep: PassReport) -> None:
        """Distil the unpruned `teacher` into the pruned `student` (in place); the outcome goes into the report."""
        from edgeopt.passes._recover import distill

        cfg = self.config
        rec = distill(
            teacher, student, ctx, cfg.recover, batch=cfg.recover_batch, lr=cfg.recover_lr, temperature=cfg.recover_temperature,
            augment_inputs=cfg.recover_augment, mixup=cfg.recover_mixup,
        )
        rep.recovery = rec
        metric = next((k for k in ("top1_agreement", "map50", "next_token_agreement", "zeroshot_top1_agreement", "cosine")
                       if k in rec.fidelity_before and k in rec.fidelity_after), "cosine")
        rep.notes.append(
            f"recovery: {rec.steps} distillation steps ({rec.loss}, batch {rec.batch}, lr {rec.lr:g}, augment {rec.augment}) on "
            f"{rec.calibration_samples} calibration samples in {rec.seconds:.0f} s; loss {rec.loss_first:.4g} -> {rec.loss_last:.4g}; "
            f"{metric} {rec.fidelity_before.get(metric, float('nan')):.4f} -> {rec.fidelity_after.get(metric, float('nan')):.4f} "
            f"on {rec.evaluated_on}"
        )
