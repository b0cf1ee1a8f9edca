"""TinyGPT-V part builds: a part allocates only its own components, each component's weights come from its own
seed (so a part equals the same part of a whole build), the init distributions are the modules' own, the
full-size parts build on meta, the prefill/decode samples come from the part builds, and checkpoints load into
a part's meta components. The slow test builds the full-size vision part for real."""

from __future__ import annotations

import pytest
import torch

from edgeopt.errors import EdgeoptError
from edgeopt.models._tinygpt_v_net import COMPONENTS, TINY, TinyGPTV, component_params
from edgeopt.models.tinygpt_v import build_tinygpt_v

VISION = ("visual_encoder", "ln_vision", "query_tokens", "qformer", "llama_proj", "llama_proj2")


@pytest.fixture(scope="module")
def whole():
    return build_tinygpt_v("tiny")


def _real(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.device.type != "meta")


def test_part_builds_allocate_only_their_part(whole):
    c = component_params(whole)
    assert whole.materialized() == list(COMPONENTS) and _real(whole) == c["total"]
    vision = build_tinygpt_v("tiny", "vision")
    assert vision.full.materialized() == list(VISION)
    assert _real(vision.full) == _real(vision) == c["vision_encoder"] + c["qformer"] + c["projections"]
    assert all(p.device.type == "meta" for p in vision.full.llama_model.parameters())
    for part in ("prefill", "decode"):
        m = build_tinygpt_v("tiny", part)
        assert m.full.materialized() == ["llama_model"]
        assert _real(m.full) == _real(m) == c["llm"]
        assert all(p.device.type == "meta" for p in m.full.visual_encoder.parameters())


def test_parts_equal_the_whole_build(whole):
    """Per-component seeding: each part's weights (and buffers) equal the same names in the whole build."""
    want = whole.state_dict()
    for part in ("vision", "prefill", "decode"):
        got = build_tinygpt_v("tiny", part).state_dict()
        assert got and all(torch.equal(v, want[k]) for k, v in got.items()), part
    other = build_tinygpt_v("tiny", "vision", seed=1).state_dict()
    assert not torch.equal(other["llama_proj.weight"], want["llama_proj.weight"])


def test_seeded_build_keeps_each_modules_init():
    """Every tensor has the spread the component's own constructor gives it (timm Eva's trunc-normal,
    Blip2QFormer's `_init_weights`, torch's nn defaults): the seeded build changes seeds, not distributions."""
    torch.manual_seed(0)
    plain = TinyGPTV(TINY).state_dict()
    seeded = TinyGPTV.build_seeded(TINY, seed=0).state_dict()
    assert plain.keys() == seeded.keys()
    for k, v in seeded.items():
        if v.numel() < 256 or not v.is_floating_point():
            torch.testing.assert_close(v.mean(), plain[k].mean(), atol=0.02, rtol=0.3, msg=k)
            continue
        assert float(v.std()) == pytest.approx(float(plain[k].std()), rel=0.25), k


def test_full_parts_build_on_meta():
    counts = {}
    for part in ("whole", "vision", "prefill", "decode"):
        m = build_tinygpt_v("full", part, device="meta")
        assert all(p.device.type == "meta" for p in m.parameters())
        counts[part] = sum(p.numel() for p in m.parameters())
    assert counts["prefill"] == counts["decode"] == 2_779_776_000
    assert counts["vision"] + counts["prefill"] == counts["whole"]
    with pytest.raises(EdgeoptError, match="unknown TinyGPT-V part"):
        build_tinygpt_v("tiny", "encoder", device="meta")


def test_prefill_and_decode_samples_come_from_the_part_builds(whole):
    from edgeopt.models.tinygpt_v import _prefill_and_decode_samples, _text_samples

    pre, dec = _prefill_and_decode_samples("tiny", 2)
    with torch.inference_mode():
        for s, p, d in zip(_text_samples("tiny", 2), pre, dec, strict=True):
            emb = whole.encode_image(torch.from_numpy(s["image"]))
            torch.testing.assert_close(torch.from_numpy(p["image_embeds"]), emb, rtol=0, atol=0)
            logits, presents = whole.prefill(emb, torch.from_numpy(s["prefix_ids"]), torch.from_numpy(s["suffix_ids"]))
            assert int(d["input_ids"][0, 0]) == int(logits[0].argmax())
            torch.testing.assert_close(torch.from_numpy(d["past.1.value"]), presents[1][1], rtol=0, atol=0)


def test_checkpoint_fills_a_parts_meta_components(tmp_path, whole):
    """Loading a whole checkpoint into a vision part gives its meta LLM the checkpoint's weights (no copy)."""
    from edgeopt.models.tinygpt_v import load_tinygpt_v_checkpoint

    sd = {k: v + 0.5 for k, v in whole.state_dict().items()}
    path = tmp_path / "tgv.pt"
    torch.save({"model": sd}, path)
    part = build_tinygpt_v("tiny", "vision")
    load_tinygpt_v_checkpoint(part, path)
    got = part.full.state_dict()
    assert part.full.materialized() == list(COMPONENTS)
    for k, v in sd.items():
        torch.testing.assert_close(got[k], v, msg=k)
    inv = part.full.llama_model.model.layers[0].self_attn.inv_freq
    assert inv.device.type == "cpu" and torch.equal(inv, whole.llama_model.model.layers[0].self_attn.inv_freq)


@pytest.mark.slow
def test_full_vision_part_builds_and_runs():
    """The full-size vision part alone (1.1 B fp32, about 4.5 GB): 32 image tokens of Phi-2's width."""
    m = build_tinygpt_v("full", "vision")
    assert m.full.materialized() == list(VISION)
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(1.1047e9, rel=1e-3)
    with torch.inference_mode():
        out = m(torch.randn(1, 3, 224, 224))
    assert tuple(out.shape) == (1, 32, 2560) and torch.isfinite(out).all()
