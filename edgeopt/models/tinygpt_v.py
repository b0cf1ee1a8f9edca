"""TinyGPT-V (Yuan et al. 2023): a 2.8 B-parameter VLM (Phi-2 + projections) on top of EVA ViT-g/14 and a
BLIP-2 Q-Former. The network is in `_tinygpt_v_net.py`; this file registers the variants and their parts.

Specs, for `tinygpt_v` (full widths) and `tinygpt_v_tiny` (same code, small widths; what tests build):
- `NAME`: the generative model. Compiling it gives a generative bundle: the three split graphs below, the
  tokenizer and a reference prompt with its greedy tokens (`ModelSpec.generative`; docs/llm.md).
- `NAME_whole`: the single graph vision + prefill: (image, prompt before the image, prompt after it) ->
  first-token logits, so the whole model compiles and profiles as one ONNX graph.
- `NAME_vision`, `NAME_prefill`, `NAME_decode`: the split on-device LLM runtimes use (vision encoder +
  Q-Former + projections; LLM prefill; one decode step with past key/values in and present key/values out).
  `edgeopt.llm.OnnxVLM` runs the three graphs as a greedy loop.

Random weights are seeded (seed 0), each component (EVA, ln_vision, query tokens, Q-Former, the projections,
Phi-2) from its own seed derived from (seed, component name), so every build of a variant is the same model
and a part build allocates only its own components (at full size: 1.1 B parameters for the vision part,
2.78 B for the LLM parts, not 3.9 B): the prefill and decode specs' sample inputs (image tokens, KV caches)
are computed by that same model from real photographs, the vision part freed before the LLM part is built.
"""

from __future__ import annotations

import re
import warnings
from functools import cache, lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.errors import CheckpointError, EdgeoptError
from edgeopt.models.inputs import image_samples
from edgeopt.models.registry import Generative, InputSpec, ModelSpec, PaperFigures, register

# BLIP-2 / EVA-CLIP image normalisation (Blip2ImageEvalProcessor: bicubic resize to the square input).
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

# Questions asked of the sample photographs (skimage.data: astronaut, coffee, chelsea, rocket, ...).
PROMPTS = (
    "Describe this image in detail.",
    "What is in the cup on the table?",
    "What animal is in the picture and what is it doing?",
    "What is happening in this photo?",
    "Describe the person in the picture.",
    "What objects can you see?",
    "Where might this photo have been taken?",
    "Read the text on the page.",
)
# Captions used to train the small sample tokenizer (and to measure text perplexity where wanted).
CAPTIONS = (
    "An astronaut in a white space suit holds a helmet in front of an American flag.",
    "A cup of coffee with latte art on a saucer on a wooden table.",
    "A tabby cat sits and looks at the camera.",
    "A rocket stands on the launch pad before lift off.",
    "A man with a camera on a tripod stands in a field.",
    "Old coins lie on a dark cloth.",
    "The surface of the moon with craters.",
    "A printed page of text from an old book.",
)
# MiniGPT-v2 style template that TinyGPT-V's later stages use: text, <ImageHere>, text.
PREFIX = "[INST] <Img>"
SUFFIX = "</Img> {} [/INST]"

_SRC = "Yuan et al. 2023, TinyGPT-V (arXiv 2312.16862); official repo DLYuanGod/TinyGPT-V"
_NOTE = (
    "the paper's 2.8 B is Phi-2 (2.78 B) + llama_proj/llama_proj2; the EVA ViT-g/14 encoder (~1.0 B, 39 blocks as "
    "BLIP-2 uses it) and the Q-Former (~0.1 B without its text branch) come on top; params_m here is that "
    "LLM-side figure, component counts are in extras['paper_components_m']"
)


def _cfg(variant: str):
    from edgeopt.models._tinygpt_v_net import FULL, TINY

    return {"full": FULL, "tiny": TINY}[variant]


PARTS = ("whole", "vision", "prefill", "decode")


