"""Results database (SQLAlchemy; `sqlite:///edgeopt.db` by default, any URL via --db or EDGEOPT_DB).

One measurement per (bundle sha256, device, protocol): a sweep that is killed resumes where it stopped
and never stores a result twice. Every write is one transaction; SQLite runs in WAL mode.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from edgeopt.errors import EdgeoptError

DEFAULT_URL = "sqlite:///edgeopt.db"


def default_url() -> str:
    return os.environ.get("EDGEOPT_DB", DEFAULT_URL)


class Base(DeclarativeBase):
    pass


class DeviceRow(Base):
    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String, primary_key=True)  # the device URI
    info: Mapped[dict] = mapped_column(JSON, default=dict)
    updated: Mapped[str] = mapped_column(String)


class BundleRow(Base):
    __tablename__ = "bundles"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String, index=True)
    backend: Mapped[str] = mapped_column(String)
    precision: Mapped[str | None] = mapped_column(String, nullable=True)
    target: Mapped[str | None] = mapped_column(String, nullable=True)
    passes: Mapped[str] = mapped_column(String, default="")
    size_bytes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    weights: Mapped[str | None] = mapped_column(String, nullable=True)
    fidelity: Mapped[dict] = mapped_column(JSON, default=dict)
    manifest: Mapped[dict] = mapped_column(JSON, default=dict)


class MeasurementRow(Base):
    __tablename__ = "measurements"
    __table_args__ = (UniqueConstraint("bundle_sha256", "device_id", "protocol_key", name="uq_measurement"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created: Mapped[str] = mapped_column(String)
    bundle_sha256: Mapped[str] = mapped_column(ForeignKey("bundles.sha256"), index=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    protocol_key: Mapped[str] = mapped_column(String(16))
    protocol: Mapped[dict] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String, default="ok")  # ok | failed
    error: Mapped[str | None] = mapped_column(String, nullable=True)
    p50_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p90_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p99_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    mean_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    std_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    cv: Mapped[float | None] = mapped_column(Float, nullable=True)
    runs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    init_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    peak_rss_mb: Mapped[float | None] = mapped_column(Float, nullable=True)
    energy_j: Mapped[float | None] = mapped_column(Float, nullable=True)
    energy_meter: Mapped[str | None] = mapped_column(String, nullable=True)
    outputs_match: Mapped[bool | None] = mapped_column(Integer, nullable=True)
    result: Mapped[dict] = mapped_column(JSON, default=dict)


class RunRow(Base):
    """One invocation of a sweep (or a profile session): when, what config, how it ended."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String, default="")
    started: Mapped[str] = mapped_column(String)
    finished: Mapped[str | None] = mapped_column(String, nullable=True)
    status: Mapped[str] = mapped_column(String, default="running")  # running | done | interrupted
    config: Mapped[dict] = mapped_column(JSON, default=dict)


