"""The model zoo table: every registered variant, measured on this machine, written to docs/models.md.

For each spec: params and MACs counted on `meta` (FlopCounterMode; MACs = FLOPs / 2) next to the paper's
figures, then (in a child process with a time limit, so one slow model cannot stall the table) fp32 ONNX
export time, ONNX Runtime latency (median of timed runs after warm-up), and the max abs difference
between ONNX Runtime's and torch's outputs on real sample inputs. Models too large to export on this
machine are counted only, with the reason.

    .venv/bin/python bench/models.py                     # all variants -> docs/models.md
    .venv/bin/python bench/models.py --only mobileclip_s0 --no-write
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _doc import DocRun, add_args, figure_name, write_block  # noqa: E402

# Above this many parameters an fp32 export (module + exporter copies + a >2 GB external-data graph)
# does not fit this 24 GiB machine next to other work; such models are counted on meta only.
EXPORT_MAX_PARAMS_M = 400.0


def count(name: str) -> dict:
    import torch

    from edgeopt.models import get_spec
    from edgeopt.models.counting import count_macs, count_params

    spec = get_spec(name)
    m = spec.build(device="meta")
    ex = tuple(torch.zeros(i.shape, dtype=getattr(torch, i.dtype), device="meta") for i in spec.inputs)
    t0 = time.perf_counter()
    try:
        macs = count_macs(m, ex, convention=spec.paper.macs_convention) / 1e9
    except Exception as e:  # noqa: BLE001 - report, do not stop the table
        macs, why = None, f"MACs not countable on meta: {type(e).__name__}"
    else:
        why = None
    return {"params_m": count_params(m) / 1e6, "macs_g": macs, "count_s": time.perf_counter() - t0, "count_note": why}


def measure_one(name: str, runs: int, min_seconds: float, threads: int | None) -> dict:
    """Export + parity + latency of one variant (runs in the child process)."""
    import numpy as np

    from edgeopt._ort import ort_run_all, ort_session
    from edgeopt.capabilities import live_weights
    from edgeopt.export import export_onnx, torch_outputs
    from edgeopt.fidelity import output_metrics
    from edgeopt.models import get_spec

    spec = get_spec(name)
    module, _ = live_weights(name)
    names, outs = [i.name for i in spec.inputs], list(spec.outputs)
    samples = spec.sample_inputs(2)
    refs = [torch_outputs(module, s, names, outs) for s in samples]
    with tempfile.TemporaryDirectory(prefix="edgeopt-bench-") as d:
        path = Path(d) / "model.onnx"
        info = export_onnx(module, samples[0], names, outs, path, dynamic_axes=spec.dynamic_axes)
        got = ort_run_all(path, samples, threads)
        m = output_metrics(refs, got)
        sess = ort_session(path, threads)
        feed = {i.name: samples[0][i.name] for i in sess.get_inputs()}
        for _ in range(3):
            sess.run(None, feed)
        ts: list[float] = []
        t_end = time.perf_counter() + min_seconds
        while len(ts) < runs or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            sess.run(None, feed)
            ts.append((time.perf_counter() - t0) * 1e3)
            if len(ts) >= 10 * runs:
                break
        size_mb = path.stat().st_size / 1e6
    return {
        "export_s": info.seconds, "exporter": info.exporter, "fallback": info.fallback_reason,
        "ort_ms_p50": float(np.median(ts)), "ort_runs": len(ts), "max_abs": m["max_abs"], "cosine": m["cosine"],
        "onnx_mb": size_mb,
    }


def run_child(name: str, timeout: float, runs: int, min_seconds: float, threads: int | None) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--runs", str(runs), "--min-seconds", str(min_seconds)]
    if threads:
        cmd += ["--threads", str(threads)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s (per-model limit)"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"error": f"failed: {tail}"}
    return json.loads(lines[-1])


def _fmt(x, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def _delta(measured, paper) -> str:
    if measured is None or paper is None:
        return ""
    return f" ({measured / paper - 1:+.1%})"


def table(rows: list[dict]) -> str:
    head = (
        "| model | family | task | inputs | params M: measured / paper | GMACs: measured / paper | export s | exporter "
        "| ORT fp32 p50 ms | max abs diff vs torch | note |"
    )
    out = [head, "|" + "---|" * 11]
    for r in rows:
        params = f"{r['params_m']:.2f} / {_fmt(r['paper_params_m'])}{_delta(r['params_m'], r['paper_params_m'])}"
        macs = f"{_fmt(r['macs_g'], '.3f')} / {_fmt(r['paper_macs_g'], '.3f')}{_delta(r['macs_g'], r['paper_macs_g'])}"
        note = r.get("error") or r.get("skip") or r.get("fallback") or r.get("count_note") or ""
        out.append(
            f"| {r['name']} | {r['family']} | {r['task']} | {r['inputs']} | {params} | {macs} | {_fmt(r.get('export_s'), '.1f')} "
            f"| {r.get('exporter', '-')} | {_fmt(r.get('ort_ms_p50'), '.2f')} | {_fmt(r.get('max_abs'), '.2e')} | {note.replace('|', '/')} |"
        )
    return "\n".join(out)


def write_doc(a, rows: list[dict], seconds: float) -> None:
    import onnxruntime
    import torch

    doc = [
        f"Whole table: {seconds:.0f} s; "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; ORT threads: {a.threads or 'default'}.",
        "",
        "- params and MACs: counted on the `meta` device with `FlopCounterMode` (MACs = FLOPs / 2), random init; "
        "paper figures and their sources are in each spec's card (`edgeopt models`). Δ in brackets.",
        "- export: fp32 ONNX (opset 18; dynamo exporter, TorchScript fallback where noted), wall time.",
        f"- ORT fp32 p50: median of at least {a.runs} runs / {a.min_seconds:.0f} s after 3 warm-up runs, one sample, CPU EP.",
        "- max abs diff: ONNX Runtime vs torch on 2 real samples (photographs / prompts / poses), all outputs, the "
        "weights every page times (`edgeopt.capabilities.live_weights`: seeded random init, muted branches revived).",
        "",
        table(rows),
    ]
    figs = {figure_name(r["name"], "ORT fp32"): r["ort_ms_p50"] for r in rows if r.get("ort_ms_p50")}
    write_block(a.out, "models", "\n".join(doc), title="Model zoo: measured vs paper", figures=figs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="variant names (default: every registered variant)")
    ap.add_argument("--timeout", type=float, default=420.0, help="seconds per model for export + parity + latency")
    ap.add_argument("--budget", type=float, default=3600.0, help="seconds for the whole run; models left are counted only")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: ORT's choice)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "models.md"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    add_args(ap)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure_one(a.child, a.runs, a.min_seconds, a.threads)))
        return
    with DocRun.from_args(a):
        run(a)


def run(a: argparse.Namespace) -> None:
    from rich.console import Console

    from edgeopt.models import all_specs

    con = Console(stderr=True)
    specs = [s for s in all_specs() if not a.only or s.name in a.only]
    t_all = time.perf_counter()
    rows = []
    for i, s in enumerate(specs, 1):
        r = {
            "name": s.name, "family": s.family, "task": s.task,
            "inputs": " ".join(f"{x.name}{list(x.shape)}" for x in s.inputs),
            "paper_params_m": s.paper.params_m, "paper_macs_g": s.paper.macs_g,
        }
        with con.status(f"[{i}/{len(specs)}] {s.name}: counting on meta"):
            r.update(count(s.name))
        if s.generative is not None:
            r["skip"] = f"generative: compiles to a bundle of its split graphs ({s.generative.vision}, {s.generative.prefill}, {s.generative.decode}); {s.name}_whole is its single graph (docs/llm.md)"
        elif r["params_m"] > EXPORT_MAX_PARAMS_M:
            r["skip"] = (
                f"not exported here: {r['params_m']:.0f} M params = {r['params_m'] * 4 / 1e3:.1f} GB fp32 (counted on meta only); "
                "the full TinyGPT-V compiles part by part, each part in its own process (docs/llm.md)"
            )
        rows.append(r)
    # Export the small models first, so a run that meets its time budget still covers the most variants.
    todo = sorted((r for r in rows if "skip" not in r), key=lambda r: r["params_m"])
    for i, r in enumerate(todo, 1):
        left = a.budget - (time.perf_counter() - t_all)
        if left < 30:
            r["skip"] = f"not exported: this run's time budget ({a.budget:.0f} s) ran out (counted on meta only)"
            continue
        with con.status(f"[{i}/{len(todo)}] {r['name']}: export, parity, latency"):
            r.update(run_child(r["name"], min(a.timeout, left), a.runs, a.min_seconds, a.threads))
        con.print(f"{r['name']}: " + json.dumps({k: r[k] for k in r if k in ("params_m", "macs_g", "export_s", "ort_ms_p50", "max_abs", "error")}))
    md = table(rows)
    print(md)
    if not a.no_write:
        write_doc(a, rows, time.perf_counter() - t_all)


if __name__ == "__main__":
    main()
