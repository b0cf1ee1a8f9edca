"""Apache TVM backend: compile a small CNN for this machine and for aarch64, run it through the runner.

The tiny model (conv -> BN -> GELU -> depthwise conv -> pool -> linear) covers the op kinds the zoo's
models lower to, and compiles in seconds; efficientformer-sized runs live in bench/tvm_tuning.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

from edgeopt.bundle import Manifest, load_bundle, write_bundle  # noqa: E402
from edgeopt.errors import EdgeoptError, SpecError  # noqa: E402
from edgeopt.fidelity import output_metrics  # noqa: E402
from edgeopt.runtimes import CompileInput, get_backend  # noqa: E402
from edgeopt.runtimes import _tvm_targets as tt  # noqa: E402
from edgeopt.runtimes import _tvm_tune as tune  # noqa: E402
from edgeopt.runtimes.tvm import EM_AARCH64, EM_X86_64, PARAMS, UnsupportedOpError, elf_machine  # noqa: E402

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]
HW = 32


def _tiny_module():
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.GELU())
            self.dw = nn.Conv2d(16, 16, 3, 1, 1, groups=16)
            self.pw = nn.Conv2d(16, 32, 1)
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            x = self.stem(x)
            x = x + self.dw(x)
            x = torch.relu(self.pw(x))
            return self.head(x.mean((2, 3)))

    m = Tiny().eval()
    with torch.no_grad():  # non-trivial BN statistics, so folding mistakes would show
        m.stem[1].running_mean.uniform_(-0.5, 0.5)
        m.stem[1].running_var.uniform_(0.5, 2.0)
    return m


def _samples(n: int = 2) -> list[dict[str, np.ndarray]]:
    """Real pixels: crops of skimage's astronaut, normalised like ImageNet inputs."""
    from skimage import data
    from skimage.transform import resize

    img = data.astronaut().astype(np.float32) / 255.0
    out = []
    for i in range(n):
        crop = img[100 * i : 100 * i + 256, 80 * i : 80 * i + 256]
        x = resize(crop, (HW, HW), anti_aliasing=True).transpose(2, 0, 1)
        x = (x - 0.45) / 0.25
        out.append({"image": x[None].astype(np.float32)})
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model exported to ONNX, with its samples and torch reference outputs."""
    from edgeopt.export import export_onnx, torch_outputs

    d = tmp_path_factory.mktemp("tvm-tiny")
    m = _tiny_module()
    samples = _samples()
    path = d / "tiny.onnx"
    export_onnx(m, samples[0], ["image"], ["logits"], path)
    refs = [torch_outputs(m, s, ["image"], ["logits"]) for s in samples]
    return {"onnx": path, "samples": samples, "refs": refs, "dir": d}


def _bundle(tiny, out: Path, target: str, options: dict | None = None) -> Path:
    """Compile through the backend into a real bundle (what api.compile does after the passes)."""
    be = get_backend("tvm")
    inp = CompileInput(
        model_name="tiny_cnn", task="classification", input_names=["image"], output_names=["logits"],
        samples=tiny["samples"], onnx_path=tiny["onnx"],
    )
    with write_bundle(out, overwrite=True) as w:
        res = be.compile(inp, w.root, target, {"precision": "fp32", **(options or {})})
        w.write_reference(tiny["samples"][0], tiny["refs"][0])
        w.finish(Manifest.draft({
                "model": {"name": "tiny_cnn", "family": "test", "task": "classification"},
                "backend": "tvm", "target": res.target, "precision": res.precision, "artifact": res.artifact,
                "inputs": [{"name": "image", "shape": [1, 3, HW, HW], "dtype": "float32"}],
                "outputs": [{"name": "logits", "shape": [1, 10], "dtype": "float32"}],
                "backend_details": res.details, "tools": res.tools, "check": {"cosine_min": 0.9999},
            }))
    return out


def _host_target():
    import tvm

    return tvm.target.Target(tt.resolve_target("host").target)


@pytest.fixture(scope="module")
def host_bundle(tiny):
    return _bundle(tiny, tiny["dir"] / "host.bundle", "x86-host" if tt._host_arch() == "x86_64" else "host")


def test_available_reports_version():
    ok, why = get_backend("tvm").available()
    assert ok, why
    assert why.startswith("0.")


def test_host_bundle_matches_torch_in_process(tiny, host_bundle):
    b = load_bundle(host_bundle)
    assert b.manifest["backend_details"]["host_runnable"] is True
    assert b.manifest["backend_details"]["target"]["mcpu"]  # detected, not generic
    assert elf_machine(b.artifact) == (EM_X86_64 if tt._host_arch() == "x86_64" else EM_AARCH64)
    s = get_backend("tvm").load(b.path, b.manifest)
    outs = [s.run(x) for x in tiny["samples"]]
    m = output_metrics(tiny["refs"], outs)
    assert m["cosine"] > 0.99999, m
    np.testing.assert_allclose(outs[0]["logits"], tiny["refs"][0]["logits"], rtol=1e-4, atol=1e-4)


def test_default_schedules_replace_the_bare_loop_nests(tiny, host_bundle, tmp_path):
    """The untuned build schedules every function by rule (parallel outer loops, vectorized inner ones) without
    measuring; `-O schedule=none` keeps the bare loop nests; both give torch's outputs."""
    import onnx
    from tvm import relax

    from edgeopt.runtimes.tvm import import_onnx

    d = load_bundle(host_bundle).manifest["backend_details"]
    assert d["schedule"] == "default" and any("default schedules" in s for s in d["pipeline"])
    bare = load_bundle(_bundle(tiny, tmp_path / "bare.bundle", "host", {"schedule": "none"}))
    assert bare.manifest["backend_details"]["schedule"] == "none"
    s = get_backend("tvm").load(bare.path, bare.manifest)
    assert output_metrics(tiny["refs"], [s.run(x) for x in tiny["samples"]])["cosine"] > 0.99999
    # what the rules did to the heaviest kernel: threads and vectors where the bare nest had neither
    tgt = _host_target()
    mod, _ = relax.frontend.detach_params(import_onnx(onnx.load(str(tiny["onnx"]))))
    fused = tune.prepare(mod, tgt)
    scheduled = tune.apply_database(fused, tgt, None)
    conv = next(gv for gv in scheduled.functions if "conv2d" in gv.name_hint)
    text, before = scheduled[conv].script(), fused[conv].script()
    assert "T.parallel" in text and "T.vectorized" in text
    assert "T.parallel" not in before and "T.vectorized" not in before
    with pytest.raises(EdgeoptError, match="unknown TVM schedule"):
        _bundle(tiny, tmp_path / "x.bundle", "host", {"schedule": "fast"})
    # deterministic: the same function gets the same schedule again
    assert tune.apply_database(fused, tgt, None)[conv].script() == text


