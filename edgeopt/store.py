"""Results database (SQLAlchemy; `sqlite:///edgeopt.db` by default, any URL via --db or EDGEOPT_DB).

One measurement per (bundle sha256, device, protocol): a sweep that is killed resumes where it stopped
and never stores a result twice. Every write is one transaction; SQLite runs in WAL mode.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, UniqueConstraint, create_engine, event, select
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


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    """A handle on the results database. Safe to open many times; the schema is created on first use."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_url()
        try:
            self.engine: Engine = create_engine(self.url, future=True)
            if self.engine.dialect.name == "sqlite":
                event.listen(self.engine, "connect", _sqlite_pragmas)
            Base.metadata.create_all(self.engine)
        except SQLAlchemyError as e:
            raise EdgeoptError(f"cannot open results database {self.url}: {str(e).splitlines()[0]}", "check --db / EDGEOPT_DB") from None

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
                    }
                )
            return rows


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()
