"""Backends side by side at batch 1 on this machine: ORT fp32/int8, LiteRT fp32/dynamic/static int8,
TVM untuned/tuned, each with p50 latency, artifact size and fidelity; plus Core ML artifact sizes per
compression. Writes docs/backends.md.

    python bench/backends.py                                   # efficientformer_l1 and shvit_s1
    python bench/backends.py --models efficientformer_l1 --tune-minutes 5 --rounds 5
    python bench/backends.py --reuse                           # keep bundles compiled by an earlier run

Phase 1 compiles every bundle with `edgeopt.compile` (cells from edgeopt/capabilities.py; TVM tuned adds
`tune_minutes`) into --work (default bench/.work, reused with --reuse). Phase 2 loads every artifact through its
own backend's device-side loader, each in a process of its own (bench/_path_worker.py), and times them
interleaved: R rounds, each running every row for about --seconds, so that drift and other load hit every row
alike; the figure is the median of the round medians. Fidelity is the bundle's own record (artifact vs fp32 torch on the real sample images).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from _doc import ROUND_SPAN_S, DocRun, add_args, models_path_figures, write_block  # noqa: E402

from edgeopt.bundle import load_bundle  # noqa: E402
from edgeopt.capabilities import how, live_weights  # noqa: E402

DOC = REPO / "docs" / "backends.md"
ROWS = [  # (label, backend, precision, extra options)
    ("ORT fp32", "onnxruntime", "fp32", {}),
    ("ORT int8 (static QDQ)", "onnxruntime", "int8", {}),
    ("LiteRT fp32", "tflite", "fp32", {}),
    ("LiteRT dynamic int8", "tflite", "dynamic", {}),
    ("LiteRT static int8", "tflite", "int8", {}),
    ("TVM untuned", "tvm", "fp32", {}),
    ("TVM tuned", "tvm", "fp32", {"tune": True}),
]
COREML = ["fp32", "fp16", "w8", "pal6", "pal4", "prune50"]


def load_avg() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _live(model: str, kw: dict) -> dict:
    """compile() arguments with the figures' weights (capabilities.live_weights: no dead residual branches)."""
    module, label = live_weights(model)
    if module is None:
        return kw
    return {**kw, "module": module, "weights_info": label}


def compile_rows(model: str, work: Path, reuse: bool, tune_minutes: float, samples: int, log, no_compile: bool = False,
                 tune: bool = True) -> dict[str, dict]:
    import edgeopt

    out: dict[str, dict] = {}
    for label, backend, precision, extra in ROWS:
        path = work / model / label.replace(" ", "_").replace("(", "").replace(")", "")
        kw = how(backend, precision)
        if extra.get("tune") and not tune:
            out[label] = {"error": "not measured: this run tuned only the models in --tune-models"}
            continue
        if extra.get("tune"):
            # a fresh database per run, so the minutes shown are all the tuning this row had
            db = work / model / "tvm_tuning_db"
            if not (reuse and (path / "manifest.json").is_file()):
                shutil.rmtree(db, ignore_errors=True)
            kw["options"] = {**kw["options"], "tune_minutes": tune_minutes, "tune_trials": 100000, "tune_dir": str(db)}
        t0 = time.perf_counter()
        try:
            if reuse and (path / "manifest.json").is_file():
                b = load_bundle(path)
            elif no_compile:
                out[label] = {"error": "not measured: no bundle was compiled for it in this run's time budget"}
                continue
            else:
                log(f"compile {model} {label}")
                b = edgeopt.compile(model, output=path, samples=samples, overwrite=True, **_live(model, kw))
        except Exception as e:  # noqa: BLE001 - a row that fails is reported with its reason
            out[label] = {"error": f"{type(e).__name__}: {getattr(e, 'message', None) or e}"[:300]}
            log(f"  failed: {out[label]['error']}")
            continue
        m = b.manifest
        out[label] = {
            "path": str(b.path), "backend": backend, "size": b.size_bytes(),
            "cosine": m.get("fidelity", {}).get("cosine"), "top1": m.get("fidelity", {}).get("top1_agreement"),
            "compile_s": (m.get("compile_seconds") or {}).get("total") or time.perf_counter() - t0,
            "tuning": (m.get("backend_details") or {}).get("tuning"),
            "weights": (m.get("weights") or {}).get("note"),
        }
    return out