@pytest.fixture(scope="module")
def unpacked_bundle(tiny):
    return _bundle(tiny, tiny["dir"] / "unpacked.bundle", "host", {"prepack": False})


def test_convolutions_run_nhwc_with_weights_transposed_at_compile_time(tiny, unpacked_bundle, tmp_path):
    """The default build converts the convolutions to NHWC; without pre-packing (`-O prepack=false`) params.npz holds
    their weights OHWI (the device side does no layout work); `-O layout=NCHW` keeps the graph's layout; both give
    torch's outputs, and the GELU's erf is the fast polynomial form."""
    b = load_bundle(unpacked_bundle)
    d = b.manifest["backend_details"]
    assert any(s.startswith("ConvertLayout(conv2d: NHWC, OHWI)") for s in d["pipeline"]) and "FastMathTransform" in d["pipeline"]
    assert d["prepacked"] is False and tune.LAYOUT_FREE_STEP not in d["pipeline"]
    with np.load(b.path / d["params_file"]) as z:
        shapes = {z[k].shape for k in z.files}
    assert {(16, 3, 3, 1), (32, 1, 1, 16)} <= shapes  # the depthwise and pointwise weights as OHWI
    assert not {(16, 1, 3, 3), (32, 16, 1, 1)} & shapes  # their OIHW originals are gone
    nchw = load_bundle(_bundle(tiny, tmp_path / "nchw.bundle", "host", {"layout": "nchw", "prepack": False}))
    assert not any(s.startswith("ConvertLayout") for s in nchw.manifest["backend_details"]["pipeline"])
    with np.load(nchw.path / PARAMS) as z:
        assert (32, 16, 1, 1) in {z[k].shape for k in z.files}
    for bundle in (b, nchw):
        s = get_backend("tvm").load(bundle.path, bundle.manifest)
        assert output_metrics(tiny["refs"], [s.run(x) for x in tiny["samples"]])["cosine"] > 0.99999
    with pytest.raises(EdgeoptError, match="unknown TVM layout"):
        _bundle(tiny, tmp_path / "x.bundle", "host", {"layout": "NCWH"})


