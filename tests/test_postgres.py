"""The results store on a real PostgreSQL server (tests/_postgres.py starts one on 127.0.0.1) and on SQLite:
one contract for both (idempotent keys, failed rows replaced, device snapshots kept, runs/jobs, export), plus
what only a server shows: concurrent writers, NaN in JSON, the plain `postgresql://` URL, a server that is down."""

from __future__ import annotations

import math
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from _bundles import tiny_bundle
from _postgres import postgres_missing, start_postgres
from _sshd import _free_port as _closed_port  # a port bound, then released: nothing listens

import edgeopt
from edgeopt.errors import EdgeoptError
from edgeopt.measurement import Protocol
from edgeopt.store import Store


@pytest.fixture(scope="module")
def pg():
    why = postgres_missing()
    if why:
        pytest.skip(why)
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'r.db'}"
    return request.getfixturevalue("pg").new_database()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("tiny") / "tiny.bundle")


def _profile(bundle, url: str, runs: int = 3) -> dict:
    return edgeopt.profile(bundle.path, runs=runs, warmup=1, min_seconds=0, db=url)


def test_measurements_round_trip_and_idempotent_keys(url, tiny):
    res = _profile(tiny, url)
    st = Store(url)
    rows = st.measurements()
    assert len(rows) == 1
    r = rows[0]
    assert r["model"] == "tiny_mlp" and r["backend"] == "onnxruntime" and r["status"] == "ok"
    assert r["outputs_match"] is True and r["p50_ms"] > 0 and r["runs"] >= 3
    assert isinstance(r["size_bytes"], int) and r["size_bytes"] > 0 and r["fidelity"] == {"cosine": 1.0}
    assert st.devices()["local"]["cores"] >= 1  # the device snapshot
    _profile(tiny, url)  # same key, profiled again on purpose: replaced, not added
    assert len(st.measurements()) == 1
    _profile(tiny, url, runs=4)  # another protocol: a second row
    assert len(st.measurements()) == 2
    with pytest.raises(EdgeoptError, match="already stored"):
        st.add_measurement(tiny.manifest, res)
    assert len(st.measurements()) == 2 and st.has(tiny.sha256, "local", res["protocol_key"])


def test_failed_row_is_replaced_and_keeps_the_device_snapshot(url, tiny):
    res = _profile(tiny, url)
    st = Store(url)
    cores = st.devices()["local"]["cores"]
    other = Protocol(runs=99, threads=1)
    st.add_failure(tiny.manifest, "local", other, "runner timed out after 600 s")
    assert st.devices()["local"]["cores"] == cores  # a failed job's bare {"uri"} does not wipe the snapshot
    assert [r["error"] for r in st.measurements(status="failed")] == ["runner timed out after 600 s"]
    st.add_measurement(tiny.manifest, replace(res, protocol_key=other.key()))  # the retry succeeds: replaces the failed row
    assert st.measurements(status="failed") == [] and len(st.measurements()) == 2


def test_nan_inf_and_numpy_values_are_stored_as_null(url, tiny):
    res = _profile(tiny, url)
    odd = replace(res, protocol_key="n" * 16, cv=float("nan"), init_ms=np.float32(12.5), runs=np.int64(3),
                  latency_ms=replace(res.latency_ms, p99=float("inf")), platform={"arr": np.arange(3), "path": Path("/x")})
    st = Store(url)
    st.add_measurement(tiny.manifest, odd)
    r = next(r for r in st.measurements() if r["protocol_key"] == "n" * 16)
    assert r["cv"] is None and r["p99_ms"] is None and r["init_ms"] == 12.5 and r["latency_ms"]["p99"] is None
    assert not any(isinstance(v, float) and math.isnan(v) for v in r["latency_ms"].values())


