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

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from latency import _write_section  # noqa: E402

DOC = REPO / "docs" / "benchmarks.md"
REFERENCE_VARIANTS = ("efficientformer_l1", "shvit_s1", "mobileclip_s0_image", "leyolo_nano", "tinygpt_v_tiny_decode", "mobile_r2l_blender")
con = Console()


def median_ms(fn, iters: int = 30, repeats: int = 3) -> float:
    for _ in range(3):
        fn()
    meds = []
    for _ in range(repeats):
        ts = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        meds.append(float(np.median(ts)))
    return float(np.median(meds))


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


def session_fn(bundle, threads: int):
    """A zero-argument callable running the bundle's artifact on its reference input, via its backend."""
    from edgeopt.runtimes.base import get_backend

    sess = get_backend(bundle.backend).load(bundle.path, bundle.manifest, threads=threads)
    x = bundle.reference_inputs()
    return lambda: sess.run(x)


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
    from edgeopt.auto import auto_compile
    from edgeopt.export import to_torch_inputs
    from edgeopt.models import get_spec, list_models

    rows = []
    have = set(list_models())
    for name in models:
        if name not in have:
            rows.append([name, "not registered in this build", "", "", "", "", ""])
            continue
        spec = get_spec(name)
        con.print(f"[bold]{name}[/]")
        module = spec.build()
        sample = spec.sample_inputs(1)[0]
        args = to_torch_inputs(sample, [i.name for i in spec.inputs])
        plain = edgeopt.compile(name, output=out / f"{name}-ort-fp32.bundle", overwrite=True)
        res = auto_compile(name, out / f"{name}-auto.bundle", fidelity=0.999, budget_minutes=budget_minutes,
                           db=db, overwrite=True, workdir=out / f"{name}-auto-candidates", runs=10, min_seconds=0.5, threads=threads)
        macs = count_macs(spec)
        torch.set_num_threads(threads)
        with torch.inference_mode():
            t_eager = median_ms(lambda m=module, a=args: m(*a))
        t_plain = median_ms(session_fn(plain, threads))
        entries = [("torch eager fp32", t_eager, "reference", sum(p.numel() * 4 for p in module.parameters()), "fp32"),
                   ("ORT fp32 (plain export)", t_plain, f"cos {plain.manifest['fidelity']['cosine']:.6f}", plain.size_bytes(), "fp32")]
        if res.winner is not None:
            w = edgeopt.load_bundle(out / f"{name}-auto.bundle")
            t_auto = median_ms(session_fn(w, threads))
            f = w.manifest["fidelity"]
            fid = f"cos {f['cosine']:.5f}" + (f", top-1 {f['top1_agreement']:.2f}" if "top1_agreement" in f else "")
            prec = w.manifest.get("precision") or "fp32"
            entries.append((f"--auto: {res.winner.label}", t_auto, fid, w.size_bytes(), prec))
        else:
            entries.append(("--auto: no candidate met cosine >= 0.999", float("nan"), "", 0, "fp32"))
        for label, t, fid, size, prec in entries:
            peak = peaks["int8"] if prec in ("int8", "dynamic") else peaks["fp32"]
            rate = f"{macs / t / 1e6:.1f} GMAC/s = {100 * macs / t / 1e6 / peak:.0f}% of {('int8' if peak == peaks['int8'] else 'fp32')} peak" if macs and t == t else "-"
            rows.append([name, label, f"{t:.2f}", f"{t_eager / t:.2f}x" if t == t else "-", fid, f"{size / 1e6:.2f}", rate])
    return rows


