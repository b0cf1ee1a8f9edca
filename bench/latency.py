"""efficientformer_l1 at batch 1 on this machine, side by side in one run: torch eager fp32, ORT fp32,
ORT int8 static. Medians over several repeats (interleaved, so drift hits every row alike), the cosine
and SNR of int8 vs fp32 on the sample images, and bundle sizes. Writes docs/benchmarks.md.

Usage: python bench/latency.py [--repeats 5] [--iters 30] [--threads N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _doc import ROUND_SPAN_S, DocRun, add_args, figure_name, path_figures, write_block
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from edgeopt.harness.compare import interleave, rank

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="out/bench")
    ap.add_argument("--doc", type=Path, default=DOC, help="the page to write (default docs/benchmarks.md)")
    add_args(ap)
    a = ap.parse_args()
    with DocRun.from_args(a):
        measure(a)


def measure(a: argparse.Namespace) -> None:
    import onnxruntime as ort
    import torch

    import edgeopt
    from edgeopt.capabilities import live_weights
    from edgeopt.models import get_spec

    threads = a.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    con = Console()
    spec = get_spec("efficientformer_l1")
    module, weights = live_weights(spec.name)  # the weights every page times
    b32 = edgeopt.compile(spec.name, output=Path(a.out) / "l1-fp32.bundle", overwrite=True, module=module, weights_info=weights)
    b8 = edgeopt.compile(spec.name, passes="quantize:int8", output=Path(a.out) / "l1-int8.bundle", overwrite=True,
                         module=module, weights_info=weights)
    # Each path in a process of its own (bench/_path_worker.py, as bench/peers.py times them): in one process
    # torch's OpenMP pool and ORT's spinning threads share the two cores, and the rows read up to 1.9x apart
    # from one repeat to the next.
    from peers import PathWorker

    weights_file = Path(a.out) / "l1-figures.pth"
    torch.save(module.state_dict(), weights_file)
    rows = {
        "torch eager fp32": ["--eager", spec.name, "--weights", str(weights_file)],
        "ORT fp32": ["--bundle", str(b32.path)],
        "ORT int8 static (QDQ)": ["--bundle", str(b8.path)],
    }
    names = list(rows)
    workers = {k: PathWorker(v, threads) for k, v in rows.items()}
    try:
        # the interleaving and the statistics of `edgeopt compare`: rotated order each repeat, paired bootstrap
        with Progress(console=con, transient=True) as prog:
            task = prog.add_task("measuring", total=a.repeats)
            per = interleave(len(names), a.repeats, lambda i: workers[names[i]].time(a.iters), lambda r, n: prog.update(task, completed=r),
                             span_s=ROUND_SPAN_S)
    finally:
        for w in workers.values():
            w.close()
    ranked = {c.label: c for c in rank(names, per)}
    meds = dict(zip(names, per, strict=True))
    p50 = {k: ranked[k].p50_ms for k in names}
    base = p50["torch eager fp32"]
    fid = b8.manifest["fidelity"]
    sizes = {"torch eager fp32": sum(p.numel() * 4 for p in module.parameters()), "ORT fp32": b32.size_bytes(), "ORT int8 static (QDQ)": b8.size_bytes()}
    fids = {"torch eager fp32": "reference", "ORT fp32": f"cos {b32.manifest['fidelity']['cosine']:.6f}",
            "ORT int8 static (QDQ)": f"cos {fid['cosine']:.5f}, SNR {fid['snr_db']:.1f} dB, top-1 {fid['top1_agreement']:.2f}"}
    t = Table(title=f"efficientformer_l1, batch 1, {threads} threads")
    for c in ("path", "p50 ms (median of medians)", "min..max of medians", "speed-up vs eager (95 % interval)", "size MB", "fidelity vs fp32"):
        t.add_column(c)
    lines = ["| path | p50 ms | spread of medians | speed-up vs eager (95 % interval) | size MB | fidelity vs fp32 |", "|---|---|---|---|---|---|"]
    for k in rows:
        spread = f"{min(meds[k]):.2f}..{max(meds[k]):.2f}"
        lo, hi = ranked[k].ci95
        speed = f"{base / p50[k]:.2f}x" + ("" if k == names[0] else f" ({1 / hi:.2f}-{1 / lo:.2f})")
        cells = [k, f"{p50[k]:.2f}", spread, speed, f"{sizes[k] / 1e6:.1f}", fids[k]]
        t.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    con.print(t)
    section = "\n".join([
        "## Foundation: efficientformer_l1 on ONNX Runtime (bench/latency.py)",
        "",
        f"{threads} threads, onnxruntime {ort.__version__}, torch {torch.__version__}. "
        f"{a.repeats} interleaved repeats of {a.iters} runs each, started over {ROUND_SPAN_S:.0f} s (docs/measuring.md: the machine's slow stretches), each path in a process of its own (eager in a torch process; "
        "the bundles through their backend's session without torch: bench/_path_worker.py); p50 is the median of the "
        "repeats' medians.",
        f"Fidelity on {b8.manifest['samples']} skimage photographs, **random weights** (`edgeopt.capabilities.live_weights`: seeded, muted branches revived) (top-1 agreement says little with random "
        "weights: logits are nearly flat; cosine and SNR are the meaningful figures here).",
        "",
        *lines,
    ])
    write_block(a.doc, "latency", section, title="Benchmarks",
                figures={**path_figures(spec.name, "ORT fp32", meds["ORT fp32"]), figure_name(spec.name, "torch eager fp32"): base})


if __name__ == "__main__":
    main()
