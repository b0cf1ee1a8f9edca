"""Figures a user can trust: contamination from other processes, the interleaved compare, and the bad inputs
that used to slip through (full disk, a manifest naming files outside its bundle, negative counts, library
errors as tracebacks)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _bundles import tiny_bundle

from edgeopt.bundle import content_hash, load_bundle
from edgeopt.contention import CpuSample, contamination
from edgeopt.errors import BundleError, Contaminated, EdgeoptError
from edgeopt.harness.compare import bootstrap_ratio, compare
from edgeopt.harness.devices import get_device
from edgeopt.harness.protocol import measure
from edgeopt.measurement import Measurement, Protocol


def _sample(t: float, busy: float, own: float, cpus: int = 2) -> CpuSample:
    return CpuSample(t=t, busy_s=busy, own_s=own, load1=0.5, cpus=tuple(range(cpus)), freq_mhz=None)


def test_contamination_counts_only_what_competes_for_the_runs_cores():
    # 2 CPUs, 2 threads, 1 s: the run used 2 CPU-s, others 0.5 CPU-s -> a quarter of its cores
    c = contamination(_sample(0, 0, 0), _sample(1, 2.5, 2.0), threads=2, threshold=0.1)
    assert c.foreign_cpu_share == pytest.approx(0.25) and c.flagged and c.foreign_cpu_s == pytest.approx(0.5)
    # 16 CPUs, 2 threads: 13 idle CPUs absorb a 1-core job elsewhere; nothing competed
    c = contamination(_sample(0, 0, 0, 16), _sample(1, 3.0, 2.0, 16), threads=2, threshold=0.1)
    assert c.foreign_cpu_share == 0.0 and not c.flagged
    # 16 CPUs, 2 threads, 15 CPU-s of others: 14 spare, 1 competes with the run's 2 cores -> 0.5
    c = contamination(_sample(0, 0, 0, 16), _sample(1, 17.0, 2.0, 16), threads=2, threshold=0.1)
    assert c.foreign_cpu_share == pytest.approx(0.5) and c.flagged
    # no /proc/stat: said, never flagged
    c = contamination(CpuSample(0, None, 0, None, (0,), None, "no /proc/stat"), CpuSample(1, None, 1, None, (0,), None, "no /proc/stat"), 1, 0.1)
    assert c.foreign_cpu_share is None and not c.flagged and "proc" in c.reason


def _hogs(n: int = 2) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(0.5)
    return procs


def test_a_running_grandchild_counts_as_own_only_with_children():
    # a shell that starts a busy loop in the background: the loop is a grandchild of this process, alive
    # during both samples; its CPU time is this run's own with children=True and nobody's without
    from edgeopt.contention import sample

    sh = subprocess.Popen(["/bin/sh", "-c", f"{sys.executable} -c 'while True: pass' & wait"])
    try:
        time.sleep(0.5)
        b_all, b_self = sample(children=True), sample()
        time.sleep(1.0)
        a_all, a_self = sample(children=True), sample()
        assert (a_all.own_s - b_all.own_s) - (a_self.own_s - b_self.own_s) > 0.5
    finally:
        subprocess.run(["pkill", "-P", str(sh.pid)], check=False)
        sh.kill()
        sh.wait()


_NOBODY_WAITS = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the child; no parent counts its CPU time
busy = "import time\\ne = time.process_time() + 1.0\\nwhile time.process_time() < e: pass"
subprocess.Popen([sys.executable, "-c", busy])
time.sleep(2.5)
"""


def test_a_cpu_group_keeps_the_time_of_children_nobody_waits_for():
    import os

    from edgeopt.contention import CpuGroup

    g = CpuGroup.create(f"edgeopt-test-{os.getpid()}")
    if g is None:
        pytest.skip("no writable cgroup hierarchy counts CPU time here (not root, or a container without one)")
    try:
        used0, t0 = g.usage_s(), os.times()
        subprocess.run([sys.executable, "-c", _NOBODY_WAITS], check=True)
        used1, t1 = g.usage_s(), os.times()
    finally:
        g.close()
    tree = (t1.children_user + t1.children_system) - (t0.children_user + t0.children_system)
    assert used1 - used0 > 0.9 + tree * 0.5, (used1 - used0, tree)  # the group has the busy second...
    assert tree < 0.9  # ...that the process tree lost


