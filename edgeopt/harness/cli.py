"""CLI sub-app of the harness: `edgeopt devices [list|info URI]`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

devices_app = typer.Typer(no_args_is_help=False, invoke_without_command=True, help="Configured devices (devices.yaml) and their snapshots.")
console = Console()


@devices_app.callback(invoke_without_command=True)
def _devices_default(ctx: typer.Context, file: Annotated[Path | None, typer.Option("--file", "-f", help="devices.yaml to read")] = None) -> None:
    if ctx.invoked_subcommand is None:
        list_devices(file)


@devices_app.command("list")
def list_devices(file: Annotated[Path | None, typer.Option("--file", "-f", help="devices.yaml to read")] = None) -> None:
    """List the devices in devices.yaml (plus `local`, always there)."""
    from edgeopt.harness.devices.profiles import load_profiles, profiles_path

    profs = load_profiles(file)
    src = profiles_path(file)
    t = Table(title=f"devices ({src or 'no devices.yaml found'})")
    for c in ("name", "kind", "uri", "options"):
        t.add_column(c, overflow="fold")
    if not any(p["uri"] == "local" for p in profs.values()):
        t.add_row("local", "", "local", "")
    for name, p in profs.items():
        opts = {k: v for k, v in p.items() if k not in ("uri", "kind")}
        t.add_row(name, str(p.get("kind") or ""), p["uri"], json.dumps(opts) if opts else "")
    console.print(t)


@devices_app.command("info")
def info(
    uri: Annotated[str, typer.Argument(help="a URI (local, ssh://user@host[:port], adb://SERIAL, tvm-rpc://host:port/key) or a devices.yaml name")],
    trust_new_host: Annotated[bool, typer.Option("--trust-new-host", help="accept an unknown SSH host key once")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="devices.yaml to read")] = None,
) -> None:
    """Print the device snapshot: arch, CPU model, cores, frequencies and governor, memory, OS, runtimes."""
    from edgeopt.harness.devices import open_device

    dev = open_device(uri, profiles_path=file, trust_new_host=True if trust_new_host else None)
    try:
        snap = dev.info()
    finally:
        dev.close()
    if as_json:
        print(json.dumps(snap, indent=2, default=str))
        return
    t = Table(title=dev.id, show_header=False)
    for k, v in snap.items():
        t.add_row(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v))
    console.print(t)
