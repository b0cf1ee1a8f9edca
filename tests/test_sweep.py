"""Sweeps: a real compile, the local device, the loopback ssh:// device (real sshd) and an unreachable one;
failures recorded with reasons, re-runs retry only failed/missing jobs, a killed sweep resumes, no duplicates."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from edgeopt.errors import SpecError
from edgeopt.orchestrate.sweep import load_sweep, run_sweep
from edgeopt.store import Store

MODEL = "efficientformerv2_s0"


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """One compile folder for the module: the second sweep reuses the verified bundle instead of compiling."""
    return tmp_path_factory.mktemp("bundles")


def test_bad_sweep_files(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("models: [a]\nbackend: [onnxruntime]\n")  # typo: backend
    with pytest.raises(SpecError, match="backend: Extra inputs"):
        load_sweep(p)
    p.write_text("models: []\n")
    with pytest.raises(SpecError, match="models"):
        load_sweep(p)
    p.write_text("models: [a\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_sweep(p)


def test_sweep_file_takes_every_protocol_field(tmp_path):
    """The sweep file's protocol section is the Protocol type itself: every field is accepted, typed and
    carried into the measurement's protocol (and a field Protocol lacks is refused)."""
    from dataclasses import fields

    from edgeopt.measurement import Protocol

    img = tmp_path / "img.png"
    img.write_bytes(b"not read here")
    values = {"warmup": 2, "runs": 7, "min_seconds": 0.25, "threads": 3, "timeout": 90.0, "pin_cpus": "0", "end_to_end": "img.png",
              "cooldown": False, "cooldown_timeout_s": 30.0, "cooldown_tolerance_c": 1.5, "throttle_c": 80.0, "idle_seconds": 0.5,
              "max_foreign_share": 0.2, "remeasure": 1, "strict": True, "new_tokens": 64, "sustained": 2}
    assert set(values) == {f.name for f in fields(Protocol)}, "a Protocol field this test does not set"
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"models": [MODEL], "protocol": values}))
    (proto,) = load_sweep(p).protocols().values()
    assert proto == Protocol(**{**values, "end_to_end": str(img)})  # relative to the sweep file
    p.write_text(yaml.safe_dump({"models": [MODEL], "protocol": {**values, "repeats": 3}}))
    with pytest.raises(SpecError, match="protocol.repeats: Extra inputs"):
        load_sweep(p)
    p.write_text(yaml.safe_dump({"models": [MODEL], "protocol": {"runs": "many"}}))
    with pytest.raises(SpecError, match="protocol.runs"):
        load_sweep(p)


def test_sweep_failures_retry_and_resume(sshd, bundles, tmp_path):
    db = f"sqlite:///{tmp_path / 'sweep.db'}"
    ssh_dev = {"uri": sshd.uri, "identity": str(sshd.identity), "known_hosts": str(sshd.known_hosts), "python": sys.executable, "remote_dir": str(tmp_path / "board")}
    cfg_data = {
        "name": "t", "models": [MODEL, "no_such_model"], "pipelines": [""], "backends": ["onnxruntime"],
        "devices": ["local", ssh_dev, f"ssh://root@127.0.0.1:{_closed_port()}"], "threads": [1],
        "protocol": {"warmup": 1, "runs": 3, "min_seconds": 0.0}, "compile": {"workers": 1, "samples": 1, "out": str(bundles)},
        "serial_devices": True,
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg_data))
    cfg = load_sweep(tmp_path / "s.yaml")
    s1 = run_sweep(cfg, db=db, trust_new_host=True, progress=False)
    assert s1.total == 6 and s1.ok == 2 and s1.failed == 4, s1.failures
    st = Store(db)
    failed = {(j["model"], j["device_id"].split(":")[0], j["stage"]): j["error"] for j in st.jobs(status="failed")}
    assert any(k[2] == "connect" and "unreachable" in v for k, v in failed.items())
    assert any(k[0] == "no_such_model" and k[2] == "compile" and "unknown model" in v for k, v in failed.items())
    rows = st.measurements()
    assert {r["device"] for r in rows} == {"local", ssh_dev["uri"]} and all(r["outputs_match"] for r in rows)
    assert (tmp_path / "known_hosts").exists() is False and sshd.known_hosts.read_text()  # trusted once, stored

    # Re-run: the 2 stored jobs are skipped, only the 4 failed ones are retried (and fail again).
    s2 = run_sweep(cfg, db=db, trust_new_host=False, progress=False)
    assert (s2.skipped, s2.ok, s2.failed) == (2, 0, 4)
    assert all(j["attempts"] == 2 for j in st.jobs(status="failed"))
    assert len(st.measurements()) == 2
    con = sqlite3.connect(tmp_path / "sweep.db")
    dup = con.execute("SELECT COUNT(*) FROM (SELECT bundle_sha256, device_id, protocol_key, COUNT(*) c FROM measurements GROUP BY 1,2,3 HAVING c > 1)").fetchone()[0]
    assert dup == 0
    # Export
    assert st.export(tmp_path / "m.csv") == 2  # failed jobs had no bundle: they live in the jobs table
    assert st.export(tmp_path / "m.parquet") == 2
    assert st.export(tmp_path / "jobs.csv", table="jobs") == 6
    import pandas as pd

    df = pd.read_parquet(tmp_path / "m.parquet")
    assert {"latency_p50_ms", "fidelity_cosine", "device_arch"} <= set(df.columns)


