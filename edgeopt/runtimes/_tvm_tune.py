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
- spend the budget on trials that matter: on a small CPU, building a candidate is most of a trial, so candidates
  build in a pool of long-lived worker processes, one per core, each build limited in time (`_pool_builder`);
  a task whose measured default takes under `MIN_TASK_SHARE` of the model's time is not searched; set-up skips
  the import of TVM's tensor intrinsics, which the CPU rules never use (`cpu_space`, `_tune_context`).
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
from edgeopt.runtimes import _tvm_pool

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
# Which workloads hold a measured default-schedule record, per version of the default rules.
DEFAULTS_FILE = "default_schedules.json"
# Seconds one candidate's build may take (`_pool_builder`). On an idle 2-core machine builds take 0.1-9 s (the
# first in a worker also imports TVM, ~4 s); the rare candidate that unrolls 512 steps of a large tile takes LLVM
# minutes, and is killed at this limit and recorded as a failed build.
BUILD_TIMEOUT_S = float(os.environ.get("EDGEOPT_TVM_BUILD_TIMEOUT", 30))
# Builds a worker does before it is replaced (bounds the memory a long-lived TVM process leaks).
BUILD_WORKER_USES = 200
RUNNER_TIMEOUT_S = 120.0
# A task whose measured default schedule takes less than this share of the model's time (run time x occurrences,
# over every task with a record) is not searched: tuning it could save at most that share, and the search's first
# round would spend as many trials on it as on the heaviest kernel. It keeps its default schedule (or its records).
MIN_TASK_SHARE = 0.01


