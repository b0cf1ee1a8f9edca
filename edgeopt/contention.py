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
from typing import Any

# The busy columns of /proc/stat by position (guest time is inside user; idle and iowait are not busy).
_COLUMNS = {0: "user", 1: "nice", 2: "system", 5: "irq", 6: "softirq", 7: "steal"}
_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc's clock ticks per second


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
    # who else used the CPUs in the window, the most first: {"name": ..., "cpu_s": ...} (`Census.others`)
    others: list[dict[str, Any]] | None = None

    @classmethod
    def unmeasured(cls, reason: str, threshold: float) -> Contamination:
        return cls(foreign_cpu_share=None, load_before=None, load_after=None, flagged=False, threshold=threshold, reason=reason)

    def who(self) -> str:
        """The other processes that used the most CPU, as `name 1.2 s, ...` ("" where not recorded)."""
        return who(self.others)

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


def _stat_columns(cpus: tuple[int, ...]) -> tuple[dict[str, float] | None, str | None]:
    """Seconds per busy /proc/stat column (`_COLUMNS`) summed over `cpus`; None with why where unreadable, the
    partial sums with why where a CPU is missing."""
    try:
        text = Path("/proc/stat").read_text()
    except OSError as e:
        return None, f"/proc/stat is not readable here ({e.strerror or e})"
    wanted = {f"cpu{c}" for c in cpus}
    out = dict.fromkeys(_COLUMNS.values(), 0.0)
    seen = 0
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in wanted:
            vals = [int(x) for x in parts[1:]]
            for i, name in _COLUMNS.items():
                if i < len(vals):
                    out[name] += vals[i] / _HZ
            seen += 1
    return out, None if seen == len(wanted) else "/proc/stat does not list every CPU this process may use"


def _proc_stat_busy(cpus: tuple[int, ...]) -> tuple[float | None, str | None]:
    cols, why = _stat_columns(cpus)
    return (None, why) if cols is None or why else (sum(cols.values()), None)


