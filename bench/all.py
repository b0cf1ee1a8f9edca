"""Regenerate every measured table in README.md and docs/ in one run: `make docs`.

    python bench/all.py                      # every step, in order (hours: see --list)
    python bench/all.py --list               # each step, its command, its rough duration, the pages it writes
    python bench/all.py --only latency,tvm   # a subset, in the same fixed order
    python bench/all.py --status             # measure nothing: rewrite the step table from the pages' stamps
    python bench/all.py --apply-stage DIR    # write what a run stopped by a failed step had staged

The steps run one after another, never in parallel (this is a measurement), each as its own process with
`EDGEOPT_DOCS_STAGE` set: a script stages its blocks in out/docs-stage-*/ instead of writing them
(bench/_doc.py). A step that other processes contaminated refuses (exit 3) and stops the run; a step that
fails stops it too. Only when every step ended clean, and the whole run was clean as well, are all the staged
blocks written, together with docs/conditions.md's machine block (described once; every page links to it).
Otherwise nothing in docs/ or README.md changes. Then the step table of docs/conditions.md and the note at the
top of docs/benchmarks.md are rewritten from the stamps the pages now hold (`_doc.Stamp.parse`): each step's
date, load and foreign CPU share, and which steps' figures are not yet from a quiet run. Runs of a few steps
(`--only`), on different days, combine that way; a full run refreshes every row at once. docs/benchmarks.md's
"The same path on every page" compares the figures of one path (efficientformer_l1 on ONNX Runtime fp32, ...)
that several pages time: each script records them in its block (`_doc.figure_name`).

`--allow-contaminated` writes anyway (every block that was measured under load says so); `--max-foreign-share`
sets the limit (default 0.10 of the machine's CPU time). Each step's output goes to out/docs-run/<step>.log.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import _doc  # noqa: E402

DOCS = REPO / "docs"
CONDITIONS = DOCS / "conditions.md"
LOGS = REPO / "out" / "docs-run"
STAGE_ROOT = REPO / "out"  # the run's stage folder goes here
ROOT = REPO  # what the steps' `writes` are relative to


@dataclass(frozen=True)
class Step:
    name: str
    args: tuple[str, ...]  # the script and its arguments, run with this Python from the repository root
    minutes: float  # rough duration on an idle 2-core machine, from the script's own settings
    estimate: str  # where the minutes come from
    writes: tuple[str, ...]  # the pages (relative to the repository)
    needs: tuple[str, ...] = ()  # Python modules, or "exe:NAME" programs, the step cannot run without

    @property
    def command(self) -> str:
        return _doc.command_line(list(self.args[1:]), self.args[0])


# The fixed order. Every bench script that writes a page appears here (tests/test_bench_docs.py checks it).
STEPS: tuple[Step, ...] = (
    Step("latency", ("bench/latency.py",), 4, "2 compiles (fp32, int8) + 5 repeats x 30 runs x 3 paths, started over 90 s", ("docs/benchmarks.md",)),
    Step("peers", ("bench/peers.py", "--skip-olive", "--budget-minutes", "1.5"), 30,
         "GEMM peaks + 6 models x (compile, 1.5-min --auto search, 5 interleaved rounds of ~1 s per path)", ("docs/benchmarks.md",)),
    Step("peers-olive", ("bench/peers.py", "--olive-only"), 8,
         "calibrated weights + 2 rounds x 4 cold compiles (edgeopt ~15 s, Olive ~30 s) + 4 latencies", ("docs/benchmarks.md",),
         needs=("olive",)),
    Step("backends", ("bench/backends.py", "--tune-minutes", "4", "--tune-models", "efficientformer_l1",
                      "--coreml-models", "efficientformer_l1", "--rounds", "5", "--seconds", "2"), 35,
         "2 models x 7 bundles + 6 Core ML conversions (~25 min), 4-min TVM tuning + set-up, timing 2 x 7 rows x 5 rounds x 2 s",
         ("docs/backends.md",), needs=("tvm", "ai_edge_litert", "coremltools")),
    Step("tvm", ("bench/tvm_tuning.py", "--model", "efficientformer_l1", "--tune-minutes", "10,30"), 40,
         "ORT + 7 TVM builds, kernel profile (every kernel built and timed alone), tuning to 10 then 30 min, then every row timed in 5 interleaved rounds of ~1 s started over 90 s",
         ("docs/tvm.md", "docs/tvm.json"), needs=("tvm",)),
    Step("passes", ("bench/passes.py",), 25,
         "7 pipelines x (5 models on random + 2 on calibrated weights) + 3 interleaved rounds each, started over 90 s", ("docs/passes.md",)),
    Step("passes-quant-types", ("bench/passes.py", "--quant-types", "--rounds", "5"), 6,
         "8 int8 configurations of efficientformer_l1 x 5 rounds started over 90 s", ("docs/passes.md",)),
    Step("models", ("bench/models.py",), 45, "every variant counted, then exported and timed (>= 20 runs / 3 s), at most --budget 3600 s",
         ("docs/models.md",)),
    Step("zoo-leyolo-r2l", ("bench/zoo_leyolo_r2l.py",), 6, "6 variants: count, export, then 5 interleaved rounds of about 1 s of ORT calls each", ("docs/models-leyolo-mobile_r2l.md",)),
    Step("zoo-tinygpt-v", ("bench/zoo_tinygpt_v.py",), 4, "4 exports + 20 runs per graph on torch and ORT + 16-token greedy loops",
         ("docs/models-tinygpt_v.md",)),
    Step("harness-overhead", ("bench/harness.py", "overhead"), 2, "5 reps x (30-run bare loop + one harness measurement)", ("docs/harness.md",)),
    Step("harness-cv", ("bench/harness.py", "cv"), 2, "10 measurements, each >= 20 runs and >= 1 s in a fresh runner", ("docs/harness.md",)),
    Step("harness-cv-hog", ("bench/harness.py", "cv-hog"), 2, "the same 10 measurements beside one busy-loop process", ("docs/harness.md",)),
    Step("harness-phases", ("bench/harness.py", "phases"), 2, "one ORT session timed in 60 windows of 1 s, with steal and own CPU per window",
         ("docs/harness.md",)),
    Step("harness-threads", ("bench/harness.py", "threads"), 2,
         "the same bundle with 1 and with 2 threads, 30 interleaved rounds of about 1 s each (the two speeds)", ("docs/harness.md",)),
    Step("harness-sweep", ("bench/harness.py", "sweep"), 25,
         "36 jobs (18 compiles from scratch, TVM untuned) over local + loopback ssh, killed half way and resumed; report screenshot",
         ("docs/harness.md", "docs/report.png"), needs=("tvm", "yaml", "exe:/usr/sbin/sshd", "exe:chromium")),
    Step("lab", ("bench/lab.py",), 4, "compile the tiny model, then 12 jobs on 3 boards and on 1 board, 2 alternating repeats (local Ray cluster)",
         ("docs/lab.md",), needs=("ray", "exe:/usr/sbin/sshd")),
    Step("data", ("bench/data.py",), 25, "digits as a labelled folder: fp32 vs int8 for each task, int8 calibrated on 8 vs 128 images",
         ("docs/data.md",), needs=("faster_coco_eval",)),
    Step("recover", ("bench/recover.py",), 30, "calibrated efficientformer_l1: prune 0.3 +- recover=600 on 128 images, max_drop 0.5 vs int8, "
         "800 evaluation images, interleaved latency rounds", ("docs/passes.md",)),
    Step("int8", ("bench/int8.py",), 20, "5 families: ORT fp32, int8, int8 with every op quantized; interleaved rounds, op profiles",
         ("docs/backends.md",)),
    Step("llm-genai", ("bench/llm_genai.py",), 20,
         "random Phi-2 (2.78 B): save_pretrained + genai builder int4, edgeopt export of TinyGPT-V's LLM + int4, "
         "3 prompt lengths x 4 prefills + 128 decode steps per side (needs ~18 GB RAM)",
         ("docs/llm.md",), needs=("onnxruntime_genai", "transformers")),
    Step("melt", ("bench/melt.py", "--full"), 30,
         "tinygpt_v_tiny fp32 and int4, and the full tinygpt_v int4 (compiled: ~20 min, ~14 GB): each profiled with 128-token "
         "generations and 3 sustained ones", ("docs/llm.md",)),
    Step("capabilities", ("bench/capabilities.py",), 120,
         "every family x every cell of the capability table, each compiled, checked and timed (<= 600 s a cell)",
         ("docs/capabilities.md", "docs/capabilities.json", "README.md")),
)


def _missing(step: Step) -> list[str]:
    import importlib.util

    out = []
    for need in step.needs:
        if need.startswith("exe:"):
            exe = need[4:]
            if not (shutil.which(exe) or os.access(exe, os.X_OK)):
                out.append(f"program {exe}")
        elif importlib.util.find_spec(need) is None:
            out.append(f"Python module {need}" + (" (.venv/bin/pip install -c constraints.txt olive-ai)" if need == "olive" else ""))
    return out


def _fmt_min(m: float) -> str:
    return f"{m * 60:.0f} s" if m < 1 else f"{m:.0f} min" if m < 90 else f"{m / 60:.1f} h"


def list_steps(steps: list[Step]) -> str:
    lines = []
    for s in steps:
        lines += [f"{s.name:<20} ~{_fmt_min(s.minutes):>7}  {s.command}",
                  f"{'':<30}writes {', '.join(s.writes)}; {s.estimate}"]
    lines.append(f"{'total':<20} ~{_fmt_min(sum(s.minutes for s in steps)):>7}  ({len(steps)} steps, one after another)")
    return "\n".join(lines)


def _last_line(log: Path) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 2000))
            tail = f.read().decode(errors="replace").replace("\r", "\n").strip().splitlines()
    except OSError:
        return ""
    return (tail[-1].strip() if tail else "")[:70]


class StepFailed(Exception):
    def __init__(self, step: Step, rc: int, log: Path) -> None:
        self.step, self.rc, self.log = step, rc, log
        what = "refused: other processes used the CPUs" if rc == _doc.REFUSED else f"failed (exit {rc})"
        super().__init__(f"step {step.name} {what}; its output: {log}")


def run_steps(steps: list[Step], stage: Path, env: dict[str, str]) -> None:
    """Each step in order, with a progress display; StepFailed at the first that fails or refuses."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    con = Console(stderr=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    total_s = sum(s.minutes for s in steps) * 60
    cols = (TextColumn("{task.description:<22}"), BarColumn(bar_width=24), TimeElapsedColumn(),
            TextColumn("{task.fields[est]}"), TextColumn("{task.fields[status]}", style="dim"))
    done_s = 0.0
    with Progress(*cols, console=con, refresh_per_second=1) as prog:
        overall = prog.add_task("all steps", total=total_s, est=f"of ~{_fmt_min(total_s / 60)}", status="")
        tasks = {s.name: prog.add_task(s.name, total=s.minutes * 60, start=False, est=f"~{_fmt_min(s.minutes)}", status="waiting")
                 for s in steps}
        for s in steps:
            log = LOGS / f"{s.name}.log"
            tid = tasks[s.name]
            prog.start_task(tid)
            t0 = time.monotonic()
            with open(log, "w") as out:
                p = subprocess.Popen([sys.executable, *s.args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
                while p.poll() is None:
                    time.sleep(1.0)
                    el = time.monotonic() - t0
                    left = max(0.0, total_s - done_s - max(el, s.minutes * 60))
                    prog.update(tid, completed=min(el, s.minutes * 60 * 0.99), status=_last_line(log))
                    prog.update(overall, completed=min(done_s + el, total_s), status=f"~{_fmt_min(left / 60)} left after this step")
            el = time.monotonic() - t0
            done_s += s.minutes * 60
            ok = p.returncode == 0
            prog.update(tid, completed=s.minutes * 60, status=("done" if ok else f"FAILED (exit {p.returncode})") + f" in {_fmt_min(el / 60)}")
            prog.stop_task(tid)
            if not ok:
                raise StepFailed(s, p.returncode, log)


def _step_key(command: str) -> tuple[str, ...]:
    """A command as a step is matched by: its script and arguments, without the interpreter's path and the
    docs-run arguments (--max-foreign-share, --allow-contaminated), which change how a run is judged, not what
    it measures."""
    import shlex

    words = shlex.split(command)[1:]
    out: list[str] = []
    skip = False
    for w in words:
        if skip:
            skip = False
        elif w == "--max-foreign-share":
            skip = True
        elif w != "--allow-contaminated" and not w.startswith("--max-foreign-share="):
            out.append(w)
    return tuple(out)


@dataclass(frozen=True)
class StepState:
    """Where one step's figures on the pages stand: the blocks its command stamped, read back from the pages."""

    step: Step
    blocks: tuple[_doc.PageBlock, ...]

    @property
    def stamp(self) -> _doc.Stamp | None:
        dated = [b.measured for b in self.blocks if b.measured]
        return max(dated, key=lambda st: st.date) if dated else None

    @property
    def clean(self) -> bool:
        """Measured by a stamped run whose foreign CPU share stayed within the docs run's default limit."""
        st = self.stamp
        return (st is not None and st.foreign_share is not None and not st.contaminated
                and st.foreign_share <= _doc.DEFAULT_MAX_FOREIGN_SHARE)


def page_states(steps: tuple[Step, ...] | None = None) -> tuple[list[StepState], list[_doc.PageBlock]]:
    """Each step's state, and the measured blocks no step's command stamped that its row does not already cover
    (stamped by another command, or unstamped on a page whose steps are all clean)."""
    # Read from the pages themselves: what is on them now is the record, so runs on different days combine.
    steps = STEPS if steps is None else steps
    pages = sorted({ROOT / w for s in steps for w in s.writes if w.endswith(".md")})
    blocks = [b for b in _doc.page_blocks(pages, ROOT) if b.key not in _STATUS_KEYS and (ROOT / b.page).resolve() != CONDITIONS.resolve()]
    keys = {s.name: _step_key(s.command) for s in steps}
    states = [StepState(s, tuple(b for b in blocks if b.measured and b.page in s.writes
                                 and _step_key(b.measured.command) == keys[s.name])) for s in steps]
    mine = {(b.page, b.key) for st in states for b in st.blocks}
    pending = {w for st in states if not st.clean for w in st.step.writes}  # an unclean step's row covers its pages
    return states, [b for b in blocks if (b.page, b.key) not in mine and (b.measured or b.page not in pending)]


# Blocks that describe the figures rather than hold them.
_STATUS_KEYS = ("docs-run", "capability-cells", "agreement")


def conditions_block(states: list[StepState], orphans: list[_doc.PageBlock]) -> str:
    rows = ["| step | command | measured | took | load before → after | others' CPU share | pages |",
            "|---|---|---|---|---|---|---|"]
    for s in states:
        st = s.stamp
        if st is None:
            rows.append(f"| {s.step.name} | `{s.step.command}` | not yet by a stamped run | - | - | - | {', '.join(s.step.writes)} |")
            continue
        if st.foreign_share is None:
            share = f"not measured ({st.reason or 'unknown'})"
        else:
            share = f"{100 * st.foreign_share:.1f} %" + ("" if s.clean else f" ⚠ (over {100 * _doc.DEFAULT_MAX_FOREIGN_SHARE:.0f} %)")
        load = f"{st.load_before:.2f} → {st.load_after:.2f}" if st.load_before is not None and st.load_after is not None else "?"
        took = _fmt_min(st.duration_s / 60) if st.duration_s else "< 1 min"
        rows.append(f"| {s.step.name} | `{st.command}` | {st.date} | {took} | {load} | {share} | {', '.join(s.step.writes)} |")
    n_clean = sum(s.clean for s in states)
    lines = [
        "## Each step's figures",
        "",
        f"Read back from the stamps on the pages (`bench/all.py --status` rewrites this). {n_clean} of {len(states)} steps' "
        f"figures were measured by a stamped run on a quiet machine (others' CPU share at most "
        f"{100 * _doc.DEFAULT_MAX_FOREIGN_SHARE:.0f} %). Steps run one after another, nothing in parallel; a full "
        "`make docs` runs them all in one go, and runs of a few steps (`--only`) replace only those steps' rows. "
        "Each step's output: `out/docs-run/<step>.log`.",
        "",
        *rows,
    ]
    if orphans:
        lines += ["", "Measured blocks outside the rows above (stamped by another command, or not stamped at all): " + ", ".join(
                      f"{b.page} `{b.key}`" + (f" (`{b.measured.command}`, {b.measured.date})" if b.measured else "")
                      for b in orphans) + "."]
    return "\n".join(lines)


def status_note(states: list[StepState], orphans: list[_doc.PageBlock]) -> str:
    """The note at the top of docs/benchmarks.md: which figures a reader can trust as quiet, which not."""
    unclean = [s for s in states if not s.clean]
    stale = [b for b in orphans if not b.measured]
    dates = sorted(s.stamp.date[:10] for s in states if s.clean and s.stamp)
    when = (f"on {dates[0]}" if dates[0] == dates[-1] else f"between {dates[0]} and {dates[-1]}") if dates else ""
    if not unclean and not stale:
        return ("Every measured table in README.md and docs/ was regenerated by the steps of `make docs` "
                f"(`bench/all.py`) on a quiet machine, {when}: the machine, and each step's date, load and other "
                "processes' CPU share are in [conditions.md](conditions.md).")
    out = [f"**Not every figure is from a quiet machine yet.** {len(states) - len(unclean)} of {len(states)} steps of "
           f"`make docs` were measured by stamped runs on a quiet machine {when} (their blocks end with the stamp). "
           "Read these as measured under load (other jobs shared the 2 cores, so figures of one path can disagree "
           "between pages by several times) until a clean run replaces them:", ""]
    for s in unclean:
        why = "its stamp shows other processes' CPU use" if s.stamp else "no stamped run yet"
        out.append(f"- {s.step.name} (`{s.step.command}`): {', '.join(s.step.writes)}; {why};")
    for b in stale:
        out.append(f"- {b.page} `{b.key}`: no stamp;")
    out += ["", "[conditions.md](conditions.md) lists every step with its date, load and others' CPU share."]
    return "\n".join(out)


# Two pages' figures of one path agree when the larger is at most this much above the smaller (issue 15's 10 %).
AGREE = 0.10


def agreement_block(blocks: list[_doc.PageBlock]) -> str:
    """The paths that more than one page times (the `<!-- figure: ... -->` comments `_doc.figure_name` names in
    the blocks): each page's figure with its date, and whether they agree within AGREE."""
    by_path: dict[str, list[tuple[_doc.PageBlock, float]]] = {}
    for b in blocks:
        for name, value in b.figures:
            by_path.setdefault(name, []).append((b, value))
    shared = {k: v for k, v in sorted(by_path.items()) if len(v) > 1}
    lines = ["## The same path on every page", "",
             "Each page that times one of these paths records its figure in its block (a `<!-- figure: ... -->` comment); "
             f"`bench/all.py --status` reads them back. Two figures agree when the larger is at most {100 * AGREE:.0f} % above "
             "the smaller. Each page records two figures of a path: its p50 (the median of its round medians) and its fastest "
             "round. On this machine a two-thread call runs at one of two speeds, flipping from one round to the next, and the "
             "share of slow rounds drifts over tens of minutes (docs/harness.md, \"One thread, two threads\"): pages' p50s "
             "carry that share, their fastest rounds do not. The whole machine's speed drifts too (a one-thread call: "
             "about 1.2x within half an hour), which neither figure removes."]
    if not shared:
        return "\n".join([*lines, "", "No path is timed by more than one page's current blocks yet."])
    lines += ["", "| path | pages: figure (measured) | min..max | max / min | agree |", "|---|---|---|---|---|"]
    for name, figs in shared.items():
        vals = [v for _, v in figs]
        each = "; ".join(f"{b.page} `{b.key}`: {v:.4g} ({b.measured.date if b.measured else 'no stamp'})" for b, v in figs)
        ratio = max(vals) / min(vals) if min(vals) > 0 else float("inf")
        lines.append(f"| {name} | {each} | {min(vals):.4g}..{max(vals):.4g} | {ratio:.2f} | {'yes' if ratio <= 1 + AGREE else '**no**'} |")
    return "\n".join(lines)


def apply_stage(stage: Path) -> int:
    """Write the blocks a stopped run staged (a step failed after others had ended clean), then the status.
    Each step's record is checked again: one whose stamp shows contamination is refused unless it was allowed."""
    records = _doc.stage_records(stage) if stage.is_dir() else []
    if not records:
        print(f"{stage}: no staged blocks (a docs-stage-* folder under {STAGE_ROOT} that a stopped run left)", file=sys.stderr)
        return 2
    dirty = [r["script"] for r in records if r["stamp"].get("contaminated") and not r["stamp"].get("allowed")]
    if dirty:
        print(f"refused: {', '.join(dirty)} measured while other processes used the CPUs", file=sys.stderr)
        return _doc.REFUSED
    writes = _doc.staged_writes(stage)
    writes.append(_doc._Write(path=str(CONDITIONS), key=_doc.MACHINE_KEY, text=(
        f"The machine the steps below measured on (described {_doc._utc()}):\n\n{_doc.describe_machine()}")))
    for p in [*_doc.apply_writes(writes), *write_status()]:
        print(f"[docs] wrote {p}", file=sys.stderr)
    shutil.rmtree(stage, ignore_errors=True)
    return 0


def write_status() -> list[Path]:
    """Rewrite docs/conditions.md's step table and docs/benchmarks.md's note from the stamps on the pages."""
    states, orphans = page_states()
    pages = sorted({ROOT / w for st in STEPS for w in st.writes if w.endswith(".md")})
    return _doc.apply_writes([
        _doc._Write(path=str(CONDITIONS), key="docs-run", text=conditions_block(states, orphans), title="Conditions of the figures"),
        _doc._Write(path=str(DOCS / "benchmarks.md"), key="docs-run", text=status_note(states, orphans)),
        _doc._Write(path=str(DOCS / "benchmarks.md"), key="agreement", text=agreement_block(_doc.page_blocks(pages, ROOT))),
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print each step, its command and rough duration, and exit")
    ap.add_argument("--only", help="comma list of step names (see --list); run in the fixed order")
    ap.add_argument("--apply-stage", metavar="DIR", help="measure nothing: write the blocks a stopped run staged in DIR "
                    "(the steps that ended clean before the one that failed; each block keeps its own stamp)")
    ap.add_argument("--status", action="store_true", help="measure nothing: rewrite docs/conditions.md's step table and "
                    "docs/benchmarks.md's note from the stamps the pages hold now")
    _doc.add_args(ap)
    a = ap.parse_args(argv)
    names = [s.name for s in STEPS]
    steps = list(STEPS)
    if a.only:
        want = [n.strip() for n in a.only.split(",") if n.strip()]
        unknown = [n for n in want if n not in names]
        if unknown:
            ap.error(f"unknown step(s) {', '.join(unknown)}: choose from {', '.join(names)}")
        steps = [s for s in STEPS if s.name in want]
    if a.list:
        print(list_steps(steps))
        return 0
    if a.status:
        for p in write_status():
            print(f"wrote {p}", file=sys.stderr)
        return 0
    if a.apply_stage:
        return apply_stage(Path(a.apply_stage))
    missing = {s.name: m for s in steps if (m := _missing(s))}
    if missing:
        for n, m in missing.items():
            print(f"step {n} cannot run here: missing {', '.join(m)}", file=sys.stderr)
        print(f"nothing measured. Install what is missing, or leave those steps out with --only "
              f"{','.join(s.name for s in steps if s.name not in missing)}", file=sys.stderr)
        return 2
    STAGE_ROOT.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f"docs-stage-{time.strftime('%Y%m%d-%H%M%S')}-", dir=STAGE_ROOT))
    (stage / _doc.RUN_FILE).write_text(json.dumps({"conditions": str(CONDITIONS)}) + "\n")
    env = dict(os.environ, **{_doc.STAGE_ENV: str(stage), _doc.SHARE_ENV: str(a.max_foreign_share),
                              _doc.ALLOW_ENV: "1" if a.allow_contaminated else "0"})
    print(f"{len(steps)} step(s), about {_fmt_min(sum(s.minutes for s in steps))} on an idle 2-core machine; "
          f"logs in {LOGS}", file=sys.stderr)
    try:
        with _doc.DocRun(argv, script=__file__, max_foreign_share=a.max_foreign_share, allow_contaminated=a.allow_contaminated,
                         stage="", conditions=CONDITIONS) as run:
            run_steps(steps, stage, env)
            run.adopt(_doc.staged_writes(stage))
            run.describe_machine(CONDITIONS)
    except StepFailed as e:
        print(f"{e}. Nothing written; staged blocks of the steps before it: {stage}", file=sys.stderr)
        return e.rc if e.rc == _doc.REFUSED else 1
    shutil.rmtree(stage, ignore_errors=True)
    for p in write_status():
        print(f"[docs] wrote {p} (each step's stamp, read back from the pages)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
