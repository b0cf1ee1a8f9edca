"""Torch passes (reparam, prune, lowrank), the pipeline's budget, and calibrated weights.

Unit checks run on small synthetic nets over real photographs; efficientformer_l1 is used where the
real thing matters (timm's own structure), with few samples to stay fast.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _passes_util import RepBlock, Residual, export, make_ctx, outputs, state_equal, tiny_net
from torch import nn

from edgeopt._ort import ort_run_all
from edgeopt.errors import EdgeoptError, SpecError
from edgeopt.passes._measure import rel_max_diff
from edgeopt.passes.base import pass_names
from edgeopt.passes.pipeline import FidelityBudgetError, build_pipeline, run_pipeline


def _count(model: nn.Module, kind) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_passes_registered():
    assert {"reparam", "prune", "lowrank", "quantize"} <= set(pass_names())


def test_reparam_synthetic_is_exact_and_removes_structure(tmp_path):
    net = tiny_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ctx = make_ctx(net, tmp_path)
    (p,) = build_pipeline("reparam")  # with the ONNX node count / ORT latency report
    out, rep = p.run(net, ctx)
    assert state_equal(net, before), "the input model must not be modified"
    assert rep.nodes_after < rep.nodes_before and rep.latency_ms_before > 0 and rep.latency_ms_after > 0
    assert rel_max_diff(ctx.references, outputs(out, ctx)) <= 1e-4
    assert _count(out, nn.modules.batchnorm._BatchNorm) == 0  # conv->BN, BN1d->Linear, RepBlock branches
    assert _count(out, Residual) == 0  # x + dwconv(x) became one conv
    assert all(m.fused is not None for m in out.modules() if isinstance(m, RepBlock))
    hows = " ".join(str(c.get("how")) for c in rep.changes)
    assert "reparameterize()" in hows and "following head" in hows and "identity" in hows
    assert rep.params_after < rep.params_before


def test_reparam_skips_a_bn_whose_input_is_read_twice(tmp_path):
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)

        def forward(self, x):
            y = self.conv(x)
            return (self.bn(y) + y).mean((2, 3))

    torch.manual_seed(0)
    from _passes_util import randomise_bn

    net = randomise_bn(Twice())
    ctx = make_ctx(net, tmp_path)
    out, rep = build_pipeline("reparam:measure_latency=false")[0].run(net, ctx)
    assert rel_max_diff(ctx.references, outputs(out, ctx)) <= 1e-4
    assert isinstance(out.bn, nn.BatchNorm2d)
    assert any("skipped" in n for n in rep.notes)


def test_reparam_efficientformer_exact(tmp_path):
    from edgeopt.models import get_spec

    spec = get_spec("efficientformer_l1")
    torch.manual_seed(0)
    net = spec.build()
    from edgeopt.export import torch_outputs
    from edgeopt.passes.base import PassContext

    samples = spec.sample_inputs(2)
    refs = [torch_outputs(net, s, ["image"], ["logits"]) for s in samples]
    ctx = PassContext("efficientformer_l1", "classification", ["image"], ["logits"], samples, refs, tmp_path)
    out, rep = build_pipeline("reparam:measure_latency=false")[0].run(net, ctx)
    assert rel_max_diff(refs, outputs(out, ctx)) <= 1e-4
    assert _count(out, nn.BatchNorm2d) == 0 and len(rep.changes) == 33


def test_prune_rounds_protects_outputs_and_still_runs_on_ort(tmp_path):
    net = tiny_net(w=32)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ctx = make_ctx(net, tmp_path)
    out, rep = build_pipeline("prune:ratio=0.5,measure_latency=false")[0].run(net, ctx)
    assert state_equal(net, before)
    assert out.head.out_features == 10  # output layer protected
    convs = [m for m in out.modules() if isinstance(m, nn.Conv2d) and m.groups == 1 and m.in_channels > 3]
    assert all(m.out_channels % 8 == 0 for m in convs)
    assert rep.changes and all(a > b for a, b in (c["out_channels"] for c in rep.changes))
    assert rep.macs_after < rep.macs_before and rep.params_after < rep.params_before
    assert any("re-estimated" in n for n in rep.notes)
    path = export(out, ctx, tmp_path / "pruned.onnx")
    ort = ort_run_all(path, ctx.samples)
    assert rel_max_diff(outputs(out, ctx), ort) < 1e-3  # the pruned model exports and runs on ORT


def test_prune_works_on_frozen_weights(tmp_path):
    net = tiny_net(w=32)  # calibrated weights and checkpoints loaded for inference come with requires_grad off
    for p in net.parameters():
        p.requires_grad_(False)
    out, rep = build_pipeline("prune:ratio=0.5,measure_latency=false")[0].run(net, make_ctx(net, tmp_path))
    assert rep.changes and rep.params_after < rep.params_before
    assert not any(p.requires_grad for p in net.parameters())


def test_prune_taylor_global(tmp_path):
    net = tiny_net(w=32)
    ctx = make_ctx(net, tmp_path)
    out, rep = build_pipeline("prune:ratio=0.3,importance=taylor,scope=global,measure_latency=false")[0].run(net, ctx)
    assert rep.params_after < rep.params_before
    assert outputs(out, ctx)[0]["logits"].shape == (1, 10)


def test_prune_names_the_layer_that_stops_it_and_leaves_model_untouched(tmp_path):
    class HardCoded(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 32, 3, padding=1)
            self.b = nn.Conv2d(32, 32, 1)
            self.fc = nn.Linear(32 * 4, 10)

        def forward(self, x):
            x = self.b(torch.relu(self.a(x)))
            x = nn.functional.adaptive_avg_pool2d(x, 2)
            return self.fc(x.reshape(1, 32 * 4))  # hard-coded width: pruning `b` breaks this

    torch.manual_seed(0)
    net = HardCoded().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ctx = make_ctx(net, tmp_path)
    with pytest.raises(EdgeoptError) as e:
        build_pipeline("prune:ratio=0.5,measure_latency=false")[0].run(net, ctx)
    assert "after layer b (Conv2d)" in str(e.value) and "untouched" in str(e.value)
    assert state_equal(net, before)


def test_lowrank_factorises_only_where_it_pays(tmp_path):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.low = nn.Linear(256, 256)
            self.full = nn.Linear(256, 256)
            self.proj = nn.Conv2d(3, 256, 4, 4)

        def forward(self, x):
            t = self.proj(x).flatten(2).transpose(1, 2)  # (1, 64, 256)
            return self.full(torch.relu(self.low(t))).mean(1)

    torch.manual_seed(0)
    net = Two().eval()
    with torch.no_grad():  # an exactly rank-16 weight: energy 0.99 needs rank 16
        net.low.weight.copy_(torch.randn(256, 16) @ torch.randn(16, 256) / 16)
    ctx = make_ctx(net, tmp_path, output="y")
    out, rep = build_pipeline("lowrank:energy=0.99,measure_latency=false")[0].run(net, ctx)
    rows = {c["module"]: c for c in rep.changes}
    assert rows["low"]["applied"] and rows["low"]["rank"] == 16
    assert not rows["full"]["applied"] and "MACs" in rows["full"]["why"]
    assert isinstance(out.low, nn.Sequential) and isinstance(out.full, nn.Linear)
    assert rep.macs_after < rep.macs_before
    assert rel_max_diff(ctx.references, outputs(out, ctx)) < 1e-4


def test_pipeline_budget_stops_with_reports_so_far(tmp_path):
    net = tiny_net()
    ctx = make_ctx(net, tmp_path)
    passes = build_pipeline("reparam:measure_latency=false,prune:ratio=0.5,measure_latency=false")
    with pytest.raises(FidelityBudgetError) as e:
        run_pipeline(passes, net, ctx, export=None, evaluate_torch=lambda m: outputs(m, ctx),
                     evaluate_onnx=lambda p: [], budget=0.999)
    reps = e.value.reports
    assert [r.name for r in reps] == ["reparam", "prune"]
    assert reps[0].fidelity["cosine"] > 0.99999 and reps[1].fidelity["cosine"] < 0.999
    assert "prune" in str(e.value) and "no bundle" in str(e.value)


def test_bad_specs_list_the_valid_options():
    with pytest.raises(SpecError, match="ratio"):
        build_pipeline("prune:rate=0.3")
    with pytest.raises(SpecError, match="unknown pass 'prnue'.*did you mean prune"):
        build_pipeline("prnue")
    with pytest.raises(SpecError, match="energy"):
        build_pipeline("lowrank:energy=high")
    assert build_pipeline("lowrank:skip=head")[0].config.skip == ["head"]  # one item of a list option
    assert build_pipeline("lowrank:skip=head|head_dist")[0].config.skip == ["head", "head_dist"]


@pytest.mark.parametrize("spec, message", [
    ("prune:ratio=1.5", "pass 'prune': option ratio: must lie in (0, 1), got 1.5"),
    ("prune:ratio=0", "pass 'prune': option ratio: must lie in (0, 1), got 0.0"),
    ("prune:round_to=0", "pass 'prune': option round_to: must be at least 1, got 0"),
    ("prune:max_layer_ratio=1.2", "pass 'prune': option max_layer_ratio: must lie in (0, 1], got 1.2"),
    ("lowrank:rank_ratio=2", "pass 'lowrank': option rank_ratio: must lie in (0, 1], got 2.0"),
    ("lowrank:energy=0", "pass 'lowrank': option energy: must lie in (0, 1], got 0.0"),
])
def test_option_ranges_fail_when_the_pipeline_is_parsed(spec, message):
    with pytest.raises(SpecError) as e:
        build_pipeline(spec)
    assert e.value.message == message and "\n" not in str(e.value)
    assert build_pipeline("lowrank:energy=1,rank_ratio=1")[0].config.rank_ratio == 1.0  # closed ends hold


def test_torch_passes_say_why_they_do_not_apply():
    net = nn.Linear(4, 4)
    assert build_pipeline("lowrank")[0].applies_to("model.onnx", None) == (False, "lowrank works on a torch module")
    assert build_pipeline("reparam")[0].applies_to("model.onnx", None) == (False, "reparam works on a torch module")
    assert build_pipeline("prune")[0].applies_to(net, None) == (True, "")


def test_pass_registry_lists_passes_without_importing_them():
    from edgeopt.passes.base import PASSES, get_pass_class

    assert set(PASSES.names()) == set(pass_names())
    assert get_pass_class("reparam").name == "reparam"


def test_calibrated_weights_are_confident_and_deterministic():
    from _tiny import tiny_spec

    from edgeopt.calibrate import build_calibrated

    spec = tiny_spec()
    a, la = build_calibrated(spec, train_images=60, test_images=20, epochs=2)
    b, lb = build_calibrated(spec, train_images=60, test_images=20, epochs=2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert la == {**lb, "seconds": la["seconds"]}
    c, lc = build_calibrated(spec, train_images=200, test_images=100, epochs=40)
    assert lc["kind"] == "calibrated" and "load_digits" in lc["dataset"] and lc["trained"] == "whole model"
    # ten classes: chance is 0.1 accuracy and ~0.1 top-1 probability for flat logits
    assert lc["test_accuracy"] >= 0.2 and lc["mean_top1_prob"] >= 0.2, lc


@pytest.mark.slow
def test_calibrated_api_labels_the_manifest(tmp_path):
    from _tiny import tiny_spec

    import edgeopt

    spec = tiny_spec()
    b = edgeopt.compile(spec.name, weights="calibrated", output=tmp_path / "cal.bundle", samples=2)
    w = b.manifest["weights"]
    assert w["kind"] == "calibrated" and w["test_accuracy"] > 0.2  # chance is 0.1 (ten digits); this tiny net reads 0.36
    assert np.isfinite(b.manifest["fidelity"]["cosine"])
