"""MobileCLIP: official `.pt` layout loading (whole model and each encoder), reparameterization,
tokenizer, zero-shot, the clip metric, and compile + ORT parity (S0 by default, all under `slow`)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeopt.errors import CheckpointError, EdgeoptError
from edgeopt.fidelity import task_metrics
from edgeopt.models import get_spec
from edgeopt.models.inputs import photos
from edgeopt.models.mobileclip import PROMPTS, tokenize, zero_shot


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Distinct random values everywhere (BN statistics and layer scales included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.dtype.is_floating_point:
                r = torch.rand(t.shape, generator=g)
                t.copy_(r + 0.5 if name.endswith("running_var") else (r - 0.5) * 0.2)


def mci_official(sd: dict) -> dict:
    """timm fastvit_mci* keys -> Apple's MCi keys (mobileclip/models/mci.py + mobileone.py names): a flat
    `network` list [stage0, PatchEmbed(proj), (RepCPE(pe)), stage1, ...], MobileOne `rbr_*` branches,
    `conv_exp`, `lkb_origin`, `convffn`, SE `reduce`/`expand`, and the projection `head.proj` [in, 512]."""
    n_stages = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"^stages\.(\d+)\.", k)))
    has_pe = {s: any(k.startswith(f"stages.{s}.pos_emb.pos_enc.") for k in sd) for s in range(n_stages)}
    base, idx = {}, 0
    for s in range(n_stages):
        if s > 0:
            base[(s, "downsample.proj")] = idx
            idx += 1
            if has_pe[s]:
                base[(s, "pos_emb.pos_enc")] = idx
                idx += 1
        base[(s, "blocks")] = idx
        idx += 1
    out = {}
    for k, v in sd.items():
        if k == "head.fc.bias":
            assert torch.count_nonzero(v) == 0, "the official projection has no bias"
            continue
        if k == "head.fc.weight":
            out["head.proj"] = v.t().contiguous()
            continue
        m = re.match(r"^stages\.(\d+)\.(downsample\.proj|pos_emb\.pos_enc|blocks)\.(.*)$", k)
        if m:
            s, part, rest = int(m.group(1)), m.group(2), m.group(3)
            name = {"downsample.proj": "proj", "pos_emb.pos_enc": "pe", "blocks": ""}[part]
            k = f"network.{base[(s, part)]}." + (f"{name}.{rest}" if name else rest)
        k = k.replace("stem.", "patch_embed.").replace("conv_kxk", "rbr_conv").replace("conv_scale", "rbr_scale")
        k = k.replace("identity", "rbr_skip").replace("final_conv", "conv_exp").replace("large_conv", "lkb_origin")
        k = k.replace(".mlp.", ".convffn.").replace("se.fc1", "se.reduce").replace("se.fc2", "se.expand")
        k = re.sub(r"layer_scale(_\d)?\.gamma$", r"layer_scale\1", k)
        out[k] = v
    return out


def official_clip(module: torch.nn.Module) -> dict:
    """Our whole-model state dict in Apple's `.pt` layout: image_encoder.model.*, text_encoder.*, logit_scale."""
    sd = module.state_dict()
    img = {k[len("image_encoder.model.") :]: v for k, v in sd.items() if k.startswith("image_encoder.model.")}
    out = {f"image_encoder.model.{k}": v for k, v in mci_official(img).items()}
    out.update({k: v for k, v in sd.items() if not k.startswith("image_encoder.")})
    return out


@pytest.fixture(scope="module")
def s0_and_file(tmp_path_factory):
    src = get_spec("mobileclip_s0").build()
    _randomize(src)
    with torch.no_grad():
        src.image_encoder.model.head.fc.bias.zero_()
    path = tmp_path_factory.mktemp("ckpt") / "mobileclip_s0.pt"
    sd = official_clip(src)
    assert "image_encoder.model.patch_embed.0.rbr_conv.0.conv.weight" in sd
    assert "text_encoder.transformer.0.token_mixer.mixer.rbr_conv.0.conv.weight" in sd
    assert "text_encoder.positional_embedding.pos_embed.pos_embed" in sd
    torch.save({"state_dict": sd}, path)
    return src, path


def test_official_layout_loads_into_whole_model_and_each_encoder(s0_and_file) -> None:
    src, path = s0_and_file
    whole = get_spec("mobileclip_s0").build(weights=path)
    for k, v in src.state_dict().items():
        assert torch.equal(v, whole.state_dict()[k]), k
    sample = get_spec("mobileclip_s0").sample_inputs(1)[0]
    img, txt = torch.from_numpy(sample["image"]), torch.from_numpy(sample["text"])
    with torch.no_grad():
        ref = src(img, txt)
        image = get_spec("mobileclip_s0_image").build(weights=path)
        text = get_spec("mobileclip_s0_text").build(weights=path)
        torch.testing.assert_close(image(img), ref[0])
        torch.testing.assert_close(text(txt), ref[1])


