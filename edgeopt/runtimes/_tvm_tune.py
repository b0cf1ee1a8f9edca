"""MetaSchedule tuning for the TVM backend: budgets, a persistent database, and a clean stop.

Why a module of its own: tuning is the slow, stateful part of TVM. It must
- find tasks at all: `extract_tasks` sees nothing until the graph is legalized and fused, so the module
  goes through `DecomposeOpsForInference` and the `zero` pipeline first (`prepare()`, shared with the
  untuned build so that both compile the very same fused functions);
- respect two budgets, trials and minutes. MetaSchedule only knows trials, so a measure callback
  terminates every task once the clock runs out (the batch in flight finishes and is recorded);
- keep what it measured: records go to a JSON database that is appended to after every measured batch,
  one folder per target, shared by every model: MetaSchedule keys records by the workload (the fused TIR
  function), so a model whose kernels another model already tuned gets those schedules, and a task that
  already has the trials this budget gives each task is not tuned again; tasks without records go first.
  Each task's default schedule (`default_schedule`, what an untuned build uses) is measured first and committed
  as one more record, so the build takes a tuned schedule only where one ran faster than the default: a
  budget of a few trials per task can no longer make a model slower than not tuning it.
  A run that is interrupted (Ctrl-C, a killed process) keeps every committed record; a half-written last
  line is dropped on open.
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

from edgeopt.errors import EdgeoptError, last_line

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
# Which workloads hold a measured default-schedule record, per version of the default rules.
DEFAULTS_FILE = "default_schedules.json"
# Seconds per build/run. The first build in each worker includes importing TVM's tensor intrinsics:
# ~24 s on an idle 2-core machine, over 2 minutes when it is shared; a build that times out kills its
# worker, whose replacement imports again, so this must exceed the import even under load.
BUILDER_TIMEOUT_S = float(os.environ.get("EDGEOPT_TVM_BUILDER_TIMEOUT", 600))
RUNNER_TIMEOUT_S = 120.0


def cache_root() -> Path:
    """Where tuning databases live: $EDGEOPT_CACHE_DIR/tvm, else ~/.cache/edgeopt/tvm."""
    base = os.environ.get("EDGEOPT_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "edgeopt")
    return Path(base) / "tvm"


def default_db_dir(target_name: str) -> Path:
    """The database every model tuned for this target shares (records are keyed by workload, not model)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in target_name)
    return cache_root() / safe


# The passes of `prepare`, by name, as a build's manifest lists them.
PREPARE_STEPS = ("DecomposeOpsForInference", "CanonicalizeBindings", "FastMathTransform",
                 "zero(LegalizeOps,AnnotateTIROpPattern,FoldConstant,FuseOps,FuseTIR)")


