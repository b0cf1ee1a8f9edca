"""efficientformer_l1 at batch 1 on this machine, side by side in one run: torch eager fp32, ORT fp32,
ORT int8 static. Medians over several repeats (interleaved, so drift hits every row alike), the cosine
and SNR of int8 vs fp32 on the sample images, and bundle sizes. Writes docs/benchmarks.md.

Usage: python bench/latency.py [--repeats 5] [--iters 30] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import track
from rich.table import Table

import edgeopt
from edgeopt.models import get_spec

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def timed(fn, iters: int) -> float:
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ts))


def main() -> None:
    import onnxruntime as ort
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="out/bench")
    a = ap.parse_args()
    threads = a.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    con = Console()
    spec = get_spec("efficientformer_l1")
    b32 = edgeopt.compile(spec.name, output=Path(a.out) / "l1-fp32.bundle", overwrite=True)
    b8 = edgeopt.compile(spec.name, passes="quantize:int8", output=Path(a.out) / "l1-int8.bundle", overwrite=True)
    module = spec.build()
    x = b32.reference_inputs()
    xt = torch.from_numpy(x["image"])
    from edgeopt._ort import ort_session

    s32, s8 = ort_session(b32.artifact, threads), ort_session(b8.artifact, threads)
    rows = {
        "torch eager fp32": lambda: module(xt),
        "ORT fp32": lambda: s32.run(None, x),
        "ORT int8 static (QDQ)": lambda: s8.run(None, x),
    }
    meds: dict[str, list[float]] = {k: [] for k in rows}
    with torch.inference_mode():
        for fn in rows.values():
            for _ in range(5):
                fn()
        for _ in track(range(a.repeats), description="measuring", console=con):
            for k, fn in rows.items():
                meds[k].append(timed(fn, a.iters))
    p50 = {k: float(np.median(v)) for k, v in meds.items()}
    base = p50["torch eager fp32"]
    fid = b8.manifest["fidelity"]
    sizes = {"torch eager fp32": sum(p.numel() * 4 for p in module.parameters()), "ORT fp32": b32.size_bytes(), "ORT int8 static (QDQ)": b8.size_bytes()}
    fids = {"torch eager fp32": "reference", "ORT fp32": f"cos {b32.manifest['fidelity']['cosine']:.6f}",
            "ORT int8 static (QDQ)": f"cos {fid['cosine']:.5f}, SNR {fid['snr_db']:.1f} dB, top-1 {fid['top1_agreement']:.2f}"}
    t = Table(title=f"efficientformer_l1, batch 1, {threads} threads")
    for c in ("path", "p50 ms (median of medians)", "min..max of medians", "speed-up vs eager", "size MB", "fidelity vs fp32"):
        t.add_column(c)
    lines = ["| path | p50 ms | spread of medians | speed-up vs eager | size MB | fidelity vs fp32 |", "|---|---|---|---|---|---|"]
    for k in rows:
        spread = f"{min(meds[k]):.2f}..{max(meds[k]):.2f}"
        cells = [k, f"{p50[k]:.2f}", spread, f"{base / p50[k]:.2f}x", f"{sizes[k] / 1e6:.1f}", fids[k]]
        t.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    con.print(t)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), platform.processor())
    DOC.parent.mkdir(exist_ok=True)
    section = "\n".join([
        "## Foundation: efficientformer_l1 on ONNX Runtime (bench/latency.py)",
        "",
        f"Machine: {cpu}, {threads} threads, onnxruntime {ort.__version__}, torch {torch.__version__}. "
        f"{a.repeats} interleaved repeats of {a.iters} runs each; p50 is the median of the repeats' medians. "
        f"Load average when done: {os.getloadavg()[0]:.1f} (other work on the machine inflates every row alike).",
        f"Fidelity on {b8.manifest['samples']} skimage photographs, **random weights** (top-1 agreement says little with random "
        "weights: logits are nearly flat; cosine and SNR are the meaningful figures here).",
        "",
        *lines,
        "",
        "Regenerate: `.venv/bin/python bench/latency.py`",
        "",
    ])
    _write_section(DOC, "latency", section)
    con.print(f"wrote {DOC}")


def _write_section(doc: Path, key: str, body: str) -> None:
    """Replace (or append) the block between <!-- key:start --> and <!-- key:end --> in doc."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n\nEvery figure here is measured by a script in bench/, side by side in one run.\n\n"
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


if __name__ == "__main__":
    main()