def test_weights_prepacked_in_tile_order_at_compile_time(tiny, host_bundle, unpacked_bundle, tmp_path):
    """By default each kernel's weights are stored in the order its schedule reads them: the scheduled kernels
    begin by re-laying out their weights (RewriteLayout), `pack_weights` moves those re-layouts out and runs them
    once at compile time, so no kernel of the built module re-lays out anything per call. The packed bundle gives
    the unpacked one's outputs."""
    import onnx

    from edgeopt.runtimes.tvm import pack_weights, relax_graph

    packed = load_bundle(host_bundle)
    d = packed.manifest["backend_details"]
    assert d["prepacked"] is True and tune.LAYOUT_FREE_STEP in d["pipeline"]
    with np.load(packed.path / PARAMS) as z:
        shapes = [z[k].shape for k in z.files]
    assert (32, 1, 1, 16) not in shapes and any(int(np.prod(s)) == 512 and len(s) > 2 for s in shapes)  # pw conv re-laid
    mod, weights, _ = relax_graph(onnx.load(str(tiny["onnx"])))
    tgt = _host_target()
    scheduled = tune.apply_database(tune.prepare(mod, tgt), tgt, None)
    assert "layout_rewrite_preproc" in scheduled.script()
    built, new = pack_weights(scheduled, weights)
    assert "layout_rewrite_preproc" not in built.script() and [w.shape for w in new] == shapes
    unpacked = load_bundle(unpacked_bundle)
    a = get_backend("tvm").load(packed.path, packed.manifest)
    b = get_backend("tvm").load(unpacked.path, unpacked.manifest)
    for x in tiny["samples"]:
        np.testing.assert_allclose(a.run(x)["logits"], b.run(x)["logits"], rtol=1e-5, atol=1e-5)
    with pytest.raises(EdgeoptError, match="prepack takes true or false"):
        _bundle(tiny, tmp_path / "x.bundle", "host", {"prepack": "sometimes"})


def test_tile_plan_vector_rows_and_reduction():
    """The rule: the last spatial loop a vector tile, the one before it a register tile of rows, the others all
    outside, reductions a few iterations inside; every plan multiplies back to its loop's extent."""

    class Inst:
        def __init__(self, n: int, max_inner: int):
            self.kind = type("K", (), {"name": "SamplePerfectTile"})()
            self.attrs = [n, max_inner]

    loops = [(4, 64, [1, 1, 1, 1]), (4, 64, [48, 1, 1, 4]), (4, 64, [7, 2, 2, 2]), (4, 64, [7, 4, 1, 2]),
             (2, 64, [12, 4]), (2, 64, [1, 1])]  # n, co=192, h=56, w=56 | ci=48, ry=1
    insts = [Inst(n, mi) for n, mi, _ in loops]
    trace = type("T", (), {"insts": insts, "decisions": {i: d for i, (_, _, d) in zip(insts, loops, strict=True)}})()
    plan = tune._tile_plan(trace)
    assert plan == [[1, 1, 1, 1], [192, 1, 1, 1], [7, 1, 8, 1], [4, 1, 1, 14], [12, 4], [1, 1]]
    assert [int(np.prod(p)) for p in plan] == [int(np.prod(d)) for _, _, d in loops]


