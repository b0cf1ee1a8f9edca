"""The capability table as data: backend x precision -> how to get it (Ultralytics `export_formats()` style).

One table serves three uses: `how(backend, precision)` turns a cell into the `passes`/`options` that
`edgeopt.compile` takes (benches and tests use it, so there is no second list to keep in step); the
generator (`bench/capabilities.py`) tries every (model family x cell) for real and records works / fails
with the reason; and `render_markdown()` makes `docs/capabilities.md` and the README block from that
record. Measured results live in `docs/capabilities.json`; this module holds no figures.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeopt.errors import EdgeoptError

RESULTS_JSON = Path("docs/capabilities.json")
README_START = "<!-- capabilities:start -->"
README_END = "<!-- capabilities:end -->"


@dataclass(frozen=True)
class Cell:
    """One backend x precision: how edgeopt builds it and what it means."""

    backend: str
    precision: str
    passes: str | None
    options: dict[str, Any]
    artifact: str
    meaning: str
    runs_on: str = "Linux, macOS, Windows, Android, arm64 boards"

    @property
    def key(self) -> str:
        return f"{self.backend}/{self.precision}"


# The table. Order = column order in the docs.
CELLS: tuple[Cell, ...] = (
    Cell("onnxruntime", "fp32", None, {}, "model.onnx", "the exported graph as is"),
    Cell("onnxruntime", "fp16", "quantize:fp16", {}, "model.onnx", "fp16 weights and compute (fp32 I/O)"),
    Cell("onnxruntime", "dynamic", "quantize:dynamic", {}, "model.onnx", "int8 weights, activations quantized at run time"),
    Cell("onnxruntime", "int8", "quantize:int8", {}, "model.onnx", "static QDQ int8, calibrated on real samples"),
    Cell("tflite", "fp32", None, {}, "model.tflite", "litert-torch conversion"),
    Cell("tflite", "fp16", "quantize:fp16", {}, "model.tflite", "fp16 weights (ai-edge-quantizer), fp32 compute"),
    Cell("tflite", "dynamic", "quantize:dynamic", {}, "model.tflite", "PT2E dynamic: int8 weights, int8 activations at run time"),
    Cell("tflite", "int8", "quantize:int8", {}, "model.tflite", "PT2E static int8 (XNNPACK quantizer), calibrated; int8 input, float output"),
    Cell("tvm", "fp32", None, {}, "model.so", "Relax build for this CPU, untuned", runs_on="the target CPU it was built for"),
    Cell("tvm", "int8", "quantize:int8", {}, "model.so", "ORT's QDQ graph imported into Relax (quantize/dequantize lowered to float arithmetic), untuned",
         runs_on="the target CPU it was built for"),
    Cell("coreml", "fp32", None, {}, "model.mlpackage", "ML program, fp32 compute", runs_on="macOS, iOS"),
    Cell("coreml", "fp16", None, {"precision": "fp16"}, "model.mlpackage", "ML program, fp16 compute", runs_on="macOS, iOS"),
    Cell("coreml", "w8", "quantize:int8", {"precision": "fp16"}, "model.mlpackage", "8-bit linear weights, fp16 compute", runs_on="macOS, iOS"),
    Cell("coreml", "pal4", None, {"precision": "fp16", "compression": "pal4"}, "model.mlpackage", "4-bit k-means palettized weights", runs_on="macOS, iOS"),
    Cell("coreml", "prune50", None, {"precision": "fp16", "compression": "prune50"}, "model.mlpackage", "50% magnitude-pruned weights, sparse storage", runs_on="macOS, iOS"),
)

# One variant per family for the matrix: the smallest that represents the family's graph.
REPRESENTATIVES: dict[str, str] = {
    "efficientformer": "efficientformer_l1",
    "shvit": "shvit_s1",
    "leyolo": "leyolo_nano",
    "mobileclip": "mobileclip_s0_image",
    "mobile_r2l": "mobile_r2l_llff",
    "tinygpt_v": "tinygpt_v_tiny_vision",
}


def cells(backend: str | None = None) -> list[Cell]:
    return [c for c in CELLS if backend is None or c.backend == backend]


def get_cell(backend: str, precision: str) -> Cell:
    from edgeopt.runtimes.base import ALIASES

    backend = ALIASES.get(backend, backend)
    for c in CELLS:
        if c.backend == backend and c.precision == precision:
            return c
    known = ", ".join(c.key for c in CELLS)
    raise EdgeoptError(f"no capability cell {backend}/{precision}", f"known: {known}")


def how(backend: str, precision: str) -> dict[str, Any]:
    """Keyword arguments for `edgeopt.compile` that build this cell."""
    c = get_cell(backend, precision)
    return {"backend": c.backend, "passes": c.passes, "options": dict(c.options)}


def representative(family: str) -> str:
    """The variant that stands for a family: the listed one, else its smallest by paper parameters."""
    from edgeopt.models import all_specs

    specs = [s for s in all_specs() if s.family == family]
    if not specs:
        raise EdgeoptError(f"unknown model family {family!r}", f"known: {', '.join(sorted({s.family for s in all_specs()}))}")
    if family in REPRESENTATIVES and REPRESENTATIVES[family] in {s.name for s in specs}:
        return REPRESENTATIVES[family]
    return min(specs, key=lambda s: (s.paper.params_m or 1e9, s.name)).name


def families() -> list[str]:
    from edgeopt.models import all_specs

    return sorted({s.family for s in all_specs()})


def host_description() -> str:
    """One line naming this machine for a figure's caption (CPU model from harness.devices.local)."""
    import os
    import platform

    from edgeopt.harness.devices.local import linux_cpu_info

    cpu = linux_cpu_info().get("cpu_model") or platform.processor() or platform.machine()
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical cores"


