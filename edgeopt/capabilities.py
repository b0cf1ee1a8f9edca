"""The capability table as cells: backend x precision -> how to get it (Ultralytics `export_formats()` style).

The table itself is what the backends declare (`Backend.modes`, read by `edgeopt.runtimes.table`); a
`Cell` is one of those modes with its backend's name. `how(backend, precision)` turns a cell into the
`passes`/`options` that `edgeopt.compile` takes (benches and tests use it, so there is no second list to
keep in step), and `try_cell` compiles and runs one model for one cell and says what happened. The
generator (`bench/capabilities.py`) tries every (model family x cell) for real and renders
`docs/capabilities.md` from its record (`bench/_matrix.py`); this module holds no figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeopt.errors import EdgeoptError
from edgeopt.runtimes.base import ALIASES, RUNS_ANYWHERE, Mode, precision_label
from edgeopt.runtimes.table import capability_table, get_mode


@dataclass(frozen=True)
class Cell:
    """One backend x precision: how edgeopt builds it and what it means (a backend's `Mode`, named)."""

    backend: str
    precision: str
    passes: str | None
    options: dict[str, Any]
    artifact: str
    meaning: str
    runs_on: str = RUNS_ANYWHERE
    computes: str | None = None  # see Mode.computes

    @property
    def key(self) -> str:
        return f"{self.backend}/{self.precision}"

    @property
    def label(self) -> str:
        return precision_label(self.precision, self.computes)

    @classmethod
    def of(cls, backend: str, mode: Mode) -> Cell:
        return cls(backend, mode.precision, mode.passes, dict(mode.options), mode.artifact, mode.meaning, mode.runs_on,
                   mode.computes)


# Every cell, in the docs' column order (backends in registry order, then each backend's modes).
CELLS: tuple[Cell, ...] = tuple(Cell.of(b, m) for b, m in capability_table())

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
    """The cell of `backend` (a name or alias) and `precision`; a one-line error lists the backend's cells."""
    name = ALIASES.get(backend, backend)
    return Cell.of(name, get_mode(name, precision))


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

    The fixed seed makes figures repeatable: a quantized artifact's agreement with fp32 depends on the weights."""
    import torch

    from edgeopt.models import get_spec
    from edgeopt.models.liveinit import describe, revive_muted_branches

    spec = get_spec(model)
    torch.manual_seed(seed)
    m = spec.build(init_seed=seed)
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
        kw["weights_info"] = label
    try:
        b = edgeopt.compile(model, output=out_dir, samples=samples, overwrite=True, module=module, **kw)
    except Exception as e:  # noqa: BLE001 - a failing cell is a result, with its reason
        res.reason = _reason(e)
        res.compile_s = round(time.perf_counter() - t0, 1)
        return res
    res.compile_s = round(time.perf_counter() - t0, 1)
    res.size_bytes = b.size_bytes()
    res.cosine = b.manifest.fidelity.get("cosine")
    host = b.manifest.backend_details.get("host_runnable", True)
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
        b = edgeopt.compile(model, output=out_dir, samples=1, overwrite=True, module=module, weights_info=label if module is not None else None)
    r = edgeopt.profile(b.path, runs=runs, warmup=1, min_seconds=min_seconds, store=False)
    return float(r.latency_ms.p50)


def _reason(e: BaseException) -> str:
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    hint = getattr(e, "hint", None)
    line = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    if not isinstance(e, EdgeoptError):
        line = f"{type(e).__name__}: {line}"
    return (line + (f" ({hint})" if hint else ""))[:400]