def test_checkpoint_for_other_variant_is_refused(s0_and_file, tmp_path: Path) -> None:
    other = get_spec("mobileclip_s2_image").build()  # MCi2 is wider than MCi0: shapes differ
    with torch.no_grad():
        other.model.head.fc.bias.zero_()
    sd = mci_official({k[len("model.") :]: v for k, v in other.state_dict().items()})
    torch.save({f"image_encoder.model.{k}": v for k, v in sd.items()}, tmp_path / "s2.pt")
    with pytest.raises(CheckpointError, match=r"key '.*' has shape .* in the checkpoint but .* in the model"):
        get_spec("mobileclip_s0_image").build(weights=tmp_path / "s2.pt")
    _, s0_path = s0_and_file
    with pytest.raises(CheckpointError, match="missing|unexpected|shape"):  # S0's RepMixer text model != S1's 12 layers
        get_spec("mobileclip_s1_text").build(weights=s0_path)


def test_reparameterize_keeps_outputs_and_removes_branches(s0_and_file) -> None:
    src, _ = s0_and_file
    m = copy.deepcopy(src)
    m.reparameterize()
    keys = list(m.state_dict())
    assert not any("rbr_" in k or "conv_kxk" in k or ".mixer." in k for k in keys)
    assert sum(p.numel() for p in m.parameters()) < sum(p.numel() for p in src.parameters())
    sample = get_spec("mobileclip_s0").sample_inputs(2)[1]
    args = (torch.from_numpy(sample["image"]), torch.from_numpy(sample["text"]))
    with torch.no_grad():
        for a, b in zip(src(*args), m(*args), strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_tokenizer() -> None:
    t = tokenize(["a photo of a cat.", "x " * 200])
    assert t.shape == (2, 77) and t.dtype == np.int64
    assert t[0, 0] == 49406 and t[0].argmax() == int(np.nonzero(t[0])[0][-1])  # start token; EOT is the max id
    assert t[1, -1] == 49407  # truncated to 77 with the end-of-text token kept
    with pytest.raises(EdgeoptError):
        tokenize([])


def test_zero_shot_matches_whole_model_logits(s0_and_file) -> None:
    src, _ = s0_and_file
    classes = ["astronaut", "cup of coffee", "cat"]
    probs = zero_shot("mobileclip_s0_image", photos(2), classes, module=src)
    assert probs.shape == (2, 3) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)
    spec = get_spec("mobileclip_s0")
    img = torch.from_numpy(spec.sample_inputs(2)[1]["image"])
    txt = torch.from_numpy(tokenize([f"a photo of a {c}." for c in classes]))
    with torch.no_grad():
        logits = src(img, txt)[2]
    np.testing.assert_allclose(probs[1], torch.softmax(logits, -1)[0].numpy(), atol=1e-5)
    with pytest.raises(EdgeoptError, match="not a MobileCLIP"):
        zero_shot("shvit_s1", photos(1), classes)


def test_clip_metric_sees_a_swapped_prompt() -> None:
    rng = np.random.default_rng(0)
    e = rng.normal(size=(1, 8))
    refs = [{"image_embeds": e, "logits_per_image": np.arange(8.0)[None]}]
    same = task_metrics("clip", refs, refs)
    assert same["zeroshot_top1_agreement"] == 1.0 and same["zeroshot_rank_agreement"] == pytest.approx(1.0)
    outs = [{"image_embeds": -e, "logits_per_image": np.arange(8.0)[::-1][None].copy()}]
    bad = task_metrics("clip", refs, outs)
    assert bad["zeroshot_top1_agreement"] == 0.0 and bad["zeroshot_rank_agreement"] == pytest.approx(-1.0)
    assert bad["embed_cosine_min"] == pytest.approx(-1.0)


def test_specs_and_components() -> None:
    s = get_spec("mobileclip_s0")
    assert s.extras["components"] == ("mobileclip_s0_image", "mobileclip_s0_text")
    assert [i.name for i in s.inputs] == ["image", "text"] and s.inputs[1].dtype == "int64"
    assert s.inputs[1].shape == (len(PROMPTS), 77) and s.outputs == ("image_embeds", "text_embeds", "logits_per_image")
    assert get_spec("mobileclip_b_image").inputs[0].shape == (1, 3, 224, 224)
    assert get_spec("mobileclip_s2_image").inputs[0].shape == (1, 3, 256, 256)