def prepare(mod, target):
    """Decompose inference-only ops, swap erf/exp/tanh/softmax for their fast approximations, legalize to TIR and
    fuse (`PREPARE_STEPS`): the form both tuning and building use.

    The fast forms (`FastMathTransform`: TOPI's polynomial `fast_erf`, `fast_exp`, ...) are plain arithmetic that
    vectorizes inside a fused kernel; the exact ones are calls to libm, one scalar call per element, which on
    efficientformer_l1 made the GELU epilogues of its MLP convolutions cost more than the convolutions. ONNX
    Runtime's own Erf/Gelu kernels are approximations of the same kind."""
    import tvm
    from tvm import relax

    with target:
        return tvm.transform.Sequential(
            [
                relax.transform.DecomposeOpsForInference(),
                relax.transform.CanonicalizeBindings(),
                relax.transform.FastMathTransform(),
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
    stopped_by: str  # "trials" | "minutes" | "interrupted" | "reused" (every task already tuned to this budget)
    tasks_reused: int = 0  # tasks skipped: the database already held the trials this budget gives a task
    tasks_with_records: int = 0  # tasks that had tuned records before this run (this model's or another's)
    defaults_measured: int = 0  # tasks whose default schedule this run measured and committed as a record
    defaults_failed: list[str] | None = None  # tasks whose default schedule could not be built or run, and why

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
    trial_cap = bool(trials and trials > 0)
    if not trial_cap:
        # Only a time budget: make the trial cap large enough never to bind first.
        trials = 1_000_000
    per_task = max(1, math.ceil(trials / n))
    # Small iterations when the budget is small or timed, so every task gets a first round early.
    per_iter = max(1, min(16, per_task))
    db = open_database(db_dir)
    before = count_records(db_dir)
    defaults = _defaults_done(db_dir)
    have = _records_per_task(db, tasks, defaults)
    # A task already tuned to this budget (by this model or another sharing the workload) is not tuned again;
    # of the rest, those without any record first (the heaviest first within each group).
    left = [(t, k) for t, k in zip(tasks, have, strict=True) if not (trial_cap and k >= per_task)]
    todo = [t for t, _ in sorted(left, key=lambda tk: tk[1] > 0)]  # stable: cost order kept within each group
    state: dict[str, Any] = {"measured": 0, "stopped_by": "trials", "defaults": 0, "defaults_failed": []}
    reused = n - len(todo)
    with_records = sum(k > 0 for k in have)

    def report(setup_s: float) -> TuneReport:
        """The run's report, also left in db_dir/last_run.json."""
        rep = TuneReport(
            db_dir=str(db_dir), tasks=n, trials_budget=trials if trial_cap else 0, minutes_budget=minutes,
            records_before=before, records_after=count_records(db_dir), trials_measured=state["measured"],
            seconds=time.monotonic() - t0, setup_seconds=setup_s, stopped_by=state["stopped_by"], tasks_reused=reused,
            tasks_with_records=with_records, defaults_measured=state["defaults"],
            defaults_failed=state["defaults_failed"] or None,
        )
        (db_dir / "last_run.json").write_text(json.dumps(rep.to_dict(), indent=2))
        return rep

    if not todo:
        say(f"all {n} tasks already hold {per_task}+ records in {db_dir}: nothing to tune")
        state["stopped_by"] = "reused"
        return report(time.monotonic() - t0)
    # The default schedules are measured before the search, so that they compete with what it finds (and seed
    # its first population); their measuring counts against the minutes budget.
    say(f"measuring the default schedules of {sum(_defaults_key(t) not in defaults for t in todo)} task(s)")
    t_defaults = time.monotonic()
    state["defaults"], state["defaults_failed"] = commit_default_records(todo, target, db, db_dir)
    defaults_s = time.monotonic() - t_defaults
    work_dir = db_dir / "logs"
    work_dir.mkdir(parents=True, exist_ok=True)
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        todo, work_dir=str(work_dir), num_threads=num_cores, seed=seed, strategy=_strategy(per_task, minutes)
    )
    setup_s = time.monotonic() - t0 - defaults_s
    # The minutes budget is measure-and-search time (the default schedules' measuring included): set-up
    # (minutes on a loaded 2-core machine) is reported separately, so a short budget is not eaten before
    # the first trial.
    deadline = time.monotonic() + 60.0 * minutes - defaults_s if minutes else float("inf")
    callbacks = [*ms.measure_callback.MeasureCallback.create("default"), _time_limit_callback(deadline, state)]
    builder = _in_process_builder(deadline, state) if in_process_build else ms.builder.LocalBuilder(timeout_sec=BUILDER_TIMEOUT_S)
    say(f"tuning {len(todo)} of {n} tasks ({with_records} with records already, {reused} tuned to this budget before; budget: {trials if trial_cap else 'unlimited'} trials, {minutes or 'no'} minutes; set-up took {setup_s:.0f} s)")
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
        rep = report(setup_s)
    return rep


def _records_per_task(db, tasks, defaults: set[str]) -> list[int]:
    """How many tuned records the database holds for each task's workload (matched by structural hash, as
    MetaSchedule matches them), whichever model they were measured for; a measured default schedule
    (`defaults`) is not a tuning trial and is not counted."""
    from collections import Counter

    from tvm_ffi import structural_hash

    counts = Counter(str(int(structural_hash(r.workload.mod))) for r in db.get_all_tuning_records())
    return [max(0, counts[k] - (k in defaults)) for k in map(_defaults_key, tasks)]


def _defaults_key(task) -> str:
    from tvm_ffi import structural_hash

    return str(int(structural_hash(task.dispatched[0])))


def _defaults_file(db_dir: Path) -> dict[str, list[str]]:
    p = db_dir / DEFAULTS_FILE
    try:
        data = json.loads(p.read_text()) if p.is_file() else {}
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _defaults_done(db_dir: Path) -> set[str]:
    """Workloads whose default schedule (under the current rules) already has a measured record in db_dir."""
    return set(_defaults_file(db_dir).get(_rules_version(), []))


def _rules_version() -> str:
    """The default rules' version: a workload's default is measured again when the rules change."""
    return f"v2:{_VECTOR}/{_ROWS}/{_REDUCE}/u{_UNROLL_STEPS}/{_UNROLL_UNTILED}/epilogue-in-tile"


def commit_default_records(tasks, target, db, db_dir: Path) -> tuple[int, list[str]]:
    """Measure each task's default schedule and commit it to `db` as a tuning record with its run time
    (`commit_measured`). The build then takes, per function, the fastest of the default and every tuned
    schedule. Tasks done before (under the same rules) are skipped. Returns how many were committed, and the
    tasks that failed with why (they keep only their tuned records)."""
    recorded = _defaults_file(db_dir)
    done = set(recorded.get(_rules_version(), []))
    todo, failed, keys = [], [], {}
    for t in tasks:
        key = _defaults_key(t)
        if key in done:
            continue
        keys[t.task_name] = key
        why: list[str] = []
        try:
            sch = _default_schedule_database(target, why).query_schedule(t.dispatched[0], target, "main")
        except Exception as e:  # noqa: BLE001 - this task keeps only its tuned records; the reason is reported
            why.append(f"{type(e).__name__}: {last_line(e, 160)}")
            sch = None
        if sch is None:
            failed.append(f"{t.task_name}: {why[-1] if why else 'no default schedule'}")
            continue
        todo.append((t.task_name, t.dispatched[0], sch))
    ok, bad = commit_measured(db, target, todo)
    failed += bad
    done.update(keys[name] for name in ok)
    if ok:
        recorded[_rules_version()] = sorted(done)
        tmp = db_dir / (DEFAULTS_FILE + ".tmp")
        tmp.write_text(json.dumps(recorded, indent=1))
        os.replace(tmp, db_dir / DEFAULTS_FILE)
    return len(ok), failed


def commit_measured(db, target, schedules: list[tuple[str, Any, Any]]) -> tuple[list[str], list[str]]:
    """Build each (name, workload module, schedule), run them with MetaSchedule's LocalRunner (the runner and
    settings tuning uses, so run times compare with the tuned records'), and commit each as a tuning record of
    its workload. Returns the names committed and the failures with why."""
    import shutil

    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.builder.local_builder import default_export
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    built, failed = [], []
    for name, mod, sch in schedules:
        try:
            # MetaSchedule's default_build without its import of every tensor intrinsic (minutes on 2 cores):
            # these schedules tensorize nothing.
            lib = tvm.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(sch.mod), target=target)
            artifact = default_export(lib)
        except Exception as e:  # noqa: BLE001 - a schedule that does not build is a result, not a crash
            failed.append(f"{name}: build failed: {type(e).__name__}: {last_line(e, 160)}")
            continue
        built.append((name, mod, sch.trace, artifact, ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)))
    if not built:
        return [], failed
    runner = ms.runner.LocalRunner(timeout_sec=RUNNER_TIMEOUT_S)
    device = "cpu" if target.kind.name in ("llvm", "c") else target.kind.name
    futures = runner.run([ms.runner.RunnerInput(a, device, args) for *_, a, args in built])
    committed = []
    for (name, mod, trace, artifact, args), fut in zip(built, futures, strict=True):
        res = fut.result()
        shutil.rmtree(os.path.dirname(artifact), ignore_errors=True)
        if res.error_msg or not res.run_secs:
            failed.append(f"{name}: run failed: {last_line(res.error_msg or 'no run time', 160)}")
            continue
        db.commit_tuning_record(ms.database.TuningRecord(trace, db.commit_workload(mod), res.run_secs, target, args))
        committed.append(name)
    return committed, failed


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


