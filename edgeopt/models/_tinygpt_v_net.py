"""TinyGPT-V's network (Yuan et al. 2023): EVA ViT-g/14 + ln_vision -> BLIP-2 Q-Former (32 queries) ->
llama_proj (768 -> 4096) -> llama_proj2 (4096 -> 2560) -> Phi-2 with TinyGPT-V's extra norms.

What is borrowed and what is written here, and why:
- The vision encoder is timm's `Eva` configured as LAVIS's `create_eva_vit_g` (1408 wide, 39 blocks: BLIP-2
  drops EVA-CLIP-g's 40th block, no final norm), so its parameter names already equal the official ones
  (`blocks.i.attn.qkv.weight`, `q_bias`, `v_bias`, ...).
- The Q-Former is transformers' `Blip2QFormerModel` without the text branch (TinyGPT-V sets the text FFN,
  word and position embeddings to None); the official `Qformer.bert.*` keys are renamed on load.
- The language model is written here. TinyGPT-V's Phi differs from transformers' `PhiForCausalLM`: one fused
  `query_key_value` projection split per head as (heads, 3, head_dim), a LayerNorm over each head's query
  and key (`q_layernorm`, `k_layernorm`) before the partial rotary embedding, and an RMSNorm
  (`post_layernorm`) on the attention output of the parallel block
  `x + RMSNorm(attn(LN(x))) + mlp(LN(x))`. Writing it also keeps the KV cache as plain tensors in and out,
  which is what an exported decode step needs (transformers' Cache objects do not export as graph inputs).
  Module names follow TinyGPT-V's `modeling_phi.py`, so its checkpoints load without renaming.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TinyGPTVConfig:
    """Widths of every component; `FULL` is the paper's model, `TINY` the same code at test size."""

    img_size: int = 224
    patch_size: int = 14
    vit_dim: int = 1408
    vit_depth: int = 39
    vit_heads: int = 16
    vit_mlp_ratio: float = 6144 / 1408
    num_query_tokens: int = 32
    qformer_hidden: int = 768
    qformer_layers: int = 12
    qformer_heads: int = 12
    qformer_ffn: int = 3072
    cross_attention_freq: int = 2
    proj_hidden: int = 4096
    llm_hidden: int = 2560
    llm_layers: int = 32
    llm_heads: int = 32
    llm_ffn: int = 10240
    vocab_size: int = 51200
    partial_rotary_factor: float = 0.4
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5
    rms_norm_eps: float = 1e-6
    eos_token_id: int = 50256

    def to_dict(self) -> dict:
        return asdict(self)


FULL = TinyGPTVConfig()
TINY = TinyGPTVConfig(
    img_size=56, vit_dim=48, vit_depth=2, vit_heads=4,
    qformer_hidden=64, qformer_layers=2, qformer_heads=4, qformer_ffn=128,
    proj_hidden=128, llm_hidden=80, llm_layers=2, llm_heads=4, llm_ffn=320, vocab_size=512, eos_token_id=0,
)