def live_weights(model: str, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """(module, weights label) for figures: random init with a fixed seed, minus the init that mutes whole
    branches (`edgeopt.models.liveinit`: zero norm scales and 1e-5 layer scales set to 1).

    The seed makes figures repeatable: with a fresh random init per run, efficientformer_l1's LiteRT dynamic int8
    kept top-1 on all 8 photographs in one run and flipped one of them in the next."""
    import torch

    from edgeopt.models import get_spec
    from edgeopt.models.liveinit import describe, revive_muted_branches

    spec = get_spec(model)
    torch.manual_seed(seed)
    m = spec.build()
    counts = revive_muted_branches(m)
    note = describe(counts)
    return m.eval(), {"kind": "random", "seed": seed, **({"note": f"random init with {note}"} if note else {}), **counts}


@dataclass
class Result:
    """What trying one (model, cell) gave."""

    family: str
    model: str
    backend: str
    precision: str
    status: str  # works | converts | fails | timeout
    reason: str = ""
    p50_ms: float | None = None
    ort_ratio: float | None = None
    cosine: float | None = None
    size_bytes: int | None = None
    compile_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.model}:{self.backend}/{self.precision}"


def try_cell(model: str, cell: Cell, out_dir: Path, samples: int = 4, runs: int = 10, min_seconds: float = 1.0) -> Result:
    """Compile `model` for `cell` into out_dir, run it where the host can, and say what happened.

    An EdgeoptError (or any other failure) becomes a `fails` result with its first line as the reason:
    the matrix reports what breaks instead of stopping.
    """
    import edgeopt
    from edgeopt.models import get_spec

    spec = get_spec(model)
    res = Result(spec.family, model, cell.backend, cell.precision, "fails")
    t0 = time.perf_counter()
    kw = how(cell.backend, cell.precision)
    module, label = live_weights(model)
    if module is not None:
        res.extra["weights"] = label
        kw["options"] = {**kw["options"], "weights_label": label}
    try:
        b = edgeopt.compile(model, output=out_dir, samples=samples, overwrite=True, module=module, **kw)
    except Exception as e:  # noqa: BLE001 - a failing cell is a result, with its reason
        res.reason = _reason(e)
        res.compile_s = round(time.perf_counter() - t0, 1)
        return res
    res.compile_s = round(time.perf_counter() - t0, 1)
    res.size_bytes = b.size_bytes()
    res.cosine = b.manifest.get("fidelity", {}).get("cosine")
    host = b.manifest.get("backend_details", {}).get("host_runnable", True)
    if host is not True:
        res.status, res.reason = "converts", str(host)
        return res
    try:
        r = edgeopt.profile(b.path, runs=runs, warmup=2, min_seconds=min_seconds, store=False)
    except Exception as e:  # noqa: BLE001
        res.reason = f"compiled, but the runner failed: {_reason(e)}"
        return res
    if not r.get("outputs_match", False):
        res.reason = f"ran, but outputs disagree with the reference (cosine {r.get('check', {}).get('cosine')})"
        return res
    res.status, res.p50_ms = "works", float(r["latency_ms"]["p50"])
    return res


