"""Results database (SQLAlchemy; `sqlite:///edgeopt.db` by default, any URL via --db or EDGEOPT_DB).

One measurement per (bundle sha256, device, protocol): a sweep that is killed resumes where it stopped
and never stores a result twice. Every write is one transaction; SQLite runs in WAL mode. PostgreSQL
(`postgresql+psycopg://user@host/db`) is the shared store of a device farm: the same schema, with devices,
bundles and jobs written as INSERT ... ON CONFLICT upserts so two sweeps writing at once cannot collide,
and JSON values cleaned of NaN/Infinity (valid in Python's json, refused by PostgreSQL's).
"""

from __future__ import annotations

import datetime as dt
import math
import os
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from edgeopt.bundle import Manifest
from edgeopt.errors import AlreadyStored, EdgeoptError
from edgeopt.measurement import Measurement, Protocol

DEFAULT_URL = "sqlite:///edgeopt.db"
_SCHEMA_LOCK = 0x6564_6765_6F70  # "edgeop": the advisory-lock id that serialises schema creation on PostgreSQL


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
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # PostgreSQL's INTEGER stops at 2 GiB
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
    outputs_match: Mapped[bool | None] = mapped_column(Boolean(create_constraint=False), nullable=True)
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
    key: Mapped[str] = mapped_column(String, primary_key=True)  # a sweep's 32-hex key or --auto's readable one
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


