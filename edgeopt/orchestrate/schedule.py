"""The sweep scheduler: compiles in worker processes, measures one job at a time per device.

Compile units run in a process pool (spawn, at the lowest CPU priority, so that a local measurement taken
meanwhile wins the CPU). Each compiled unit's jobs go to their device's queue; one thread per device (or
one for all with `serial_devices`, when the devices share CPUs) measures them through the job runner. A
device found unreachable has its remaining jobs in this run failed at once instead of each waiting for a
connection timeout.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeopt.bundle import load_bundle
from edgeopt.errors import EdgeoptError
from edgeopt.harness.devices import Device, get_device
from edgeopt.harness.devices.profiles import resolve_device
from edgeopt.orchestrate.jobs import CompileUnit, Job, JobOutcome, JobRunner, compile_worker

if TYPE_CHECKING:
    from edgeopt.orchestrate.sweep import CompileConfig, SweepSummary
    from edgeopt.orchestrate.ui import SweepProgress
    from edgeopt.store import Store


@dataclass
class DeviceSlot:
    """A sweep's device: connected and snapshotted once, or the reason it could not be."""

    device: Device | None
    info: dict[str, Any] | None
    error: str | None = None
    down: str | None = None  # why the device is taken as gone for the rest of this run


def connect(specs: list[str | dict[str, Any]], profiles: dict[str, dict[str, Any]] | None, trust_new_host: bool, snapshot: bool) -> dict[str, DeviceSlot]:
    """Device id -> slot. An unreachable device gets a slot with its error: its jobs fail, the others go on."""
    slots: dict[str, DeviceSlot] = {}
    for spec in specs:
        uri, opts = resolve_device(spec, profiles)
        if trust_new_host:
            opts.setdefault("trust_new_host", True)
        try:
            dev = get_device(uri, **opts)
        except EdgeoptError as e:
            slots[uri] = DeviceSlot(None, None, str(e))
            continue
        info, err = None, None
        if snapshot:
            try:
                info = dev.info()
            except EdgeoptError as e:
                err = str(e)
        slots[dev.id] = DeviceSlot(dev, info, err)
    return slots


def _background_priority() -> None:
    """Compile workers run at nice 19: the kernel's autogroup puts the sweep, its workers and a local runner in
    one scheduling group, where only nice ranks them, so a local measurement gets the CPU first."""
    import os

    try:
        os.nice(19)
    except OSError:  # not permitted here: compile at normal priority
        pass


class Scheduler:
    def __init__(self, store: Store, summary: SweepSummary, slots: dict[str, DeviceSlot], ui: SweepProgress,
                 serial_devices: bool = False, compile_first: bool = False) -> None:
        self.runner = JobRunner(store, summary.run_id)
        self.summary = summary
        self.slots = slots
        self.ui = ui
        self.serial = serial_devices
        self.compile_first = compile_first
        self.lock = threading.Lock()

    def count(self, job: Job, out: JobOutcome) -> None:
        with self.lock:
            if out.status == "ok":
                self.summary.ok += 1
            else:
                self.summary.failed += 1
                self.summary.failures.append((job.label(), out.reason or ""))

    def fail(self, job: Job, stage: str, reason: str) -> None:
        self.count(job, self.runner.fail(job, stage, reason))  # type: ignore[arg-type]

    def run(self, todo: list[Job], compile_cfg: CompileConfig) -> None:
        interrupted = False
        try:
            for j in [j for j in todo if self.slots[j.device_id].error]:
                self.fail(j, "connect", self.slots[j.device_id].error or "")
            todo = [j for j in todo if not self.slots[j.device_id].error]
            by_unit: dict[CompileUnit, list[Job]] = {}
            for j in todo:
                by_unit.setdefault(j.unit, []).append(j)
            self.ui.start(len(by_unit), len(todo))
            self._run(by_unit, compile_cfg)
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            self.runner.store.finish_run(self.summary.run_id, "interrupted" if interrupted else "done")  # type: ignore[arg-type]
            for slot in self.slots.values():
                if slot.device is not None:
                    slot.device.close()

    def _queue_key(self, job: Job) -> str:
        return "*" if self.serial else job.device_id

    def _run(self, by_unit: dict[CompileUnit, list[Job]], cc: CompileConfig) -> None:
        keys = {self._queue_key(j) for js in by_unit.values() for j in js}
        queues: dict[str, queue.Queue] = {k: queue.Queue() for k in keys}
        threads = [threading.Thread(target=self._measure_loop, args=(q,), daemon=True) for q in queues.values()]
        if not self.compile_first:
            for t in threads:
                t.start()
        ready: list[Job] = []
        workers = max(1, min(cc.workers, len(by_unit) or 1))
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_background_priority) as pool:
            futs = {pool.submit(compile_worker, u, str(u.folder(cc.out)), cc.samples, cc.weights.get(u.model)): u for u in by_unit}
            for fut in as_completed(futs):
                u = futs[fut]
                try:
                    path, err = fut.result()
                except Exception as e:  # noqa: BLE001 - a worker that died (OOM, segfault)
                    path, err = None, f"compile worker died: {type(e).__name__}: {e}"
                self.ui.compiled()
                for j in by_unit[u]:
                    if err or not path:
                        self.fail(j, "compile", err or "no bundle")
                        self.ui.measured()
                        continue
                    j_ready = (j, Path(path))
                    if self.compile_first:
                        ready.append(j_ready)  # type: ignore[arg-type]
                    else:
                        queues[self._queue_key(j)].put(j_ready)
        for j_ready in ready:
            queues[self._queue_key(j_ready[0])].put(j_ready)  # type: ignore[index]
        if self.compile_first:
            for t in threads:
                t.start()
        for q in queues.values():
            q.put(None)
        for t in threads:
            t.join()

    def _measure_loop(self, q: queue.Queue) -> None:
        while True:
            item = q.get()
            if item is None:
                return
            job, path = item
            try:
                self._measure(job, path)
            except Exception as e:  # noqa: BLE001 - record and go on; the sweep must finish
                self.fail(job, "measure", f"{type(e).__name__}: {e}")
            finally:
                self.ui.measured()

    def _measure(self, job: Job, path: Path) -> None:
        slot = self.slots[job.device_id]
        if slot.down:
            self.fail(job, "measure", f"skipped: device stopped answering earlier in this run ({slot.down})")
            return
        b = load_bundle(path)
        if self.runner.stored(job, b):
            with self.lock:
                self.summary.skipped += 1
            return
        out = self.runner.measure(job, slot.device, b, slot.info)  # type: ignore[arg-type]
        if out.unreachable:
            slot.down = out.reason
        self.count(job, out)