def ort_reference(model: str, out_dir: Path, runs: int = 10, min_seconds: float = 1.0) -> float:
    """p50 of ONNX Runtime fp32 for `model` now: the bundle is compiled into out_dir once and re-timed after each
    cell, so every ratio compares two figures taken back to back under the same machine load."""
    import edgeopt
    from edgeopt.bundle import load_bundle

    if (out_dir / "manifest.json").is_file():
        b = load_bundle(out_dir)
    else:
        module, label = live_weights(model)
        opts = {"weights_label": label} if module is not None else {}
        b = edgeopt.compile(model, output=out_dir, samples=1, overwrite=True, module=module, options=opts)
    r = edgeopt.profile(b.path, runs=runs, warmup=1, min_seconds=min_seconds, store=False)
    return float(r["latency_ms"]["p50"])


def _reason(e: BaseException) -> str:
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    hint = getattr(e, "hint", None)
    line = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    if not isinstance(e, EdgeoptError):
        line = f"{type(e).__name__}: {line}"
    return (line + (f" ({hint})" if hint else ""))[:400]


def add_ratios(results: list[Result]) -> None:
    """Latency relative to ONNX Runtime fp32 of the same model: the ORT figure timed right after the cell
    (`extra["ort_p50_ms"]`, see ort_reference) where the cell has one, else the ORT fp32 cell's own figure."""
    base = {r.model: r.p50_ms for r in results if r.backend == "onnxruntime" and r.precision == "fp32" and r.status == "works"}
    for r in results:
        ref = r.extra.get("ort_p50_ms") or base.get(r.model)
        if r.p50_ms is not None and ref:
            r.ort_ratio = r.p50_ms / ref


def save(results: list[Result], path: Path, meta: dict[str, Any]) -> None:
    from edgeopt._util import atomic_write_bytes

    data = {"meta": meta, "cells": [asdict(c) for c in CELLS], "results": [asdict(r) for r in results]}
    atomic_write_bytes(path, (json.dumps(data, indent=1, default=str) + "\n").encode())


def load(path: Path = RESULTS_JSON) -> tuple[list[Result], dict[str, Any]]:
    if not path.is_file():
        raise EdgeoptError(f"{path} does not exist", "run `python bench/capabilities.py` to generate it")
    data = json.loads(path.read_text())
    return [Result(**r) for r in data["results"]], data.get("meta", {})


def _cell_text(r: Result | None, notes: list[str]) -> str:
    if r is None:
        return "·"
    if r.status == "works":
        rel = f"{r.ort_ratio:.2f}×" if r.ort_ratio is not None else f"{r.p50_ms:.1f} ms"
        cos = f", cos {r.cosine:.5f}" if r.cosine is not None else ""
        return f"✅ {rel}{cos}"
    if r.reason not in notes:
        notes.append(r.reason)
    n = notes.index(r.reason) + 1
    if r.status == "converts":
        return f"🍎 converts [{n}]"
    if r.status == "timeout":
        return f"⏱ [{n}]"
    return f"❌ [{n}]"


