"""LeYOLO and MobileR2L variants: counted vs paper figures, ONNX export time, ORT fp32 latency, parity.

    .venv/bin/python bench/zoo_leyolo_r2l.py [--seconds 1] [--rounds 5] [--only leyolo_nano,...]

Prints a table and writes it to docs/models-leyolo-mobile_r2l.md. Params and MACs are counted on the
`meta` device; for LeYOLO the paper's GFLOPs (ultralytics/thop, 2 x MACs, BN counted at 4 ops per
element) are compared both with FlopCounterMode's conv MACs and with that convention. Latency: every
variant's graph in a process of its own (`edgeopt._timed_worker`: no torch pool beside it), all timed in
`--rounds` interleaved rounds of about `--seconds` of ORT CPU calls (default threads) on one real sample.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _doc import ROUND_SPAN_S, DocRun, add_args, models_path_figures, write_block

from edgeopt._timed_worker import ort_round_latencies

NAMES = ["leyolo_nano", "leyolo_small", "leyolo_medium", "leyolo_large", "mobile_r2l_blender", "mobile_r2l_llff"]


def measure(name: str, work: Path) -> dict:
    """Counts, export time and parity of one variant; its graph and sample stay in `work` for the timing."""
    import torch

    from edgeopt._ort import ort_run_all
    from edgeopt.capabilities import live_weights
    from edgeopt.export import export_onnx, torch_outputs
    from edgeopt.models import get_spec
    from edgeopt.models.counting import count_macs, count_params

    spec = get_spec(name)
    meta = spec.build(device="meta")
    params = count_params(meta)
    shape = spec.inputs[0].shape
    row = {"name": name, "input": "x".join(map(str, shape[1:])), "params_m": params / 1e6, "paper_params_m": spec.paper.params_m}
    if spec.family == "leyolo":
        from edgeopt.models.leyolo import ultralytics_macs

        conv, ul = ultralytics_macs(meta, shape[-1])
        row.update(macs_g=conv / 1e9, macs_ul_g=ul / 1e9, paper_macs_g=spec.paper.macs_g)
    else:
        row.update(macs_g=count_macs(meta, (torch.empty(shape, device="meta"),)) / 1e9, macs_ul_g=None, paper_macs_g=None)
    module, _ = live_weights(spec.name)  # the weights every page times
    sample = spec.sample_inputs(1)[0]
    names, outs = [i.name for i in spec.inputs], list(spec.outputs)
    ref = torch_outputs(module, sample, names, outs)
    path = work / f"{name}.onnx"
    info = export_onnx(module, sample, names, outs, path)
    got = ort_run_all(path, [sample])[0]
    row.update(export_s=info.seconds, max_abs=max(float(np.max(np.abs(ref[k] - got[k]))) for k in outs), path=path, sample=sample)
    return row


def fmt(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="about this many seconds of calls per round (at least 3 calls)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default="")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "models-leyolo-mobile_r2l.md"))
    add_args(ap)
    a = ap.parse_args()
    with DocRun.from_args(a):
        run(a)


def run(a: argparse.Namespace) -> None:
    names = [n for n in a.only.split(",") if n] or NAMES
    from rich.console import Console

    con = Console(stderr=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-zoo-") as tmp:
        for n in names:
            with con.status(f"{n}: count, export, parity"):
                rows.append(measure(n, Path(tmp)))
        with con.status(f"ORT: {a.rounds} interleaved rounds of about {a.seconds} s of calls, each graph in a process of its own"):
            lat = ort_round_latencies({r["name"]: r["path"] for r in rows}, None, rounds=a.rounds, seconds=a.seconds,
                                      span_s=ROUND_SPAN_S, samples={r["name"]: r["sample"] for r in rows})
    for r in rows:
        r["ort_ms"] = float(np.median(lat[r["name"]]))
    head = ["model", "input", "params M (paper)", "GMACs conv (FlopCounterMode)", "GMACs ultralytics conv. (paper)",
            "export s", "ORT fp32 ms (median)", "max abs diff vs torch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["name"], r["input"], f"{r['params_m']:.4f} ({fmt(r['paper_params_m'])})", fmt(r["macs_g"], ".3f"),
            f"{fmt(r['macs_ul_g'], '.3f')} ({fmt(r['paper_macs_g'], '.3f')})", f"{r['export_s']:.1f}", f"{r['ort_ms']:.1f}",
            f"{r['max_abs']:.2e}",
        ]) + " |")
    table = "\n".join(lines)
    print(table)
    note = (f"Random weights, one real sample. ORT latency: {a.rounds} interleaved rounds of about {a.seconds:g} s of calls (at least 3) started over "
            f"{ROUND_SPAN_S:.0f} s, each graph in a process of its own, the median of the round medians. "
            "Paper GFLOPs are halved to MACs.\n")
    write_block(a.out, "zoo-leyolo-r2l", note + "\n" + table, title="LeYOLO and MobileR2L: counted vs paper, export, ORT latency",
                figures=models_path_figures("ORT fp32", {r["name"]: lat[r["name"]] for r in rows}))


if __name__ == "__main__":
    main()
