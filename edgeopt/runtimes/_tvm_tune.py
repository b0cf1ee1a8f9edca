"""MetaSchedule tuning for the TVM backend: budgets, a persistent database, and a clean stop.

Why a module of its own: tuning is the slow, stateful part of TVM. It must
- find tasks at all: `extract_tasks` sees nothing until the graph is legalized and fused, so the module
  goes through `DecomposeOpsForInference` and the `zero` pipeline first (`prepare()`, shared with the
  untuned build so that both compile the very same fused functions);
- respect two budgets, trials and minutes. MetaSchedule only knows trials, so a measure callback
  terminates every task once the clock runs out (the batch in flight finishes and is recorded);
- keep what it measured: records go to a JSON database that is appended to after every measured batch,
  one folder per model x target, reused (and extended) by the next run. A run that is interrupted
  (Ctrl-C, a killed process) keeps every committed record; a half-written last line is dropped on open.
- give the builder time: its worker processes import TVM's tensor intrinsics first (tens of seconds),
  which can exceed MetaSchedule's default 30 s build timeout under load.
Host-side only (imports tvm, never torch).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeopt.errors import EdgeoptError

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
# Seconds per build/run. The first build in each worker includes importing TVM's tensor intrinsics:
# ~24 s on an idle 2-core machine, over 2 minutes when it is shared; a build that times out kills its
# worker, whose replacement imports again, so this must exceed the import even under load.
BUILDER_TIMEOUT_S = float(os.environ.get("EDGEOPT_TVM_BUILDER_TIMEOUT", 600))
RUNNER_TIMEOUT_S = 120.0


def cache_root() -> Path:
    """Where tuning databases live: $EDGEOPT_CACHE_DIR/tvm, else ~/.cache/edgeopt/tvm."""
    base = os.environ.get("EDGEOPT_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "edgeopt")
    return Path(base) / "tvm"


def default_db_dir(model: str, target_name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{model}-{target_name}")
    return cache_root() / safe


def prepare(mod, target):
    """Decompose inference-only ops, legalize to TIR and fuse: the form both tuning and building use."""
    import tvm
    from tvm import relax

    with target:
        return tvm.transform.Sequential(
            [
                relax.transform.DecomposeOpsForInference(),
                relax.transform.CanonicalizeBindings(),
                relax.get_pipeline("zero"),
            ]
        )(mod)


def _repair_jsonl(path: Path) -> int:
    """Drop a truncated last line (a run killed mid-write) so the database opens; returns lines dropped."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    good = []
    dropped = 0
    for ln in lines:
        if not ln.strip():
            continue
        try:
            json.loads(ln)
            good.append(ln)
        except json.JSONDecodeError:
            dropped += 1
    if dropped:
        tmp = path.with_suffix(".repair")
        tmp.write_text("".join(g + "\n" for g in good))
        os.replace(tmp, path)
    return dropped


def open_database(db_dir: Path):
    """Open (creating if needed) the JSON tuning database in db_dir."""
    from tvm.s_tir import meta_schedule as ms

    db_dir.mkdir(parents=True, exist_ok=True)
    dropped = sum(_repair_jsonl(db_dir / f) for f in (WORKLOAD_FILE, RECORD_FILE))
    if dropped:
        logging.getLogger("edgeopt.tvm").warning("tuning database %s: dropped %d truncated line(s)", db_dir, dropped)
    return ms.database.JSONDatabase(
        path_workload=str(db_dir / WORKLOAD_FILE), path_tuning_record=str(db_dir / RECORD_FILE), allow_missing=True
    )


def count_records(db_dir: Path) -> int:
    p = db_dir / RECORD_FILE
    if not p.is_file():
        return 0
    return sum(1 for ln in p.read_text().splitlines() if ln.strip())


@dataclass
class TuneReport:
    db_dir: str
    tasks: int
    trials_budget: int
    minutes_budget: float | None
    records_before: int
    records_after: int
    trials_measured: int
    seconds: float  # total, set-up included
    setup_seconds: float
    stopped_by: str  # "trials" | "minutes" | "interrupted"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _time_limit_callback(deadline: float, state: dict[str, Any]):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class StopAtDeadline(PyMeasureCallback):
        """After each measured batch: past the deadline, terminate every task still running."""

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
            state["measured"] += len(runner_results)
            if time.monotonic() < deadline:
                return
            state["stopped_by"] = "minutes"
            for i, rec in enumerate(task_scheduler.tasks_):
                if not rec.is_terminated:
                    task_scheduler.terminate_task(i)

    return StopAtDeadline()


class _BudgetSpent(Exception):
    """Raised from the builder to end tune_tasks when the time budget is spent."""


