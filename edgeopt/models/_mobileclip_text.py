"""MobileCLIP text encoders, written with the official module names so Apple's `.pt` files load as-is.

Two variants (facts from apple/ml-mobileclip, `mobileclip/text_encoder.py` and the configs):
- "base" (S1, S2, B): 12 pre-norm transformer layers, width 512, 8 heads, FFN 2048, context 77; causal
  attention only for B.
- "mct" (S0): a RepMixer block (depthwise 1x11 conv mixer, kernel 11) + 4 transformer layers + a
  RepMixer block, no causal mask.
Both: learned positional embedding, final LayerNorm, the EOT token's feature (highest token id) times a
512x512 projection. Key names mirror the official ones (`embedding_layer`, `positional_embedding.pos_embed.
pos_embed`, `transformer.N.pre_norm_mha.1.qkv_proj`, `token_mixer.mixer.rbr_conv.0.conv`, ...).

The RepMixer's MobileOne branches fold into one depthwise conv via `reparameterize()` (the passes'
reparam step calls it through timm's `reparameterize_model`), exactly as the official code does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MobileOneBlock(nn.Module):
    """Multi-branch conv (identity BN + k x k conv-BN branches [+ 1x1 conv-BN]) that folds into one conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        padding: tuple[int, int],
        groups: int = 1,
        use_scale_branch: bool = True,
        num_conv_branches: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.padding, self.groups = tuple(kernel_size), tuple(padding), groups
        self.num_conv_branches = num_conv_branches
        self.rbr_skip = nn.BatchNorm2d(in_channels) if in_channels == out_channels else None
        self.rbr_conv = (
            nn.ModuleList([self._conv_bn(self.kernel_size, self.padding) for _ in range(num_conv_branches)])
            if num_conv_branches > 0
            else None
        )
        # as in the official code: the 1x1 scale branch exists only when the kernel's first dim is > 1
        self.rbr_scale = self._conv_bn((1, 1), (0, 0)) if self.kernel_size[0] > 1 and use_scale_branch else None
        self.reparam_conv: nn.Conv2d | None = None

    def _conv_bn(self, k: tuple[int, int], p: tuple[int, int]) -> nn.Sequential:
        seq = nn.Sequential()
        seq.add_module("conv", nn.Conv2d(self.in_channels, self.out_channels, k, 1, p, groups=self.groups, bias=False))
        seq.add_module("bn", nn.BatchNorm2d(self.out_channels))
        return seq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        out = 0
        if self.rbr_skip is not None:
            out = self.rbr_skip(x)
        if self.rbr_scale is not None:
            out = out + self.rbr_scale(x)
        if self.rbr_conv is not None:
            for branch in self.rbr_conv:
                out = out + branch(x)
        return out

    def identity_kernel(self) -> torch.Tensor:
        """A kernel that maps x to itself (per group), of this block's kernel size."""
        per_group = self.in_channels // self.groups
        kh, kw = self.kernel_size
        k = torch.zeros(self.in_channels, per_group, kh, kw, device=self._device())
        for i in range(self.in_channels):
            k[i, i % per_group, kh // 2, kw // 2] = 1.0
        return k

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _fuse(self, branch: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(branch, nn.Sequential):
            kernel, bn = branch.conv.weight, branch.bn
            kh, kw = kernel.shape[-2:]
            th, tw = self.kernel_size
            if (kh, kw) != (th, tw):  # centre a 1x1 kernel inside the block's kernel
                kernel = F.pad(kernel, [(tw - kw) // 2, (tw - kw) // 2, (th - kh) // 2, (th - kh) // 2])
        else:
            kernel, bn = self.identity_kernel(), branch
        std = (bn.running_var + bn.eps).sqrt()
        t = (bn.weight / std).reshape(-1, 1, 1, 1)
        return kernel * t, bn.bias - bn.running_mean * bn.weight / std

    def fused_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        w = torch.zeros(self.out_channels, self.in_channels // self.groups, *self.kernel_size, device=self._device())
        b = torch.zeros(self.out_channels, device=self._device())
        branches = [m for m in (self.rbr_skip, self.rbr_scale) if m is not None] + list(self.rbr_conv or [])
        for br in branches:
            kw, kb = self._fuse(br)
            w, b = w + kw, b + kb
        return w, b

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold every branch into `reparam_conv` (inference only; BN statistics are frozen in)."""
        if self.reparam_conv is not None:
            return
        w, b = self.fused_kernel_bias()
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, 1, self.padding, groups=self.groups, bias=True)
        conv.to(w.device)
        conv.weight.copy_(w)
        conv.bias.copy_(b)
        self.reparam_conv = conv
        self.rbr_skip = self.rbr_conv = self.rbr_scale = None


class RepMixer(nn.Module):
    """x + layer_scale * (mixer(x) - norm(x)) over the token axis (a 1 x k depthwise conv after folding)."""

    def __init__(self, dim: int, kernel_size: int = 11, layer_scale_init_value: float = 1e-5) -> None:
        super().__init__()
        self.dim, self.kernel_size = dim, kernel_size
        k, p = (1, kernel_size), (0, kernel_size // 2)
        self.norm = MobileOneBlock(dim, dim, k, p, groups=dim, use_scale_branch=False, num_conv_branches=0)
        self.mixer = MobileOneBlock(dim, dim, k, p, groups=dim)
        self.layer_scale = nn.Parameter(layer_scale_init_value * torch.ones(dim, 1, 1))
        self.reparam_conv: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return x + self.layer_scale * (self.mixer(x) - self.norm(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.reparam_conv is not None:
            return
        wm, bm = self.mixer.fused_kernel_bias()
        wn, bn = self.norm.fused_kernel_bias()
        w = self.mixer.identity_kernel() + self.layer_scale.unsqueeze(-1) * (wm - wn)
        b = self.layer_scale.reshape(-1) * (bm - bn)
        conv = nn.Conv2d(self.dim, self.dim, (1, self.kernel_size), 1, (0, self.kernel_size // 2), groups=self.dim, bias=True)
        conv.to(w.device)
        conv.weight.copy_(w)
        conv.bias.copy_(b)
        self.reparam_conv = conv
        del self.mixer, self.norm, self.layer_scale


class ConvFFN(nn.Module):
    """Depthwise 1 x k conv + BN, then a 1x1 conv MLP (GELU)."""

    def __init__(self, dim: int, context_size: int, hidden: int) -> None:
        super().__init__()
        self.conv = nn.Sequential()
        self.conv.add_module("conv", nn.Conv2d(dim, dim, (1, context_size), padding=(0, context_size // 2), groups=dim, bias=False))
        self.conv.add_module("bn", nn.BatchNorm2d(dim))
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.conv(x))))


class RepMixerBlock(nn.Module):
    """MetaFormer block with RepMixer as token mixer, on [B, S, D] text features (as [B, D, 1, S])."""

    def __init__(self, dim: int, kernel_size: int = 11, mlp_ratio: float = 4.0, layer_scale_init_value: float = 1e-5) -> None:
        super().__init__()
        self.token_mixer = RepMixer(dim, kernel_size, layer_scale_init_value)
        self.convffn = ConvFFN(dim, kernel_size, int(dim * mlp_ratio))
        self.layer_scale = nn.Parameter(layer_scale_init_value * torch.ones(dim, 1, 1))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x.permute(0, 2, 1).unsqueeze(2)
        x = self.token_mixer(x)
        x = x + self.layer_scale * self.convffn(x)
        return x.squeeze(2).permute(0, 2, 1)


class MultiHeadAttention(nn.Module):
    """Self-attention with one fused qkv projection (`qkv_proj`) and `out_proj`, as the official layer."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.qkv_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.heads, self.head_dim = heads, dim // heads
        self.scaling = self.head_dim**-0.5

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, s, c = x.shape
        qkv = self.qkv_proj(x).reshape(b, s, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scaling, qkv[1], qkv[2]
        attn = q @ k.transpose(-1, -2)
        if attn_mask is not None:
            attn = attn + attn_mask
        attn = attn.softmax(dim=-1)
        return self.out_proj((attn @ v).transpose(1, 2).reshape(b, s, c))


class TransformerEncoder(nn.Module):
    """Pre-norm transformer layer; `pre_norm_mha` = [LN, MHA, Dropout], `pre_norm_ffn` = [LN, Linear, GELU, Dropout, Linear, Dropout]."""

    def __init__(self, dim: int, heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.pre_norm_mha = nn.Sequential(nn.LayerNorm(dim), MultiHeadAttention(dim, heads), nn.Dropout(0.0))
        self.pre_norm_ffn = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(ffn_dim, dim), nn.Dropout(0.0)
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.pre_norm_mha[2](self.pre_norm_mha[1](self.pre_norm_mha[0](x), attn_mask))
        return x + self.pre_norm_ffn(x)


class _PosEmbed(nn.Module):
    def __init__(self, n: int, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.empty(1, 1, n, dim))
        nn.init.trunc_normal_(self.pos_embed, std=dim**-0.5)


class _Positional(nn.Module):
    """Wrapper levels kept only so the parameter is named `positional_embedding.pos_embed.pos_embed`."""

    def __init__(self, n: int, dim: int) -> None:
        super().__init__()
        self.pos_embed = _PosEmbed(n, dim)


class TextTransformer(nn.Module):
    """MobileCLIP text encoder: token ids [B, 77] int64 -> L2-normalised embeddings [B, 512]."""

    def __init__(
        self,
        variant: str = "base",
        layers: int = 12,
        dim: int = 512,
        heads: int = 8,
        ffn_mult: float = 4.0,
        context_length: int = 77,
        vocab_size: int = 49408,
        projection_dim: int = 512,
        causal: bool = False,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        ffn_dim = int(-(-dim * ffn_mult // 16) * 16)
        self.embedding_layer = nn.Embedding(vocab_size, dim)
        self.positional_embedding = _Positional(context_length, dim)
        blocks: list[nn.Module] = [TransformerEncoder(dim, heads, ffn_dim) for _ in range(layers)]
        if variant == "mct":
            blocks = [RepMixerBlock(dim), *blocks, RepMixerBlock(dim)]
        elif variant != "base":
            raise ValueError(f"unknown text encoder variant {variant!r}")
        self.transformer = nn.ModuleList(blocks)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.projection_layer = nn.Parameter(torch.empty(dim, projection_dim))
        nn.init.normal_(self.projection_layer, std=dim**-0.5)
        self.causal, self.normalize, self.context_length = causal, normalize, context_length
        self.register_buffer(
            "causal_mask", torch.full((context_length, context_length), float("-inf")).triu(1), persistent=False
        )

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        s = text.shape[1]
        # read the parameter directly (not through a module call: FlopCounterMode's hooks reject a bare view)
        x = self.embedding_layer(text) + self.positional_embedding.pos_embed.pos_embed[0, 0, :s]
        mask = self.causal_mask[:s, :s] if self.causal else None
        for layer in self.transformer:
            x = layer(x, attn_mask=mask)
        x = self.final_layer_norm(x)
        # the end-of-text token has the highest id in each row; int32 because ONNX Runtime's ArgMax lacks int64
        eot = text.to(torch.int32).argmax(dim=-1)
        x = x[torch.arange(x.shape[0], device=x.device), eot] @ self.projection_layer
        return F.normalize(x, dim=-1) if self.normalize else x
