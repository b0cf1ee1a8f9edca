"""`edgeopt compile MODEL --auto`: the fastest artifact within a fidelity budget, across passes,
backends and precisions, measured on the target device. A policy over the shared job runner (jobs.py).

Search: exhaustive over a small, explicit grid, with pruning (documented in docs/auto.md). Why not a
black-box optimiser: the grid is a few dozen discrete points, most of the cost is compiling, and two
facts prune it hard: (1) fidelity is known at compile time, before any measurement, so a candidate that
breaks the budget is never measured; (2) torch-level passes (reparam, prune, low-rank) only change the
graph a backend sees, so they are tried only on the (backend, precision) pairs that were not dominated
in the first stage. A confirm stage re-measures the contenders in alternating rounds and ranks them by
the median. Every measured candidate is stored (jobs of one run in the results database); the Pareto
front (latency, fidelity, size, energy where measured) goes into the run and the winner's manifest.

The grid and its order come from the backends' capability table (`runtimes.table.auto_grid`). What is built
comes from the device's snapshot (`orchestrate/boards.py`): only backends whose runtime the board has, TVM
cross-compiled for the board's CPU. A candidate wins only if its outputs matched the bundle's reference on the
device itself (`Measurement.outputs_match`), not only on the host.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt._util import atomic_dir
from edgeopt.bundle import Bundle, load_bundle, read_manifest, write_manifest
from edgeopt.errors import EdgeoptError
from edgeopt.measurement import Measurement, Protocol
from edgeopt.orchestrate.jobs import (
    AGREEMENT_KEYS,
    CompileUnit,
    Gate,
    Job,
    JobRunner,
    compile_or_reuse,
    task_agreement,
)

__all__ = ["AGREEMENT_KEYS", "AutoResult", "Candidate", "auto_compile", "pareto_front", "task_agreement"]

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
# A stage-1 candidate that misses the cosine budget by at most this factor times the error the budget allows
# (1 - budget) is followed by the same precision after reparam, then by its mode's repair (`Mode.repair`: int8
# with the most sensitive nodes float): `AutoSearch.repairs`.
REPAIR_MISS_FACTOR = 10.0
# Confirm stage: the contenders within CONFIRM_FACTOR of the best (at most CONFIRM_MAX) are compared in CONFIRM_ROUNDS
# interleaved rounds (harness/compare.py) and ranked by the median of their p50s (one sample of a noisy machine is not
# a rank); 3 is the fewest rounds compare takes.
CONFIRM_FACTOR = 1.3
CONFIRM_MAX = 4
CONFIRM_ROUNDS = 3
# After this many device failures in a row the device is taken as gone and the search stops.
MAX_DEVICE_FAILURES = 3


@dataclass
class Candidate:
    backend: str
    precision: str
    prefix: str = ""  # torch-level passes, e.g. "reparam,prune:ratio=0.3"
    precision_passes: str | None = None  # the quantize pass that gives `precision` (from the capability table)
    target: str | None = None  # the compile target for the device (a TVM target for its CPU); None: the backend's default
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
    retry_of: str | None = None  # the stage-1 candidate whose narrow miss this one retries after reparam (`AutoSearch.repairs`)

    @property
    def passes(self) -> str:
        return ",".join(p for p in (self.prefix, self.precision_passes) if p)

    @property
    def label(self) -> str:
        short = self.prefix.replace(f":{_NL}", "").replace(f",{_NL}", "")
        return f"{self.backend}/{self.precision}" + (f" + {short}" if short else "")

    @property
    def slug(self) -> str:
        tail = self.label.split(" + ", 1)[1].replace(",", "+").replace(":", "").replace("=", "") if " + " in self.label else "plain"
        return f"{self.backend}-{self.precision}-{tail}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("precision_passes")
        for k in ("target", "retry_of"):
            if d[k] is None:
                d.pop(k)
        d["passes"] = self.passes
        d["label"] = self.label
        return d


# The reason of a candidate the search time budget left untried (Candidate.reason, status "skipped").
BUDGET_SPENT = "search time budget spent"


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


def confirmed_winner(cands: list[Candidate], round_p50_ms: list[list[float]]) -> tuple[int, int]:
    """(winner, fastest) as indices into `cands`, from each one's p50 per interleaved round: the fastest by its
    median round, and the winner among it and the candidates whose ratio to it has a 95 % interval that says
    "no clear difference" (`harness.compare.tied`): the highest cosine, then the lower latency."""
    from edgeopt.harness.compare import bootstrap_ratio, tied

    meds = [float(np.median(r)) for r in round_p50_ms]
    fastest = min(range(len(cands)), key=meds.__getitem__)
    ties = [i for i in range(len(cands)) if i == fastest or tied(bootstrap_ratio(round_p50_ms[fastest], round_p50_ms[i]))]
    return max(ties, key=lambda i: (cands[i].cosine or 0.0, -meds[i])), fastest


Progress = Callable[[str, int, int], None]


class AutoSearch:
    """One --auto search: its candidates, its gate, its device and store, and the notes it makes."""

    data: Any = None  # the user's data (a prepared edgeopt.data.Dataset): calibration and the gate's evaluation split

    def __init__(self, model: str, device: Any, info: dict[str, Any], protocol: Protocol, runner: JobRunner, gate: Gate,
                 work: Path, weights: str | Path | None, deadline: float | None, progress: Progress | None) -> None:
        self.model, self.device, self.info, self.protocol = model, device, info, protocol
        self.runner, self.gate, self.work, self.weights = runner, gate, work, weights
        self.deadline, self.progress = deadline, progress
        self.min_agreement = gate.agreement
        self.cands: list[Candidate] = []
        self.notes: list[str] = []
        self.floor_from: str | None = None  # the candidate that set the agreement gate's noise floor
        self.device_failures = 0  # in a row
        self.jobs: dict[str, tuple[Job, Bundle, Measurement]] = {}  # label -> (job, its verified bundle, first measurement)
        self.winner: Candidate | None = None  # set by `confirm`; else the fastest feasible candidate wins

    def job(self, c: Candidate) -> Job:
        unit = CompileUnit(self.model, c.passes, c.backend, c.precision, c.target)
        target = f"@{c.target}" if c.target else ""
        key = f"auto:{self.model}:{c.backend}{target}:{c.passes}:{self.device.uri}:{self.protocol.key()}"
        return Job(unit, self.device.id, self.protocol, key)

    def _lower_gate(self, c: Candidate, agree: tuple[str, float] | None) -> None:
        """The first plain fp32 artifact (ORT's, first in the search order) is the model itself, numerically: what
        it agrees is the metric's noise floor on these weights, so the gate comes down to it. Only the first:
        another backend's fp32 differs by more and would set a floor low enough to let a broken candidate through."""
        if agree is None or self.floor_from is not None or c.prefix or c.precision != "fp32" or (c.cosine or 0) < NOISE_FLOOR_COSINE:
            return
        self.floor_from = c.label
        if agree[1] < self.gate.agreement:
            self.gate.agreement = agree[1]
            self.notes.append(f"{agree[0]} gate lowered from {self.min_agreement} to {agree[1]:.3f}: the plain fp32 {c.backend} artifact "
                              f"(cosine {c.cosine:.6f}) agrees only that well with torch, the metric's noise floor on these weights")

    def evaluate(self, c: Candidate) -> None:
        """Compile, gate, measure one candidate; its status and figures are set from the outcome."""
        job = self.job(c)
        t0 = time.perf_counter()
        try:
            b = compile_or_reuse(job.unit, self.work / f"{c.slug}.bundle", self.weights, precision_option=False, data=self.data)
        except Exception as e:  # noqa: BLE001 - a converter crash fails this candidate, not the search
            msg = e.message if isinstance(e, EdgeoptError) else f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            c.status, c.reason = "failed", f"compile: {msg}"
            self.runner.fail(job, "compile", c.reason)
            return
        c.compile_s = time.perf_counter() - t0
        c.bundle, c.bundle_sha256, c.size_bytes = str(b.path), b.sha256, b.size_bytes()
        f = b.manifest.fidelity
        c.cosine, c.top1 = f.get("cosine"), f.get("top1_agreement")
        agree = task_agreement(f)
        c.agreement = agree[1] if agree else None
        self._lower_gate(c, agree)
        why = self.gate.check(b.manifest)
        if why:
            c.status, c.reason = "infeasible", why
            self.runner.fail(job, "fidelity", why, b, status="infeasible")
            return
        out = self.runner.measure(job, self.device, b, self.info, replace=True)
        if out.measurement is None:
            self.device_failures += 1
            c.status, c.reason = "failed", f"measure: {out.reason}"
            return
        self.device_failures = 0
        c.latency_ms, c.energy_j, c.measurement_id = out.measurement.p50, out.measurement.joules_per_inference, out.measurement.measurement_id
        if out.measurement.outputs_match is not True:
            why = "did not match" if out.measurement.outputs_match is False else "were not checked against"
            c.status, c.reason = "failed", f"measure: its outputs on {self.device.id} {why} the bundle's reference ({out.measurement.check or 'no check'})"
            self.runner.fail(job, "measure", c.reason, b)
            return
        c.status = "measured"
        self.jobs[c.label] = (job, b, out.measurement)

    def run_stage(self, todo: list[Candidate]) -> bool:
        """Evaluate candidates in order until the time budget or the device gives out; False when one did."""
        base = len(self.cands) - len(todo)
        for i, c in enumerate(todo):
            stop = None
            if self.deadline and time.perf_counter() > self.deadline:
                stop = (BUDGET_SPENT, f"time budget spent after {base + i} candidates")
            elif self.device_failures >= MAX_DEVICE_FAILURES:
                measured = sum(x.status == "measured" for x in self.cands)
                stop = (f"device failed {MAX_DEVICE_FAILURES} times in a row",
                        f"device {self.device.uri} failed {MAX_DEVICE_FAILURES} times in a row; kept the {measured} measured candidates")
            if stop:
                for rest in todo[i:]:
                    rest.status, rest.reason = "skipped", stop[0]
                self.notes.append(stop[1])
                return False
            if self.progress:
                self.progress(c.label, base + i, len(self.cands))
            self.evaluate(c)
            # tried next, in order: the loop reaches todo[i + 1] (stage 1's todo is self.cands)
            todo[i + 1 : i + 1] = self.repairs(c)
        return True

    def repairs(self, c: Candidate) -> list[Candidate]:
        """What to try right after a stage-1 candidate `c` (no torch passes) that narrowly missed the cosine budget.

        First the same backend and precision after reparameterization: lossless in float, it folds norms and
        merges branches, so there are fewer, better-conditioned tensors to quantize (mobileclip_s0_image on ORT:
        int8 cosine 0.99950, reparam+int8 0.99965 in docs/passes.md), and an all-int8 artifact stays faster than
        one with float nodes. When that retry does not meet the budget either (or reparam does not apply), the
        mode's repair (`Mode.repair`) on the same backend, with the budget as its target. Nothing after a wide
        miss: keeping that many nodes float would not beat the fp32 artifact, and reparameterizing does not
        close a wide gap."""
        from edgeopt.runtimes.base import backend_class

        if c.retry_of is not None:
            if c.status == "measured":
                return []
            first = next(x for x in self.cands if x.label == c.retry_of)
        elif c.prefix or not self._narrow_miss(c):
            return []
        else:
            first = c
        mode = next((m for m in backend_class(first.backend).modes if m.precision == first.precision), None)
        if mode is None:  # `first` is itself a repair, whose precision is no mode of the table
            return []
        if c.retry_of is None:
            nxt = Candidate(c.backend, c.precision, STAGE2_PREFIXES[0], c.precision_passes, c.target, retry_of=c.label)
        elif mode.repair is not None:
            precision, passes = mode.repair
            nxt = Candidate(first.backend, precision, "", f"{passes},target={self.gate.cosine}", first.target)
        else:
            return []
        self.notes.append(f"{c.label} missed the budget ({f'cosine {c.cosine:.6f}' if c.cosine is not None else c.status}): trying {nxt.label} next")
        return [nxt]

    def _narrow_miss(self, c: Candidate) -> bool:
        """Infeasible on cosine by at most REPAIR_MISS_FACTOR times the error the budget allows."""
        return (c.status == "infeasible" and c.cosine is not None and c.cosine < self.gate.cosine
                and 1.0 - c.cosine <= REPAIR_MISS_FACTOR * (1.0 - self.gate.cosine))

    def stage2(self) -> list[Candidate]:
        """Torch-level prefixes on the stage-1 pairs within DOMINATED_FACTOR of the best."""
        feasible = [c for c in self.cands if c.status == "measured"]
        if not feasible:
            return []
        best = min(c.latency_ms for c in feasible if c.latency_ms)
        extra = []
        for c in feasible:
            if c.latency_ms > DOMINATED_FACTOR * best:
                self.notes.append(f"{c.label}: dominated in stage 1 ({c.latency_ms:.2f} ms > {DOMINATED_FACTOR} x {best:.2f} ms), no stage 2")
                continue
            extra += [Candidate(c.backend, c.precision, prefix, c.precision_passes, c.target) for prefix in STAGE2_PREFIXES]
        tried = {x.label for x in self.cands}
        return [x for x in extra if x.label not in tried]

    def confirm(self) -> None:
        """Re-measure the contenders with `edgeopt compare`'s interleaved rounds; rank each by its median p50,
        and pick the winner.

        Each round measures every contender once through the whole protocol (the rounds rotate the order);
        the stored measurement is each contender's median-round one (a real run, not an average), and the
        notes give each contender's ratio to the first with its 95 % interval. The winner: among the fastest
        contender and those the rounds cannot tell from it (`Compared.verdict` "no clear difference"), the one
        with the highest cosine, so that noise never trades fidelity (an int8 artifact, a pruned one) for a
        speed-up that is not there."""
        from edgeopt.harness.compare import compare
        from edgeopt.harness.protocol import measure

        feasible = [c for c in self.cands if c.status == "measured"]
        best = min((c.latency_ms for c in feasible), default=None)
        todo = sorted((c for c in feasible if best and c.latency_ms <= CONFIRM_FACTOR * best), key=lambda c: c.latency_ms)[:CONFIRM_MAX]
        if len(todo) < 2:
            return
        bundles = [self.jobs[c.label][1] for c in todo]
        try:
            cmp = compare(self.device, bundles, rounds=CONFIRM_ROUNDS, protocol=self.protocol, labels=[c.label for c in todo],
                          on_round=(lambda r, n: self.progress("confirm", r, n)) if self.progress else None,
                          measure_one=lambda b: measure(self.device, b, self.protocol, device_info=self.info))
        except EdgeoptError as e:
            self.notes.append(f"confirm stage stopped: {e.message}; ranked on the stage-1 measurements")
            return
        for c, res, runs in zip(todo, cmp.results, cmp.measurements, strict=True):
            c.confirm_ms = [self.jobs[c.label][2].p50, *res.round_p50_ms]
            mid = sorted(runs, key=lambda m: m.p50 or 0.0)[(len(runs) - 1) // 2]  # a real measurement: the (lower) median one
            job, bundle, _ = self.jobs[c.label]
            mid.measurement_id = self.runner.store.add_measurement(bundle.manifest, mid, replace=True)
            self.runner.store.record_job(job.key, job.spec, "ok", run_id=self.runner.run_id, stage="confirm", bundle_sha256=c.bundle_sha256,
                                         measurement_id=mid.measurement_id, error=None)
            c.latency_ms, c.energy_j, c.measurement_id = mid.p50, mid.joules_per_inference, mid.measurement_id
        verdicts = ", ".join(f"{r.label} {r.p50_ms:.3g} ms" + ("" if i == 0 else f" ({r.ratio:.2f}x, 95 % {r.ci95[0]:.2f}-{r.ci95[1]:.2f}: {r.verdict})")
                             for i, r in enumerate(cmp.results))
        self.notes.append(f"confirm stage: {len(todo)} contenders within {CONFIRM_FACTOR}x of the best compared in {CONFIRM_ROUNDS} "
                          f"interleaved rounds, ranked by the median p50 ({verdicts})")
        pick, fastest = confirmed_winner(todo, [r.round_p50_ms for r in cmp.results])
        self.winner = todo[pick]
        if pick != fastest:
            self.notes.append(f"winner {todo[pick].label} (cosine {todo[pick].cosine:.6f}): the confirm rounds cannot tell it from the fastest, "
                              f"{todo[fastest].label} (cosine {todo[fastest].cosine:.6f}), so the higher fidelity wins")


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
    progress: Progress | None = None,
    data: Any = None,
) -> AutoResult:
    """Search candidates, measure the feasible ones on `device`, write the fastest to `output`.

    Feasible: output cosine >= `fidelity` and, where the task has an agreement metric (top-1, mAP@0.5 against the
    fp32 detections, next token), that metric >= `min_agreement` on the sample inputs; a winner's outputs also
    matched the reference on the device. `device` is a devices.yaml name (its options apply) or a URI."""
    from edgeopt.harness.devices import open_device
    from edgeopt.models import get_spec
    from edgeopt.orchestrate.boards import plan_build
    from edgeopt.runtimes.base import get_backend
    from edgeopt.runtimes.table import auto_grid
    from edgeopt.store import Store

    spec = get_spec(model)  # an unknown name fails before any work
    if data is not None:  # the user's data (edgeopt.data), read once for every candidate; a bad dataset fails here
        from edgeopt.data import DataRequest, Dataset, prepare

        data = data if isinstance(data, Dataset) else prepare(DataRequest.of(data), spec, progress)
    output = Path(output)
    if output.exists() and not overwrite:
        raise EdgeoptError(f"{output} already exists", "choose another -o folder or pass --overwrite")
    st = Store(db)
    dev = open_device(device)
    try:
        info = dev.info()
        requested = backends or list(dict.fromkeys(b for b, _ in auto_grid()))
        if spec.generative is not None:  # a generative bundle: backends with a token loop, graph passes only (no stage 2)
            requested = [b for b in requested if get_backend(b).generative]
            stage2 = False
            if not requested:
                raise EdgeoptError(f"{model} generates token by token and none of {', '.join(backends or [])} builds generative bundles",
                                   f"search onnxruntime (-b onnxruntime), or search the single graph {model}_whole")
        build = plan_build(info, requested, dev.board_spec, device)  # no backend for this board: an error before any compile
    except BaseException:
        dev.close()
        raise
    names = [b for b in build.backends if get_backend(b).available()[0]]
    if not names:
        dev.close()
        raise EdgeoptError(f"no backend that can build for {device} is installed on this host ({', '.join(build.backends)})",
                           "install one (e.g. pip install 'edgeopt[tvm]')")
    protocol = Protocol(warmup=warmup, runs=runs, min_seconds=min_seconds, threads=threads)
    if dev.board_spec is not None:
        protocol = dev.board_spec.protocol(protocol)
    work = Path(workdir) if workdir else output.parent / f".{output.name}.candidates"
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    run_id = st.start_run(f"auto {model} on {device}", {"model": model, "device": device, "budget": fidelity, "min_agreement": min_agreement, "backends": names,
                                                         "arch": build.arch, "tvm_target": build.tvm_target})
    search = AutoSearch(model, dev, info, protocol, JobRunner(st, run_id), Gate(fidelity, min_agreement), work, weights,
                        t_start + budget_minutes * 60 if budget_minutes else None, progress)
    search.data = data
    # The grid in the table's order: likely-fastest first, so a time budget that runs out has measured the best bets.
    search.cands = [Candidate(b, m.precision, "", m.passes, build.target(b)) for b, m in auto_grid(names) if not precisions or m.precision in precisions]
    if backends:  # say why a backend asked for is not searched (not for every backend of the table)
        search.notes += [f"not built for {device}: {why}" for _, why in build.left_out]
    try:
        go_on = search.run_stage(search.cands)
        if go_on and stage2:
            extra = search.stage2()
            search.cands.extend(extra)
            search.run_stage(extra)
        # Ranking runs even when the time budget stopped the search (at most CONFIRM_MAX x CONFIRM_ROUNDS measurements).
        if search.device_failures < MAX_DEVICE_FAILURES:
            search.confirm()
    finally:
        dev.close()
    return _finish(search, output, fidelity, min_agreement, device, t_start, run_id, overwrite)


def _finish(search: AutoSearch, output: Path, fidelity: float, min_agreement: float, device: str, t_start: float,
            run_id: int, overwrite: bool) -> AutoResult:
    """Store the run's outcome; copy the winner to `output` with the search recorded in its manifest."""
    cands = search.cands
    feasible = [c for c in cands if c.status == "measured"]
    front = pareto_front(feasible)
    winner = search.winner or (min(feasible, key=lambda c: c.latency_ms) if feasible else None)
    result = AutoResult(winner, front, cands, fidelity, device, time.perf_counter() - t_start, run_id, search.notes)
    summary = {"winner": winner.to_dict() if winner else None, "front": [c.to_dict() for c in front],
               "candidates": [c.to_dict() for c in cands], "seconds": result.seconds, "notes": search.notes,
               "search": "exhaustive grid with compile-time fidelity pruning and stage-1 dominance pruning"}
    st = search.runner.store
    st.finish_run(run_id, "done" if winner else "no-feasible-candidate")
    st.set_run_result(run_id, summary)
    if winner is None:
        return result
    with atomic_dir(output, overwrite=overwrite) as tmp:
        shutil.copytree(winner.bundle, tmp, dirs_exist_ok=True)
        m = read_manifest(tmp)
        m.auto = {"budget": fidelity, "min_agreement": min_agreement, "device": device, **summary}
        write_manifest(tmp, m)
    load_bundle(output)  # the copy verifies like any bundle
    return result
