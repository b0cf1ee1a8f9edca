"""A timed callable in a process of its own, driven over stdin/stdout, and rounds that alternate between several.

Why a process per timed path: in one process the thread pools of two runtimes (torch's OpenMP, ONNX Runtime's,
XNNPACK's) spin against each other on a small machine, and a graph timed right after another one inherits its
allocator and cache state. A deployed artifact runs alone in its process; so does each path timed here. The
parent alternates rounds between the workers, so a swing of the machine's speed hits every path alike.

Protocol (`serve` on the worker side, `TimedProcess` on the parent side): after loading, the worker prints
`@@ {"first_ms": ...}`; each stdin line `N` then times N calls and answers `@@ {"median_ms": ...}`; an empty
line or EOF ends it. Lines without `@@ ` are library chatter and skipped.

`python -m edgeopt._timed_worker --onnx GRAPH --sample SAMPLE.npz --threads N` serves one ONNX graph on
ONNX Runtime (what pass reports time: `ort_latencies`); bench/_path_worker.py serves torch eager and bundles.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from edgeopt.errors import EdgeoptError

T = TypeVar("T")


def call_times(fn: Callable[[], object], calls: int) -> list[float]:
    """Wall time in ms of each of `calls` calls of fn."""
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return ts


def median_ms(fn: Callable[[], object], calls: int) -> float:
    """Median wall time in ms of `calls` calls of fn."""
    return float(np.median(call_times(fn, calls)))


def first_ms(fn: Callable[[], object]) -> float:
    """One warm-up call of fn, then the time in ms of one more: what sizes the rounds (`calls_in`)."""
    fn()
    return call_times(fn, 1)[0]


def serve(fn: Callable[[], object]) -> int:
    """The worker side: a warm-up call, the first timed call, then answer timing requests until an empty line."""
    print("@@ " + json.dumps({"first_ms": first_ms(fn)}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        fn()  # the call after the pause between rounds wakes the thread pool; it is not timed
        print("@@ " + json.dumps({"median_ms": median_ms(fn, int(line))}), flush=True)
    return 0


class TimedProcess:
    """The parent side: one worker process (`argv` after the Python executable), its first call's time, and
    `time(n)` for the median of n calls."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.argv = list(argv)
        self._err = tempfile.TemporaryFile(mode="w+")
        self.p = subprocess.Popen([sys.executable, *self.argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self._err, text=True, env=dict(env) if env is not None else None)
        try:
            self.first_ms = float(self._read()["first_ms"])
        except BaseException:
            self.close()
            raise

    def _read(self) -> dict:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            if line.startswith("@@ "):
                return json.loads(line[3:])
        self._err.seek(0)
        tail = " | ".join(self._err.read().strip().splitlines()[-3:])
        raise RuntimeError(f"timing worker {' '.join(self.argv)} exited with {self.p.wait()}: {tail}")

    def time(self, n: int) -> float:
        """Median ms of n calls."""
        assert self.p.stdin is not None
        self.p.stdin.write(f"{n}\n")
        self.p.stdin.flush()
        return float(self._read()["median_ms"])

    def close(self) -> None:
        if self.p.poll() is None:
            try:
                assert self.p.stdin is not None
                self.p.stdin.write("\n")
                self.p.stdin.close()
                self.p.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.p.kill()
                self.p.wait()
        self._err.close()

    def __enter__(self) -> TimedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def interleave(n: int, rounds: int, measure_one: Callable[[int], T], on_round: Callable[[int, int], None] | None = None,
               span_s: float = 0.0) -> list[list[T]]:
    """`measure_one(i)` for every item i in every round, the order rotated each round (0 1 2, 1 2 0, 2 0 1,
    ...), so no item always follows the same one; results as [item][round]. `edgeopt compare`, the pass
    reports and the bench scripts all alternate their rounds with this.

    `span_s` spreads the rounds over at least that many seconds (round r starts no earlier than r/rounds of
    it after the first): a machine whose speed changes for stretches of tens of seconds (docs/measuring.md)
    then gives every item rounds in its fast and its slow stretches alike, not a median from one stretch."""
    per: list[list[T]] = [[] for _ in range(n)]
    start = time.monotonic()
    for r in range(rounds):
        if span_s > 0 and r:
            time.sleep(max(0.0, start + span_s * r / rounds - time.monotonic()))
        for k in range(n):
            i = (r + k) % n
            per[i].append(measure_one(i))
        if on_round is not None:
            on_round(r + 1, rounds)
    return per


def time_rounds(workers: Mapping[str, TimedProcess], rounds: int, calls: Mapping[str, int], pause: float = 0.5,
                span_s: float = 0.0) -> dict[str, list[float]]:
    """Each round times `calls[k]` calls of every worker in turn (`interleave`, with its `span_s`): each
    round's median per worker. `pause` seconds before each worker's turn let the previous one's thread pool
    stop spinning (ORT, OpenMP and XNNPACK spin-wait after a call; the pools live in other processes but
    share the cores)."""
    keys = list(workers)

    def one(i: int) -> float:
        time.sleep(pause)
        return workers[keys[i]].time(calls[keys[i]])

    return dict(zip(keys, interleave(len(keys), rounds, one, span_s=span_s), strict=True))


def _importable_env() -> dict[str, str]:
    """This environment, with the folder holding this edgeopt package first on PYTHONPATH (the worker imports
    the same edgeopt whether or not it is installed)."""
    root = str(Path(__file__).resolve().parents[1])
    old = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + old if old else "")}


