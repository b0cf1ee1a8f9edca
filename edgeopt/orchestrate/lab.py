"""Sweeps on Ray: a device lab. `edgeopt bench SWEEP.yaml --cluster local|auto|ray://HOST:PORT|HOST:PORT`.

The same policy as a single-host sweep (sweep.py: targets, snapshots, what to build, job keys, resume), on a
Ray cluster:

* **Boards are Ray resources.** Board NAME is the custom resource `board:NAME` (capacity 1), declared by the
  node that reaches it (`ray start --resources '{"board:rpi4-a": 1}'` on a worker beside the board, or all of
  them on one host that reaches every board over SSH; `--cluster local` declares them itself). Every task that
  touches a board (its snapshot, each measurement) asks for its resource, so a board measures one job at a
  time even when two sweeps share the cluster.
* **Compiles are Ray tasks** (one CPU each) on any node; the bundle travels back through the object store, so
  a measuring node uses its own copy when it has the folder and unpacks the shipped one otherwise.
* **The driver dispatches**: each target (one board, or a pool of one kind) has a queue of compiled jobs; a
  free board of the target takes the next one. A board that stops answering (`DeviceUnreachable`, or its Ray
  node dying) is taken out; its job goes to another board of its kind (at most `SweepConfig.retries` times),
  else it is recorded failed with the reason (`Store.add_failure`). Results are stored by the driver only, with
  the sweep's idempotent keys: a killed sweep resumes, nothing is counted twice.

Ray is imported here only; nothing below the orchestration layer imports it, and a sweep without `--cluster`
never loads this module.
"""

from __future__ import annotations

import dataclasses
import io
import re
import socket
import tarfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeopt.bundle import Bundle, Manifest, load_bundle
from edgeopt.errors import DeviceError, DeviceUnreachable, EdgeoptError
from edgeopt.harness.devices.profiles import BoardSpec
from edgeopt.measurement import Measurement
from edgeopt.orchestrate.jobs import CompileUnit, Job, JobOutcome, JobRunner, by_unit, compile_worker
from edgeopt.orchestrate.schedule import bound_to

if TYPE_CHECKING:
    from edgeopt.orchestrate.sweep import SweepConfig, SweepSummary, SweepTarget
    from edgeopt.orchestrate.ui import SweepProgress
    from edgeopt.store import Store

# Seconds to wait for a board's snapshot task (its node may first have to start a worker).
PROBE_TIMEOUT_S = 180.0
# Seconds a Ray address gets to answer a TCP connect before the sweep stops with an error.
CONNECT_TIMEOUT_S = 5.0
BUNDLE_CACHE = Path.home() / ".cache" / "edgeopt" / "lab-bundles"


def board_resource(board: BoardSpec | str) -> str:
    """The Ray custom resource that stands for a board: `board:NAME` (its devices.yaml name, else its URI with
    characters Ray names do not like replaced by `_`)."""
    label = board if isinstance(board, str) else board.label
    return "board:" + re.sub(r"[^A-Za-z0-9_.@:-]", "_", label)


def board_resources(targets: list[SweepTarget]) -> dict[str, float]:
    """Every board resource a sweep's targets need, capacity 1 each (what `--cluster local` declares)."""
    return {board_resource(b): 1.0 for t in targets for b in t.boards}


# -- what travels between the driver and the tasks ---------------------------------------------------------
@dataclass(frozen=True)
class CompiledBundle:
    """A compile task's outcome: where the bundle lies on the node that built it, its manifest; or why not."""

    path: str | None
    manifest: Manifest | None
    error: str | None = None

    def bundle(self) -> Bundle:
        """The bundle as the driver knows it (path on the building node, manifest), for the store."""
        return Bundle(Path(self.path or ""), self.manifest)  # type: ignore[arg-type]


@dataclass(frozen=True)
class BoardProbe:
    """A board's snapshot taken on the node that holds its resource, or why it could not be taken."""

    info: dict[str, Any] | None
    error: str | None = None
    unreachable: bool = False


@dataclass(frozen=True)
class BoardOutcome:
    """A measure task's outcome: the measurement, or the error and whether the board is gone."""

    measurement: Measurement | None
    error: str | None = None
    unreachable: bool = False