def _compile(name: str, out: Path) -> dict:
    from edgeopt.api import compile as eo_compile

    man = eo_compile(name, output=out, samples=2).manifest
    assert man["export"]["parity"]["cosine"] >= 0.9999
    assert man["fidelity"]["cosine"] >= 0.9999 and man["fidelity"]["embed_cosine_min"] >= 0.9999
    return man


def test_s0_whole_model_compiles_with_parity(tmp_path: Path) -> None:
    man = _compile("mobileclip_s0", tmp_path / "b")
    assert man["fidelity"]["zeroshot_top1_agreement"] == 1.0
    assert [o["name"] for o in man["outputs"]] == ["image_embeds", "text_embeds", "logits_per_image"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", [f"mobileclip_{v}{s}" for v in ("s0", "s1", "s2", "b") for s in ("", "_image", "_text") if f"{v}{s}" != "s0"]
)
def test_every_mobileclip_graph_compiles_with_parity(name: str, tmp_path: Path) -> None:
    _compile(name, tmp_path / "b")


@pytest.mark.slow
def test_split_encoders_on_ort_give_the_torch_zero_shot_answer(s0_and_file, tmp_path: Path) -> None:
    """The two exported encoders, run on ONNX Runtime, reproduce torch's zero-shot probabilities."""
    from edgeopt._ort import ort_run_all
    from edgeopt.api import compile as eo_compile
    from edgeopt.models.mobileclip import preprocess_images

    src, path = s0_and_file
    classes = ["astronaut", "cup of coffee", "cat", "rocket"]
    probs = zero_shot("mobileclip_s0", photos(4), classes, module=src)
    img_b = eo_compile("mobileclip_s0_image", weights=path, output=tmp_path / "img", samples=1)
    txt_b = eo_compile("mobileclip_s0_text", weights=path, output=tmp_path / "txt", samples=1)
    imgs = [{"image": x[None]} for x in preprocess_images("s0", photos(4))]
    toks = [{"text": t[None]} for t in tokenize([f"a photo of a {c}." for c in classes])]
    ie = np.concatenate([o["image_embeds"] for o in ort_run_all(img_b.path / "model.onnx", imgs)])
    te = np.concatenate([o["text_embeds"] for o in ort_run_all(txt_b.path / "model.onnx", toks)])
    logits = float(src.logit_scale.exp().clamp(0, 100)) * ie @ te.T
    p = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(p / p.sum(-1, keepdims=True), probs, atol=1e-4)


def vit_b_official(sd: dict) -> dict:
    """timm vit_base_mci_224 keys -> Apple's mobileclip/models/vit.py keys (conv stem `patch_emb.N.block.*`,
    `transformer.N.pre_norm_mha/ffn`, `post_transformer_norm`, `pos_embed.pos_embed.pos_embed` [1,1,196,768],
    `classifier.proj` [768, 512])."""
    out = {}
    for k, v in sd.items():
        if k == "head.bias":
            assert torch.count_nonzero(v) == 0, "the official projection has no bias"
            continue
        if k == "head.weight":
            out["classifier.proj"] = v.t().contiguous()
            continue
        if k == "pos_embed":
            out["pos_embed.pos_embed.pos_embed"] = v.unsqueeze(0)
            continue
        k = re.sub(r"^patch_embed\.backbone\.(\d+)\.conv\.", r"patch_emb.\1.block.conv.", k)
        k = re.sub(r"^patch_embed\.backbone\.(\d+)\.bn\.", r"patch_emb.\1.block.norm.", k)
        k = re.sub(r"^norm\.", "post_transformer_norm.", k)
        k = k.replace(".norm1.", ".pre_norm_mha.0.").replace(".attn.qkv.", ".pre_norm_mha.1.qkv_proj.")
        k = k.replace(".attn.proj.", ".pre_norm_mha.1.out_proj.").replace(".norm2.", ".pre_norm_ffn.0.")
        k = k.replace(".mlp.fc1.", ".pre_norm_ffn.1.").replace(".mlp.fc2.", ".pre_norm_ffn.4.")
        k = re.sub(r"^blocks\.", "transformer.", k)
        out[k] = v
    return out


@pytest.mark.slow
def test_official_vit_b_image_layout_loads(tmp_path: Path) -> None:
    spec = get_spec("mobileclip_b_image")
    src = spec.build()
    _randomize(src, seed=5)
    with torch.no_grad():
        src.model.head.bias.zero_()
    sd = vit_b_official({k[len("model.") :]: v for k, v in src.state_dict().items()})
    assert "patch_emb.0.block.conv.weight" in sd and "transformer.11.pre_norm_ffn.4.weight" in sd
    torch.save({f"image_encoder.model.{k}": v for k, v in sd.items()}, tmp_path / "mobileclip_b.pt")
    dst = spec.build(weights=tmp_path / "mobileclip_b.pt")
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