class JobRow(Base):
    """One sweep job (model x pipeline x backend x precision x device x protocol), ok or failed with its reason.

    Keyed by the job's spec so a failed compile (which has no bundle sha256 yet) is remembered too; a
    re-run retries exactly the failed and missing jobs."""

    __tablename__ = "jobs"
    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True, index=True)
    model: Mapped[str] = mapped_column(String)
    passes: Mapped[str] = mapped_column(String, default="")
    backend: Mapped[str] = mapped_column(String)
    precision: Mapped[str | None] = mapped_column(String, nullable=True)
    device_id: Mapped[str] = mapped_column(String, index=True)
    protocol_key: Mapped[str] = mapped_column(String(16))
    bundle_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String)  # ok | failed
    stage: Mapped[str | None] = mapped_column(String, nullable=True)  # compile | push | measure
    error: Mapped[str | None] = mapped_column(String, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    measurement_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated: Mapped[str] = mapped_column(String)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    """A handle on the results database. Safe to open many times; the schema is created on first use."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_url()
        if self.url.startswith("sqlite:///") and ":memory:" not in self.url:
            Path(self.url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine: Engine = create_engine(self.url, future=True)
            if self.engine.dialect.name == "sqlite":
                event.listen(self.engine, "connect", _sqlite_pragmas)
            Base.metadata.create_all(self.engine)
        except SQLAlchemyError as e:
            raise EdgeoptError(f"cannot open results database {self.url}: {str(e).splitlines()[0]}", "check --db / EDGEOPT_DB") from None
        except ModuleNotFoundError as e:
            raise EdgeoptError(f"no database driver for {self.url}: {e.name} is not installed", "for PostgreSQL: pip install 'psycopg[binary]' and use postgresql+psycopg://user@host/db") from None

    def has(self, bundle_sha256: str, device_id: str, protocol_key: str, status: str = "ok") -> bool:
        with Session(self.engine) as s:
            q = select(MeasurementRow.id).where(
                MeasurementRow.bundle_sha256 == bundle_sha256,
                MeasurementRow.device_id == device_id,
                MeasurementRow.protocol_key == protocol_key,
                MeasurementRow.status == status,
            )
            return s.execute(q).first() is not None

    def add_measurement(
        self, manifest: dict[str, Any], result: dict[str, Any], status: str = "ok", error: str | None = None, replace: bool = False
    ) -> int:
        """Store one measurement (and its bundle and device) in one transaction.

        A failed row for the same key is replaced; an ok row is replaced only with `replace` (a user
        re-profiling on purpose), otherwise refused, so a sweep can never count a job twice."""
        lat = result.get("latency_ms") or {}
        energy = result.get("energy") or {}
        dev = result.get("device") or {}
        device_id = dev.get("uri") or result.get("device_id") or "unknown"
        key = result["protocol_key"]
        with Session(self.engine) as s, s.begin():
            old = s.execute(
                select(MeasurementRow).where(
                    MeasurementRow.bundle_sha256 == manifest["bundle_sha256"],
                    MeasurementRow.device_id == device_id,
                    MeasurementRow.protocol_key == key,
                )
            ).scalar_one_or_none()
            if old is not None:
                if old.status == "ok" and not replace:
                    raise EdgeoptError(
                        f"a measurement of bundle {manifest['bundle_sha256'][:12]} on {device_id} with this protocol is already stored",
                        "change the protocol (runs, threads) or use another --db",
                    )
                s.delete(old)
                s.flush()
            known = s.get(DeviceRow, device_id)
            if known is None or set(dev) - {"uri", "emulated"}:  # a failed job's bare {"uri"} keeps the last snapshot
                s.merge(DeviceRow(id=device_id, info=dev, updated=_now()))
            s.merge(
                BundleRow(
                    sha256=manifest["bundle_sha256"],
                    model=manifest["model"]["name"],
                    backend=manifest["backend"],
                    precision=manifest.get("precision"),
                    target=manifest.get("target"),
                    passes=",".join(p["name"] for p in manifest.get("passes", [])),
                    size_bytes=manifest.get("size_bytes"),
                    weights=(manifest.get("weights") or {}).get("kind"),
                    fidelity=manifest.get("fidelity", {}),
                    manifest={k: v for k, v in manifest.items() if k != "files"},
                )
            )
            row = MeasurementRow(
                created=_now(),
                bundle_sha256=manifest["bundle_sha256"],
                device_id=device_id,
                protocol_key=key,
                protocol=result.get("protocol", {}),
                status=status,
                error=error,
                p50_ms=lat.get("p50"),
                p90_ms=lat.get("p90"),
                p99_ms=lat.get("p99"),
                mean_ms=lat.get("mean"),
                std_ms=lat.get("std"),
                cv=result.get("cv"),
                runs=result.get("runs"),
                init_ms=result.get("init_ms"),
                peak_rss_mb=result.get("peak_rss_mb"),
                energy_j=energy.get("joules_per_inference") if isinstance(energy, dict) else None,
                energy_meter=energy.get("meter") if isinstance(energy, dict) else None,
                outputs_match=result.get("outputs_match"),
                result=json.loads(json.dumps(result, default=str)),
            )
            s.add(row)
            s.flush()
            return row.id

    def measurements(self, model: str | None = None, device: str | None = None, status: str | None = "ok") -> list[dict[str, Any]]:
        """Measurements joined with their bundle, newest first, as plain dicts."""
        with Session(self.engine) as s:
            q = select(MeasurementRow, BundleRow).join(BundleRow, BundleRow.sha256 == MeasurementRow.bundle_sha256)
            if model:
                q = q.where(BundleRow.model == model)
            if device:
                q = q.where(MeasurementRow.device_id == device)
            if status:
                q = q.where(MeasurementRow.status == status)
            q = q.order_by(MeasurementRow.id.desc())
            rows = []
            for m, b in s.execute(q).all():
                rows.append(
                    {
                        "id": m.id, "created": m.created, "model": b.model, "backend": b.backend, "precision": b.precision,
                        "passes": b.passes, "target": b.target, "size_bytes": b.size_bytes, "weights": b.weights,
                        "fidelity": b.fidelity, "bundle_sha256": m.bundle_sha256, "device": m.device_id,
                        "protocol_key": m.protocol_key, "status": m.status, "error": m.error,
                        "p50_ms": m.p50_ms, "p90_ms": m.p90_ms, "p99_ms": m.p99_ms, "mean_ms": m.mean_ms, "std_ms": m.std_ms,
                        "cv": m.cv, "runs": m.runs, "init_ms": m.init_ms, "peak_rss_mb": m.peak_rss_mb,
                        "energy_j": m.energy_j, "energy_meter": m.energy_meter,
                        "outputs_match": None if m.outputs_match is None else bool(m.outputs_match),
                        "latency_ms": (m.result or {}).get("latency_ms"), "threads": (m.protocol or {}).get("threads"),
                        "throttled": (m.result or {}).get("throttled"), "energy_reason": (m.result or {}).get("energy_reason"),
                        "e2e_p50_ms": (((m.result or {}).get("e2e") or {}).get("end_to_end") or {}).get("latency_ms", {}).get("p50"),
                    }
                )
            return rows

    # -- sweeps: runs and jobs ------------------------------------------------------------------------
    def start_run(self, name: str, config: dict[str, Any]) -> int:
        with Session(self.engine) as s, s.begin():
            row = RunRow(name=name, started=_now(), config=json.loads(json.dumps(config, default=str)))
            s.add(row)
            s.flush()
            return row.id

    def finish_run(self, run_id: int, status: str = "done") -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(RunRow, run_id)
            if row is not None:
                row.finished, row.status = _now(), status

    def set_run_result(self, run_id: int, result: dict[str, Any]) -> None:
        """Attach a run's outcome (e.g. an --auto search's Pareto front) to its config, in one transaction."""
        with Session(self.engine) as s, s.begin():
            row = s.get(RunRow, run_id)
            if row is not None:
                row.config = {**(row.config or {}), "result": json.loads(json.dumps(result, default=str))}

    def run_config(self, run_id: int) -> dict[str, Any]:
        with Session(self.engine) as s:
            row = s.get(RunRow, run_id)
            return dict(row.config or {}) if row is not None else {}

    def runs(self) -> list[dict[str, Any]]:
        with Session(self.engine) as s:
            return [
                {"id": r.id, "name": r.name, "started": r.started, "finished": r.finished, "status": r.status}
                for r in s.execute(select(RunRow).order_by(RunRow.id)).scalars()
            ]

    def job(self, key: str) -> dict[str, Any] | None:
        with Session(self.engine) as s:
            r = s.get(JobRow, key)
            return None if r is None else _job_dict(r)

    def jobs(self, status: str | None = None) -> list[dict[str, Any]]:
        with Session(self.engine) as s:
            q = select(JobRow).order_by(JobRow.updated)
            if status:
                q = q.where(JobRow.status == status)
            return [_job_dict(r) for r in s.execute(q).scalars()]

    def record_job(self, key: str, spec: dict[str, Any], status: str, **fields: Any) -> None:
        """Insert or update one job's outcome (attempts counted) in one transaction."""
        with Session(self.engine) as s, s.begin():
            r = s.get(JobRow, key)
            if r is None:
                r = JobRow(key=key, attempts=0, **{k: spec.get(k) for k in ("model", "passes", "backend", "precision", "device_id", "protocol_key")})
                s.add(r)
            r.status, r.updated, r.attempts = status, _now(), (r.attempts or 0) + 1
            for k in ("run_id", "bundle_sha256", "stage", "error", "measurement_id"):
                if k in fields:
                    setattr(r, k, fields[k])

    def devices(self) -> dict[str, dict[str, Any]]:
        """Device id -> its last stored snapshot."""
        with Session(self.engine) as s:
            return {d.id: d.info for d in s.execute(select(DeviceRow)).scalars()}

    # -- export ---------------------------------------------------------------------------------------
    def export(self, path: str | os.PathLike, table: str = "measurements") -> int:
        """Write measurements (flattened, with bundle and device columns) or jobs to CSV or Parquet by suffix.

        Written to a temporary file and renamed, so an interrupted export leaves nothing half-written."""
        import pandas as pd

        from edgeopt._util import atomic_write_bytes

        p = Path(path)
        if table == "measurements":
            rows = self.measurements(status=None)
            devs = self.devices()
            for r in rows:
                for k, v in (r.pop("fidelity") or {}).items():
                    r[f"fidelity_{k}"] = v
                for k, v in (r.pop("latency_ms") or {}).items():
                    r[f"latency_{k}_ms"] = v
                d = devs.get(r["device"], {})
                for k in ("arch", "cpu_model", "cores", "memory_mb", "os"):
                    r[f"device_{k}"] = d.get(k)
        elif table == "jobs":
            rows = self.jobs()
        else:
            raise EdgeoptError(f"unknown table {table!r}", "export measurements or jobs")
        df = pd.DataFrame(rows)
        suffix = p.suffix.lower()
        if suffix == ".csv":
            data = df.to_csv(index=False).encode()
        elif suffix in (".parquet", ".pq"):
            import io

            buf = io.BytesIO()
            df.to_parquet(buf, index=False)
            data = buf.getvalue()
        else:
            raise EdgeoptError(f"cannot export to {p.name}: unknown format", "use a .csv or .parquet file name")
        atomic_write_bytes(p, data)
        return len(df)


def _job_dict(r: JobRow) -> dict[str, Any]:
    return {c.name: getattr(r, c.name) for c in JobRow.__table__.columns}


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()