def _tar_bundle(path: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(path, arcname=".")
    return buf.getvalue()


def _compile_task(unit: CompileUnit, folder: str, samples: int, weights: str | None) -> tuple[CompiledBundle, bytes]:
    """Ray task: compile one unit (or reuse its verified bundle); the outcome and the bundle as a tar."""
    path, err = compile_worker(unit, folder, samples, weights)
    if err or not path:
        return CompiledBundle(None, None, err or "no bundle"), b""
    b = load_bundle(path)
    return CompiledBundle(path, b.manifest), _tar_bundle(path)


def _probe_task(board: BoardSpec) -> BoardProbe:
    """Ray task on the board's node: its snapshot."""
    from edgeopt.harness.devices.profiles import open_device

    try:
        dev = open_device(board)
    except EdgeoptError as e:
        return BoardProbe(None, str(e))
    try:
        return BoardProbe(dev.info())
    except EdgeoptError as e:
        return BoardProbe(None, str(e), isinstance(e, DeviceUnreachable))
    finally:
        dev.close()


def _local_bundle(compiled: CompiledBundle, tar_ref: list[Any]) -> Bundle:
    """The bundle on this node: the compile folder where this node has it, else the shipped tar unpacked once
    into the lab cache (keyed by sha256, verified like any bundle)."""
    import ray

    sha = compiled.manifest.bundle_sha256 if compiled.manifest else ""
    if compiled.path and Path(compiled.path).is_dir():
        try:
            b = load_bundle(compiled.path)
            if b.sha256 == sha:
                return b
        except EdgeoptError:
            pass
    dest = BUNDLE_CACHE / sha
    if not dest.is_dir():
        from edgeopt._util import atomic_dir

        with atomic_dir(dest, overwrite=True) as tmp, tarfile.open(fileobj=io.BytesIO(ray.get(tar_ref[0])), mode="r") as tar:
            tar.extractall(tmp, filter="data")
    return load_bundle(dest)


def _measure_task(board: BoardSpec, job: Job, compiled: CompiledBundle, tar_ref: list[Any], info: dict[str, Any] | None) -> BoardOutcome:
    """Ray task holding the board's resource: measure one job there with the protocol; never raises."""
    from edgeopt.harness.devices.profiles import open_device
    from edgeopt.harness.protocol import measure

    try:
        bundle = _local_bundle(compiled, tar_ref)
        dev = open_device(board)
    except EdgeoptError as e:
        return BoardOutcome(None, str(e), isinstance(e, DeviceUnreachable))
    try:
        return BoardOutcome(measure(dev, bundle, job.protocol, device_info=info))
    except EdgeoptError as e:
        return BoardOutcome(None, str(e), isinstance(e, DeviceUnreachable))
    except Exception as e:  # noqa: BLE001 - a bug in one measurement fails that job, not the sweep
        return BoardOutcome(None, f"{type(e).__name__}: {e}")
    finally:
        dev.close()


# -- the cluster ---------------------------------------------------------------------------------------------
def _check_address(address: str) -> None:
    """A ray://HOST:PORT or HOST:PORT address must accept a TCP connection, else a one-line error (before any
    compile; Ray's own client would retry for a long while)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise EdgeoptError(f"bad Ray address {address!r}", "write --cluster local, auto, ray://HOST:PORT or HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise EdgeoptError(f"Ray cluster at {address} does not answer: {e.strerror or e}",
                           "start the head there (ray start --head) or check the address and port") from None


def connect_cluster(cluster: str, targets: list[SweepTarget]) -> bool:
    """Join (or start, for `local`) the Ray cluster; True when this call started Ray (and must shut it down).

    A process that already called `ray.init` keeps its cluster (a notebook, a test). Every board of the sweep
    must be a resource of the cluster; a missing one is an error naming the `ray start` that declares it."""
    import ray

    if cluster not in ("local", "auto"):
        _check_address(cluster)  # even where Ray is up in this process: the address given must answer
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if cluster == "local":
            ray.init(resources=board_resources(targets), **kw)
        elif cluster == "auto":
            try:
                ray.init(address="auto", **kw)
            except (ConnectionError, RuntimeError) as e:
                raise EdgeoptError(f"no running Ray cluster found (--cluster auto): {str(e).splitlines()[0]}",
                                   "start one with `ray start --head`, or use --cluster local") from None
        else:
            try:
                ray.init(address=cluster, **{k: v for k, v in kw.items() if k != "include_dashboard"})
            except (ConnectionError, RuntimeError) as e:
                raise EdgeoptError(f"cannot join the Ray cluster at {cluster}: {str(e).splitlines()[0]}", "check the address and that the Ray versions match") from None
        started = True
    have = ray.cluster_resources()
    missing = [r for r in board_resources(targets) if have.get(r, 0) < 1]
    if missing:
        if started:
            ray.shutdown()
        example = ", ".join(f'"{r}": 1' for r in missing[:3])
        raise EdgeoptError(f"no Ray node declares the board resource(s) {', '.join(missing)}",
                           f"on the node that reaches each board: ray start --address HEAD:6379 --resources '{{{example}}}'")
    return started


# -- the driver ------------------------------------------------------------------------------------------------
@dataclass
class _Ready:
    """A compiled job waiting for a board of its target."""

    job: Job
    compiled: CompiledBundle
    tar_ref: list[Any]


class LabScheduler:
    """The driver of a lab sweep: compile tasks anywhere, measure tasks on board resources, records in the store."""

    def __init__(self, store: Store, summary: SweepSummary, targets: list[SweepTarget], infos: dict[str, BoardProbe],
                 ui: SweepProgress, retries: int) -> None:
        self.runner = JobRunner(store, summary.run_id)
        self.summary = summary
        self.targets = {t.id: t for t in targets}
        self.boards: dict[str, BoardSpec] = {bid: b for t in targets for b, bid in zip(t.boards, t.board_ids, strict=True)}
        self.infos = infos
        self.ui = ui
        self.retries = retries
        self.down: dict[str, str] = {bid: p.error or "unreachable" for bid, p in infos.items() if p.info is None}
        self.busy: set[str] = set()
        self.tries: dict[str, int] = {}
        self.queues: dict[str, deque[_Ready]] = {tid: deque() for tid in self.targets}

    def count(self, job: Job, out: JobOutcome) -> None:
        if out.status == "ok":
            self.summary.ok += 1
        else:
            self.summary.failed += 1
            self.summary.failures.append((job.label(), out.reason or ""))

    def up(self, target: SweepTarget) -> list[str]:
        return [b for b in target.board_ids if b not in self.down]

    def run(self, todo: list[Job], cc: Any, not_built: list[tuple[Job, str]]) -> None:
        import ray

        interrupted = False
        try:
            for j, why in not_built:
                self.count(j, self.runner.fail(j, "compile", f"not built for this board: {why}"))
            dead = {t.id for t in self.targets.values() if not self.up(t)}
            for j in [j for j in todo if j.device_id in dead]:
                t = self.targets[j.device_id]
                self.count(j, self.runner.fail(j, "connect", next(self.down[b] for b in t.board_ids)))
            todo = [j for j in todo if j.device_id not in dead]
            units = by_unit(todo)
            self.ui.start(len(units), len(todo), [b for t in self.targets.values() for b in self.up(t)])
            self._loop(ray, units, cc)
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            self.runner.store.finish_run(self.summary.run_id, "interrupted" if interrupted else "done")  # type: ignore[arg-type]

    def _loop(self, ray: Any, by_unit: dict[CompileUnit, list[Job]], cc: Any) -> None:
        compile_fn = ray.remote(num_cpus=1, num_returns=2, max_retries=1)(_compile_task)
        measure_fn = ray.remote(num_cpus=0, max_retries=0)(_measure_task)
        compiling: dict[Any, tuple[CompileUnit, Any]] = {}
        for u in by_unit:
            meta, tar = compile_fn.remote(u, str(u.folder(cc.out)), cc.samples, cc.weights.get(u.model))
            compiling[meta] = (u, tar)
        inflight: dict[Any, tuple[_Ready, str]] = {}
        while compiling or inflight or any(self.queues.values()):
            self._dispatch(measure_fn, inflight)
            refs = [*compiling, *inflight]
            if not refs:  # jobs queued for targets whose boards are all gone
                break
            done, _ = ray.wait(refs, num_returns=1, timeout=1.0)
            for ref in done:
                if ref in compiling:
                    unit, tar = compiling.pop(ref)
                    self._compiled(ray, ref, unit, tar, by_unit[unit])
                else:
                    ready, board = inflight.pop(ref)
                    self.busy.discard(board)
                    self._measured(ray, ref, ready, board)
        for tid, q in self.queues.items():
            while q:
                r = q.popleft()
                self.count(r.job, self.runner.fail(r.job, "measure", self._gone(self.targets[tid])))
                self.ui.measured()

    def _gone(self, target: SweepTarget) -> str:
        why = next((self.down[b] for b in target.board_ids if b in self.down), "no board")
        what = f"every board of kind {target.kind}" if target.kind else "the board"
        return f"skipped: {what} stopped answering or could not be reached ({why})"

    def _compiled(self, ray: Any, ref: Any, unit: CompileUnit, tar: Any, jobs: list[Job]) -> None:
        try:
            compiled: CompiledBundle = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - a compile worker that died (OOM, segfault, node lost)
            compiled = CompiledBundle(None, None, f"compile task died: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        self.ui.compiled()
        for j in jobs:
            if compiled.error or compiled.manifest is None:
                self.count(j, self.runner.fail(j, "compile", compiled.error or "no bundle"))
                self.ui.measured()
                continue
            target = self.targets[j.device_id]
            bundle = compiled.bundle()
            if any(self.runner.stored(bound_to(j, b), bundle) for b in target.board_ids):
                self.summary.skipped += 1  # stored by a run killed before it recorded the job
                self.ui.measured()
                continue
            self.queues[j.device_id].append(_Ready(j, compiled, [tar]))

    def _dispatch(self, measure_fn: Any, inflight: dict[Any, tuple[_Ready, str]]) -> None:
        """Give every free board of each target the next job of its queue."""
        for tid, q in self.queues.items():
            for board in self.up(self.targets[tid]):
                if not q:
                    break
                if board in self.busy:
                    continue
                r = q.popleft()
                spec = self.boards[board]
                ref = measure_fn.options(resources={board_resource(spec): 1}).remote(spec, r.job, r.compiled, r.tar_ref, self.infos[board].info)
                inflight[ref] = (r, board)
                self.busy.add(board)
                self.ui.measuring(board, _short(r.job))

    def _measured(self, ray: Any, ref: Any, r: _Ready, board: str) -> None:
        try:
            out: BoardOutcome = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - the task's worker or node died: the board is gone from here
            out = BoardOutcome(None, f"{board}: its Ray node or worker died ({type(e).__name__})", unreachable=True)
        job, bundle = bound_to(r.job, board), r.compiled.bundle()
        if out.measurement is not None:
            self.count(job, self.runner.record_measurement(job, bundle, out.measurement))
            self.ui.measured(board)
            return
        if out.unreachable:
            self.down[board] = out.error or "unreachable"
            self.ui.board_down(board, out.error)
            target = self.targets[r.job.device_id]
            n = self.tries.get(r.job.key, 0)
            if target.kind and n < self.retries and self.up(target):
                self.tries[r.job.key] = n + 1
                self.summary.retried += 1
                self.queues[target.id].appendleft(r)
                return
        err = (DeviceUnreachable if out.unreachable else DeviceError)(out.error or "measurement failed")
        self.count(job, self.runner.record_failure(job, bundle, err))
        self.ui.measured(board)


def _short(job: Job) -> str:
    u = job.unit
    return f"{u.model} {u.passes or '-'} {u.backend}/{u.precision or 'default'} t={job.protocol.threads or 'auto'}"


def probe_boards(targets: list[SweepTarget], timeout: float = PROBE_TIMEOUT_S) -> dict[str, BoardProbe]:
    """Board device id -> its snapshot, each taken by a task holding the board's resource (on its node)."""
    import ray

    probe_fn = ray.remote(num_cpus=0, max_retries=0)(_probe_task)
    refs = {}
    for t in targets:
        for b, bid in zip(t.boards, t.board_ids, strict=True):
            if bid not in refs:
                refs[bid] = probe_fn.options(resources={board_resource(b): 1}).remote(b)
    out: dict[str, BoardProbe] = {}
    deadline = time.monotonic() + timeout
    for bid, ref in refs.items():
        try:
            out[bid] = ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
        except Exception as e:  # noqa: BLE001 - a probe that timed out or whose node died
            out[bid] = BoardProbe(None, f"{bid}: no snapshot ({type(e).__name__})", unreachable=True)
    return out


def run_lab(cfg: SweepConfig, cluster: str, db: str | None = None, trust_new_host: bool = False, progress: bool = True,
            dry_run: bool = False, profiles: dict[str, dict[str, Any]] | None = None) -> SweepSummary:
    """Run (or resume) a sweep on a Ray cluster (see the module doc); returns the same counts as run_sweep.

    Errors before any compile: an unknown board or kind, a Ray address that does not answer, a board no node
    declares, a board no requested backend can build for."""
    from edgeopt.orchestrate.sweep import plan_jobs, resolve_targets, start_sweep
    from edgeopt.orchestrate.ui import SweepProgress
    from edgeopt.store import Store

    store = Store(db or cfg.db)
    targets = resolve_targets(cfg, profiles)
    if trust_new_host:
        targets = [dataclasses.replace(t, boards=[b.with_options(trust_new_host=True) for b in t.boards]) for t in targets]
    started = connect_cluster(cluster, targets)
    import ray

    try:
        probes = probe_boards(targets)
        infos = {t.id: next((probes[b].info for b in t.board_ids if probes[b].info), None) for t in targets}
        plan = plan_jobs(cfg, targets, infos)
        summary, todo = start_sweep(cfg, store, plan, dry_run)
        if dry_run:
            return summary
        with SweepProgress(enabled=progress) as ui:
            LabScheduler(store, summary, targets, probes, ui, cfg.retries).run(todo, cfg.compile, plan.not_built)
        return summary
    finally:
        if started:
            ray.shutdown()
