"""TinyGPT-V: component counts of the full model (meta device), the tiny model's KV-cache generation, the split
ONNX graphs reproducing torch's greedy tokens through ONNX Runtime, compile + profile of the single graph,
tokenizer files, official-layout checkpoints (with a LoRA adapter), and the language_model metric."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import edgeopt
from edgeopt.errors import CheckpointError, EdgeoptError
from edgeopt.models import build, get_spec

TINY = "tinygpt_v_tiny"
PARTS = ("vision", "prefill", "decode")


@pytest.fixture(scope="module")
def tiny():
    return build(TINY)


def _sample(i: int = 0) -> dict[str, np.ndarray]:
    return get_spec(TINY).sample_inputs(i + 1)[i]


def _t(s: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(s[k]) for k in ("image", "prefix_ids", "suffix_ids"))


def test_full_component_counts_on_meta():
    from edgeopt.models._tinygpt_v_net import component_params

    spec = get_spec("tinygpt_v")
    model = spec.build(device="meta")
    assert next(model.parameters()).device.type == "meta"
    c = component_params(model)
    paper = spec.extras["paper_components_m"]
    # Paper: 2.8 B = Phi-2 (2.78 B) + projections; EVA ViT-g/14 ~1.0 B on top.
    assert abs(c["llm_plus_projections"] / 1e6 - spec.paper.params_m) / spec.paper.params_m < 0.03
    assert abs(c["llm"] / 1e6 - paper["phi2"]) / paper["phi2"] < 0.03
    assert abs(c["vision_encoder"] / 1e6 - paper["vision_encoder"]) / paper["vision_encoder"] < 0.03
    assert c["projections"] == 768 * 4096 + 4096 + 4096 * 2560 + 2560
    assert 0.09e9 < c["qformer"] < 0.12e9
    assert c["total"] == sum(c[k] for k in ("vision_encoder", "qformer", "projections", "llm"))
    # TinyGPT-V's additions to Phi-2 are present in every layer: per-head QK LayerNorm, attention-output RMSNorm.
    layer = model.llama_model.model.layers[0]
    assert tuple(layer.self_attn.q_layernorm.weight.shape) == (80,)
    assert tuple(layer.post_layernorm.weight.shape) == (2560,)
    assert len(model.visual_encoder.blocks) == 39 and model.query_tokens.shape[1] == 32
    assert set(spec.extras["components"]) == set(PARTS)


def test_kv_cache_generation_equals_full_recompute(tiny):
    """The cached greedy loop gives the same tokens as re-running the whole sequence at every step."""
    img, pre, suf = _t(_sample(0))
    tokens = tiny.generate(img, pre, suf, max_new_tokens=8, eos_token_id=-1)
    assert len(tokens) == 8
    with torch.inference_mode():
        emb = tiny.encode_image(img)
        ref: list[int] = []
        for _ in range(8):
            ids = torch.cat([suf, torch.tensor([ref], dtype=torch.int64).reshape(1, -1)], dim=1)
            ref.append(int(tiny.prefill(emb, pre, ids)[0][0].argmax()))
    assert tokens == ref


@pytest.fixture(scope="module")
def part_bundles(tmp_path_factory, tiny):
    """The three split specs compiled for ONNX Runtime from the same model object."""
    from edgeopt.models._tinygpt_v_net import PrefillPart, VisionPart, make_decode_part

    root = tmp_path_factory.mktemp("tinygpt")
    mods = {"vision": VisionPart(tiny), "prefill": PrefillPart(tiny), "decode": make_decode_part(tiny)}
    return {p: edgeopt.compile(f"{TINY}_{p}", output=root / p, samples=2, module=mods[p]) for p in PARTS}


def test_split_onnx_decode_loop_reproduces_torch_greedy_tokens(part_bundles, tiny):
    from edgeopt.llm import OnnxVLM

    for b in part_bundles.values():
        assert b.manifest["export"]["exporter"] == "dynamo", b.manifest["export"]
        assert b.manifest["fidelity"]["cosine"] > 0.9999
    dec = part_bundles["decode"].manifest
    assert dec["fidelity"]["next_token_agreement"] == 1.0
    vlm = OnnxVLM(*(part_bundles[p].path / "model.onnx" for p in PARTS))
    spec = get_spec(TINY)
    for s in spec.sample_inputs(3):
        want = tiny.generate(*_t(s), max_new_tokens=12, eos_token_id=-1)
        got = vlm.generate(s["image"], s["prefix_ids"], s["suffix_ids"], max_new_tokens=12, eos_token_id=-1)
        assert got == want
        assert len(set(want)) > 1  # a loop that repeats one token would prove little


def test_whole_graph_compiles_and_profiles(tmp_path, tiny):
    b = edgeopt.compile(f"{TINY}_whole", output=tmp_path / "whole", samples=2, module=tiny)
    m = b.manifest
    assert m["model"]["task"] == "vlm" and [i["name"] for i in m["inputs"]] == ["image", "prefix_ids", "suffix_ids"]
    assert m["outputs"][0]["shape"] == [1, get_spec(TINY).extras["config"]["vocab_size"]]
    assert m["fidelity"]["next_token_agreement"] == 1.0
    res = edgeopt.profile(b.path, runs=5, warmup=1, min_seconds=0.1, store=False)
    assert res["latency_ms"]["p50"] > 0


def test_tokenizer_from_local_file(tmp_path):
    from edgeopt.llm import EOS_TOKEN, encode, load_tokenizer, train_tokenizer
    from edgeopt.models.tinygpt_v import CAPTIONS

    path = tmp_path / "tokenizer.json"
    train_tokenizer(CAPTIONS, vocab_size=300, path=path)
    assert json.loads(path.read_text())["model"]["type"] == "BPE"
    tok = load_tokenizer(path)
    ids = encode(tok, "A cat sits on a wooden table.")
    assert ids.dtype == np.int64 and ids.shape[0] == 1 and ids.max() < 300
    assert tok.decode(ids[0].tolist()) == "A cat sits on a wooden table."
    assert tok.token_to_id(EOS_TOKEN) == 0
    with pytest.raises(EdgeoptError, match="does not exist"):
        load_tokenizer(tmp_path / "missing" / "tokenizer.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(EdgeoptError, match="cannot read tokenizer"):
        load_tokenizer(bad)


def _official_layout(model, lora_r: int = 4, alpha: float = 16.0) -> tuple[dict, dict]:
    """The model's weights under TinyGPT-V/MiniGPT-4's key names, with the LLM PEFT-wrapped and a LoRA adapter
    on every `query_key_value`; also the merged weights the loader must produce."""
    official, expect = {}, {}
    g = torch.Generator().manual_seed(1)
    for k, v in model.state_dict().items():
        v = v.clone() + 0.01 * torch.randn(v.shape, generator=g)  # differ from the seeded init
        expect[k] = v
        if k.startswith("qformer."):
            o = k.replace("qformer.layernorm.", "Qformer.bert.embeddings.LayerNorm.").replace("qformer.encoder.", "Qformer.bert.encoder.")
            o = o.replace(".attention.attention.", ".attention.self.").replace(".crossattention.attention.", ".crossattention.self.")
            official[o] = v
        elif k.startswith("llama_model."):
            o = "llama_model.base_model.model." + k[len("llama_model."):]
            if ".query_key_value." in k:
                o = o.replace(".query_key_value.", ".query_key_value.base_layer.")
                if k.endswith(".weight"):
                    a = torch.randn(lora_r, v.shape[1], generator=g) * 0.1
                    b = torch.randn(v.shape[0], lora_r, generator=g) * 0.1
                    base = k[: -len(".weight")].replace("llama_model.", "llama_model.base_model.model.", 1)
                    official[f"{base}.lora_A.default.weight"] = a
                    official[f"{base}.lora_B.default.weight"] = b
                    expect[k] = v + (b @ a) * (alpha / lora_r)
            official[o] = v
        else:
            official[k] = v
    official["Qformer.bert.embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    return official, expect


def test_official_checkpoint_layout_loads(tmp_path, tiny):
    official, expect = _official_layout(tiny)
    assert any(k.startswith("Qformer.bert.encoder.layer.0.crossattention.self.") for k in official)
    path = tmp_path / "tinygpt_v_stage4.pth"
    torch.save({"model": official, "epoch": 3}, path)
    for part in ("", "_decode"):
        m = build(TINY + part, weights=path)
        full = getattr(m, "full", m)
        for k, v in full.state_dict().items():
            torch.testing.assert_close(v, expect[k], msg=k)
    s = _sample(0)
    m = build(TINY, weights=path)
    with torch.inference_mode():
        assert not torch.allclose(m(*_t(s)), tiny(*_t(s)))


def test_stage_checkpoint_alone_is_refused_and_merged_sources_load(tmp_path, tiny):
    """The released files: EVA, BLIP-2 (with its text branch and T5 projection), Phi-2, and a stage checkpoint
    holding only trained weights (projections, LoRA, norms). Alone the stage file is refused; merged they load."""
    from edgeopt.models.tinygpt_v import merge_checkpoints

    official, expect = _official_layout(tiny)
    eva = {k[len("visual_encoder."):]: v for k, v in official.items() if k.startswith("visual_encoder.")}
    blip2 = {k: v for k, v in official.items() if k.startswith(("Qformer.", "query_tokens", "ln_vision."))}
    blip2["Qformer.bert.embeddings.word_embeddings.weight"] = torch.zeros(30523, 64)
    blip2["Qformer.bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(128, 64)
    blip2["Qformer.bert.encoder.layer.0.output.LayerNorm.weight"] = torch.zeros(64)
    blip2["t5_proj.weight"] = torch.zeros(2048, 64)
    stage = {k: v for k, v in official.items() if k.startswith("llama_proj") or ".lora_" in k or "layernorm" in k}
    phi = {k[len("llama_model.base_model.model."):]: v for k, v in official.items()
           if k.startswith("llama_model.") and ".lora_" not in k}
    files = {}
    for name, sd in (("eva_vit_g", eva), ("blip2", blip2), ("phi2", phi), ("stage4", stage)):
        files[name] = tmp_path / f"{name}.pth"
        torch.save({"model": sd} if name != "eva_vit_g" else sd, files[name])
    with pytest.raises(CheckpointError, match="lacks whole components.*EVA ViT-g.*Q-Former"):
        build(TINY, weights=files["stage4"])
    merged = merge_checkpoints(tmp_path / "tinygpt_v_full.pth", [
        (files["eva_vit_g"], "visual_encoder."), (files["blip2"], ""), (files["phi2"], "llama_model."), (files["stage4"], ""),
    ])
    m = build(TINY, weights=merged)
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, expect[k], msg=k)


def test_checkpoint_for_another_width_names_key_and_shapes(tmp_path, tiny):
    sd = {k: v.clone() for k, v in tiny.state_dict().items()}
    sd["llama_proj2.weight"] = torch.zeros(96, 128)
    path = tmp_path / "other.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match=r"llama_proj2\.weight.*\(96, 128\).*\(80, 128\)"):
        build(TINY, weights=path)
    with pytest.raises(CheckpointError, match="does not exist"):
        build(TINY, weights=tmp_path / "nope.pth")


def test_language_model_metric_sees_changed_tokens():
    from edgeopt.fidelity import perplexity, task_metrics

    rng = np.random.default_rng(0)
    refs = [{"logits": rng.normal(size=(1, 512)).astype(np.float32)} for _ in range(16)]
    same = task_metrics("language_model", refs, refs)
    assert same["next_token_agreement"] == 1.0 and abs(same["ppl_change"]) < 1e-9
    noisy = [{"logits": r["logits"] + rng.normal(scale=2.0, size=r["logits"].shape).astype(np.float32)} for r in refs]
    m = task_metrics("language_model", refs, noisy)
    assert m["next_token_agreement"] < 1.0 and m["ppl_change"] > 0 and m["kl"] > 0
    uniform = np.zeros((3, 10))
    assert perplexity(uniform, np.array([1, 2, 3])) == pytest.approx(10.0)


def test_text_perplexity_through_onnx_matches_torch(part_bundles, tiny):
    """A caption's perplexity as the answer, teacher-forced through the exported cache, equals torch's."""
    from edgeopt.llm import OnnxVLM
    from edgeopt.models.tinygpt_v import CAPTIONS, sample_tokenizer

    s = _sample(1)
    text = sample_tokenizer(512).encode(CAPTIONS[1]).ids
    vlm = OnnxVLM(*(part_bundles[p].path / "model.onnx" for p in PARTS))
    nll = vlm.text_nll(s["image"], s["prefix_ids"], s["suffix_ids"], text)
    img, pre, suf = _t(s)
    with torch.inference_mode():
        emb = tiny.encode_image(img)
        full_ids = torch.cat([suf, torch.tensor([text], dtype=torch.int64)], dim=1)
        x = torch.cat([tiny.embed(pre), emb, tiny.embed(full_ids)], dim=1)
        logits, _ = tiny.llama_model(x)
        n_text = len(text)
        lp = torch.log_softmax(logits[0, -n_text - 1 : -1].double(), -1)
        want = [-float(lp[i, t]) for i, t in enumerate(text)]
    np.testing.assert_allclose(nll, want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_full_model_builds_on_meta_for_every_part():
    for part in PARTS:
        from edgeopt.models.tinygpt_v import build_tinygpt_v

        m = build_tinygpt_v("full", part, device="meta")
        assert next(m.parameters()).device.type == "meta"


def test_registry_lists_the_family():
    names = edgeopt.list_models()
    for n in ("tinygpt_v", TINY, *(f"{TINY}_{p}" for p in PARTS)):
        assert n in names
    assert Path(get_spec(TINY).extras["components"]["decode"]) == Path(f"{TINY}_decode")


def test_parts_hold_only_their_own_weights(tiny):
    from edgeopt.models._tinygpt_v_net import component_params

    c = component_params(tiny)
    n = {p: sum(x.numel() for x in build(f"{TINY}_{p}").parameters()) for p in PARTS}
    assert n["vision"] == c["vision_encoder"] + c["qformer"] + c["projections"]
    assert n["prefill"] == n["decode"] == c["llm"]


@pytest.mark.slow
def test_int8_decode_step_keeps_the_language_metric(tmp_path):
    """Static int8 (ORT QDQ) of the decode graph, calibrated on real KV caches: the metric is reported and sane."""
    b = edgeopt.compile(f"{TINY}_decode", passes="quantize:int8", output=tmp_path / "dec-int8", samples=4)
    f = b.manifest["fidelity"]
    assert f["cosine"] > 0.99 and f["next_token_agreement"] >= 0.75
    assert np.isfinite(f["ppl_change"]) and abs(f["ppl_change"]) < 0.2