def olive_vs_edgeopt(threads: int, out: Path, weights: Path) -> list[list[str]]:
    """Same job, two tools: PyTorch efficientformer_l1 -> ONNX -> ORT static int8 on the same 8 photographs."""
    import edgeopt
    from edgeopt.fidelity import task_metrics
    from edgeopt.models import get_spec
    from edgeopt.runtimes.onnxruntime import OrtSession

    env = dict(os.environ, EDGEOPT_WEIGHTS=str(weights), PYTHONPATH=str(REPO))
    eo_out = out / "peer-edgeopt-int8.bundle"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgeopt.cli", "compile", "efficientformer_l1", "--weights", str(weights),
                    "--passes", "quantize:int8", "-o", str(eo_out), "--overwrite"], check=True, env=env, capture_output=True)
    t_edgeopt = time.perf_counter() - t0
    cfg = {
        "input_model": {"type": "PyTorchModel", "model_loader": "load_model", "model_script": str(REPO / "bench" / "_olive_user_script.py"),
                        "io_config": {"input_names": ["image"], "input_shapes": [[1, 3, 224, 224]], "output_names": ["logits"]}},
        "systems": {"local_system": {"type": "LocalSystem", "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [{"name": "photos", "user_script": str(REPO / "bench" / "_olive_user_script.py"),
                          "load_dataset_config": {"type": "edgeopt_photos", "params": {"n": 8}},
                          "dataloader_config": {"type": "default_dataloader", "params": {"batch_size": 1}}}],
        "passes": {"conversion": {"type": "OnnxConversion", "target_opset": 18},
                   "quantization": {"type": "OnnxStaticQuantization", "data_config": "photos", "quant_format": "QDQ", "per_channel": True,
                                    "activation_type": "uint8", "precision": "int8", "calibrate_method": "MinMax"}},
        "host": "local_system", "target": "local_system", "cache_dir": str(out / "olive-cache"), "output_dir": str(out / "olive-out"),
        "evaluate_input_model": False, "log_severity_level": 3,
    }
    cfg_path = out / "olive.json"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    import shutil

    shutil.rmtree(out / "olive-cache", ignore_errors=True)
    shutil.rmtree(out / "olive-out", ignore_errors=True)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "olive", "run", "--config", str(cfg_path)], env=env, capture_output=True, text=True)
    t_olive = time.perf_counter() - t0
    olive_onnx = sorted((out / "olive-out").rglob("*.onnx"), key=lambda q: q.stat().st_mtime)
    if p.returncode != 0 or not olive_onnx:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return [["Olive", f"failed: {' | '.join(tail)[:300]}", "", "", "", f"{t_olive:.1f}"]]
    spec = get_spec("efficientformer_l1")
    samples = spec.sample_inputs(8)
    module = spec.build(weights=weights)
    from edgeopt.export import torch_outputs

    refs = [torch_outputs(module, s, ["image"], ["logits"]) for s in samples]
    rows = []
    b = edgeopt.load_bundle(eo_out)
    for label, path, wall in (("edgeopt compile --passes quantize:int8", b.artifact, t_edgeopt), ("Olive OnnxConversion + OnnxStaticQuantization", olive_onnx[-1], t_olive)):
        s = OrtSession(Path(path), threads)
        outs = [{"logits": s.run(x)[s.output_names[0]]} for x in samples]
        f = task_metrics("classification", refs, outs)
        t = median_ms(lambda s=s, x=samples[0]: s.run(x))
        rows.append([label, f"{wall:.1f}", f"{t:.2f}", f"{f['cosine']:.5f}", f"{f['top1_agreement']:.3f}", f"{Path(path).stat().st_size / 1e6:.2f}"])
    rows.append(["ratio edgeopt / Olive wall time", f"{t_edgeopt / t_olive:.2f}", "", "", "", ""])
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
    torch.manual_seed(0)
    torch.save(spec.build().state_dict(), path)
    return path, "random init (seed 0): top-1 agreement says little"


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(REFERENCE_VARIANTS))
    ap.add_argument("--budget-minutes", type=float, default=8.0, help="per-model --auto search budget")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--weights", default="calibrated", choices=("calibrated", "random"))
    ap.add_argument("--skip-olive", action="store_true")
    ap.add_argument("--out", default=str(REPO / "out" / "peers"))
    a = ap.parse_args()
    threads = a.threads or torch.get_num_threads()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    db = f"sqlite:///{out / 'peers.db'}"
    peaks = gemm_peaks(threads)
    con.print(f"GEMM peaks: fp32 {peaks['fp32']:.1f} GMAC/s, int8 {peaks['int8']:.1f} GMAC/s")
    fam = family_rows(a.models.split(","), a.budget_minutes, threads, out, peaks, db)
    t = Table(title="per family: torch eager vs ORT fp32 vs --auto winner")
    hdr = ["model", "path", "p50 ms", "speed-up vs eager", "fidelity vs fp32", "size MB", "achieved MAC rate"]
    for h in hdr:
        t.add_column(h)
    for r in fam:
        t.add_row(*r)
    con.print(t)
    olive_rows: list[list[str]] = []
    wnote = ""
    if not a.skip_olive:
        weights, wnote = make_weights(a.weights, out)
        olive_rows = olive_vs_edgeopt(threads, out, weights)
        t2 = Table(title=f"Olive vs edgeopt, efficientformer_l1 static int8 (weights: {wnote})")
        for h in ("tool", "wall s", "p50 ms", "cosine vs fp32", "top-1 agr.", "size MB"):
            t2.add_column(h)
        for r in olive_rows:
            t2.add_row(*r)
        con.print(t2)
    import onnxruntime as ort

    md = ["## Peers (bench/peers.py)", "",
          f"One run, batch 1, {threads} threads, torch {torch.__version__}, onnxruntime {ort.__version__}. "
          f"Measured GEMM peaks: fp32 {peaks['fp32']:.1f} GMAC/s (torch.mm 1024^3), int8 {peaks['int8']:.1f} GMAC/s "
          "(ORT MatMulInteger u8s8 1024^3). --auto: budget cosine >= 0.999 vs fp32, measured on `local`. "
          "Per-family rows use random weights (cosine is the meaningful fidelity there).", "",
          "| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    md += ["| " + " | ".join(r) + " |" for r in fam]
    if olive_rows:
        md += ["", f"Olive vs edgeopt on the same job (weights: {wnote}):", "",
               "| tool | wall s | p50 ms | cosine vs fp32 | top-1 agreement | size MB |", "|---|---|---|---|---|---|"]
        md += ["| " + " | ".join(r) + " |" for r in olive_rows]
    md += ["", "Regenerate: `.venv/bin/pip install -c constraints.txt olive-ai && .venv/bin/python bench/peers.py`", ""]
    _write_section(DOC, "peers", "\n".join(md))
    con.print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