class RMSNorm(nn.Module):
    """LlamaRMSNorm as TinyGPT-V uses it (written out: opset 18 has no RMSNormalization op)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.variance_epsilon)).to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class PhiAttention(nn.Module):
    """Fused-QKV attention with per-head QK LayerNorm and partial RoPE; past K/V in, full K/V out."""

    def __init__(self, cfg: TinyGPTVConfig) -> None:
        super().__init__()
        h = cfg.llm_hidden
        self.num_heads = cfg.llm_heads
        self.head_dim = h // cfg.llm_heads
        self.rotary_dim = int(cfg.partial_rotary_factor * self.head_dim)
        if self.rotary_dim % 2:
            raise ValueError(f"rotary dim {self.rotary_dim} must be even (head_dim {self.head_dim})")
        self.query_key_value = nn.Linear(h, 3 * h)
        self.dense = nn.Linear(h, h)
        self.q_layernorm = nn.LayerNorm(self.head_dim, eps=cfg.layer_norm_eps)
        self.k_layernorm = nn.LayerNorm(self.head_dim, eps=cfg.layer_norm_eps)
        self.rope_theta = cfg.rope_theta
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self, device: torch.device | str | None = None) -> torch.Tensor:
        r = self.rotary_dim
        return 1.0 / (self.rope_theta ** (torch.arange(0, r, 2, dtype=torch.float32, device=device) / r))

    def reset_rope(self, device: torch.device | str) -> None:
        """Recompute the rotary frequencies on `device` (a non-persistent buffer: checkpoints do not hold it)."""
        self.inv_freq = self._inv_freq(device)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        r = self.rotary_dim
        xr, xp = x[..., :r], x[..., r:]
        return torch.cat((xr * cos + _rotate_half(xr) * sin, xp), dim=-1)

    def forward(
        self, x: torch.Tensor, past_k: torch.Tensor | None = None, past_v: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        qkv = self.query_key_value(x).view(b, t, self.num_heads, 3, self.head_dim)
        q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
        q, k = self.q_layernorm(q), self.k_layernorm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # b, heads, t, d
        past = 0 if past_k is None else past_k.shape[2]
        pos = torch.arange(t, device=x.device, dtype=torch.float32) + past
        freqs = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        if past_k is not None:
            k = torch.cat((past_k, k), dim=2)
            v = torch.cat((past_v, v), dim=2)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)
        # Causal mask offset by the cache length: query i (absolute past+i) sees keys 0..past+i.
        rows = torch.arange(t, device=x.device)[:, None] + past
        cols = torch.arange(k.shape[2], device=x.device)[None, :]
        scores = scores.masked_fill(cols > rows, torch.finfo(scores.dtype).min)
        attn = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, -1)
        return self.dense(out), k, v


class PhiMLP(nn.Module):
    def __init__(self, cfg: TinyGPTVConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.llm_hidden, cfg.llm_ffn)
        self.fc2 = nn.Linear(cfg.llm_ffn, cfg.llm_hidden)
        self.act = nn.GELU(approximate="tanh")  # Phi-2's gelu_new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PhiDecoderLayer(nn.Module):
    def __init__(self, cfg: TinyGPTVConfig) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(cfg.llm_hidden, eps=cfg.layer_norm_eps)
        self.self_attn = PhiAttention(cfg)
        self.post_layernorm = RMSNorm(cfg.llm_hidden, eps=cfg.rms_norm_eps)
        self.mlp = PhiMLP(cfg)

    def forward(self, x, past_k=None, past_v=None):
        h = self.input_layernorm(x)
        a, k, v = self.self_attn(h, past_k, past_v)
        return x + self.post_layernorm(a) + self.mlp(h), k, v


class PhiModel(nn.Module):
    def __init__(self, cfg: TinyGPTVConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.llm_hidden)
        self.layers = nn.ModuleList(PhiDecoderLayer(cfg) for _ in range(cfg.llm_layers))
        self.final_layernorm = nn.LayerNorm(cfg.llm_hidden, eps=cfg.layer_norm_eps)


class PhiForCausalLM(nn.Module):
    """Phi-2 as TinyGPT-V modifies it. forward(embeds, past) -> (logits of every position, presents)."""

    def __init__(self, cfg: TinyGPTVConfig) -> None:
        super().__init__()
        self.model = PhiModel(cfg)
        self.lm_head = nn.Linear(cfg.llm_hidden, cfg.vocab_size)

    def forward(
        self, inputs_embeds: torch.Tensor, past: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        x = inputs_embeds
        presents = []
        for i, layer in enumerate(self.model.layers):
            pk, pv = past[i] if past is not None else (None, None)
            x, k, v = layer(x, pk, pv)
            presents.append((k, v))
        return self.lm_head(self.model.final_layernorm(x)), presents


def _build_eva(cfg: TinyGPTVConfig) -> nn.Module:
    from timm.models.eva import Eva

    # LAVIS create_eva_vit_g: qkv without bias but separate q/v biases (timm's qkv_fused + qkv_bias), LN eps 1e-6,
    # no final norm / pooling / head: the Q-Former reads every token after ln_vision.
    return Eva(
        img_size=cfg.img_size, patch_size=cfg.patch_size, num_classes=0, global_pool="", embed_dim=cfg.vit_dim,
        depth=cfg.vit_depth, num_heads=cfg.vit_heads, mlp_ratio=cfg.vit_mlp_ratio, qkv_bias=True, qkv_fused=True,
        use_post_transformer_norm=False, use_fc_norm=False,
    )


def _build_qformer(cfg: TinyGPTVConfig) -> nn.Module:
    try:
        from transformers import Blip2QFormerConfig, Blip2QFormerModel
    except ImportError as e:
        from edgeopt.errors import EdgeoptError

        raise EdgeoptError(f"TinyGPT-V's Q-Former needs transformers ({e})", "pip install 'edgeopt[vlm]'") from None

    qc = Blip2QFormerConfig(
        hidden_size=cfg.qformer_hidden, num_hidden_layers=cfg.qformer_layers, num_attention_heads=cfg.qformer_heads,
        intermediate_size=cfg.qformer_ffn, encoder_hidden_size=cfg.vit_dim,
        cross_attention_frequency=cfg.cross_attention_freq, use_qformer_text_input=False,
        layer_norm_eps=1e-12, hidden_act="gelu",
    )
    qc._attn_implementation = "eager"
    return Blip2QFormerModel(qc)


def _query_tokens(cfg: TinyGPTVConfig) -> nn.Parameter:
    return nn.Parameter(torch.zeros(1, cfg.num_query_tokens, cfg.qformer_hidden).normal_(std=0.02))


# The top-level components in construction order, each with the factory that builds and initializes it
# (its own constructor's init: timm Eva's trunc-normal, Blip2QFormer's `_init_weights`, torch's nn defaults).
COMPONENTS: dict[str, Callable[[TinyGPTVConfig], nn.Module]] = {
    "visual_encoder": _build_eva,
    "ln_vision": lambda cfg: nn.LayerNorm(cfg.vit_dim),
    "query_tokens": _query_tokens,
    "qformer": _build_qformer,
    "llama_proj": lambda cfg: nn.Linear(cfg.qformer_hidden, cfg.proj_hidden),
    "llama_proj2": lambda cfg: nn.Linear(cfg.proj_hidden, cfg.llm_hidden),
    "llama_model": lambda cfg: PhiForCausalLM(cfg),
}


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Modules built inside put their parameters on the meta device (no memory) and keep their buffers
    (rotary frequencies, zero biases) real: small, and not in checkpoints, so they cannot be loaded later."""
    register = nn.Module.register_parameter

    def on_meta(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(self, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def component_seed(seed: int, name: str) -> int:
    """The RNG seed of one component: derived from (seed, component name), so a component's weights do not
    depend on which other components a build materializes."""
    return int.from_bytes(hashlib.sha256(f"tinygpt_v:{seed}:{name}".encode()).digest()[:8], "little") >> 1


class TinyGPTV(nn.Module):
    """The whole VLM. `forward(image, prefix_ids, suffix_ids)` gives the first generated token's logits.

    The constructor builds every component on the ambient device with the ambient RNG; `build_seeded`
    builds only some of them, each from its own seed; the others keep their parameters on the meta device."""

    def __init__(self, cfg: TinyGPTVConfig = FULL) -> None:
        super().__init__()
        self.config = cfg
        for name, make in COMPONENTS.items():
            setattr(self, name, make(cfg))

    @classmethod
    def build_seeded(
        cls, cfg: TinyGPTVConfig, seed: int = 0, components: Iterable[str] | None = None, device: str = "cpu",
    ) -> TinyGPTV:
        """The model with `components` (all when None) materialized on `device`, each initialized under
        `component_seed(seed, name)`; the others keep their parameters on the meta device (no memory) and their
        buffers on `device`. A component's weights are the same whichever others are built, so a split part
        equals the same part of a whole build. `device="meta"` builds everything on meta (to count parameters)."""
        from edgeopt.errors import EdgeoptError

        names = list(COMPONENTS) if components is None else list(components)
        unknown = [n for n in names if n not in COMPONENTS]
        if unknown:
            raise EdgeoptError(f"unknown TinyGPT-V components {unknown}", f"known: {', '.join(COMPONENTS)}")
        if str(device) == "meta":
            with torch.device("meta"):
                return cls(cfg).eval()
        with _parameters_on_meta(), torch.device(device):
            model = cls(cfg)
        for name in names:
            with torch.random.fork_rng(devices=[]), torch.device(device):
                torch.manual_seed(component_seed(seed, name))
                setattr(model, name, COMPONENTS[name](cfg))
        return model.eval()

    def materialized(self) -> list[str]:
        """The components that hold real weights (not on the meta device)."""
        out = []
        for name in COMPONENTS:
            m = getattr(self, name)
            t = m if isinstance(m, torch.Tensor) else next(m.parameters(), None)
            if t is not None and t.device.type != "meta":
                out.append(name)
        return out

    # -- the three parts an on-device runtime runs -------------------------------------------------------
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """image (B,3,H,W) -> (B, 32, llm_hidden) soft tokens, as TinyGPT-V's encode_img."""
        feats = self.ln_vision(self.visual_encoder.forward_features(image))
        # repeat, not expand: a view of a Parameter under no_grad still requires grad, which trips FlopCounterMode
        q = self.query_tokens.repeat(feats.shape[0], 1, 1)
        out = self.qformer(query_embeds=q, encoder_hidden_states=feats, return_dict=True).last_hidden_state
        return self.llama_proj2(self.llama_proj(out))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llama_model.model.embed_tokens(ids)

    def prefill(self, image_embeds: torch.Tensor, prefix_ids: torch.Tensor, suffix_ids: torch.Tensor):
        """[prompt before <ImageHere>, image tokens, prompt after] -> (last logits, presents)."""
        pre = self.embed(prefix_ids)
        x = torch.cat((pre, image_embeds.to(pre.dtype), self.embed(suffix_ids)), dim=1)
        logits, presents = self.llama_model(x)
        return logits[:, -1], presents

    def decode_step(self, input_ids: torch.Tensor, past: list[tuple[torch.Tensor, torch.Tensor]]):
        logits, presents = self.llama_model(self.embed(input_ids), past)
        return logits[:, -1], presents

    def forward(self, image: torch.Tensor, prefix_ids: torch.Tensor, suffix_ids: torch.Tensor) -> torch.Tensor:
        return self.prefill(self.encode_image(image), prefix_ids, suffix_ids)[0]

    @torch.inference_mode()
    def generate(
        self, image: torch.Tensor, prefix_ids: torch.Tensor, suffix_ids: torch.Tensor,
        max_new_tokens: int = 16, eos_token_id: int | None = None,
    ) -> list[int]:
        """Greedy decoding with a KV cache (batch 1): prefill once, then one token per step."""
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        logits, past = self.prefill(self.encode_image(image), prefix_ids, suffix_ids)
        tokens: list[int] = []
        for _ in range(max_new_tokens):
            nxt = int(logits[0].argmax())
            tokens.append(nxt)
            if nxt == eos:
                break
            logits, past = self.decode_step(torch.tensor([[nxt]], device=logits.device), past)
        return tokens


# -- the split graphs: each a module with plain tensor inputs and outputs, as ONNX wants them --------------
class _Part(nn.Module):
    """Holds only the submodules its graph uses (so its parameter count is its own), under the whole model's
    names so TinyGPTV's methods run on it unchanged; `full` (not a submodule) is where checkpoints load. Built
    by `build_tinygpt_v`, `full` has real weights only in the components listed in USES (the others' parameters
    are on the meta device until a checkpoint fills them)."""

    USES: tuple[str, ...] = ()
    embed = TinyGPTV.embed

    def __init__(self, full: TinyGPTV) -> None:
        super().__init__()
        self.__dict__["full"] = full
        self.config = full.config
        for name in self.USES:
            setattr(self, name, getattr(full, name))


class VisionPart(_Part):
    """(a) vision encoder + ln_vision + Q-Former + both projections."""

    USES = ("visual_encoder", "ln_vision", "query_tokens", "qformer", "llama_proj", "llama_proj2")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return TinyGPTV.encode_image(self, image)


class PrefillPart(_Part):
    """(b) LLM prefill over [prefix text, image tokens, suffix text]: first-token logits + the KV cache."""

    USES = ("llama_model",)

    def forward(self, image_embeds, prefix_ids, suffix_ids):
        logits, presents = TinyGPTV.prefill(self, image_embeds, prefix_ids, suffix_ids)
        return (logits, *[t for kv in presents for t in kv])


class DecodePart(_Part):
    """(c) one decode step: a token and the past K/V of every layer in, logits and the grown K/V out.

    Build it with `make_decode_part`: its forward signature names every input (`input_ids, past_0_key, ...`);
    torch.export matches per-input dynamic shapes against the signature, which a bare `*past` would hide."""

    USES = ("llama_model",)

    def forward(self, input_ids, *past_flat):
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(len(past_flat) // 2)]
        logits, presents = TinyGPTV.decode_step(self, input_ids, past)
        return (logits, *[t for kv in presents for t in kv])


def make_decode_part(full: TinyGPTV) -> DecodePart:
    """A DecodePart whose forward signature lists 1 + 2 x layers named inputs."""
    import inspect

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    names = ["input_ids"] + [f"past_{i}_{t}" for i in range(full.config.llm_layers) for t in ("key", "value")]

    def forward(self, *args):
        return DecodePart.forward(self, *args)

    forward.__signature__ = inspect.Signature([inspect.Parameter(n, kind) for n in ["self", *names]])
    cls = type(f"DecodePart{full.config.llm_layers}", (DecodePart,), {"forward": forward})
    return cls(full)


def component_params(model: TinyGPTV) -> dict[str, int]:
    """Parameter count of each component and the total (works on the meta device)."""

    def n(*mods) -> int:
        return sum(p.numel() for m in mods for p in (m.parameters() if isinstance(m, nn.Module) else [m]))

    counts = {
        "vision_encoder": n(model.visual_encoder, model.ln_vision),
        "qformer": n(model.qformer, model.query_tokens),
        "projections": n(model.llama_proj, model.llama_proj2),
        "llm": n(model.llama_model),
    }
    counts["llm_plus_projections"] = counts["llm"] + counts["projections"]
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts
