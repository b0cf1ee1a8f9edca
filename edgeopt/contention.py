"""Who else used the CPU while a measurement ran: the figure that says whether a latency can be trusted.

The device-side runner takes a `CpuSample` just before and just after its timed loop. Between the two,
from `/proc/stat` (the CPUs this process may run on), this process's own CPU time (`os.times`, every
thread), the load average and the CPUs' current frequency, `contamination()` works out how much CPU time
other processes took *from the cores the run needed*:

    foreign    = busy time on the run's CPUs - this process's CPU time
    spare      = (CPUs the run may use - cores it uses) x window      (idle capacity others could take freely)
    share      = max(0, foreign - spare) / (cores it uses x window)

`cores it uses` is the runtime's thread count (all allowed CPUs when unset). On a 2-core machine running
2 threads there is no spare capacity, so every foreign CPU-second counts; on a 16-core board running 2
threads, a compile job on another core does not. The run is flagged when `share` exceeds the protocol's
`max_foreign_share`.

Linux only (`/proc/stat`); elsewhere the result says why it was not measured. Standard library only: the
device-side runner imports this module.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (guest time is inside user)


@dataclass(frozen=True)
class CpuSample:
    """A snapshot of CPU accounting on this machine, for the CPUs this process may use."""

    t: float  # monotonic seconds
    busy_s: float | None  # busy CPU seconds summed over `cpus`, from /proc/stat (None: unreadable)
    own_s: float  # this process's user+system CPU seconds (all threads)
    load1: float | None
    cpus: tuple[int, ...]
    freq_mhz: float | None  # mean current frequency over `cpus`, where cpufreq is readable
    why: str | None = None  # why busy_s is None


@dataclass
class Contamination:
    """How much of the run's cores other processes used during the timed window.

    `foreign_cpu_share` is None (with `reason`) where the device cannot tell (no /proc/stat, or a device
    that times the model with its own tool)."""

    foreign_cpu_share: float | None
    load_before: float | None
    load_after: float | None
    flagged: bool
    threshold: float
    foreign_cpu_s: float | None = None  # other processes' CPU seconds on the run's CPUs, before spare capacity
    cores_used: int | None = None
    cpus: int | None = None  # CPUs the run was allowed on
    window_s: float | None = None
    freq_mhz_before: float | None = None
    freq_mhz_after: float | None = None
    attempts: int = 1  # measurements taken to get this one (a flagged result is re-measured)
    reason: str | None = None

    @classmethod
    def unmeasured(cls, reason: str, threshold: float) -> Contamination:
        return cls(foreign_cpu_share=None, load_before=None, load_after=None, flagged=False, threshold=threshold, reason=reason)

    def summary(self) -> str:
        """One short phrase for tables: `ok 2%`, `FLAGGED 41%`, or `not measured`."""
        if self.foreign_cpu_share is None:
            return "not measured"
        pct = f"{100 * self.foreign_cpu_share:.0f}%"
        return f"FLAGGED {pct}" if self.flagged else f"ok {pct}"


def _allowed_cpus() -> tuple[int, ...]:
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return tuple(range(os.cpu_count() or 1))


def _proc_stat_busy(cpus: tuple[int, ...]) -> tuple[float | None, str | None]:
    try:
        text = Path("/proc/stat").read_text()
    except OSError as e:
        return None, f"/proc/stat is not readable here ({e.strerror or e})"
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    wanted = {f"cpu{c}" for c in cpus}
    ticks = 0
    seen = 0
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in wanted:
            vals = [int(x) for x in parts[1:]]
            ticks += sum(vals[i] for i in _BUSY_FIELDS if i < len(vals))
            seen += 1
    if seen != len(wanted):
        return None, "/proc/stat does not list every CPU this process may use"
    return ticks / hz, None


def _freq_mhz(cpus: tuple[int, ...]) -> float | None:
    vals = []
    for c in cpus:
        try:
            vals.append(int(Path(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_cur_freq").read_text()) / 1000.0)
        except (OSError, ValueError):
            continue
    return sum(vals) / len(vals) if vals else None


def _live_descendants_cpu_s() -> float:
    """CPU seconds of this process's descendants that have not been waited for by this process yet: for each
    one alive (or a zombie), its own time plus that of the children it has itself waited for
    (/proc/<pid>/stat utime, stime, cutime, cstime). Each CPU-second of the process tree is counted once:
    a process's time sits in its own entry while it lives and moves into its parent's children time when
    the parent waits for it. 0 where /proc is not readable."""
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return 0.0
    for e in entries:
        try:
            text = Path(f"/proc/{e}/stat").read_text()
        except OSError:
            continue  # ended while listed
        fields = text[text.rfind(")") + 2:].split()  # after "pid (comm) ": state ppid ...
        try:
            parent[int(e)] = int(fields[1])
            ticks[int(e)] = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
        except (IndexError, ValueError):
            continue
    me = os.getpid()
    total = 0
    for pid in ticks:
        p, hops = parent.get(pid), 0
        while p and p != me and hops < 64:
            p, hops = parent.get(p), hops + 1
        if p == me:
            total += ticks[pid]
    return total / hz


def sample(children: bool = False) -> CpuSample:
    """The CPU accounting of this machine now (cheap: one /proc/stat read).

    `children=True` counts the CPU time of every descendant of this process as its own too: those that
    have ended and been waited for (`os.times()`'s children time) and those still running or not yet waited
    for (`_live_descendants_cpu_s`, a walk over /proc), for a window that covers the subprocesses and
    daemons a script starts (bench/_doc.py's DocRun; Ray's raylet and workers in bench/lab.py)."""
    cpus = _allowed_cpus()
    busy, why = _proc_stat_busy(cpus)
    t = os.times()
    own = t.user + t.system + ((t.children_user + t.children_system + _live_descendants_cpu_s()) if children else 0.0)
    try:
        load1: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):
        load1 = None
    return CpuSample(t=time.monotonic(), busy_s=busy, own_s=own, load1=load1, cpus=cpus, freq_mhz=_freq_mhz(cpus), why=why)


def contamination(before: CpuSample, after: CpuSample, threads: int | None, threshold: float) -> Contamination:
    """What other processes took from the run's cores between two samples (see the module docstring)."""
    window = after.t - before.t
    ncpu = len(before.cpus)
    cores = max(1, min(threads or ncpu, ncpu))
    base = {"load_before": before.load1, "load_after": after.load1, "threshold": threshold, "cores_used": cores, "cpus": ncpu,
            "window_s": window, "freq_mhz_before": before.freq_mhz, "freq_mhz_after": after.freq_mhz}
    if before.busy_s is None or after.busy_s is None or window <= 0:
        return Contamination(foreign_cpu_share=None, flagged=False, reason=before.why or after.why or "empty window", **base)
    foreign = max(0.0, (after.busy_s - before.busy_s) - (after.own_s - before.own_s))
    spare = (ncpu - cores) * window
    share = max(0.0, foreign - spare) / (cores * window)
    return Contamination(foreign_cpu_share=share, flagged=share > threshold, foreign_cpu_s=foreign, **base)