def test_runner_runs_tvm_bundle_without_torch(host_bundle):
    r = subprocess.run(
        [PY, "-m", "edgeopt.runner", str(host_bundle), "--runs", "5", "--min-seconds", "0", "--warmup", "1"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["backend"] == "tvm"
    assert res["outputs_match"] is True, res["check"]
    assert res["torch_loaded"] is False
    assert res["runs"] >= 5 and res["latency_ms"]["p50"] > 0


def test_cross_compile_aarch64_is_arm_elf(tiny):
    if tt.shutil.which(tt.CROSS_CC) is None:
        pytest.skip(f"{tt.CROSS_CC} missing: install {tt.CROSS_PKG}")
    out = _bundle(tiny, tiny["dir"] / "a72.bundle", "cortex-a72")
    b = load_bundle(out)
    assert elf_machine(b.artifact) == EM_AARCH64
    d = b.manifest["backend_details"]
    assert d["arch"] == "aarch64" and d["target"]["mcpu"] == "cortex-a72"
    if tt._host_arch() != "aarch64":
        assert isinstance(d["host_runnable"], str) and "aarch64" in d["host_runnable"]


def test_unknown_target_lists_known_ones(tiny, tmp_path):
    with pytest.raises(SpecError) as e:
        tt.resolve_target("cortex-a99")
    assert "cortex-a78ae" in str(e.value) and "x86-host" in str(e.value)
    with pytest.raises(SpecError):
        _bundle(tiny, tmp_path / "bad.bundle", "cortex-a99")
    assert not (tmp_path / "bad.bundle").exists()


def test_missing_cross_compiler_names_debian_package(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(EdgeoptError) as e:
        tt.resolve_target("cortex-a76")
    assert tt.CROSS_PKG in str(e.value)


def test_unsupported_op_names_op_and_node(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from edgeopt.runtimes.tvm import import_onnx

    # A contrib-domain op TVM's frontend has no converter for.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu0"),
        helper.make_node("FancyMix", ["r"], ["y"], name="mix_block_3", domain="com.example"),
    ]
    g = helper.make_graph(nodes, "g", [x], [y])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    with pytest.raises(UnsupportedOpError) as e:
        import_onnx(model)
    assert "FancyMix" in str(e.value) and "mix_block_3" in str(e.value)
    # A known op whose converter rejects this instance: the node is still named.
    c = helper.make_node("CumSum", ["x", "ax"], ["y"], name="cumsum_dyn")
    ax = helper.make_tensor_value_info("ax", TensorProto.INT64, [])
    g2 = helper.make_graph([c], "g2", [x, ax], [y])
    with pytest.raises(UnsupportedOpError) as e2:
        import_onnx(helper.make_model(g2, opset_imports=[helper.make_opsetid("", 18)]))
    assert "CumSum" in str(e2.value) and "cumsum_dyn" in str(e2.value)
    onnx.checker.check_model(model, full_check=False)


def test_shape_held_in_an_initializer_builds():
    """An Expand whose target shape is an int64 initializer (mobileclip's final normalisation): the importer
    would make the shape a run-time parameter Relax cannot build; as a constant it builds and runs."""
    import tvm
    from onnx import TensorProto, helper, numpy_helper
    from tvm import relax

    from edgeopt.runtimes.tvm import import_onnx

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("ReduceL2", ["x"], ["n"], keepdims=1, axes=[1]),
             helper.make_node("Expand", ["n", "shape"], ["e"]), helper.make_node("Div", ["x", "e"], ["y"])]
    shape = numpy_helper.from_array(np.array([1, 4], dtype=np.int64), "shape")
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializer=[shape]),
                              opset_imports=[helper.make_opsetid("", 13)])
    tgt = _host_target()
    mod, params = relax.frontend.detach_params(import_onnx(model))
    assert not params.get("main")  # the shape is a constant, not a parameter
    with tvm.transform.PassContext(opt_level=3):
        ex = tvm.compile(tune.apply_database(tune.prepare(mod, tgt), tgt, None), target=tgt)
    v = np.array([[3.0, 4.0, 0.0, 0.0]], dtype=np.float32)
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(v, tvm.cpu())).numpy()
    np.testing.assert_allclose(out, v / 5.0, rtol=1e-6)


