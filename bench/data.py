"""Accuracy on the user's data (`compile --data`, docs/data.md): the tables of docs/data.md, each with the command
that regenerates it, the date and the load average (bench/_doc.py: nothing is written when other processes used
the CPUs).

    python bench/data.py                                  # every table, writes docs/data.md (a quiet machine: ~21 min on 2 cores)
    python bench/data.py --quick --no-write               # a check that it works (small splits, tiny models)

Tables:
1. fp32 vs int8 (ONNX Runtime static int8) on scikit-learn's digits written as a labelled PNG folder, with 95 %
   intervals: efficientformer_l1 with `calibrated` weights (top-1 against the labels), and one model of each
   other task on the same images: leyolo_nano (unlabelled: mAP@0.5 agreement with fp32), mobileclip_s0 (zero-shot
   top-1 with the digit names as prompts), tinygpt_v_tiny (a prompt per digit image: next-token and greedy-sequence
   agreement). Random weights outside the classifier: their agreement figures are what the table shows.
2. int8 calibrated on 8 vs 128 images of the calibration split (efficientformer_l1, calibrated weights).
Prune 0.3 with and without recovery and `max_drop` against plain int8 are `bench/recover.py`'s (docs/passes.md):
the same digits, latencies timed in interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "data.md"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from _doc import DocRun, add_args, write_block  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console()


def write_digits(root: Path, n: int) -> Path:
    """load_digits as 8x8 greyscale PNGs in one folder per digit (ImageFolder: folder d -> class d -> logit d)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i in range(min(n, len(d.target))):
        folder = root / str(d.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((d.images[i] * 16).clip(0, 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root


def flat_copy(src: Path, dst: Path, n: int) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.rglob("*.png"))[:n]:
        (dst / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    return dst


def prompts_file(src: Path, path: Path, n: int) -> Path:
    lines = [json.dumps({"prompt": "Which digit is this?", "image": str(p)}) for p in sorted(src.rglob("*.png"))[:n]]
    path.write_text("\n".join(lines) + "\n")
    return path


def _ci(f: dict[str, Any] | None, key: str = "value") -> str:
    if not f or f.get(key) is None:
        return "-"
    lo, hi = f["ci95"]
    return f"{f[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def _acc_cells(m: Any) -> list[str]:
    f = m.fidelity
    a = f.get("accuracy")
    ag = f.get("agreement")
    g = f.get("greedy_sequence")
    return [
        a["metric"] if a else (ag or {}).get("metric", "-"),
        f"{a['reference']:.3f}" if a and a.get("reference") is not None else "-",
        _ci(a, "artifact") if a else "-",
        f"{a['drop_points']:.2f}" if a and a.get("drop_points") is not None else "-",
        _ci(ag) + (f" ({ag['metric']})" if ag else ""),
        _ci(g) if g else "-",
        str((a or ag or {}).get("n", "-")),
    ]


ACC_COLS = ("metric", "fp32", "artifact [95 %]", "drop (points)", "agreement with fp32 [95 %]", "greedy sequence [95 %]", "n")


def markdown(cols: tuple[str, ...], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def show(title: str, cols: tuple[str, ...], rows: list[list[str]]) -> None:
    t = Table(title=title)
    for c in cols:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*r)
    console.print(t)


def compile_one(model: str, out: Path, data: Path, passes: str | None, a: argparse.Namespace, weights: str | None = None,
                calib: int | None = None) -> Any:
    from edgeopt import api

    t0 = time.perf_counter()
    b = api.compile(model, output=out, passes=passes, weights=weights, data=data, overwrite=True,
                    calib_samples=calib or a.calib, eval_samples=a.eval)
    b.seconds = time.perf_counter() - t0  # type: ignore[attr-defined]
    return b


def run(a: argparse.Namespace, work: Path) -> None:

    digits = write_digits(work / "digits", a.digits)
    flat = flat_copy(digits, work / "digits-flat", a.digits)
    prompts = prompts_file(digits, work / "digits-prompts.jsonl", a.digits)
    clf = a.classifier
    blocks: dict[str, str] = {}

    # 1. fp32 vs int8 on the digits folder, each task
    rows = []
    cases = [(clf, digits, "calibrated"), *[(m, flat if t == "detection" else prompts if t == "vlm" else digits, None)
                                            for m, t in a.others]]
    for model, data, weights in cases:
        for prec, passes in (("fp32", None), ("int8", "quantize:int8")):
            try:
                b = compile_one(model, work / f"{model}-{prec}.bundle", data, passes, a, weights)
            except Exception as e:  # noqa: BLE001 - one model's failure is a row, not the end of the run
                rows.append([model, prec, *["-"] * (len(ACC_COLS) - 1), f"failed: {str(e).splitlines()[0][:120]}"])
                continue
            rows.append([model + (" (calibrated)" if weights else ""), prec, *_acc_cells(b.manifest), ""])
    cols = ("model", "precision", *ACC_COLS, "note")
    show("fp32 vs int8 on the digits folder", cols, rows)
    blocks["data-accuracy"] = markdown(cols, rows)

    # 2. calibration on 8 vs 128 images
    rows = []
    for n in (8, 128):
        b = compile_one(clf, work / f"{clf}-int8-c{n}.bundle", digits, "quantize:int8", a, "calibrated", calib=min(n, a.calib_max))
        q = next((p for p in b.manifest.passes if p["name"] == "quantize"), {})
        rows.append([str(q.get("config", {}).get("calibration_samples", "?")), *_acc_cells(b.manifest)])
    cols = ("calibration images", *ACC_COLS)
    show(f"{clf} int8: calibration on 8 vs 128 images", cols, rows)
    blocks["data-calibration"] = markdown(cols, rows)

    if not a.no_write:
        for key, body in blocks.items():
            write_block(DOC, key, body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classifier", default="efficientformer_l1", help="the classifier (calibrated weights)")
    ap.add_argument("--digits", type=int, default=1797, help="digits written to the folder (load_digits holds 1797)")
    ap.add_argument("--calib", type=int, default=128, help="--calib-samples")
    ap.add_argument("--eval", type=int, default=512, help="--eval-samples")
    ap.add_argument("--quick", action="store_true", help="a check that the script works: small splits, tiny models")
    ap.add_argument("--work", type=Path, default=None, help="keep the data and bundles here (default: a temporary folder)")
    ap.add_argument("--no-write", action="store_true", help="print the tables only")
    add_args(ap)
    a = ap.parse_args()
    a.others = [("leyolo_nano", "detection"), ("mobileclip_s0", "clip"), ("tinygpt_v_tiny", "vlm")]
    a.calib_max = a.calib
    if a.quick:
        a.digits, a.calib, a.eval, a.calib_max = 120, 16, 40, 16
        a.others = [("tinygpt_v_tiny", "vlm")]
        if a.classifier == "efficientformer_l1":  # the test suite's digits classifier: calibrated in a second
            from test_data import DIGITS_MODEL, digits_spec

            digits_spec()
            a.classifier = DIGITS_MODEL
    with tempfile.TemporaryDirectory(prefix="edgeopt-data-bench-") as tmp:
        work = a.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if a.no_write:
            run(a, work)
        else:
            with DocRun.from_args(a):
                run(a, work)


if __name__ == "__main__":
    main()
