"""Accuracy that passes keep: prune with recovery (distillation from the unpruned model) and accuracy-controlled
quantization (quantize:int8,max_drop=POINTS).

Real data throughout: scikit-learn's bundled digits (upsampled) as calibration and evaluation splits, a
tiny classifier calibrated on them (`edgeopt.calibrate`), and a small token model exported to ONNX whose
one outlier channel int8 cannot hold, so plain int8 loses top-1 and accuracy control has to win it back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _passes_util import state_equal
from torch import nn

from edgeopt._ort import ort_run_all
from edgeopt.errors import EdgeoptError, SpecError
from edgeopt.export import export_onnx, torch_outputs
from edgeopt.fidelity import task_metrics
from edgeopt.passes._accuracy import accuracy_drop, evaluation_split
from edgeopt.passes.base import PassContext
from edgeopt.passes.pipeline import build_pipeline


def _digits(n: int, offset: int, size: int = 32) -> list[dict[str, np.ndarray]]:
    """n load_digits images (fixed shuffled order from `offset`), upsampled to size x size, 3 channels, normalised."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(1234).permutation(len(d.target))[offset : offset + n]
    x = torch.from_numpy(d.images[order].astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x = (x - 0.45) / 0.25
    return [{"image": x[i : i + 1].numpy()} for i in range(n)]


def _ctx(model: nn.Module, work: Path, calib: list[dict[str, np.ndarray]], evals: list[dict[str, np.ndarray]],
         labels: np.ndarray | None = None) -> PassContext:
    refs = [torch_outputs(model, s, ["image"], ["logits"]) for s in calib]
    erefs = [torch_outputs(model, s, ["image"], ["logits"]) for s in evals]
    return PassContext(
        model_name=type(model).__name__, task="classification", input_names=["image"], output_names=["logits"],
        samples=calib, references=refs, workdir=work, fidelity=lambda o: task_metrics("classification", refs, o),
        eval_samples=evals, eval_references=erefs, eval_labels=labels,
    )


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("spec, message", [
    ("prune:recover=-1", "pass 'prune': option recover: must lie in [0, 100000], got -1"),
    ("prune:recover=100,recover_lr=0", "pass 'prune': option recover_lr: must lie in (0, 0.1], got 0.0"),
    ("prune:recover=100,recover_batch=0", "pass 'prune': option recover_batch: must lie in [1, 1024], got 0"),
    ("prune:recover=100,recover_temperature=0", "pass 'prune': option recover_temperature: must lie in (0, 100], got 0.0"),
    ("quantize:int8,max_drop=-0.5", "pass 'quantize': option max_drop: must lie in [0, 100], got -0.5"),
    ("quantize:int8,max_drop=101", "pass 'quantize': option max_drop: must lie in [0, 100], got 101.0"),
    ("quantize:fp16,max_drop=0.5", "pass 'quantize': option max_drop: keeps static int8 nodes in float, and mode 'fp16' has none (use int8 or mixed)"),
])
def test_option_ranges_fail_when_the_pipeline_is_parsed(spec, message):
    with pytest.raises(SpecError) as e:
        build_pipeline(spec)
    assert e.value.message == message and "\n" not in str(e.value)


@pytest.mark.parametrize("backend", ["tflite", "coreml", "executorch"])
def test_backends_with_their_own_quantizer_refuse_max_drop(backend, tmp_path):
    """max_drop keeps ONNX nodes in float; a backend that quantizes itself would silently ignore it."""
    from edgeopt import api
    from edgeopt.runtimes.base import get_backend

    be = get_backend(backend)
    if not be.available()[0]:
        pytest.skip(f"{backend} is not installed")
    with pytest.raises(EdgeoptError, match="cannot keep chosen layers in float"):
        api.compile("efficientformer_l1", backend=backend, passes="quantize:int8,max_drop=0.5", output=tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_options_parse_with_their_defaults():
    p = build_pipeline("prune:ratio=0.3,recover=200")[0]
    assert p.config.recover == 200 and p.config.recover_batch == 16 and p.config.recover_augment
    assert build_pipeline("prune")[0].config.recover == 0  # recovery is opt-in
    q = build_pipeline("quantize:int8,max_drop=0.5")[0]
    assert q.config.max_drop == 0.5 and build_pipeline("quantize:int8")[0].config.max_drop is None
    assert build_pipeline("quantize:mixed,max_drop=0")[0].config.max_drop == 0.0  # closed end holds


# ---------------------------------------------------------------- prune recovery


@pytest.fixture(scope="module")
def calibrated_tiny():
    from _tiny import tiny_spec

    from edgeopt.calibrate import build_calibrated

    spec = tiny_spec()
    module, label = build_calibrated(spec, train_images=200, test_images=100, epochs=40)
    return spec, module, label


@pytest.mark.slow  # ~30 s on an idle 2-core machine (calibration + 300 steps), minutes under load
def test_recovery_raises_agreement_over_plain_pruning(calibrated_tiny, tmp_path):
    from edgeopt.calibrate import digit_images

    spec, module, label = calibrated_tiny
    x, _ = digit_images(spec, 96, offset=label["train_images"] + label["test_images"])  # digits calibration never saw
    calib = [{"image": x[i : i + 1].numpy()} for i in range(64)]
    evals = [{"image": x[i : i + 1].numpy()} for i in range(64, 96)]
    before = {k: v.clone() for k, v in module.state_dict().items()}
    ctx = _ctx(module, tmp_path, calib, evals)
    plain, prep = build_pipeline("prune:ratio=0.5,calibration_samples=64,measure_latency=false")[0].run(module, ctx)
    rec, rrep = build_pipeline("prune:ratio=0.5,recover=300,recover_lr=0.003,measure_latency=false")[0].run(module, ctx)
    assert state_equal(module, before), "the unpruned model (the teacher) must not change"
    assert prep.recovery is None
    r = rrep.recovery
    assert r is not None and r.steps == 300 and r.seconds > 0 and "evaluation split (32 samples)" in r.evaluated_on
    assert r.augment == "crop+flip" and r.calibration_samples == 64
    # same pruning either way: recovery starts from the plain pruned model
    assert rrep.params_after == prep.params_after
    assert r.fidelity_before["top1_agreement"] == pytest.approx(_eval_agreement(plain, ctx))
    after = _eval_agreement(rec, ctx)
    assert after == pytest.approx(r.fidelity_after["top1_agreement"])
    assert r.loss_last < 0.5 * r.loss_first
    assert r.fidelity_after["kl"] < 0.5 * r.fidelity_before["kl"]
    assert after >= r.fidelity_before["top1_agreement"] + 0.15, (r.fidelity_before, r.fidelity_after)
    assert any(n.startswith("recovery: 300 distillation steps") for n in rrep.notes)
    assert rrep.to_dict()["recovery"]["steps"] == 300  # into the manifest with the pass report


def _eval_agreement(model: nn.Module, ctx: PassContext) -> float:
    outs = [torch_outputs(model, s, ctx.input_names, ctx.output_names) for s in ctx.eval_samples]
    return task_metrics("classification", ctx.eval_references, outs)["top1_agreement"]


def test_recovery_brings_a_pruned_net_back_towards_fp32_on_held_out_digits(tmp_path):
    """The fast check: a small random-weight net on real digits, prune 0.5, 60 steps; the evaluation digits
    are disjoint from the calibration ones, and both plain pruning and recovery are measured on them."""
    from _passes_util import tiny_net

    net = tiny_net(w=32)
    ctx = _ctx(net, tmp_path, _digits(32, 0), _digits(32, 200))
    # recovery re-estimates BN on every calibration sample: plain pruning does the same here
    plain, _ = build_pipeline("prune:ratio=0.5,calibration_samples=32,measure_latency=false")[0].run(net, ctx)
    rec, rep = build_pipeline("prune:ratio=0.5,recover=60,recover_lr=0.003,measure_latency=false")[0].run(net, ctx)
    r = rep.recovery
    outs = lambda m: [torch_outputs(m, s, ["image"], ["logits"]) for s in ctx.eval_samples]  # noqa: E731
    plain_m, rec_m = task_metrics("classification", ctx.eval_references, outs(plain)), task_metrics("classification", ctx.eval_references, outs(rec))
    assert r.fidelity_before["cosine"] == pytest.approx(plain_m["cosine"]) and r.fidelity_after["cosine"] == pytest.approx(rec_m["cosine"])
    assert rec_m["kl"] < 0.5 * plain_m["kl"] and rec_m["cosine"] > plain_m["cosine"], (plain_m, rec_m)
    assert rec_m["top1_agreement"] >= plain_m["top1_agreement"]


def test_recovery_without_an_evaluation_split_says_so(tmp_path):
    from _passes_util import make_ctx, tiny_net

    net = tiny_net(w=32)
    ctx = make_ctx(net, tmp_path, n=4)
    _, rep = build_pipeline("prune:ratio=0.5,recover=3,recover_augment=false,measure_latency=false")[0].run(net, ctx)
    assert rep.recovery.augment == "none" and "no evaluation split" in rep.recovery.evaluated_on
    assert rep.recovery.steps == 3 and np.isfinite(rep.recovery.loss_last)


def test_recovery_distils_non_classifiers_with_mse(tmp_path):
    from _passes_util import make_ctx, tiny_net

    net = tiny_net(w=32)
    ctx = make_ctx(net, tmp_path, n=4, task="embedding", output="embeds")  # a task with output metrics only
    _, rep = build_pipeline("prune:ratio=0.5,recover=20,recover_lr=0.003,measure_latency=false")[0].run(net, ctx)
    r = rep.recovery
    assert r.loss == "mse" and r.temperature is None
    assert r.fidelity_after["cosine"] > r.fidelity_before["cosine"]


# ---------------------------------------------------------------- accuracy-controlled quantization


class Outlier(nn.Module):
    """Patch conv -> token MLP -> head, where fc1's channel 0 is a constant 400 that the head ignores: int8's
    per-tensor activation scale must cover 400, so the small channels that carry the class collapse."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 16, 4, 4)
        self.fc1 = nn.Linear(16, 32)
        self.head = nn.Linear(32, 10)
        with torch.no_grad():
            self.fc1.weight[0].zero_()
            self.fc1.bias[0] = 400.0
            self.head.weight[:, 0] = 0.0

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(torch.relu(self.fc1(t)).mean(1))


class TwoOutliers(nn.Module):
    """Two `Outlier` branches summed: keeping one branch's layers float cannot fix the other."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = Outlier(), Outlier()
        torch.manual_seed(1)
        with torch.no_grad():
            for m in (self.b.patch, self.b.fc1, self.b.head):
                m.weight.mul_(torch.randn_like(m.weight).sign())
            self.b.fc1.weight[0].zero_()
            self.b.head.weight[:, 0] = 0.0

    def forward(self, x):
        return self.a(x) + self.b(x)


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory):
    net = Outlier().eval()
    work = tmp_path_factory.mktemp("acc")
    calib, evals = _digits(8, 0), _digits(48, 100)
    path = work / "fp32.onnx"
    export_onnx(net, calib[0], ["image"], ["logits"], path)
    return net, path, calib, evals


def _quantize(spec: str, ctx: PassContext, path: Path):
    (p,) = build_pipeline(spec)
    return p.run(path, ctx)


def test_max_drop_keeps_sensitive_nodes_float_where_plain_int8_fails(outlier_model, tmp_path):
    net, path, calib, evals = outlier_model
    ctx = _ctx(net, tmp_path, calib, evals)
    split = evaluation_split(ctx)
    plain, _ = _quantize("quantize:int8", ctx, path)
    drop_plain = accuracy_drop(ctx, split, ort_run_all(plain, evals))
    assert drop_plain.metric == "top1_agreement" and drop_plain.points > 10, drop_plain  # the honest failure
    ctx.workdir = tmp_path / "controlled"
    ctx.workdir.mkdir()
    out, rep = _quantize("quantize:int8,max_drop=0.5,max_float_fraction=1", ctx, path)
    ch = rep.changes[0]
    got = accuracy_drop(ctx, split, ort_run_all(out, evals))
    assert got.points <= 0.5 and ch["drop"] <= 0.5 and ch["drop_int8"] == pytest.approx(drop_plain.points, abs=1e-3)
    assert ch["float_nodes"] and all("dB" in n["why"] for n in ch["float_nodes"])
    assert ch["evaluated_on"] == "the evaluation split (48 samples)" and ch["metric"] == "top1_agreement"
    assert set(ch["latency_ms"]) == {"fp32", "int8", "result"} and rep.latency_ms_before > 0 and rep.latency_ms_after > 0
    assert "kept the" in rep.notes[0] and "points" in rep.notes[0]
    n_q = lambda p: sum(n.op_type == "QuantizeLinear" for n in __import__("onnx").load(str(p)).graph.node)  # noqa: E731
    assert 0 < n_q(out) < n_q(plain)  # some layers stayed float, not all of them


def test_max_drop_against_labels_measures_accuracy_points(outlier_model, tmp_path):
    net, path, calib, evals = outlier_model
    ref = np.array([int(np.argmax(torch_outputs(net, s, ["image"], ["logits"])["logits"])) for s in evals])
    labels = ref.copy()
    labels[::4] = (labels[::4] + 1) % 10  # a quarter of the labels disagree with fp32: its accuracy is 75%
    ctx = _ctx(net, tmp_path, calib, evals, labels=labels)
    out, rep = _quantize("quantize:int8,max_drop=0.5,max_float_fraction=1", ctx, path)
    ch = rep.changes[0]
    assert ch["metric"] == "top1_accuracy" and ch["reference"] == pytest.approx(75.0)
    assert ch["drop_int8"] > 0.5 >= ch["drop"] and ch["float_nodes"]
    assert "against the labels (fp32 75.00%)" in rep.notes[0]


def test_max_drop_that_cannot_be_met_fails_and_says_how_far(tmp_path):
    net = TwoOutliers().eval()
    calib, evals = _digits(8, 0), _digits(48, 100)
    path = tmp_path / "two.onnx"
    export_onnx(net, calib[0], ["image"], ["logits"], path)
    ctx = _ctx(net, tmp_path, calib, evals)
    with pytest.raises(EdgeoptError) as e:
        _quantize("quantize:int8,max_drop=0,max_float_fraction=0.01", ctx, path)  # one float node allowed: not enough
    msg = str(e.value)
    assert "static int8 drops" in msg and "still drops" in msg and "no bundle" in msg and "\n" not in msg


def test_max_drop_already_met_keeps_everything_int8(tmp_path):
    from _passes_util import make_ctx, tiny_net

    net = tiny_net()
    ctx = make_ctx(net, tmp_path, n=4)
    path = tmp_path / "tiny.onnx"
    export_onnx(net, ctx.samples[0], ["image"], ["logits"], path)
    out, rep = _quantize("quantize:int8,max_drop=100", ctx, path)
    ch = rep.changes[0]
    assert ch["float_nodes"] == [] and "no node kept in float" in rep.notes[0]
    assert "no evaluation split" in ch["evaluated_on"]  # fell back to the calibration samples, and says so
