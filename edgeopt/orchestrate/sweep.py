"""Sweeps: models x pass pipelines x backends x precisions x devices x thread counts, resumable.

    edgeopt bench examples/sweep.yaml

The policy: validate the sweep file, resolve its devices (devices.yaml names, URIs, or kinds: a pool of
boards, any of which may measure a job), snapshot each board, decide what to build for it (orchestrate/
boards.py: only backends it has, TVM for its CPU), expand the jobs (`Job.hashed`, keyed by spec), skip the
ones whose measurement is stored, and hand the rest to a scheduler: schedule.py (one host: compile worker
processes, one measuring thread per board) or, with `cluster=`, lab.py (Ray). An unreachable board fails its
jobs with the reason, or hands them to another board of its kind; the sweep goes on with the others. The
YAML format is documented in docs/sweeps.md, running on many boards in docs/lab.md.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from edgeopt.errors import EdgeoptError, SpecError
from edgeopt.harness.devices.profiles import BoardSpec, boards_of_kind, is_uri, load_boards, sweep_board
from edgeopt.measurement import Protocol
from edgeopt.orchestrate.jobs import CompileUnit, Job

# The sweep file's `protocol:` section: every Protocol field, with its type and default, and nothing else.
_PROTOCOL_HINTS = typing.get_type_hints(Protocol)
ProtocolConfig: type[BaseModel] = create_model(
    "ProtocolConfig",
    __config__=ConfigDict(extra="forbid"),
    **{f.name: (_PROTOCOL_HINTS[f.name], f.default) for f in fields(Protocol)},
)


class CompileConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workers: int = Field(2, ge=1)
    samples: int = Field(4, ge=1)
    weights: dict[str, str] = {}  # model -> checkpoint file
    data: str | None = None  # the user's data (edgeopt.data); set from the sweep's top-level `data:`
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
    protocol: ProtocolConfig = ProtocolConfig()  # type: ignore[valid-type]
    compile: CompileConfig = CompileConfig()
    data: str | None = None  # the user's data for calibration and the fidelity gate (docs/data.md); relative to the file
    db: str | None = None
    serial_devices: bool = False
    compile_first: bool = False
    retries: int = Field(2, ge=0)  # a job whose board stops answering goes to another board of its kind at most this often

    def protocols(self) -> dict[int | None, Protocol]:
        """One Protocol per thread count (the `threads` axis; `protocol.threads` where the axis is not set)."""
        base = self.protocol.model_dump()  # type: ignore[attr-defined]
        axis = self.threads if self.threads != [None] else [base["threads"]]
        return {t: Protocol(**{**base, "threads": t}) for t in axis}

    def units(self) -> list[CompileUnit]:
        return [CompileUnit(m, p or "", b, pr) for m in self.models for p in self.pipelines for b in self.backends for pr in self.precisions]


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
    if cfg.data is not None:
        cfg.compile.data = str(Path(cfg.data) if Path(cfg.data).is_absolute() else base / cfg.data)
    e2e = cfg.protocol.end_to_end  # type: ignore[attr-defined]
    if e2e and not Path(e2e).is_absolute():
        cfg.protocol.end_to_end = str(base / e2e)  # type: ignore[attr-defined]
    return cfg


@dataclass
class SweepTarget:
    """One entry of the sweep's devices axis: one board, or a pool (`kind`: any of its boards measures a job).

    `id` is the jobs' device id: the board's own device id, or `kind:NAME` for a pool (the store's job row then
    names the board that measured it). `board_ids[i]` is the device id of `boards[i]`."""

    id: str
    boards: list[BoardSpec]
    board_ids: list[str]
    kind: str | None = None

    def protocol(self, base: Protocol) -> Protocol:
        """The sweep's protocol with the board's pinning (a pool's first board: boards of a kind share it)."""
        return self.boards[0].protocol(base)


def board_device_id(board: BoardSpec) -> str:
    """The id a board's measurements are stored under (its Device's id; the URI where it cannot be opened here)."""
    from edgeopt.harness.devices.profiles import open_device

    try:
        dev = open_device(board)
    except EdgeoptError:
        return board.uri
    try:
        return dev.id
    finally:
        dev.close()


def resolve_targets(cfg: SweepConfig, profiles: dict[str, dict[str, Any]] | None = None) -> list[SweepTarget]:
    """The sweep's devices as targets: a devices.yaml name or URI is one board; `kind:NAME`, `{kind: NAME}` or a
    bare kind that is no board's name is a pool. An unknown name or a kind with no boards fails here, before
    anything is compiled."""
    boards = load_boards(profiles)
    out: list[SweepTarget] = []
    for spec in cfg.devices:
        kind = None
        if isinstance(spec, dict) and "kind" in spec and "uri" not in spec and "name" not in spec:
            kind = str(spec["kind"])
        elif isinstance(spec, str) and spec.startswith("kind:"):
            kind = spec[5:]
        elif isinstance(spec, str) and spec not in boards and not is_uri(spec) and any(b.kind == spec for b in boards.values()):
            kind = spec
        if kind is not None:
            pool = boards_of_kind(kind, boards)
            out.append(SweepTarget(f"kind:{kind}", pool, [board_device_id(b) for b in pool], kind))
            continue
        b = sweep_board(spec, boards)
        did = board_device_id(b)
        out.append(SweepTarget(did, [b], [did]))
    return out


@dataclass
class SweepPlan:
    """The sweep's jobs for its targets (each unit built for its board), and the jobs not built with why."""

    jobs: list[Job]
    not_built: list[tuple[Job, str]]
    builds: dict[str, Any]  # target id -> BoardBuild, or the reason its board could not be snapshotted (str)


def plan_jobs(cfg: SweepConfig, targets: list[SweepTarget], infos: dict[str, dict[str, Any] | None]) -> SweepPlan:
    """Jobs for every target from its snapshot (`infos[target.id]`; None: not reachable, built for the default
    target and failed later with the connect error). A board no requested backend can build for raises."""
    from edgeopt.orchestrate.boards import plan_build

    protocols = cfg.protocols()
    jobs: list[Job] = []
    not_built: list[tuple[Job, str]] = []
    builds: dict[str, Any] = {}
    for t in targets:
        info = infos.get(t.id)
        build = plan_build(info, list(dict.fromkeys(cfg.backends)), t.boards[0], t.kind or t.boards[0].label) if info else None
        builds[t.id] = build
        for u in cfg.units():
            why = build.why_not(u.backend) if build else None
            unit = CompileUnit(u.model, u.passes, u.backend, u.precision, build.target(u.backend)) if build and not why else u
            for p in protocols.values():
                job = Job.hashed(unit, t.id, t.protocol(p))
                if why:
                    not_built.append((job, why))
                else:
                    jobs.append(job)
    return SweepPlan(jobs, not_built, builds)


@dataclass
class SweepSummary:
    total: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    retried: int = 0  # jobs handed to another board of their kind after their board stopped answering
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
    """Run (or resume) a sweep on this host (schedule.py); returns counts. Results go to the store as they
    arrive. `orchestrate.lab.run_lab` runs the same sweep on a Ray cluster; this path never imports Ray."""
    from edgeopt.orchestrate.schedule import Scheduler, connect
    from edgeopt.orchestrate.ui import SweepProgress
    from edgeopt.store import Store

    store = Store(db or cfg.db)
    targets = resolve_targets(cfg, profiles)
    slots = connect(targets, trust_new_host)
    infos = {t.id: next((slots[b].info for b in t.board_ids if slots[b].info), None) for t in targets}
    try:
        plan = plan_jobs(cfg, targets, infos)
        summary, todo = start_sweep(cfg, store, plan, dry_run)
    except BaseException:
        for slot in slots.values():
            slot.close()
        raise
    if dry_run:
        for slot in slots.values():
            slot.close()
        return summary
    with SweepProgress(enabled=progress) as ui:
        sched = Scheduler(store, summary, slots, targets, ui, serial_devices=cfg.serial_devices, compile_first=cfg.compile_first, retries=cfg.retries)
        sched.run(todo, cfg.compile, plan.not_built)
    return summary


def start_sweep(cfg: SweepConfig, store: Any, plan: SweepPlan, dry_run: bool) -> tuple[SweepSummary, list[Job]]:
    """Count the plan, leave out the stored jobs (resume), and open the run in the store (not for a dry run,
    which lists the jobs still to run instead)."""
    from edgeopt.orchestrate.ui import console
    from edgeopt.store import redact

    summary = SweepSummary(total=len(plan.jobs) + len(plan.not_built))
    todo = [j for j in plan.jobs if not _stored(store, j)]
    summary.skipped = len(plan.jobs) - len(todo)
    if dry_run:
        for j in todo:
            console.print(f"todo: {j.label()}")
        for j, why in plan.not_built:
            console.print(f"not built: {j.label()}: {why}")
        console.print(f"{len(todo)} to run, {len(plan.not_built)} not built for their board, {summary.skipped} already stored, {summary.total} in all")
        return summary, todo
    config = cfg.model_dump()
    config["db"] = redact(config["db"]) if config.get("db") else None  # the runs table keeps no password
    summary.run_id = store.start_run(cfg.name, config)
    return summary, todo


def _stored(store: Any, job: Job) -> bool:
    """Whether the job's measurement is stored (under the board that measured it: a pool job's row names it)."""
    row = store.job(job.key)
    return bool(row and row["status"] == "ok" and row["bundle_sha256"] and store.has(row["bundle_sha256"], row["device_id"], job.protocol.key()))