def apply_database(mod, target, db_dir: Path | None, default_schedules: bool = True, unscheduled: list[str] | None = None):
    """Schedule every fused TIR function of a prepared module: its best measured schedule from the tuning
    database in `db_dir` where it has one, else (with `default_schedules`) MetaSchedule's default schedule for
    it (`default_schedule`), else its bare loop nest. Functions the default schedule could not handle keep their
    loop nest and are named in `unscheduled` (with the reason) when a list is given."""
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    dbs = ([open_database(db_dir)] if db_dir is not None else [])
    if default_schedules:
        dbs.append(_default_schedule_database(target, [] if unscheduled is None else unscheduled))
    if not dbs:
        return mod
    db = dbs[0] if len(dbs) == 1 else ms.database.OrderedUnionDatabase(*dbs)
    with target, db:
        return relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)


# The default schedule's tiles: the innermost tile of the last spatial loop (fp32 lanes: one AVX-512 register,
# four NEON registers), the register tile of rows above it, the reduction iterations kept inside.
_VECTOR = 16
_ROWS = 8
_REDUCE = 4
# CPU multi-level tiling splits each spatial loop into this many levels (`_tile_plan`); a trace with such a split
# has a register tile.
_SPATIAL_LEVELS = 4
# The default schedule's unrolling: the explicit-unroll limit (MetaSchedule's CPU choices are 0, 16, 64, 512
# steps). 64 unrolls a register tile of `_ROWS` x one vector, so its accumulators stay in registers; 0 and 16
# leave loads and stores in the tile's loop, 512 bloats the code (efficientformer_l1, fused conv kernels: 64 was
# the fastest or within 5 % of it, 0 up to 1.8x and 512 up to 4x slower). A function without a register tile
# (softmax, pooling, layer norm) gets 16: its loops have nothing to keep in registers, and 64 steps of TOPI's
# fast_softmax took LLVM a minute to compile.
_UNROLL_STEPS = 64
_UNROLL_UNTILED = 16


