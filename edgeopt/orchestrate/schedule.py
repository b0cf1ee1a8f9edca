"""The single-host sweep scheduler: compiles in worker processes, measures one job at a time per board.

Compile units run in a process pool (spawn, at the lowest CPU priority, so that a local measurement taken
meanwhile wins the CPU). Each compiled unit's jobs go to their target's queue: one board, or a pool of boards
of one kind (any of them may measure a job). One thread per board takes jobs from its target's queue and
measures them through the job runner (`serial_devices`: one measurement at a time over all boards, when they
share CPUs). A board found unreachable stops taking jobs: a pool's job goes back to the front of the queue for
another board of the kind (at most `retries` times), else it fails with the reason; the jobs left for a
target whose boards are all gone fail at once instead of each waiting for a connection timeout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import threading
from collections import deque
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeopt.bundle import Bundle, load_bundle
from edgeopt.errors import DeviceUnreachable, EdgeoptError
from edgeopt.harness.devices import Device
from edgeopt.harness.devices.profiles import BoardSpec, open_device
from edgeopt.harness.protocol import measure
from edgeopt.orchestrate.jobs import CompileUnit, Job, JobOutcome, JobRunner, by_unit, compile_worker

if TYPE_CHECKING:
    from edgeopt.orchestrate.sweep import CompileConfig, SweepSummary, SweepTarget
    from edgeopt.orchestrate.ui import SweepProgress
    from edgeopt.store import Store


@dataclass
class DeviceSlot:
    """A sweep's board: connected and snapshotted once, or the reason it could not be."""

    device: Device | None
    info: dict[str, Any] | None
    error: str | None = None
    down: str | None = None  # why the board is taken as gone for the rest of this run
    board: BoardSpec | None = None

    @property
    def up(self) -> bool:
        return self.device is not None and self.error is None and self.down is None

    def close(self) -> None:
        if self.device is not None:
            self.device.close()


def connect(targets: list[SweepTarget], trust_new_host: bool) -> dict[str, DeviceSlot]:
    """Board device id -> slot, snapshotted. An unreachable board gets a slot with its error: its jobs fail
    (or go to the other boards of its kind), the others go on."""
    slots: dict[str, DeviceSlot] = {}
    for t in targets:
        for board, bid in zip(t.boards, t.board_ids, strict=True):
            if bid in slots:
                continue
            try:
                dev = open_device(board, trust_new_host=True if trust_new_host else None)
            except EdgeoptError as e:
                slots[bid] = DeviceSlot(None, None, str(e), board=board)
                continue
            info, err = None, None
            try:
                info = dev.info()
            except EdgeoptError as e:
                err = str(e)
            slots[bid] = DeviceSlot(dev, info, err, board=board)
    return slots


def _background_priority() -> None:
    """Compile workers run at nice 19: the kernel's autogroup puts the sweep, its workers and a local runner in
    one scheduling group, where only nice ranks them, so a local measurement gets the CPU first."""
    import os

    try:
        os.nice(19)
    except OSError:  # not permitted here: compile at normal priority
        pass


Ready = tuple[Job, Path]


class JobQueue:
    """A target's compiled jobs waiting for a board: FIFO, a retried job goes to the front. `get` returns None
    once the queue is closed, empty and no job taken from it is still being measured (that one may come back)."""

    def __init__(self) -> None:
        self._items: deque[Ready] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._taken = 0

    def put(self, item: Ready, front: bool = False) -> None:
        with self._cv:
            (self._items.appendleft if front else self._items.append)(item)
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def get(self) -> Ready | None:
        with self._cv:
            while not self._items and not (self._closed and self._taken == 0):
                self._cv.wait()
            if not self._items:
                return None
            self._taken += 1
            return self._items.popleft()

    def task_done(self) -> None:
        """The job from the last `get` is finished (or was put back)."""
        with self._cv:
            self._taken -= 1
            self._cv.notify_all()

    def drain(self) -> list[Ready]:
        with self._cv:
            items, self._items = list(self._items), deque()
            return items


def bound_to(job: Job, board_id: str) -> Job:
    """The job as measured on one board: a pool job keeps its key and names the board that measured it."""
    return job if job.device_id == board_id else dataclasses.replace(job, device_id=board_id)


