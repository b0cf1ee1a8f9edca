"""The job runner both orchestration policies share: compile -> fidelity gate -> measure -> record.

A job is one (model, pipeline, backend, precision) on one device with one protocol. `--auto` and sweeps
differ only in which jobs they make and in what order (their policies); each step of a job, and how its
outcome is written to the results database, is here once:

    compile_or_reuse(unit, folder)   -> Bundle               (a verified earlier bundle is reused)
    Gate.check(manifest)             -> reason or None       (fidelity budget, task agreement)
    JobRunner.measure(job, device)   -> JobOutcome           (stored; "already stored" is not a failure)
    JobRunner.fail(job, stage, why)  -> JobOutcome           (the job row keeps the stage and the reason)

Every outcome is data (`JobOutcome`), never an exception: one job's failure never stops the others.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edgeopt.bundle import Bundle, Manifest, WeightsLabel, load_bundle
from edgeopt.errors import AlreadyStored, DeviceUnreachable, EdgeoptError
from edgeopt.harness.devices.base import Device
from edgeopt.harness.protocol import measure
from edgeopt.measurement import Measurement, Protocol
from edgeopt.store import Store

Stage = Literal["connect", "compile", "fidelity", "measure", "confirm"]
Status = Literal["ok", "failed", "infeasible", "skipped"]


@dataclass(frozen=True)
class CompileUnit:
    """What one bundle is compiled from; many jobs (devices, thread counts) may share one unit."""

    model: str
    passes: str
    backend: str
    precision: str | None = None
    target: str | None = None  # the backend's compile target (a TVM target for the board's CPU); None: its default

    def folder(self, out: str | Path) -> Path:
        tail = f"__{_slug(self.target)}" if self.target else ""
        return Path(out) / f"{self.model}__{_slug(self.passes)}__{self.backend}__{self.precision or 'default'}{tail}.bundle"


def _slug(s: str | None) -> str:
    s = s or "none"
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", s)[:60] + "-" + hashlib.sha256(s.encode()).hexdigest()[:6]


@dataclass(frozen=True)
class Job:
    """One unit measured on one device with one protocol. `key` is the job's row in the store: a policy
    names its jobs (sweeps hash the spec, --auto keeps a readable key) and resumes by it."""

    unit: CompileUnit
    device_id: str
    protocol: Protocol
    key: str

    @classmethod
    def hashed(cls, unit: CompileUnit, device_id: str, protocol: Protocol) -> Job:
        spec = _spec(unit, device_id, protocol.key())
        return cls(unit, device_id, protocol, hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32])

    @property
    def spec(self) -> dict[str, Any]:
        """The job's columns in the store."""
        return _spec(self.unit, self.device_id, self.protocol.key())

    def label(self) -> str:
        u = self.unit
        return f"{u.model} ({u.passes or 'no passes'}) {u.backend}/{u.precision or 'default'} on {self.device_id} t={self.protocol.threads or 'auto'}"


def by_unit(jobs: list[Job]) -> dict[CompileUnit, list[Job]]:
    """Jobs grouped by what they compile (each unit is compiled once for all its jobs), in first-seen order."""
    out: dict[CompileUnit, list[Job]] = {}
    for j in jobs:
        out.setdefault(j.unit, []).append(j)
    return out


def _spec(u: CompileUnit, device_id: str, protocol_key: str) -> dict[str, Any]:
    spec = {"model": u.model, "passes": u.passes, "backend": u.backend, "precision": u.precision, "device_id": device_id, "protocol_key": protocol_key}
    if u.target:  # only where set, so the keys of default-target jobs stay what they were
        spec["target"] = u.target
    return spec


@dataclass
class JobOutcome:
    status: Status
    stage: Stage
    reason: str | None = None
    bundle: Bundle | None = None
    measurement: Measurement | None = None
    unreachable: bool = False  # the device could not be reached: its other jobs in this run are not worth trying


def compile_or_reuse(unit: CompileUnit, folder: str | Path, weights: str | Path | None = None, samples: int = 8,
                     precision_option: bool = True, data: Any = None) -> Bundle:
    """Compile a unit into `folder`, or reuse the verified bundle already there when it is of the same model,
    backend and weights (an interrupted run leaves its bundles behind). Raises EdgeoptError.

    `precision_option`: pass the unit's precision to the backend as its `precision` option (sweeps); --auto's
    precisions come from the quantize pass in the unit's pipeline instead. `data`: the user's data (a path, an
    `edgeopt.data.DataRequest` or a prepared `Dataset`), passed to `edgeopt.compile` as its `data`."""
    from edgeopt.api import compile as compile_bundle
    from edgeopt.api import weights_label

    folder = Path(folder)
    old = _reusable(folder, unit, weights_label(weights))
    if old is not None and _data_path(old.manifest.data.path if old.manifest.data else None) != _data_path(data):
        old = None  # made on other data (or on the bundled photographs)
    if old is not None:
        return old
    opts = {"precision": unit.precision} if unit.precision and precision_option else None
    return compile_bundle(unit.model, backend=unit.backend, passes=unit.passes or None, weights=weights, output=folder,
                          target=unit.target, options=opts, samples=samples, overwrite=True, data=data)


def _data_path(data: Any) -> str | None:
    """The resolved path of the user's data however it is given (path, DataRequest, Dataset), or None."""
    if data is None:
        return None
    cat = getattr(data, "catalog", None)
    p = getattr(data, "path", None) or (cat.source or cat.root if cat is not None else None) or data
    return str(Path(p).resolve())


def _reusable(folder: Path, unit: CompileUnit, wlabel: WeightsLabel) -> Bundle | None:
    if not (folder / "manifest.json").exists():
        return None
    try:
        b = load_bundle(folder)
    except EdgeoptError:
        return None
    m = b.manifest
    same = (m.model.name, m.backend, m.weights.kind, m.weights.sha256) == (unit.model, unit.backend, wlabel.kind, wlabel.sha256)
    return b if same else None