def test_killed_sweep_resumes_without_duplicates(bundles, tmp_path):
    """`edgeopt bench` killed (SIGKILL) after its first stored result, then run again."""
    out = bundles

    cfg = {
        "name": "k", "models": [MODEL], "pipelines": [""], "backends": ["onnxruntime"], "devices": ["local"],
        "threads": [1, 2, None], "protocol": {"warmup": 1, "runs": 3, "min_seconds": 1.0}, "compile": {"workers": 1, "samples": 1, "out": str(out)},
        "db": f"sqlite:///{tmp_path / 'k.db'}",
    }
    (tmp_path / "k.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "edgeopt.cli", "bench", str(tmp_path / "k.yaml")]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    dbfile = tmp_path / "k.db"
    deadline = time.time() + 400
    n = 0
    while time.time() < deadline and p.poll() is None:
        time.sleep(0.3)
        if dbfile.exists():
            try:
                n = sqlite3.connect(dbfile).execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
            except sqlite3.OperationalError:
                n = 0
            if n >= 1:
                break
    assert p.poll() is None, "the sweep finished before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    before = sqlite3.connect(dbfile).execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
    assert 1 <= before < 3
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    con = sqlite3.connect(dbfile)
    after = con.execute("SELECT COUNT(*) FROM measurements WHERE status='ok'").fetchone()[0]
    dup = con.execute("SELECT COUNT(*) FROM (SELECT bundle_sha256, device_id, protocol_key, COUNT(*) c FROM measurements GROUP BY 1,2,3 HAVING c > 1)").fetchone()[0]
    assert after == 3 and dup == 0
    assert f"{before} already stored" in r.stdout.replace("\n", " ") or "already stored" in r.stdout


def test_pool_of_boards_on_one_host(bundles, tmp_path):
    """Without Ray: a sweep naming a kind spreads its jobs over the kind's boards (one thread per board); a board
    killed after its first result hands its job to the other; every result stored once."""
    import threading

    import psutil
    from _sshd import sshd_missing, start_sshd

    from edgeopt.harness.devices.profiles import load_boards
    from edgeopt.orchestrate.sweep import SweepConfig, board_device_id

    if sshd_missing():
        pytest.skip(sshd_missing())
    servers = [start_sshd(tmp_path / f"sshd-{n}") for n in "ab"]
    try:
        profiles = {f"loop-{n}": {"uri": s.uri, "identity": str(s.identity), "known_hosts": str(s.trusted_known_hosts()), "python": sys.executable,
                                  "remote_dir": str(tmp_path / f"home-{n}"), "kind": "loop"} for n, s in zip("ab", servers, strict=True)}
        ids = {n: board_device_id(b) for n, b in load_boards(profiles).items()}
        dbfile = tmp_path / "pool.db"
        cfg = SweepConfig.model_validate({
            "name": "pool", "models": [MODEL], "backends": ["onnxruntime"], "devices": ["kind:loop"], "threads": [1, 2, 3, 4, 5, 6],
            "protocol": {"warmup": 1, "runs": 3, "min_seconds": 0.0, "cooldown": False, "idle_seconds": 0.0},
            "compile": {"workers": 1, "samples": 1, "out": str(bundles)}, "db": f"sqlite:///{dbfile}",
        })
        done = threading.Event()

        def kill_b_after_its_first_result() -> None:
            while not done.is_set():
                try:
                    n = sqlite3.connect(dbfile).execute("SELECT COUNT(*) FROM measurements WHERE status='ok' AND device_id=?", (ids["loop-b"],)).fetchone()[0]
                except sqlite3.OperationalError:
                    n = 0
                if n >= 1:
                    kids = psutil.Process(servers[1].proc.pid).children(recursive=True)
                    servers[1].stop()
                    for k in kids:
                        k.kill()
                    return
                time.sleep(0.05)

        watcher = threading.Thread(target=kill_b_after_its_first_result, daemon=True)
        watcher.start()
        s = run_sweep(cfg, progress=False, profiles=profiles)
        done.set()
        watcher.join()
        assert (s.total, s.ok, s.failed) == (6, 6, 0), s.failures
        con = sqlite3.connect(dbfile)
        per = dict(con.execute("SELECT device_id, COUNT(*) FROM measurements WHERE status='ok' GROUP BY 1").fetchall())
        assert set(per) == set(ids.values()) and sum(per.values()) == 6, per
        assert servers[1].proc.poll() is not None and s.retried >= 1  # b's next job went to a
        assert len(Store(cfg.db).jobs()) == 6 and all(j["status"] == "ok" and j["device_id"] in ids.values() for j in Store(cfg.db).jobs())
        s2 = run_sweep(cfg, progress=False, profiles=profiles)
        assert (s2.skipped, s2.ok, s2.failed) == (6, 0, 0)
    finally:
        for srv in servers:
            if srv.proc.poll() is None:
                srv.stop()