def test_channels_last_pooling_as_clamped_windows():
    """Pooling after a convolution runs NHWC and is legalized as written-out windows (`_tvm_pool`) wherever that is
    exact: averages with and without the padding counted, strides, ceil_mode, a dilated max pool and a chain of
    max pools (SPPF), each matching ONNX Runtime. The one case it does not cover (an average counting the padding
    with ceil_mode) keeps TOPI's pool2d, and a pool feeding a pool stays a kernel of its own."""
    import onnxruntime as ort
    import tvm
    from onnx import TensorProto, helper, numpy_helper
    from tvm import relax

    from edgeopt.runtimes import _tvm_pool
    from edgeopt.runtimes.tvm import relax_graph

    pools = {  # output -> (op, attributes)
        "avg_excl": ("AveragePool", dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=0)),
        "avg_incl_s2": ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)),
        "avg_ceil": ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
        "avg_ceil_incl": ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1)),
        "max_dil": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 2], dilations=[2, 1], ceil_mode=1)),
    }
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"])]
    nodes += [helper.make_node(op, ["c"], [name], **attrs) for name, (op, attrs) in pools.items()]
    nodes += [helper.make_node("MaxPool", [a], [b], kernel_shape=[5, 5], pads=[2, 2, 2, 2]) for a, b in (("c", "m1"), ("m1", "m2"))]
    outs = [*pools, "m2"]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 11, 13])
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph(nodes, "pools", [x], [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    xv = rng.standard_normal((1, 3, 11, 13)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(outs, {"x": xv})

    tgt = _host_target()
    mod, weights, _ = relax_graph(model)
    prepared = tune.prepare(mod, tgt, layout_free=False)
    names = [gv.name_hint for gv in prepared.functions]
    assert sum(_tvm_pool.KERNEL_NAMES["avg"] in n for n in names) == 3, names
    assert sum(_tvm_pool.KERNEL_NAMES["max"] in n for n in names) >= 2, names  # the dilated one and the 5x5 (called twice)
    assert not any(n.count("pool2d") > 1 for n in names), names  # no pool fused into another
    assert any("avg_pool2d" in n and "clamped" not in n for n in names), names  # ceil_mode counting the padding: TOPI
    with tvm.transform.PassContext(opt_level=3):
        ex = tvm.compile(tune.apply_database(prepared, tgt, None), target=tgt)
    dev = tvm.cpu()
    got = relax.VirtualMachine(ex, dev)["main"](tvm.runtime.tensor(xv, dev), *[tvm.runtime.tensor(a, dev) for a in weights])
    for name, a, b in zip(outs, got, want, strict=True):
        assert a.numpy().shape == b.shape, name
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-5, err_msg=name)


def test_truncated_database_line_is_dropped(tmp_path):
    rec = tmp_path / tune.RECORD_FILE
    rec.write_text('[0, [[["a"], 1]]]\n[1, [[["b"], 2' )
    assert tune._repair_jsonl(rec) == 1
    assert rec.read_text() == '[0, [[["a"], 1]]]\n'


def _tiny_tasks(tiny):
    """The tiny model prepared for tuning, its tuning tasks (heaviest first) and the host target."""
    import onnx
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from edgeopt.runtimes.tvm import import_onnx

    tgt = _host_target()
    mod, _ = relax.frontend.detach_params(import_onnx(onnx.load(str(tiny["onnx"]))))
    fused = tune.prepare(mod, tgt)
    return fused, tune._by_cost(ms.relax_integration.extract_tasks(fused, tgt)), tgt


def test_tuned_record_wins_only_when_faster(tiny, tmp_path):
    """A record in the database no longer overrides the default schedule just by being there: the default is
    measured and committed beside it, and the build takes whichever ran faster. The slower record here is the
    bare loop nest, measured by the same runner."""
    from tvm.s_tir import Schedule

    fused, (heavy, *_), tgt = _tiny_tasks(tiny)
    work = heavy.dispatched[0]
    db_dir = tmp_path / "db"
    db = tune.open_database(db_dir)
    # The bare loop nest as a record: a schedule that looks its loops up and changes nothing (MetaSchedule's
    # database ignores a record whose trace is empty).
    bare = Schedule(work)
    bare.get_loops(bare.get_child_blocks(bare.get_sblock("root"))[0])
    assert tune.commit_measured(db, tgt, [("bare", work, bare)]) == (["bare"], [])
    assert tune._records_per_task(db, [heavy], tune._defaults_done(db_dir)) == [1]
    assert tune.commit_default_records([heavy], tgt, db, db_dir) == (1, [])
    def mean_s(r) -> float:
        return float(np.mean([float(t) for t in r.run_secs]))

    records = list(db.get_all_tuning_records())  # this database holds this one workload
    def is_default(r) -> bool:
        return len(r.trace.insts) > len(bare.trace.insts)

    assert sorted(map(is_default, records)) == [False, True]  # the bare nest and the default
    best = db.query_tuning_record(work, tgt, "main")
    assert mean_s(best) == min(map(mean_s, records))
    default_won = is_default(best)
    # The default's trace marks where its postprocessors begin, as MetaSchedule's candidates do: the search replays
    # a record up to that mark when it mutates it (without it, efficientformer_l1's tuning crashed on a replay).
    default = next(r for r in records if is_default(r))
    assert any(i.kind.name == "EnterPostproc" for i in default.trace.insts)
    # The build applies the faster one (default schedules off: only the database decides).
    applied = tune.apply_database(fused, tgt, db_dir, default_schedules=False)
    gv = next(g for g in fused.functions if g.name_hint == heavy.task_name)
    assert ("T.parallel" in applied[gv].script()) == default_won
    # Measured once per version of the rules, and not counted as a tuning trial.
    assert tune.commit_default_records([heavy], tgt, db, db_dir) == (0, [])
    assert tune._records_per_task(db, [heavy], tune._defaults_done(db_dir)) == [1]


def test_pool_builder_builds_kills_slow_builds_and_stops_at_deadline(tiny, monkeypatch):
    """The tuning builder: a candidate builds in a worker into an artifact the runner can load; a build past the
    timeout is killed and comes back as a failed candidate (the run goes on); past the deadline the next batch
    ends the run."""
    import math

    import tvm
    from tvm.s_tir import Schedule
    from tvm.s_tir.meta_schedule.builder import BuilderInput

    _, (heavy, *_), tgt = _tiny_tasks(tiny)
    sch = Schedule(heavy.dispatched[0])
    assert tune.default_schedule(sch, tgt)
    batch = [BuilderInput(sch.mod, tgt)]
    state = {"stopped_by": "trials", "build_timeouts": 0}
    builder, pool = tune._pool_builder(math.inf, state, 2)
    try:
        (ok,) = builder.build(batch)
        assert ok.error_msg is None and Path(ok.artifact_path).is_file()
        assert tvm.runtime.load_module(ok.artifact_path) is not None
    finally:
        pool.shutdown(wait=False)
    # A limit no build can meet (the worker's start alone takes seconds): killed, reported, counted.
    monkeypatch.setattr(tune, "BUILD_TIMEOUT_S", 0.05)
    builder, pool = tune._pool_builder(math.inf, state, 1)
    try:
        (slow,) = builder.build(batch)
    finally:
        pool.shutdown(wait=False)
    assert slow.artifact_path is None and "killed after 0.05 s" in slow.error_msg and state["build_timeouts"] == 1
    builder, pool = tune._pool_builder(time.monotonic() - 1, state, 1)
    try:
        with pytest.raises(Exception, match="minutes"):
            builder.build(batch)
    finally:
        pool.shutdown(wait=False)
    assert state["stopped_by"] == "minutes"


@pytest.mark.slow
def test_tasks_under_one_percent_are_not_searched(tiny, tmp_path):
    """A task whose default schedule takes under MIN_TASK_SHARE of the model's time (run time x occurrences) keeps
    its measured default and gets no trials; the heavy ones are searched."""
    fused, tasks, tgt = _tiny_tasks(tiny)
    db_dir = tmp_path / "db"
    rep = tune.tune(fused, tgt, db_dir, 8 * len(tasks), None, 2)
    db = tune.open_database(db_dir)

    def cost(t) -> float:
        r = db.get_top_k(db.commit_workload(t.dispatched[0]), 1)[0]
        return float(np.mean([float(x) for x in r.run_secs])) * t.weight

    costs = {tune._defaults_key(t): cost(t) for t in tasks}
    total = sum(costs.values())
    small = {k for k, c in costs.items() if c < tune.MIN_TASK_SHARE * total}
    assert rep.tasks_small == len(small) >= 1 and len(small) < len(tasks)
    per_task = dict(zip(map(tune._defaults_key, tasks), tune._records_per_task(db, tasks, set()), strict=True))
    assert all(per_task[k] == 1 for k in small)  # the measured default only
    assert all(per_task[k] > 1 for k in costs if k not in small)  # searched: trials beside the default
    assert rep.trials_measured >= sum(per_task.values()) - len(tasks)  # failed candidates leave no record


@pytest.mark.slow
def test_tuning_writes_reusable_database(tiny, tmp_path):
    """A few trials: records land in the database, the tuned bundle still matches; a rerun with the same budget
    skips the tasks already tuned to it, a larger budget tunes further."""
    db = tmp_path / "db"
    b1 = load_bundle(_bundle(tiny, tmp_path / "t1.bundle", "host", {"tune_trials": 8, "tune_dir": str(db)}))
    t1 = b1.manifest["backend_details"]["tuning"]
    assert t1["records_after"] > 0 and t1["trials_measured"] > 0
    s = get_backend("tvm").load(b1.path, b1.manifest)
    assert output_metrics(tiny["refs"][:1], [s.run(tiny["samples"][0])])["cosine"] > 0.9999
    b2 = load_bundle(_bundle(tiny, tmp_path / "t2.bundle", "host", {"tune_trials": 8, "tune_dir": str(db), "bundle_tuning_db": True}))
    t2 = b2.manifest["backend_details"]["tuning"]
    assert t2["records_before"] == t1["records_after"] and t2["records_after"] >= t2["records_before"]
    assert (b2.path / "tuning" / tune.RECORD_FILE).is_file()
    # The same budget again: tasks that already hold the trials it gives each task are not tuned again.
    assert t2["tasks_with_records"] >= 1 and t2["tasks_reused"] >= 1
    if t2["tasks_reused"] == t2["tasks"]:
        assert t2["stopped_by"] == "reused" and t2["trials_measured"] == 0 and t2["records_after"] == t2["records_before"]
    # A larger budget tunes them further.
    b3 = load_bundle(_bundle(tiny, tmp_path / "t3.bundle", "host", {"tune_trials": 8 * t1["tasks"] * 4, "tune_dir": str(db)}))
    t3 = b3.manifest["backend_details"]["tuning"]
    assert t3["tasks_reused"] < t3["tasks"] and t3["trials_measured"] > 0 and t3["records_after"] > t3["records_before"]


@pytest.mark.slow
def test_interrupted_tuning_keeps_records(tiny, tmp_path):
    """Ctrl-C in the middle of tuning: every record measured so far stays usable by the next compile."""
    db = tmp_path / "db"
    code = (
        "import sys, onnx, tvm\n"
        "from pathlib import Path\n"
        "from tvm import relax\n"
        "from edgeopt.runtimes.tvm import import_onnx\n"
        "from edgeopt.runtimes import _tvm_targets as tt, _tvm_tune as tune\n"
        "info = tt.resolve_target('host')\n"
        "tgt = tvm.target.Target(info.target)\n"
        "mod, _ = relax.frontend.detach_params(import_onnx(onnx.load(sys.argv[1])))\n"
        "tune.tune(tune.prepare(mod, tgt), tgt, Path(sys.argv[2]), 10_000, None, 1)\n"
    )
    proc = subprocess.Popen([PY, "-c", code, str(tiny["onnx"]), str(db)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 1500
        # past the measured default schedules (committed first), two records of the search itself
        while not tune._defaults_done(db) or tune.count_records(db) < len(tune._defaults_done(db)) + 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no tuning record within 25 min"
            time.sleep(2)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    kept = tune.count_records(db)
    assert kept >= len(tune._defaults_done(db)) + 2
    b = load_bundle(_bundle(tiny, tmp_path / "resumed.bundle", "host", {"tuning_db": str(db)}))
    assert b.manifest["backend_details"]["tuned"] is True
    s = get_backend("tvm").load(b.path, b.manifest)
    assert output_metrics(tiny["refs"][:1], [s.run(tiny["samples"][0])])["cosine"] > 0.9999