def _freq_mhz(cpus: tuple[int, ...]) -> float | None:
    vals = []
    for c in cpus:
        try:
            vals.append(int(Path(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_cur_freq").read_text()) / 1000.0)
        except (OSError, ValueError):
            continue
    return sum(vals) / len(vals) if vals else None


@dataclass(frozen=True)
class Proc:
    """One process as /proc/<pid>/stat shows it."""

    pid: int
    ppid: int
    comm: str
    start: int  # start time in clock ticks after boot: with the pid, names the process across samples
    own_s: float  # utime + stime
    children_s: float  # cutime + cstime: the children it has waited for


def processes() -> dict[int, Proc]:
    """Every process on this machine now, by pid ({} where /proc is not readable)."""
    out: dict[int, Proc] = {}
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return out
    for e in entries:
        try:
            text = Path(f"/proc/{e}/stat").read_text()
        except OSError:
            continue  # ended while listed
        close = text.rfind(")")
        fields = text[close + 2:].split()  # after "pid (comm) ": state ppid ...
        try:
            t = [int(fields[i]) for i in (11, 12, 13, 14, 19)]  # utime stime cutime cstime starttime
            out[int(e)] = Proc(int(e), int(fields[1]), text[text.find("(") + 1:close], t[4], (t[0] + t[1]) / _HZ, (t[2] + t[3]) / _HZ)
        except (IndexError, ValueError):
            continue
    return out


def descendants(procs: dict[int, Proc], root: int | None = None) -> set[int]:
    """The pids in `procs` below `root` (this process by default) in the parent tree."""
    root = os.getpid() if root is None else root
    out: set[int] = set()
    for pid in procs:
        p, hops = procs[pid].ppid, 0
        while p and p != root and p in procs and hops < 64:
            p, hops = procs[p].ppid, hops + 1
        if p == root:
            out.add(pid)
    return out


def _live_descendants_cpu_s() -> float:
    """CPU seconds of this process's descendants that have not been waited for by this process yet: for each
    one alive (or a zombie), its own time plus that of the children it has itself waited for. Each CPU-second
    of the process tree is counted once: a process's time sits in its own entry while it lives and moves into
    its parent's children time when the parent waits for it. 0 where /proc is not readable."""
    procs = processes()
    return sum(procs[p].own_s + procs[p].children_s for p in descendants(procs))


def _stat_fields(cpus: tuple[int, ...]) -> dict[str, float]:
    """Seconds per /proc/stat column (user, nice, system, irq, softirq, steal) summed over `cpus` (zeros where
    unreadable)."""
    cols, _ = _stat_columns(cpus)
    return cols if cols is not None else dict.fromkeys(_COLUMNS.values(), 0.0)


@dataclass(frozen=True)
class Census:
    """Every process's CPU time and /proc/stat's columns at one moment: `others()` of two censuses says
    who else used the CPUs between them."""

    procs: dict[int, Proc]
    fields: dict[str, float]
    me: int
    group: frozenset[int] = frozenset()  # the pids in the run's CpuGroup, where it has one

    @classmethod
    def take(cls, group: CpuGroup | None = None) -> Census:
        return cls(processes(), _stat_fields(_allowed_cpus()), os.getpid(), frozenset(group.pids()) if group else frozenset())

    def others(self, later: Census, top: int = 5) -> list[dict[str, Any]]:
        """CPU seconds between the two censuses of the processes outside this process's tree (a process that
        started in between counts whole; one that started and ended in between is not seen), most first, and
        of the time /proc/stat charges to no process: interrupts (irq, softirq: a loopback network's traffic
        lands there) and steal (a hypervisor running other guests on these CPUs)."""
        mine = descendants(later.procs, self.me) | descendants(self.procs, self.me) | {self.me} | self.group | later.group
        by_name: dict[str, float] = {}
        for pid, p in later.procs.items():
            if pid in mine:
                continue
            old = self.procs.get(pid)
            used = p.own_s - (old.own_s if old is not None and old.start == p.start else 0.0)
            if used > 0:
                by_name[p.comm] = by_name.get(p.comm, 0.0) + used
        for col in ("irq", "softirq", "steal"):
            d = later.fields.get(col, 0.0) - self.fields.get(col, 0.0)
            if d > 0:
                by_name[f"({col})"] = d
        ranked = sorted(by_name.items(), key=lambda kv: -kv[1])[:top]
        return [{"name": name, "cpu_s": round(secs, 3)} for name, secs in ranked]


def who(others: list[dict[str, Any]] | None) -> str:
    """`Census.others` as `name 1.2 s, ...` ("" where there are none)."""
    return ", ".join(f"{o['name']} {o['cpu_s']:.1f} s" for o in others or [])


def _cgroup_mounts() -> list[tuple[str, Path, str]]:
    """(kind, mount point, path of this process's group inside it) for the cgroup v2 hierarchy and the v1
    cpuacct one, where mounted: the hierarchies that count a group's CPU time."""
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        mine = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    groups: dict[str, str] = {}  # "" (v2) or a v1 controller -> this process's path
    for line in mine:
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(",") if ctrls else [""]:
            groups[c] = path
    out = []
    for line in mounts:
        pre, _, post = line.partition(" - ")
        fields, fs = pre.split(), post.split()
        if len(fields) < 5 or len(fs) < 3:
            continue
        if fs[0] == "cgroup2" and "" in groups:
            out.append(("v2", Path(fields[4]), groups[""]))
        elif fs[0] == "cgroup" and "cpuacct" in fs[2].split(",") and "cpuacct" in groups:
            out.append(("v1", Path(fields[4]), groups["cpuacct"]))
    return sorted(out)  # v1 before v2: its counter does not wait for a flush


class CpuGroup:
    """A control group holding this process and everything it starts from then on, daemons included, with
    the CPU seconds they have used: a script's own CPU time that no process tree loses (a parent that never
    waits for its children, as Ray's raylet does, drops their time from os.times(); a double-forked daemon
    leaves the tree). `create` returns None where no writable cgroup hierarchy counts CPU time (not root, a
    container without one): callers fall back to the process tree (`sample(children=True)`)."""

    def __init__(self, kind: str, path: Path, home: Path) -> None:
        self.kind, self.path, self.home = kind, path, home

    @classmethod
    def create(cls, name: str) -> CpuGroup | None:
        for kind, mount, mine in _cgroup_mounts():
            home = mount / mine.lstrip("/")
            path = home / name
            try:
                path.mkdir(exist_ok=True)
                (path / "cgroup.procs").write_text(f"{os.getpid()}\n")
            except OSError:
                try:
                    path.rmdir()
                except OSError:
                    pass
                continue
            group = cls(kind, path, home)
            if group.usage_s() is not None:
                return group
            group.close()
        return None

    def usage_s(self) -> float | None:
        """CPU seconds used by the group's processes since it was made (None: unreadable)."""
        try:
            if self.kind == "v1":
                return int((self.path / "cpuacct.usage").read_text()) / 1e9
            for line in (self.path / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
        except (OSError, ValueError):
            return None
        return None

    def pids(self) -> set[int]:
        try:
            return {int(x) for x in (self.path / "cgroup.procs").read_text().split()}
        except (OSError, ValueError):
            return set()

    def close(self) -> None:
        """Move this process back to the group it came from and remove the group once it is empty (processes
        still in it keep it; the kernel removes nothing by itself, so a later run of the same name reuses it)."""
        try:
            (self.home / "cgroup.procs").write_text(f"{os.getpid()}\n")
            self.path.rmdir()
        except OSError:
            pass


def sample(children: bool = False, group: CpuGroup | None = None) -> CpuSample:
    """The CPU accounting of this machine now (cheap: one /proc/stat read).

    `group`: the run's own CPU time is the control group's (this process and all it started since the
    group was made). Else `children=True` counts the CPU time of every descendant of this process as its
    own too: those that have ended and been waited for (`os.times()`'s children time) and those still
    running or not yet waited for (`_live_descendants_cpu_s`, a walk over /proc). Both cover the
    subprocesses a script starts (bench/_doc.py's DocRun); only the group keeps the time of processes whose
    parent never waited for them."""
    cpus = _allowed_cpus()
    busy, why = _proc_stat_busy(cpus)
    t = os.times()
    used = group.usage_s() if group is not None else None
    if used is not None:
        own = used
    else:
        own = t.user + t.system + ((t.children_user + t.children_system + _live_descendants_cpu_s()) if children else 0.0)
    try:
        load1: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):
        load1 = None
    return CpuSample(t=time.monotonic(), busy_s=busy, own_s=own, load1=load1, cpus=cpus, freq_mhz=_freq_mhz(cpus), why=why)


def contamination(before: CpuSample, after: CpuSample, threads: int | None, threshold: float,
                  others: list[dict[str, Any]] | None = None) -> Contamination:
    """What other processes took from the run's cores between two samples (see the module docstring);
    `others` (from two `Census`es around the same window) names who."""
    window = after.t - before.t
    ncpu = len(before.cpus)
    cores = max(1, min(threads or ncpu, ncpu))
    base = {"load_before": before.load1, "load_after": after.load1, "threshold": threshold, "cores_used": cores, "cpus": ncpu,
            "window_s": window, "freq_mhz_before": before.freq_mhz, "freq_mhz_after": after.freq_mhz,
            "others": others or None}
    if before.busy_s is None or after.busy_s is None or window <= 0:
        return Contamination(foreign_cpu_share=None, flagged=False, reason=before.why or after.why or "empty window", **base)
    foreign = max(0.0, (after.busy_s - before.busy_s) - (after.own_s - before.own_s))
    spare = (ncpu - cores) * window
    share = max(0.0, foreign - spare) / (cores * window)
    return Contamination(foreign_cpu_share=share, flagged=share > threshold, foreign_cpu_s=foreign, **base)