def test_runs_and_jobs(url):
    st = Store(url)
    run = st.start_run("nightly", {"models": ["a"], "threshold": float("nan")})
    spec = {"model": "a", "passes": "quantize:int8", "backend": "tvm", "precision": None, "device_id": "ssh://pi@10.0.0.2", "protocol_key": "p" * 16}
    st.record_job("k" * 32, spec, "failed", run_id=run, stage="push", error="ssh failed: host key refused")
    st.record_job("k" * 32, spec, "ok", run_id=run, stage="measure", error=None, bundle_sha256="b" * 64, measurement_id=7)
    auto_key = "auto:efficientformer_l1:onnxruntime:quantize:int8:local:" + "p" * 16  # --auto's readable key, > 32 chars
    st.record_job(auto_key, {**spec, "model": "efficientformer_l1"}, "failed", run_id=run, stage="fidelity", error="cosine 0.98 < 0.999")
    j = st.job("k" * 32)
    assert j["attempts"] == 2 and j["status"] == "ok" and j["error"] is None and j["measurement_id"] == 7 and j["stage"] == "measure"
    assert [x["key"] for x in st.jobs(status="failed")] == [auto_key]
    st.set_run_result(run, {"front": [{"latency_ms": 1.5, "cosine": float("inf")}]})
    st.finish_run(run)
    assert st.run_config(run)["result"]["front"][0] == {"latency_ms": 1.5, "cosine": None}
    assert st.run_config(run)["threshold"] is None
    assert [(r["name"], r["status"]) for r in st.runs()] == [("nightly", "done")]


def test_export_csv_parquet_and_report(url, tiny, tmp_path):
    import pandas as pd

    _profile(tiny, url)
    st = Store(url)
    st.record_job("j" * 32, {"model": "tiny_mlp", "backend": "onnxruntime", "device_id": "local", "protocol_key": "q" * 16}, "ok")
    assert st.export(tmp_path / "m.csv") == 1 and st.export(tmp_path / "m.parquet") == 1 and st.export(tmp_path / "j.csv", table="jobs") == 1
    df = pd.read_parquet(tmp_path / "m.parquet")
    assert {"latency_p50_ms", "fidelity_cosine", "device_arch", "outputs_match"} <= set(df.columns)
    assert df["model"].tolist() == ["tiny_mlp"] and bool(df["outputs_match"][0]) is True
    assert pd.read_csv(tmp_path / "j.csv")["attempts"].tolist() == [1]
    from edgeopt.report.html import write_html

    page = write_html(st.measurements(), tmp_path / "r.html", db=url).read_text()  # the report reads this store too
    assert "tiny_mlp" in page and "data-plot='pareto'" in page and "data-plot='devices'" in page