def build_tinygpt_v(variant: str = "tiny", part: str = "whole", device: str = "cpu", seed: int = 0) -> Any:
    """Build the model (or one of its split parts) with seeded random weights, on `device` ("meta" to count).

    Only the components the part uses are materialized (a full-size vision part holds 1.1 B parameters, the
    LLM parts 2.78 B, the whole model 3.9 B); each is initialized from a seed derived from (seed, component
    name), so a part's weights equal the same components of the whole build. A part's `full` is the whole
    model with the unused components on the meta device (checkpoints load there)."""
    from edgeopt.models._tinygpt_v_net import PrefillPart, TinyGPTV, VisionPart, make_decode_part

    if part not in PARTS:
        raise EdgeoptError(f"unknown TinyGPT-V part {part!r}", f"one of {', '.join(PARTS)}")
    wrap = {"whole": None, "vision": VisionPart, "prefill": PrefillPart, "decode": make_decode_part}[part]
    uses = None if wrap is None else (VisionPart.USES if part == "vision" else PrefillPart.USES)
    full = TinyGPTV.build_seeded(_cfg(variant), seed=seed, components=uses, device=device)
    return full if wrap is None else wrap(full).eval()


# -- sample inputs -----------------------------------------------------------------------------------------
@cache
def sample_tokenizer(vocab_size: int = 512):
    """A byte-level BPE trained on CAPTIONS + PROMPTS: stands in for Phi-2's tokenizer with random weights.

    Its ids are valid for any vocabulary at least `vocab_size` large (the full model's is 51200); with real
    weights use `edgeopt.llm.load_tokenizer(path_to_phi2_tokenizer.json)` instead."""
    from edgeopt.llm import train_tokenizer

    return train_tokenizer([*CAPTIONS, *PROMPTS, PREFIX, SUFFIX], vocab_size=vocab_size)


def prompt_ids(tokenizer, question: str) -> tuple[np.ndarray, np.ndarray]:
    """(prefix_ids, suffix_ids) around the image tokens for one question."""
    from edgeopt.llm import encode

    return encode(tokenizer, PREFIX), encode(tokenizer, SUFFIX.format(question))


def _text_samples(variant: str, n: int) -> list[dict[str, np.ndarray]]:
    cfg = _cfg(variant)
    tok = sample_tokenizer(min(cfg.vocab_size, 512))
    out = []
    for i, img in enumerate(image_samples(n, "image", (cfg.img_size, cfg.img_size), MEAN, STD, crop_pct=1.0)):
        pre, suf = prompt_ids(tok, PROMPTS[i % len(PROMPTS)])
        out.append({"image": img["image"], "prefix_ids": pre, "suffix_ids": suf})
    return out


def _whole_samples(variant: str, n: int) -> list[dict[str, np.ndarray]]:
    return _text_samples(variant, n)


def _vision_samples(variant: str, n: int) -> list[dict[str, np.ndarray]]:
    return [{"image": s["image"]} for s in _text_samples(variant, n)]


@lru_cache(maxsize=4)
def _prefill_and_decode_samples(variant: str, n: int) -> tuple[list, list]:
    """Run the seeded model on the photographs: image tokens for prefill, the KV cache + next token for decode.

    The vision part is built, run and freed before the LLM part is built, so at full size only one of them
    (1.1 B or 2.78 B parameters) is in memory at a time; the weights are those of the whole build."""
    import gc

    import torch

    from edgeopt.models._tinygpt_v_net import TinyGPTV

    texts = _text_samples(variant, n)
    vision = build_tinygpt_v(variant, "vision")
    with torch.inference_mode():
        embeds = [vision(torch.from_numpy(s["image"])) for s in texts]
    del vision
    gc.collect()
    llm = build_tinygpt_v(variant, "prefill")
    pre, dec = [], []
    with torch.inference_mode():
        for s, emb in zip(texts, embeds, strict=True):
            pre.append({"image_embeds": emb.numpy(), "prefix_ids": s["prefix_ids"], "suffix_ids": s["suffix_ids"]})
            logits, presents = TinyGPTV.prefill(llm, emb, torch.from_numpy(s["prefix_ids"]), torch.from_numpy(s["suffix_ids"]))
            d = {"input_ids": logits.argmax(-1, keepdim=True).numpy().astype(np.int64)}
            for i, (k, v) in enumerate(presents):
                d[f"past.{i}.key"], d[f"past.{i}.value"] = k.numpy(), v.numpy()
            dec.append(d)
    del llm
    gc.collect()
    return pre, dec


