"""`make demo`: efficientformer_l1 -> ONNX Runtime fp32 and static int8 -> profiled on this machine ->
stored -> compared in one table.

Usage: python examples/demo.py [--weights PATH] [--db URL] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

import edgeopt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="a local efficientformer_l1 checkpoint (timm or official layout)")
    ap.add_argument("--db", default="sqlite:///demo.db")
    ap.add_argument("--out", default="out/demo")
    ap.add_argument("--runs", type=int, default=30)
    a = ap.parse_args()
    con = Console(width=None if Console().is_terminal else 140)  # full table in CI logs too
    out = Path(a.out)
    jobs = [("fp32", None), ("int8", "quantize:int8")]
    results = {}
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=con) as prog:
        for label, passes in jobs:
            task = prog.add_task(f"{label}: compile", total=None)
            t0 = time.perf_counter()
            b = edgeopt.compile(
                "efficientformer_l1", backend="onnxruntime", passes=passes, weights=a.weights,
                output=out / f"efficientformer_l1-{label}.bundle", overwrite=True,
                progress=lambda m, t=task, lb=label: prog.update(t, description=f"{lb}: {m}"),
            )
            compile_s = time.perf_counter() - t0
            prog.update(task, description=f"{label}: profile on local")
            r = edgeopt.profile(b.path, device="local", runs=a.runs, warmup=5, min_seconds=2.0, db=a.db)
            prog.update(task, description=f"{label}: done", completed=1, total=1)
            results[label] = (b, r, compile_s)

    w = results["fp32"][0].manifest.weights
    t = Table(title="efficientformer_l1 on ONNX Runtime, this machine, batch 1")
    for c in ("precision", "p50 ms", "p90 ms", "CV", "size MB", "cosine vs fp32", "SNR dB", "top-1 agreement", "outputs match", "compile s"):
        t.add_column(c, justify="right")
    for label, (b, r, cs) in results.items():
        f = b.manifest.fidelity
        t.add_row(
            label, f"{r.latency_ms.p50:.2f}", f"{r.latency_ms.p90:.2f}", f"{r.cv:.3f}",
            f"{b.size_bytes() / 1e6:.1f}", f"{f['cosine']:.5f}", f"{f['snr_db']:.1f}", f"{f['top1_agreement']:.3f}",
            str(r.outputs_match), f"{cs:.1f}",
        )
    con.print(t)
    speed = results["fp32"][1].latency_ms.p50 / results["int8"][1].latency_ms.p50
    con.print(f"int8 vs fp32: {speed:.2f}x p50 speed-up, {results['fp32'][0].size_bytes() / results['int8'][0].size_bytes():.1f}x smaller")
    n = results["int8"][0].manifest.samples
    if w.kind == "random":
        con.print(
            f"[yellow]weights: random init[/] (no checkpoint given). Fidelity is measured on {n} real photographs, but with "
            "random weights the logits are nearly flat, so top-1 agreement says little; cosine and SNR still hold. "
            "Pass --weights PATH for meaningful agreement figures."
        )
    else:
        con.print(f"weights: {w.details.get('path')} (sha256 {(w.sha256 or '')[:12]}), fidelity on {n} real photographs")
    con.print(f"stored in {a.db}; bundles in {out}/  (see: edgeopt report --db {a.db})")


if __name__ == "__main__":
    main()