def default_schedule(sch, target) -> bool:
    """Schedule one TIR function without measuring anything: one sketch of MetaSchedule's design space for this
    target (its rules: inline elementwise ops, multi-level tiling of the anchor block, parallel outer loops,
    vectorized inner ones, unrolling), its tile sizes chosen by `_tile_plan` and its unrolling fixed at
    `_UNROLL_STEPS` (`_UNROLL_UNTILED` without a register tile) instead of sampled, then its postprocessors. The sketch is the first one that computes the
    anchor's elementwise epilogue inside the tile loops (`_sketch`), so a fused conv + bias + GELU writes its
    output once. Deterministic: the same function gets the same schedule in every build. False where the space
    is empty or a postprocessor rejects the result: the function then keeps its loop nest. (On
    efficientformer_l1 the sketch's own seeded samples ran about 3x slower than these rules; docs/tvm.md has the
    figures of the default build.)"""
    from tvm.s_tir import meta_schedule as ms

    cores = int(target.attrs.get("num-cores", 1) or 1)
    # ApplyCustomRule looks up per-op rules (TOPI's "meta_schedule.pool_avg") that no CPU build registers, and
    # warns once per function; it adds nothing here.
    rules = [r for r in ms.ScheduleRule.create("llvm") if not isinstance(r, ms.schedule_rule.ApplyCustomRule)]
    space = ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=ms.Postproc.create("llvm"),
                                              mutator_probs=ms.Mutator.create("llvm"))
    ctx = _tune_context(sch.mod, target, space, cores)
    spaces = ctx.space_generator.generate_design_space(sch.mod)
    if not spaces:
        return False
    trace = _sketch(spaces)
    plan = iter(_tile_plan(trace))
    tiled = any(inst.kind.name == "SamplePerfectTile" and int(inst.attrs[0]) == _SPATIAL_LEVELS for inst in trace.insts)
    unroll = _UNROLL_STEPS if tiled else _UNROLL_UNTILED

    def provider(inst, inputs, attrs, decision):
        if inst.kind.name == "SamplePerfectTile":
            return next(plan)
        if inst.kind.name == "SampleCategorical":  # the CPU rules' only categorical choice: the unroll limit
            steps = [int(c) for c in inst.attrs[0]]
            return steps.index(unroll) if unroll in steps else decision
        return decision

    trace.apply_to_schedule(sch, remove_postproc=True, decision_provider=provider)
    # Marked as MetaSchedule marks its candidates: a search that starts from this schedule's record replays the
    # trace up to here and runs the postprocessors again (without the mark it would apply them twice).
    sch.enter_postproc()
    return all(p.apply(sch) for p in ctx.space_generator.postprocs)


