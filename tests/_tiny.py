"""A tiny registered image classifier for backend tests: real photos in, compiles in seconds.

conv -> BN -> GELU -> depthwise conv -> pointwise conv -> pool -> linear, plus a softmax-attention-like
matmul so the op kinds of the zoo's hybrid models (conv + attention) are all present.
"""

from __future__ import annotations

from edgeopt.models.registry import _REGISTRY, InputSpec, ModelSpec, register

HW = 64


def _build(**_kw):
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.GELU())
            self.dw = nn.Conv2d(16, 16, 3, 2, 1, groups=16)
            self.pw = nn.Conv2d(16, 32, 1)
            self.qkv = nn.Linear(32, 96)
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            x = self.pw(self.dw(self.stem(x)))
            t = x.flatten(2).transpose(1, 2)  # B, N, C
            q, k, v = self.qkv(t).chunk(3, dim=-1)
            a = torch.softmax(q @ k.transpose(1, 2) * 32**-0.5, dim=-1)
            t = t + a @ v
            return self.head(t.mean(1))

    m = Tiny()
    # non-trivial BN statistics so folding them is exercised
    with torch.no_grad():
        m.stem[1].running_mean.uniform_(-0.2, 0.2)
        m.stem[1].running_var.uniform_(0.5, 1.5)
    return m.eval()


def _samples(n: int):
    from edgeopt.models.inputs import image_samples

    return image_samples(n, "image", (HW, HW))


def tiny_spec(name: str = "tiny_backend_test") -> ModelSpec:
    """Register (once) and return the tiny spec."""
    from edgeopt.models.registry import _discover

    _discover()
    if name not in _REGISTRY:
        register(ModelSpec(
            name=name, family="tiny_test", task="classification", builder=_build,
            inputs=(InputSpec("image", (1, 3, HW, HW)),), outputs=("logits",), sample_inputs=_samples,
            description="test-only tiny hybrid CNN",
        ))
    return _REGISTRY[name]
