"""The device lab: boards by devices.yaml name and kind, artifacts built for the board, and a sweep spread over a
pool of boards on a local Ray cluster, with real parts only: three real OpenSSH servers on 127.0.0.1 (three
boards of one kind, each with its own remote folder), a Ray cluster started here, real compiles of the tiny test
model (tests/_tiny.py) in Ray tasks, the real runner on every board, and one board killed mid-sweep."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from _bundles import tiny_bundle
from _sshd import Sshd, sshd_missing, start_sshd

from edgeopt.errors import EdgeoptError
from edgeopt.harness.devices import open_device
from edgeopt.harness.devices.profiles import BoardSpec, find_board, load_boards
from edgeopt.orchestrate.boards import plan_build, tvm_target_for
from edgeopt.orchestrate.sweep import SweepConfig, resolve_targets

TESTS = Path(__file__).resolve().parent
MODEL = "tiny_backend_test"  # registered by tests/_tiny.py (in Ray's workers by their setup hook)
BOARDS = ("loop-a", "loop-b", "loop-c")
needs_sshd = pytest.mark.skipif(sshd_missing() is not None, reason=str(sshd_missing()))


def _entry(s: Sshd, remote: Path, **extra) -> dict:
    return {"uri": s.uri, "identity": str(s.identity), "known_hosts": str(s.trusted_known_hosts()), "python": sys.executable,
            "remote_dir": str(remote), **extra}


def _stop_hard(s: Sshd) -> None:
    """The board drops off the network: its sshd and every session it serves (children of the sshd we started)."""
    import psutil

    kids = psutil.Process(s.proc.pid).children(recursive=True)
    s.stop()
    for k in kids:
        try:
            k.kill()
        except psutil.NoSuchProcess:
            pass


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- names, kinds, what is built for a board (no Ray) -------------------------------------------------------------
def test_unknown_device_name_gives_closest_names(tmp_path, monkeypatch):
    (tmp_path / "devices.yaml").write_text(yaml.safe_dump({"devices": {
        "rpi4-a": {"uri": "ssh://pi@10.0.0.1", "kind": "rpi4"}, "rpi4-b": {"uri": "ssh://pi@10.0.0.2", "kind": "rpi4"},
        "orin": {"uri": "ssh://ubuntu@orin.local"}}}))
    monkeypatch.setenv("EDGEOPT_DEVICES", str(tmp_path / "devices.yaml"))
    with pytest.raises(EdgeoptError, match=r"unknown device 'rpi4-x'.*did you mean (rpi4-a, rpi4-b|rpi4-b, rpi4-a)") as e:
        open_device("rpi4-x")
    assert "\n" not in str(e.value)
    with pytest.raises(EdgeoptError, match="is a kind of board, not one board"):
        open_device("rpi4")
    import edgeopt

    with pytest.raises(EdgeoptError, match="did you mean orin"):
        edgeopt.profile(tiny_bundle(tmp_path / "t.bundle").path, device="orinn", store=False)
    b = find_board("rpi4-b")
    assert (b.name, b.kind, b.uri) == ("rpi4-b", "rpi4", "ssh://pi@10.0.0.2") and "kind" not in b.options
    assert open_device("local").id == "local"  # a URI needs no devices.yaml entry


def test_kind_with_no_boards_fails_before_anything(tmp_path):
    profiles = {"rpi4-a": {"uri": "ssh://pi@10.0.0.1", "kind": "rpi4"}}
    for spec in ("kind:rpi5", {"kind": "rpi5"}):
        cfg = SweepConfig(models=[MODEL], devices=[spec])
        with pytest.raises(EdgeoptError, match=r"no board of kind 'rpi5'.*did you mean rpi4"):
            resolve_targets(cfg, profiles)
    (t,) = resolve_targets(SweepConfig(models=[MODEL], devices=["rpi4"]), profiles)  # a bare kind is a pool too
    assert (t.id, t.kind, [b.name for b in t.boards]) == ("kind:rpi4", "rpi4", ["rpi4-a"])
    from edgeopt.orchestrate.lab import run_lab

    cfg = SweepConfig(models=[MODEL], devices=["kind:nope"], db=f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(EdgeoptError, match="no board of kind 'nope'"):
        run_lab(cfg, "local", profiles=profiles)
    import ray

    assert not ray.is_initialized()  # refused before the cluster was started


def test_built_for_the_board():
    """The snapshot decides: TVM for the arm core (CPU part or model), portable graphs as they are, only the
    runtimes the board has; a board no requested backend can build for is an error naming the reasons."""
    rpi4 = {"arch": "aarch64", "cpu_part": "0xd08", "runtimes": {"onnxruntime": "1.20", "apache-tvm": "0.27", "numpy": "2"}}
    b = plan_build(rpi4, ["onnxruntime", "tvm", "tflite"], label="rpi4")
    assert b.backends == ("onnxruntime", "tvm") and b.tvm_target == "cortex-a72" and b.target("onnxruntime") is None
    assert "rpi4 has no ai-edge-litert/tflite-runtime runtime" in (b.why_not("tflite") or "")
    assert tvm_target_for({"arch": "aarch64", "cpu_model": "cortex-a76 (emulated by qemu-user 8.2)"}) == "cortex-a76"
    assert tvm_target_for({"arch": "arm64"}) == "aarch64"
    assert tvm_target_for(rpi4, override="cortex-a76") == "cortex-a76"  # devices.yaml `target:` wins
    with pytest.raises(EdgeoptError, match=r"no backend can build for riscv-board \(riscv64\).*tvm cannot build"):
        plan_build({"arch": "riscv64", "runtimes": {"apache-tvm": "0.27"}}, ["tvm"], label="riscv-board")
    with pytest.raises(EdgeoptError, match="no backend can build for"):
        plan_build(rpi4, ["tflite"], BoardSpec("ssh://pi@x", name="pi"))


def test_sweep_without_cluster_never_imports_ray(tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"models": [MODEL], "devices": ["local"], "db": f"sqlite:///{tmp_path / 'd.db'}"}))
    code = ("import sys; from edgeopt.orchestrate.sweep import load_sweep, run_sweep; import edgeopt.orchestrate.cli, edgeopt.cli; "
            f"run_sweep(load_sweep({str(tmp_path / 's.yaml')!r}), dry_run=True, progress=False); "
            "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_ray_address_that_does_not_answer(tmp_path):
    from edgeopt.orchestrate.lab import run_lab

    cfg = SweepConfig(models=[MODEL], devices=["local"], db=f"sqlite:///{tmp_path / 'x.db'}")
    t0 = time.monotonic()
    with pytest.raises(EdgeoptError, match=r"Ray cluster at ray://127.0.0.1:\d+ does not answer"):
        run_lab(cfg, f"ray://127.0.0.1:{_closed_port()}", profiles={})
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "sweep-bundles").exists()  # nothing compiled


# -- a board name in `profile` -----------------------------------------------------------------------------------
@needs_sshd
def test_profile_with_a_board_name_uses_its_options(sshd, tmp_path, monkeypatch):
    """`profile --device NAME`: the board's python (a wrapper that leaves a mark), its remote folder and its
    pinning (taskset) are what the measurement used."""
    mark = tmp_path / "python-used"
    wrapper = tmp_path / "board-python"
    wrapper.write_text(f"#!/bin/sh\necho \"$@\" >> {mark}\nexec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    pin = "0" if shutil.which("taskset") else None
    entry = _entry(sshd, tmp_path / "pi-home", python=str(wrapper), **({"pin_cpus": pin} if pin else {}))
    (tmp_path / "devices.yaml").write_text(yaml.safe_dump({"devices": {"pi": entry}}))
    monkeypatch.setenv("EDGEOPT_DEVICES", str(tmp_path / "devices.yaml"))
    import edgeopt

    b = tiny_bundle(tmp_path / "t.bundle")
    res = edgeopt.profile(b.path, device="pi", runs=3, warmup=1, min_seconds=0.0, db=f"sqlite:///{tmp_path / 'p.db'}")
    assert res.outputs_match is True and res.device["uri"] == f"ssh://{sshd.uri.split('//')[1]}"
    assert "edgeopt.runner" in mark.read_text()  # the board's own python ran the runner
    assert (tmp_path / "pi-home" / "bundles" / b.sha256).is_dir()  # in the board's remote_dir
    if pin:
        assert res.protocol["pin_cpus"] == pin


@needs_sshd
def test_auto_on_a_named_board(sshd, tmp_path, monkeypatch):
    """`compile --auto --device NAME`: the board's options apply (its python, its remote folder) and the winner
    matched its reference on the board itself."""
    from _tiny import tiny_spec

    from edgeopt.orchestrate.auto import auto_compile
    from edgeopt.store import Store

    tiny_spec()
    (tmp_path / "devices.yaml").write_text(yaml.safe_dump({"devices": {"pi": _entry(sshd, tmp_path / "pi-home")}}))
    monkeypatch.setenv("EDGEOPT_DEVICES", str(tmp_path / "devices.yaml"))
    db = f"sqlite:///{tmp_path / 'a.db'}"
    res = auto_compile(MODEL, tmp_path / "win.bundle", device="pi", backends=["onnxruntime"], precisions=["fp32"],
                       stage2=False, runs=3, warmup=1, min_seconds=0.0, db=db)
    assert res.winner is not None and res.winner.backend == "onnxruntime", [(c.label, c.status, c.reason) for c in res.candidates]
    (row,) = [r for r in Store(db).measurements() if r["bundle_sha256"] == res.winner.bundle_sha256]
    assert row["outputs_match"] is True and row["device"].startswith("ssh://")
    assert (tmp_path / "pi-home" / "bundles" / res.winner.bundle_sha256).is_dir()


# -- the lab on Ray ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def boards(tmp_path_factory):
    """Three boards of kind `loop`: three real sshd on 127.0.0.1, each with its own remote folder."""
    if sshd_missing():
        pytest.skip(sshd_missing())
    root = tmp_path_factory.mktemp("lab")
    servers = [start_sshd(root / f"sshd-{n}") for n in BOARDS]
    profiles = {n: {**_entry(s, root / f"home-{n}"), "kind": "loop"} for n, s in zip(BOARDS, servers, strict=True)}
    yield profiles, dict(zip(BOARDS, servers, strict=True)), root
    for s in servers:
        if s.proc.poll() is None:
            s.stop()


@pytest.fixture(scope="module")
def ray_cluster(boards):
    """A local Ray cluster started by the test: 2 CPUs, one resource per board; its workers register the tiny
    test model (tests/ on their path, _tiny.tiny_spec as their setup hook)."""
    ray = pytest.importorskip("ray")
    from edgeopt.orchestrate.lab import board_resource

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             resources={board_resource(n): 1 for n in BOARDS},
             runtime_env={"env_vars": {"PYTHONPATH": str(TESTS)}, "worker_process_setup_hook": "_tiny.tiny_spec"})
    yield ray
    ray.shutdown()


def _count(db: Path, device: str | None = None) -> int:
    try:
        con = sqlite3.connect(db)
        q, args = "SELECT COUNT(*) FROM measurements WHERE status='ok'", ()
        if device:
            q, args = q + " AND device_id=?", (device,)
        return con.execute(q, args).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_lab_sweep_spreads_over_boards_and_survives_a_dead_board(boards, ray_cluster, tmp_path):
    """12 measurement jobs on a pool of three boards: each board measures some; board c is killed after its
    first result, its jobs finish on the other two; the store holds every result once; a re-run measures nothing."""
    from edgeopt.orchestrate.lab import run_lab
    from edgeopt.orchestrate.sweep import board_device_id
    from edgeopt.store import Store

    profiles, servers, root = boards
    ids = {n: board_device_id(b) for n, b in load_boards(profiles).items()}
    dbfile = tmp_path / "lab.db"
    cfg = SweepConfig.model_validate({
        "name": "lab", "models": [MODEL], "pipelines": ["", "quantize:dynamic"], "backends": ["onnxruntime"],
        "devices": ["kind:loop"], "threads": [1, 2, 3, 4, 5, 6],
        "protocol": {"warmup": 1, "runs": 3, "min_seconds": 0.0, "cooldown": False, "idle_seconds": 0.0},
        "compile": {"samples": 1, "out": str(root / "bundles")}, "db": f"sqlite:///{dbfile}",
    })
    killed = threading.Event()

    def kill_c_after_its_first_result() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed.is_set():
            if _count(dbfile, ids["loop-c"]) >= 1:
                _stop_hard(servers["loop-c"])
                killed.set()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_c_after_its_first_result, daemon=True)
    watcher.start()
    s = run_lab(cfg, "local", profiles=profiles, progress=False)
    killed.set()
    watcher.join()
    assert servers["loop-c"].proc.poll() is not None, "board c was never killed"
    assert (s.total, s.ok, s.failed) == (12, 12, 0), s.failures
    assert s.retried >= 1  # c's job went to another board
    per_board = {n: _count(dbfile, ids[n]) for n in BOARDS}
    assert all(v >= 1 for v in per_board.values()) and sum(per_board.values()) == 12, per_board
    con = sqlite3.connect(dbfile)
    dup = con.execute("SELECT COUNT(*) FROM (SELECT bundle_sha256, protocol_key, COUNT(*) c FROM measurements WHERE status='ok' GROUP BY 1,2 HAVING c > 1)").fetchone()[0]
    assert dup == 0
    jobs = Store(cfg.db).jobs()
    assert len(jobs) == 12 and all(j["status"] == "ok" and j["device_id"] in ids.values() for j in jobs)
    assert all(r["outputs_match"] for r in Store(cfg.db).measurements())

    # Resume: the same sweep again (board c still down) measures nothing and stores nothing twice.
    s2 = run_lab(cfg, "local", profiles=profiles, progress=False)
    assert (s2.total, s2.skipped, s2.ok, s2.failed) == (12, 12, 0, 0)
    assert _count(dbfile) == 12


def test_lab_refuses_boards_no_node_declares(boards, ray_cluster, tmp_path):
    from edgeopt.orchestrate.lab import run_lab

    profiles, _, _ = boards
    extra = {**profiles, "loop-z": {**profiles["loop-a"], "kind": "other"}}
    cfg = SweepConfig(models=[MODEL], devices=["loop-z"], db=f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(EdgeoptError, match=r"no Ray node declares the board resource\(s\) board:loop-z.*ray start"):
        run_lab(cfg, "local", profiles=extra)


# -- --auto on the emulated arm64 board ------------------------------------------------------------------------------
@pytest.mark.emulator
def test_auto_on_qemu_arm64_picks_an_artifact_that_ran_there(tmp_path):
    """`compile --auto --device qemu-arm64`: TVM is cross-compiled for the board's core, and the winner is an
    artifact whose outputs matched its reference on the (emulated) board itself."""
    from _tiny import tiny_spec

    from edgeopt.bundle import load_bundle
    from edgeopt.orchestrate.auto import auto_compile
    from edgeopt.store import Store

    tiny_spec()
    db = f"sqlite:///{tmp_path / 'a.db'}"
    res = auto_compile(MODEL, tmp_path / "win.bundle", device="qemu-arm64", backends=["onnxruntime", "tvm"], precisions=["fp32"],
                       stage2=False, runs=3, warmup=1, min_seconds=0.0, db=db)
    assert res.winner is not None
    tvm = [c for c in res.candidates if c.backend == "tvm"]
    assert tvm and all(c.target == "cortex-a72" for c in tvm)
    for c in tvm:
        if c.bundle:
            assert load_bundle(c.bundle).manifest.backend_details.get("arch") == "aarch64"
    rows = {r["bundle_sha256"]: r for r in Store(db).measurements()}
    won = rows[res.winner.bundle_sha256]
    assert won["outputs_match"] is True and Store(db).devices()[won["device"]].get("arch") == "aarch64"
    assert all(c.status != "measured" or rows[c.bundle_sha256]["outputs_match"] for c in res.candidates)