def compile_worker(unit: CompileUnit, folder: str, samples: int, weights: str | None, data: str | None = None) -> tuple[str | None, str | None]:
    """Process-pool entry: compile one unit (on the user's `data` when given); (bundle path, None) or (None, the reason it failed)."""
    try:
        return str(compile_or_reuse(unit, folder, weights, samples, data=data).path), None
    except EdgeoptError as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001 - a bug in one compile must not stop the run; its reason is stored
        return None, f"{type(e).__name__}: {e}"


# The task's own agreement with the fp32 model, where the task has one (edgeopt.fidelity): output cosine alone can
# hide a changed answer, e.g. a detector whose box coordinates dominate the cosine while its classes change.
AGREEMENT_KEYS = ("top1_agreement", "map50", "next_token_agreement", "zeroshot_top1_agreement")


def task_agreement(fid: dict[str, float]) -> tuple[str, float] | None:
    """(metric, value) of the first agreement metric in a fidelity dict, or None when the task has none."""
    return next(((k, float(fid[k])) for k in AGREEMENT_KEYS if fid.get(k) is not None), None)


@dataclass
class Gate:
    """The fidelity gate a candidate passes before it is measured: output cosine and, where the task has an
    agreement metric (top-1, mAP@0.5, next token), that metric too."""

    cosine: float
    agreement: float

    def check(self, manifest: Manifest) -> str | None:
        """Why this artifact fails the gate, or None when it passes."""
        f = manifest.fidelity
        cos = f.get("cosine")
        agree = task_agreement(f)
        if cos is None:
            return "fidelity not measured on the host"
        if cos < self.cosine:
            return f"cosine {cos:.6f} < budget {self.cosine} (missed by {self.cosine - cos:.2e})"
        fig = f.get("agreement")
        if manifest.data is not None and agree is not None and isinstance(fig, dict) and fig.get("n"):
            # on the user's data the gate judges the interval's pessimistic end; too few samples: unresolved, not passed
            from edgeopt.stats import Figure, gate_at_least

            if fig["metric"] == "map50":  # a bootstrap interval: its lower end decides
                lo = float(fig["ci95"][0])
                return None if lo >= self.agreement else f"fail: map50 95 % lower bound {lo:.3f} < {self.agreement:.3g} at cosine {cos:.6f}"
            res = gate_at_least(Figure(str(fig["metric"]), float(fig["value"]), int(fig["n"]), tuple(fig["ci95"])), self.agreement)
            return None if res.status == "pass" else f"{res.status}: {res.reason} at cosine {cos:.6f}"
        if agree is not None and agree[1] < self.agreement:
            return f"{agree[0]} {agree[1]:.3f} < {self.agreement:.3g} (missed by {self.agreement - agree[1]:.3f}) at cosine {cos:.6f}"
        return None


class JobRunner:
    """Runs the measure step of jobs and records every outcome in one store, under one run."""

    def __init__(self, store: Store, run_id: int | None) -> None:
        self.store = store
        self.run_id = run_id

    def record(self, job: Job, outcome: JobOutcome) -> JobOutcome:
        ok = outcome.status == "ok"
        self.store.record_job(
            job.key, job.spec, "ok" if ok else "failed", run_id=self.run_id, stage=outcome.stage,
            error=None if ok else (outcome.reason or "")[:2000],
            bundle_sha256=outcome.bundle.sha256 if outcome.bundle is not None else None,
            measurement_id=outcome.measurement.measurement_id if outcome.measurement is not None else None,
        )
        return outcome

    def fail(self, job: Job, stage: Stage, reason: str, bundle: Bundle | None = None, status: Status = "failed") -> JobOutcome:
        return self.record(job, JobOutcome(status, stage, reason, bundle))

    def stored(self, job: Job, bundle: Bundle) -> bool:
        """Whether this job's measurement is already in the store (a run killed between storing it and
        recording its job): the job row is completed and nothing is measured again."""
        if not self.store.has(bundle.sha256, job.device_id, job.protocol.key()):
            return False
        self.record(job, JobOutcome("ok", "measure", None, bundle))
        return True

    def measure(self, job: Job, device: Device, bundle: Bundle, info: dict[str, Any] | None, replace: bool = False,
                stage: Stage = "measure") -> JobOutcome:
        """Measure, store, record. A device error is a failed job (its bundle's failure stored too)."""
        try:
            res = measure(device, bundle, job.protocol, device_info=info)
        except EdgeoptError as e:
            return self.record_failure(job, bundle, e, stage)
        return self.record_measurement(job, bundle, res, replace, stage)

    def record_failure(self, job: Job, bundle: Bundle, error: EdgeoptError, stage: Stage = "measure") -> JobOutcome:
        """Record a measurement that failed (taken here or by a worker elsewhere): the bundle's failure and the job."""
        try:
            self.store.add_failure(bundle.manifest, job.device_id, job.protocol, str(error))
        except EdgeoptError:
            pass
        return self.record(job, JobOutcome("failed", stage, str(error), bundle, unreachable=isinstance(error, DeviceUnreachable)))

    def record_measurement(self, job: Job, bundle: Bundle, res: Measurement, replace: bool = False, stage: Stage = "measure") -> JobOutcome:
        """Store a measurement (taken here or by a worker elsewhere) and record the job; never twice."""
        try:
            res.measurement_id = self.store.add_measurement(bundle.manifest, res, replace=replace)
        except AlreadyStored:
            pass  # a concurrent or earlier run stored it: never twice
        return self.record(job, JobOutcome("ok", stage, None, bundle, res))