def calls_in(seconds: float, one_call_ms: float, least: int, most: int) -> int:
    """How many calls of `one_call_ms` each take about `seconds`, within [least, most]."""
    return max(least, min(most, int(1000.0 * seconds / max(one_call_ms, 1e-3))))


def calls_for_seconds(workers: Mapping[str, TimedProcess], seconds: float, least: int = 3, most: int = 2000) -> dict[str, int]:
    """Calls per round that take about `seconds` for each worker (from its first call's time), within
    [least, most]: a round of a few fast calls right after a pause reads the wake-up, not the model."""
    return {k: calls_in(seconds, w.first_ms, least, most) for k, w in workers.items()}


def ort_round_latencies(paths: Mapping[str, Path], sample: Mapping[str, np.ndarray] | None, rounds: int = 3, runs: int = 20,
                        threads: int | None = None, span_s: float = 0.0,
                        samples: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                        seconds: float | None = None) -> dict[str, list[float]]:
    """ONNX Runtime latency (ms) of each graph, each graph in a process of its own, in `rounds` alternating
    rounds of `runs` calls, or of about `seconds` of calls each when given (`calls_for_seconds`), spread over
    `span_s` seconds (`interleave`): each round's median per graph. Every graph runs on `sample`, or on its
    own entry of `samples` (graphs with different inputs)."""
    with tempfile.TemporaryDirectory(prefix="edgeopt-timing-") as tmp:
        workers: dict[str, TimedProcess] = {}
        try:
            for j, (k, p) in enumerate(paths.items()):
                feed = samples[k] if samples is not None else sample
                if feed is None:
                    raise ValueError(f"no sample for graph {k!r}")
                npz = Path(tmp) / f"sample{j}.npz"
                np.savez(npz, **{name: np.asarray(v) for name, v in feed.items()})
                argv = ["-m", "edgeopt._timed_worker", "--onnx", str(p), "--sample", str(npz)]
                if threads is not None:
                    argv += ["--threads", str(threads)]
                try:
                    workers[k] = TimedProcess(argv, env=_importable_env())
                except RuntimeError as e:
                    raise EdgeoptError(f"could not time {p} on ONNX Runtime: {e}", "check that the graph loads in ONNX Runtime") from e
            calls = calls_for_seconds(workers, seconds) if seconds is not None else dict.fromkeys(workers, runs)
            return time_rounds(workers, rounds, calls, pause=0.2, span_s=span_s)
        finally:
            for w in workers.values():
                w.close()


def ort_latencies(paths: Mapping[str, Path], sample: Mapping[str, np.ndarray], rounds: int = 3, runs: int = 20,
                  threads: int | None = None) -> dict[str, float]:
    """The median of each graph's round medians (`ort_round_latencies`)."""
    per = ort_round_latencies(paths, sample, rounds, runs, threads)
    return {k: float(np.median(v)) for k, v in per.items()}


def _main() -> int:
    ap = argparse.ArgumentParser(description="time one ONNX graph on ONNX Runtime (the worker of ort_latencies)")
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--sample", required=True, help=".npz of the graph's inputs")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    from edgeopt._ort import ort_session

    sess = ort_session(a.onnx, a.threads)
    with np.load(a.sample) as z:
        feed = {i.name: z[i.name] for i in sess.get_inputs()}
    return serve(lambda: sess.run(None, feed))


if __name__ == "__main__":
    raise SystemExit(_main())
