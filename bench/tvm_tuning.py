"""TVM performance investigation: where untuned TVM loses to ONNX Runtime, and what closes the gap.

    .venv/bin/python bench/tvm_tuning.py [--model efficientformer_l1] [--tune-minutes 3,10] [--out docs/tvm.md]

One process, one machine, side by side: ONNX Runtime fp32 (the reference point), then TVM variants of
the same ONNX graph, each through `edgeopt.runtimes.tvm.relax_graph` (the backend's front half: convolutions NHWC):
  raw        `tvm.compile` straight on the imported module (no fusion): what a first try gives;
  fused      the fused graph with no schedule (DecomposeOpsForInference + zero pipeline: legalize, fold, fuse;
             `-O schedule=none`): bare loop nests;
  default    edgeopt's untuned build: fused + a default schedule per function (MetaSchedule's rules, tile
             sizes by rule, nothing measured; `_tvm_tune.default_schedule`);
  noprepack  the same with each kernel reading its weights in the graph's layout (`-O prepack=false`);
  nchw       the same with the convolutions left in the ONNX graph's NCHW layout (`-O layout=NCHW`);
  dlight     fused + dlight's CPU rules (GEMV, Reduction) for the kernels they match;
  tuned-Nm   MetaSchedule with a cumulative time budget (each stage extends the same fresh database),
             the minutes and trials actually spent recorded beside each figure.
All rows are built first and then timed together in interleaved rounds (every row in every round, spread over
_doc.ROUND_SPAN_S), so each ratio to ONNX Runtime compares figures taken under the same conditions. The per-kernel profile
of the untuned (default-schedule) build shows where the time goes. Writes the table and findings to docs/tvm.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from _doc import ROUND_SPAN_S, DocRun, add_args, path_figures, write_block, write_file  # noqa: E402


def _time_interleaved(timers: dict[str, Any], first_ms: dict[str, float], rounds: int, seconds: float) -> dict[str, list[list[float]]]:
    """Every row's call times, in `rounds` interleaved rounds (rotated order, spread over ROUND_SPAN_S: the
    interleaving of `edgeopt compare`), each row about `seconds` of calls per round (at least one)."""
    from edgeopt._timed_worker import call_times, calls_in, interleave

    names = list(timers)
    calls = {k: calls_in(seconds, first_ms[k], least=1, most=sys.maxsize) for k in names}
    per = interleave(len(names), rounds, lambda i: call_times(timers[names[i]], calls[names[i]]), span_s=ROUND_SPAN_S)
    return dict(zip(names, per, strict=True))


def _cos(refs, outs) -> float:
    from edgeopt.fidelity import output_metrics

    return float(output_metrics(refs, outs)["cosine"])


def _kernel_profile(mod, target, n: int = 8) -> dict[str, Any]:
    """Where a scheduled, packed module's time goes: each TIR function built alone and timed hot (its weights and
    inputs in cache) on random inputs of its argument shapes, times the number of calls `main` makes to it. The n
    heaviest as (kernel, calls, ms per call, ms per inference), and the sum over all. The VM's own work between
    the kernels, and the kernels' cold reads inside a whole inference, are what the model's p50 adds to that sum."""
    import re

    import numpy as np
    import tvm
    from tvm import tirx
    from tvm.s_tir import meta_schedule as ms

    calls: dict[str, int] = {}
    for m in re.finditer(r"call_tir\((?:cls\.)?(\w+)", mod.script()):
        calls[m.group(1)] = calls.get(m.group(1), 0) + 1
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    rows = []
    for gv, f in mod.functions_items():
        if not isinstance(f, tirx.PrimFunc) or not calls.get(gv.name_hint):
            continue
        fn = tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target=target)["main"]
        args = [tvm.runtime.tensor(rng.random([int(d) for d in a.shape]).astype(str(a.dtype)), dev)
                for a in ms.arg_info.ArgInfo.from_prim_func(f)]
        fn(*args)
        reps = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(10):
                fn(*args)
            reps.append((time.perf_counter() - t0) / 10 * 1e3)
        per = float(np.median(reps))
        rows.append((gv.name_hint, calls[gv.name_hint], per, per * calls[gv.name_hint]))
    rows.sort(key=lambda r: -r[3])
    return {"top": rows[:n], "sum_ms": sum(r[3] for r in rows), "kernels": len(rows), "calls": sum(calls.values())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientformer_l1")
    ap.add_argument("--tune-minutes", default="3,10", help="cumulative tuning budgets, comma-separated (0 or '' to skip)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (every row in every round)")
    ap.add_argument("--seconds", type=float, default=1.0, help="calls per row and round: about this many seconds, at least one call")
    ap.add_argument("--skip", default="", help="comma-separated variants to skip (raw,noprepack,topipool,nchw,dlight)")
    ap.add_argument("--out", default=str(REPO / "docs" / "tvm.md"))
    ap.add_argument("--render", metavar="JSON", help="only re-render the markdown from a previous run's .json")
    ap.add_argument("--note", default=None, help="a paragraph on the run's conditions, printed under the findings")
    add_args(ap)
    a = ap.parse_args(argv)
    if a.render:  # no measurement: the page keeps the stamp of the run that measured the figures
        raw = json.loads(Path(a.render).read_text())
        a.tune_minutes, a.rounds, a.seconds = raw["args"]["tune_minutes"], raw["args"]["rounds"], raw["args"]["seconds"]
        stamp = raw.get("stamp") or {"command": f"python bench/tvm_tuning.py --model {raw['model']} --tune-minutes {a.tune_minutes}",
                                     "date": raw["when"]}
        with DocRun.from_args(a, argv, replay=stamp):
            if a.note:  # keep a conditions paragraph given at render time with the figures it describes
                raw["args"]["note"] = a.note
                write_file(a.render, (json.dumps(raw, indent=1) + "\n").encode())
            a.note = raw["args"].get("note")
            _write(a, raw["rows"], raw["top"], raw["target"], raw["target_desc"], raw["model"], raw["when"])
        return 0
    with DocRun.from_args(a, argv):
        return measure(a)


def measure(a: argparse.Namespace) -> int:
    skip = set(filter(None, a.skip.split(",")))

    import tvm
    from rich.console import Console
    from rich.table import Table
    from tvm import relax

    from edgeopt._ort import ort_session
    from edgeopt._timed_worker import first_ms as one_call_ms
    from edgeopt.export import export_onnx, torch_outputs
    from edgeopt.models import get_spec
    from edgeopt.runtimes import _tvm_targets as tt
    from edgeopt.runtimes import _tvm_tune as tune
    from edgeopt.runtimes.tvm import pack_weights, relax_graph

    con = Console(stderr=True)
    from edgeopt.capabilities import live_weights

    spec = get_spec(a.model)
    # the weights the other pages time (docs/backends.md, the capability matrix): a seeded random init without
    # muted branches, whose 1e-5 layer scales would otherwise leave tiny activations that slow ORT down
    module, _ = live_weights(spec.name)
    in_names = [i.name for i in spec.inputs]
    out_names = list(spec.outputs)
    samples = spec.sample_inputs(2)
    refs = [torch_outputs(module, s, in_names, out_names) for s in samples]
    work = Path(tempfile.mkdtemp(prefix="edgeopt-bench-tvm-"))
    onnx_path = work / "model.onnx"
    export_onnx(module, samples[0], in_names, out_names, onnx_path)
    x0 = samples[0]
    info = tt.resolve_target("host")
    rows: list[dict[str, Any]] = []

    timers: dict[str, Any] = {}
    first_ms: dict[str, float] = {}

    def add(name: str, run, outs_fn, note: str, **extra: Any) -> None:
        """A row: its fidelity now, its latency in the interleaved rounds at the end (every row in every round)."""
        first_ms[name] = one_call_ms(run)
        timers[name] = run
        rows.append({"variant": name, "cosine": _cos(refs, [outs_fn(x) for x in samples]), "note": note, **extra})
        con.print(f"[bold]{name}[/]: built, one call {first_ms[name]:.1f} ms")

    # ONNX Runtime reference, same graph.
    sess = ort_session(onnx_path, None)
    ort_out = lambda x: dict(zip(out_names, sess.run(out_names, x), strict=True))  # noqa: E731
    add("onnxruntime fp32", lambda: sess.run(out_names, x0), ort_out, "reference point", build_s=0.0, tune_min=0.0, trials=0)

    import onnx

    proto = onnx.load(str(onnx_path))
    t0 = time.perf_counter()
    mod, weights, _ = relax_graph(proto)  # the backend's front half: convolutions NHWC, weights transposed once
    front_s = time.perf_counter() - t0
    dev = tvm.cpu()
    tgt = tvm.target.Target(info.target)

    def vm_variant(name: str, m, note: str, tune_min: float = 0.0, trials: int = 0, extra_build: float = 0.0,
                   params: list | None = None):
        """Build `m` as the backend does (weights pre-packed where its kernels re-lay them out: `pack_weights`),
        check its outputs, queue it for timing; returns the module as built (packed)."""
        t0 = time.perf_counter()
        m, w = pack_weights(m, weights if params is None else params)
        params = [tvm.runtime.tensor(x, dev) for x in w]
        with tvm.transform.PassContext(opt_level=3):
            ex = tvm.compile(m, target=tgt)
        build_s = time.perf_counter() - t0 + extra_build
        so = work / f"{name}.so"
        ex.export_library(str(so))
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(so)), dev)
        f = vm["main"]

        def outs(x):
            o = f(tvm.runtime.tensor(x[in_names[0]], dev), *params)
            o = [o] if hasattr(o, "numpy") else list(o)
            return {n: t.numpy() for n, t in zip(out_names, o, strict=True)}

        xt = tvm.runtime.tensor(x0[in_names[0]], dev)
        add(name, lambda: f(xt, *params), outs, note, build_s=build_s, tune_min=tune_min, trials=trials,
            so_mb=so.stat().st_size / 2**20)
        return m

    if "raw" not in skip:
        vm_variant("tvm raw (tvm.compile, no fusion)", mod, "default relax pipeline on the imported graph", extra_build=front_s)
    t0 = time.perf_counter()
    fused = tune.prepare(mod, tgt)
    prep_s = time.perf_counter() - t0
    vm_variant("tvm fused, bare loop nests", fused, "decompose + legalize + fold + fuse, no schedule (-O schedule=none)",
               extra_build=front_s + prep_s)
    t0 = time.perf_counter()
    default = tune.apply_database(fused, tgt, None)
    sched_s = time.perf_counter() - t0
    built = vm_variant("tvm default schedules, untuned", default,
                       "edgeopt's untuned build: MetaSchedule's rules, tiles by rule, nothing measured, "
                       "weights pre-packed at compile time", extra_build=front_s + prep_s + sched_s)
    con.print("[bold]profile[/] every kernel of the untuned build, built and timed alone")
    top = _kernel_profile(built, tgt)

    if "topipool" not in skip:  # the same default schedules with TOPI's pooling: what the written-out windows buy
        t0 = time.perf_counter()
        topi_pool = tune.apply_database(tune.prepare(mod, tgt, window_pooling=False), tgt, None)
        vm_variant("tvm default schedules, TOPI pooling", topi_pool,
                   "as above with TOPI's pool2d (a reduction over a padded window) instead of written-out windows",
                   extra_build=front_s + time.perf_counter() - t0)

    if "noprepack" not in skip:  # the same default schedules reading the weights in the graph's layout: what packing buys
        t0 = time.perf_counter()
        unpacked = tune.apply_database(tune.prepare(mod, tgt, layout_free=False), tgt, None)
        vm_variant("tvm default schedules, weights not pre-packed", unpacked,
                   "as above with -O prepack=false: weights OHWI / as the graph holds them", extra_build=front_s + time.perf_counter() - t0)

    if "nchw" not in skip:  # the same default schedules on the graph's own layout: what NHWC buys
        t0 = time.perf_counter()
        nmod, nweights, _ = relax_graph(proto, "NCHW")
        nchw = tune.apply_database(tune.prepare(nmod, tgt), tgt, None)
        vm_variant("tvm default schedules, NCHW", nchw, "as above with -O layout=NCHW: convolutions in the ONNX graph's layout",
                   extra_build=time.perf_counter() - t0, params=nweights)

    if "dlight" not in skip:
        from tvm.s_tir import dlight as dl

        # On a deep copy: ApplyDefaultSchedule marks the functions of the module it is given as scheduled in place,
        # and MetaSchedule then tunes the marked functions, whose records applied on top ran 10-40x slower.
        with tgt:
            dmod = dl.ApplyDefaultSchedule(dl.cpu.GEMV(), dl.cpu.Reduction())(tvm.ir.load_json(tvm.ir.save_json(fused)))
        vm_variant("tvm fused + dlight cpu", dmod, "dlight GEMV/Reduction rules where they match")

    budgets = [float(m) for m in a.tune_minutes.split(",") if m.strip() and float(m) > 0]
    db_dir = work / "tuning-db"
    spent_s = 0.0
    trials_total = 0
    prev = 0.0
    for total_min in budgets:
        stage = total_min - prev
        prev = total_min
        con.print(f"[bold]tuning[/] +{stage:g} min (cumulative {total_min:g})")
        rep = tune.tune(fused, tgt, db_dir, None, stage, int(info.target.get("num-cores", 1)), progress=con.print)
        spent_s += rep.seconds
        trials_total += rep.trials_measured
        tmod = tune.apply_database(fused, tgt, db_dir)
        tuned_tasks = _tuned_task_count(db_dir)
        vm_variant(
            f"tvm tuned {total_min:g} min", tmod,
            f"MetaSchedule, {rep.tasks} tasks ({rep.tasks_small} under 1 % of the time not searched), "
            f"{tuned_tasks} workloads with records, builds killed at {tune.BUILD_TIMEOUT_S:g} s: {rep.build_timeouts}",
            tune_min=spent_s / 60.0, trials=trials_total,
        )

    import numpy as np

    con.print(f"[bold]timing[/] {len(rows)} rows in {a.rounds} interleaved rounds of about {a.seconds:g} s each, started over {ROUND_SPAN_S:.0f} s")
    load1 = os.getloadavg()[0]
    per = _time_interleaved(timers, first_ms, a.rounds, a.seconds)
    for r in rows:
        calls = [t for rnd in per[r["variant"]] for t in rnd]
        round_ms = [float(np.median(rnd)) for rnd in per[r["variant"]]]
        r.update(p50=float(np.median(round_ms)), p90=float(np.percentile(calls, 90)), runs=len(calls), round_ms=round_ms,
                 load1=max(load1, os.getloadavg()[0]))
    raw = {"rows": rows, "top": top, "target": info.name, "target_desc": info.description, "model": spec.name,
           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "args": vars(a)}
    write_file(Path(a.out).with_suffix(".json"), lambda stamp: (json.dumps({**raw, "stamp": asdict(stamp)}, indent=1) + "\n").encode())
    _write(a, rows, top, info.name, info.description, spec.name, raw["when"])
    t = Table(title=f"{spec.name}: TVM vs ONNX Runtime")
    for c in ("variant", "p50 ms", "vs ORT", "cosine", "tuning min", "trials", "build s"):
        t.add_column(c)
    ort = rows[0]["p50"]
    for r in rows:
        t.add_row(r["variant"], f"{r['p50']:.2f}", f"{r['p50'] / ort:.2f}x", f"{r['cosine']:.6f}", f"{r['tune_min']:.1f}",
                  str(r["trials"]), f"{r['build_s']:.1f}")
    Console().print(t)
    return 0


def _tuned_task_count(db_dir: Path) -> int:
    import json

    from edgeopt.runtimes import _tvm_tune as tune

    p = db_dir / tune.RECORD_FILE
    if not p.is_file():
        return 0
    return len({json.loads(ln)[0] for ln in p.read_text().splitlines() if ln.strip()})


def _write(a, rows, top, target: str, target_desc: str, model: str, when: str) -> None:
    ort = rows[0]["p50"]
    fused = next((r for r in rows if r["variant"].startswith("tvm fused, bare")), None)
    default = next((r for r in rows if r["variant"].startswith("tvm default schedules, untuned")), None)
    nchw = next((r for r in rows if r["variant"].startswith("tvm default schedules, NCHW")), None)
    unpacked = next((r for r in rows if r["variant"].startswith("tvm default schedules, weights not")), None)
    tuned = [r for r in rows if r["variant"].startswith("tvm tuned")]
    lines = [
        f"{model}, measured {when}; TVM target `{target}` ({target_desc}). "
        "Weights: `edgeopt.capabilities.live_weights` (seeded random init without muted branches, as docs/backends.md). "
        f"All rows were built first, then timed together at batch 1 in {a.rounds} interleaved rounds (every row in every round, "
        f"the order rotated, the rounds started over {ROUND_SPAN_S:.0f} s: docs/measuring.md), about {a.seconds:g} s of calls per row "
        "and round (at least one call); p50 is the median of the round medians, p90 over all calls. Cosine: vs torch fp32 on 2 real samples.",
        "",
        "| variant | p50 ms | p90 ms | runs | vs ORT | cosine | tuning min (cumulative) | trials measured | build s | load avg | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['p50']:.2f} | {r['p90']:.2f} | {r['runs']} | {r['p50'] / ort:.2f}x | {r['cosine']:.6f} | "
            f"{r['tune_min']:.1f} | {r['trials']} | {r['build_s']:.1f} | {r.get('load1', float('nan')):.1f} | {r['note']} |"
        )
    lines += ["", "## Where the untuned time goes", ""]
    if isinstance(top, dict) and default:
        lines += [
            f"Each of the untuned build's {top['kernels']} kernels (TIR functions; `main` makes {top['calls']} calls) built "
            "alone and timed hot (its weights and inputs in cache, random inputs of its shapes), times its calls: "
            f"{top['sum_ms']:.1f} ms in all, against the build's p50 of {default['p50']:.1f} ms above. The other "
            f"{default['p50'] - top['sum_ms']:.1f} ms are the VM's work between kernels (calls, allocation) and the kernels' "
            "cold reads within a whole inference (a model's weights and activations do not all stay in cache).", "",
            "| kernel | calls | ms per call | ms per inference | share of the sum |", "|---|---:|---:|---:|---:|"]
        for k, n, per, total in top["top"]:
            lines.append(f"| `{k}` | {n} | {per:.3f} | {total:.2f} | {100 * total / top['sum_ms']:.0f}% |")
    else:  # a record written before the kernel profile: one call timed through the VM's instrument hook
        lines += ["Per-kernel times of the untuned build, default schedules (one call, timed through the VM's instrument hook):", "",
                  "| kernel | ms | share |", "|---|---:|---:|"]
        for k, ms_, share in top:
            lines.append(f"| `{k}` | {ms_:.1f} | {100 * share:.0f}% |")
    lines += ["", "## Findings", ""]
    if fused:
        lines.append(
            f"- Without a schedule, TVM is {fused['p50'] / ort:.0f}x slower than ONNX Runtime in this run ({fused['p50']:.0f} ms "
            f"vs {ort:.1f} ms). Legalized TIR without a schedule is a plain scalar loop nest: no tiling, no vectorization, "
            "no threads."
        )
    if default and fused:
        lines.append(
            f"- edgeopt's untuned build gives every function a default schedule without measuring anything: a "
            "sketch of MetaSchedule's design space for the target (inline elementwise ops, multi-level tiling of the "
            "anchor convolution or matmul with its elementwise epilogue computed inside the tiles, parallel outer loops, "
            "vectorized inner ones) with tile sizes chosen by rule (the last spatial loop a 16-lane vector tile, the one "
            "before it a register tile of up to 8 rows, up to 4 reduction iterations inside) and explicit unrolling up to "
            f"64 steps, instead of sampled. {default['p50']:.1f} ms, {default['p50'] / ort:.2f}x ONNX Runtime "
            f"and {fused['p50'] / default['p50']:.1f}x faster than the bare loop nests, for "
            f"{default['build_s'] - fused['build_s']:+.0f} s of build time. Every build, this one included, runs the "
            "convolutions in NHWC (weights transposed once at compile time: `edgeopt.runtimes.tvm.to_nhwc`) and GELU's "
            "erf as TOPI's vectorizable polynomial (`FastMathTransform`) instead of a scalar libm call per element."
        )
    if default and unpacked:
        lines.append(
            f"- Weight pre-packing: the same default schedules reading each weight in the graph's layout (`-O prepack=false`) "
            f"take {unpacked['p50']:.0f} ms, {unpacked['p50'] / default['p50']:.2f}x the packed build's time. A tiled "
            "convolution or matmul walks its weight one tile at a time; in OHWI order each step of the inner tile jumps a "
            "whole row of input channels. MetaSchedule's `RewriteLayout` gives every weight the order of its kernel's tiles "
            "(the preparation marks weights layout-free: `AttachAttrLayoutFreeBuffers`) and `edgeopt.runtimes.tvm.pack_weights` "
            "runs those re-layouts once at compile time, so params.npz holds the weights as the kernels read them "
            "(the same values in other shapes; a weight two kernels read in different orders is stored once for each)."
        )
    topi_pool = next((r for r in rows if r["variant"].startswith("tvm default schedules, TOPI pooling")), None)
    if default and topi_pool:
        lines.append(
            f"- Pooling: the same default schedules with TOPI's pool2d take {topi_pool['p50']:.1f} ms, "
            f"{topi_pool['p50'] / default['p50']:.2f}x the build's time. TOPI pools through a reduction over a "
            "zero-padded window, and an average that leaves the padding out divides by a window size computed per "
            "element; MetaSchedule's CPU rules give that reduction no vector loop over the channels. edgeopt "
            "legalizes channels-last pooling as written-out windows instead (`edgeopt.runtimes._tvm_pool`): each "
            "position of the window a load at a row and column clamped into the image, masked by whether it lies "
            "inside, so the loop over the channels is a plain vector loop, and the pool fuses with its elementwise "
            "consumers (here the token mixer's subtract and layer scale) into one kernel."
        )
    if default and nchw:
        lines.append(
            f"- The same default schedules on the ONNX graph's own NCHW layout (`-O layout=NCHW`): {nchw['p50']:.0f} ms, "
            f"{nchw['p50'] / default['p50']:.2f}x the NHWC build's time. In NCHW the vectorized innermost loop runs along "
            "the image width (56 down to 7 pixels); in NHWC it runs along the output channels, and a 1x1 convolution is a "
            "plain matrix product."
        )
    raw = next((r for r in rows if r["variant"].startswith("tvm raw")), None)
    if raw and fused:
        lines.append(
            f"- Operator fusion alone (raw {raw['p50']:.0f} ms, fused {fused['p50']:.0f} ms) changes little: it saves "
            "memory passes between elementwise ops, not the compute of the unscheduled kernels."
        )
    dl_row = next((r for r in rows if "dlight" in r["variant"]), None)
    if dl_row and fused:
        lines.append(
            f"- dlight's CPU rules (GEMV, Reduction) give {dl_row['p50']:.0f} ms vs {fused['p50']:.0f} ms untuned: they "
            "schedule matrix-vector products and reductions (LLM decoding), not the batched convolutions and token "
            "matmuls of a vision model, so they leave the heavy kernels unscheduled; the difference is noise."
        )
    for r in tuned:
        if not r["trials"]:
            lines.append(
                f"- {r['variant']}: no tuning record was committed in {r['tune_min']:.1f} min (set-up included), so "
                f"this build ran the same default schedules as the untuned one; its {r['p50']:.0f} ms differs from "
                "the untuned row only by the machine's load. No tuned figure comes from this run."
            )
            continue
        lines.append(
            f"- {r['variant']}: {r['p50']:.1f} ms after {r['tune_min']:.1f} min of tuning (set-up included) and "
            f"{r['trials']} measured trials: {(default['p50'] / r['p50']) if default else float('nan'):.2f}x the speed of "
            f"the default schedules, {r['p50'] / ort:.2f}x ONNX Runtime's time. {r['note']}. Each function runs the fastest of "
            "its measured default schedule and its tuned candidates."
        )
    lines += [
        "- Beyond the default schedules, TVM's remedy is MetaSchedule tuning: the same rules, with tile sizes and "
        "unrolling searched by timing candidates on the machine. Whether and how far it closes the gap on this "
        "machine is not shown by this page unless a tuned row above has trials. The cost is tuning time, and on a "
        "2-core machine most of a trial is building the candidate (efficientformer_l1: about 0.5 s of a 0.9 s trial "
        "when built on one core), so edgeopt spends it where it counts (`edgeopt.runtimes._tvm_tune`): candidates "
        "build in a pool of worker processes, one per core, that import TVM once and live as long as the run "
        "(MetaSchedule's LocalBuilder starts fresh workers for every batch, each importing TVM's tensor intrinsics "
        "first: 50 s here), and nothing is built while a candidate is timed; a build is killed after 30 s and "
        "recorded as a failed candidate (builds take 0.1-9 s; the rare candidate that unrolls 512 steps of a large "
        "tile kept LLVM busy for minutes, which once left a 10-minute run with 48 trials); set-up skips the "
        "tensor-intrinsic import (the CPU rules tensorize nothing). Each task's default schedule is measured first and "
        "committed as a record, so a candidate replaces it only where it ran faster (a short budget cannot leave a "
        "model slower than untuned), and a task whose default takes under 1 % of the model's time (run time x "
        "occurrences) is not searched: it could save at most that, and the search's first round would give it as "
        "many trials as the heaviest kernel. The heaviest tasks (FLOPs x occurrences) go first; the search is sized "
        "to the budget and stops at it after the batch in flight; every record stays in the persistent database, so "
        "minutes spent in several sessions add up (`edgeopt compile -b tvm -O tune_minutes=N` resumes from "
        "`~/.cache/edgeopt/tvm/<target>/`, one database per target that every model shares: a kernel one model "
        "tuned is reused by another with the same workload).",
        "- Per-op library fallbacks are not available from this wheel: apache-tvm 0.27 on PyPI is built without "
        "DNNL/oneDNN and without CBLAS/MKL (`relax.ext.dnnl`, `tvm.contrib.cblas.matmul` are not registered), so "
        "BYOC offload of convolutions/matmuls needs TVM built from source. A DLPack fallback to numpy/OpenBLAS "
        "through `R.call_dps_packed` would cover matmuls but not convolutions; it was not built.",
        "- Cross-compiled targets (cortex-a72/a76/a78ae, aarch64) cannot be tuned on this host: MetaSchedule must "
        "time candidates on the target CPU (an RPC runner on the board). A database tuned on the board can be "
        "applied at compile time with `-O tuning_db=DIR`.",
        "- QDQ graphs (ONNX Runtime static int8, e.g. `--passes reparam,quantize:mode=int8 --backend tvm`) import "
        "and run: Relax's ONNX frontend maps QuantizeLinear/DequantizeLinear to relax quantize/dequantize, which "
        "legalize to float arithmetic (round, clip, cast), so the convolutions and matmuls still compute in float on "
        "dequantized weights. The outputs match ORT's integer kernels to rounding "
        "(`tests/test_tvm_qdq.py`; efficientformer_l1 after reparam: artifact cosine 0.99981 on TVM and on ORT). "
        "Integer kernels (what makes int8 fast on ORT and LiteRT) would need a QNN-style integer lowering, which the "
        "Relax frontend does not do; whatever the untuned int8 build gains or loses against untuned fp32 comes from "
        "the different graph (NCHW convolutions, weights not pre-packed: packing would lift each weight's dequantize "
        "with its re-layout and store the int8 weights as floats), not from int8 arithmetic. docs/capabilities.md "
        "has the tvm int8 column.",
        "",
        "## Reproduce",
        "",
        "```",
        f"python bench/tvm_tuning.py --model {model} --tune-minutes {a.tune_minutes}",
        "python bench/tvm_tuning.py --render docs/tvm.json   # re-render this page from the saved figures",
        "```",
    ]
    if getattr(a, "note", None):
        lines += ["", "## Notes given with the command", "", a.note]
    ort = next((r for r in rows if r["variant"] == "onnxruntime fp32"), None)
    write_block(a.out, "tvm", "\n".join(lines), title="TVM performance investigation",
                figures=path_figures(model, "ORT fp32", ort["round_ms"]) if ort is not None else None)


if __name__ == "__main__":
    sys.exit(main())