def _prefill_samples(variant: str, n: int) -> list[dict[str, np.ndarray]]:
    return [dict(s) for s in _prefill_and_decode_samples(variant, n)[0]]


def _decode_samples(variant: str, n: int) -> list[dict[str, np.ndarray]]:
    return [dict(s) for s in _prefill_and_decode_samples(variant, n)[1]]


# -- official checkpoints ----------------------------------------------------------------------------------
# MiniGPT-4/TinyGPT-V save `{"model": state_dict}` of MiniGPT4: visual_encoder.*, ln_vision.*, query_tokens,
# Qformer.bert.* (LAVIS BERT names), llama_proj*, llama_model.* (PEFT-wrapped when LoRA was used).
_QFORMER_RULES = (
    (re.compile(r"^Qformer\.bert\.embeddings\.LayerNorm\."), "qformer.layernorm."),
    (re.compile(r"^Qformer\.bert\.encoder\."), "qformer.encoder."),
    (re.compile(r"\.attention\.self\."), ".attention.attention."),
    (re.compile(r"\.crossattention\.self\."), ".crossattention.attention."),
)
# Dropped: buffers, and the BLIP-2 parts TinyGPT-V sets to None or never builds (the Q-Former's text branch:
# word/position embeddings, per-layer text FFN `intermediate`/`output`, `cls`; BLIP-2's own heads/projections).
_DROP = re.compile(
    r"^Qformer\.bert\.embeddings\.(position_ids|word_embeddings\.|position_embeddings\.)|^Qformer\.cls\."
    r"|^Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\.|\.rotary_emb\.inv_freq$"
    r"|^(t5_proj|t5_model|opt_proj|opt_model|vision_proj|text_proj|itm_head)\.|^temp$"
)
LORA_ALPHA = 16  # TinyGPT-V's lora_alpha (minigpt4.py); scaling = alpha / r, r read from the checkpoint


def map_official_keys(sd: dict, lora_alpha: float = LORA_ALPHA) -> dict:
    """Official TinyGPT-V/MiniGPT-4 key layout -> this module's names; PEFT LoRA adapters are merged."""
    out: dict = {}
    lora: dict[str, dict[str, Any]] = {}
    for k, v in sd.items():
        if _DROP.search(k):
            continue
        k = k.replace("llama_model.base_model.model.", "llama_model.")
        m = re.match(r"^(.*)\.lora_([AB])(?:\.default)?\.weight$", k)
        if m:
            lora.setdefault(m.group(1), {})[m.group(2)] = v
            continue
        k = k.replace(".base_layer.", ".")
        for pat, rep in _QFORMER_RULES:
            k = pat.sub(rep, k)
        out[k] = v
    for base, ab in lora.items():
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"LoRA adapter {base!r} is incomplete", "the checkpoint has only one of lora_A/lora_B")
        if f"{base}.weight" not in out:  # adapter without its base weight: left as is, the loader names what is lacking
            out.update({f"{base}.lora_{x}.weight": t for x, t in ab.items()})
            continue
        a, b = ab["A"].float(), ab["B"].float()
        w = out[f"{base}.weight"]
        out[f"{base}.weight"] = (w.float() + (b @ a) * (lora_alpha / a.shape[0])).to(w.dtype)
    return out


_COMPONENTS = {
    "visual_encoder.": "EVA ViT-g (eva_vit_g.pth, prefix 'visual_encoder.')",
    "ln_vision.": "ln_vision (BLIP-2 checkpoint)",
    "qformer.": "Q-Former (BLIP-2 checkpoint, 'Qformer.bert.*')",
    "query_tokens": "query_tokens (BLIP-2 checkpoint)",
    "llama_proj": "llama_proj/llama_proj2 (TinyGPT-V stage checkpoint)",
    "llama_model.": "Phi-2 (prefix 'llama_model.')",
}