def _sketch(spaces):
    """The trace of the first design space that moves the epilogue into the tiles (a ReverseComputeAt), else the
    first one (a function without an elementwise consumer)."""
    for sp in spaces:
        if any(inst.kind.name == "ReverseComputeAt" for inst in sp.trace.insts):
            return sp.trace
    return spaces[0].trace


def _tune_context(mod, target, space, cores: int):
    """A TuneContext for design-space generation only. `ms.TuneContext(...)` first imports every tensor intrinsic
    TVM ships (35 s on this 2-core machine, paid by each compile), which the CPU rules used here never need; this
    calls the same constructor without that import (TVM is pinned in constraints.txt; tests/test_tvm.py builds
    through it)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule import _ffi_api
    from tvm.s_tir.meta_schedule.logging import get_logger, get_logging_func

    ctx = ms.TuneContext.__new__(ms.TuneContext)
    ctx.__init_handle_by_constructor__(_ffi_api.TuneContext, mod, target, space, None, "default", cores, 0,
                                       get_logging_func(get_logger(__name__)))
    _ffi_api.TuneContextInitialize(ctx)
    return ctx


def _tile_plan(trace) -> list[list[int]]:
    """Tile sizes for every SamplePerfectTile of a sketch, in trace order.

    CPU multi-level tiling splits each spatial loop in four (outer, middle, register, inner) and each reduction
    loop in two; the outer levels of all spatial loops are fused into the parallel loop and the innermost loop
    of the last one is vectorized. So: the last spatial loop of a block gets a vector-wide inner tile (`_VECTOR`),
    the one before it a register tile of up to `_ROWS` rows, every other spatial loop all of its extent outside
    (parallel work); a reduction keeps up to `_REDUCE` iterations inside the register tile."""
    samples = [(int(inst.attrs[0]), int(inst.attrs[1]), _product(trace.decisions[inst]))
               for inst in trace.insts if inst.kind.name == "SamplePerfectTile"]
    plan: list[list[int]] = []
    for k, (n, max_inner, extent) in enumerate(samples):
        cap = min(max_inner, _VECTOR) if max_inner > 0 else _VECTOR
        if n != _SPATIAL_LEVELS:  # a reduction loop (or a two-way split of any other rule)
            inner = _largest_divisor(extent, min(cap, _REDUCE))
            plan.append([extent // inner] + [1] * (n - 2) + [inner] if n >= 2 else [extent])
            continue
        later = [m for m, _, _ in samples[k + 1:]]
        spatial_after = next((i for i, m in enumerate(later) if m != _SPATIAL_LEVELS), len(later))  # spatial loops left in this block
        if spatial_after == 0:  # the last spatial loop: vector-wide inner tile
            inner = _largest_divisor(extent, cap)
            plan.append([extent // inner, 1, 1, inner])
        elif spatial_after == 1:  # the one before: a register tile of rows
            reg = _largest_divisor(extent, _ROWS)
            plan.append([extent // reg, 1, reg, 1])
        else:
            plan.append([extent, 1, 1, 1])
    return plan


def _product(decision) -> int:
    out = 1
    for d in decision:
        out *= int(d)
    return out


def _largest_divisor(extent: int, cap: int) -> int:
    return max(d for d in range(1, min(extent, max(1, cap)) + 1) if extent % d == 0)


def _default_schedule_database(target, unscheduled: list[str]):
    """A database that answers every query with `default_schedule`; a function it cannot schedule is noted in
    `unscheduled` and keeps its loop nest (a slow kernel, named; never a failed build)."""
    from tvm.s_tir import meta_schedule as ms

    def schedule(sch) -> bool:
        name = str(sch.mod["main"].attrs.get("global_symbol", "?")) if sch.mod["main"].attrs else "?"
        try:
            ok = default_schedule(sch, target)
        except Exception as e:  # noqa: BLE001 - the function keeps its loop nest; the reason is recorded
            unscheduled.append(f"{name}: {type(e).__name__}: {last_line(e, 160)}")
            return False
        if not ok:
            unscheduled.append(f"{name}: no schedule from the design space")
        return ok

    return ms.database.ScheduleFnDatabase(schedule)


def _quiet_metaschedule() -> None:
    """MetaSchedule logs every iteration at INFO to stdout; keep its per-task logs in files only."""
    for name in ("tvm.s_tir.meta_schedule", "tvm.meta_schedule"):
        logging.getLogger(name).setLevel(logging.WARNING)
