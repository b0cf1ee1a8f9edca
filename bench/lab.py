"""The device lab's speed-up from spreading: one sweep of 12 measurement jobs on a pool of 3 boards against the
same sweep on a pool of 1 board, both on a local Ray cluster; the table goes into docs/lab.md between the
lab-bench markers (bench/_doc.py: with the command, the date, the load average and other processes' CPU share;
nothing is written when other processes used the CPUs).

    python bench/lab.py                          # 3 boards vs 1, 2 repeats each (alternating), writes docs/lab.md
    python bench/lab.py --threads 1,2 --runs 3 --repeats 1 --no-write    # a quick check that it works

The boards are real OpenSSH servers on 127.0.0.1 (tests/_sshd.py), each with its own remote folder, all of one
kind; the model is the tiny test model (tests/_tiny.py), compiled once before timing (both configurations then
reuse the same bundles, so the wall time is snapshotting, dispatching and measuring), after one untimed warm-up
sweep that starts Ray's worker processes. Each timed run has its own empty results database. Take figures on a
quiet machine: the boards share this host's cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "lab.md"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from _doc import DocRun, add_args, write_block  # noqa: E402

MODEL = "tiny_backend_test"
PIPELINES = ["", "quantize:dynamic"]


def sweep_config(work: Path, db: Path, threads: list[int], runs: int):
    from edgeopt.orchestrate.sweep import SweepConfig

    return SweepConfig.model_validate({
        "name": "lab-bench", "models": [MODEL], "pipelines": PIPELINES, "backends": ["onnxruntime"], "devices": ["kind:loop"],
        "threads": threads, "protocol": {"warmup": 2, "runs": runs, "min_seconds": 0.0, "cooldown": False, "idle_seconds": 0.0},
        "compile": {"samples": 1, "out": str(work / "bundles")}, "db": f"sqlite:///{db}",
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2,3,4,5,6", help="the threads axis (x 2 pipelines = the jobs)")
    ap.add_argument("--runs", type=int, default=10, help="protocol runs per job")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each configuration, alternating")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    add_args(ap)
    a = ap.parse_args()
    with DocRun.from_args(a):
        run(a)


def run(a: argparse.Namespace) -> None:
    threads = [int(x) for x in a.threads.split(",")]

    import ray
    from _sshd import sshd_missing, start_sshd
    from _tiny import tiny_spec
    from rich.console import Console
    from rich.table import Table

    from edgeopt.orchestrate.jobs import CompileUnit, compile_or_reuse
    from edgeopt.orchestrate.lab import board_resource, run_lab

    if sshd_missing():
        raise SystemExit(sshd_missing())
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="edgeopt-bench-lab-"))
    names = ["loop-a", "loop-b", "loop-c"]
    servers = [start_sshd(work / f"sshd-{n}") for n in names]
    try:
        entries = {n: {"uri": s.uri, "identity": str(s.identity), "known_hosts": str(s.trusted_known_hosts()), "python": sys.executable,
                       "remote_dir": str(work / f"home-{n}"), "kind": "loop"} for n, s in zip(names, servers, strict=True)}
        pools = {3: entries, 1: {"loop-a": entries["loop-a"]}}
        tiny_spec()
        for p in PIPELINES:  # compiled once: the timed runs reuse these bundles
            u = CompileUnit(MODEL, p, "onnxruntime")
            compile_or_reuse(u, u.folder(work / "bundles"), samples=1)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False,
                 resources={board_resource(n): 1 for n in names},
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT / "tests")}, "worker_process_setup_hook": "_tiny.tiny_spec"})
        # untimed warm-up: Ray starts its worker processes (one per board probed at once) on the first sweep
        run_lab(sweep_config(work, work / "warm-up.db", threads[:1], a.runs), "local", profiles=pools[3], progress=False)
        walls: dict[int, list[float]] = {3: [], 1: []}
        per_board: dict[int, dict[str, int]] = {}
        jobs = 0
        for r in range(a.repeats):
            for n in ([3, 1] if r % 2 == 0 else [1, 3]):
                db = work / f"r{r}-{n}.db"
                cfg = sweep_config(work, db, threads, a.runs)
                t0 = time.perf_counter()
                s = run_lab(cfg, "local", profiles=pools[n], progress=False)
                walls[n].append(time.perf_counter() - t0)
                if s.failed or s.ok != s.total:
                    raise SystemExit(f"{n}-board run: {s.ok}/{s.total} ok, failures: {s.failures[:3]}")
                jobs = s.total
                con = sqlite3.connect(db)
                per_board[n] = dict(con.execute("SELECT device_id, COUNT(*) FROM measurements WHERE status='ok' GROUP BY 1").fetchall())
        ray.shutdown()
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = {n: statistics.median(w) for n, w in walls.items()}
    t = Table(title=f"{jobs} measurement jobs on a pool of boards (local Ray cluster)")
    for c in ("boards", "wall s (median)", "each run s", "jobs per board", "speed-up"):
        t.add_column(c)
    for n in (1, 3):
        t.add_row(str(n), f"{med[n]:.1f}", " / ".join(f"{w:.1f}" for w in walls[n]), " / ".join(str(v) for v in sorted(per_board[n].values(), reverse=True)),
                  f"{med[1] / med[n]:.2f}x")
    console.print(t)
    lines = [
        f"{jobs} jobs: {MODEL} x {len(PIPELINES)} pipelines x threads {threads}, {a.runs} runs each, bundles compiled before timing; "
        f"{a.repeats} timed run(s) per configuration, alternating.",
        "",
        "| boards | wall s (median) | each run s | jobs per board | speed-up |",
        "|---|---|---|---|---|",
    ]
    for n in (1, 3):
        lines.append(f"| {n} | {med[n]:.1f} | {' / '.join(f'{w:.1f}' for w in walls[n])} | "
                     f"{' / '.join(str(v) for v in sorted(per_board[n].values(), reverse=True))} | {med[1] / med[n]:.2f}x |")
    if a.no_write:
        return
    write_block(DOC, "lab-bench", "\n".join(lines), title="Device lab")


if __name__ == "__main__":
    main()