def render_markdown(results: list[Result], meta: dict[str, Any]) -> str:
    """The matrix (model family rows x backend/precision columns), legend and numbered reasons."""
    used = [c for c in CELLS if any(r.backend == c.backend and r.precision == c.precision for r in results)]
    models = []
    for r in results:
        if (r.family, r.model) not in models:
            models.append((r.family, r.model))
    models.sort()  # by family: a resumed run that re-tried a family does not move its row to the end
    by = {(r.model, r.backend, r.precision): r for r in results}
    notes: list[str] = []
    head = "| family (variant) | " + " | ".join(f"{c.backend} {c.precision}" for c in used) + " |"
    lines = [head, "|" + "---|" * (len(used) + 1)]
    for fam, model in models:
        row = [_cell_text(by.get((model, c.backend, c.precision)), notes) for c in used]
        lines.append(f"| {fam} (`{model}`) | " + " | ".join(row) + " |")
    out = [
        "✅ works: compiled, run by its own runtime on this host, outputs checked; the figure is p50 latency relative",
        "to ONNX Runtime fp32 of the same model timed right after it (cells of earlier runs: ORT fp32's own cell)",
        "(lower is faster), then the output cosine vs the fp32",
        "torch reference on real samples. 🍎 converts: compiled and validated, but the runtime exists only on Apple",
        "platforms. ❌ fails: the numbered reason below. ⏱ did not finish within the per-cell time limit",
        "(reason below). · not tried.",
        "Cells are timed one after another (not interleaved), so on a loaded machine the ratios are rough;",
        "docs/backends.md has interleaved side-by-side figures.",
        "",
        *lines,
        "",
    ]
    if notes:
        out += ["Reasons:", ""] + [f"{i}. {n}" for i, n in enumerate(notes, 1)] + [""]
    m = meta
    out.append(
        f"Generated by `{m.get('command', 'python bench/capabilities.py')}` on {m.get('date', '?')} "
        f"({m.get('machine', '?')}; random-init weights, {m.get('samples', '?')} real sample images per model)."
    )
    if m.get("earlier_runs"):
        first = m["earlier_runs"][0].get("date", "?")
        out.append(f"It resumed {len(m['earlier_runs'])} earlier run(s), the first on {first}; cells keep the figures of the run that tried them.")
    revived = sorted({r.model for r in results if (r.extra.get("weights") or {}).get("note")})
    if revived:
        out.append(f"Weights: `edgeopt.capabilities.live_weights`, a random init whose muted branches are revived ({', '.join(revived)}: "
                   "zero-initialised residual norm scales and 1e-5 layer scales set to 1): otherwise those branches are dead "
                   "or mute, converters fold them away and int8 cannot get them wrong.")
    return "\n".join(out) + "\n"


def cell_table_markdown() -> str:
    """How each cell is built (the data above), for docs/capabilities.md."""
    lines = ["| backend | precision | how (`edgeopt compile ...`) | artifact | runs on | what it is |", "|---|---|---|---|---|---|"]
    for c in CELLS:
        args = []
        if c.passes:
            args.append(f"--passes {c.passes}")
        args += [f"--option {k}={v}" for k, v in c.options.items()]
        cmd = " ".join([f"--backend {c.backend}", *args])
        lines.append(f"| {c.backend} | {c.precision} | `{cmd}` | `{c.artifact}` | {c.runs_on} | {c.meaning} |")
    return "\n".join(lines) + "\n"


def replace_block(text: str, block: str, start: str = README_START, end: str = README_END) -> str:
    """Replace what lies between the markers (kept) with `block`."""
    i, j = text.find(start), text.find(end)
    if i < 0 or j < 0 or j < i:
        raise EdgeoptError(f"markers {start} ... {end} not found", "add them to the file where the table belongs")
    return text[: i + len(start)] + "\n" + block.rstrip("\n") + "\n" + text[j:]
