"""CLI sub-app of the orchestration layer: `edgeopt bench SWEEP.yaml [--cluster local|auto|ray://HOST:PORT]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

bench_app = typer.Typer(context_settings={"allow_interspersed_args": True}, help="Run a sweep: models x pipelines x backends x precisions x devices x threads (resumable).")
console = Console()


@bench_app.callback(invoke_without_command=True)
def bench(
    sweep: Annotated[Path, typer.Argument(help="sweep YAML (see examples/sweep.yaml, docs/sweeps.md)")],
    db: Annotated[str | None, typer.Option("--db", help="results database URL (default: the sweep's db, then EDGEOPT_DB)")] = None,
    trust_new_host: Annotated[bool, typer.Option("--trust-new-host", help="accept unknown SSH host keys once")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the jobs still to run and stop")] = False,
    export: Annotated[Path | None, typer.Option("--export", help="also write all measurements to this .csv or .parquet")] = None,
    cluster: Annotated[str | None, typer.Option("--cluster", help="run on Ray: local (start one here), auto (the running cluster), "
                                                "ray://HOST:PORT or HOST:PORT; see docs/lab.md")] = None,
    devices: Annotated[Path | None, typer.Option("--devices", help="devices.yaml to read (default: $EDGEOPT_DEVICES, ./devices.yaml, ~/.config/edgeopt/)")] = None,
) -> None:
    """Run or resume a sweep; failed and missing jobs are (re)tried, stored ones skipped."""
    from edgeopt.harness.devices.profiles import load_profiles
    from edgeopt.orchestrate.sweep import load_sweep, run_sweep
    from edgeopt.store import Store

    cfg = load_sweep(sweep)
    profiles = load_profiles(devices) if devices is not None else None
    if cluster is None:
        s = run_sweep(cfg, db=db, trust_new_host=trust_new_host, dry_run=dry_run, profiles=profiles)
    else:
        from edgeopt.orchestrate.lab import run_lab

        s = run_lab(cfg, cluster, db=db, trust_new_host=trust_new_host, dry_run=dry_run, profiles=profiles)
    if dry_run:
        return
    retried = f", {s.retried} handed to another board after theirs stopped answering" if s.retried else ""
    console.print(f"sweep {cfg.name}: {s.total} jobs, {s.skipped} already stored, {s.ok} measured, {s.failed} failed{retried}")
    for label, why in s.failures[:20]:
        console.print(f"  [red]failed[/red] {label}: {why}")
    if export is not None:
        n = Store(db or cfg.db).export(export)
        console.print(f"wrote {n} rows to {export}")
    if s.failed:
        raise typer.Exit(1)
