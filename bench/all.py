"""Regenerate every measured table in README.md and docs/ in one run: `make docs`.

    python bench/all.py                      # every step, in order (hours: see --list)
    python bench/all.py --list               # each step, its command, its rough duration, the pages it writes
    python bench/all.py --only latency,tvm   # a subset, in the same fixed order

The steps run one after another, never in parallel (this is a measurement), each as its own process with
`EDGEOPT_DOCS_STAGE` set: a script stages its blocks in out/docs-stage-*/ instead of writing them
(bench/_doc.py). A step that other processes contaminated refuses (exit 3) and stops the run; a step that
fails stops it too. Only when every step ended clean, and the whole run was clean as well, are all the staged
blocks written, together with docs/conditions.md (the machine, described once, and each step's date, load and
foreign CPU share), which every page links to. Otherwise nothing in docs/ or README.md changes.

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
    Step("latency", ("bench/latency.py",), 4, "2 compiles (fp32, int8) + 5 repeats x 30 runs x 3 paths", ("docs/benchmarks.md",)),
    Step("peers", ("bench/peers.py", "--skip-olive", "--budget-minutes", "1.5"), 30,
         "GEMM peaks + 6 models x (compile, 1.5-min --auto search, 5 interleaved rounds of ~1 s per path)", ("docs/benchmarks.md",)),
    Step("peers-olive", ("bench/peers.py", "--olive-only"), 8,
         "calibrated weights + 2 rounds x 4 cold compiles (edgeopt ~15 s, Olive ~30 s) + 4 latencies", ("docs/benchmarks.md",),
         needs=("olive",)),
    Step("backends", ("bench/backends.py", "--tune-minutes", "4", "--tune-models", "efficientformer_l1",
                      "--coreml-models", "efficientformer_l1", "--rounds", "5", "--seconds", "2"), 35,
         "2 models x 7 bundles + 6 Core ML conversions (~25 min), 4-min TVM tuning + set-up, timing 2 x 7 rows x 5 rounds x 2 s",
         ("docs/backends.md",), needs=("tvm", "ai_edge_litert", "coremltools")),
    Step("tvm", ("bench/tvm_tuning.py", "--model", "efficientformer_l1", "--tune-minutes", "4"), 12,
         "ORT + 3 TVM builds (<= 20 s of timing each), 4-min tuning + ~1.5 min set-up, kernel profile",
         ("docs/tvm.md", "docs/tvm.json"), needs=("tvm",)),
    Step("passes", ("bench/passes.py",), 45,
         "7 pipelines x (5 models on random + 2 on calibrated weights) + 3 interleaved rounds each", ("docs/passes.md",)),
    Step("passes-quant-types", ("bench/passes.py", "--quant-types", "--rounds", "5"), 5,
         "8 int8 configurations of efficientformer_l1 x 5 rounds", ("docs/passes.md",)),
    Step("models", ("bench/models.py",), 45, "every variant counted, then exported and timed (>= 20 runs / 3 s), at most --budget 3600 s",
         ("docs/models.md",)),
    Step("zoo-leyolo-r2l", ("bench/zoo_leyolo_r2l.py",), 6, "6 variants: count, export, 10 ORT runs", ("docs/models-leyolo-mobile_r2l.md",)),
    Step("zoo-tinygpt-v", ("bench/zoo_tinygpt_v.py",), 4, "4 exports + 20 runs per graph on torch and ORT + 16-token greedy loops",
         ("docs/models-tinygpt_v.md",)),
    Step("harness-overhead", ("bench/harness.py", "overhead"), 2, "5 reps x (30-run bare loop + one harness measurement)", ("docs/harness.md",)),
    Step("harness-cv", ("bench/harness.py", "cv"), 2, "10 measurements, each >= 20 runs and >= 1 s in a fresh runner", ("docs/harness.md",)),
    Step("harness-cv-hog", ("bench/harness.py", "cv-hog"), 2, "the same 10 measurements beside one busy-loop process", ("docs/harness.md",)),
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


def run_steps(steps: list[Step], stage: Path, env: dict[str, str]) -> dict[str, dict]:
    """Each step in order, with a progress display; step name -> the stamp of what it staged (if anything)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    con = Console(stderr=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    total_s = sum(s.minutes for s in steps) * 60
    cols = (TextColumn("{task.description:<22}"), BarColumn(bar_width=24), TimeElapsedColumn(),
            TextColumn("{task.fields[est]}"), TextColumn("{task.fields[status]}", style="dim"))
    done_s = 0.0
    stamps: dict[str, dict] = {}
    with Progress(*cols, console=con, refresh_per_second=1) as prog:
        overall = prog.add_task("all steps", total=total_s, est=f"of ~{_fmt_min(total_s / 60)}", status="")
        tasks = {s.name: prog.add_task(s.name, total=s.minutes * 60, start=False, est=f"~{_fmt_min(s.minutes)}", status="waiting")
                 for s in steps}
        for s in steps:
            log = LOGS / f"{s.name}.log"
            before = set(stage.glob("[0-9]*.json"))
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
            for f in sorted(set(stage.glob("[0-9]*.json")) - before):
                stamps[s.name] = _doc.stage_records(stage, f.name)[0]["stamp"]
    return stamps


def conditions_block(steps: list[Step], stamps: dict[str, dict], threshold: float) -> str:
    rows = ["| step | command | started | took | load before → after | others' CPU share | pages |", "|---|---|---|---|---|---|---|"]
    for s in steps:
        st = _doc.Stamp(**stamps[s.name]) if s.name in stamps else None
        if st is None:
            rows.append(f"| {s.name} | `{s.command}` | - | - | - | - | nothing written |")
            continue
        share = "not measured" if st.foreign_share is None else f"{100 * st.foreign_share:.1f} %" + (" ⚠" if st.contaminated else "")
        load = f"{st.load_before:.2f} → {st.load_after:.2f}" if st.load_before is not None and st.load_after is not None else "?"
        rows.append(f"| {s.name} | `{st.command}` | {st.date} | {_fmt_min((st.duration_s or 0) / 60)} | {load} | {share} | {', '.join(s.writes)} |")
    return "\n".join([
        "## The last `make docs` run",
        "",
        f"Steps run one after another, nothing in parallel; each step and the whole run were checked for other processes' CPU "
        f"use (refused above {100 * threshold:.0f} % of the machine's CPU time). Steps not listed were not part of this run: "
        "their pages' own stamps give when and how they were measured. Each step's output: `out/docs-run/<step>.log`.",
        "",
        *rows,
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print each step, its command and rough duration, and exit")
    ap.add_argument("--only", help="comma list of step names (see --list); run in the fixed order")
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
            stamps = run_steps(steps, stage, env)
            run.adopt(_doc.staged_writes(stage))
            run.write_block(CONDITIONS, "docs-run", conditions_block(steps, stamps, a.max_foreign_share), title="Conditions of the figures")
            if len(steps) == len(STEPS):  # a full run replaces the note on which tables were measured under load
                run.write_block(DOCS / "benchmarks.md", "docs-run",
                                "Every measured table in README.md and docs/ was regenerated by one run of `make docs` "
                                "(`bench/all.py`): the machine, each step's date, load and other processes' CPU share are in "
                                "[conditions.md](conditions.md).")
    except StepFailed as e:
        print(f"{e}. Nothing written; staged blocks of the steps before it: {stage}", file=sys.stderr)
        return e.rc if e.rc == _doc.REFUSED else 1
    shutil.rmtree(stage, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
