"""Harness figures, written to docs/harness.md (each mode replaces its own section).

    python bench/harness.py overhead   # harness overhead vs a bare loop over the same session (median, %)
    python bench/harness.py cv         # CV of 10 repeated measurements of efficientformer_l1 on `local`
    python bench/harness.py cv-hog     # the same beside a busy-loop process: the CV it costs, and the flag
    python bench/harness.py phases     # one session timed in 1-s windows for a minute: the machine's own swings
    python bench/harness.py threads    # 1 vs 2 threads in 30 interleaved rounds: the two speeds of a 2-thread call
    python bench/harness.py sweep      # 3 models x 3 pipelines x 2 backends over local + loopback ssh://,
                                       # killed half way (SIGKILL) and resumed: counts, duplicates; report PNG

Medians are measured side by side in one run on this machine. Each mode writes its own block of docs/harness.md
through bench/_doc.py, which stamps it with the command, the date, the load before and after and the share of
the CPUs other processes used, and writes nothing when that share is over the limit: on a shared 2-core VM the
load matters more than anything edgeopt does. `--docs DIR` writes into another docs folder.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"  # --docs DIR: write the pages there instead
WORK = Path(os.environ.get("EDGEOPT_BENCH_DIR", "/tmp/edgeopt-bench-harness"))
# Which machine the figures come from, in the section titles, so runs on different machines sit side by side.
LABEL = os.environ.get("EDGEOPT_BENCH_LABEL", "2-core sandbox VM")
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from _doc import DocRun, add_args, write_block, write_file  # noqa: E402


def _key(mode: str) -> str:
    """The block of docs/harness.md a mode writes: one per mode and machine label."""
    return f"{mode}-" + re.sub(r"[^a-z0-9]+", "-", LABEL.lower()).strip("-")


def write_section(mode: str, title: str, body: str) -> None:
    write_block(DOCS / "harness.md", _key(mode), f"## {title}\n\n{body.strip()}", title="Harness figures")


def bundle(model: str, passes: str | None = None, backend: str = "onnxruntime") -> Path:
    import edgeopt
    from edgeopt.bundle import load_bundle
    from edgeopt.errors import EdgeoptError

    out = WORK / f"{model}-{backend}-{passes or 'fp32'}.bundle".replace(":", "_")
    try:
        load_bundle(out)
    except EdgeoptError:
        edgeopt.compile(model, backend=backend, passes=passes, output=out, samples=2, overwrite=True)
    return out


def overhead(model: str = "efficientformer_l1", reps: int = 5) -> None:
    """Harness p50 (runner in its own process via the protocol) vs a bare loop over one in-process session."""
    import numpy as np

    from edgeopt.bundle import load_bundle
    from edgeopt.harness.devices import get_device
    from edgeopt.harness.protocol import Protocol, measure
    from edgeopt.runtimes.base import get_backend

    b = load_bundle(bundle(model))
    sess = get_backend(b.backend).load(b.path, b.manifest)
    x = b.reference_inputs()
    dev = get_device("local")
    info = dev.info()
    bare, harn, wall = [], [], []
    runs = 30
    for _ in range(reps):  # interleaved, so drift in machine load hits both alike
        for _ in range(3):
            sess.run(x)
        lat = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(x)
            lat.append((time.perf_counter() - t0) * 1e3)
        bare.append(float(np.median(lat)))
        t0 = time.perf_counter()
        r = measure(dev, b.path, Protocol(warmup=3, runs=runs, min_seconds=0.0, cooldown=False), device_info=info)
        wall.append(time.perf_counter() - t0)
        harn.append(r["latency_ms"]["p50"])
    sess.close()
    mb, mh = statistics.median(bare), statistics.median(harn)
    model_s = statistics.median(harn) * (runs + 3) / 1e3
    rows = [
        "| | median p50 (ms) | per-rep p50s (ms) |", "|---|---|---|",
        f"| bare loop, same process, same session | {mb:.2f} | {', '.join(f'{v:.1f}' for v in bare)} |",
        f"| harness (protocol -> runner process) | {mh:.2f} | {', '.join(f'{v:.1f}' for v in harn)} |",
    ]
    body = (
        f"{model}, ONNX Runtime fp32, {runs} timed runs per rep, {reps} reps interleaved.\n\n"
        + "\n".join(rows)
        + f"\n\nPer-inference overhead of the harness: **{mh - mb:+.2f} ms ({(mh - mb) / mb * 100:+.1f} %)** on the median p50."
        f" Whole-measurement wall time (new process, bundle verify, model load, warm-up) was {statistics.median(wall):.1f} s"
        f" for about {model_s:.1f} s of timed inference.\n"
    )
    write_section("overhead", f"Harness overhead vs a bare loop ({LABEL})", body)
    print(body)


def cv(model: str = "efficientformer_l1", n: int = 10, hogs: int = 0) -> None:
    """CV of n repeated measurements, each in a fresh runner process; with `hogs`, that many busy-loop
    processes run beside them the whole time (started and stopped here, so their CPU time counts as this
    run's own and the doc run stays clean), to show what contamination does and that the flag sees it."""
    from edgeopt.harness.devices import get_device
    from edgeopt.harness.protocol import Protocol, measure

    b = bundle(model)
    dev = get_device("local")
    info = dev.info()
    p50, shares, flagged = [], [], 0
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
    try:
        time.sleep(1.0 if hogs else 0.0)
        for i in range(n):
            r = measure(dev, b, Protocol(warmup=5, runs=20, min_seconds=1.0, cooldown=False, remeasure=0), device_info=info)
            p50.append(r.latency_ms.p50)
            c = r.contamination
            shares.append(c.foreign_cpu_share if c is not None and c.foreign_cpu_share is not None else float("nan"))
            flagged += bool(c is not None and c.flagged)
            print(f"{i + 1}/{n}: p50 {p50[-1]:.2f} ms (within-run CV {r.cv:.3f}, others' share of its cores {shares[-1]:.2f})", flush=True)
    finally:
        for h in procs:
            h.kill()
            h.wait()
    m = statistics.mean(p50)
    s = statistics.stdev(p50)
    cond = f"with {hogs} busy-loop process{'es' if hogs > 1 else ''} running beside it" if hogs else "with nothing else running"
    body = (
        f"{model}, ONNX Runtime fp32 on `local`, default protocol (warm-up 5, >= 20 runs and >= 1 s), {n} measurements"
        f" one after another, each in a fresh runner process, {cond}.\n\n"
        f"p50 of each (ms): {', '.join(f'{v:.1f}' for v in p50)}\n\n"
        f"Mean {m:.2f} ms, std {s:.2f} ms: **CV of the {n} p50s = {s / m:.3f}** (median {statistics.median(p50):.2f} ms,"
        f" min {min(p50):.2f}, max {max(p50):.2f}). Other processes' share of the run's cores (edgeopt.contention):"
        f" median {statistics.median(shares):.2f}; **{flagged} of {n} flagged** (limit {Protocol().max_foreign_share:.2f}).\n"
    )
    key, title = ("cv-hog", f"CV under a deliberate CPU hog ({LABEL})") if hogs else ("cv", f"CV of {n} repeated measurements ({LABEL})")
    write_section(key, title, body)
    print(body)


def phases(model: str = "efficientformer_l1", windows: int = 60) -> None:
    """One session of `model` timed without pause in 1-second windows: each window's p50, with the CPU time
    the window's process used and the hypervisor's steal time on this VM's CPUs (/proc/stat). Shows the
    machine's own speed swinging where nothing in /proc can see it (no steal, no other process, the run's
    threads busy all along), which no load-aware flag can catch and only interleaving copes with."""
    from edgeopt.bundle import load_bundle
    from edgeopt.contention import _allowed_cpus, _stat_fields
    from edgeopt.runtimes.base import get_backend

    b = load_bundle(bundle(model))
    sess = get_backend(b.backend).load(b.path, b.manifest, threads=None)
    x = b.reference_inputs()
    for _ in range(5):
        sess.run(x)
    cpus = _allowed_cpus()
    rows = []
    for w in range(windows):
        f0, c0 = _stat_fields(cpus), time.process_time()
        t_end, ts = time.perf_counter() + 1.0, []
        while time.perf_counter() < t_end:
            t = time.perf_counter()
            sess.run(x)
            ts.append((time.perf_counter() - t) * 1e3)
        f1, c1 = _stat_fields(cpus), time.process_time()
        rows.append((statistics.median(ts), f1["steal"] - f0["steal"], c1 - c0))
        print(f"{w + 1}/{windows}: p50 {rows[-1][0]:.2f} ms, steal {rows[-1][1]:.2f} s, own CPU {rows[-1][2]:.2f} s", flush=True)
    sess.close()
    p50s = sorted(r[0] for r in rows)
    fast = p50s[len(p50s) // 10]  # the 10th percentile window: the machine at its usual best
    slow = [r[0] > 1.25 * fast for r in rows]
    # lengths of the stretches of consecutive slow windows
    runs = [len(list(g)) for is_slow, g in itertools.groupby(slow) if is_slow]
    body = (
        f"{model}, ONNX Runtime fp32, one session timed without pause for {windows} windows of 1 s, one process, "
        f"nothing else running.\n\n"
        f"Window p50s (ms): {', '.join(f'{r[0]:.1f}' for r in rows)}\n\n"
        f"Fastest tenth of the windows: {fast:.2f} ms; median {statistics.median(p50s):.2f} ms; slowest {p50s[-1]:.2f} ms. "
        f"**{sum(slow)} of {windows} windows ran more than 1.25x slower than the fastest tenth**, in "
        f"{len(runs)} stretch(es) of {', '.join(str(n) for n in runs) or '0'} s. Steal time over all windows: "
        f"{sum(r[1] for r in rows):.2f} s; the process's own CPU per window: {min(r[2] for r in rows):.2f}-"
        f"{max(r[2] for r in rows):.2f} s (its threads busy all along). When the slow stretches come without steal "
        "and without other processes, the machine itself (the host's other tenants on the same physical cores, "
        "its clock) runs slower and nothing in /proc shows it: a figure taken in one stretch and one taken in "
        "another differ by that much although both runs were quiet. Interleaved rounds (`edgeopt compare`, "
        "bench/peers.py, bench/latency.py) give every path both kinds of stretch; figures of one path taken at "
        "different times, on different pages, carry the swing.\n"
    )
    write_section("phases", f"The machine's own speed over a minute ({LABEL})", body)
    print(body)


def _count(db: Path) -> tuple[int, int, int]:
    con = sqlite3.connect(db)
    try:
        ok = con.execute("SELECT COUNT(*) FROM measurements WHERE status='ok'").fetchone()[0]
        failed = con.execute("SELECT COUNT(*) FROM jobs WHERE status='failed'").fetchone()[0]
        dup = con.execute(
            "SELECT COUNT(*) FROM (SELECT bundle_sha256, device_id, protocol_key, COUNT(*) c FROM measurements GROUP BY 1,2,3 HAVING c > 1)"
        ).fetchone()[0]
    except sqlite3.OperationalError:
        return 0, 0, 0
    finally:
        con.close()
    return ok, failed, dup


def sweep() -> None:
    import yaml
    from _sshd import start_sshd

    from edgeopt.report.html import write_html
    from edgeopt.store import Store

    work = WORK / "sweep"
    work.mkdir(parents=True, exist_ok=True)
    db = work / "sweep.db"
    for p in (db, Path(str(db) + "-wal"), Path(str(db) + "-shm")):
        p.unlink(missing_ok=True)
    import shutil

    for d in ("bundles", "board"):  # from scratch: no bundle compiled or pushed by an earlier run
        shutil.rmtree(work / d, ignore_errors=True)
    sshd = start_sshd(work / f"sshd-{os.getpid()}")
    # EDGEOPT_SWEEP_MODELS=a,b narrows the sweep when the machine cannot compile all three in time.
    # The three smallest families' small variants, so the sweep compiles from scratch in ~15 min on 2 cores.
    models = (os.environ.get("EDGEOPT_SWEEP_MODELS") or "shvit_s1,efficientformerv2_s0,leyolo_nano").split(",")
    pipelines = ["", "reparam", "quantize:int8"]
    cfg = {
        "name": "harness-figure", "models": models, "pipelines": pipelines, "backends": ["onnxruntime", "tvm"],
        "devices": ["local", {"uri": sshd.uri, "identity": str(sshd.identity), "known_hosts": str(sshd.known_hosts), "python": sys.executable,
                              "remote_dir": str(work / "board")}],
        "threads": [2], "protocol": {"warmup": 3, "runs": 10, "min_seconds": 0.5, "timeout": 300},
        "compile": {"workers": 2, "samples": 2, "out": str(work / "bundles")}, "db": f"sqlite:///{db}",
        "serial_devices": True, "compile_first": os.environ.get("EDGEOPT_SWEEP_COMPILE_FIRST", "0") == "1",
    }
    (work / "sweep.yaml").write_text(yaml.safe_dump(cfg))
    total = len(models) * len(pipelines) * 2 * 2
    cmd = [sys.executable, "-m", "edgeopt.cli", "bench", str(work / "sweep.yaml"), "--trust-new-host"]
    t0 = time.time()
    with open(work / "run1.log", "w") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while p.poll() is None:
            ok, failed, _ = _count(db)
            if ok + failed >= total // 2:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                break
            time.sleep(0.5)
    killed = p.returncode == -signal.SIGKILL
    before = _count(db)
    t1 = time.time()
    r = subprocess.run([*cmd], capture_output=True, text=True)
    (work / "run2.log").write_text(r.stdout + r.stderr)
    after = _count(db)
    t2 = time.time()
    st = Store(f"sqlite:///{db}")
    fails = st.jobs(status="failed")
    rows = st.measurements()
    report = write_html(rows, work / "report.html", title=f"edgeopt sweep: {len(models)} models x {len(pipelines)} pipelines x 2 backends x 2 devices", db=f"sqlite:///{db}")
    shot = work / "report.png"
    shot.unlink(missing_ok=True)
    chromium = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={work / 'chromium'}", "--window-size=1280,3600", "--hide-scrollbars",
         f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=180, check=False)
    sshd.stop()
    if shot.is_file():
        write_file(DOCS / "report.png", shot.read_bytes())
    freasons = "\n".join(f"| {j['model']} | {j['passes'] or '-'} | {j['backend']} | {j['device_id']} | {j['stage']} | {(j['error'] or '')[:160]} |" for j in fails)
    body = (
        f"{len(models)} models ({', '.join(models)}) x {len(pipelines)} pipelines (none, reparam, quantize:int8) x 2 backends (onnxruntime, tvm)"
        f" x 2 devices (`local`, loopback `ssh://` to a real sshd on 127.0.0.1) = {total} jobs, every bundle compiled from"
        f" scratch (TVM untuned).\n\n"
        f"| | measurements ok | failed jobs | duplicates |\n|---|---|---|---|\n"
        f"| after SIGKILL half way (run 1, {t1 - t0:.0f} s{'' if killed else ', NOT killed: finished first'}) | {before[0]} | {before[1]} | {before[2]} |\n"
        f"| after the re-run (run 2, {t2 - t1:.0f} s, exit {r.returncode}) | {after[0]} | {after[1]} | {after[2]} |\n\n"
        f"Run 2 said: `{(r.stdout.strip().splitlines() or [''])[-1 if not fails else 0][:200]}`\n\n"
        + (f"Failed jobs (recorded with their reasons, retried by every re-run):\n\n| model | passes | backend | device | stage | reason |\n|---|---|---|---|---|---|\n{freasons}\n\n" if fails else "")
        + f"Report screenshot: [docs/report.png](report.png) (chromium exit {chromium.returncode}).\n"
    )
    write_section("sweep", f"Sweep killed half way and resumed ({LABEL})", body)
    print(body)


def threads(model: str = "efficientformer_l1", rounds: int = 30) -> None:
    """The same bundle timed with 1 and with 2 intra-op threads, each in a process of its own, in `rounds`
    interleaved rounds of about 1 s (bench/peers.py `interleaved_rounds`): each round's median. On this VM the
    one-thread rounds hold steady while the two-thread rounds fall into two speeds that flip from one round
    to the next: what makes one path's p50 differ between pages measured at different times."""
    from peers import PathWorker, interleaved_rounds

    b = bundle(model)
    workers = {n: PathWorker(["--bundle", str(b)], n) for n in (1, 2)}
    try:
        per = interleaved_rounds(workers, rounds=rounds, seconds=1.0)
    finally:
        for w in workers.values():
            w.close()
    one, two = per[1], per[2]
    cv = lambda xs: statistics.pstdev(xs) / statistics.mean(xs)  # noqa: E731
    fast_limit = 1.25 * min(two)
    fast = [x for x in two if x <= fast_limit]
    slow = [x for x in two if x > fast_limit]
    slow_s = f"{statistics.median(slow):.2f} ms" if slow else "none"
    body = (
        f"{model}, ONNX Runtime fp32, the same bundle with 1 and with 2 intra-op threads, each in a process of its "
        f"own, {rounds} interleaved rounds of about 1 s of calls (the rounds spread over 90 s); each round's median, ms:\n\n"
        f"- 1 thread: {', '.join(f'{x:.1f}' for x in one)}\n"
        f"- 2 threads: {', '.join(f'{x:.1f}' for x in two)}\n\n"
        "| threads | median of the rounds | fastest..slowest round | CV of the rounds |\n|---|---|---|---|\n"
        f"| 1 | {statistics.median(one):.2f} | {min(one):.2f}..{max(one):.2f} | {100 * cv(one):.1f} % |\n"
        f"| 2 | {statistics.median(two):.2f} | {min(two):.2f}..{max(two):.2f} | {100 * cv(two):.1f} % |\n\n"
        f"**Two threads run at two speeds**: {len(fast)} of {rounds} rounds within 1.25x of the fastest (their median "
        f"{statistics.median(fast):.2f} ms), {len(slow)} slower (their median {slow_s}); one thread holds steady. "
        "The speed holds for a round (about a second of calls) and flips between rounds, with nothing else "
        "running; pinning the two threads to the two CPUs or turning ONNX Runtime's spin-waiting off did not "
        "remove it in trials here. It fits a host that sometimes runs this VM's two virtual CPUs on the two "
        "hyperthreads of one physical core: a one-thread call never has its sibling busy. The median of a "
        "path's rounds then depends on the share of slow rounds while it ran, which drifts over tens of minutes; "
        "ratios of paths timed in the same interleaved rounds hold, and so does a path's fastest round, which is "
        "why docs/benchmarks.md compares pages on both (`bench/_doc.py` `path_figures`).\n"
    )
    write_section("threads", f"One thread, two threads: the two speeds ({LABEL})", body)
    print(body)


def main() -> None:
    import argparse

    global DOCS
    modes = {"overhead": overhead, "cv": cv, "cv-hog": lambda: cv(hogs=1), "phases": phases, "threads": threads, "sweep": sweep}
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modes", nargs="*", metavar="MODE", help=f"any of {', '.join(modes)} (default: all)")
    ap.add_argument("--docs", type=Path, default=DOCS, help="the docs folder to write (default docs/)")
    add_args(ap)
    a = ap.parse_args()
    for m in a.modes:
        if m not in modes:
            ap.error(f"unknown mode {m!r}: choose from {', '.join(modes)}")
    DOCS = a.docs
    WORK.mkdir(parents=True, exist_ok=True)
    with DocRun.from_args(a):
        for m in a.modes or list(modes):
            modes[m]()
    print(json.dumps({"written": str(DOCS / "harness.md")}))


if __name__ == "__main__":
    main()
