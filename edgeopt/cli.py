"""The `edgeopt` command: compile | profile | bench | report | models | devices.

Every failure is printed as one line (what, then how to fix) with exit code 1: an EdgeoptError as it is,
an error from the OS or a library as its type, origin and first line (`_library_error`). `--debug` shows
the traceback.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from edgeopt.errors import EdgeoptError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Edge deployment compiler and runtime.")
console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}

# Sub-apps that live in their own modules: (command name, "module:attribute"). One line each.
_SUBAPPS: list[tuple[str, str]] = [
    ("devices", "edgeopt.harness.cli:devices_app"),
    ("bench", "edgeopt.orchestrate.cli:bench_app"),
    ("board", "edgeopt.harness.board_cli:board_app"),
]


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False) -> None:
    _state["debug"] = debug


def _fmt_m(n: float | None, unit: str = "M") -> str:
    return "-" if n is None else f"{n:.2f}{unit}"


@app.command()
def models(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    count: Annotated[bool, typer.Option("--count", help="also count params/MACs (slower; on the meta device)")] = False,
) -> None:
    """List every model variant with task, inputs and the paper's figures (measured ones with --count)."""
    from edgeopt.models.registry import all_specs

    rows: list[dict[str, Any]] = []
    for s in all_specs():
        row: dict[str, Any] = {
            "name": s.name, "family": s.family, "task": s.task,
            "inputs": {i.name: list(i.shape) for i in s.inputs}, "outputs": list(s.outputs),
            "paper_params_m": s.paper.params_m, "paper_macs_g": s.paper.macs_g, "paper_source": s.paper.source,
        }
        if count:
            row.update(_count(s))
        rows.append(row)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    # the name is the one column never cut; the family (its prefix) is left out when the terminal is narrow
    wide = console.width >= 100
    t = Table(title=f"{len(rows)} models", box=box.SIMPLE_HEAD, show_edge=False)
    t.add_column("name", no_wrap=True, min_width=max(len(r["name"]) for r in rows))
    if wide:
        t.add_column("family", overflow="fold")
    t.add_column("task", overflow="fold")
    t.add_column("inputs", overflow="fold")
    t.add_column("params\n(paper)", justify="right", no_wrap=True)
    t.add_column("GMACs\n(paper)", justify="right", no_wrap=True)
    if count:
        t.add_column("params\n(counted)", justify="right", no_wrap=True)
        t.add_column("GMACs\n(counted)", justify="right", no_wrap=True)
    for r in rows:
        cells = [r["name"], *([r["family"]] if wide else []), r["task"], " ".join(f"{k} {'x'.join(map(str, v))}" for k, v in r["inputs"].items()).replace(" 1x", " "),
                 _fmt_m(r["paper_params_m"]), _fmt_m(r["paper_macs_g"], "")]
        if count:
            cells += [_fmt_m(r.get("params_m")), _fmt_m(r.get("macs_g"), "")]
        t.add_row(*cells)
    console.print(t)


def _count(spec) -> dict[str, Any]:
    import torch

    from edgeopt.models.counting import count_macs, count_params

    m = spec.build(device="meta")
    ex = tuple(
        torch.zeros(i.shape, dtype=getattr(torch, i.dtype), device="meta") for i in spec.inputs
    )
    try:
        macs = count_macs(m, ex, convention=spec.paper.macs_convention) / 1e9
    except Exception:  # noqa: BLE001 - a model that cannot run on meta just has no counted MACs
        macs = None
    return {"params_m": count_params(m) / 1e6, "macs_g": macs}


