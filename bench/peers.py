"""edgeopt against its peers, side by side in one run on this machine (batch 1). Writes docs/benchmarks.md.

1. Per family reference variant: torch eager fp32 (baseline), ONNX Runtime fp32 (a plain export), and the
   `edgeopt compile --auto` winner: p50 latency, speed-up over eager, fidelity, size.
2. Olive (olive-ai) doing the same job as `edgeopt compile --passes quantize:int8` on efficientformer_l1
   (PyTorch -> ONNX -> ORT static int8 calibrated on the same 8 photographs): wall time of each tool,
   both artifacts' latency and fidelity.
3. The machine's measured peak (GEMM micro-benchmarks, fp32 via torch/MKL and u8s8 int8 via ORT
   MatMulInteger) and each artifact's achieved MAC rate as a share of it.

Usage: python bench/peers.py [--models efficientformer_l1,...] [--budget-minutes 8] [--skip-olive]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from _doc import ROUND_SPAN_S, DocRun, add_args, figure_name, path_figures, write_block  # noqa: E402

from edgeopt._timed_worker import TimedProcess, calls_for_seconds, time_rounds  # noqa: E402
from edgeopt._timed_worker import median_ms as timed  # noqa: E402

if TYPE_CHECKING:
    from edgeopt.orchestrate.auto import AutoResult

DOC = REPO / "docs" / "benchmarks.md"
# The paths of this page that other pages time too (bench/_doc.py figure names), by worker key.
SHARED_PATHS = {"eager": "torch eager fp32", "plain": "ORT fp32"}
REFERENCE_VARIANTS = ("efficientformer_l1", "shvit_s1", "mobileclip_s0_image", "leyolo_nano", "tinygpt_v_tiny_decode", "mobile_r2l_blender")
con = Console()


def median_ms(fn, iters: int = 30, repeats: int = 3) -> float:
    for _ in range(3):
        fn()
    return float(np.median([timed(fn, iters) for _ in range(repeats)]))


class PathWorker(TimedProcess):
    """One path (torch eager, or a bundle through its backend) timed in its own process: bench/_path_worker.py."""

    def __init__(self, args: list[str], threads: int) -> None:
        super().__init__([str(REPO / "bench" / "_path_worker.py"), *args, "--threads", str(threads)],
                         env=dict(os.environ, PYTHONPATH=str(REPO)))


def interleaved_rounds(workers: dict[str, PathWorker], rounds: int = 5, iters: int = 2000, seconds: float = 1.0,
                       span_s: float = ROUND_SPAN_S) -> dict[str, list[float]]:
    """Each round's median ms of each path, each in its own process, timed in alternating rounds so that a
    load swing hits every path alike (`edgeopt._timed_worker.time_rounds`), the rounds spread over `span_s`.
    About `seconds` of calls per round (at least 3, at most `iters`): with 20 calls a round a 0.13 ms decode
    step read 0.31 ms, most of it the first calls after the pause."""
    return time_rounds(workers, rounds, calls_for_seconds(workers, seconds, most=iters), span_s=span_s)


def gemm_peaks(threads: int) -> dict[str, float]:
    """Measured peak MAC rates (GMAC/s): fp32 matmul in torch (MKL) and u8 x s8 MatMulInteger in ORT."""
    import onnx
    import torch
    from onnx import TensorProto, helper

    from edgeopt._ort import ort_session

    n = 1024
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    fp32_ms = median_ms(lambda: torch.mm(a, b), iters=20)
    g = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "mmi",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n]), helper.make_tensor_value_info("B", TensorProto.INT8, [n, n])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])],
    )
    path = REPO / "out" / "bench" / "gemm_int8.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)
    s = ort_session(path, threads)
    feed = {"A": np.random.randint(0, 255, (n, n), dtype=np.uint8), "B": np.random.randint(-127, 127, (n, n), dtype=np.int8)}
    int8_ms = median_ms(lambda: s.run(None, feed), iters=20)
    macs = n**3
    return {"fp32": macs / fp32_ms / 1e6, "int8": macs / int8_ms / 1e6}


def count_macs(spec) -> int | None:
    import torch

    from edgeopt.models.counting import count_macs as cm

    try:
        m = spec.build(device="meta")
        ex = tuple(torch.zeros(i.shape, dtype=getattr(torch, i.dtype), device="meta") for i in spec.inputs)
        return int(cm(m, ex))
    except Exception:  # noqa: BLE001 - a model that cannot run on meta gets no MAC rate
        return None


def family_rows(models: list[str], budget_minutes: float, threads: int, out: Path, peaks: dict[str, float], db: str) -> list[list[str]]:
    import torch

    import edgeopt
    from edgeopt.capabilities import live_weights
    from edgeopt.models import get_spec, list_models
    from edgeopt.orchestrate.auto import auto_compile

    rows = []
    have = set(list_models())
    for name in models:
        if name not in have:
            rows.append([name, "not registered in this build", "", "", "", "", ""])
            continue
        spec = get_spec(name)
        con.print(f"[bold]{name}[/]")
        # Classifiers: calibrated weights (confident on real images, so top-1 agreement means something; with flat
        # random logits one photograph of eight flipped between two random inits). Others: seeded random init.
        # Both without muted branches (edgeopt.models.liveinit).
        weights: Path | None = out / f"{name}-figures.pth"
        if spec.task == "classification":
            from edgeopt.calibrate import build_calibrated

            module, label = build_calibrated(spec)
        else:
            module, label = live_weights(name)
        if label.get("kind") == "random" and not label.get("note"):
            # nothing revived: plain random init, as compile builds it (tinygpt_v's loader takes only whole-model
            # checkpoints, not a decode step's state dict)
            weights = None
        else:
            torch.save(module.state_dict(), weights)
        module.eval()
        plain = edgeopt.compile(name, output=out / f"{name}-ort-fp32.bundle", overwrite=True, weights=weights)
        res = auto_compile(name, out / f"{name}-auto.bundle", fidelity=0.999, budget_minutes=budget_minutes, weights=weights,
                           db=db, overwrite=True, workdir=out / f"{name}-auto-candidates", runs=10, min_seconds=0.5, threads=threads)
        macs = count_macs(spec)
        workers = {"eager": PathWorker(["--eager", name] + (["--weights", str(weights)] if weights else []), threads),
                   "plain": PathWorker(["--bundle", str(plain.path)], threads)}
        w = edgeopt.load_bundle(out / f"{name}-auto.bundle") if res.winner is not None else None
        if w is not None:
            workers["auto"] = PathWorker(["--bundle", str(w.path)], threads)
        try:
            rounds = interleaved_rounds(workers)
        finally:
            for wk in workers.values():
                wk.close()
        ms = {k: float(np.median(v)) for k, v in rounds.items()}
        entries = [("torch eager fp32", ms["eager"], "reference", sum(p.numel() * 4 for p in module.parameters()), "fp32"),
                   ("ORT fp32 (plain export)", ms["plain"], f"cos {plain.manifest['fidelity']['cosine']:.6f}", plain.size_bytes(), "fp32")]
        t_eager = ms["eager"]
        if w is not None:
            f = w.manifest["fidelity"]
            fid = f"cos {f['cosine']:.5f}" + (f", top-1 {f['top1_agreement']:.2f}" if "top1_agreement" in f else "") + (
                f", mAP@0.5 vs fp32 {f['map50']:.2f}" if "map50" in f else "")
            prec = w.manifest.get("precision") or "fp32"
            entries.append((f"--auto: {res.winner.label}{_search_note(res)}", ms["auto"], fid, w.size_bytes(), prec))
        else:
            entries.append(("--auto: no candidate met the budget", float("nan"), "", 0, "fp32"))
        mine = []
        for label, t, fid, size, prec in entries:
            peak = peaks["int8"] if prec in ("int8", "dynamic") else peaks["fp32"]
            rate = f"{macs / t / 1e6:.1f} GMAC/s = {100 * macs / t / 1e6 / peak:.0f}% of {('int8' if peak == peaks['int8'] else 'fp32')} peak" if macs and t == t else "-"
            mine.append([name, label, f"{t:.2f}", f"{t_eager / t:.2f}x" if t == t else "-", fid, f"{size / 1e6:.2f}", rate])
        rows += mine
        _remember(out, name, mine, budget_minutes, threads, {SHARED_PATHS[k]: rounds[k] for k in ("eager", "plain")})
    return rows


def _search_note(res: AutoResult) -> str:
    """" (budget spent before N of M candidates)" when the --auto search stopped early, else "": the winner is
    the best of what the budget reached, and which candidates an earlier run left compiled (reused) moves that."""
    from edgeopt.orchestrate.auto import BUDGET_SPENT

    skipped = sum(1 for c in res.candidates if c.status == "skipped" and c.reason == BUDGET_SPENT)
    return f" (budget spent before {skipped} of {len(res.candidates)} candidates)" if skipped else ""


def _remember(out: Path, name: str, rows: list[list[str]], budget_minutes: float, threads: int,
              shared_rounds: dict[str, list[float]]) -> None:
    """Keep each model's rows (measured side by side) so a later `--models X` run replaces only X's, with the
    round medians of the paths other pages time too (`SHARED_PATHS`: their p50 and fastest round)."""
    from edgeopt._util import atomic_write_bytes

    data = _remembered(out)
    data[name] = {"rows": rows, "load": round(os.getloadavg()[0], 1), "budget_minutes": budget_minutes, "threads": threads,
                  "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "shared_rounds": shared_rounds}
    atomic_write_bytes(out / "family_rows.json", json.dumps(data, indent=1).encode())


def _remembered(out: Path) -> dict[str, dict]:
    cache = out / "family_rows.json"
    data = json.loads(cache.read_text()) if cache.exists() else {}
    order = {n: i for i, n in enumerate(REFERENCE_VARIANTS)}
    return dict(sorted(data.items(), key=lambda kv: order.get(kv[0], len(order))))


def olive_vs_edgeopt(threads: int, out: Path, weights: Path, repeats: int = 2) -> list[list[str]]:
    """Same job, two tools: PyTorch efficientformer_l1 -> ONNX -> ORT static int8 on the same 8 photographs.

    Each tool runs with both exporters: dynamo (edgeopt's default; Olive's OnnxConversion with
    use_dynamo_exporter=True) and TorchScript (Olive's default; edgeopt --exporter torchscript), so both
    like-for-like pairs and the defaults-against-defaults pair are visible. The four jobs alternate for
    `repeats` rounds (cold: Olive's cache is removed before each of its runs); the fastest round of each
    counts (the least disturbed by other load)."""
    import shutil

    import edgeopt
    from edgeopt.fidelity import task_metrics
    from edgeopt.models import get_spec
    from edgeopt.runtimes.onnxruntime import OrtSession

    env = dict(os.environ, EDGEOPT_WEIGHTS=str(weights), PYTHONPATH=str(REPO))
    cfg = {
        "input_model": {"type": "PyTorchModel", "model_loader": "load_model", "model_script": str(REPO / "bench" / "_olive_user_script.py"),
                        "dummy_inputs_func": "dummy_inputs",
                        "io_config": {"input_names": ["image"], "input_shapes": [[1, 3, 224, 224]], "output_names": ["logits"]}},
        "systems": {"local_system": {"type": "LocalSystem", "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [{"name": "photos", "user_script": str(REPO / "bench" / "_olive_user_script.py"),
                          "load_dataset_config": {"type": "edgeopt_photos", "params": {"n": 8}},
                          "dataloader_config": {"type": "default_dataloader", "params": {"batch_size": 1}}}],
        "passes": {"conversion": {"type": "OnnxConversion", "target_opset": 18},
                   "quantization": {"type": "OnnxStaticQuantization", "data_config": "photos", "quant_format": "QDQ", "per_channel": True,
                                    "activation_type": "uint8", "precision": "int8", "calibrate_method": "MinMax"}},
        "host": "local_system", "target": "local_system",
        "evaluate_input_model": False, "log_severity_level": 3,
    }
    cfg_paths = {}
    for exporter in ("torchscript", "dynamo"):
        cfg["passes"]["conversion"]["use_dynamo_exporter"] = exporter == "dynamo"
        cfg["cache_dir"], cfg["output_dir"] = str(out / f"olive-cache-{exporter}"), str(out / f"olive-out-{exporter}")
        cfg_paths[exporter] = out / f"olive-{exporter}.json"
        cfg_paths[exporter].write_text(json.dumps(cfg, indent=2))

    def edgeopt_job(exporter: str) -> tuple[float, Path, str | None]:
        dst = out / f"peer-edgeopt-int8-{exporter}.bundle"
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "edgeopt.cli", "compile", "efficientformer_l1", "--weights", str(weights),
                            "--passes", "quantize:int8", "--exporter", exporter, "-o", str(dst), "--overwrite"],
                           env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        return wall, dst, None if p.returncode == 0 else (p.stderr or p.stdout).strip()[-300:]

    def olive_job(exporter: str) -> tuple[float, Path | None, str | None]:
        shutil.rmtree(out / f"olive-cache-{exporter}", ignore_errors=True)
        shutil.rmtree(out / f"olive-out-{exporter}", ignore_errors=True)
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "olive", "run", "--config", str(cfg_paths[exporter])], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        found = sorted((out / f"olive-out-{exporter}").rglob("*.onnx"), key=lambda q: q.stat().st_mtime)
        if p.returncode != 0 or not found:
            return wall, None, " | ".join((p.stderr or p.stdout).strip().splitlines()[-3:])[:300]
        return wall, found[-1], None

    # (tool, exporter) -> (row label, job)
    jobs = {("edgeopt", "dynamo"): ("edgeopt compile --passes quantize:int8 (dynamo export, the default)", lambda: edgeopt_job("dynamo")),
            ("edgeopt", "torchscript"): ("edgeopt compile --passes quantize:int8 --exporter torchscript", lambda: edgeopt_job("torchscript")),
            ("Olive", "torchscript"): ("Olive OnnxConversion + OnnxStaticQuantization (TorchScript export, Olive's default)",
                                       lambda: olive_job("torchscript")),
            ("Olive", "dynamo"): ("Olive ... with use_dynamo_exporter=True", lambda: olive_job("dynamo"))}
    walls: dict[tuple[str, str], list[float]] = {k: [] for k in jobs}
    paths: dict[tuple[str, str], Path | None] = {}
    errors: dict[tuple[str, str], str] = {}
    for _ in range(repeats):
        for k, (_label, job) in jobs.items():
            wall, path, err = job()
            walls[k].append(wall)
            if err:
                errors[k] = err
            else:
                paths[k] = path
    spec = get_spec("efficientformer_l1")
    samples = spec.sample_inputs(8)
    module = spec.build(weights=weights)
    from edgeopt.export import torch_outputs

    refs = [torch_outputs(module, s, ["image"], ["logits"]) for s in samples]
    rows = []
    for k, (label, _job) in jobs.items():
        wall = min(walls[k])
        rounds = "/".join(f"{w:.1f}" for w in walls[k])
        if k in errors:
            rows.append([label, f"{wall:.1f} ({rounds})", f"failed: {errors[k]}", "", "", ""])
            continue
        path = paths[k]
        art = edgeopt.load_bundle(path).artifact if path.suffix == ".bundle" else path
        s = OrtSession(Path(art), threads)
        outs = [{"logits": s.run(x)[s.output_names[0]]} for x in samples]
        f = task_metrics("classification", refs, outs)
        t = median_ms(lambda s=s, x=samples[0]: s.run(x))
        rows.append([label, f"{wall:.1f} ({rounds})", f"{t:.2f}", f"{f['cosine']:.5f}", f"{f['top1_agreement']:.3f}", f"{Path(art).stat().st_size / 1e6:.2f}"])
    best = {k: min(walls[k]) for k in jobs if k not in errors}
    for mine, theirs, what in ((("edgeopt", "dynamo"), ("Olive", "dynamo"), "like for like: both on the dynamo exporter (edgeopt's default)"),
                               (("edgeopt", "torchscript"), ("Olive", "torchscript"), "like for like: both on the TorchScript exporter (Olive's default)"),
                               (("edgeopt", "dynamo"), ("Olive", "torchscript"), "each tool's default exporter")):
        ratio = f"{best[mine] / best[theirs]:.2f}" if mine in best and theirs in best else "- (a job failed)"
        rows.append([f"ratio {'/'.join(mine)} / {'/'.join(theirs)} wall time ({what})", ratio, "", "", "", ""])
    return rows


def make_weights(kind: str, out: Path) -> tuple[Path, str]:
    """A checkpoint file both tools load: calibrated weights when edgeopt has them, else random (named)."""
    import torch

    from edgeopt.models import get_spec

    spec = get_spec("efficientformer_l1")
    path = out / f"efficientformer_l1-{kind}.pth"
    if kind == "calibrated":
        from edgeopt.calibrate import build_calibrated

        m, label = build_calibrated(spec)
        torch.save(m.state_dict(), path)
        return path, f"calibrated ({label.get('note', 'edgeopt/calibrate.py')})"
    from edgeopt.capabilities import live_weights

    m, _ = live_weights(spec.name)
    torch.save(m.state_dict(), path)
    return path, "random init (seed 0, no muted branches): top-1 agreement says little"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(REFERENCE_VARIANTS))
    ap.add_argument("--budget-minutes", type=float, default=8.0, help="per-model --auto search budget")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--weights", default="calibrated", choices=("calibrated", "random"))
    ap.add_argument("--skip-olive", action="store_true")
    ap.add_argument("--olive-only", action="store_true", help="only the Olive vs edgeopt comparison (keeps the families section)")
    ap.add_argument("--olive-rounds", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "out" / "peers"))
    ap.add_argument("--doc", type=Path, default=DOC, help="the page to write (default docs/benchmarks.md)")
    add_args(ap)
    a = ap.parse_args()
    with DocRun.from_args(a):
        measure(a)


def measure(a: argparse.Namespace) -> None:
    import torch

    threads = a.threads or torch.get_num_threads()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    db = f"sqlite:///{out / 'peers.db'}"
    import onnxruntime as ort

    env_line = f"batch 1, {threads} threads, torch {torch.__version__}, onnxruntime {ort.__version__}"
    if not a.olive_only:
        peaks = gemm_peaks(threads)
        con.print(f"GEMM peaks: fp32 {peaks['fp32']:.1f} GMAC/s, int8 {peaks['int8']:.1f} GMAC/s")
        family_rows(a.models.split(","), a.budget_minutes, threads, out, peaks, db)
        kept = _remembered(out)
        fam = [r for v in kept.values() for r in v["rows"]]
        t = Table(title="per family: torch eager vs ORT fp32 vs --auto winner")
        hdr = ["model", "path", "p50 ms", "speed-up vs eager", "fidelity vs fp32", "size MB", "achieved MAC rate"]
        for h in hdr:
            t.add_column(h)
        for r in fam:
            t.add_row(*r)
        con.print(t)
        runs = "; ".join(f"{n}: {v['when']}, {v.get('threads', '?')} threads, load {v['load']}, budget {v['budget_minutes']:g} min"
                         for n, v in kept.items())
        md = ["## Peers (bench/peers.py)", "",
              f"One run, {env_line}. "
              f"Measured GEMM peaks: fp32 {peaks['fp32']:.1f} GMAC/s (torch.mm 1024^3), int8 {peaks['int8']:.1f} GMAC/s "
              f"(ORT MatMulInteger u8s8 1024^3). --auto: budget cosine >= 0.999 vs fp32, measured on `local`, "
              f"search budget {a.budget_minutes:g} min per model. "
              "--auto also needs the task's agreement >= 0.99 (top-1, mAP@0.5 vs the fp32 detections, next token). Weights: "
              "the classifiers (efficientformer_l1, shvit_s1) use `calibrated` weights (edgeopt/calibrate.py: confident on "
              "real images, so top-1 agreement on the 8 photographs means something); the others a seeded random init "
              "(`edgeopt.capabilities.live_weights`; cosine is the meaningful fidelity there). Both without muted branches "
              "(edgeopt/models/liveinit.py: zero-initialised norm scales and 1e-5 layer scales set to 1). "
              f"Each model's rows are measured side by side in alternating rounds started over {ROUND_SPAN_S:.0f} s, each path in a process of its own "
              "(eager in a torch process, as a PyTorch app runs it; the artifacts through their backend's session in "
              "processes without torch, as edgeopt's runner and a device run them: in one process the two thread pools "
              f"spin against each other on 2 cores; bench/_path_worker.py) ({runs}).", "",
              "| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
        md += ["| " + " | ".join(r) + " |" for r in fam]
        figs = {}
        for n, v in kept.items():
            if "shared_rounds" in v:
                for path, r in v["shared_rounds"].items():
                    figs.update(path_figures(n, path, r))
            else:  # rows kept before round medians were: their p50 only
                labels = {"ORT fp32 (plain export)": SHARED_PATHS["plain"], "torch eager fp32": SHARED_PATHS["eager"]}
                figs.update({figure_name(n, labels[r[1]]): float(r[2]) for r in v["rows"] if r[1] in labels})
        write_block(a.doc, "peers", "\n".join(md), title="Benchmarks", figures=figs)
    if not a.skip_olive:
        weights, wnote = make_weights(a.weights, out)
        olive_rows = olive_vs_edgeopt(threads, out, weights, a.olive_rounds)
        t2 = Table(title=f"Olive vs edgeopt, efficientformer_l1 static int8 (weights: {wnote})")
        for h in ("tool", "wall s: best (rounds)", "p50 ms", "cosine vs fp32", "top-1 agr.", "size MB"):
            t2.add_column(h)
        for r in olive_rows:
            t2.add_row(*r)
        con.print(t2)
        md = ["## Olive vs edgeopt (bench/peers.py)", "",
              f"The same job (efficientformer_l1 -> ONNX -> ORT static int8 QDQ, per-channel, MinMax on the same 8 photographs, "
              f"weights: {wnote}), each tool as a fresh process, {a.olive_rounds} alternating rounds, the best round counts; {env_line}.", "",
              "| tool | wall s: best (rounds) | p50 ms | cosine vs fp32 | top-1 agreement | size MB |", "|---|---|---|---|---|---|"]
        md += ["| " + " | ".join(r) + " |" for r in olive_rows]
        md += ["", "Needs Olive: `.venv/bin/pip install -c constraints.txt olive-ai`."]
        write_block(a.doc, "peers-olive", "\n".join(md), title="Benchmarks")


if __name__ == "__main__":
    main()