def _flat_items(d: dict[str, Any], prefix: str) -> list[tuple[str, Any]]:
    """(prefix_key_subkey, value) for every leaf of a nested dict; lists (an interval) stay one value."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        out += _flat_items(v, f"{prefix}_{k}") if isinstance(v, dict) else [(f"{prefix}_{k}", v)]
    return out


def _clean(obj: Any) -> Any:
    """A JSON-safe copy: NaN/Infinity become null (PostgreSQL's json type refuses them), odd types become str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return _clean(obj.tolist())
    return str(obj)


def _num(v: Any) -> float | None:
    """A finite float or None: a NaN would be NULL in SQLite but 'NaN' in PostgreSQL; store the same everywhere."""
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def normalize_url(url: str) -> str:
    """`postgresql://` means psycopg2 to SQLAlchemy; use psycopg (3), the driver edgeopt installs, when
    psycopg2 is absent, so the plain URL a PostgreSQL admin hands out just works."""
    if url.startswith(("postgresql://", "postgres://")):
        import importlib.util

        if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + url.split("://", 1)[1]
        if url.startswith("postgres://"):  # Heroku-style alias SQLAlchemy does not accept
            return "postgresql://" + url.split("://", 1)[1]
    return url


def redact(url: str) -> str:
    """The URL with its password replaced by ***, for messages (a PostgreSQL URL may carry one)."""
    import re

    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


class Store:
    """A handle on the results database. Safe to open many times; the schema is created on first use."""

    def __init__(self, url: str | None = None) -> None:
        self.url = normalize_url(url or default_url())
        if self.url.startswith("sqlite:///") and ":memory:" not in self.url:
            Path(self.url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine: Engine = create_engine(self.url, future=True)
            if self.engine.dialect.name == "sqlite":
                event.listen(self.engine, "connect", _sqlite_pragmas)
            self._create_schema()
        except SQLAlchemyError as e:
            raise EdgeoptError(f"cannot open results database {redact(self.url)}: {str(e).splitlines()[0]}", "check --db / EDGEOPT_DB") from None
        except ModuleNotFoundError as e:
            raise EdgeoptError(f"no database driver for {redact(self.url)}: {e.name} is not installed", "for PostgreSQL: pip install 'psycopg[binary]' and use postgresql+psycopg://user@host/db") from None

    def _create_schema(self) -> None:
        """Create missing tables. Two processes opening a fresh database at once would both CREATE TABLE:
        on PostgreSQL a transaction-scoped advisory lock makes the second wait, then find the tables; SQLite
        has no such lock, so the loser of the race ("already exists") simply looks again."""
        for attempt in range(5):
            try:
                with self.engine.begin() as conn:
                    if self.engine.dialect.name == "postgresql":
                        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK})
                    Base.metadata.create_all(conn)
                return
            except OperationalError as e:
                if "already exists" not in str(e) or attempt == 4:
                    raise

    def has(self, bundle_sha256: str, device_id: str, protocol_key: str, status: str | None = "ok") -> bool:
        """Whether a measurement with this key is stored (with this status; any status for None)."""
        with Session(self.engine) as s:
            q = select(MeasurementRow.id).where(
                MeasurementRow.bundle_sha256 == bundle_sha256,
                MeasurementRow.device_id == device_id,
                MeasurementRow.protocol_key == protocol_key,
            )
            if status is not None:
                q = q.where(MeasurementRow.status == status)
            return s.execute(q).first() is not None

    def add_measurement(self, manifest: Manifest, result: Measurement, replace: bool = False) -> int:
        """Store one measurement (and its bundle and device) in one transaction.

        A failed row for the same key is replaced; an ok row is replaced only with `replace` (a user
        re-profiling on purpose), otherwise refused with AlreadyStored, so a sweep can never count a job
        twice. Two writers racing for one key (two sweeps on one PostgreSQL store) meet the UNIQUE
        constraint: the loser gets AlreadyStored too and its transaction leaves nothing behind."""
        lat = result.latency_ms
        energy = result.energy
        values = {
            "p50_ms": _num(lat.p50), "p90_ms": _num(lat.p90), "p99_ms": _num(lat.p99), "mean_ms": _num(lat.mean),
            "std_ms": _num(lat.std), "cv": _num(result.cv), "runs": result.runs, "init_ms": _num(result.init_ms),
            "peak_rss_mb": _num(result.peak_rss_mb),
            "energy_j": _num(energy.joules_per_inference) if energy is not None else None,
            "energy_meter": energy.meter if energy is not None else None,
            "outputs_match": None if result.outputs_match is None else bool(result.outputs_match),
            "result": _clean(result.to_dict()),
        }
        return self._write(manifest, result.device_id, result.protocol_key, result.protocol, result.device, "ok", None, values, replace)

    def add_failure(self, manifest: Manifest, device_id: str, protocol: Protocol, error: str) -> int:
        """Store that a bundle failed to measure on a device with this protocol (replaced by a later success)."""
        return self._write(manifest, device_id, protocol.key(), {"threads": protocol.threads}, {"uri": device_id}, "failed", error[:2000], {}, False)

    def _write(self, manifest: Manifest, device_id: str, key: str, protocol: dict[str, Any], device: dict[str, Any],
               status: str, error: str | None, values: dict[str, Any], replace: bool) -> int:
        sha = manifest.bundle_sha256
        try:
            return self._write_row(manifest, device_id, key, protocol, device, status, error, values, replace)
        except IntegrityError as e:
            if self.has(sha, device_id, key, status=None):
                raise AlreadyStored(
                    f"a measurement of bundle {sha[:12]} on {device_id} with this protocol is already stored (written by another run just now)",
                    "nothing to do: the stored one stands",
                ) from None
            raise EdgeoptError(f"the results database refused the measurement: {str(e.orig or e).splitlines()[0]}", "this is a bug: report it") from None
        except SQLAlchemyError as e:
            raise EdgeoptError(f"cannot store the measurement in {redact(self.url)}: {str(e).splitlines()[0]}", "check the database server and --db / EDGEOPT_DB") from None

    def _write_row(self, manifest: Manifest, device_id: str, key: str, protocol: dict[str, Any], device: dict[str, Any],
                   status: str, error: str | None, values: dict[str, Any], replace: bool) -> int:
        sha = manifest.bundle_sha256
        dev = _clean(device)
        with Session(self.engine) as s, s.begin():
            old = s.execute(
                select(MeasurementRow).where(
                    MeasurementRow.bundle_sha256 == sha,
                    MeasurementRow.device_id == device_id,
                    MeasurementRow.protocol_key == key,
                )
            ).scalar_one_or_none()
            if old is not None:
                if old.status == "ok" and not replace:
                    raise AlreadyStored(
                        f"a measurement of bundle {sha[:12]} on {device_id} with this protocol is already stored",
                        "change the protocol (runs, threads) or use another --db",
                    )
                s.delete(old)
                s.flush()
            # A failed job's bare {"uri"} keeps the last full snapshot; a real snapshot replaces it.
            _upsert(s, DeviceRow.__table__, {"id": device_id, "info": dev, "updated": _now()}, ["id"], update=bool(set(dev) - {"uri", "emulated"}))
            _upsert(
                s,
                BundleRow.__table__,
                {
                    "sha256": sha,
                    "model": manifest.model.name,
                    "backend": manifest.backend,
                    "precision": manifest.precision,
                    "target": manifest.target,
                    "passes": ",".join(manifest.pass_names),
                    "size_bytes": manifest.size_bytes,
                    "weights": manifest.weights.kind,
                    "fidelity": _clean(manifest.fidelity),
                    "manifest": _clean({k: v for k, v in manifest.to_json().items() if k != "files"}),
                },
                ["sha256"],
                update=True,
            )
            row = MeasurementRow(
                created=_now(), bundle_sha256=sha, device_id=device_id, protocol_key=key, protocol=_clean(protocol),
                status=status, error=error, **values,
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
                        "contamination": (m.result or {}).get("contamination"),
                        "generation": (m.result or {}).get("generation"),
                    }
                )
            return rows

    # -- sweeps: runs and jobs ------------------------------------------------------------------------
    def start_run(self, name: str, config: dict[str, Any]) -> int:
        with Session(self.engine) as s, s.begin():
            row = RunRow(name=name, started=_now(), config=_clean(config))
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
                row.config = {**(row.config or {}), "result": _clean(result)}

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
            q = select(JobRow).order_by(JobRow.updated, JobRow.key)
            if status:
                q = q.where(JobRow.status == status)
            return [_job_dict(r) for r in s.execute(q).scalars()]

    def record_job(self, key: str, spec: dict[str, Any], status: str, **fields: Any) -> None:
        """Insert or update one job's outcome (attempts counted) in one transaction.

        One INSERT ... ON CONFLICT statement on SQLite and PostgreSQL, so two runs recording the same job
        at once both count (attempts + 1 each) instead of one failing on the primary key."""
        set_ = {"status": status, "updated": _now(), **{k: fields[k] for k in ("run_id", "bundle_sha256", "stage", "error", "measurement_id") if k in fields}}
        with Session(self.engine) as s, s.begin():
            dialect = s.get_bind().dialect.name
            if dialect in ("sqlite", "postgresql"):
                t = JobRow.__table__
                ins = _dialect_insert(dialect)(t).values(key=key, attempts=1, **_job_spec(spec), **set_)
                s.execute(ins.on_conflict_do_update(index_elements=["key"], set_={**set_, "attempts": t.c.attempts + 1}))
                return
            r = s.get(JobRow, key)  # other databases: read-modify-write in the transaction
            if r is None:
                r = JobRow(key=key, attempts=0, **_job_spec(spec))
                s.add(r)
            r.attempts = (r.attempts or 0) + 1
            for k, v in set_.items():
                setattr(r, k, v)

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
                for k, v in _flat_items(r.pop("fidelity") or {}, "fidelity"):  # agreement / accuracy are nested (n, ci95)
                    r[k] = v
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