@app.command("compile")
def compile_cmd(
    model: Annotated[str, typer.Argument(help="registered model name (see `edgeopt models`)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="bundle folder to write")],
    backend: Annotated[str, typer.Option("--backend", "-b")] = "onnxruntime",
    passes: Annotated[str | None, typer.Option("--passes", "-p", help="e.g. reparam,quantize:int8")] = None,
    weights: Annotated[Path | None, typer.Option("--weights", "-w", help="local checkpoint file")] = None,
    target: Annotated[str | None, typer.Option("--target", help="backend target (e.g. x86-host, cortex-a72)")] = None,
    fidelity: Annotated[float | None, typer.Option("--fidelity", help="minimum cosine vs fp32; stop if a pass breaks it")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-O", help="backend option key=value (repeatable)")] = None,
    samples: Annotated[int, typer.Option("--samples", help="real sample inputs for calibration and fidelity")] = 8,
    tune_trials: Annotated[int | None, typer.Option("--tune-trials", help="TVM: MetaSchedule trial budget")] = None,
    tune_minutes: Annotated[float | None, typer.Option("--tune-minutes", help="TVM: MetaSchedule time budget")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    exporter: Annotated[str, typer.Option("--exporter", help="dynamo (torch.export) or torchscript (faster to export)")] = "dynamo",
    external_data: Annotated[bool | None, typer.Option("--external-data/--no-external-data",
                                                       help="ONNX tensors in model.onnx.data beside the graph (default: from 2 GB of weights on)")] = None,
    auto: Annotated[bool, typer.Option("--auto", help="search passes x backends x precisions for the fastest artifact within --fidelity")] = False,
    device: Annotated[str, typer.Option("--device", "-d", help="--auto: device to measure candidates on")] = "local",
    budget_minutes: Annotated[float | None, typer.Option("--budget-minutes", help="--auto: stop searching after this long")] = None,
    min_agreement: Annotated[float, typer.Option("--min-agreement", help="--auto: minimum task agreement with fp32 (top-1, mAP@0.5, next token)")] = 0.99,
    backends: Annotated[str | None, typer.Option("--backends", help="--auto: comma list to consider (default: all available)")] = None,
    precisions: Annotated[str | None, typer.Option("--precisions", help="--auto: comma list, e.g. fp32,int8,dynamic,fp16")] = None,
    db: Annotated[str | None, typer.Option("--db", help="--auto: results database URL")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="your data: image folder (class subfolders = labelled), COCO set, or prompts .jsonl")] = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="class mapping for a labelled folder (one folder name per line, in output order)")] = None,
    calib_samples: Annotated[int, typer.Option("--calib-samples", help="--data: calibration split size (capped by the data)")] = 128,
    eval_samples: Annotated[int, typer.Option("--eval-samples", help="--data: evaluation split size (capped by the data)")] = 512,
    skip_bad_images: Annotated[bool, typer.Option("--skip-bad-images", help="--data: skip and count unreadable images instead of failing")] = False,
    max_drop: Annotated[float | None, typer.Option("--max-drop", help="--data: most accuracy points the artifact may lose against the labels (95 % bound)")] = None,
) -> None:
    """Compile MODEL through the pass pipeline into a bundle for a backend (or --auto: search for the fastest)."""
    from edgeopt.data import DataRequest

    if data is None and (labels is not None or max_drop is not None):
        raise EdgeoptError("--labels and --max-drop need --data (a labelled dataset)", "pass --data PATH")
    if auto and max_drop is not None:
        raise EdgeoptError("--max-drop is not an --auto gate", "with --auto, --min-agreement gates on the 95 % lower bound over --data")
    req = DataRequest.of(data, labels=labels, calib_samples=calib_samples, eval_samples=eval_samples, skip_bad_images=skip_bad_images)
    if auto:
        _auto(model, output, device, fidelity if fidelity is not None else 0.999, budget_minutes, backends, precisions, weights, db, overwrite,
              min_agreement, req)
        return
    from rich import progress as rp

    from edgeopt.api import compile as do_compile
    from edgeopt.passes.pipeline import _coerce
    from edgeopt.report import fidelity_lines

    opts: dict[str, Any] = {}
    for kv in option or []:
        if "=" not in kv:
            raise EdgeoptError(f"--option {kv!r} is not key=value")
        k, v = kv.split("=", 1)
        opts[k.replace("-", "_")] = _coerce(v)
    for k, v in (("tune_trials", tune_trials), ("tune_minutes", tune_minutes)):
        if v is not None:
            opts[k] = v
    with rp.Progress(rp.SpinnerColumn(), rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                     rp.TimeElapsedColumn(), console=err_console, transient=True) as prog:
        task = prog.add_task(f"compile {model}", total=None)
        b = do_compile(
            model, backend=backend, passes=passes, weights=weights, output=output, target=target, options=opts,
            fidelity=fidelity, samples=samples, overwrite=overwrite, exporter=exporter, data=req, max_drop=max_drop, external_data=external_data,
            progress=lambda msg: prog.update(task, description=f"{model}: {msg}", total=None, completed=0),
            progress_bar=lambda label, i, n: prog.update(task, description=f"{model}: {label}", completed=i, total=n),
        )
    m = b.manifest
    console.print(f"[bold green]bundle[/] {b.path}")
    t = Table(show_header=False, box=None)
    t.add_row("model", f"{m.model.name} ({m.weights.kind} weights)")
    from edgeopt.runtimes.table import label

    t.add_row("backend", f"{m.backend} / {m.target} / {label(m.backend, m.precision)}")
    t.add_row("passes", ", ".join(p["name"] + (f" ({p['graph']})" if p.get("graph") else "") for p in m.passes) or "none")
    t.add_row("size", f"{(m.size_bytes or 0) / 1e6:.2f} MB")
    if m.generation is not None:
        g = m.generation
        t.add_row("generation", f"graphs {', '.join(g.graphs)} (vision {m.backend_details.get('vision_precision')}); "
                                f"reference prompt: {len(g.tokens)} tokens, {sum(a == b for a, b in zip(g.tokens, g.fp32_tokens, strict=False))} as fp32")
    if (m.backend_details.get("delegation") or {}).get("summary"):  # which ops the delegate took, which fell back
        t.add_row("delegation", m.backend_details["delegation"]["summary"])
    t.add_row("fidelity", ", ".join(f"{k} {v:.4g}" for k, v in m.fidelity.items() if isinstance(v, int | float)) or m.fidelity_note or "-")
    for line in fidelity_lines(m):
        t.add_row("", line)
    t.add_row("sha256", m.bundle_sha256[:16])
    if m.compile_seconds.get("total"):
        t.add_row("time", _stage_line(m.compile_seconds))
    console.print(t)


def _stage_line(seconds: dict[str, float | None], top: int = 3) -> str:
    """`28.2 s: export 10.7, other 7.6, passes 7.3`: the total and the slowest stages of a compile."""
    stages = sorted(((k, v) for k, v in seconds.items() if k != "total" and v), key=lambda kv: -kv[1])
    return f"{seconds['total']:.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in stages[:top])


def _auto(model, output, device, fidelity, budget_minutes, backends, precisions, weights, db, overwrite, min_agreement, data=None) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from edgeopt.orchestrate.auto import auto_compile

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  console=err_console, transient=True) as prog:
        task = prog.add_task(f"auto {model}", total=None)
        res = auto_compile(
            model, output, device=device, fidelity=fidelity, budget_minutes=budget_minutes, min_agreement=min_agreement,
            backends=backends.split(",") if backends else None, precisions=precisions.split(",") if precisions else None,
            weights=weights, db=db, overwrite=overwrite, data=data,
            progress=lambda label, i, n: prog.update(task, description=f"{model}: {label}", completed=i, total=n),
        )
    t = Table(title=f"{model} on {device}: {len(res.candidates)} candidates in {res.seconds:.0f} s, budget cosine >= {fidelity}")
    for c in ("candidate", "status", "p50 ms", "cosine", "task agr.", "size MB", "front", "reason"):
        t.add_column(c, overflow="fold")
    for c in sorted(res.candidates, key=lambda c: (c.latency_ms is None, c.latency_ms or 0)):
        t.add_row(c.label, c.status, "-" if c.latency_ms is None else f"{c.latency_ms:.2f}",
                  "-" if c.cosine is None else f"{c.cosine:.5f}", "-" if c.agreement is None else f"{c.agreement:.2f}",
                  "-" if c.size_bytes is None else f"{c.size_bytes / 1e6:.1f}", "*" if c in res.front else "", c.reason or "")
    console.print(t)
    for n in res.notes:
        console.print(f"[dim]{n}[/]")
    if res.winner is None:
        near = "; ".join(f"{c.label}: {c.reason}" for c in res.closest())
        raise EdgeoptError(f"no candidate meets cosine >= {fidelity} with task agreement >= {min_agreement}" + (f"; closest: {near}" if near else ""),
                           "relax --fidelity / --min-agreement or allow more backends/precisions; measured candidates are stored")
    console.print(f"[bold green]winner[/] {res.winner.label}: {res.winner.latency_ms:.2f} ms p50, cosine {res.winner.cosine:.5f} -> {output}")


