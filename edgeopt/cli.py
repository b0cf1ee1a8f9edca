"""The `edgeopt` command: compile | profile | bench | report | models | devices.

Every user-fixable failure is an EdgeoptError, printed as one line (what, then how to fix) with exit
code 1; `--debug` shows the traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
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
    t = Table(title=f"{len(rows)} models")
    for c in ("name", "family", "task", "inputs", "params (paper)", "GMACs (paper)"):
        t.add_column(c)
    if count:
        t.add_column("params (counted)")
        t.add_column("GMACs (counted)")
    for r in rows:
        cells = [r["name"], r["family"], r["task"], " ".join(f"{k}{tuple(v)}" for k, v in r["inputs"].items()),
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
    auto: Annotated[bool, typer.Option("--auto", help="search passes x backends x precisions for the fastest artifact within --fidelity")] = False,
    device: Annotated[str, typer.Option("--device", "-d", help="--auto: device to measure candidates on")] = "local",
    budget_minutes: Annotated[float | None, typer.Option("--budget-minutes", help="--auto: stop searching after this long")] = None,
    min_agreement: Annotated[float, typer.Option("--min-agreement", help="--auto: minimum task agreement with fp32 (top-1, mAP@0.5, next token)")] = 0.99,
    backends: Annotated[str | None, typer.Option("--backends", help="--auto: comma list to consider (default: all available)")] = None,
    precisions: Annotated[str | None, typer.Option("--precisions", help="--auto: comma list, e.g. fp32,int8,dynamic,fp16")] = None,
    db: Annotated[str | None, typer.Option("--db", help="--auto: results database URL")] = None,
) -> None:
    """Compile MODEL through the pass pipeline into a bundle for a backend (or --auto: search for the fastest)."""
    if auto:
        _auto(model, output, device, fidelity if fidelity is not None else 0.999, budget_minutes, backends, precisions, weights, db, overwrite,
              min_agreement)
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from edgeopt.api import compile as do_compile
    from edgeopt.passes.pipeline import _coerce

    opts: dict[str, Any] = {}
    for kv in option or []:
        if "=" not in kv:
            raise EdgeoptError(f"--option {kv!r} is not key=value")
        k, v = kv.split("=", 1)
        opts[k.replace("-", "_")] = _coerce(v)
    for k, v in (("tune_trials", tune_trials), ("tune_minutes", tune_minutes)):
        if v is not None:
            opts[k] = v
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console, transient=True) as prog:
        task = prog.add_task(f"compile {model}", total=None)
        b = do_compile(
            model, backend=backend, passes=passes, weights=weights, output=output, target=target, options=opts,
            fidelity=fidelity, samples=samples, overwrite=overwrite, exporter=exporter,
            progress=lambda msg: prog.update(task, description=f"{model}: {msg}"),
        )
    m = b.manifest
    console.print(f"[bold green]bundle[/] {b.path}")
    t = Table(show_header=False, box=None)
    t.add_row("model", f"{m.model.name} ({m.weights.kind} weights)")
    t.add_row("backend", f"{m.backend} / {m.target} / {m.precision}")
    t.add_row("passes", ", ".join(m.pass_names) or "none")
    t.add_row("size", f"{(m.size_bytes or 0) / 1e6:.2f} MB")
    t.add_row("fidelity", ", ".join(f"{k} {v:.4g}" for k, v in m.fidelity.items()) or m.fidelity_note or "-")
    t.add_row("sha256", m.bundle_sha256[:16])
    console.print(t)


def _auto(model, output, device, fidelity, budget_minutes, backends, precisions, weights, db, overwrite, min_agreement) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from edgeopt.orchestrate.auto import auto_compile

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  console=err_console, transient=True) as prog:
        task = prog.add_task(f"auto {model}", total=None)
        res = auto_compile(
            model, output, device=device, fidelity=fidelity, budget_minutes=budget_minutes, min_agreement=min_agreement,
            backends=backends.split(",") if backends else None, precisions=precisions.split(",") if precisions else None,
            weights=weights, db=db, overwrite=overwrite,
            progress=lambda label, i, n: prog.update(task, description=f"{model}: {label}", completed=i, total=n),
        )
    t = Table(title=f"{model} on {device}: {len(res.candidates)} candidates in {res.seconds:.0f} s, budget cosine >= {fidelity}")
    for c in ("candidate", "status", "p50 ms", "cosine", "top-1 agr.", "size MB", "front", "reason"):
        t.add_column(c, overflow="fold")
    for c in sorted(res.candidates, key=lambda c: (c.latency_ms is None, c.latency_ms or 0)):
        t.add_row(c.label, c.status, "-" if c.latency_ms is None else f"{c.latency_ms:.2f}",
                  "-" if c.cosine is None else f"{c.cosine:.5f}", "-" if c.top1 is None else f"{c.top1:.2f}",
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
    device: Annotated[str, typer.Option("--device", "-d")] = "local",
    runs: Annotated[int, typer.Option("--runs")] = 20,
    warmup: Annotated[int, typer.Option("--warmup")] = 5,
    min_seconds: Annotated[float, typer.Option("--min-seconds")] = 1.0,
    threads: Annotated[int | None, typer.Option("--threads")] = None,
    db: Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL (default EDGEOPT_DB or sqlite:///edgeopt.db)")] = None,
    no_store: Annotated[bool, typer.Option("--no-store", help="do not store the result")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds before the runner is killed")] = 600.0,
) -> None:
    """Measure BUNDLE on a device with the standard protocol and store the result."""
    from edgeopt.api import profile as do_profile

    with console.status(f"profiling {bundle} on {device}", spinner="dots") if not as_json else _null():
        res = do_profile(bundle, device=device, runs=runs, warmup=warmup, min_seconds=min_seconds, threads=threads,
                         db=db, store=not no_store, timeout=timeout)
    if as_json:
        print(json.dumps(res.to_dict(), default=str))
        return
    lat = res.latency_ms
    t = Table(title=f"{res.model} on {device}")
    for c in ("p50 ms", "p90 ms", "p99 ms", "mean ms", "CV", "runs", "init ms", "peak RSS MB", "outputs match", "energy"):
        t.add_column(c)
    energy = res.energy.meter if res.energy else f"null ({res.energy_reason or ''})"
    t.add_row(_ms(lat.p50), _ms(lat.p90), _ms(lat.p99), _ms(lat.mean), "-" if res.cv is None else f"{res.cv:.3f}",
              str(res.runs), f"{res.init_ms or 0:.0f}", f"{res.peak_rss_mb or 0:.0f}", str(res.outputs_match), energy)
    console.print(t)


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
    console.print(measurements_table(rows))


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
    """Entry point: run the CLI, turning EdgeoptError into one line and exit code 1."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        app(args=argv, standalone_mode=False)
    except EdgeoptError as e:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {e.message}" + (f" [dim]({e.hint})[/]" if e.hint else ""), highlight=False, soft_wrap=True)
        return 1
    except (typer.Exit, SystemExit) as e:
        return int(getattr(e, "exit_code", getattr(e, "code", 0)) or 0)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return e.exit_code
        if isinstance(e, click.exceptions.Abort):
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