def load_tinygpt_v_checkpoint(module, path: Path, variant: str = "") -> None:
    """Load a whole checkpoint in the official layout (or this module's own) into the model or a split part.

    TinyGPT-V's released stage checkpoints hold only what training changed (projections, LoRA, norms); the
    official code loads them over EVA, BLIP-2 and Phi-2 weights with strict=False. Here loading is strict, so
    such a file is refused with the components it lacks; `merge_checkpoints` assembles the whole file."""
    from edgeopt.models.checkpoints import load_state_strict, read_state_dict

    target = getattr(module, "full", module)
    sd = read_state_dict(path)
    own = target.state_dict()
    if not all(k in own for k in sd):
        sd = map_official_keys(sd)
    lacking = [desc for pre, desc in _COMPONENTS.items() if not any(k.startswith(pre) for k in sd)]
    if lacking and any(k in own for k in sd):
        raise CheckpointError(
            f"{Path(path).name} lacks whole components of {variant or 'TinyGPT-V'}: {'; '.join(lacking)}",
            "a TinyGPT-V stage checkpoint holds only trained weights: combine it with the base weights first, "
            "edgeopt.models.tinygpt_v.merge_checkpoints(out, [(eva, 'visual_encoder.'), (blip2, ''), (phi2, 'llama_model.'), (stage, '')])",
        )
    with warnings.catch_warnings():  # copying into a meta tensor is a no-op that torch warns about
        warnings.simplefilter("ignore")
        load_state_strict(target, sd, Path(path), variant=variant)
    _assign_meta_components(target, sd)


def _assign_meta_components(model, sd: dict) -> None:
    """A split part's unused components have their parameters on the meta device, where loading copies
    nothing: give them the checkpoint's tensors (no copy when the dtype already matches)."""
    import torch

    from edgeopt.models._tinygpt_v_net import COMPONENTS

    for name in COMPONENTS:
        comp = getattr(model, name)
        if isinstance(comp, torch.Tensor):
            if comp.device.type == "meta":
                setattr(model, name, torch.nn.Parameter(sd[name].to(comp.dtype), requires_grad=comp.requires_grad))
        elif next(comp.parameters()).device.type == "meta":
            own = comp.state_dict()
            comp.load_state_dict({k: sd[f"{name}.{k}"].to(v.dtype) for k, v in own.items()}, assign=True)


def merge_checkpoints(out: str | Path, sources: list[tuple[str | Path, str]]) -> Path:
    """Overlay several checkpoints (later files win), each with a key prefix, into one official-layout file.

    This is what the official code does in memory (EVA-CLIP-g, then BLIP-2's Q-Former, then Phi-2 from
    transformers 4.36's fused `query_key_value` layout, then the stage checkpoint); written to a temp
    file and renamed, so `out` is either whole or absent."""
    import torch

    from edgeopt.models.checkpoints import read_state_dict

    merged: dict = {}
    for src, prefix in sources:
        for k, v in read_state_dict(Path(src)).items():
            merged[prefix + k] = v
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    torch.save({"model": merged}, tmp)
    tmp.replace(out)
    return out


# -- registration ------------------------------------------------------------------------------------------
def _decode_from_prefill(part):
    """The decode part on the prefill part's weights (one LLM for both graphs)."""
    from edgeopt.models._tinygpt_v_net import make_decode_part

    return make_decode_part(part.full).eval()


def _ids(name: str) -> InputSpec:
    return InputSpec(name, (1, 3 if name == "prefix_ids" else 12), "int64", {1: name.replace("_ids", "_len")})