def test_concurrent_writers_store_once(url, tiny):
    """Eight writers open a fresh database at once (schema creation races), then race for one measurement key
    and one job key: one measurement, eight attempts, no raw database error."""
    res = edgeopt.profile(tiny.path, runs=3, warmup=1, min_seconds=0, store=False)
    n = 8
    gate = threading.Barrier(n)
    outcome: list[str] = []

    def writer() -> None:
        gate.wait()
        try:
            st = Store(url)
        except Exception as e:  # noqa: BLE001
            outcome.append(f"open: {type(e).__name__}: {e}")
            return
        try:
            st.add_measurement(tiny.manifest, res)
            outcome.append("stored")
        except EdgeoptError as e:
            outcome.append("already" if "already stored" in str(e) else f"error: {e}")
        except Exception as e:  # noqa: BLE001 - a raw database error is the failure this test looks for
            outcome.append(f"raw {type(e).__name__}: {e}")
        st.record_job("r" * 32, {"model": "tiny_mlp", "backend": "onnxruntime", "device_id": "local", "protocol_key": "c" * 16}, "ok")
        st.engine.dispose()

    threads = [threading.Thread(target=writer) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(outcome) == ["already"] * (n - 1) + ["stored"], outcome
    st = Store(url)
    assert len(st.measurements()) == 1
    assert st.job("r" * 32)["attempts"] == n


def test_wal_only_on_sqlite(url):
    from sqlalchemy import text

    st = Store(url)
    with st.engine.connect() as c:
        if st.engine.dialect.name == "sqlite":
            assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        else:
            assert st.engine.dialect.name == "postgresql" and st.engine.dialect.driver == "psycopg"
            assert c.execute(text("SELECT data_type FROM information_schema.columns WHERE table_name='measurements' AND column_name='outputs_match'")).scalar() == "boolean"


def test_sqlite_store_waits_for_a_connection_holding_a_fresh_file(tmp_path):
    """Putting a file in WAL mode needs it to itself, and while another connection is writing SQLite answers
    "locked" at once instead of calling the busy handler: the store waits for the writer, then switches."""
    import sqlite3
    import time

    path = tmp_path / "r.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE other (x)")
    holder.execute("BEGIN IMMEDIATE")  # a writer mid-transaction on a file still in rollback-journal mode
    holder.execute("INSERT INTO other VALUES (1)")
    opened: list[object] = []
    t = threading.Thread(target=lambda: opened.append(_open_or_error(f"sqlite:///{path}")))
    t.start()
    time.sleep(0.5)
    assert not opened, opened  # still waiting for the holder
    holder.execute("COMMIT")
    holder.close()
    t.join(30)
    assert len(opened) == 1 and isinstance(opened[0], Store), opened
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _open_or_error(url: str) -> Store | str:
    try:
        return Store(url)
    except EdgeoptError as e:
        return str(e)


def test_plain_postgresql_url_and_a_server_that_is_down(pg):
    url = pg.new_database()
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    st = Store(plain)  # SQLAlchemy would pick psycopg2 (absent): the store picks psycopg
    assert st.engine.dialect.driver == "psycopg" and st.runs() == []
    with pytest.raises(EdgeoptError, match="cannot open results database") as e:
        Store(f"postgresql+psycopg://edgeopt:s3cret@127.0.0.1:{_closed_port()}/x?connect_timeout=3")
    assert "s3cret" not in str(e.value) and "edgeopt:***@127.0.0.1" in str(e.value)


def test_sweep_on_postgresql_resumes_and_records_failures(pg, tiny):
    """A real sweep (local device and an unreachable ssh:// one) into PostgreSQL, run twice: the stored job
    is skipped, the failed ones are retried. The bundle is placed where the sweep compiles to, so its verified
    copy is reused instead of compiled (the sweep's own resume path)."""
    import shutil

    import yaml

    from edgeopt.orchestrate.sweep import CompileUnit, load_sweep, run_sweep

    url = pg.new_database()
    work = Path(tempfile.mkdtemp(prefix="pg-sweep-"))
    out = work / "bundles"
    shutil.copytree(tiny.path, CompileUnit("tiny_mlp", "", "onnxruntime", None).folder(str(out)))
    cfg = {"name": "pg", "models": ["tiny_mlp"], "devices": ["local", f"ssh://root@127.0.0.1:{_closed_port()}"], "threads": [1],
           "protocol": {"warmup": 1, "runs": 3, "min_seconds": 0.0, "cooldown": False}, "compile": {"workers": 1, "out": str(out)},
           "serial_devices": True, "db": url}
    (work / "s.yaml").write_text(yaml.safe_dump(cfg))
    c = load_sweep(work / "s.yaml")
    s1 = run_sweep(c, progress=False)
    s2 = run_sweep(c, progress=False)
    assert (s1.total, s1.ok, s1.failed) == (2, 1, 1), s1.failures
    assert (s2.skipped, s2.ok, s2.failed) == (1, 0, 1)
    st = Store(url)
    assert len(st.measurements()) == 1 and st.measurements()[0]["device"] == "local"
    [failed] = st.jobs(status="failed")
    assert failed["stage"] == "connect" and failed["attempts"] == 2 and "unreachable" in failed["error"]
    assert [r["status"] for r in st.runs()] == ["done", "done"]
    shutil.rmtree(work, ignore_errors=True)
