"""Sweeps: models x pass pipelines x backends x precisions x devices x thread counts, resumable.

    edgeopt bench examples/sweep.yaml

Compile jobs run in parallel worker processes; measurements run one at a time per device (one thread per
device, or all devices in one thread with `serial_devices: true` when they share CPUs, e.g. a loopback
board). Each measurement job is keyed by its spec and stored by (bundle sha256, device id, protocol key):
a sweep that is killed resumes where it stopped, never stores a result twice, and a re-run retries only
the failed and missing jobs. An unreachable device, a refused host key, a runner that crashes or hangs
(timeout) or a device that vanishes mid-sweep is recorded as a failed job with its reason; the sweep goes
on with the other jobs and devices. The YAML format is documented in docs/sweeps.md.
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeopt.errors import EdgeoptError, SpecError


class ProtocolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    warmup: int = 5
    runs: int = 20
    min_seconds: float = 1.0
    timeout: float = 600.0
    pin_cpus: str | None = None
    end_to_end: str | None = None
    cooldown: bool = True
    cooldown_timeout_s: float = 120.0


class CompileConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workers: int = 2
    samples: int = 4
    weights: dict[str, str] = {}  # model -> checkpoint file
    out: str = "sweep-bundles"


class SweepConfig(BaseModel):
    """The sweep YAML, validated (unknown keys are errors, so a typo never silently shrinks a sweep)."""

    model_config = ConfigDict(extra="forbid")
    name: str = "sweep"
    models: list[str] = Field(min_length=1)
    pipelines: list[str | None] = [""]
    backends: list[str] = ["onnxruntime"]
    precisions: list[str | None] = [None]
    devices: list[str | dict[str, Any]] = ["local"]
    threads: list[int | None] = [None]
    protocol: ProtocolConfig = ProtocolConfig()
    compile: CompileConfig = CompileConfig()
    db: str | None = None
    serial_devices: bool = False
    compile_first: bool = False


def load_sweep(path: str | Path) -> SweepConfig:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise EdgeoptError(f"sweep file {p} does not exist", "see examples/sweep.yaml")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{p} is not valid YAML: {str(e).splitlines()[0]}", "fix the file") from None
    try:
        cfg = SweepConfig.model_validate(data or {})
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "?"
        raise SpecError(f"{p}: {loc}: {err['msg']}", "see docs/sweeps.md for the format") from None
    base = p.resolve().parent
    if not Path(cfg.compile.out).is_absolute():
        cfg.compile.out = str(base / cfg.compile.out)
    if cfg.protocol.end_to_end and not Path(cfg.protocol.end_to_end).is_absolute():
        cfg.protocol.end_to_end = str(base / cfg.protocol.end_to_end)
    return cfg


def _slug(s: str | None) -> str:
    s = s or "none"
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", s)[:60] + "-" + hashlib.sha256(s.encode()).hexdigest()[:6]


@dataclass(frozen=True)
class CompileUnit:
    model: str
    pipeline: str
    backend: str
    precision: str | None

    def folder(self, out: str) -> Path:
        return Path(out) / f"{self.model}__{_slug(self.pipeline)}__{self.backend}__{self.precision or 'default'}.bundle"


@dataclass
class Job:
    unit: CompileUnit
    device_uri: str
    device_id: str
    threads: int | None
    protocol: Any  # harness.protocol.Protocol
    key: str = ""
    bundle: Path | None = None
    spec: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spec = {
            "model": self.unit.model, "passes": self.unit.pipeline, "backend": self.unit.backend,
            "precision": self.unit.precision, "device_id": self.device_id, "protocol_key": self.protocol.key(),
        }
        self.key = hashlib.sha256(json.dumps(self.spec, sort_keys=True).encode()).hexdigest()[:32]

    def label(self) -> str:
        return f"{self.unit.model} ({self.unit.pipeline or 'no passes'}) {self.unit.backend}/{self.unit.precision or 'default'} on {self.device_id} t={self.threads or 'auto'}"


def compile_unit(unit: CompileUnit, folder: str, samples: int, weights: str | None) -> tuple[str | None, str | None]:
    """Worker-process entry: compile one bundle (reused if a verified one is already there). (path, error)."""
    from edgeopt.bundle import load_bundle

    try:
        if Path(folder).is_dir():
            try:
                b = load_bundle(folder)
                if b.model == unit.model and b.backend == unit.backend:
                    return folder, None
            except EdgeoptError:
                pass  # incomplete or altered: compile again
        from edgeopt.api import compile as ecompile

        opts = {"precision": unit.precision} if unit.precision else None
        ecompile(unit.model, backend=unit.backend, passes=unit.pipeline or None, weights=weights, output=folder, options=opts, samples=samples, overwrite=True)
        return folder, None
    except EdgeoptError as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001 - a bug in one compile must not stop the sweep; its reason is stored
        return None, f"{type(e).__name__}: {e}"


def _background_priority() -> None:
    """Compile workers run at the lowest CPU priority so a `local` measurement taken meanwhile wins the CPU.

    The kernel's autogroup scheduling puts the sweep, its workers and its local runner in one group: at equal
    priority the runner shared that group's share with the compiles (local TVM p50s 3-5x those of the same
    bundles on the loopback ssh:// board, whose runner has a session of its own). Nice only ranks tasks
    within a group, which is exactly the contention here; a board elsewhere is not affected."""
    import os

    try:
        os.nice(19)
    except OSError:  # not permitted here: compile at normal priority
        pass


@dataclass
class SweepSummary:
    total: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    run_id: int | None = None


def run_sweep(
    cfg: SweepConfig,
    db: str | None = None,
    trust_new_host: bool = False,
    progress: bool = True,
    dry_run: bool = False,
    profiles: dict[str, dict[str, Any]] | None = None,
) -> SweepSummary:
    """Run (or resume) a sweep; returns counts. Results go to the store as they arrive."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from edgeopt.harness.devices import get_device
    from edgeopt.harness.devices.profiles import resolve_device
    from edgeopt.harness.protocol import Protocol
    from edgeopt.store import Store

    console = Console(stderr=True)
    store = Store(db or cfg.db)
    summary = SweepSummary()

    # Devices: connect and snapshot once; an unreachable one fails its jobs, the others go on.
    devices: dict[str, tuple[Any, dict[str, Any] | None, str | None]] = {}
    for spec in cfg.devices:
        uri, opts = resolve_device(spec, profiles)
        if trust_new_host:
            opts.setdefault("trust_new_host", True)
        try:
            dev = get_device(uri, **opts)
        except EdgeoptError as e:
            devices[uri] = (None, None, str(e))
            continue
        info, err = None, None
        if not dry_run:
            try:
                info = dev.info()
            except EdgeoptError as e:
                err = str(e)
        devices[dev.id] = (dev, info, err)

    protocols = {t: Protocol(threads=t, **cfg.protocol.model_dump()) for t in cfg.threads}
    units = [CompileUnit(m, p or "", b, pr) for m in cfg.models for p in cfg.pipelines for b in cfg.backends for pr in cfg.precisions]
    jobs = [Job(u, dev.uri if dev else did, did, t, protocols[t]) for u in units for did, (dev, _, _) in devices.items() for t in cfg.threads]
    summary.total = len(jobs)

    todo: list[Job] = []
    for j in jobs:
        row = store.job(j.key)
        if row and row["status"] == "ok" and row["bundle_sha256"] and store.has(row["bundle_sha256"], j.device_id, j.spec["protocol_key"]):
            summary.skipped += 1
        else:
            todo.append(j)
    if dry_run:
        for j in todo:
            console.print(f"todo: {j.label()}")
        console.print(f"{len(todo)} to run, {summary.skipped} already stored, {summary.total} in all")
        return summary
    from edgeopt.store import redact

    config = cfg.model_dump()
    config["db"] = redact(config["db"]) if config.get("db") else None  # the runs table keeps no password
    run_id = store.start_run(cfg.name, config)
    summary.run_id = run_id
    lock = threading.Lock()

    def fail(j: Job, stage: str, reason: str, bundle_sha: str | None = None) -> None:
        store.record_job(j.key, j.spec, "failed", run_id=run_id, stage=stage, error=reason[:2000], bundle_sha256=bundle_sha)
        with lock:
            summary.failed += 1
            summary.failures.append((j.label(), reason))

    # Jobs on devices that could not be reached fail at once.
    for j in [j for j in todo if devices[j.device_id][2]]:
        fail(j, "connect", devices[j.device_id][2] or "")
    todo = [j for j in todo if not devices[j.device_id][2]]
    by_unit: dict[CompileUnit, list[Job]] = {}
    for j in todo:
        by_unit.setdefault(j.unit, []).append(j)

    queues: dict[str, queue.Queue] = {}
    workers_keys = ["*"] if cfg.serial_devices else list({j.device_id for j in todo})
    for k in workers_keys:
        queues[k] = queue.Queue()
    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*cols, console=console, disable=not progress) as prog:
        t_compile = prog.add_task("compile", total=len(by_unit))
        t_measure = prog.add_task("measure", total=len(todo))

        def measure_worker(q: queue.Queue) -> None:
            from edgeopt.bundle import load_bundle
            from edgeopt.harness.protocol import measure

            down: dict[str, str] = {}  # device id -> why it is considered gone
            while True:
                j = q.get()
                if j is None:
                    return
                try:
                    dev, info, _ = devices[j.device_id]
                    if j.device_id in down:
                        fail(j, "measure", f"skipped: device stopped answering earlier in this run ({down[j.device_id]})")
                        continue
                    b = load_bundle(j.bundle)  # type: ignore[arg-type]
                    if store.has(b.sha256, j.device_id, j.spec["protocol_key"]):  # killed after storing, before the job row
                        store.record_job(j.key, j.spec, "ok", run_id=run_id, stage="measure", error=None, bundle_sha256=b.sha256)
                        with lock:
                            summary.skipped += 1
                        continue
                    try:
                        res = measure(dev, b.path, j.protocol, device_info=info)
                    except EdgeoptError as e:
                        reason = str(e)
                        fail(j, "measure", reason, b.sha256)
                        try:
                            store.add_measurement(b.manifest, {"protocol_key": j.spec["protocol_key"], "protocol": {"threads": j.threads}, "device": {"uri": j.device_id}}, status="failed", error=reason[:2000])
                        except EdgeoptError:
                            pass
                        if "unreachable" in reason or "ssh failed" in reason:
                            down[j.device_id] = reason
                        continue
                    try:
                        mid = store.add_measurement(b.manifest, res)
                    except EdgeoptError as e:
                        if "already stored" not in str(e):
                            raise
                        mid = None  # a concurrent or earlier run stored it: never twice
                    store.record_job(j.key, j.spec, "ok", run_id=run_id, stage="measure", error=None, bundle_sha256=b.sha256, measurement_id=mid)
                    with lock:
                        summary.ok += 1
                except Exception as e:  # noqa: BLE001 - record and go on; the sweep must finish
                    fail(j, "measure", f"{type(e).__name__}: {e}")
                finally:
                    prog.advance(t_measure)

        threads = [threading.Thread(target=measure_worker, args=(q,), daemon=True) for q in queues.values()]
        if not cfg.compile_first:
            for t in threads:
                t.start()
        ready: list[Job] = []
        interrupted = False
        try:
            workers = max(1, min(cfg.compile.workers, len(by_unit) or 1))
            import multiprocessing as mp

            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_background_priority) as pool:
                futs = {
                    pool.submit(compile_unit, u, str(u.folder(cfg.compile.out)), cfg.compile.samples, cfg.compile.weights.get(u.model)): u
                    for u in by_unit
                }
                for fut in as_completed(futs):
                    u = futs[fut]
                    try:
                        path, err = fut.result()
                    except Exception as e:  # noqa: BLE001 - a worker that died (OOM, segfault)
                        path, err = None, f"compile worker died: {type(e).__name__}: {e}"
                    prog.advance(t_compile)
                    for j in by_unit[u]:
                        if err or not path:
                            fail(j, "compile", err or "no bundle")
                            prog.advance(t_measure)
                            continue
                        j.bundle = Path(path)
                        if cfg.compile_first:
                            ready.append(j)
                        else:
                            queues["*" if cfg.serial_devices else j.device_id].put(j)
            for j in ready:
                queues["*" if cfg.serial_devices else j.device_id].put(j)
            if cfg.compile_first:
                for t in threads:
                    t.start()
            for q in queues.values():
                q.put(None)
            for t in threads:
                t.join()
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            store.finish_run(run_id, "interrupted" if interrupted else "done")
            for dev, _, _ in devices.values():
                if dev is not None:
                    dev.close()
    return summary