def _in_process_builder(deadline: float, state: dict[str, Any]):
    """Build candidates in this process, and end tuning at the deadline.

    MetaSchedule's LocalBuilder starts a fresh pool of worker processes for every batch (a memory-leak
    work-around), and each worker imports TVM and its tensor intrinsics before building anything:
    24 s on an idle 2-core machine, several minutes on a shared one, per batch. Building in this process,
    where all of that is already imported, removes that cost; the price is that a crashing build would
    take the tuning process with it (none seen with LLVM CPU targets).
    The builder is also the one hook MetaSchedule calls before every batch, in every round, so it is where
    the time budget is enforced: past the deadline it raises, tune_tasks unwinds, and what was already
    measured stays in the database.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs):
            if time.monotonic() >= deadline:
                state["stopped_by"] = "minutes"
                raise _BudgetSpent("tuning time budget spent")
            out = []
            for bi in build_inputs:
                try:
                    out.append(BuilderResult(default_export(default_build(bi.mod, bi.target, None)), None))
                except Exception as e:  # noqa: BLE001 - a failed candidate is a result, not a crash
                    out.append(BuilderResult(None, f"in-process build failed: {type(e).__name__}: {e}"))
            return out

    return InProcessBuilder()


def tune(
    mod,
    target,
    db_dir: Path,
    trials: int | None,
    minutes: float | None,
    num_cores: int,
    progress=None,
    seed: int | None = None,
    in_process_build: bool = True,
) -> TuneReport:
    """Tune every task of a prepared module within the budgets; records accumulate in db_dir."""
    from tvm.s_tir import meta_schedule as ms

    say = progress or (lambda _m: None)
    t0 = time.monotonic()
    tasks = ms.relax_integration.extract_tasks(mod, target)
    if not tasks:
        raise EdgeoptError("MetaSchedule found no tasks to tune in this graph", "this is a bug: the graph was not legalized")
    tasks = _by_cost(tasks)
    n = len(tasks)
    if not trials or trials <= 0:
        # Only a time budget: make the trial cap large enough never to bind first.
        trials = 1_000_000
    per_task = max(1, math.ceil(trials / n))
    # Small iterations when the budget is small or timed, so every task gets a first round early.
    per_iter = max(1, min(16, per_task))
    db = open_database(db_dir)
    before = count_records(db_dir)
    state: dict[str, Any] = {"measured": 0, "stopped_by": "trials"}
    setup_s = 0.0
    work_dir = db_dir / "logs"
    work_dir.mkdir(parents=True, exist_ok=True)
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        tasks, work_dir=str(work_dir), num_threads=num_cores, seed=seed, strategy=_strategy(per_task, minutes)
    )
    setup_s = time.monotonic() - t0
    # The minutes budget is search-and-measure time: set-up (minutes on a loaded 2-core machine) is
    # reported separately, so a short budget is not eaten before the first trial.
    deadline = time.monotonic() + 60.0 * minutes if minutes else float("inf")
    callbacks = [*ms.measure_callback.MeasureCallback.create("default"), _time_limit_callback(deadline, state)]
    builder = _in_process_builder(deadline, state) if in_process_build else ms.builder.LocalBuilder(timeout_sec=BUILDER_TIMEOUT_S)
    say(f"tuning {n} tasks (budget: {trials if trials < 1_000_000 else 'unlimited'} trials, {minutes or 'no'} minutes; set-up took {setup_s:.0f} s)")
    _quiet_metaschedule()
    scheduler = ms.TaskScheduler.create("gradient")
    try:
        ms.tune.tune_tasks(
            task_scheduler=scheduler,
            tasks=contexts,
            task_weights=weights,
            work_dir=str(work_dir),
            max_trials_global=trials,
            max_trials_per_task=per_task,
            num_trials_per_iter=per_iter,
            builder=builder,
            runner=ms.runner.LocalRunner(timeout_sec=RUNNER_TIMEOUT_S),
            database=db,
            measure_callbacks=callbacks,
        )
    except KeyboardInterrupt:
        state["stopped_by"] = "interrupted"
        raise
    except Exception:
        if state["stopped_by"] != "minutes":  # the builder ended the run at the deadline: not an error
            raise
        # The scheduler's first round only sends batches to the runner; results are joined (and committed
        # to the database) later. Join what is in flight so the measured candidates are not lost.
        for i, rec in enumerate(scheduler.tasks_):
            if rec.runner_futures is not None and len(rec.runner_futures) > 0:
                try:
                    scheduler.join_running_task(i)
                except Exception:  # noqa: BLE001 - a task whose runs failed keeps no record; the rest do
                    continue
    finally:
        rep = TuneReport(
            db_dir=str(db_dir), tasks=n, trials_budget=trials if trials < 1_000_000 else 0, minutes_budget=minutes,
            records_before=before, records_after=count_records(db_dir), trials_measured=state["measured"],
            seconds=time.monotonic() - t0, setup_seconds=setup_s, stopped_by=state["stopped_by"],
        )
        (db_dir / "last_run.json").write_text(json.dumps(rep.to_dict(), indent=2))
    return rep


def _by_cost(tasks):
    """Heaviest tasks first (FLOPs x occurrences): the scheduler's first round goes in task order, so a
    time budget that ends mid-round has been spent on the kernels that dominate latency."""
    from tvm.s_tir.analysis import estimate_tir_flops

    def cost(t) -> float:
        try:
            return float(estimate_tir_flops(t.dispatched[0])) * t.weight
        except Exception:  # noqa: BLE001 - an op the estimator does not know costs "unknown", goes last
            return 0.0

    return sorted(tasks, key=cost, reverse=True)


def _strategy(per_task: int, minutes: float | None):
    """Evolutionary search sized to the budget: the default (population 512, 4 generations) costs tens
    of seconds per round on 2 cores before anything is measured, which a budget of a few trials per task
    cannot repay; small budgets (few trials per task, or under an hour) search a smaller population."""
    from tvm.s_tir import meta_schedule as ms

    if per_task >= 64 and not (minutes and minutes < 60):
        return "evolutionary"
    return ms.search_strategy.EvolutionarySearch(population_size=128, init_min_unmeasured=16, genetic_num_iters=2)


def apply_database(mod, target, db_dir: Path):
    """Replace every tuned function's TIR with its best measured schedule (others stay as they are)."""
    from tvm import relax

    db = open_database(db_dir)
    with target, db:
        return relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)


def _quiet_metaschedule() -> None:
    """MetaSchedule logs every iteration at INFO to stdout; keep its per-task logs in files only."""
    for name in ("tvm.s_tir.meta_schedule", "tvm.meta_schedule"):
        logging.getLogger(name).setLevel(logging.WARNING)
