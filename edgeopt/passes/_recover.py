"""Recovery after structured pruning: knowledge distillation from the unpruned model (no labels needed).

The teacher is the module the prune pass received, the student the pruned copy. Both see the same
augmented calibration inputs (`ctx.samples`); the student learns to match the teacher's outputs:
- classification: KL(teacher || student) on softmax at temperature T (scaled by T^2, as in Hinton et al.);
- other tasks: MSE on every float output, each divided by the teacher output's variance on the batch, so
  outputs of different scales weigh alike.
Training is bounded: `steps` AdamW steps on mini-batches drawn epoch-wise from the calibration samples,
learning rate with a short linear warm-up then cosine decay to zero. Image inputs (float, N x C x H x W)
are lightly augmented, identically for teacher and student ("consistent" function matching, Beyer et al.
2022): a random resized crop (80-100% of the area, aspect 3/4-4/3) and a horizontal flip per image, and
optionally mixup between images of the batch, so a hundred calibration images are not just memorised.
(Stronger augmentation, crops down to half the area and mixup by default, lowered agreement on the
evaluation split in short runs on the tiny test classifier: with a few hundred steps the student is
better spent on inputs like the ones it will see.) Other inputs (token ids)
are used as they are.

BatchNorm: the running statistics were re-estimated on the calibration samples after pruning; they stay
frozen during distillation (BN layers in eval mode: a batch of 16 gives noisier statistics than the
re-estimated ones, and the teacher was trained against fixed ones) while their affine weights train.
Dropout and drop-path layers are in eval mode too; the rest of the module is in train mode, so layers
that cache eval-time tensors (timm's attention biases) build them from the trained weights, and the
caches are dropped at the end (`train()` then `eval()`).

`distill` returns a `RecoveryReport` (steps, seconds, first/last loss, fidelity before and after on the
evaluation split, or on the calibration samples when there is none) and draws a rich progress bar on
stderr when it is a terminal.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import numpy as np

from edgeopt.errors import EdgeoptError
from edgeopt.passes._accuracy import evaluation_split
from edgeopt.passes.base import PassContext, RecoveryReport


def _stack(samples: list[dict[str, np.ndarray]], names: list[str]) -> list[Any]:
    """One tensor per input: the samples (each with a leading batch dim of 1) concatenated."""
    import torch

    return [torch.cat([torch.from_numpy(np.ascontiguousarray(s[n])) for s in samples]) for n in names]


def _outputs(out: Any) -> list[Any]:
    """A module's outputs as a list of tensors (tensor, tuple/list, or dict in order)."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return list(out.values())
    return list(out)


def _is_image(x: Any) -> bool:
    return x.is_floating_point() and x.dim() == 4 and x.shape[-1] >= 8 and x.shape[-2] >= 8


def augment(xs: list[Any], gen: Any, mixup: bool, min_area: float = 0.8) -> list[Any]:
    """Random resized crop (min_area-1 of the area, aspect 3/4-4/3) + horizontal flip per image, optional mixup;
    inputs that are not images pass through. The same draw applies to every image input of a sample."""
    import torch
    import torch.nn.functional as F

    imgs = [i for i, x in enumerate(xs) if _is_image(x)]
    if not imgs:
        return xs
    out = list(xs)
    n = xs[imgs[0]].shape[0]
    u = torch.rand(n, 5, generator=gen)
    for i in imgs:
        x = xs[i]
        h, w = x.shape[-2:]
        rows = []
        for b in range(n):
            area = min_area + (1 - min_area) * float(u[b, 0])
            ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * float(u[b, 1]))
            ch = max(1, min(h, round(h * math.sqrt(area / ratio))))
            cw = max(1, min(w, round(w * math.sqrt(area * ratio))))
            top = int(float(u[b, 2]) * (h - ch + 1))
            left = int(float(u[b, 3]) * (w - cw + 1))
            crop = x[b : b + 1, :, top : top + ch, left : left + cw]
            crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
            if float(u[b, 4]) < 0.5:
                crop = crop.flip(-1)
            rows.append(crop)
        out[i] = torch.cat(rows)
    if mixup and n > 1:
        lam = torch.rand(n, generator=gen)  # Beta(1, 1)
        perm = torch.randperm(n, generator=gen)
        for i in imgs:
            shape = (n,) + (1,) * (out[i].dim() - 1)
            out[i] = lam.reshape(shape) * out[i] + (1 - lam.reshape(shape)) * out[i][perm]
    return out


