"""The one way a bench script writes docs: measured blocks, staged until the run ends clean.

    from _doc import DocRun, add_args, write_block
    add_args(ap)                              # --allow-contaminated, --max-foreign-share
    with DocRun.from_args(a):
        ...measure...
        write_block(REPO / "docs" / "x.md", "key", body)   # staged, not written yet

`DocRun` records the date, the load average before and after, and the CPU time other processes used during
the run (`edgeopt.contention` on /proc/stat). "Own" is the CPU time of a control group the run puts itself in
(`contention.CpuGroup`: every process it starts from then on, daemons and processes whose parent never waits
for them included); where no cgroup hierarchy is writable, this process and its descendants, alive or waited
for. Anything else is foreign, and a refused run names who used the most. When the run ends:

- an exception: nothing is written;
- other processes used more than `--max-foreign-share` (default 0.10) of the machine's CPUs: the run is
  contaminated and REFUSES to write (it says why and exits with status 3), unless `--allow-contaminated`,
  in which case every block it writes opens with a warning;
- otherwise every staged block replaces the text between `<!-- key:start -->` and `<!-- key:end -->` of its
  page (appended where the markers are missing), each page written atomically (temp file + rename). Each block
  ends with its stamp: the exact command that regenerates it, the date, the load before and after and the
  foreign CPU share. Each page (README.md aside) gets one `machine` block: `describe_machine()`.

Under `bench/all.py` (`EDGEOPT_DOCS_STAGE=DIR`), a clean run does not write: it leaves its rendered blocks
in DIR, and all.py applies every script's blocks at the end, only if the whole run was clean. The machine is
then described once, in docs/conditions.md, which each page's `machine` block links to.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edgeopt import contention  # noqa: E402
from edgeopt._util import atomic_write_bytes  # noqa: E402

STAGE_ENV = "EDGEOPT_DOCS_STAGE"  # set by bench/all.py: stage rendered blocks in this folder instead of writing
ALLOW_ENV = "EDGEOPT_DOCS_ALLOW_CONTAMINATED"  # "1": as --allow-contaminated (all.py passes its flag down)
SHARE_ENV = "EDGEOPT_DOCS_MAX_FOREIGN_SHARE"  # as --max-foreign-share
DEFAULT_MAX_FOREIGN_SHARE = 0.10
REFUSED = 3  # exit status of a run that refused to write because it was contaminated
MACHINE_KEY = "machine"
RUN_FILE = "run.json"  # in the stage folder: {"conditions": path of docs/conditions.md}

# Each path's rounds start spread over at least this many seconds. This VM's speed changes for stretches of
# 10-44 s with nothing else running (docs/harness.md, "phases"); rounds packed into 15 s can all land in one
# stretch, and two pages then disagree by 30-50 % on the same path. Spread over 90 s, every path gets rounds
# in both kinds of stretch; a slow mode that holds about half the time still moves the median (docs/measuring.md).
ROUND_SPAN_S = 90.0

_current: DocRun | None = None


def _utc(ts: float | None = None) -> str:
    return dt.datetime.fromtimestamp(time.time() if ts is None else ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %" if x < 0.1 else f"{100 * x:.0f} %"


def _adopt_orphans() -> None:
    """Make this process the reaper of its orphaned descendants (Linux), so that the CPU time of a grandchild
    whose parent was killed (a cell's process group killed at its time limit) still counts as this run's own
    once reaped, instead of as another process's."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _reap() -> None:
    """Reap every child that has ended (their CPU time joins os.times()'s children time); running ones stay."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def describe_machine() -> str:
    """The machine as a markdown list: CPU, cores, memory, OS, Python and the versions of the libraries
    the figures depend on (those installed here)."""
    import importlib.metadata as md
    import platform

    from edgeopt.harness.devices.local import linux_cpu_info

    cpu = linux_cpu_info()
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        mem = "unknown"
    allowed = len(contention.sample().cpus)
    freq = ""
    if cpu.get("max_freq_khz"):
        freq = f", max {int(cpu['max_freq_khz']) / 1e6:.2f} GHz"
    if cpu.get("governor"):
        freq += f", governor `{cpu['governor']}`"
    libs = []
    for dist in ("torch", "onnxruntime", "apache-tvm", "ai-edge-litert", "litert-torch", "coremltools", "numpy", "timm", "olive-ai"):
        try:
            libs.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            continue
    return "\n".join([
        f"- CPU: {cpu.get('cpu_model') or platform.processor() or platform.machine()} ({platform.machine()}{freq})",
        f"- cores: {os.cpu_count()} logical, {allowed} usable by this process",
        f"- memory: {mem}",
        f"- OS: {platform.system()} {platform.release()}",
        f"- Python: {platform.python_version()}",
        f"- libraries: {', '.join(libs) or 'none found'}",
    ])


def add_args(ap: argparse.ArgumentParser) -> None:
    """The options every doc-writing script takes (their defaults come from bench/all.py's environment)."""
    g = ap.add_argument_group("docs")
    g.add_argument("--allow-contaminated", action="store_true", default=os.environ.get(ALLOW_ENV) == "1",
                   help="write even when other processes used more than --max-foreign-share of the CPUs (the page says so)")
    g.add_argument("--max-foreign-share", type=float, default=float(os.environ.get(SHARE_ENV) or DEFAULT_MAX_FOREIGN_SHARE),
                   help=f"share of the machine's CPU time other processes may use during the run (default {DEFAULT_MAX_FOREIGN_SHARE})")


def command_line(argv: list[str] | None = None, script: str | None = None) -> str:
    """The command that reruns this script with these arguments, as a user types it from the repository."""
    script = script or sys.argv[0]
    try:
        script = str(Path(script).resolve().relative_to(REPO))
    except ValueError:
        pass
    py = Path(sys.executable)
    try:
        exe = str(py.relative_to(REPO)) if py.is_relative_to(REPO) else "python"
    except ValueError:
        exe = "python"
    return shlex.join([exe, script, *(sys.argv[1:] if argv is None else argv)])


@dataclass
class Stamp:
    """What a block says about the run that measured it."""

    command: str
    date: str
    duration_s: float | None = None
    load_before: float | None = None
    load_after: float | None = None
    foreign_share: float | None = None  # of the machine's CPU time during the run; None: not measurable here
    foreign_cpu_s: float | None = None
    cpus: int | None = None
    threshold: float = DEFAULT_MAX_FOREIGN_SHARE
    contaminated: bool = False
    allowed: bool = False  # written although contaminated (--allow-contaminated)
    reason: str | None = None  # why foreign_share is None
    rendered: str | None = None  # re-rendered from a record by this command (no measurement in this run)

    def load_text(self) -> str:
        f = lambda x: "?" if x is None else f"{x:.2f}"  # noqa: E731
        return f"load average (1 min) {f(self.load_before)} before, {f(self.load_after)} after"

    def foreign_text(self) -> str:
        if self.foreign_share is None:
            return f"other processes' CPU use not measured ({self.reason or 'unknown'})"
        return f"other processes used {_pct(self.foreign_share)} of the {self.cpus} CPUs (refused above {_pct(self.threshold)})"

    def line(self) -> str:
        took = f" in {self.duration_s / 60:.0f} min" if self.duration_s and self.duration_s >= 60 else ""
        if self.load_before is None and self.foreign_share is None and self.reason is None:  # an old record
            return (f"Regenerate: `{self.command}`. Measured {self.date}, before load and other processes' CPU use were "
                    f"recorded; re-rendered from its record by `{self.rendered}`.")
        out = f"Regenerate: `{self.command}`. Measured {self.date}{took}; {self.load_text()}; {self.foreign_text()}."
        if self.rendered:
            out += f" Re-rendered from its record by `{self.rendered}`."
        return out

    @classmethod
    def parse(cls, text: str) -> Stamp | None:
        """The stamp written by `line()` in `text` (None where there is none): how the docs run reads back what
        measured each block. An unstamped `Regenerate:` line gives a Stamp with only the command and no date."""
        m = _STAMP_RE.search(text)
        if m is None:
            return None
        g = m.groupdict()
        num = lambda x: None if x in (None, "?") else float(x)  # noqa: E731
        share = num(g["share"])
        threshold = num(g["threshold"])
        dirty = share is not None and threshold is not None and share > threshold  # written only with --allow-contaminated
        return cls(command=g["command"], date=g["date"] or "", duration_s=None if g["min"] is None else 60 * float(g["min"]),
                   load_before=num(g["lb"]), load_after=num(g["la"]), foreign_share=None if share is None else share / 100,
                   cpus=None if g["cpus"] is None else int(g["cpus"]),
                   threshold=DEFAULT_MAX_FOREIGN_SHARE if threshold is None else threshold / 100,
                   contaminated=dirty, allowed=dirty, reason=g["reason"],
                   rendered=g["rendered"])

    def banner(self) -> str | None:
        if not (self.contaminated and self.allowed):
            return None
        return (f"> **⚠ Contaminated run: other processes used {_pct(self.foreign_share or 0)} of the {self.cpus} CPUs while "
                f"this was measured (limit {_pct(self.threshold)}). Written anyway with `--allow-contaminated`: the "
                "figures below are inflated by that load; regenerate them on a quiet machine.**")


# What Stamp.line() writes, read back by Stamp.parse().
_STAMP_RE = re.compile(
    r"^Regenerate: `(?P<command>[^`]+)`\.?(?: Measured (?P<date>\d{4}-\d\d-\d\d \d\d:\d\d UTC)"
    r"(?: in (?P<min>\d+) min)?(?:; load average \(1 min\) (?P<lb>[\d.?]+) before, (?P<la>[\d.?]+) after; "
    r"(?:other processes used (?P<share>[\d.]+) % of the (?P<cpus>\d+) CPUs \(refused above (?P<threshold>[\d.]+) %\)"
    r"|other processes' CPU use not measured \((?P<reason>[^)]*)\))\.)?(?:, before load .*?)?"
    r"(?: Re-rendered from its record by `(?P<rendered>[^`]+)`\.)?)?", re.M)
_FIGURE_RE = re.compile(r"<!-- figure: (?P<name>[^=]+?) = (?P<value>[-+\d.eE]+) -->")
_BLOCK_RE = re.compile(r"<!-- (?P<key>[\w-]+):start -->\n(?P<body>.*?)\n<!-- (?P=key):end -->", re.S)


@dataclass(frozen=True)
class PageBlock:
    """One measured block of a page, as the page holds it now, with the stamp of the run that wrote it."""

    page: str  # relative to the repository
    key: str
    stamp: Stamp | None  # None: the block names no command that regenerates it
    figures: tuple[tuple[str, float], ...] = ()  # the block's `<!-- figure: NAME = VALUE -->` comments

    @property
    def measured(self) -> Stamp | None:
        """The stamp where it records when the block was measured (an old `Regenerate:` line alone does not)."""
        return self.stamp if self.stamp is not None and self.stamp.date else None


def page_blocks(paths: list[Path], root: Path = REPO) -> list[PageBlock]:
    """Every marked block of these pages (the machine blocks aside), with its stamp read back; pages named
    relative to `root`."""
    out = []
    for p in paths:
        if not p.is_file():
            continue
        rel = str(p.resolve().relative_to(root.resolve())) if p.resolve().is_relative_to(root.resolve()) else str(p)
        for m in _BLOCK_RE.finditer(p.read_text()):
            if m["key"] != MACHINE_KEY:
                figs = tuple((f["name"].strip(), float(f["value"])) for f in _FIGURE_RE.finditer(m["body"]))
                out.append(PageBlock(rel, m["key"], Stamp.parse(m["body"]), figs))
    return out


def replace_block(text: str, key: str, body: str) -> str:
    """`text` with the block between <!-- key:start --> and <!-- key:end --> replaced by `body` (markers kept),
    or with the block appended where the markers are missing. The rest of the text is left as it is."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = f"{start}\n{body.strip(chr(10))}\n{end}"
    i = text.find(start)
    j = text.find(end, i + len(start)) if i >= 0 else -1
    if i >= 0 and j >= 0:
        return text[:i] + block + text[j + len(end):]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def _insert_machine(text: str, body: str) -> str:
    """The machine block replaced, or put right under the page's title where the page has none yet."""
    if f"<!-- {MACHINE_KEY}:start -->" in text:
        return replace_block(text, MACHINE_KEY, body)
    block = f"<!-- {MACHINE_KEY}:start -->\n{body.strip(chr(10))}\n<!-- {MACHINE_KEY}:end -->\n"
    lines = text.splitlines(keepends=True)
    if lines and lines[0].startswith("# "):
        return lines[0] + "\n" + block + "".join(lines[1:])
    return block + "\n" + text


@dataclass
class _Write:
    """One rendered write: a block of a page (key set) or a whole file (data set)."""

    path: str
    key: str | None = None
    text: str | None = None
    title: str | None = None
    data: bytes | None = None


def apply_writes(writes: list[_Write]) -> list[Path]:
    """Write the pages and files, each atomically; blocks of one page in the order given. Returns the paths."""
    pages: dict[str, list[_Write]] = {}
    done: list[Path] = []
    for w in writes:
        if w.key is None:
            atomic_write_bytes(w.path, w.data or b"")
            done.append(Path(w.path))
        else:
            pages.setdefault(w.path, []).append(w)
    for path, ws in pages.items():
        p = Path(path)
        text = p.read_text() if p.exists() else f"# {ws[0].title or p.stem}\n"
        for w in ws:
            text = _insert_machine(text, w.text or "") if w.key == MACHINE_KEY else replace_block(text, w.key, w.text or "")
        atomic_write_bytes(p, text.encode())
        done.append(p)
    return done


def stage_records(stage: Path, pattern: str = "[0-9]*.json") -> list[dict[str, Any]]:
    """The records scripts left in a stage folder (bench/all.py), in the order they were written."""
    return [json.loads(p.read_text()) for p in sorted(stage.glob(pattern))]


def staged_writes(stage: Path) -> list[_Write]:
    out = []
    for rec in stage_records(stage):
        for w in rec["writes"]:
            data = base64.b64decode(w.pop("data_b64")) if "data_b64" in w else None
            out.append(_Write(**w, data=data))
    return out


class DocRun:
    """One measured run of a bench script: stages its doc writes, then writes them only if the run was clean.

    `replay`: a stamp (dict) from an earlier run's record, for commands that only re-render saved figures:
    nothing is measured, the blocks keep the stamp of the run that measured them."""

    def __init__(self, argv: list[str] | None = None, *, script: str | None = None, max_foreign_share: float | None = None,
                 allow_contaminated: bool | None = None, stage: Path | str | None = None, replay: dict | None = None,
                 conditions: Path | None = None, quiet: bool = False) -> None:
        self.command = command_line(argv, script)
        self.script = Path(script or sys.argv[0]).stem
        env_share = os.environ.get(SHARE_ENV)
        self.threshold = max_foreign_share if max_foreign_share is not None else float(env_share or DEFAULT_MAX_FOREIGN_SHARE)
        self.allow = allow_contaminated if allow_contaminated is not None else os.environ.get(ALLOW_ENV) == "1"
        stage = stage if stage is not None else os.environ.get(STAGE_ENV)
        self.stage = Path(stage) if stage else None
        self.replay = replay
        self.conditions = conditions  # the page that describes the machine (bench/all.py's docs/conditions.md)
        self.quiet = quiet
        self.stamp: Stamp | None = None
        self._pending: list[tuple[str, Any]] = []  # ("block", (doc, key, body, title)) | ("file", (path, data)) | ("rendered", _Write) | ("machine", doc)
        self._before: contention.CpuSample | None = None
        self._t0 = 0.0

    @classmethod
    def from_args(cls, a: argparse.Namespace, argv: list[str] | None = None, **kw: Any) -> DocRun:
        return cls(argv, max_foreign_share=a.max_foreign_share, allow_contaminated=a.allow_contaminated, **kw)

    # --- what a script calls -------------------------------------------------------------------------------
    def write_block(self, doc: Path | str, key: str, body: str, title: str | None = None, figures: dict[str, float] | None = None) -> None:
        """Stage the block `key` of page `doc` (a later call with the same page and key replaces it).
        `figures`: the block's figures of paths other pages time too (named by `figure_name`), recorded in it as
        comments that `bench/all.py --status` compares across pages."""
        if key == MACHINE_KEY:
            raise ValueError(f"block key {MACHINE_KEY!r} is the run's own")
        doc = str(Path(doc).resolve())
        if figures:
            body = body.rstrip("\n") + "\n\n" + "\n".join(f"<!-- figure: {k} = {v:.4g} -->" for k, v in sorted(figures.items()))
        self._pending = [p for p in self._pending if not (p[0] == "block" and p[1][:2] == (doc, key))]
        self._pending.append(("block", (doc, key, body, title)))

    def write_file(self, path: Path | str, data: bytes | Callable[[Stamp], bytes]) -> None:
        """Stage a whole file (a figure's JSON record, a screenshot); `data` may be a function of the stamp."""
        path = str(Path(path).resolve())
        self._pending = [p for p in self._pending if not (p[0] == "file" and p[1][0] == path)]
        self._pending.append(("file", (path, data)))

    def adopt(self, writes: list[_Write]) -> None:
        """Writes already rendered by other runs (bench/all.py applies its scripts' staged blocks this way)."""
        self._pending += [("rendered", w) for w in writes]

    def describe_machine(self, doc: Path | str) -> None:
        """Stage the page's `machine` block alone (bench/all.py: docs/conditions.md describes the machine once)."""
        self._pending.append(("machine", str(Path(doc).resolve())))

    # --- the run -------------------------------------------------------------------------------------------
    def __enter__(self) -> DocRun:
        global _current
        self._t0 = time.time()
        _adopt_orphans()
        self._group = contention.CpuGroup.create(f"edgeopt-docs-{os.getpid()}")
        self._before = contention.sample(children=True, group=self._group)
        self._census = contention.Census.take(self._group)
        _current = self
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        global _current
        _current = None
        _reap()
        after = contention.sample(children=True, group=self._group)
        self.stamp = self._stamp(self._before, after)
        others = self._census.others(contention.Census.take(self._group))
        if self._group is not None:
            self._group.close()
        who = contention.who(others) or "none seen"
        if self._pending:
            self._say(f"[docs] CPU outside this run's processes, the most first: {who}")
        if exc_type is not None:
            if self._pending:
                self._say(f"[docs] the run failed ({exc_type.__name__}): nothing written")
            return False
        if self.stamp.contaminated and not self.allow and self._pending:
            self._say(f"[docs] REFUSED to write: {self.stamp.foreign_text()} during this run "
                      f"({self.stamp.load_text()}; the most CPU outside this run's processes: {who}). Rerun on a quiet machine, or pass --allow-contaminated "
                      "(the page then says so), or raise --max-foreign-share.")
            raise SystemExit(REFUSED)
        writes = self.render()
        if not writes:
            return False
        if self.stage is not None:
            self._save_stage(writes)
            self._say(f"[docs] staged {len(writes)} write(s) in {self.stage} ({self.stamp.foreign_text()})")
        else:
            for p in apply_writes(writes):
                self._say(f"[docs] wrote {p}")
        return False

    def _say(self, msg: str) -> None:
        if not self.quiet or "REFUSED" in msg:
            print(msg, file=sys.stderr, flush=True)

    def _stamp(self, before: contention.CpuSample, after: contention.CpuSample) -> Stamp:
        if self.replay is not None:
            st = Stamp(**{k: v for k, v in self.replay.items() if k in Stamp.__dataclass_fields__})
            st.rendered = self.command
            return st
        c = contention.contamination(before, after, None, self.threshold)
        # at most the whole machine: over a short window /proc/stat's clock ticks can round a little above it
        share = None if c.foreign_cpu_share is None else round(min(1.0, c.foreign_cpu_share), 4)
        return Stamp(command=self.command, date=_utc(self._t0), duration_s=round(time.time() - self._t0, 1),
                     load_before=c.load_before, load_after=c.load_after, foreign_share=share,
                     foreign_cpu_s=None if c.foreign_cpu_s is None else round(c.foreign_cpu_s, 2), cpus=c.cpus,
                     threshold=self.threshold, contaminated=share is not None and share > self.threshold,
                     allowed=share is not None and share > self.threshold and self.allow, reason=c.reason)

    def _conditions(self) -> Path | None:
        if self.conditions is not None:
            return Path(self.conditions).resolve()
        if self.stage is None or not (self.stage / RUN_FILE).is_file():
            return None
        return Path(json.loads((self.stage / RUN_FILE).read_text())["conditions"])

    def render(self) -> list[_Write]:
        """The staged writes with the stamp added (and one machine block per page)."""
        st = self.stamp
        assert st is not None, "render() after the run"
        out: list[_Write] = []
        pages: list[str] = []
        conditions = self._conditions()
        machine = None
        for kind, item in self._pending:
            if kind == "rendered":
                out.append(item)
            elif kind == "machine":
                if item not in pages:
                    pages.append(item)
            elif kind == "file":
                path, data = item
                out.append(_Write(path=path, data=data(st) if callable(data) else data))
            else:
                doc, key, body, title = item
                parts = [b for b in (st.banner(), body.strip("\n"), st.line()) if b]
                out.append(_Write(path=doc, key=key, text="\n\n".join(parts), title=title))
                if doc not in pages and Path(doc).name != "README.md" and self.replay is None:
                    pages.append(doc)  # (a re-rendered page keeps the description of the machine that measured it)
        for doc in pages:
            if conditions is not None and Path(doc) != conditions:
                rel = os.path.relpath(conditions, Path(doc).parent)
                text = f"Machine and conditions of the run that wrote this page: [{Path(rel).name}]({rel})."
            elif conditions is not None:
                text = f"The machine `{st.command}` measured on ({st.date}):\n\n{describe_machine()}"
            else:
                machine = machine or describe_machine()
                text = f"Machine (as described by the last run that wrote to this page, `{st.command}`, {st.date}):\n\n{machine}"
            out.append(_Write(path=doc, key=MACHINE_KEY, text=text))
        return out

    def _save_stage(self, writes: list[_Write]) -> None:
        self.stage.mkdir(parents=True, exist_ok=True)
        n = len(list(self.stage.glob("[0-9]*.json")))
        name = self.script
        recs = []
        for w in writes:
            d = {k: v for k, v in asdict(w).items() if k != "data" and v is not None}
            if w.data is not None:
                d["data_b64"] = base64.b64encode(w.data).decode()
            recs.append(d)
        rec = {"script": name, "stamp": asdict(self.stamp), "writes": recs}
        atomic_write_bytes(self.stage / f"{n:03d}-{name}.json", json.dumps(rec, indent=1).encode())


def current() -> DocRun:
    if _current is None:
        raise RuntimeError("write_block() outside a DocRun: wrap the measuring part of the script in `with DocRun(...):`")
    return _current


def write_block(doc: Path | str, key: str, body: str, title: str | None = None, figures: dict[str, float] | None = None) -> None:
    """Stage the block `key` of page `doc` in the current DocRun (written when the run ends clean)."""
    current().write_block(doc, key, body, title, figures)


def figure_name(model: str, path: str, stat: str = "p50") -> str:
    """The name of one figure of a path that several pages time (`path`: "ORT fp32", the plain export on ONNX
    Runtime), the same on every page: "efficientformer_l1 ORT fp32 p50 ms". `stat`: "p50" (the median of the
    page's round medians) or "fastest round" (the fastest of them: `path_figures`)."""
    return f"{model} {path} {stat} ms"


def path_figures(model: str, path: str, rounds: list[float]) -> dict[str, float]:
    """A path's figures for the cross-page comparison, from its round medians: the p50 (their median) and the
    fastest round. On this VM a two-thread ONNX Runtime call runs in one of two speeds, flipping from one
    round to the next (docs/measuring.md, "two speeds"); the share of slow rounds drifts over tens of minutes,
    so two pages' p50s of one path can differ by 1.6x while their fastest rounds agree."""
    return {figure_name(model, path): float(statistics.median(rounds)),
            figure_name(model, path, "fastest round"): float(min(rounds))}


def models_path_figures(path: str, rounds: Mapping[str, list[float]]) -> dict[str, float]:
    """`path_figures` of one path for each model of `rounds` (model -> the path's round medians)."""
    return {k: v for model, r in rounds.items() for k, v in path_figures(model, path, r).items()}


def write_file(path: Path | str, data: bytes | Callable[[Stamp], bytes]) -> None:
    current().write_file(path, data)