def cache_root() -> Path:
    """Where tuning databases live: $EDGEOPT_CACHE_DIR/tvm, else ~/.cache/edgeopt/tvm."""
    base = os.environ.get("EDGEOPT_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "edgeopt")
    return Path(base) / "tvm"


def default_db_dir(target_name: str) -> Path:
    """The database every model tuned for this target shares (records are keyed by workload, not model)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in target_name)
    return cache_root() / safe


# The passes of `prepare`, by name, as a build's manifest lists them.
PREPARE_STEPS = ("DecomposeOpsForInference", "CanonicalizeBindings", "FastMathTransform", _tvm_pool.STEP,
                 "zero(LegalizeOps,AnnotateTIROpPattern,FoldConstant,FuseOps,FuseTIR)")
LAYOUT_FREE_STEP = "AttachAttrLayoutFreeBuffers (weights laid out by each kernel's schedule: edgeopt.runtimes.tvm.pack_weights)"


def prepare(mod, target, layout_free: bool = True, window_pooling: bool = True):
    """Decompose inference-only ops, swap erf/exp/tanh/softmax for their fast approximations, legalize to TIR (with
    `window_pooling`, channels-last pooling as written-out windows: `edgeopt.runtimes._tvm_pool`; without it,
    TOPI's pool2d) and fuse (`PREPARE_STEPS`), and with `layout_free` mark the weights each TIR function takes as free to re-lay out
    (`LAYOUT_FREE_STEP`): the form both tuning and building use. A module prepared with `layout_free` is built
    after `edgeopt.runtimes.tvm.pack_weights`, which runs the re-layouts once on the weights; without it, each
    kernel would re-lay out its weight on every call.

    The fast forms (`FastMathTransform`: TOPI's polynomial `fast_erf`, `fast_exp`, ...) are plain arithmetic that
    vectorizes inside a fused kernel; the exact ones are calls to libm, one scalar call per element, which on
    efficientformer_l1 made the GELU epilogues of its MLP convolutions cost more than the convolutions. ONNX
    Runtime's own Erf/Gelu kernels are approximations of the same kind."""
    import tvm
    from tvm import relax

    passes = [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings(),
              relax.transform.FastMathTransform()]
    if window_pooling:  # the other ops keep Relax's legalization; `zero` then finds nothing left to legalize
        passes.append(relax.transform.LegalizeOps(customize_legalize_map=_tvm_pool.legalize_map()))
    passes.append(relax.get_pipeline("zero"))
    if layout_free:
        passes.append(relax.transform.AttachAttrLayoutFreeBuffers())
    with target:
        return tvm.transform.Sequential(passes)(mod)


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
    stopped_by: str  # "trials" | "minutes" | "interrupted" | "reused" (every task tuned to this budget, or small)
    tasks_reused: int = 0  # tasks skipped: the database already held the trials this budget gives a task
    tasks_with_records: int = 0  # tasks that had tuned records before this run (this model's or another's)
    defaults_measured: int = 0  # tasks whose default schedule this run measured and committed as a record
    defaults_failed: list[str] | None = None  # tasks whose default schedule could not be built or run, and why
    tasks_small: int = 0  # tasks not searched: their best record takes under MIN_TASK_SHARE of the model's time
    build_timeouts: int = 0  # candidates whose build was killed at BUILD_TIMEOUT_S

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _time_limit_callback(deadline: float, state: dict[str, Any]):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class StopAtDeadline(PyMeasureCallback):
        """After each measured batch: past the deadline (or after Ctrl-C), terminate every task still running."""

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
            state["measured"] += len(runner_results)
            if not _stopping(state, deadline):
                return
            for i, rec in enumerate(task_scheduler.tasks_):
                if not rec.is_terminated:
                    task_scheduler.terminate_task(i)

    return StopAtDeadline()


def _stopping(state: dict[str, Any], deadline: float) -> bool:
    """Whether the run is to end now: Ctrl-C was pressed (`_interrupt_at_batch`), or the deadline has passed (which
    marks the run stopped by "minutes")."""
    if state["stopped_by"] != "interrupted" and time.monotonic() >= deadline:
        state["stopped_by"] = "minutes"
    return state["stopped_by"] in ("minutes", "interrupted")


class _StopTuning(Exception):
    """Raised from the builder to end tune_tasks: the time budget is spent, or Ctrl-C was pressed."""


def _interrupt_at_batch(state: dict[str, Any]):
    """A SIGINT handler for the tuning run: the first Ctrl-C marks the run interrupted, and the builder ends it
    before the next batch (`_pool_builder`); a second one interrupts at once.

    While tuning, the main thread is mostly inside MetaSchedule's C++ search or in its runner, which turns a
    KeyboardInterrupt raised there into a failed measurement and goes on tuning; the builder is the one place where
    raising reliably unwinds tune_tasks. Returns the call that puts the previous handler back (nothing to put back
    off the main thread, where a signal handler cannot be set)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_sigint(signum, frame) -> None:
        state["stopped_by"] = "interrupted"
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, on_sigint)
    return lambda: signal.signal(signal.SIGINT, previous)


def build_candidate(mod, target) -> str:
    """Build one scheduled TIR module and export it for MetaSchedule's runner; returns the artifact's path.

    MetaSchedule's `default_build` first imports every tensor intrinsic TVM ships (50 s on this 2-core machine);
    CPU candidates tensorize nothing that needs them at build time (a tensorized block already holds the
    intrinsic's body), so this builds without that import. Runs in the build workers (`_pool_builder`) and in
    `commit_measured`."""
    import tvm
    from tvm.s_tir.meta_schedule.builder.local_builder import default_export
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return default_export(tvm.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target))


def _build_job(job: tuple[Any, Any]) -> str:
    """`build_candidate` on a (module, target) pair: the function a build worker is sent."""
    return build_candidate(*job)


def _warm_build_worker() -> None:
    """A build worker's initializer: import what `build_candidate` needs once, before the first timed build."""
    import tvm.driver  # noqa: F401
    import tvm.s_tir.meta_schedule.builder.local_builder  # noqa: F401


def _pool_builder(deadline: float, state: dict[str, Any], workers: int):
    """Build candidates in a pool of worker processes that lives as long as the tuning run, one per core, each
    build limited to `BUILD_TIMEOUT_S`; and end tuning at the deadline.

    Building is most of a trial's time on a small CPU (efficientformer_l1 on 2 cores: 0.5 s of a 0.9 s trial), and
    a candidate's build time varies 50x with its unrolling: most build in under 2 s, a few that unroll 512 steps
    of a large tile keep LLVM busy for minutes. So: one worker per core (the batch builds in parallel; measuring
    starts only when the whole batch is built, so nothing is built while a candidate is timed), and a build past
    the timeout is killed and recorded as a failed candidate (its worker restarts, ~4 s) instead of stalling the
    run. MetaSchedule's LocalBuilder also uses worker processes, but starts a fresh pool for every batch, and each
    of its workers imports TVM's tensor intrinsics first (50 s here): the workers here import TVM once and build
    without the intrinsics (`build_candidate`); they are recycled every `BUILD_WORKER_USES` builds, which bounds
    the memory a long-lived worker leaks (the reason LocalBuilder restarts its pool).
    The builder is also the one hook MetaSchedule calls before every batch, in every round, so it is where the
    time budget and Ctrl-C are enforced (`_interrupt_at_batch`): past the deadline or after Ctrl-C it raises,
    tune_tasks unwinds, and what was already measured stays in the database.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    pool = PopenPoolExecutor(max_workers=max(1, workers), timeout=BUILD_TIMEOUT_S, initializer=_warm_build_worker,
                             maximum_process_uses=BUILD_WORKER_USES)

    @derived_object
    class PoolBuilder(PyBuilder):
        def build(self, build_inputs):
            if _stopping(state, deadline):
                raise _StopTuning(state["stopped_by"])
            out = []
            jobs = [(bi.mod, bi.target) for bi in build_inputs]
            for res in pool.map_with_error_catching(_build_job, jobs):
                if res.status == StatusKind.COMPLETE:
                    out.append(BuilderResult(res.value, None))
                elif res.status == StatusKind.TIMEOUT:
                    state["build_timeouts"] += 1
                    out.append(BuilderResult(None, f"build killed after {BUILD_TIMEOUT_S:g} s"))
                else:  # a failed candidate is a result, not a crash
                    out.append(BuilderResult(None, f"build failed: {last_line(res.value, 200)}"))
            return out

    return PoolBuilder(), pool


def tune(
    mod,
    target,
    db_dir: Path,
    trials: int | None,
    minutes: float | None,
    num_cores: int,
    progress=None,
    seed: int | None = None,
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
    state: dict[str, Any] = {"measured": 0, "stopped_by": "trials", "defaults": 0, "defaults_failed": [], "small": 0,
                             "build_timeouts": 0}
    reused = n - len(todo)
    with_records = sum(k > 0 for k in have)

    def report(setup_s: float) -> TuneReport:
        """The run's report, also left in db_dir/last_run.json."""
        rep = TuneReport(
            db_dir=str(db_dir), tasks=n, trials_budget=trials if trial_cap else 0, minutes_budget=minutes,
            records_before=before, records_after=count_records(db_dir), trials_measured=state["measured"],
            seconds=time.monotonic() - t0, setup_seconds=setup_s, stopped_by=state["stopped_by"], tasks_reused=reused,
            tasks_with_records=with_records, defaults_measured=state["defaults"],
            defaults_failed=state["defaults_failed"] or None, tasks_small=state["small"],
            build_timeouts=state["build_timeouts"],
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
    small = _small_tasks(db, tasks)
    state["small"] = sum(_defaults_key(t) in small for t in todo)
    todo = [t for t in todo if _defaults_key(t) not in small]
    if not todo:
        say(f"the tasks left each take under {MIN_TASK_SHARE:.0%} of the model's time: nothing worth tuning")
        state["stopped_by"] = "reused"
        return report(time.monotonic() - t0 - defaults_s)
    work_dir = db_dir / "logs"
    work_dir.mkdir(parents=True, exist_ok=True)
    contexts, loggers = _tune_contexts(todo, target, work_dir, num_cores, seed, _strategy(per_task, minutes))
    weights = [float(t.weight) for t in todo]
    setup_s = time.monotonic() - t0 - defaults_s
    # The minutes budget is measure-and-search time (the default schedules' measuring included): set-up
    # (minutes on a loaded 2-core machine) is reported separately, so a short budget is not eaten before
    # the first trial.
    deadline = time.monotonic() + 60.0 * minutes - defaults_s if minutes else float("inf")
    callbacks = [*ms.measure_callback.MeasureCallback.create("default"), _time_limit_callback(deadline, state)]
    builder, pool = _pool_builder(deadline, state, num_cores)
    say(f"tuning {len(todo)} of {n} tasks ({with_records} with records already, {reused} tuned to this budget before, "
        f"{state['small']} under {MIN_TASK_SHARE:.0%} of the time left as they are; budget: "
        f"{trials if trial_cap else 'unlimited'} trials, {minutes or 'no'} minutes; set-up took {setup_s:.0f} s)")
    _quiet_metaschedule()
    scheduler = ms.TaskScheduler.create("gradient")
    restore_sigint = _interrupt_at_batch(state)
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
        if state["stopped_by"] not in ("minutes", "interrupted"):  # the builder ended the run: not an error
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
        restore_sigint()
        pool.shutdown(wait=False)
        _close_loggers(loggers)
        rep = report(setup_s)
    if state["stopped_by"] == "interrupted":
        raise KeyboardInterrupt
    return rep


def _records_per_task(db, tasks, defaults: set[str]) -> list[int]:
    """How many tuned records the database holds for each task's workload (matched by structural hash, as
    MetaSchedule matches them), whichever model they were measured for; a measured default schedule
    (`defaults`) is not a tuning trial and is not counted."""
    from collections import Counter

    from tvm_ffi import structural_hash

    counts = Counter(str(int(structural_hash(r.workload.mod))) for r in db.get_all_tuning_records())
    return [max(0, counts[k] - (k in defaults)) for k in map(_defaults_key, tasks)]


def _small_tasks(db, tasks) -> set[str]:
    """The tasks (by `_defaults_key`) whose best record, times their occurrences, is under MIN_TASK_SHARE of the
    sum over every task that has a record. Tasks without a record are never small (their cost is unknown)."""
    cost: dict[str, float] = {}
    for t in tasks:
        mod = t.dispatched[0]
        if not db.has_workload(mod):
            continue
        top = db.get_top_k(db.commit_workload(mod), 1)
        secs = [float(x) for x in top[0].run_secs] if top and top[0].run_secs else []
        if secs:
            cost[_defaults_key(t)] = sum(secs) / len(secs) * float(t.weight)
    total = sum(cost.values())
    return {k for k, c in cost.items() if total > 0 and c < MIN_TASK_SHARE * total}


def _tune_contexts(tasks, target, work_dir: Path, num_cores: int, seed: int | None, strategy) -> tuple[list, list]:
    """One TuneContext per task, as `ms.relax_integration.extracted_tasks_to_tune_contexts` makes them (one log file
    per task, seeds forked from `seed`), searching `cpu_space()` and without the tensor-intrinsic import of
    `ms.TuneContext` (`_tune_context`). Returns the contexts and their loggers (`_close_loggers` after the run)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.utils import fork_seed

    if isinstance(strategy, str):
        strategy = ms.SearchStrategy.create(strategy)
    loggers = _task_loggers(work_dir / "logs", [t.task_name for t in tasks])
    contexts = [
        _tune_context(t.dispatched[0], target, cpu_space(), num_cores, strategy=strategy,
                      task_name=t.task_name, logger=logger, rand_state=rs).clone()
        for t, logger, rs in zip(tasks, loggers, fork_seed(seed, n=len(tasks)), strict=True)
    ]
    return contexts, loggers


def _task_loggers(log_dir: Path, names: list[str]) -> list[logging.Logger]:
    """One logger per task writing to its own file in log_dir (MetaSchedule logs each search round there).

    MetaSchedule's own helper (`get_loggers_from_work_dir`) reconfigures the whole logging module through
    `dictConfig` on every call, taking along the names of whatever handlers its global logger holds: in a process
    that had tuned before (a test session, a sweep), an unnamed handler there makes it fail. These are plain
    loggers with one file handler each."""
    log_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S")
    width = len(str(max(0, len(names) - 1)))
    out = []
    for i, name in enumerate(names):
        stem = f"task_{i:0{width}d}_{name[:100]}"
        lg = logging.getLogger(f"edgeopt.tvm.tune.{stem}")
        _close_loggers([lg])  # a logger of the same name left by an earlier run in this process
        fh = logging.FileHandler(log_dir / f"{stem}.log", mode="a")
        fh.setFormatter(fmt)
        lg.addHandler(fh)
        lg.setLevel(logging.DEBUG)
        lg.propagate = False
        out.append(lg)
    return out


def _close_loggers(loggers: list[logging.Logger]) -> None:
    """Detach and close the loggers' handlers (their log files)."""
    for lg in loggers:
        for h in list(lg.handlers):
            lg.removeHandler(h)
            h.close()


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

    from tvm.s_tir import meta_schedule as ms

    built, failed = [], []
    for name, mod, sch in schedules:
        try:
            artifact = build_candidate(sch.mod, target)
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

    cores = int(target.attrs.get("num-cores", 1) or 1)
    ctx = _tune_context(sch.mod, target, cpu_space(), cores)
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


def cpu_space():
    """The design space that default schedules are drawn from and tuning searches: MetaSchedule's generic CPU rules,
    postprocessors and mutators ("llvm"). Its x86 space differs only by a rule that tensorizes int8 dot products
    with VNNI, which needs every tensor intrinsic TVM ships imported (50 s here) and matches no workload edgeopt
    builds (TVM int8 computes in float: docs/tvm.md). ApplyCustomRule is left out: it looks up per-op rules (TOPI's
    "meta_schedule.pool_avg") that no CPU build registers and warns once per function."""
    from tvm.s_tir import meta_schedule as ms

    rules = [r for r in ms.ScheduleRule.create("llvm") if not isinstance(r, ms.schedule_rule.ApplyCustomRule)]
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=ms.Postproc.create("llvm"),
                                             mutator_probs=ms.Mutator.create("llvm"))


def _sketch(spaces):
    """The trace of the first design space that moves the epilogue into the tiles (a ReverseComputeAt), else the
    first one (a function without an elementwise consumer)."""
    for sp in spaces:
        if any(inst.kind.name == "ReverseComputeAt" for inst in sp.trace.insts):
            return sp.trace
    return spaces[0].trace


def _tune_context(mod, target, space, cores: int, strategy=None, task_name: str = "default", logger=None,
                  rand_state: int = 0):
    """A TuneContext, for design-space generation (`default_schedule`) or tuning (`_tune_contexts`).
    `ms.TuneContext(...)` first imports every tensor intrinsic TVM ships (50 s on this 2-core machine, paid by each
    compile), which the CPU rules used here never need; this calls the same constructor without that import (TVM
    is pinned in constraints.txt; tests/test_tvm.py builds and tunes through it)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule import _ffi_api
    from tvm.s_tir.meta_schedule.logging import get_logger, get_logging_func

    ctx = ms.TuneContext.__new__(ms.TuneContext)
    ctx.__init_handle_by_constructor__(_ffi_api.TuneContext, mod, target, space, strategy, task_name, cores, rand_state,
                                       get_logging_func(logger or get_logger(__name__)))
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
