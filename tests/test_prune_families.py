"""prune on the zoo families torch-pruning cannot handle alone: SHViT (single-head attention on part of
the channels) and MobileCLIP's MCi image encoder (grouped convs with a channel multiplier).

Real models (random init, seeded), real photographs, the pruned model exported and run on ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _passes_util import state_equal

from edgeopt._ort import ort_run_all
from edgeopt.export import export_onnx, torch_outputs
from edgeopt.passes._measure import rel_max_diff, run_torch
from edgeopt.passes.base import PassContext
from edgeopt.passes.pipeline import build_pipeline


def _ctx(name: str, tmp_path, n: int = 2):
    from edgeopt.models import get_spec

    spec = get_spec(name)
    torch.manual_seed(0)
    net = spec.build().eval()
    ins, outs = [i.name for i in spec.inputs], list(spec.outputs)
    samples = spec.sample_inputs(n)
    refs = [torch_outputs(net, s, ins, outs) for s in samples]
    return net, PassContext(name, spec.task, ins, outs, samples, refs, tmp_path)


def _runs_on_ort(model, ctx, path) -> None:
    export_onnx(model, ctx.samples[0], ctx.input_names, ctx.output_names, path)
    assert rel_max_diff(run_torch(model, ctx), ort_run_all(path, ctx.samples)) < 1e-3


def _shsa(model):
    from timm.models.shvit import SHSA

    return [m for m in model.modules() if isinstance(m, SHSA)]


def test_shvit_registers_its_prune_rule():
    from timm.models.shvit import SHSA

    from edgeopt.passes.prune_rules import PRUNE_RULES, family_rules

    rules = family_rules()  # imports prune_rules/*, where each family registers its rule
    rule = PRUNE_RULES.get("shvit")
    assert rule in rules and SHSA in rule.leaf_pruners() and rule.reason == "attention blocks"


def test_prune_shvit_protects_attention(tmp_path):
    # (the report's ORT latency figures are tested on a small net in test_passes.py)
    net, ctx = _ctx("shvit_s1", tmp_path)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out, rep = build_pipeline("prune:ratio=0.3,measure_latency=false")[0].run(net, ctx)
    assert state_equal(net, before)
    assert rep.macs_after < 0.8 * rep.macs_before and rep.params_after < rep.params_before
    assert "attention blocks" in rep.notes[0]
    for a, b in zip(_shsa(net), _shsa(out), strict=True):  # single-head attention left whole
        assert (a.dim, a.pdim) == (b.dim, b.pdim) and a.qkv.c.weight.shape == b.qkv.c.weight.shape
    narrowed = {c["module"] for c in rep.changes}
    assert any(".ffn.m.pw1" in m for m in narrowed)  # FFN hidden widths are what is pruned
    assert all(c["out_channels"][1] % 8 == 0 for c in rep.changes)
    _runs_on_ort(out, ctx, tmp_path / "pruned.onnx")


def test_prune_shvit_attention_with_its_own_pruner(tmp_path):
    net, ctx = _ctx("shvit_s1", tmp_path)
    out, rep = build_pipeline("prune:ratio=0.3,protect_attention=false,measure_latency=false")[0].run(net, ctx)
    pairs = list(zip(_shsa(net), _shsa(out), strict=True))
    assert any(b.dim < a.dim for a, b in pairs)  # residual channels through SHSA were pruned
    for _, b in pairs:  # and each SHSA stayed consistent: split sizes, qkv, norm and projection agree
        assert b.qkv.c.in_channels == b.pre_norm.num_channels == b.pdim
        assert b.qkv.c.out_channels == 2 * b.qk_dim + b.pdim and b.proj[1].c.in_channels == b.dim
    _runs_on_ort(out, ctx, tmp_path / "pruned.onnx")


@pytest.mark.parametrize("reparam", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_prune_mobileclip_image_freezes_multiplier_convs(tmp_path, reparam):
    net, ctx = _ctx("mobileclip_s0_image", tmp_path)
    if reparam:
        net, _ = build_pipeline("reparam:measure_latency=false")[0].run(net, ctx)
    grouped = {n: (m.in_channels, m.out_channels) for n, m in net.named_modules()
               if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups != m.out_channels}
    out, rep = build_pipeline("prune:ratio=0.3,measure_latency=false")[0].run(net, ctx)
    assert rep.macs_after < 0.9 * rep.macs_before
    assert "grouped convs" in rep.notes[0]
    mods = dict(out.named_modules())
    assert all((mods[n].in_channels, mods[n].out_channels) == io for n, io in grouped.items())
    emb = run_torch(out, ctx)[0][ctx.output_names[0]]
    assert emb.shape == ctx.references[0][ctx.output_names[0]].shape and np.isfinite(emb).all()
    _runs_on_ort(out, ctx, tmp_path / "pruned.onnx")
