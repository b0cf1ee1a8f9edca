"""MobileCLIP (Vasu et al., CVPR 2024): S0, S1, S2, B as whole image+text models and as separate encoders.

Image encoders come from timm (MCi0/1/2 = `fastvit_mci0..2`, 256x256; B = `vit_base_mci_224`, a ViT-B/16
with a convolutional stem), each with a 512-d projection. Text encoders are in `_mobileclip_text.py`.
Official `.pt` files (`image_encoder.model.*`, `text_encoder.*`, `logit_scale`) load into the whole model
and into either encoder; image keys go through timm's own MobileCLIP filters.

Every graph returns L2-normalised embeddings, so a device can run the two encoders separately and
zero-shot classify with a dot product. `zero_shot()` is the task on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeopt.errors import EdgeoptError
from edgeopt.models._timm import timm_eval_cfg
from edgeopt.models.checkpoints import load_into
from edgeopt.models.inputs import photos, preprocess
from edgeopt.models.registry import InputSpec, ModelSpec, PaperFigures, get_spec, register

if TYPE_CHECKING:
    import torch

CONTEXT_LENGTH = 77
EMBED_DIM = 512
_SRC = "Vasu et al. 2024, MobileCLIP, Table 5/6 (params image + text encoder)"

# Classes for the bundled photographs (edgeopt.models.inputs.PHOTOS, same order) and their prompts.
CLASS_NAMES = ("astronaut", "cup of coffee", "cat", "rocket", "photographer with a camera", "coins", "moon", "printed page")
PROMPTS = tuple(f"a photo of a {c}." for c in CLASS_NAMES)

# variant -> (timm image arch, text variant, text layers, causal text mask, image M params, text M params)
VARIANTS: dict[str, tuple[str, str, int, bool, float, float]] = {
    "s0": ("fastvit_mci0", "mct", 4, False, 11.4, 42.4),
    "s1": ("fastvit_mci1", "base", 12, False, 21.5, 63.4),
    "s2": ("fastvit_mci2", "base", 12, False, 35.7, 63.4),
    "b": ("vit_base_mci_224", "base", 12, True, 86.3, 63.4),
}


def _nn():
    import torch
    from torch import nn

    return torch, nn


def _image_module_cls():
    torch, nn = _nn()
    import torch.nn.functional as F

    class MobileCLIPImage(nn.Module):
        """Image encoder: timm backbone whose head projects to 512; output L2-normalised."""

        def __init__(self, arch: str) -> None:
            super().__init__()
            import timm

            self.arch = arch
            self.model = timm.create_model(arch, pretrained=False, num_classes=EMBED_DIM)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.model(image), dim=-1)

    return MobileCLIPImage


def reparameterize_in_place(module) -> None:
    """Fold every MobileOne/RepMixer branch below `module` (timm's walk: children only, each once).

    Only the root modules the registry builds carry a `reparameterize()` method: timm's walker calls a
    child's method and then descends into it, so an inner wrapper with one would fold timm's blocks twice.
    """
    from timm.utils.model import reparameterize_model

    reparameterize_model(module, inplace=True)


def _clip_module_cls():
    torch, nn = _nn()

    class MobileCLIP(nn.Module):
        """Whole model: (image [1,3,H,W], text [P,77]) -> image_embeds, text_embeds, logits_per_image [1,P]."""

        def __init__(self, variant: str) -> None:
            super().__init__()
            from edgeopt.models._mobileclip_text import TextTransformer

            arch, tvar, layers, causal, _, _ = VARIANTS[variant]
            self.image_encoder = _image_module_cls()(arch)
            self.text_encoder = TextTransformer(tvar, layers=layers, causal=causal)
            self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

        def forward(self, image: torch.Tensor, text: torch.Tensor):
            img = self.image_encoder(image)
            txt = self.text_encoder(text)
            scale = self.logit_scale.exp().clamp(0, 100)
            return img, txt, scale * img @ txt.t()

        def reparameterize(self) -> None:
            reparameterize_in_place(self)

    return MobileCLIP


def _build_text(variant: str, device: str = "cpu"):
    import torch

    from edgeopt.models._mobileclip_text import TextTransformer

    _, tvar, layers, causal, _, _ = VARIANTS[variant]
    class MobileCLIPText(TextTransformer):
        def reparameterize(self) -> None:
            reparameterize_in_place(self)

    with torch.device(device):
        return MobileCLIPText(tvar, layers=layers, causal=causal)


def _build_image(variant: str, device: str = "cpu"):
    import torch

    class MobileCLIPImageRoot(_image_module_cls()):
        def reparameterize(self) -> None:
            reparameterize_in_place(self)

    with torch.device(device):
        return MobileCLIPImageRoot(VARIANTS[variant][0])


def _build_clip(variant: str, device: str = "cpu"):
    import torch

    with torch.device(device):
        return _clip_module_cls()(variant)


# ---- official checkpoints -------------------------------------------------------------------------


def _image_keys(sd: dict, timm_model, arch: str) -> dict:
    """Official (`image_encoder.model.*`), timm-hub (bare timm keys) or our own (`model.*`) -> `model.*`."""
    if all(k.startswith("model.") for k in sd):
        return sd
    if any(k.startswith("image_encoder.") for k in sd):
        if arch.startswith("vit_"):
            from timm.models.vision_transformer_hybrid import checkpoint_filter_fn
        else:
            from timm.models.fastvit import checkpoint_filter_fn
        sd = checkpoint_filter_fn(sd, timm_model)
    return {f"model.{k}": v for k, v in sd.items()}


def load_image_checkpoint(module, path: Path) -> None:
    load_into(module, Path(path), key_map=lambda sd: _image_keys(sd, module.model, module.arch), variant=f"mobileclip {module.arch}")


def load_text_checkpoint(module, path: Path, variant: str = "") -> None:
    def key_map(sd):
        if any(k.startswith("text_encoder.") for k in sd):
            sd = {k[len("text_encoder.") :]: v for k, v in sd.items() if k.startswith("text_encoder.")}
        return sd

    load_into(module, Path(path), key_map=key_map, variant=f"mobileclip_{variant}_text")


def load_clip_checkpoint(module, path: Path, variant: str = "") -> None:
    def key_map(sd):
        img = {k: v for k, v in sd.items() if k.startswith("image_encoder.")}
        rest = {k: v for k, v in sd.items() if not k.startswith("image_encoder.")}
        img = {f"image_encoder.{k}": v for k, v in _image_keys(img, module.image_encoder.model, module.image_encoder.arch).items()} if img else {}
        return {**img, **rest}

    load_into(module, Path(path), key_map=key_map, variant=f"mobileclip_{variant}")


# ---- inputs ---------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def tokenizer():
    """open_clip's CLIP BPE tokenizer (its vocabulary ships inside the open_clip wheel; no hub access)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=CONTEXT_LENGTH)


def tokenize(texts: Sequence[str]) -> np.ndarray:
    """Texts -> int64 [N, 77] token ids (start, BPE tokens, end-of-text, zero padding; truncated to 77)."""
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise EdgeoptError("no texts to tokenize", "pass at least one caption or class name")
    return tokenizer()(list(texts)).numpy().astype(np.int64)


def _eval_cfg(variant: str) -> tuple[tuple[int, int], tuple, tuple, float]:
    cfg = timm_eval_cfg(VARIANTS[variant][0])
    _, h, w = cfg.get("input_size", (3, 256, 256))
    return (h, w), tuple(cfg.get("mean", (0.0, 0.0, 0.0))), tuple(cfg.get("std", (1.0, 1.0, 1.0))), float(cfg.get("crop_pct", 0.95))


def preprocess_images(variant: str, images: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 HxWx3 photographs -> float32 [N,3,H,W] the way the MobileCLIP image encoder expects."""
    size, mean, std, crop = _eval_cfg(variant)
    return np.concatenate([preprocess(np.asarray(im), size, mean, std, crop) for im in images])


def _image_samples(variant: str, n: int) -> list[dict[str, np.ndarray]]:
    return [{"image": x[None]} for x in preprocess_images(variant, photos(n))]


def _text_samples(n: int) -> list[dict[str, np.ndarray]]:
    toks = tokenize(PROMPTS)
    return [{"text": toks[i % len(toks)][None]} for i in range(n)]


def _clip_samples(variant: str, n: int) -> list[dict[str, np.ndarray]]:
    toks = tokenize(PROMPTS)
    return [{"image": s["image"], "text": toks} for s in _image_samples(variant, n)]


# ---- task: zero-shot classification ----------------------------------------------------------------


def _variant_of(spec_name: str) -> str:
    spec = get_spec(spec_name)
    if spec.family != "mobileclip":
        raise EdgeoptError(f"{spec_name} is not a MobileCLIP model", "use mobileclip_s0/s1/s2/b")
    return spec.extras["variant"]


def zero_shot(
    spec_name: str,
    images: Sequence[np.ndarray],
    class_names: Sequence[str],
    weights: str | Path | None = None,
    template: str = "a photo of a {}.",
    module: Any = None,
) -> np.ndarray:
    """Zero-shot classification: probabilities [N_images, N_classes].

    Class names become prompts (`template`), their normalised text embeddings are compared by cosine with
    each image's embedding, scaled by the model's logit scale (<= 100) and softmaxed over the classes.
    `images` are uint8 HxWx3 photographs; `weights` a local official/edgeopt checkpoint of the whole model.
    """
    import torch

    if not class_names:
        raise EdgeoptError("no class names given", "pass at least two class names")
    variant = _variant_of(spec_name)
    model = module if module is not None else get_spec(f"mobileclip_{variant}").build(weights=weights)
    x = torch.from_numpy(preprocess_images(variant, images))
    t = torch.from_numpy(tokenize([template.format(c) for c in class_names]))
    with torch.inference_mode():
        _, _, logits = model(x, t)
    return torch.softmax(logits, dim=-1).numpy()


# ---- registration ---------------------------------------------------------------------------------

for _v, (_arch, _tvar, _layers, _causal, _img_m, _txt_m) in VARIANTS.items():
    _size = _eval_cfg(_v)[0]
    _img_shape = (1, 3, *_size)
    _common = {"variant": _v, "prompts": PROMPTS, "class_names": CLASS_NAMES, "context_length": CONTEXT_LENGTH}
    _res = tuple(_size)
    register(
        ModelSpec(
            name=f"mobileclip_{_v}",
            family="mobileclip",
            task="clip",
            builder=partial(_build_clip, _v),
            inputs=(InputSpec("image", _img_shape), InputSpec("text", (len(PROMPTS), CONTEXT_LENGTH), "int64")),
            outputs=("image_embeds", "text_embeds", "logits_per_image"),
            sample_inputs=partial(_clip_samples, _v),
            paper=PaperFigures(params_m=round(_img_m + _txt_m, 1), resolution=_res, source=_SRC,
                               note=f"image {_img_m} M + text {_txt_m} M; the paper gives latency, not MACs"),
            load_checkpoint=partial(load_clip_checkpoint, variant=_v),
            description=f"MobileCLIP-{_v.upper()}: {_arch} image encoder + {_tvar} text encoder ({_layers} transformer layers)",
            extras={**_common, "components": (f"mobileclip_{_v}_image", f"mobileclip_{_v}_text")},
        )
    )
    register(
        ModelSpec(
            name=f"mobileclip_{_v}_image",
            family="mobileclip",
            task="clip",
            builder=partial(_build_image, _v),
            inputs=(InputSpec("image", _img_shape),),
            outputs=("image_embeds",),
            sample_inputs=partial(_image_samples, _v),
            paper=PaperFigures(params_m=_img_m, resolution=_res, source=_SRC, note="image encoder alone"),
            load_checkpoint=load_image_checkpoint,
            description=f"MobileCLIP-{_v.upper()} image encoder ({_arch}), L2-normalised 512-d embedding",
            extras={**_common, "component_of": f"mobileclip_{_v}"},
        )
    )
    register(
        ModelSpec(
            name=f"mobileclip_{_v}_text",
            family="mobileclip",
            task="clip",
            builder=partial(_build_text, _v),
            inputs=(InputSpec("text", (1, CONTEXT_LENGTH), "int64"),),
            outputs=("text_embeds",),
            sample_inputs=_text_samples,
            paper=PaperFigures(params_m=_txt_m, source=_SRC, note="text encoder alone"),
            load_checkpoint=partial(load_text_checkpoint, variant=_v),
            description=f"MobileCLIP-{_v.upper()} text encoder ({_tvar}, {_layers} transformer layers), L2-normalised 512-d",
            extras={**_common, "component_of": f"mobileclip_{_v}"},
        )
    )
