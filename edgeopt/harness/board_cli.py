"""`edgeopt board create|info|clean qemu-arm64`: the emulated arm64 board (see harness/board.py)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from edgeopt.harness.board import (
    BOARD_JSON,
    BUNDLES_IN_ROOT,
    check_board_name,
    default_spec,
    ensure_board,
    find_board,
    remove_stale_boards,
)

board_app = typer.Typer(no_args_is_help=True, help="The emulated arm64 board CI runs bundles on (qemu-user + arm64 Debian).")
console = Console()

_Name = Annotated[str, typer.Argument(help="board name (only qemu-arm64)")]
_NoTvm = Annotated[bool, typer.Option("--no-tvm", help="leave TVM out of the board (~370 MB less; TVM bundles then skip)")]
_Cache = Annotated[Path | None, typer.Option("--cache", help="boards folder (default $EDGEOPT_BOARDS or ~/.cache/edgeopt/boards)")]


@board_app.command("create")
def create(
    name: _Name = "qemu-arm64",
    no_tvm: _NoTvm = False,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="build again even if the cached board is complete")] = False,
    mirror: Annotated[str | None, typer.Option("--mirror", help="Debian mirror URL (default deb.debian.org)")] = None,
    cache: _Cache = None,
) -> None:
    """Build the board (or take it from the cache when it is complete and for the same package list)."""
    check_board_name(name)
    spec = default_spec(tvm=not no_tvm, mirror=mirror)
    t0 = time.perf_counter()
    with console.status(f"{name}: checking the cache") as status:
        board = ensure_board(spec, cache=cache, rebuild=rebuild, progress=lambda m: status.update(f"{name}: {m}"))
    took = time.perf_counter() - t0
    console.print(f"{name} board {'built' if board.built_now else 'from cache'} in {took:.1f} s: {board.path}")
    console.print("wheels: " + ", ".join(f"{k} {v}" for k, v in board.runtimes().items()))
    console.print(f"use it: edgeopt profile BUNDLE --device {name}   |   pytest device_tests --device {name}")


@board_app.command("info")
def info(name: _Name = "qemu-arm64", no_tvm: _NoTvm = False, cache: _Cache = None) -> None:
    """Where the board for the current package list lives and whether it is usable."""
    check_board_name(name)
    spec = default_spec(tvm=not no_tvm)
    folder, why = find_board(spec, cache)
    out = {"board": name, "key": spec.key(), "path": str(folder), "ready": why is None, "why_not": why, "spec": spec.__dict__}
    if why is None:
        meta = json.loads((folder / BOARD_JSON).read_text())
        out.update({"built": meta.get("built"), "build_seconds": meta.get("build_seconds"), "installed": meta.get("installed")})
    console.print_json(json.dumps(out, default=list))


@board_app.command("clean")
def clean(
    name: _Name = "qemu-arm64",
    no_tvm: _NoTvm = False,
    bundles: Annotated[bool, typer.Option("--bundles", help="also delete the bundles pushed to the current board")] = False,
    cache: _Cache = None,
) -> None:
    """Delete boards built for any other package list than this one (and leftovers of interrupted builds)."""
    check_board_name(name)
    spec = default_spec(tvm=not no_tvm)
    removed = remove_stale_boards(spec, cache)
    console.print(f"removed {len(removed)} stale board(s)" + "".join(f"\n  {p}" for p in removed))
    if bundles:
        folder, _why = find_board(spec, cache)
        pushed = folder / "root" / BUNDLES_IN_ROOT
        n = 0
        for p in pushed.glob("*") if pushed.is_dir() else []:
            shutil.rmtree(p, ignore_errors=True)
            n += 1
        console.print(f"removed {n} pushed bundle(s) from {pushed}")
