"""Where int8 pays on ONNX Runtime, per family, and what dominates each artifact (issue 17 item 2); writes the
"int8 per family" block of docs/backends.md through bench/_doc.py.

    .venv/bin/python bench/int8.py [--models efficientformer_l1,shvit_s1,...] [--rounds 5] [--runs 20]
    .venv/bin/python bench/int8.py --quick --no-write        # a check that it works (one small model)

For each model: `edgeopt compile` fp32, `-p quantize:int8` (static QDQ, u8 activations x s8 per-channel
weights, the ops whose int8 kernel is slower left float: `float_slow_ops`) and the same with
`float_slow_ops=false`; the three bundles timed through their ONNX Runtime session, each in a process of
its own, in interleaved rounds (each round's median over about a second of calls, then the median of the
rounds: `peers.interleaved_rounds`); the kernel-time share of the top ops of fp32 and of int8 from ONNX
Runtime's profiler (`--runs` calls); cosine of the int8 artifact against the fp32 torch model (the
manifest's, on the bundled photographs); what `float_slow_ops` kept float. Weights: seeded random ones with
the muted branches revived (`edgeopt.capabilities.live_weights`), as every page times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _doc import ROUND_SPAN_S, DocRun, add_args, models_path_figures, write_block  # noqa: E402

DOC = ROOT / "docs" / "backends.md"
BLOCK = "backends-int8"
MODELS = "efficientformer_l1,shvit_s1,mobileclip_s0_image,leyolo_nano,mobile_r2l_llff"
VARIANTS = (("fp32", None), ("int8", "quantize:int8"), ("int8, all ops", "quantize:int8,float_slow_ops=false"))


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _top(shares: dict[str, float], k: int = 4) -> str:
    return ", ".join(f"{op} {100 * v:.0f}%" for op, v in list(shares.items())[:k])


def measure(model: str, work: Path, rounds: int, runs: int) -> dict:
    from peers import PathWorker, interleaved_rounds

    from edgeopt import api
    from edgeopt._ort import ort_op_profile
    from edgeopt.capabilities import live_weights

    paths, manifests, bundles = {}, {}, {}
    module, weights = live_weights(model)  # the weights every page times
    for label, passes in VARIANTS:
        _say(f"{model}: compile {label}")
        b = api.compile(model, output=work / f"{model}-{label.replace(', ', '-').replace(' ', '_')}.bundle", passes=passes,
                        overwrite=True, module=module, weights_info=weights)
        paths[label], manifests[label], bundles[label] = b.path / b.manifest.artifact, b.manifest, b.path
    sample = b.reference_inputs()
    _say(f"{model}: time {len(paths)} graphs, {rounds} interleaved rounds, each graph in a process of its own")
    # a process per graph, as every page times a path (bench/_path_worker.py): sessions of one process
    # share two cores with each other's spinning thread pools
    workers = {k: PathWorker(["--bundle", str(v)], threads=os.cpu_count() or 1) for k, v in bundles.items()}
    try:
        per = interleaved_rounds(workers, rounds=rounds, iters=2000)
    finally:
        for w in workers.values():
            w.close()
    _say(f"{model}: op profiles")
    prof = {k: ort_op_profile(paths[k], sample, runs=max(5, runs // 2)) for k in ("fp32", "int8")}
    q = next(p for p in manifests["int8"].passes if p["name"] == "quantize")
    floated = (q.get("changes") or [{}])[0].get("float_by_rule") or []
    ops = Counter(n["op"] for n in floated)
    return {
        "model": model, "lat": {k: float(statistics.median(v)) for k, v in per.items()}, "fp32_rounds": per["fp32"], "prof": prof, "cosine": manifests["int8"].fidelity.get("cosine"),
        "floated": ", ".join(f"{v} {k}" for k, v in sorted(ops.items())) or "none",
    }


def table(rows: list[dict]) -> str:
    out = ["| model | fp32 p50 ms | int8 p50 ms (x fp32) | int8, every op quantized (x fp32) | int8 cosine | left float by the rule | "
           "top kernels fp32 | top kernels int8 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = r["lat"]
        f = lat["fp32"]
        out.append(
            f"| {r['model']} | {f:.2f} | {lat['int8']:.2f} ({lat['int8'] / f:.2f}x) | {lat['int8, all ops']:.2f} "
            f"({lat['int8, all ops'] / f:.2f}x) | {r['cosine']:.5f} | {r['floated']} | {_top(r['prof']['fp32'])} | {_top(r['prof']['int8'])} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="one small model, 2 rounds of 5 calls")
    ap.add_argument("--no-write", action="store_true", help="print the table, leave the docs alone")
    add_args(ap)
    a = ap.parse_args()
    if a.quick:
        a.models, a.rounds, a.runs = "shvit_s1", 2, 5
    import onnxruntime

    t0 = time.perf_counter()
    with DocRun.from_args(a), tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        rows = []
        for m in a.models.split(","):
            work = Path(tmp) / m
            work.mkdir()
            rows.append(measure(m, work, a.rounds, a.runs))
        body = "\n".join([
            "## int8 per family on ONNX Runtime: where it pays, and what dominates", "",
            f"onnxruntime {onnxruntime.__version__}, batch 1, the runtime's default threads (2 here); seeded random weights with muted branches revived (`edgeopt.capabilities.live_weights`, as every page). Latency: "
            f"{a.rounds} interleaved rounds of about a second of calls, started over {ROUND_SPAN_S:.0f} s, each graph in a process of its own (bench/_path_worker.py), the median of the round medians. Kernels: "
            "share of ONNX Runtime's kernel time per op (its profiler, after its graph fusions). Why the rule leaves "
            "grouped convs and AveragePool float, and what limits the families where int8 still does not pay: "
            "docs/passes.md, 'Ops whose int8 kernel is slower than fp32 stay float'.", "",
            table(rows), "", f"Whole run: {time.perf_counter() - t0:.0f} s.",
        ])
        print(body)
        if not a.no_write:
            write_block(DOC, BLOCK, body, figures=models_path_figures("ORT fp32", {r["model"]: r["fp32_rounds"] for r in rows}))


if __name__ == "__main__":
    main()
