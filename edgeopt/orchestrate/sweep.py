"""Sweeps: models x pass pipelines x backends x precisions x devices x thread counts, resumable.

    edgeopt bench examples/sweep.yaml

The policy: validate the sweep file, expand it into jobs (`Job.hashed`, keyed by spec), skip the ones whose
measurement is stored, and hand the rest to the scheduler (schedule.py), which compiles in worker processes
and measures one job at a time per device through the shared job runner. An unreachable device fails its
jobs with the reason; the sweep goes on with the others. The YAML format is documented in docs/sweeps.md.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from edgeopt.errors import EdgeoptError, SpecError
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
    db: str | None = None
    serial_devices: bool = False
    compile_first: bool = False

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
    e2e = cfg.protocol.end_to_end  # type: ignore[attr-defined]
    if e2e and not Path(e2e).is_absolute():
        cfg.protocol.end_to_end = str(base / e2e)  # type: ignore[attr-defined]
    return cfg


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
    from edgeopt.orchestrate.schedule import DeviceSlot, Scheduler, connect
    from edgeopt.orchestrate.ui import SweepProgress, console
    from edgeopt.store import Store, redact

    store = Store(db or cfg.db)
    summary = SweepSummary()
    slots: dict[str, DeviceSlot] = connect(cfg.devices, profiles, trust_new_host, snapshot=not dry_run)
    protocols = cfg.protocols()
    jobs = [Job.hashed(u, did, p) for u in cfg.units() for did in slots for p in protocols.values()]
    summary.total = len(jobs)
    todo = [j for j in jobs if not _stored(store, j)]
    summary.skipped = len(jobs) - len(todo)
    if dry_run:
        for j in todo:
            console.print(f"todo: {j.label()}")
        console.print(f"{len(todo)} to run, {summary.skipped} already stored, {summary.total} in all")
        return summary
    config = cfg.model_dump()
    config["db"] = redact(config["db"]) if config.get("db") else None  # the runs table keeps no password
    summary.run_id = store.start_run(cfg.name, config)
    with SweepProgress(enabled=progress) as ui:
        sched = Scheduler(store, summary, slots, ui, serial_devices=cfg.serial_devices, compile_first=cfg.compile_first)
        sched.run(todo, cfg.compile)
    return summary


def _stored(store: Any, job: Job) -> bool:
    row = store.job(job.key)
    return bool(row and row["status"] == "ok" and row["bundle_sha256"] and store.has(row["bundle_sha256"], job.device_id, job.protocol.key()))
