"""Pass pipelines side by side: ORT latency p50, size, params, MACs and fidelity per model; writes docs/passes.md.

    .venv/bin/python bench/passes.py [--models a,b] [--weights random,calibrated] [--calibrated-models a,b]
                                     [--samples 4] [--rounds 3]
    .venv/bin/python bench/passes.py --quant-types   # which static int8 format/types are fastest here

`--weights random,calibrated` (the default) writes two sections of docs/passes.md in one run: every model
on random weights, then `--calibrated-models` (default efficientformer_l1, shvit_s1) on `calibrated`
weights (edgeopt/calibrate.py), with the time calibration took.

Each distinct torch-pass prefix (none, reparam, reparam+prune, reparam+lowrank) is run and exported once;
the graph passes are applied to that export. All artifacts of one model are then timed in interleaved
rounds (ORT CPU, same sample, each graph in a process of its own, about 0.5 s of calls per round, the rounds
started over 90 s: _doc.ROUND_SPAN_S; median of the rounds' medians), so every row of a model saw the same load.
Fidelity is against the fp32 torch model on the real sample inputs, with the weights named in the table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _doc import ROUND_SPAN_S, DocRun, add_args, write_block  # noqa: E402

MODELS = ["efficientformer_l1", "shvit_s1", "mobileclip_s0_image", "leyolo_nano", "mobile_r2l_blender"]
# row name -> (torch passes, graph passes)
PIPELINES = {
    "none": ("", ""),
    "reparam": ("reparam", ""),
    "reparam+int8": ("reparam", "quantize:int8"),
    "reparam+prune30+int8": ("reparam,prune:ratio=0.3", "quantize:int8"),
    "reparam+lowrank+int8": ("reparam,lowrank:energy=0.9", "quantize:int8"),
    "fp16": ("", "quantize:fp16"),
    "mixed@0.999": ("", "quantize:mixed,target=0.999"),
}
TASK_METRIC = {"classification": "top1_agreement", "clip": "rank_agreement", "detection": "map50",
               "light_field": "psnr_db"}


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def bench_model(name: str, weights: str, n_samples: int, rounds: int, work: Path) -> tuple[list[dict], str, str]:
    """Rows of one model (one per pipeline), its task metric name, and a line on how its weights were made."""
    import torch

    from edgeopt._ort import ort_run_all
    from edgeopt._timed_worker import ort_round_latencies
    from edgeopt.capabilities import live_weights
    from edgeopt.export import export_onnx, torch_outputs
    from edgeopt.fidelity import task_metrics
    from edgeopt.models import get_spec
    from edgeopt.models.counting import count_macs, count_params
    from edgeopt.passes.base import PassContext
    from edgeopt.passes.pipeline import build_pipeline

    spec = get_spec(name)
    torch.manual_seed(0)
    if weights == "calibrated":
        from edgeopt.calibrate import build_calibrated

        t0 = time.perf_counter()
        module, label = build_calibrated(spec)
        secs = time.perf_counter() - t0
        wname = f"calibrated (test acc {label.get('test_accuracy', '-')})" if "test_accuracy" in label else "calibrated (BN only)"
        made = (f"calibration took {secs:.0f} s (BN on {label.get('bn_images')} images; trained: {label.get('trained')}"
                + (f"; held-out digit accuracy {label['test_accuracy']}, mean top-1 probability {label['mean_top1_prob']}" if "test_accuracy" in label else "")
                + ")")
    else:
        module, _ = live_weights(name)
        wname, made, label = "random", "seeded random init, muted branches revived (capabilities.live_weights)", {}
    ins, outs = [i.name for i in spec.inputs], list(spec.outputs)
    if weights == "calibrated" and "test_accuracy" in label:
        # held-out digits the head was not trained or tested on: inputs the model is confident on, so that
        # top-1 agreement measures what a pass changed (on photos its logits are near-tied, like random ones)
        from edgeopt.calibrate import digit_images

        n_digits = max(n_samples, 16)
        x, _ = digit_images(spec, n_digits, offset=label["train_images"] + label["test_images"])
        samples = [{ins[0]: x[i : i + 1].numpy()} for i in range(n_digits)]
        made += f"; fidelity and int8 calibration on {n_digits} held-out load_digits images"
    else:
        samples = spec.sample_inputs(n_samples)
    refs = [torch_outputs(module, s, ins, outs) for s in samples]
    rows: list[dict] = []
    exported: dict[str, tuple[Path, int, int | None]] = {}
    artifacts: dict[str, Path] = {}
    notes: dict[str, list[str]] = {}
    for row, (tspec, gspec) in PIPELINES.items():
        ctx = PassContext(name, spec.task, ins, outs, samples, refs, work, fidelity=lambda o: task_metrics(spec.task, refs, o))
        rec = {"model": name, "pipeline": row, "weights": wname}
        try:
            if tspec not in exported:
                mod, tnotes = module, []
                for p in build_pipeline(tspec) if tspec else []:
                    p.config = p.Config(**{**p.config.model_dump(), **({"measure_latency": False} if "measure_latency" in p.Config.model_fields else {})})
                    mod, trep = p.run(mod, ctx)
                    tnotes.append(f"{p.name}: {trep.notes[0][:120]}" if trep.notes else p.name)
                path = work / f"{name}_{len(exported)}.onnx"
                export_onnx(mod, samples[0], ins, outs, path)
                try:
                    macs = count_macs(mod, tuple(torch.from_numpy(samples[0][i]) for i in ins))
                except Exception:  # noqa: BLE001
                    macs = None
                exported[tspec] = (path, count_params(mod), macs)
                notes[tspec] = tnotes
            path, params, macs = exported[tspec]
            rec["note"] = "; ".join(notes.get(tspec, []))
            for p in build_pipeline(gspec) if gspec else []:
                ctx.workdir = work / f"{name}_{row}"
                ctx.workdir.mkdir(exist_ok=True)
                path, rep = p.run(path, ctx)
                rec["note"] = "; ".join(x for x in (rec.get("note"), rep.notes[0][:160] if rep.notes else "") if x)
            fid = ctx.fidelity(ort_run_all(path, samples))
            rec.update(size_mb=path.stat().st_size / 1e6, params_m=params / 1e6, gmacs=(macs or 0) / 1e9,
                       cosine=fid["cosine"], snr_db=fid["snr_db"], task_metric=fid.get(TASK_METRIC.get(spec.task, ""), None))
            artifacts[row] = path
        except Exception as e:  # noqa: BLE001 - a row that fails says why; the others still run
            rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        _say(f"{name} {row}: {rec.get('error') or 'ok'}")
        rows.append(rec)
    lat = ort_round_latencies(artifacts, samples[0], rounds=rounds, seconds=0.5, span_s=ROUND_SPAN_S)
    for rec in rows:
        if rec["pipeline"] in lat:
            rec["p50_ms"] = float(np.median(lat[rec["pipeline"]]))
    return rows, TASK_METRIC.get(spec.task, ""), made


def quant_types(n_samples: int, rounds: int, work: Path) -> list[dict]:
    """Static int8 format x activation/weight types for efficientformer_l1, with fp32 and dynamic beside."""

    from edgeopt._ort import ort_run_all
    from edgeopt._timed_worker import ort_round_latencies
    from edgeopt.capabilities import live_weights
    from edgeopt.export import export_onnx, torch_outputs
    from edgeopt.fidelity import task_metrics
    from edgeopt.models import get_spec
    from edgeopt.passes.base import PassContext
    from edgeopt.passes.pipeline import build_pipeline

    spec = get_spec("efficientformer_l1")
    module, _ = live_weights("efficientformer_l1")
    samples = spec.sample_inputs(n_samples)
    refs = [torch_outputs(module, s, ["image"], ["logits"]) for s in samples]
    src = work / "l1.onnx"
    export_onnx(module, samples[0], ["image"], ["logits"], src)
    configs = {
        "fp32": None,
        "qdq u8 act x s8 w": "quantize:int8,format=qdq,activation_type=uint8,weight_type=int8",
        "qdq s8 x s8": "quantize:int8,format=qdq,activation_type=int8,weight_type=int8",
        "qdq u8 x u8": "quantize:int8,format=qdq,activation_type=uint8,weight_type=uint8",
        "qoperator u8 x s8": "quantize:int8,format=qoperator,activation_type=uint8,weight_type=int8",
        "qdq u8 x s8, Conv/MatMul/Gemm only": "quantize:int8,format=qdq,op_types=Conv|MatMul|Gemm",
        "qoperator u8 x s8, Conv/MatMul/Gemm only": "quantize:int8,format=qoperator,op_types=Conv|MatMul|Gemm",
        "dynamic s8 w": "quantize:dynamic",
    }
    paths, rows = {}, []
    for k, specstr in configs.items():
        ctx = PassContext("efficientformer_l1", "classification", ["image"], ["logits"], samples, refs, work / k.replace(" ", "_").replace("/", "-"),
                          fidelity=lambda o: task_metrics("classification", refs, o))
        ctx.workdir.mkdir(exist_ok=True)
        paths[k] = src if specstr is None else build_pipeline(specstr)[0].run(src, ctx)[0]
        fid = ctx.fidelity(ort_run_all(paths[k], samples))
        rows.append({"config": k, "cosine": fid["cosine"], "size_mb": paths[k].stat().st_size / 1e6})
        _say(f"quant types: {k}")
    lat = ort_round_latencies(paths, samples[0], rounds=rounds, seconds=0.5, span_s=ROUND_SPAN_S)
    for r in rows:
        r["p50_ms"] = float(np.median(lat[r["config"]]))
        r["min_round_ms"] = float(np.min(lat[r["config"]]))
    return rows


def _env() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


def _fmt(v, f="{:.2f}") -> str:
    return "-" if v is None else f.format(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--weights", default="random,calibrated", help="random, calibrated, or both (comma-separated)")
    ap.add_argument("--calibrated-models", default="efficientformer_l1,shvit_s1")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quant-types", action="store_true", help="measure static int8 formats/types on efficientformer_l1")
    ap.add_argument("--out", default=str(ROOT / "docs" / "passes.md"))
    add_args(ap)
    a = ap.parse_args()
    out = Path(a.out)
    with DocRun.from_args(a), tempfile.TemporaryDirectory(prefix="bench-passes-") as tmp:
        work = Path(tmp)
        if a.quant_types:
            rows = quant_types(a.samples, a.rounds, work)
            lines = ["## Static int8 on x86: which format and types are fastest here (efficientformer_l1)", "",
                     f"{_env()}.", "",
                     "| configuration | ORT p50 ms | fastest round ms | cosine vs fp32 | size MB |", "|---|---|---|---|---|"]
            lines += [f"| {r['config']} | {r['p50_ms']:.1f} | {r['min_round_ms']:.1f} | {r['cosine']:.5f} | {r['size_mb']:.1f} |" for r in rows]
            section = "\n".join(lines) + "\n"
            write_block(out, "passes-quant-types", section, title="Optimization passes: measured")
        else:
            for weights in a.weights.split(","):
                models = a.models if weights == "random" else a.calibrated_models
                pipelines_section(weights, models.split(","), a, out, work)
            return
    print(section)


def pipelines_section(weights: str, models: list[str], a: argparse.Namespace, out: Path, work: Path) -> None:
    """Run every pipeline on `models` with `weights`; stage its section of `out` (bench/_doc.py) after each model."""
    from edgeopt.models import list_models

    marker = f"## Pipelines per model: {weights} weights"
    t0 = time.perf_counter()
    head = [marker, ""]
    lines: list[str] = []
    for m in models:
        if m not in list_models():
            lines += [f"### {m}", "", "not registered in this tree when the bench ran; skipped.", ""]
            continue
        _say(f"model {m} ({weights} weights)")
        tm = time.perf_counter()
        rows, metric, made = bench_model(m, weights, a.samples, a.rounds, work)
        lines += [f"### {m}", "", f"Weights: {made}. Whole model: {time.perf_counter() - tm:.0f} s.", "",
                  f"| pipeline | p50 ms | size MB | params M | GMACs | cosine | SNR dB | {metric or 'task'} | weights | note |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['pipeline']} | failed | | | | | | | {r['weights']} | {r['error']} |")
                continue
            lines.append(
                f"| {r['pipeline']} | {_fmt(r.get('p50_ms'), '{:.1f}')} | {r['size_mb']:.1f} | {r['params_m']:.2f} | {r['gmacs']:.3f} | "
                f"{r['cosine']:.5f} | {_fmt(r['snr_db'], '{:.1f}')} | {_fmt(r['task_metric'], '{:.3f}')} | {r['weights']} | {r.get('note', '')} |"
            )
        lines.append("")
        # staged after every model; the last one staged is written when the run ends clean (bench/_doc.py)
        intro = [f"Command: `.venv/bin/python bench/passes.py --weights {a.weights} --models {a.models} "
                 f"--calibrated-models {a.calibrated_models} --samples {a.samples} --rounds {a.rounds}`. {_env()}; "
                 f"this section took {time.perf_counter() - t0:.0f} s.",
                 f"Latency: ONNX Runtime CPU, one image, median of {a.rounds} interleaved rounds of about 0.5 s of calls started over "
                 f"{ROUND_SPAN_S:.0f} s, each graph in a process of its own (`edgeopt._timed_worker`; all rows of a model timed in the same rounds). Fidelity: against the fp32 torch model on the real sample inputs; the task column is top-1 "
                 "agreement (classification), rank agreement (CLIP), mAP@0.5 vs fp32 detections (detection), PSNR dB "
                 "(light field).", ""]
        section = "\n".join(head + intro + lines) + "\n"
        write_block(out, f"passes-{weights}", section, title="Optimization passes: measured")
    print(section)


if __name__ == "__main__":
    main()
