"""Small real-data fixtures for the pass tests: synthetic nets with training-time structure, run on the
scikit-image photographs (downscaled), with non-trivial BatchNorm statistics so folds are not no-ops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeopt.export import export_onnx, torch_outputs
from edgeopt.fidelity import task_metrics
from edgeopt.models.inputs import image_samples
from edgeopt.passes.base import PassContext
from edgeopt.passes.reparam import merge_branches


class RepBlock(nn.Module):
    """RepVGG-style block (3x3+BN, 1x1+BN, BN identity) that merges itself, as edgeopt modules should."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c3, self.b3 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c1, self.b1 = nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)
        self.bid = nn.BatchNorm2d(c)
        self.fused: nn.Conv2d | None = None

    def forward(self, x):
        if self.fused is not None:
            return F.relu(self.fused(x))
        return F.relu(self.b3(self.c3(x)) + self.b1(self.c1(x)) + self.bid(x))

    def reparameterize(self) -> None:
        c = self.c3.out_channels
        conv = nn.Conv2d(c, c, 3, padding=1, bias=True)
        merge_branches([(self.c3, self.b3), (self.c1, self.b1)], self.bid, conv)
        self.fused = conv
        del self.c3, self.b3, self.c1, self.b1, self.bid


class Residual(nn.Module):
    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x):
        return x + self.m(x)


class TinyNet(nn.Module):
    """stem conv-BN-ReLU, RepBlock, residual depthwise conv-BN, 1x1 conv-BN, pool, BN1d -> Linear head."""

    def __init__(self, w: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.rep = RepBlock(w)
        self.dw = Residual(nn.Sequential(nn.Conv2d(w, w, 3, 1, 1, groups=w, bias=False), nn.BatchNorm2d(w)))
        self.pw = nn.Sequential(nn.Conv2d(w, 2 * w, 1), nn.BatchNorm2d(2 * w), nn.ReLU())
        self.mlp = nn.Sequential(nn.Conv2d(2 * w, 4 * w, 1), nn.ReLU(), nn.Conv2d(4 * w, 2 * w, 1))
        self.norm = nn.BatchNorm1d(2 * w)
        self.head = nn.Linear(2 * w, classes)

    def forward(self, x):
        x = self.pw(self.dw(self.rep(self.stem(x))))
        x = x + self.mlp(x)
        return self.head(self.norm(x.mean((2, 3))))


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def tiny_net(seed: int = 0, w: int = 32) -> TinyNet:
    torch.manual_seed(seed)
    return randomise_bn(TinyNet(w), seed)


def make_ctx(model: nn.Module, workdir: Path, n: int = 4, size: int = 32, task: str = "classification",
             output: str = "logits") -> PassContext:
    samples = image_samples(n, "image", (size, size))
    refs = [torch_outputs(model, s, ["image"], [output]) for s in samples]
    return PassContext(
        model_name=type(model).__name__, task=task, input_names=["image"], output_names=[output],
        samples=samples, references=refs, workdir=workdir, fidelity=lambda outs: task_metrics(task, refs, outs),
    )


def export(model: nn.Module, ctx: PassContext, path: Path) -> Path:
    export_onnx(model, ctx.samples[0], ctx.input_names, ctx.output_names, path)
    return path


def state_equal(a: nn.Module, b_state: dict[str, torch.Tensor]) -> bool:
    sa = a.state_dict()
    return sa.keys() == b_state.keys() and all(torch.equal(sa[k], b_state[k]) for k in sa)


def outputs(model: nn.Module, ctx: PassContext) -> list[dict[str, np.ndarray]]:
    return [torch_outputs(model, s, ctx.input_names, ctx.output_names) for s in ctx.samples]