def _specs(variant: str, name: str) -> list[ModelSpec]:
    cfg = _cfg(variant)
    s, h, nq = cfg.img_size, cfg.llm_hidden, cfg.num_query_tokens
    hd = cfg.llm_hidden // cfg.llm_heads
    paper = (PaperFigures(params_m=2800.0, resolution=(224, 224), source=_SRC, note=_NOTE) if variant == "full"
             else PaperFigures(source=_SRC, note="tiny widths for tests and demos; the paper's figures are on tinygpt_v"))
    parts = {"vision": f"{name}_vision", "prefill": f"{name}_prefill", "decode": f"{name}_decode"}
    extras = {
        "config": cfg.to_dict(),
        "mean": MEAN, "std": STD,
        "prompts": list(PROMPTS), "captions": list(CAPTIONS), "prompt_template": [PREFIX, SUFFIX],
        "eos_token_id": cfg.eos_token_id,
        "paper_components_m": {"llm_plus_projections": 2800.0, "phi2": 2780.0, "vision_encoder": 1000.0},
        # the paper's 2.8 B counts Phi-2 plus the projections; EVA and the Q-Former come on top
        "card_params_of": ("llama_model", "llama_proj", "llama_proj2"),
        "tokenizer": "sample BPE trained on the captions; pass Phi-2's tokenizer.json for real weights",
        "components": parts,
    }
    load = partial(load_tinygpt_v_checkpoint, variant=name)
    kv_names = tuple(f"present.{i}.{t}" for i in range(cfg.llm_layers) for t in ("key", "value"))
    size = " (tiny widths)" if variant == "tiny" else ""
    arch = (f"EVA ViT-g/14 + Q-Former ({nq} queries) + Phi-2 with QK LayerNorm and attention-output RMSNorm")
    common = dict(
        family="tinygpt_v", task="vlm", builder=partial(build_tinygpt_v, variant),
        inputs=(InputSpec("image", (1, 3, s, s)), _ids("prefix_ids"), _ids("suffix_ids")),
        outputs=("logits",), sample_inputs=partial(_whole_samples, variant), paper=paper, load_checkpoint=load,
    )
    generative = ModelSpec(
        name=name, **common,
        description=(f"TinyGPT-V{size}: {arch}. Compiles to a generative bundle: the vision, prefill and decode "
                     f"graphs, the tokenizer and reference tokens, run by a greedy loop on the device ({name}_whole "
                     "is the single graph)"),
        extras=extras,
        generative=Generative(vision=parts["vision"], prefill=parts["prefill"], decode=parts["decode"],
                              eos_token_id=cfg.eos_token_id, tokenizer=partial(sample_tokenizer, min(cfg.vocab_size, 512)),
                              decode_from_prefill=_decode_from_prefill),
    )
    whole = ModelSpec(
        name=f"{name}_whole", **common,
        description=(f"TinyGPT-V{size} as one graph: vision + LLM prefill (image, prompt before/after the image) -> "
                     f"first-token logits; {name} is the generative bundle of its split graphs"),
        extras={**extras, "component_of": name},
    )
    past = tuple(
        InputSpec(f"past.{i}.{t}", (1, cfg.llm_heads, 40, hd), "float32", {2: "past_len"})
        for i in range(cfg.llm_layers) for t in ("key", "value")
    )
    part_paper = PaperFigures(source=_SRC)
    return [
        generative,
        whole,
        ModelSpec(
            name=parts["vision"], family="tinygpt_v", task="embedding",
            builder=partial(build_tinygpt_v, variant, "vision"),
            inputs=(InputSpec("image", (1, 3, s, s)),), outputs=("image_embeds",),
            sample_inputs=partial(_vision_samples, variant), paper=part_paper, load_checkpoint=load,
            description=f"TinyGPT-V{size} part (a): EVA ViT + ln_vision + Q-Former + llama_proj/llama_proj2 -> {nq}x{h} image tokens",
            extras={**extras, "component_of": name},
        ),
        ModelSpec(
            name=parts["prefill"], family="tinygpt_v", task="language_model",
            builder=partial(build_tinygpt_v, variant, "prefill"),
            inputs=(InputSpec("image_embeds", (1, nq, h)), _ids("prefix_ids"), _ids("suffix_ids")),
            outputs=("logits", *kv_names),
            sample_inputs=partial(_prefill_samples, variant), paper=part_paper, load_checkpoint=load,
            description=f"TinyGPT-V{size} part (b): LLM prefill over [prefix, image tokens, suffix] -> first-token logits + KV cache",
            extras={**extras, "component_of": name},
        ),
        ModelSpec(
            name=parts["decode"], family="tinygpt_v", task="language_model",
            builder=partial(build_tinygpt_v, variant, "decode"),
            inputs=(InputSpec("input_ids", (1, 1), "int64"), *past),
            outputs=("logits", *kv_names),
            sample_inputs=partial(_decode_samples, variant), paper=part_paper, load_checkpoint=load,
            description=f"TinyGPT-V{size} part (c): one decode step, past key/values in (any length), grown key/values out",
            extras={**extras, "component_of": name},
        ),
    ]


for _variant, _name in (("full", "tinygpt_v"), ("tiny", "tinygpt_v_tiny")):
    for _spec in _specs(_variant, _name):
        register(_spec)