def time_rows(rows: dict[str, dict], rounds: int, seconds: float, threads: int | None, log) -> None:
    """Each compiled row's p50: its bundle through its backend's session in a process of its own
    (bench/_path_worker.py, as every page times a path), `rounds` alternating rounds of about `seconds` of
    calls, the median of the round medians."""
    from peers import PathWorker, interleaved_rounds

    workers = {}
    try:
        for label, r in rows.items():
            if "error" not in r:
                workers[label] = PathWorker(["--bundle", str(r["path"])], threads or os.cpu_count() or 1)
        per = interleaved_rounds(workers, rounds=rounds, seconds=seconds)
    finally:
        for w in workers.values():
            w.close()
    for label, v in per.items():
        rows[label].update(p50=float(statistics.median(v)), round_ms=v)
    log(f"{len(per)} rows timed in {rounds} rounds (load {load_avg()})")


def coreml_sizes(model: str, work: Path, reuse: bool, log, no_compile: bool = False) -> list[dict]:
    import edgeopt

    out = []
    for prec in COREML:
        path = work / model / f"coreml_{prec}"
        opts = {"precision": "fp16"} if prec != "fp32" else {}
        if prec in ("w8", "pal6", "pal4", "prune50"):
            opts["compression"] = prec
        try:
            if reuse and (path / "manifest.json").is_file():
                b = load_bundle(path)
            elif no_compile:
                out.append({"precision": prec, "error": "not measured: not compiled in this run's time budget"})
                continue
            else:
                log(f"compile {model} coreml {prec}")
                b = edgeopt.compile(model, output=path, samples=1, overwrite=True, **_live(model, {"backend": "coreml", "options": opts}))
        except Exception as e:  # noqa: BLE001
            out.append({"precision": prec, "error": f"{type(e).__name__}: {getattr(e, 'message', None) or e}"[:300]})
            continue
        d = b.manifest["backend_details"]
        out.append({"precision": prec, "package": d["package_bytes"], "weights": d["weights_bytes"],
                    "convert_s": d["convert_seconds"], "compress_s": d["compress_seconds"],
                    "constexpr": ", ".join(d.get("compressed_weight_ops", {})) or "-"})
    return out


def mb(n: int | None) -> str:
    return f"{n / 1e6:.1f} MB" if n else "-"