def test_cpu_hog_flags_the_result_and_strict_refuses_it(tmp_path):
    b = tiny_bundle(tmp_path / "b", n=256, layers=4)
    dev = get_device("local")
    proto = Protocol(warmup=2, runs=20, min_seconds=1.0, threads=2, cooldown=False, remeasure=1)
    hogs = _hogs()
    try:
        res = measure(dev, b, proto)
        c = res.contamination
        assert c is not None and c.flagged, c
        assert c.foreign_cpu_share > proto.max_foreign_share and c.attempts == 2  # measured again once, still disturbed
        assert c.others and "python" in c.others[0]["name"] and c.others[0]["cpu_s"] > 0.5, c.others  # it names who: the hogs
        # the flag survives the JSON codec the store and `profile --json` use
        back = Measurement.from_dict(json.loads(res.to_json()))
        assert back.contamination.flagged and back.contamination.attempts == 2
        with pytest.raises(Contaminated, match="other processes took"):
            measure(dev, b, Protocol(warmup=1, runs=5, min_seconds=0.5, threads=2, cooldown=False, remeasure=0, strict=True))
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def test_profile_json_carries_the_contamination_block(tmp_path, cli_env):
    b = tiny_bundle(tmp_path / "b", n=64)
    out = subprocess.run([sys.executable, "-m", "edgeopt.cli", "profile", str(b.path), "--no-store", "--json", "--runs", "5", "--min-seconds", "0.2"],
                         capture_output=True, text=True, env=cli_env, timeout=300)
    assert out.returncode == 0, out.stderr
    c = json.loads(out.stdout)["contamination"]
    assert {"foreign_cpu_share", "load_before", "load_after", "flagged"} <= set(c)
    assert c["foreign_cpu_share"] is None or c["foreign_cpu_share"] >= 0


def test_bootstrap_interval_of_a_paired_ratio():
    lo, hi = bootstrap_ratio([10, 11, 10.5, 10.2, 10.8], [20, 22, 21, 20.5, 21.5])
    assert 1.8 < lo <= 2.0 <= hi < 2.2
    lo, hi = bootstrap_ratio([10, 11, 10.5, 10.2, 10.8], [10.4, 10.1, 10.9, 11, 10.3])
    assert lo < 1 < hi


def test_compare_tells_a_slower_artifact_from_a_copy(tmp_path):
    # 32 rows per call: bound by arithmetic (about 1 ms a call), not by reading 6 MB of weights, whose speed
    # shifts from one round to the next by more than the `NEGLIGIBLE` band (a 1.14x copy at 0.1 ms a call)
    a = tiny_bundle(tmp_path / "a", n=512, layers=6, batch=32)
    slow = tiny_bundle(tmp_path / "slow", n=512, layers=12, batch=32)
    copy = tiny_bundle(tmp_path / "copy", n=512, layers=6, batch=32)
    assert copy.sha256 == a.sha256
    res = compare(get_device("local"), [a, slow, copy], rounds=9,
                  protocol=Protocol(warmup=3, runs=20, min_seconds=0.3, threads=1, cooldown=False, remeasure=0))
    base, s, c = res.results
    assert base.ratio == 1.0 and base.ci95 == (1.0, 1.0)
    assert s.ci95[0] > 1.0 and s.ratio > 1.3 and "slower" in s.verdict, s
    assert c.verdict == "no clear difference", c
    assert all(len(r.round_p50_ms) == 9 for r in res.results)
    d = res.to_dict()
    assert d["rounds"] == 9 and [set(r) >= {"bundle", "p50_ms", "ratio", "ci95"} for r in d["results"]] == [True] * 3