def _dialect_insert(dialect: str) -> Any:
    """The INSERT construct with ON CONFLICT support of SQLite or PostgreSQL (same API in both)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def _upsert(s: Session, table: Any, values: dict[str, Any], keys: list[str], update: bool) -> None:
    """Insert a row, or on a key conflict update it (`update`) or leave it; atomic on SQLite and PostgreSQL."""
    dialect = s.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        ins = _dialect_insert(dialect)(table).values(**values)
        if update:
            ins = ins.on_conflict_do_update(index_elements=keys, set_={k: ins.excluded[k] for k in values if k not in keys})
        else:
            ins = ins.on_conflict_do_nothing(index_elements=keys)
        s.execute(ins)
        return
    where = [table.c[k] == values[k] for k in keys]  # other databases: read, then insert or update
    if s.execute(select(table.c[keys[0]]).where(*where)).first() is None:
        s.execute(table.insert().values(**values))
    elif update:
        s.execute(table.update().where(*where).values(**{k: v for k, v in values.items() if k not in keys}))


def _job_spec(spec: dict[str, Any]) -> dict[str, Any]:
    d = {k: spec.get(k) for k in ("model", "passes", "backend", "precision", "device_id", "protocol_key")}
    d["passes"] = d["passes"] or ""  # NOT NULL: "" is the no-passes pipeline
    return d


def _job_dict(r: JobRow) -> dict[str, Any]:
    return {c.name: getattr(r, c.name) for c in JobRow.__table__.columns}


_SQLITE_BUSY_MS = 10000


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    """Per-connection settings: wait for locks, enforce foreign keys, and put the file in WAL mode.

    WAL is a property of the database file, so only the first connection to a fresh file changes it. That
    change needs the file to itself and SQLite reports "database is locked" at once rather than calling
    the busy handler, so a connection that meets another one mid-change waits and asks again."""
    import sqlite3
    import time

    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    deadline = time.monotonic() + _SQLITE_BUSY_MS / 1000
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cur.execute("PRAGMA journal_mode=WAL")  # an in-memory database stays "memory"
            break
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
        time.sleep(0.01)
    cur.close()