def distill_loss(task: str, teacher: list[Any], student: list[Any], temperature: float) -> Any:
    """KL on softmax at `temperature` for classification, else variance-normalised MSE on float outputs."""
    import torch.nn.functional as F

    if task == "classification":
        t, s = teacher[0].float(), student[0].float()
        t, s = t.reshape(-1, t.shape[-1]), s.reshape(-1, s.shape[-1])
        T = temperature
        return F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="batchmean") * T * T
    terms = []
    for t, s in zip(teacher, student, strict=True):
        if not t.is_floating_point():
            continue
        terms.append(F.mse_loss(s.float(), t.float()) / t.float().var().clamp_min(1e-8))
    if not terms:
        raise EdgeoptError("prune recovery found no float output to distil", "drop prune:recover for this model")
    return sum(terms) / len(terms)


def _fidelity(module: Any, ctx: PassContext, samples: list[dict[str, np.ndarray]], refs: list[dict[str, np.ndarray]]) -> dict[str, float]:
    from edgeopt.export import torch_outputs
    from edgeopt.fidelity import task_metrics

    outs = [torch_outputs(module, s, ctx.input_names, ctx.output_names) for s in samples]
    return task_metrics(ctx.task, refs, outs)


def _set_mode(student: Any) -> None:
    """Train mode, except BatchNorm (frozen statistics), dropout and drop-path layers."""
    from torch import nn

    student.train()
    for m in student.modules():
        name = type(m).__name__.lower()
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)) or "droppath" in name:
            m.eval()


class _Bar:
    """A rich progress bar on stderr while it is a terminal; nothing otherwise."""

    def __init__(self, total: int, label: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True)
        self.prog = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal,
        )
        self.task = self.prog.add_task(label, total=total, loss="-")

    def __enter__(self) -> _Bar:
        self.prog.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.prog.__exit__(*exc)

    def step(self, loss: float) -> None:
        self.prog.update(self.task, advance=1, loss=f"{loss:.4g}")


def distill(
    teacher: Any, student: Any, ctx: PassContext, steps: int, batch: int = 16, lr: float = 3e-5,
    temperature: float = 2.0, augment_inputs: bool = True, mixup: bool = False, seed: int = 0,
) -> RecoveryReport:
    """Train `student` (in place) to match `teacher` on the calibration samples for `steps` AdamW steps."""
    import torch

    if not ctx.samples:
        raise EdgeoptError("prune recovery needs calibration samples", "run it through edgeopt.compile (or pass --data)")
    split = evaluation_split(ctx)
    before = _fidelity(student, ctx, split.samples, split.references)
    t0 = time.perf_counter()
    data = _stack(ctx.samples, ctx.input_names)
    n = int(data[0].shape[0])
    bs = max(1, min(batch, n))
    if teacher.training:  # the teacher runs as in inference, and the caller's module keeps its mode
        teacher = copy.deepcopy(teacher).eval()
    params = [p for p in student.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warm = max(1, min(steps // 10, 20))

    def lr_at(i: int) -> float:
        if i < warm:
            return lr * (i + 1) / warm
        return 0.5 * lr * (1 + math.cos(math.pi * (i - warm) / max(1, steps - warm)))

    gen = torch.Generator().manual_seed(seed)  # batches, crops, flips and mixup weights: one seeded stream
    order: list[int] = []
    losses: list[float] = []
    _set_mode(student)
    try:
        with torch.enable_grad(), _Bar(steps, f"{ctx.model_name}: prune recovery") as bar:
            for i in range(steps):
                if len(order) < bs:
                    order += torch.randperm(n, generator=gen).tolist()
                idx, order = order[:bs], order[bs:]
                xs = [d[idx] for d in data]
                if augment_inputs:
                    xs = augment(xs, gen, mixup)
                with torch.no_grad():
                    t_out = _outputs(teacher(*xs))
                s_out = _outputs(student(*xs))
                loss = distill_loss(ctx.task, t_out, s_out, temperature)
                if not torch.isfinite(loss):
                    raise EdgeoptError(
                        f"prune recovery diverged at step {i + 1} (loss {loss.item()})",
                        "lower prune:recover_lr or drop prune:recover",
                    )
                for g in opt.param_groups:
                    g["lr"] = lr_at(i)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                bar.step(losses[-1])
    finally:
        for p in params:
            p.requires_grad_(False)
        student.train()
        student.eval()  # drops eval-time caches built from the pre-training weights
    seconds = time.perf_counter() - t0
    after = _fidelity(student, ctx, split.samples, split.references)
    k = max(1, min(10, len(losses) // 10))
    return RecoveryReport(
        steps=steps, batch=bs, lr=lr, temperature=temperature if ctx.task == "classification" else None,
        loss="kl" if ctx.task == "classification" else "mse",
        augment=("crop+flip+mixup" if mixup else "crop+flip") if augment_inputs and any(_is_image(d) for d in data) else "none",
        calibration_samples=n, seconds=round(seconds, 2),
        loss_first=float(np.mean(losses[:k])), loss_last=float(np.mean(losses[-k:])),
        evaluated_on=split.where + ("" if ctx.eval_samples else "; the images recovery trained on"), fidelity_before=before, fidelity_after=after,
    )