def test_compare_cli_json(tmp_path, cli_env):
    a = tiny_bundle(tmp_path / "a", n=64)
    out = subprocess.run([sys.executable, "-m", "edgeopt.cli", "compare", str(a.path), str(a.path), "--rounds", "3", "--runs", "3",
                          "--min-seconds", "0.05", "--json"], capture_output=True, text=True, env=cli_env, timeout=300)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["rounds"] == 3 and len(d["results"]) == 2 and d["results"][0]["ratio"] == 1.0
    bad = subprocess.run([sys.executable, "-m", "edgeopt.cli", "compare", str(a.path), "--json"], capture_output=True, text=True, env=cli_env, timeout=120)
    assert bad.returncode == 1 and "at least two bundles" in bad.stderr and "Traceback" not in bad.stderr


def _retarget(b_path: Path, rel: str, target: Path) -> None:
    """Make the manifest name `rel` with `target`'s real hash, as an attacker would."""
    from edgeopt._util import sha256_file

    m = json.loads((b_path / "manifest.json").read_text())
    m["files"][rel] = sha256_file(target)
    m["bundle_sha256"] = content_hash(m["files"])
    (b_path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("rel", ["../../../../etc/hostname", "/etc/hostname", "ref/../../outside.txt"])
def test_manifest_names_outside_the_bundle_are_refused(tmp_path, rel):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    b = tiny_bundle(tmp_path / "b", n=8)
    _retarget(b.path, rel, outside if not rel.startswith(("/", "../../../../")) else Path("/etc/hostname"))
    with pytest.raises(BundleError, match="not a relative path inside the bundle"):
        load_bundle(b.path)


def test_symlink_out_of_the_bundle_is_refused(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    b = tiny_bundle(tmp_path / "b", n=8)
    (b.path / "link.txt").symlink_to(outside)
    _retarget(b.path, "link.txt", outside)
    with pytest.raises(BundleError, match="symbolic link"):
        load_bundle(b.path)


def test_the_device_side_runner_refuses_it_too(tmp_path, cli_env):
    b = tiny_bundle(tmp_path / "b", n=8)
    _retarget(b.path, "../../../../etc/hostname", Path("/etc/hostname"))
    out = subprocess.run([sys.executable, "-m", "edgeopt.runner", str(b.path)], capture_output=True, text=True, env=cli_env, timeout=120)
    assert out.returncode == 2 and "not a relative path inside the bundle" in json.loads(out.stdout.strip().splitlines()[-1])["error"]


@pytest.mark.parametrize(("flag", "value", "said"), [("--threads", "-1", "threads must be >= 1"), ("--threads", "0", "threads must be >= 1"),
                                                      ("--runs", "0", "timed runs must be >= 1"), ("--min-seconds", "-2", "seconds must be >= 0"),
                                                      ("--warmup", "-1", "warm-up calls must be >= 0"), ("--timeout", "0", "seconds must be > 0")])
def test_out_of_range_protocol_values_are_refused(tmp_path, cli_env, flag, value, said):
    b = tiny_bundle(tmp_path / "b", n=8)
    out = subprocess.run([sys.executable, "-m", "edgeopt.cli", "profile", str(b.path), "--no-store", flag, value],
                         capture_output=True, text=True, env=cli_env, timeout=120)
    assert out.returncode == 1 and said in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) <= 3  # one message (wrapped at the terminal width at most)


def test_protocol_ranges_hold_in_the_api_too():
    with pytest.raises(EdgeoptError, match="max_foreign_share"):
        Protocol(max_foreign_share=1.5)
    with pytest.raises(EdgeoptError, match="re-measurements must be >= 0"):
        Protocol(remeasure=-1)
    assert Protocol(threads=None).threads is None


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys):
    """`compile -o DIR` onto a 16 KiB tmpfs: the disk fills while the bundle is written."""
    import _tiny

    from edgeopt.cli import main

    mnt = tmp_path / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"this test mounts a small tmpfs and needs root: {r.stderr.strip()}")
    try:
        name = _tiny.tiny_spec().name
        rc = main(["compile", name, "-o", str(mnt / "bundle")])
        err = capsys.readouterr().err
        assert rc == 1
        assert "the disk is full" in err and str(mnt) in err and "Traceback" not in err and "╭" not in err, err
        assert list(mnt.iterdir()) == []  # no partial bundle, no temporary folder
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_library_error_is_one_line_unless_debug(tmp_path, capsys):
    """A bundle whose artifact ONNX Runtime cannot parse (the hashes match: only the runtime can tell)."""
    from edgeopt.cli import main

    b = tiny_bundle(tmp_path / "b", n=8, broken=True)
    rc = main(["profile", str(b.path), "--no-store"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and "╭" not in err
    assert err.startswith("error:") and len(err.strip().splitlines()) <= 4, err


def test_library_exceptions_become_one_line_with_their_origin():
    import onnxruntime as ort

    from edgeopt.cli import _library_error

    with pytest.raises(Exception) as info:
        ort.InferenceSession(b"not an onnx model", providers=["CPUExecutionProvider"])
    err = _library_error(info.value)
    assert "from onnxruntime" in err.message and "\n" not in err.message and "--debug" in err.hint
    err = _library_error(PermissionError(13, "Permission denied", "/root/secret"))
    assert err.message == "operating system error: Permission denied: /root/secret"


@pytest.mark.parametrize("columns", [80, 120])
def test_tables_stay_readable_in_narrow_terminals(tmp_path, cli_env, columns):
    env = {**cli_env, "COLUMNS": str(columns)}
    names = [m["name"] for m in json.loads(subprocess.run([sys.executable, "-m", "edgeopt.cli", "models", "--json"], capture_output=True,
                                                          text=True, env=env, timeout=300, check=True).stdout)]
    out = subprocess.run([sys.executable, "-m", "edgeopt.cli", "models"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert max(len(line) for line in out.stdout.splitlines()) <= columns
    for name in names:  # the model name is never cut or wrapped
        assert any(line.split()[:1] == [name] for line in out.stdout.splitlines()), name
    b = tiny_bundle(tmp_path / "b", n=16)
    db = f"sqlite:///{tmp_path / 'r.db'}"
    prof = subprocess.run([sys.executable, "-m", "edgeopt.cli", "profile", str(b.path), "--db", db, "--runs", "3", "--min-seconds", "0.05"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert prof.returncode == 0 and max(len(line) for line in prof.stdout.splitlines()) <= columns, prof.stdout
    assert "…" not in prof.stdout  # no cell cut short: long notes sit under the table
    rep = subprocess.run([sys.executable, "-m", "edgeopt.cli", "report", "--db", db], capture_output=True, text=True, env=env, timeout=300)
    assert rep.returncode == 0 and max(len(line) for line in rep.stdout.splitlines()) <= columns
    assert "tiny_mlp" in rep.stdout and "onnxruntime/fp32" in rep.stdout and "…" not in rep.stdout


def test_latency_vs_fidelity_has_a_panel_per_model_and_a_log_axis_where_needed():
    from edgeopt.report import plots

    plt = plots._plt()
    fig, ax = plt.subplots()
    plots._log_if_wide(ax, [0.5, 800.0])
    assert ax.get_xscale() == "log"
    plots._log_if_wide(ax2 := fig.add_subplot(2, 1, 2), [10.0, 14.0])
    assert ax2.get_xscale() == "linear"
    plt.close(fig)
    rows = [{"model": m, "backend": "onnxruntime", "precision": p, "passes": None, "threads": 2, "device": "local", "p50_ms": ms, "fidelity": {"cosine": c}}
            for m, base in (("a", 0.5), ("b", 800.0), ("c", 14.0)) for p, ms, c in (("fp32", base, 1.0), ("int8", base * 0.6, 0.995))]
    png = plots.latency_vs_fidelity(rows)
    from io import BytesIO

    from PIL import Image

    w, h = Image.open(BytesIO(png)).size
    assert w > 1000 and h > 600  # two columns of panels, two rows: one panel per model