def render(results: dict, coreml: dict, meta: dict) -> str:
    lines = [
        f"Batch 1; {meta['threads']} threads per runtime. "
        f"Latency: median of the round medians of {meta['rounds']} interleaved rounds of about "
        f"{meta['seconds']} s per row, started over {ROUND_SPAN_S:.0f} s (each artifact loaded by its own device-side loader in a process of its own, no torch "
        "in the timed path: bench/_path_worker.py). Fidelity: cosine of the artifact's outputs vs the fp32 torch model on the real sample images "
        "(min over samples), and top-1 agreement. Random-init weights (no checkpoints are downloaded here).",
        "",
    ]
    for model, rows in results.items():
        note = next((r["weights"] for r in rows.values() if r.get("weights")), None)
        lines += [f"## {model}", ""] + ([f"Weights: {note}.", ""] if note else [])
        lines += ["| backend / precision | p50 ms | vs ORT fp32 | size | cosine | top-1 agree | compile s | note |",
                  "|---|---|---|---|---|---|---|---|"]
        base = rows.get("ORT fp32", {}).get("p50")
        for label, r in rows.items():
            if "error" in r:
                why = r["error"] if r["error"].startswith("not measured") else f"failed: {r['error']}"
                lines.append(f"| {label} | - | - | - | - | - | - | {why} |")
                continue
            note = ""
            if r.get("tuning"):
                t = r["tuning"]
                note = f"tuned {t.get('seconds', 0) / 60:.1f} min, {t.get('trials_measured', t.get('trials', '?'))} trials"
            ratio = f"{r['p50'] / base:.2f}×" if base and r.get("p50") else "-"
            cos = f"{r['cosine']:.5f}" if r.get("cosine") is not None else "-"
            top1 = f"{r['top1']:.2f}" if r.get("top1") is not None else "-"
            lines.append(f"| {label} | {r.get('p50', float('nan')):.2f} | {ratio} | {mb(r['size'])} | {cos} | {top1} | {r['compile_s']:.0f} | {note} |")
        lines.append("")
    if coreml:
        lines += ["## Core ML artifact sizes per compression", "",
                  "Converted and validated on Linux (Core ML runs only on macOS/iOS, so no latency or fidelity here).", ""]
        for model, rows in coreml.items():
            lines += [f"### {model}", "", "| compression | package | weight.bin | convert s | compress s | weight ops |", "|---|---|---|---|---|---|"]
            for r in rows:
                if "error" in r:
                    why = r["error"] if r["error"].startswith("not measured") else f"failed: {r['error']}"
                    lines.append(f"| {r['precision']} | {why} | | | | |")
                else:
                    lines.append(f"| {r['precision']} | {mb(r['package'])} | {mb(r['weights'])} | {r['convert_s']:.0f} | {r['compress_s']:.0f} | {r['constexpr']} |")
            lines.append("")
    for n in meta.get("notes", []):
        lines.append(f"- {n}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="efficientformer_l1,shvit_s1")
    ap.add_argument("--coreml-models", default=None, help="default: same as --models; 'none' to skip")
    ap.add_argument("--tune-minutes", type=float, default=5.0)
    ap.add_argument("--tune-models", default=None, help="models that get the TVM tuned row (default: all)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--work", type=Path, default=REPO / "bench" / ".work")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="with --reuse: time only the bundles already compiled")
    ap.add_argument("--keep", action="store_true", help="keep --work after the run")
    ap.add_argument("--note", action="append", help="a note for the doc (repeatable)")
    ap.add_argument("--out", type=Path, default=DOC)
    add_args(ap)
    a = ap.parse_args(argv)
    with DocRun.from_args(a, argv):
        return run(a)


def run(a: argparse.Namespace) -> int:
    from rich.console import Console

    con = Console(stderr=True)
    log = con.log
    from edgeopt.models import list_models

    known = set(list_models())
    notes = []
    models = []
    for m in a.models.split(","):
        if m in known:
            models.append(m)
        else:
            notes.append(f"{m}: not registered in this build, skipped.")
    cm_models = models if a.coreml_models is None else [m for m in a.coreml_models.split(",") if m in known]
    tune_models = models if a.tune_models is None else a.tune_models.split(",")
    results, coreml = {}, {}
    for m in models:  # each model's rows, then its Core ML sizes, then the next model
        results[m] = compile_rows(m, a.work, a.reuse, a.tune_minutes, a.samples, log, a.no_compile, tune=m in tune_models)
        if m in cm_models:
            coreml[m] = coreml_sizes(m, a.work, a.reuse, log, a.no_compile)
    (a.work / "compiled.json").write_text(json.dumps({"results": results, "coreml": coreml}, indent=1, default=str))
    if a.compile_only:
        return 0
    meta = {"threads": a.threads, "rounds": a.rounds, "seconds": a.seconds, "notes": notes + (a.note or [])}
    for m in models:
        log(f"timing {m}")
        time_rows(results[m], a.rounds, a.seconds, a.threads, log)
    text = render(results, coreml, meta)
    figs = models_path_figures("ORT fp32", {m: results[m]["ORT fp32"]["round_ms"] for m in models
                                            if results[m].get("ORT fp32", {}).get("round_ms")})
    write_block(a.out, "backends", text, title="Backends side by side", figures=figs)
    print(text)
    if not a.keep:
        shutil.rmtree(a.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
