"""`edgeopt compile MODEL --auto`: the fastest artifact within a fidelity budget, across passes,
backends and precisions, measured on the target device.

Search: exhaustive over a small, explicit grid, with pruning (documented in docs/auto.md). Why not a
black-box optimiser: the grid is a few dozen discrete points, most of the cost is compiling, and two
facts prune it hard: (1) fidelity is known at compile time, before any measurement, so a candidate that
breaks the budget is never measured; (2) torch-level passes (reparam, prune, low-rank) only change the
graph a backend sees, so they are tried only on the (backend, precision) pairs that were not dominated
in the first stage. Every measured candidate is stored (jobs of one run in the results database); the
Pareto front (latency, fidelity, size, energy where measured) goes into the run and the winner's manifest.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeopt._util import atomic_dir
from edgeopt.errors import DeviceError, EdgeoptError

# Precision -> the quantize pass that gives it (the same spec works on every backend).
PRECISION_PASSES: dict[str, str | None] = {
    "fp32": None,
    "fp16": "quantize:fp16",
    "dynamic": "quantize:dynamic",
    "int8": "quantize:int8",
}
# Per backend, the precisions worth trying (what each backend supports well on a CPU).
BACKEND_PRECISIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("fp32", "int8", "dynamic", "fp16"),
    "tflite": ("fp32", "dynamic", "int8", "fp16"),
    "tvm": ("fp32",),
}
# Search order on a CPU: the plain export first (so the winner is never slower than what a plain export
# gives, whatever the time budget), then int8 paths (LiteRT/XNNPACK dynamic int8 and ORT u8s8 QDQ were the
# fastest measured here, docs/backends.md), then fp32/fp16; anything else after these.
PRIOR: tuple[tuple[str, str], ...] = (
    ("onnxruntime", "fp32"), ("tflite", "dynamic"), ("onnxruntime", "int8"), ("tflite", "int8"), ("tflite", "fp32"),
    ("onnxruntime", "dynamic"), ("tflite", "fp16"), ("onnxruntime", "fp16"), ("tvm", "fp32"),
)
# Torch-level prefixes tried in stage 2 on the non-dominated (backend, precision) pairs.
# The passes' own before/after latency measurement is off: the search measures every artifact itself.
_NL = "measure_latency=false"
STAGE2_PREFIXES: tuple[str, ...] = (
    f"reparam:{_NL}",
    f"reparam:{_NL},prune:ratio=0.3,{_NL}",
    f"reparam:{_NL},lowrank:{_NL}",
)
# A stage-1 pair slower than this factor times the best feasible pair is dominated: stage 2 skips it.
DOMINATED_FACTOR = 1.5
# A plain fp32 artifact at least this close to torch is the same model numerically; its task agreement is then the
# agreement metric's own noise floor on these weights, and the gate is never set above it.
NOISE_FLOOR_COSINE = 0.99999
# Confirm stage: one measurement per candidate is one sample of a noisy machine (sub-millisecond models swapped
# places between runs here), so the contenders within this factor of the best (at most CONFIRM_MAX of them) are
# measured again, CONFIRM_ROUNDS times in alternating order, and ranked by the median of their p50s.
CONFIRM_FACTOR = 1.3
CONFIRM_MAX = 4
CONFIRM_ROUNDS = 2


@dataclass
class Candidate:
    backend: str
    precision: str
    prefix: str = ""  # torch-level passes, e.g. "reparam,prune:ratio=0.3"
    status: str = "pending"  # pending | infeasible | measured | failed | skipped
    reason: str | None = None
    bundle: str | None = None
    bundle_sha256: str | None = None
    latency_ms: float | None = None
    cosine: float | None = None
    top1: float | None = None
    agreement: float | None = None  # the task's agreement metric (AGREEMENT_KEYS), where it has one
    size_bytes: int | None = None
    energy_j: float | None = None
    compile_s: float | None = None
    measurement_id: int | None = None
    confirm_ms: list[float] | None = None  # the p50 of each measurement in the confirm stage, the first one included

    @property
    def passes(self) -> str:
        parts = [p for p in (self.prefix, PRECISION_PASSES[self.precision]) if p]
        return ",".join(parts)

    @property
    def label(self) -> str:
        short = self.prefix.replace(f":{_NL}", "").replace(f",{_NL}", "")
        return f"{self.backend}/{self.precision}" + (f" + {short}" if short else "")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passes"] = self.passes
        d["label"] = self.label
        return d


@dataclass
class AutoResult:
    winner: Candidate | None
    front: list[Candidate]
    candidates: list[Candidate]
    budget: float
    device: str
    seconds: float
    run_id: int | None = None
    notes: list[str] = field(default_factory=list)

    def closest(self, n: int = 3) -> list[Candidate]:
        """The candidates nearest the budget among those that missed it (cosine first, then task agreement)."""
        missed = [c for c in self.candidates if c.status == "infeasible" and c.cosine is not None]
        return sorted(missed, key=lambda c: (max(0.0, self.budget - c.cosine), -(c.agreement or 0.0)))[:n]


# The task's own agreement with the fp32 model, where the task has one (edgeopt.fidelity): output cosine alone can
# hide a changed answer, e.g. a detector whose box coordinates dominate the cosine while its classes change.
AGREEMENT_KEYS = ("top1_agreement", "map50", "next_token_agreement", "zeroshot_top1_agreement")


def task_agreement(fid: dict[str, float]) -> tuple[str, float] | None:
    """(metric, value) of the first agreement metric in a fidelity dict, or None when the task has none."""
    return next(((k, float(fid[k])) for k in AGREEMENT_KEYS if fid.get(k) is not None), None)


def pareto_front(cands: list[Candidate]) -> list[Candidate]:
    """Non-dominated measured candidates: lower latency, higher cosine, smaller size (and energy)."""
    pts = [c for c in cands if c.status == "measured"]

    def obj(c: Candidate) -> tuple[float, ...]:
        o = (c.latency_ms or float("inf"), -(c.cosine or 0.0), float(c.size_bytes or 0))
        return o + ((c.energy_j,) if all(x.energy_j is not None for x in pts) else ())

    front = []
    for c in pts:
        oc = obj(c)
        if not any(all(a <= b for a, b in zip(obj(d), oc, strict=True)) and obj(d) != oc for d in pts if d is not c):
            front.append(c)
    return sorted(front, key=lambda c: c.latency_ms or 0)


def _energy_j(result: dict[str, Any]) -> float | None:
    """Joules per inference of one measurement, None where the device has no meter."""
    e = result.get("energy") or {}
    return e.get("joules_per_inference") if isinstance(e, dict) else None


def available_backends(device_info: dict[str, Any], requested: list[str] | None) -> list[str]:
    """Backends that can compile here and run on the device (by the runtimes the device reports)."""
    from edgeopt.runtimes.base import get_backend

    runtime_of = {"onnxruntime": "onnxruntime", "tflite": ("ai-edge-litert", "tflite-runtime"), "tvm": "apache-tvm"}
    present = set(device_info.get("runtimes", {}))
    out = []
    for name in requested or list(BACKEND_PRECISIONS):
        need = runtime_of.get(name, name)
        need = need if isinstance(need, tuple) else (need,)
        if present and not any(n in present for n in need):
            continue
        ok, _why = get_backend(name).available()
        if ok:
            out.append(name)
    return out


def _reusable(folder: Path, model: str, wlabel: dict[str, Any]):
    """A candidate bundle left by an earlier (interrupted) search, if it is intact and for the same
    model and weights; otherwise None and the candidate is compiled again."""
    from edgeopt.bundle import load_bundle

    if not (folder / "manifest.json").exists():
        return None
    try:
        b = load_bundle(folder)
    except EdgeoptError:
        return None
    same = b.manifest["model"]["name"] == model and b.manifest.get("weights", {}).get("sha256") == wlabel.get("sha256")
    return b if same and b.manifest.get("weights", {}).get("kind") == wlabel["kind"] else None


def auto_compile(
    model: str,
    output: str | Path,
    device: str = "local",
    fidelity: float = 0.999,
    budget_minutes: float | None = None,
    min_agreement: float = 0.99,
    backends: list[str] | None = None,
    precisions: list[str] | None = None,
    stage2: bool = True,
    weights: str | Path | None = None,
    runs: int = 20,
    warmup: int = 5,
    min_seconds: float = 1.0,
    threads: int | None = None,
    db: str | None = None,
    workdir: str | Path | None = None,
    overwrite: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> AutoResult:
    """Search candidates, measure the feasible ones on `device`, write the fastest to `output`.

    Feasible: output cosine >= `fidelity` and, where the task has an agreement metric (top-1, mAP@0.5 against the
    fp32 detections, next token), that metric >= `min_agreement` on the sample inputs."""
    from edgeopt.api import compile as compile_bundle
    from edgeopt.api import weights_label
    from edgeopt.bundle import load_bundle
    from edgeopt.harness.devices import get_device
    from edgeopt.harness.protocol import Protocol, measure
    from edgeopt.models import get_spec
    from edgeopt.store import Store

    get_spec(model)  # an unknown name fails before any work
    output = Path(output)
    if output.exists() and not overwrite:
        raise EdgeoptError(f"{output} already exists", "choose another -o folder or pass --overwrite")
    st = Store(db)
    dev = get_device(device)
    info = dev.info()
    names = available_backends(info, backends)
    if not names:
        raise EdgeoptError(f"no backend can run on {device}", f"device runtimes: {sorted(info.get('runtimes', {}))}")
    protocol = Protocol(warmup=warmup, runs=runs, min_seconds=min_seconds, threads=threads)
    work = Path(workdir) if workdir else output.parent / f".{output.name}.candidates"
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    deadline = t_start + budget_minutes * 60 if budget_minutes else None
    run_id = st.start_run(f"auto {model} on {device}", {"model": model, "device": device, "budget": fidelity, "min_agreement": min_agreement, "backends": names})
    cands = [Candidate(b, p) for b in names for p in BACKEND_PRECISIONS[b] if not precisions or p in precisions]
    # Likely-fastest first, so that a time budget that runs out has already measured the best bets.
    cands.sort(key=lambda c: PRIOR.index((c.backend, c.precision)) if (c.backend, c.precision) in PRIOR else len(PRIOR))
    notes: list[str] = []
    need = min_agreement  # the task-agreement gate; lowered to the metric's noise floor (see evaluate)
    floor_from: str | None = None  # the candidate that set that floor
    results: dict[str, tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = {}  # label -> (job key, job, manifest, 1st measurement)
    consecutive_device_failures = 0
    wlabel = weights_label(weights)

    def evaluate(c: Candidate, i: int, n: int) -> None:
        nonlocal consecutive_device_failures
        if progress:
            progress(c.label, i, n)
        key = f"auto:{model}:{c.backend}:{c.passes}:{device}:{protocol.key()}"
        job = {"model": model, "passes": c.passes, "backend": c.backend, "precision": c.precision, "device_id": dev.id, "protocol_key": protocol.key()}
        slug = c.label.split(" + ", 1)[1].replace(",", "+").replace(":", "").replace("=", "") if " + " in c.label else "plain"
        folder = work / f"{c.backend}-{c.precision}-{slug}.bundle"
        t0 = time.perf_counter()
        try:
            b = _reusable(folder, model, wlabel) or compile_bundle(
                model, backend=c.backend, passes=c.passes or None, weights=weights, output=folder, overwrite=True)
        except EdgeoptError as e:
            c.status, c.reason = "failed", f"compile: {e.message}"
            st.record_job(key, job, "failed", run_id=run_id, stage="compile", error=c.reason)
            return
        except Exception as e:  # noqa: BLE001 - a converter crash fails this candidate, not the search
            c.status, c.reason = "failed", f"compile: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            st.record_job(key, job, "failed", run_id=run_id, stage="compile", error=c.reason)
            return
        c.compile_s = time.perf_counter() - t0
        c.bundle, c.bundle_sha256 = str(b.path), b.sha256
        f = b.manifest.get("fidelity", {})
        c.cosine, c.top1, c.size_bytes = f.get("cosine"), f.get("top1_agreement"), b.size_bytes()
        agree = task_agreement(f)
        c.agreement = agree[1] if agree else None
        nonlocal need, floor_from
        if agree is not None and floor_from is None and not c.prefix and c.precision == "fp32" and (c.cosine or 0) >= NOISE_FLOOR_COSINE:
            # The first plain fp32 artifact (ORT's, first in PRIOR) is the model itself, numerically: what it agrees
            # is the metric's noise floor on these weights (near-tied scores of a random detector reorder under 1e-6
            # differences: mAP@0.5 0.986 at cosine 1.000000). Nothing can be asked to beat that floor, so the gate
            # comes down to it. Only the first: TVM's fp32 (1e-5 differences) read 0.754 on the same weights, and a
            # floor that low would let a pruned detector through.
            floor_from = c.label
            if agree[1] < need:
                need = agree[1]
                notes.append(f"{agree[0]} gate lowered from {min_agreement} to {need:.3f}: the plain fp32 {c.backend} artifact "
                             f"(cosine {c.cosine:.6f}) agrees only that well with torch, the metric's noise floor on these weights")
        if c.cosine is None or c.cosine < fidelity or (agree is not None and agree[1] < need):
            c.status = "infeasible"
            if c.cosine is None:
                c.reason = "fidelity not measured on the host"
            elif c.cosine < fidelity:
                c.reason = f"cosine {c.cosine:.6f} < budget {fidelity} (missed by {fidelity - c.cosine:.2e})"
            else:
                c.reason = f"{agree[0]} {agree[1]:.3f} < {need:.3g} (missed by {need - agree[1]:.3f}) at cosine {c.cosine:.6f}"
            st.record_job(key, job, "failed", run_id=run_id, stage="fidelity", error=c.reason, bundle_sha256=b.sha256)
            return
        try:
            res = measure(dev, b.path, protocol, device_info=info)
        except (DeviceError, EdgeoptError) as e:
            consecutive_device_failures += 1
            c.status, c.reason = "failed", f"measure: {e.message}"
            st.record_job(key, job, "failed", run_id=run_id, stage="measure", error=c.reason, bundle_sha256=b.sha256)
            return
        consecutive_device_failures = 0
        c.latency_ms = res["latency_ms"]["p50"]
        c.energy_j = _energy_j(res)
        c.measurement_id = st.add_measurement(b.manifest, res, replace=True)
        results[c.label] = (key, job, b.manifest, res)
        c.status = "measured"
        st.record_job(key, job, "ok", run_id=run_id, stage="measure", bundle_sha256=b.sha256, measurement_id=c.measurement_id, error=None)

    def run_stage(todo: list[Candidate], base: int, total: int) -> bool:
        for i, c in enumerate(todo):
            if deadline and time.perf_counter() > deadline:
                for rest in todo[i:]:
                    rest.status, rest.reason = "skipped", "search time budget spent"
                notes.append(f"time budget of {budget_minutes} min spent after {base + i} candidates")
                return False
            if consecutive_device_failures >= 3:
                for rest in todo[i:]:
                    rest.status, rest.reason = "skipped", "device failed 3 times in a row"
                notes.append(f"device {device} failed 3 times in a row; kept the {sum(x.status == 'measured' for x in cands)} measured candidates")
                return False
            evaluate(c, base + i, total)
        return True

    def confirm() -> None:
        feasible = [c for c in cands if c.status == "measured"]
        best = min((c.latency_ms for c in feasible), default=None)
        todo = sorted((c for c in feasible if best and c.latency_ms <= CONFIRM_FACTOR * best), key=lambda c: c.latency_ms)[:CONFIRM_MAX]
        if len(todo) < 2:
            return
        runs_of: dict[str, list[dict[str, Any]]] = {c.label: [results[c.label][3]] for c in todo}
        for r in range(CONFIRM_ROUNDS):
            for c in todo if r % 2 else reversed(todo):
                if progress:
                    progress(f"confirm {c.label}", r, CONFIRM_ROUNDS)
                try:
                    runs_of[c.label].append(measure(dev, Path(c.bundle), protocol, device_info=info))
                except (DeviceError, EdgeoptError) as e:
                    notes.append(f"confirm stage stopped: {c.label}: {e.message}; ranked on the measurements taken")
                    break
            else:
                continue
            break
        for c in todo:
            rs = sorted(runs_of[c.label], key=lambda x: x["latency_ms"]["p50"])
            c.confirm_ms = [x["latency_ms"]["p50"] for x in runs_of[c.label]]
            mid = rs[(len(rs) - 1) // 2]  # a real measurement: the (lower) median one
            c.latency_ms = mid["latency_ms"]["p50"]
            c.energy_j = _energy_j(mid)
            key, job, manifest, _ = results[c.label]
            c.measurement_id = st.add_measurement(manifest, mid, replace=True)
            st.record_job(key, job, "ok", run_id=run_id, stage="confirm", bundle_sha256=c.bundle_sha256, measurement_id=c.measurement_id, error=None)
        notes.append(f"confirm stage: {len(todo)} contenders within {CONFIRM_FACTOR}x of the best re-measured in alternating "
                     f"rounds, ranked by the median p50 ({', '.join(f'{c.label} {c.latency_ms:.3g} ms' for c in todo)})")

    try:
        go_on = run_stage(cands, 0, len(cands))
        feasible = [c for c in cands if c.status == "measured"]
        if go_on and stage2 and feasible:
            best = min(c.latency_ms for c in feasible if c.latency_ms)
            keep = [c for c in feasible if c.latency_ms <= DOMINATED_FACTOR * best]
            for c in feasible:
                if c not in keep:
                    notes.append(f"{c.label}: dominated in stage 1 ({c.latency_ms:.2f} ms > {DOMINATED_FACTOR} x {best:.2f} ms), no stage 2")
            extra = [Candidate(c.backend, c.precision, prefix) for c in keep for prefix in STAGE2_PREFIXES]
            cands.extend(extra)
            run_stage(extra, len(cands) - len(extra), len(cands))
        # The ranking step runs even when the time budget stopped the search (it is at most CONFIRM_MAX x
        # CONFIRM_ROUNDS measurements): leyolo_nano's first candidate read 5.8 ms in a search cut by the budget
        # and 4.5 ms side by side afterwards, and an unconfirmed slower candidate won.
        if consecutive_device_failures < 3:
            confirm()
    finally:
        dev.close()
    feasible = [c for c in cands if c.status == "measured"]
    front = pareto_front(feasible)
    winner = min(feasible, key=lambda c: c.latency_ms) if feasible else None
    result = AutoResult(winner, front, cands, fidelity, device, time.perf_counter() - t_start, run_id, notes)
    summary = {"winner": winner.to_dict() if winner else None, "front": [c.to_dict() for c in front],
               "candidates": [c.to_dict() for c in cands], "seconds": result.seconds, "notes": notes,
               "search": "exhaustive grid with compile-time fidelity pruning and stage-1 dominance pruning"}
    st.finish_run(run_id, "done" if winner else "no-feasible-candidate")
    st.set_run_result(run_id, summary)
    if winner is None:
        return result
    with atomic_dir(output, overwrite=overwrite) as tmp:
        shutil.copytree(winner.bundle, tmp, dirs_exist_ok=True)
        mpath = tmp / "manifest.json"
        m = json.loads(mpath.read_text())
        m["auto"] = {"budget": fidelity, "min_agreement": min_agreement, "device": device, **summary}
        mpath.write_text(json.dumps(m, indent=2))
    load_bundle(output)  # the copy verifies like any bundle
    return result