class Scheduler:
    def __init__(self, store: Store, summary: SweepSummary, slots: dict[str, DeviceSlot], targets: list[SweepTarget],
                 ui: SweepProgress, serial_devices: bool = False, compile_first: bool = False, retries: int = 2) -> None:
        self.runner = JobRunner(store, summary.run_id)
        self.summary = summary
        self.slots = slots
        self.targets = {t.id: t for t in targets}
        self.ui = ui
        self.compile_first = compile_first
        self.retries = retries
        self.lock = threading.Lock()
        self.serial_lock = threading.Lock() if serial_devices else None
        # a board named twice (alone and in its kind) has two threads: its lock keeps it to one measurement at a time
        self.board_locks = {b: threading.Lock() for b in slots}
        self.tries: dict[str, int] = {}

    def count(self, job: Job, out: JobOutcome) -> None:
        with self.lock:
            if out.status == "ok":
                self.summary.ok += 1
            else:
                self.summary.failed += 1
                self.summary.failures.append((job.label(), out.reason or ""))

    def fail(self, job: Job, stage: str, reason: str) -> None:
        self.count(job, self.runner.fail(job, stage, reason))  # type: ignore[arg-type]

    def _gone(self, target: SweepTarget) -> str:
        """Why no board of a target can take jobs (the first board's reason)."""
        why = next((s.down or s.error for b in target.board_ids if (s := self.slots[b]).down or s.error), "no board")
        if target.kind:
            return f"skipped: every board of kind {target.kind} stopped answering or could not be reached ({why})"
        return f"skipped: device stopped answering earlier in this run ({why})"

    def run(self, todo: list[Job], compile_cfg: CompileConfig, not_built: list[tuple[Job, str]] | None = None) -> None:
        interrupted = False
        try:
            for j, why in not_built or []:
                self.fail(j, "compile", f"not built for this board: {why}")
            dead = {t.id for t in self.targets.values() if not any(self.slots[b].up for b in t.board_ids)}
            for j in [j for j in todo if j.device_id in dead]:
                t = self.targets[j.device_id]
                self.fail(j, "connect", next((self.slots[b].error for b in t.board_ids if self.slots[b].error), "unreachable") or "")
            todo = [j for j in todo if j.device_id not in dead]
            units = by_unit(todo)
            boards = [b for t in self.targets.values() if t.id not in dead for b in t.board_ids if self.slots[b].up]
            self.ui.start(len(units), len(todo), boards)
            self._run(units, compile_cfg, boards)
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            self.runner.store.finish_run(self.summary.run_id, "interrupted" if interrupted else "done")  # type: ignore[arg-type]
            for slot in self.slots.values():
                slot.close()

    def _run(self, by_unit: dict[CompileUnit, list[Job]], cc: CompileConfig, boards: list[str]) -> None:
        queues = {t: JobQueue() for t in {j.device_id for js in by_unit.values() for j in js}}
        threads = [threading.Thread(target=self._board_loop, args=(t, b, queues[t.id]), daemon=True)
                   for t in self.targets.values() if t.id in queues for b in t.board_ids if b in boards]
        if not self.compile_first:
            for th in threads:
                th.start()
        ready: list[Ready] = []
        workers = max(1, min(cc.workers, len(by_unit) or 1))
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_background_priority) as pool:
            futs = {pool.submit(compile_worker, u, str(u.folder(cc.out)), cc.samples, cc.weights.get(u.model), cc.data): u for u in by_unit}
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
                    elif self.compile_first:
                        ready.append((j, Path(path)))
                    else:
                        queues[j.device_id].put((j, Path(path)))
        for j, path in ready:
            queues[j.device_id].put((j, path))
        for q in queues.values():
            q.close()
        if self.compile_first:
            for th in threads:
                th.start()
        for th in threads:
            th.join()
        for tid, q in queues.items():  # the jobs of targets whose boards all went away
            for j, _ in q.drain():
                self.fail(j, "measure", self._gone(self.targets[tid]))
                self.ui.measured()

    def _board_loop(self, target: SweepTarget, board_id: str, q: JobQueue) -> None:
        """One board's thread: measure its target's jobs until the queue is done or the board stops answering."""
        slot = self.slots[board_id]
        while slot.down is None:
            item = q.get()
            if item is None:
                return
            job, path = item
            try:
                done = self._measure(job, path, target, board_id, q)
            except Exception as e:  # noqa: BLE001 - record and go on; the sweep must finish
                self.fail(bound_to(job, board_id), "measure", f"{type(e).__name__}: {e}")
                done = True
            finally:
                q.task_done()
            if done:
                self.ui.measured(board_id)
        self.ui.board_down(board_id, slot.down)

    def stored(self, job: Job, bundle: Bundle, target: SweepTarget) -> bool:
        """Whether any board of the target already holds this job's measurement (then the job row is completed)."""
        return any(self.runner.stored(bound_to(job, b), bundle) for b in target.board_ids)

    def _measure(self, job: Job, path: Path, target: SweepTarget, board_id: str, q: JobQueue) -> bool:
        """Measure one job on one board and record it; False when the job went back to the queue for another board."""
        slot = self.slots[board_id]
        b = load_bundle(path)
        if self.stored(job, b, target):
            with self.lock:
                self.summary.skipped += 1
            return True
        on_board = bound_to(job, board_id)
        self.ui.measuring(board_id, job.label())
        try:
            with self.serial_lock or contextlib.nullcontext(), self.board_locks[board_id]:
                if slot.down:  # the board died while this thread waited for it
                    raise DeviceUnreachable(slot.down)
                res = measure(slot.device, b, job.protocol, device_info=slot.info)  # type: ignore[arg-type]
        except EdgeoptError as e:
            if isinstance(e, DeviceUnreachable):
                slot.down = str(e)
                if self._retry(job, target, board_id):
                    q.put((job, path), front=True)
                    return False
            self.count(on_board, self.runner.record_failure(on_board, b, e))
            return True
        self.count(on_board, self.runner.record_measurement(on_board, b, res))
        return True

    def _retry(self, job: Job, target: SweepTarget, board_id: str) -> bool:
        """Whether a job whose board stopped answering goes to another board of its kind (bounded)."""
        with self.lock:
            n = self.tries.get(job.key, 0)
            others = any(self.slots[b].up for b in target.board_ids if b != board_id)
            if target.kind is None or n >= self.retries or not others:
                return False
            self.tries[job.key] = n + 1
            self.summary.retried += 1
            return True
