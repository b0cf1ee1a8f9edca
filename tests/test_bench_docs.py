"""bench/_doc.py and bench/all.py: how the bench scripts write docs (fast; nothing is measured).

A block replaces its markers' content and leaves the rest of the page; under all.py (EDGEOPT_DOCS_STAGE) a
script's blocks are staged and the page is untouched until all.py applies them; a run during which other
processes take the CPUs refuses to write; `bench/all.py --list` names every script that writes a page.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _hogs import foreign_hogs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import _doc  # noqa: E402

PAGE = "# Page\n\nhand-written intro\n\n<!-- fig:start -->\nold figures\n<!-- fig:end -->\n\nhand-written tail\n"


@pytest.fixture(autouse=True)
def _no_outer_stage(monkeypatch):
    for k in (_doc.STAGE_ENV, _doc.ALLOW_ENV, _doc.SHARE_ENV):
        monkeypatch.delenv(k, raising=False)


def _quiet_run(**kw) -> _doc.DocRun:
    # max_foreign_share 1.0: never contaminated (the share cannot exceed the machine), so these tests do not
    # depend on what else this machine runs
    return _doc.DocRun(["--x", "1"], script=str(REPO / "bench" / "demo.py"), max_foreign_share=1.0, quiet=True, **kw)


def test_replace_block_replaces_only_the_block():
    assert _doc.replace_block(PAGE, "fig", "new") == PAGE.replace("old figures", "new")
    added = _doc.replace_block("# P\n\ntext\n", "other", "body")
    assert added == "# P\n\ntext\n\n<!-- other:start -->\nbody\n<!-- other:end -->\n"


def test_write_block_replaces_the_marked_block_and_leaves_the_rest(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text(PAGE)
    with _quiet_run():
        _doc.write_block(doc, "fig", "| a | b |\n|---|---|\n| 1 | 2 |")
        _doc.write_block(doc, "fig", "| a | b |\n|---|---|\n| 3 | 4 |")  # the last one staged wins
        assert doc.read_text() == PAGE  # staged, not written, while the run lasts
    text = doc.read_text()
    assert "old figures" not in text and "| 3 | 4 |" in text and "| 1 | 2 |" not in text
    assert text.startswith("# Page\n") and "hand-written intro" in text and text.endswith("hand-written tail\n")
    block = text[text.index("<!-- fig:start -->"):text.index("<!-- fig:end -->")]
    assert "Regenerate: `" in block and "bench/demo.py --x 1`" in block  # the exact command
    assert re.search(r"Measured \d{4}-\d\d-\d\d \d\d:\d\d UTC", block)  # the date
    assert "before," in block and "after" in block  # load before/after
    assert "other processes used" in block  # the foreign CPU share
    assert text.count("<!-- machine:start -->") == 1 and "- CPU:" in text and "- Python:" in text  # described once
    assert list(tmp_path.iterdir()) == [doc]  # no temp file left behind


def test_a_failed_run_writes_nothing(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text(PAGE)
    with pytest.raises(RuntimeError), _quiet_run():
        _doc.write_block(doc, "fig", "new")
        raise RuntimeError("the measurement broke")
    assert doc.read_text() == PAGE
    with pytest.raises(RuntimeError, match="outside a DocRun"):
        _doc.write_block(doc, "fig", "new")


def test_staged_under_all_py_until_applied(tmp_path, monkeypatch):
    doc, png, stage = tmp_path / "page.md", tmp_path / "fig.png", tmp_path / "stage"
    doc.write_text(PAGE)
    stage.mkdir()
    (stage / _doc.RUN_FILE).write_text('{"conditions": "%s"}' % (tmp_path / "conditions.md"))
    monkeypatch.setenv(_doc.STAGE_ENV, str(stage))
    with _quiet_run():
        _doc.write_block(doc, "fig", "staged figures")
        _doc.write_file(png, lambda stamp: f"png of {stamp.command}".encode())
    assert doc.read_text() == PAGE and not png.exists()  # nothing written by the script
    [rec] = _doc.stage_records(stage)
    assert rec["script"] == "demo" and rec["stamp"]["command"].endswith("bench/demo.py --x 1")
    monkeypatch.delenv(_doc.STAGE_ENV)
    with _quiet_run(stage="", conditions=tmp_path / "conditions.md") as run:  # what all.py does at the end
        run.adopt(_doc.staged_writes(stage))
        assert doc.read_text() == PAGE
    text = doc.read_text()
    assert "staged figures" in text and "old figures" not in text and text.endswith("hand-written tail\n")
    assert "[conditions.md](conditions.md)" in text and "- CPU:" not in text  # the machine is described once, elsewhere
    assert png.read_bytes().startswith(b"png of ")


def test_a_contaminated_run_refuses_to_write(tmp_path, capfd):
    doc = tmp_path / "page.md"
    doc.write_text(PAGE)
    ncpu = len(os.sched_getaffinity(0))
    limit = min(0.10, 0.5 / ncpu)  # two busy cores are well above it on any machine
    # two busy loops outside this process's tree: another process's CPU use (a descendant's would be the run's own)
    with foreign_hogs(2):
        time.sleep(0.5)
        with pytest.raises(SystemExit) as e:
            with _doc.DocRun(["--x"], script="bench/demo.py", max_foreign_share=limit):
                _doc.write_block(doc, "fig", "figures taken under load")
                time.sleep(2.0)
        assert e.value.code == _doc.REFUSED != 0
        assert doc.read_text() == PAGE
        err = capfd.readouterr().err
        assert "REFUSED" in err
        # it names who: the hogs' command name with about two seconds each
        who = re.search(r"the most CPU outside this run's processes: (?P<who>[^)]*)\)", err)["who"]
        name, secs = re.match(r"(\S+) ([\d.]+) s", who).groups()
        assert "python" in name and float(secs) > 1.5 * min(ncpu, 2) / 2, who
        with _doc.DocRun(["--x"], script="bench/demo.py", max_foreign_share=limit, allow_contaminated=True, quiet=True):
            _doc.write_block(doc, "fig", "figures taken under load")
            time.sleep(2.0)
    text = doc.read_text()
    assert "figures taken under load" in text
    block = text[text.index("<!-- fig:start -->"):]
    assert block.index("Contaminated run") < block.index("figures taken under load")  # said first, prominently


def test_all_py_lists_every_script_that_writes_a_page():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "all.py"), "--list"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    writers = [p for p in sorted((REPO / "bench").glob("*.py"))
               if not p.name.startswith("_") and p.name != "all.py" and re.search(r"docs[/\"']", p.read_text())]
    assert writers, "no bench script writes docs?"
    for p in writers:
        assert f"bench/{p.name}" in out.stdout, f"bench/all.py --list does not run {p.name}, which writes docs"
    assert re.search(r"^total\s+~", out.stdout, re.M)
    for line in out.stdout.splitlines():
        if "bench/" in line and "writes" not in line:
            assert re.search(r"~\s*[\d.]+ (min|h)", line), line  # every step has its rough duration


def test_all_py_only_rejects_unknown_steps():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "all.py"), "--only", "nope", "--list"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "unknown step" in out.stderr
    out = subprocess.run([sys.executable, str(REPO / "bench" / "all.py"), "--only", "tvm,latency", "--list"], capture_output=True, text=True, timeout=60)
    lines = [ln.split()[0] for ln in out.stdout.splitlines() if ln and not ln.startswith(" ")]
    assert lines == ["latency", "tvm", "total"]  # the fixed order, whatever the order asked


def _fake_steps(tmp_path, monkeypatch, bodies: dict[str, str]):
    """bench/all.py with its steps replaced by tiny scripts that each write one block of a page in tmp_path."""
    import all as all_py

    steps = []
    for name, code in bodies.items():
        script = tmp_path / f"{name}.py"
        script.write_text(f"import sys\nsys.path.insert(0, {str(REPO / 'bench')!r})\nimport _doc\n"
                          f"with _doc.DocRun():\n    {code}\n")
        steps.append(all_py.Step(name, (str(script),), 0.1, "a test step", ("page.md",)))
    monkeypatch.setattr(all_py, "STEPS", tuple(steps))
    for attr, path in (("DOCS", tmp_path), ("CONDITIONS", tmp_path / "conditions.md"), ("LOGS", tmp_path / "logs"),
                       ("STAGE_ROOT", tmp_path / "out"), ("ROOT", tmp_path)):
        monkeypatch.setattr(all_py, attr, path)
    return all_py


def test_all_py_applies_the_staged_blocks_only_when_every_step_ended_clean(tmp_path, monkeypatch):
    doc = tmp_path / "page.md"
    doc.write_text(PAGE)
    write = f"_doc.write_block({str(doc)!r}, 'fig', 'figures of step one')"
    failing = f"_doc.write_block({str(doc)!r}, 'other', 'never written'); sys.exit(1)"
    all_py = _fake_steps(tmp_path, monkeypatch, {"one": write, "two": failing})
    assert all_py.main(["--max-foreign-share", "1.0"]) == 1
    assert doc.read_text() == PAGE and not (tmp_path / "conditions.md").exists()  # one step failed: nothing written

    all_py = _fake_steps(tmp_path, monkeypatch, {"one": write})
    kept = set((tmp_path / "out").glob("docs-stage-*"))  # the failed run's stage, left for a look
    assert all_py.main(["--max-foreign-share", "1.0"]) == 0
    text = doc.read_text()
    assert "figures of step one" in text and "old figures" not in text and "hand-written tail" in text
    assert "[conditions.md](conditions.md)" in text  # the page links to the one description of the machine
    cond = (tmp_path / "conditions.md").read_text()
    assert "- CPU:" in cond and "bench/all.py" in cond  # the machine, described once
    assert re.search(r"\| one \| `\S+ \S+one.py` \| 20\d\d-\d\d-\d\d \d\d:\d\d UTC \|", cond)  # the step's command and date
    note = (tmp_path / "benchmarks.md").read_text()
    # The step ran on this machine as it is: the note calls it quiet only when its stamp's foreign share was
    # within the limit (another job on the machine while the suite runs makes it a contaminated step).
    (state,) = [st for st in all_py.page_states()[0] if st.step.name == "one"]
    assert "docs-run:start" in note
    if state.clean:
        assert "Every measured table" in note  # every step clean: the under-load note goes
    else:
        assert "Not every figure is from a quiet machine yet" in note and "0 of 1 steps" in note
    assert set((tmp_path / "out").glob("docs-stage-*")) == kept  # this run's stage is removed once applied


def test_the_same_path_on_two_pages_is_compared(tmp_path):
    import all as all_py

    a, b, c = tmp_path / "a.md", tmp_path / "b.md", tmp_path / "c.md"
    for page in (a, b, c):
        page.write_text(PAGE)
    with _quiet_run():
        _doc.write_block(a, "fig", "| l1 | 20.0 |", figures={_doc.figure_name("l1", "ORT fp32"): 20.0, _doc.figure_name("s1", "ORT fp32"): 5.0})
        _doc.write_block(b, "fig", "| l1 | 21.5 |", figures={_doc.figure_name("l1", "ORT fp32"): 21.5})
        _doc.write_block(c, "fig", "| l1 | 25.3 | s1 | 5.2 |", figures={_doc.figure_name("l1", "torch eager fp32"): 70.0, _doc.figure_name("s1", "ORT fp32"): 5.6})
    blocks = _doc.page_blocks([a, b, c], tmp_path)
    assert dict(blocks[0].figures) == {"l1 ORT fp32 p50 ms": 20.0, "s1 ORT fp32 p50 ms": 5.0}
    table = all_py.agreement_block(blocks)
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ") and "p50 ms" in line}
    assert set(rows) == {"l1 ORT fp32 p50 ms", "s1 ORT fp32 p50 ms"}  # eager is on one page only: nothing to compare
    assert rows["l1 ORT fp32 p50 ms"].rstrip(" |").endswith("yes") and "1.07" in rows["l1 ORT fp32 p50 ms"]  # 21.5 / 20
    assert rows["s1 ORT fp32 p50 ms"].rstrip(" |").endswith("**no**") and "1.12" in rows["s1 ORT fp32 p50 ms"]  # 5.6 / 5.0
    assert "a.md `fig`: 20" in rows["l1 ORT fp32 p50 ms"] and "UTC" in rows["l1 ORT fp32 p50 ms"]  # each page with its date
    assert "<!-- figure: l1 ORT fp32 p50 ms = 20 -->" in a.read_text()  # invisible on the rendered page


def test_pages_compare_a_path_on_its_p50_and_its_fastest_round(tmp_path):
    """Two pages whose rounds fell in the slow speed in different shares: the p50s disagree, the fastest
    rounds agree, and each is its own row of the table."""
    import all as all_py

    assert _doc.path_figures("l1", "ORT fp32", [21.0, 32.0, 33.0, 20.5, 31.0]) == {
        "l1 ORT fp32 p50 ms": 31.0, "l1 ORT fp32 fastest round ms": 20.5}
    a, b = tmp_path / "a.md", tmp_path / "b.md"
    for page in (a, b):
        page.write_text(PAGE)
    with _quiet_run():
        _doc.write_block(a, "fig", "mostly slow", figures=_doc.path_figures("l1", "ORT fp32", [21.0, 32.0, 33.0, 20.5, 31.0]))
        _doc.write_block(b, "fig", "mostly fast", figures=_doc.path_figures("l1", "ORT fp32", [20.0, 21.5, 32.0, 20.8, 21.0]))
    table = all_py.agreement_block(_doc.page_blocks([a, b], tmp_path))
    rows = {ln.split(" | ")[0].strip("| "): ln.rstrip(" |") for ln in table.splitlines() if ln.startswith("| l1 ")}
    assert rows["l1 ORT fp32 p50 ms"].endswith("**no**")  # 31.0 vs 21.0
    assert rows["l1 ORT fp32 fastest round ms"].endswith("yes")  # 20.5 vs 20.0


def test_a_stamp_reads_back_from_its_line():
    st = _doc.Stamp(command=".venv/bin/python bench/x.py --a 1", date="2026-12-01 22:48 UTC", duration_s=420, load_before=1.89,
                    load_after=0.5, foreign_share=0.005, cpus=2)
    back = _doc.Stamp.parse("table\n\n" + st.line())
    assert (back.command, back.date, back.duration_s, back.load_before, back.load_after, back.foreign_share, back.cpus,
            back.threshold, back.contaminated) == (st.command, st.date, 420.0, 1.89, 0.5, 0.005, 2, 0.1, False)
    dirty = _doc.Stamp(command="python bench/x.py", date="2026-12-01 22:48 UTC", load_before=3.0, load_after=4.0,
                       foreign_share=0.41, cpus=2, contaminated=True, allowed=True)
    back = _doc.Stamp.parse(dirty.banner() + "\n\ntable\n\n" + dirty.line())
    assert back.contaminated and back.foreign_share == pytest.approx(0.41)
    unmeasured = _doc.Stamp(command="python bench/x.py", date="2026-12-01 22:48 UTC", load_before=0.1, load_after=0.2,
                            reason="no /proc/stat")
    assert _doc.Stamp.parse(unmeasured.line()).reason == "no /proc/stat"
    old = _doc.Stamp.parse("table\n\nRegenerate: `python bench/x.py`\n")  # a block from before stamps: no date
    assert old.command == "python bench/x.py" and not old.date and old.foreign_share is None
    assert _doc.Stamp.parse("a table and no command") is None


def test_status_is_read_back_from_the_pages(tmp_path, monkeypatch):
    """Steps measured on different days combine: each row comes from the stamp on the page; an unstamped or
    loaded block keeps the under-load note, naming its step."""
    import all as all_py

    def stamped(cmd: str, share: float) -> str:
        return "figures\n\n" + _doc.Stamp(command=cmd, date="2026-12-01 10:00 UTC", load_before=0.1, load_after=0.2,
                                           foreign_share=share, cpus=2, duration_s=120).line()

    (tmp_path / "a.md").write_text(f"# A\n\n<!-- fa:start -->\n{stamped('python bench/a.py --max-foreign-share 0.3', 0.01)}\n<!-- fa:end -->\n")
    (tmp_path / "b.md").write_text(f"# B\n\n<!-- fb:start -->\n{stamped('python bench/b.py', 0.25)}\n<!-- fb:end -->\n"
                                   "<!-- old:start -->\nold figures\nRegenerate: `python bench/b.py`\n<!-- old:end -->\n")
    steps = (all_py.Step("a", ("bench/a.py",), 1, "", ("a.md",)), all_py.Step("b", ("bench/b.py",), 1, "", ("b.md",)),
             all_py.Step("c", ("bench/c.py",), 1, "", ("c.md",)))
    for attr, val in (("STEPS", steps), ("ROOT", tmp_path), ("DOCS", tmp_path), ("CONDITIONS", tmp_path / "conditions.md")):
        monkeypatch.setattr(all_py, attr, val)
    states, orphans = all_py.page_states(steps)
    assert [s.clean for s in states] == [True, False, False]  # a: quiet (its docs-run flag aside); b: 25 % foreign; c: never
    assert orphans == []  # b's old block is covered by b's own row
    assert all_py.main(["--status"]) == 0
    cond = (tmp_path / "conditions.md").read_text()
    assert "| a | `python bench/a.py --max-foreign-share 0.3` | 2026-12-01 10:00 UTC | 2 min |" in cond
    assert "25.0 % ⚠" in cond and "| c | `" in cond and "not yet by a stamped run" in cond
    note = (tmp_path / "benchmarks.md").read_text()
    assert "1 of 3 steps" in note and "- b (" in note and "- c (" in note and "- a (" not in note


def test_apply_stage_writes_what_a_stopped_run_measured_clean(tmp_path, monkeypatch):
    """A step fails after another ended clean: nothing is written, but `--apply-stage` writes the clean step's
    blocks (with their own stamps) and lists the failed step as not yet measured."""
    doc = tmp_path / "page.md"
    doc.write_text(PAGE)
    write = f"_doc.write_block({str(doc)!r}, 'fig', 'figures of step one')"
    all_py = _fake_steps(tmp_path, monkeypatch, {"one": write, "two": "sys.exit(1)"})
    assert all_py.main(["--max-foreign-share", "1.0"]) == 1 and doc.read_text() == PAGE
    (stage,) = (tmp_path / "out").glob("docs-stage-*")
    assert all_py.main(["--apply-stage", str(tmp_path / "nope")]) == 2  # not a stage: nothing written
    assert all_py.main(["--apply-stage", str(stage)]) == 0
    assert "figures of step one" in doc.read_text() and not stage.exists()
    cond = (tmp_path / "conditions.md").read_text()
    assert "- CPU:" in cond and "| two | `" in cond and "not yet by a stamped run" in cond