@app.command()
def profile(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    device: Annotated[str, typer.Option("--device", "-d", help="a URI or a devices.yaml name")] = "local",
    runs: Annotated[int, typer.Option("--runs")] = 20,
    warmup: Annotated[int, typer.Option("--warmup")] = 5,
    min_seconds: Annotated[float, typer.Option("--min-seconds")] = 1.0,
    threads: Annotated[int | None, typer.Option("--threads")] = None,
    db: Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL (default EDGEOPT_DB or sqlite:///edgeopt.db)")] = None,
    no_store: Annotated[bool, typer.Option("--no-store", help="do not store the result")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds before the runner is killed")] = 600.0,
    strict: Annotated[bool, typer.Option("--strict", help="refuse a result other processes disturbed (after re-measuring)")] = False,
    sustained: Annotated[int, typer.Option("--sustained", help="generative bundles: N more generations back to back (tokens/s drift, temperatures)")] = 0,
    new_tokens: Annotated[int, typer.Option("--new-tokens", help="generative bundles: tokens per timed generation")] = 128,
) -> None:
    """Measure BUNDLE on a device with the standard protocol and store the result (a generative bundle: MELT's
    figures: load, time to first token, prefill and decode tokens/s, energy per token, sustained drift)."""
    from edgeopt.api import profile as do_profile

    with console.status(f"profiling {bundle} on {device}", spinner="dots") if not as_json else _null():
        res = do_profile(bundle, device=device, runs=runs, warmup=warmup, min_seconds=min_seconds, threads=threads,
                         db=db, store=not no_store, timeout=timeout, strict=strict, sustained=sustained, new_tokens=new_tokens)
    if as_json:
        print(json.dumps(res.to_dict(), default=str))
        return
    lat = res.latency_ms
    # one result: a two-column table reads at any terminal width; long notes go under it, not into cells
    t = Table(title=f"{res.model} ({res.backend} {res.precision or ''}) on {device}".replace(" )", ")"), show_header=False)
    t.add_column("", style="bold", no_wrap=True)
    t.add_column("", no_wrap=True)
    c = res.contamination
    rows = [("latency p50 / p90 / p99", f"{_ms(lat.p50)} / {_ms(lat.p90)} / {_ms(lat.p99)} ms"),
            ("mean, CV", f"{_ms(lat.mean)} ms, {'-' if res.cv is None else f'{res.cv:.3f}'}"),
            ("runs (warm-up)", f"{res.runs} ({res.warmup})"), ("load time", f"{res.init_ms or 0:.0f} ms"),
            ("peak RSS", f"{res.peak_rss_mb or 0:.0f} MB"), ("outputs match", str(res.outputs_match)),
            ("energy", "-" if res.energy is None else f"{res.energy.joules_per_inference * 1e3:.3f} mJ/inference ({res.energy.meter})"),
            ("other load", "-" if c is None else ("[red]" if c.flagged else "") + c.summary())]
    g = res.generation
    if g is not None:
        rows[0] = ("per token p50 / p90 / p99", rows[0][1])
        rows[4:4] = _generation_rows(g)
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    if res.energy is None:
        console.print(f"energy: not measured ({res.energy_reason or 'no meter'})", style="dim")
    if c is not None:
        console.print(_contamination_note(c), style="red" if c.flagged else "dim")


def _generation_rows(g: Any) -> list[tuple[str, str]]:
    """MELT's figures of a generative measurement, as rows of the profile table."""
    rows = [("decode", f"{g.decode_tokens_per_s:.1f} tokens/s ({g.new_tokens} tokens per generation)"),
            ("time to first token", f"{g.ttft_ms:.1f} ms (vision {g.vision_ms:.1f} + prefill {g.prefill_ms:.1f} ms, {g.prompt_positions} positions)"),
            ("prefill", ", ".join(f"{r['prompt_tokens']}: {r['positions_per_s']:.0f}" for r in g.prefill) + " positions/s (by prompt tokens)"),
            ("first tokens", f"{g.check.get('matched')}/{g.check.get('check_tokens')} as on the host, {g.check.get('matched_fp32')} as fp32")]
    if g.energy_per_token_j is not None:
        rows.append(("energy per token", f"{g.energy_per_token_j * 1e3:.2f} mJ"))
    if g.sustained:
        rates = " ".join(f"{r['tokens_per_s']:.1f}" for r in g.sustained)
        drift = "" if g.drift is None else f", drift {100 * g.drift:+.1f}%" + (" [red]THROTTLED[/]" if g.throttled else "")
        rows.append(("sustained tokens/s", f"{rates}{drift}"))
    return rows


def _contamination_note(c: Any) -> str:
    if c.foreign_cpu_share is None:
        return f"load: not measured ({c.reason})"
    tries = f" after {c.attempts} attempts" if c.attempts > 1 else ""
    what = "FLAGGED: " if c.flagged else ""
    return (f"load: {what}other processes took {100 * c.foreign_cpu_share:.0f}% of the run's {c.cores_used} core(s) "
            f"(limit {100 * c.threshold:.0f}%{tries}); load average {_f2(c.load_before)} -> {_f2(c.load_after)}"
            + (f"; the most: {c.who()}" if c.flagged and c.others else ""))


def _f2(v: float | None) -> str:
    return "?" if v is None else f"{v:.2f}"


@app.command()
def compare(
    bundles: Annotated[list[Path], typer.Argument(help="two or more bundle folders; the first is the baseline")],
    device: Annotated[str, typer.Option("--device", "-d", help="a URI or a devices.yaml name")] = "local",
    rounds: Annotated[int, typer.Option("--rounds", help="interleaved rounds (each times every bundle once)")] = 7,
    threads: Annotated[int | None, typer.Option("--threads")] = None,
    runs: Annotated[int, typer.Option("--runs", help="timed runs per bundle per round")] = 10,
    min_seconds: Annotated[float, typer.Option("--min-seconds", help="seconds per bundle per round")] = 0.5,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Compare bundles on one device in interleaved rounds: each one's p50 and its ratio to the first with
    a 95 % bootstrap interval ("no clear difference" when the interval contains 1)."""
    from rich.progress import Progress

    from edgeopt.api import compare as do_compare

    kw: dict[str, Any] = {"device": device, "rounds": rounds, "threads": threads, "runs": runs, "min_seconds": min_seconds}
    if as_json:
        print(json.dumps(do_compare(list(bundles), **kw).to_dict(), default=str))
        return
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task(f"{rounds} interleaved rounds on {device}", total=rounds)
        res = do_compare(list(bundles), on_round=lambda i, n: prog.update(task, completed=i), **kw)
    t = Table(title=f"{len(bundles)} bundles on {device}, {rounds} interleaved rounds")
    t.add_column("bundle", overflow="fold")
    for col in ("model", "p50 ms", "ratio", "95% interval", "verdict"):
        t.add_column(col, no_wrap=col != "model", justify="right" if col in ("p50 ms", "ratio") else "left")
    flagged = 0
    for r, ms in zip(res.results, res.measurements, strict=True):
        m = ms[0]
        flagged += r.flagged_rounds
        t.add_row(r.label, f"{m.model} {m.backend} {m.precision or ''}".strip(), f"{r.p50_ms:.3f}", f"{r.ratio:.3f}",
                  "baseline" if r is res.results[0] else f"{r.ci95[0]:.3f}-{r.ci95[1]:.3f}", "baseline" if r is res.results[0] else r.verdict)
    console.print(t)
    if flagged:
        console.print(f"{flagged} of {rounds * len(bundles)} runs were disturbed by other processes; the interval includes their spread", style="red")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@app.command()
def report(
    db: Annotated[str | None, typer.Option("--db")] = None,
    model: Annotated[str | None, typer.Option("--model")] = None,
    device: Annotated[str | None, typer.Option("--device")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="write an HTML report with plots")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="write the latency vs fidelity Pareto front (PNG) of the selected rows")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show stored measurements (a table; --html for a report with plots; --plot for the Pareto front,
    e.g. of an --auto search: `edgeopt report --model M --device D --plot front.png`)."""
    from edgeopt.report import measurements_table
    from edgeopt.store import Store

    rows = Store(db).measurements(model=model, device=device)
    if plot is not None:
        from edgeopt._util import atomic_write_bytes
        from edgeopt.report.plots import latency_vs_fidelity

        png = latency_vs_fidelity(rows)
        if png is None:
            raise EdgeoptError("no stored measurement has both a latency and a fidelity to plot",
                               "measure some bundles first (edgeopt profile / bench / compile --auto), or widen --model/--device")
        atomic_write_bytes(plot, png)
        console.print(f"wrote {plot} ({len(rows)} measurements)")
        return
    if html is not None:
        try:
            from edgeopt.report.html import write_html
        except ImportError:
            raise EdgeoptError("the HTML report is not part of this edgeopt build") from None
        write_html(rows, html, db=db)
        console.print(f"wrote {html}")
        return
    if as_json:
        print(json.dumps(rows, default=str))
        return
    console.print(measurements_table(rows, width=console.width))


def _register_subapps() -> None:
    for name, target in _SUBAPPS:
        mod, attr = target.split(":")
        try:
            sub = getattr(importlib.import_module(mod), attr)
        except ImportError as e:  # a missing optional dependency must not take the whole CLI down
            @app.command(name, help=f"(unavailable: {e})")
            def _unavailable(_e: str = str(e)) -> None:
                raise EdgeoptError(f"this command is unavailable: {_e}")
            continue
        app.add_typer(sub, name=name)


_register_subapps()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI. Every failure is one line on stderr (what, then how to fix) and a non-zero
    exit code: EdgeoptError as it is, errors from the OS and the libraries underneath (ONNX Runtime, TVM,
    LiteRT, coremltools, SQLAlchemy, ...) through `_library_error`. `--debug` shows the traceback instead."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        app(args=argv, standalone_mode=False)
    except (typer.Exit, SystemExit) as e:
        return int(getattr(e, "exit_code", getattr(e, "code", 0)) or 0)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as e:
        import click

        if isinstance(e, click.exceptions.ClickException):  # usage errors: click's own message
            e.show()
            return e.exit_code
        if isinstance(e, click.exceptions.Abort):
            return 1
        if debug:
            raise
        err = e if isinstance(e, EdgeoptError) else _library_error(e)
        err_console.print(f"[bold red]error:[/] {err.message}" + (f" [dim]({err.hint})[/]" if err.hint else ""), highlight=False, soft_wrap=True)
        return 1
    return 0


def _library_error(e: Exception) -> EdgeoptError:
    """One line for an exception edgeopt did not raise itself: what failed, where it came from, and a hint."""
    import errno
    import shutil
    import tempfile

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        target = e.filename2 or e.filename  # a copy names its source first, the file being written second
        full = Path(target).parent if target else Path.cwd()
        while not full.exists() and full != full.parent:  # the temporary folder it wrote into is gone already
            full = full.parent
        free = []
        for w in dict.fromkeys((full, Path(tempfile.gettempdir()))):
            try:
                free.append(f"{w}: {shutil.disk_usage(w).free / 2**20:.0f} MiB free")
            except OSError:
                continue
        return EdgeoptError(f"the disk is full (no space left on device{f' writing {target}' if target else ''}; {', '.join(free)})",
                            "free some space or write to another disk (-o DIR, or TMPDIR for temporary files); nothing partial was kept")
    if isinstance(e, OSError):
        what = f"{e.strerror or e}" + (f": {e.filename2 or e.filename}" if e.filename else "")
        return EdgeoptError(f"operating system error: {what}", "check the path and its permissions; --debug shows where it happened")
    source = (type(e).__module__ or "").split(".")[0]
    text = (str(e).strip().splitlines() or [""])[0][:300]
    origin = f" from {source}" if source not in ("builtins", "edgeopt", "") else ""
    return EdgeoptError(f"{type(e).__name__}{origin}: {text}" if text else f"{type(e).__name__}{origin}",
                        "run again with --debug for the traceback; if the input looks right, this is a bug to report")


# Cyclic GC for a short-lived batch process: Python's default first threshold (700 allocations) makes a
# compile rescan the heap that torch, sympy and timm leave behind again and again, mostly for nothing.
BATCH_GC_THRESHOLDS = (10_000, 10, 10)


def entry() -> int:
    """The `edgeopt` console script: `main` run as a batch process. A larger young generation while it runs,
    and at exit the heap frozen so the interpreter does not walk every object of torch & co. once more
    (docs/architecture.md "The command is a batch process"): reference cycles still alive at exit are left for
    the OS to reclaim with the process (exit handlers still run). `main` itself leaves the collector alone,
    for callers that run it inside their own process."""
    import gc

    gc.set_threshold(*BATCH_GC_THRESHOLDS)
    try:
        return main()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        gc.freeze()


if __name__ == "__main__":
    sys.exit(entry())
