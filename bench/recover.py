"""The figures of issue 13 items 5 and 6 on calibrated efficientformer_l1; writes docs/passes.md.

    .venv/bin/python bench/recover.py [--model efficientformer_l1] [--calib 128] [--eval 800]
                                      [--steps 600] [--rounds 5] [--only prune,quantize]

Data: scikit-learn's load_digits (the images the `calibrated` weights classify), upsampled like the weights'
training data; the calibration split (`--calib` images) and the evaluation split (`--eval` images, labelled;
800 by default, since a 0.5-point max_drop needs 765 to be resolved)
are disjoint from each other and from the digits calibration trained and tested the head on.

- prune: `prune:ratio=0.3` without and with `recover=--steps`: top-1 agreement with fp32 on the evaluation
  split (with its 95% Wilson interval), top-1 accuracy against the digit labels, ORT latency of the fp32
  model and of both pruned models timed in interleaved rounds, and the recovery's time and loss.
- quantize: plain `quantize:int8` against `quantize:int8,max_drop=0.5` (accuracy points against the labels):
  accuracy drop, the nodes kept in float, ORT latency of fp32 / int8 / accuracy-controlled.

Writes its block of docs/passes.md through bench/_doc.py: only when the run ends clean (other processes used
at most --max-foreign-share of the CPUs), stamped with the command, date and load. `--no-write` prints only.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _doc import DocRun, add_args, write_block  # noqa: E402

MARKER = "## Accuracy kept: prune recovery and accuracy-controlled int8"
BLOCK = "passes-recover"  # the block of docs/passes.md this script writes (bench/_doc.py)


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion p measured on n samples."""
    if n == 0:
        return 0.0, 1.0
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def _data(model: str, n_calib: int, n_eval: int):
    """(spec, calibrated module, weights label, calibration samples, eval samples, eval labels)."""
    from edgeopt.calibrate import build_calibrated, digit_images
    from edgeopt.models import get_spec

    spec = get_spec(model)
    module, label = build_calibrated(spec)
    x, y = digit_images(spec, n_calib + n_eval, offset=label["train_images"] + label["test_images"])
    name = spec.inputs[0].name
    calib = [{name: x[i : i + 1].numpy()} for i in range(n_calib)]
    evals = [{name: x[i : i + 1].numpy()} for i in range(n_calib, n_calib + n_eval)]
    return spec, module, label, calib, evals, y[n_calib:].numpy()


def _ctx(spec, module, calib, evals, labels, work: Path):
    from edgeopt.export import torch_outputs
    from edgeopt.fidelity import task_metrics
    from edgeopt.passes.base import PassContext

    ins, outs = [i.name for i in spec.inputs], list(spec.outputs)
    refs = [torch_outputs(module, s, ins, outs) for s in calib]
    erefs = [torch_outputs(module, s, ins, outs) for s in evals]
    return PassContext(spec.name, spec.task, ins, outs, calib, refs, work, fidelity=lambda o: task_metrics(spec.task, refs, o),
                       eval_samples=evals, eval_references=erefs, eval_labels=labels)


def _scores(ctx, outs) -> dict[str, float]:
    from edgeopt.fidelity import task_metrics

    agree = task_metrics(ctx.task, ctx.eval_references, outs)["top1_agreement"]
    top1 = np.array([int(np.argmax(o[ctx.output_names[0]])) for o in outs])
    ref = np.array([int(np.argmax(r[ctx.output_names[0]])) for r in ctx.eval_references])
    return {"agreement": agree, "accuracy": float(np.mean(top1 == ctx.eval_labels)), "fp32_accuracy": float(np.mean(ref == ctx.eval_labels))}


def prune_rows(spec, module, ctx, steps: int, rounds: int, work: Path) -> list[dict]:
    from edgeopt._timed_worker import ort_latencies
    from edgeopt.export import export_onnx, torch_outputs
    from edgeopt.passes.pipeline import build_pipeline

    rows, paths = [], {}
    path = work / "fp32.onnx"
    export_onnx(module, ctx.samples[0], ctx.input_names, ctx.output_names, path)
    paths["fp32"] = path
    rows.append({"row": "fp32", **_scores(ctx, ctx.eval_references), "note": "the reference"})
    for label, spec_str in (("prune 0.3", "prune:ratio=0.3,measure_latency=false"),
                            (f"prune 0.3 + recover={steps}", f"prune:ratio=0.3,recover={steps},measure_latency=false")):
        _say(f"{label}")
        t0 = time.perf_counter()
        out, rep = build_pipeline(spec_str)[0].run(module, ctx)
        total = time.perf_counter() - t0
        outs = [torch_outputs(out, s, ctx.input_names, ctx.output_names) for s in ctx.eval_samples]
        p = work / f"{label.replace(' ', '_').replace('=', '')}.onnx"
        export_onnx(out, ctx.samples[0], ctx.input_names, ctx.output_names, p)
        paths[label] = p
        r = rep.recovery
        rows.append({"row": label, **_scores(ctx, outs), "params_m": rep.params_after / 1e6, "pass_s": total,
                     "recovery_s": r.seconds if r else None,
                     "note": (f"loss {r.loss_first:.3g} -> {r.loss_last:.3g}; batch {r.batch}, lr {r.lr:g}, {r.augment}" if r else "BN re-estimated only")})
    _say("ORT latency, interleaved rounds")
    lat = ort_latencies(paths, ctx.samples[0], rounds=rounds, runs=20)
    for row in rows:
        row["p50_ms"] = lat[row["row"]]
    return rows


