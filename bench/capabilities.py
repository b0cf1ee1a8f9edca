"""Generate the capability matrix: model family x backend x precision -> works / converts / fails.

    python bench/capabilities.py                       # every family, every cell (long: hours on 2 cores)
    python bench/capabilities.py --families efficientformer,shvit --backends onnxruntime,tflite
    python bench/capabilities.py --resume              # keep cells already in docs/capabilities.json (and an
                                                       # interrupted run's, in out/capabilities-progress.json)
    python bench/capabilities.py --render-only         # rewrite the docs from docs/capabilities.json
    python bench/capabilities.py --resume --redo shvit_s1 --cell-timeout 600

Each cell runs in its own process (group) with a wall-clock limit (--cell-timeout): a cell that does not
finish (untuned TVM of a model that takes seconds per inference on ORT) is recorded as `timeout` with the
limit, not left "not tried", and its processes are killed.

Each cell is compiled for real with `edgeopt.compile` (the passes/options come from
`edgeopt.capabilities.CELLS`, the backends' declared modes), run through the device-side runner on this host
where the runtime exists here, and its p50 latency divided by ONNX Runtime fp32 of the same model measured in
the same run. Results are saved after every cell in out/capabilities-progress.json (an interrupted run keeps
what it measured: `--resume` picks it up); at the end of a clean run the script writes docs/capabilities.json,
the matrix blocks of docs/capabilities.md and README.md (rendered by bench/_matrix.py, written by bench/_doc.py:
a run that other processes contaminated writes nothing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import _matrix as mx  # noqa: E402
from _doc import DocRun, add_args, models_path_figures, write_block, write_file  # noqa: E402

from edgeopt import capabilities as cap  # noqa: E402


def write_docs(results: list[cap.Result], meta: dict, docs: Path, readme: Path | None) -> None:
    """Stage the record (with the run's stamp) and the matrix blocks of docs/capabilities.md and README.md."""
    mx.add_ratios(results)
    matrix = mx.render_markdown(results, meta)
    write_file(docs / "capabilities.json", lambda stamp: mx.dumps(results, {**meta, "stamp": asdict(stamp)}))
    # ORT fp32 per model, from its re-timings after every cell (one timing alone swings by 1.5x here): their
    # median and the fastest of them, as the other pages give a path's p50 and fastest round
    refs: dict[str, list[float]] = {}
    for r in results:
        if r.extra.get("ort_p50_ms"):
            refs.setdefault(r.model, []).append(float(r.extra["ort_p50_ms"]))
    write_block(docs / "capabilities.md", "capabilities", matrix, title="Capability matrix", figures=models_path_figures("ORT fp32", refs))
    write_block(docs / "capabilities.md", "capability-cells", mx.cell_table_markdown(), title="Capability matrix")
    if readme is not None and readme.is_file():
        write_block(readme, "capabilities", matrix)


_CHILD = """
import dataclasses, json, sys
from pathlib import Path
from edgeopt import capabilities as cap
model, key, out, samples, runs, min_s, ort_dir = sys.argv[1:8]
r = cap.try_cell(model, cap.get_cell(*key.split("/", 1)), Path(out), samples=int(samples), runs=int(runs), min_seconds=float(min_s))
if r.status == "works" and key != "onnxruntime/fp32":
    r.extra["ort_p50_ms"] = cap.ort_reference(model, Path(ort_dir), int(runs), float(min_s))
print("RESULT " + json.dumps(dataclasses.asdict(r), default=str))
"""


def run_cell(model: str, c: cap.Cell, out: Path, samples: int, runs: int, min_seconds: float, timeout: float, ort_dir: Path) -> cap.Result:
    """try_cell in a child process group, killed (with the runner it started) after `timeout` seconds."""
    import json
    import signal
    import subprocess
    import time

    from edgeopt.models import get_spec

    args = [sys.executable, "-c", _CHILD, model, c.key, str(out), str(samples), str(runs), str(min_seconds), str(ort_dir)]
    t0 = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True, cwd=REPO)
    try:
        stdout, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return cap.Result(get_spec(model).family, model, c.backend, c.precision, "timeout",
                          reason=f"not finished within {timeout:.0f} s on this machine (compile, fidelity on the samples, timing)",
                          compile_s=round(time.perf_counter() - t0, 1))
    line = next((x for x in reversed(stdout.splitlines()) if x.startswith("RESULT ")), None)
    if line is None:
        return cap.Result(get_spec(model).family, model, c.backend, c.precision, "fails",
                          reason=f"the cell's process died (exit {p.returncode}) without a result")
    return cap.Result(**json.loads(line[len("RESULT "):]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", help="comma list (default: every registered family)")
    ap.add_argument("--models", help="comma list of family=variant overrides")
    ap.add_argument("--backends", help="comma list (default: all in the table)")
    ap.add_argument("--precisions", help="comma list (default: all in the table)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--docs", type=Path, default=REPO / "docs")
    ap.add_argument("--readme", type=Path, default=REPO / "README.md")
    ap.add_argument("--resume", action="store_true", help="keep results already in docs/capabilities.json")
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--cells", help="comma list of backend/precision to run, in this order (default: the whole table)")
    ap.add_argument("--breadth-first", action="store_true", help="each cell for every family, then the next cell")
    ap.add_argument("--redo", help="with --resume: comma list of models (or model:backend/precision keys) to try again")
    ap.add_argument("--cell-timeout", type=float, default=600.0, help="wall-clock seconds per cell (default 600)")
    add_args(ap)
    a = ap.parse_args(argv)

    json_path = a.docs / "capabilities.json"
    progress = a.docs.resolve().parent / "out" / "capabilities-progress.json"
    results: list[cap.Result] = []
    meta = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": cap.host_description(), "samples": a.samples,
            "command": "python bench/capabilities.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    if (a.resume or a.render_only) and json_path.is_file():
        results, old_meta = mx.load(json_path)
        if a.render_only:
            meta = old_meta
        else:  # keep the history of resumed runs in the caption data
            meta["earlier_runs"] = old_meta.get("earlier_runs", []) + [{k: old_meta.get(k) for k in ("date", "command")}]
    if a.resume and progress.is_file():  # what an interrupted run measured
        done, _ = mx.load(progress)
        keys = {r.key for r in done}
        results = [r for r in results if r.key not in keys] + done
    if a.resume or a.render_only:
        redo = set(a.redo.split(",")) if a.redo else set()
        results = [r for r in results if r.model not in redo and r.key not in redo]
    if a.render_only:  # nothing measured: the pages keep the stamp of the run that measured the record
        stamp = meta.get("stamp") or {"command": meta.get("command", "python bench/capabilities.py"), "date": meta.get("date", "?")}
        with DocRun.from_args(a, argv, replay=stamp):
            write_docs(results, meta, a.docs, a.readme)
        return 0
    with DocRun.from_args(a, argv):
        measure(a, results, meta, progress)
    progress.unlink(missing_ok=True)  # written: a later --resume starts from the docs' record
    return 0


def measure(a: argparse.Namespace, results: list[cap.Result], meta: dict, progress: Path) -> None:
    from rich.console import Console

    con = Console(stderr=True)

    fams = a.families.split(",") if a.families else cap.families()
    overrides = dict(kv.split("=", 1) for kv in a.models.split(",")) if a.models else {}
    cells = [c for c in cap.CELLS
             if (not a.backends or c.backend in a.backends.split(","))
             and (not a.precisions or c.precision in a.precisions.split(","))]
    if a.cells:  # explicit cells, in the order given
        cells = [cap.get_cell(*k.split("/", 1)) for k in a.cells.split(",")]
    # ORT fp32 first for each model: every ratio needs it
    cells.sort(key=lambda c: (c.backend, c.precision) != ("onnxruntime", "fp32"))
    done = {r.key for r in results}
    models = [overrides.get(fam) or cap.representative(fam) for fam in fams]
    # --breadth-first: each cell for every family before the next cell, so a run cut short still covers
    # every family (cells in table order, ORT fp32 first); default: family by family.
    jobs = [(m, c) for c in cells for m in models] if a.breadth_first else [(m, c) for m in models for c in cells]
    work = Path(tempfile.mkdtemp(prefix="edgeopt-caps-"))
    try:
        for model, c in jobs:
            key = f"{model}:{c.key}"
            if key in done:
                continue
            con.log(f"[bold]{model}[/] {c.key} ...")
            r = run_cell(model, c, work / "b", a.samples, a.runs, a.min_seconds, a.cell_timeout, work / f"ort-{model}")
            shutil.rmtree(work / "b", ignore_errors=True)
            results = [x for x in results if x.key != r.key] + [r]
            fig = f"{r.p50_ms:.2f} ms" if r.p50_ms else ""
            if r.extra.get("ort_p50_ms"):
                fig += f" (ORT fp32 {r.extra['ort_p50_ms']:.2f} ms)"
            cos = f"cos {r.cosine:.5f}" if r.cosine is not None else ""
            con.log(f"  {r.status} {fig} {cos} {r.reason[:160]}")
            mx.save(results, progress, meta)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_docs(results, meta, a.docs, a.readme)
    print(mx.render_markdown(results, meta))


if __name__ == "__main__":
    sys.exit(main())