def quantize_rows(spec, module, ctx, rounds: int, work: Path) -> list[dict]:
    from edgeopt._ort import ort_run_all
    from edgeopt._timed_worker import ort_latencies
    from edgeopt.export import export_onnx
    from edgeopt.passes.pipeline import build_pipeline

    src = work / "q_fp32.onnx"
    export_onnx(module, ctx.samples[0], ctx.input_names, ctx.output_names, src)
    paths, rows = {"fp32": src}, [{"row": "fp32", **_scores(ctx, ctx.eval_references), "note": "the reference"}]
    for label, spec_str in (("int8", "quantize:int8"), ("int8 max_drop=0.5", "quantize:int8,max_drop=0.5")):
        _say(label)
        ctx.workdir = work / label.replace(" ", "_").replace("=", "")
        ctx.workdir.mkdir(exist_ok=True)
        t0 = time.perf_counter()
        try:
            out, rep = build_pipeline(spec_str)[0].run(src, ctx)
        except Exception as e:  # noqa: BLE001 - a max_drop that cannot be met is a row that says so
            rows.append({"row": label, "error": str(e).splitlines()[0][:300]})
            continue
        paths[label] = out
        ch = rep.changes[0]
        rows.append({"row": label, **_scores(ctx, ort_run_all(out, ctx.eval_samples)), "pass_s": time.perf_counter() - t0,
                     "note": rep.notes[0][:300] + (f"; float: {', '.join(n['node'] for n in ch.get('float_nodes', []))}" if ch.get("float_nodes") else "")})
    lat = ort_latencies(paths, ctx.samples[0], rounds=rounds, runs=20)
    for row in rows:
        row["p50_ms"] = lat.get(row["row"])
    return rows


def _table(rows: list[dict], n: int) -> list[str]:
    out = ["| row | top-1 agreement with fp32 [95% CI] | top-1 accuracy (fp32's) | ORT p50 ms | params M | pass s | recovery s | note |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['row']} | failed | | | | | | {r['error']} |")
            continue
        lo, hi = wilson(r["agreement"], n)
        f = lambda v, s="{:.1f}": "-" if v is None else s.format(v)  # noqa: E731
        out.append(f"| {r['row']} | {r['agreement']:.3f} [{lo:.3f}, {hi:.3f}] | {r['accuracy']:.3f} ({r['fp32_accuracy']:.3f}) | "
                   f"{f(r.get('p50_ms'), '{:.2f}')} | {f(r.get('params_m'), '{:.2f}')} | {f(r.get('pass_s'), '{:.0f}')} | "
                   f"{f(r.get('recovery_s'), '{:.0f}')} | {r.get('note', '')} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientformer_l1")
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--eval", type=int, default=800)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default="prune,quantize")
    ap.add_argument("--out", default=str(ROOT / "docs" / "passes.md"))
    ap.add_argument("--no-write", action="store_true", help="print the section, leave the docs alone")
    add_args(ap)
    a = ap.parse_args()
    import onnxruntime

    t0 = time.perf_counter()
    parts = set(a.only.split(","))
    with DocRun.from_args(a), tempfile.TemporaryDirectory(prefix="bench-recover-") as tmp:
        work = Path(tmp)
        _say(f"calibrated weights + digits ({a.calib} calibration, {a.eval} evaluation)")
        spec, module, label, calib, evals, labels = _data(a.model, a.calib, a.eval)
        ctx = _ctx(spec, module, calib, evals, labels, work)
        lines = [MARKER, ""]
        lines += [f"onnxruntime {onnxruntime.__version__}, torch threads {_threads()}.", "",
                  f"{a.model}, calibrated weights (held-out digit accuracy {label.get('test_accuracy')}); calibration split "
                  f"{a.calib} and evaluation split {a.eval} load_digits images, disjoint; agreement is top-1 agreement with "
                  "the fp32 model on the evaluation split (Wilson 95% interval), accuracy is against the digit labels "
                  "(the fp32 model's in brackets). Latency: ONNX Runtime CPU, one image, median of interleaved rounds.", ""]
        if "prune" in parts:
            lines += ["### prune 0.3 with and without recovery", ""] + _table(prune_rows(spec, module, ctx, a.steps, a.rounds, work), a.eval) + [""]
        if "quantize" in parts:
            lines += ["### plain int8 against max_drop=0.5", ""] + _table(quantize_rows(spec, module, ctx, a.rounds, work), a.eval) + [""]
        lines.append(f"Whole run: {time.perf_counter() - t0:.0f} s.")
        section = "\n".join(lines) + "\n"
        print(section)
        if not a.no_write:
            write_block(Path(a.out), BLOCK, section, title="Optimization passes: measured")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
