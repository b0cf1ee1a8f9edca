"""devices.yaml: the boards a team measures on (like MELT's device list), by name and by kind.

    devices:
      laptop: {uri: local}
      jetson-orin:
        uri: ssh://ubuntu@orin.local
        python: /home/ubuntu/venv/bin/python3      # the board's own Python (numpy + runtime installed)
        identity: ~/.ssh/id_ed25519
        meters: [{name: ina3221, rail: VDD_IN}]
        pin_cpus: "4-7"                            # the protocol's CPU pinning on this board
      rpi4-a: {uri: ssh://pi@rpi4-a.local, kind: rpi4, python: /home/pi/venv/bin/python3}
      rpi4-b: {uri: ssh://pi@rpi4-b.local, kind: rpi4, python: /home/pi/venv/bin/python3}
      pixel7: {uri: adb://28151FDH2000AB, python: /data/data/com.termux/files/usr/bin/python, meters: [android]}
      farm-rpi: {uri: tvm-rpc://127.0.0.1:9190/rpi4}

Looked up in this order: an explicit path, $EDGEOPT_DEVICES, ./devices.yaml, ~/.config/edgeopt/devices.yaml.
Every key besides `uri`, `kind`, `target` and `pin_cpus` is passed to the device as an option; `kind` puts
the board in a pool (a sweep may name the kind: any board of it), `target` overrides the TVM target derived
from the board's snapshot, `pin_cpus` is the protocol's default pinning on this board.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeopt._util import closest
from edgeopt.errors import EdgeoptError
from edgeopt.harness.devices.base import DEVICES, Device, get_device
from edgeopt.measurement import Protocol

# Keys of a devices.yaml entry that describe the board to edgeopt rather than configure its transport.
BOARD_KEYS = ("uri", "name", "kind", "target", "pin_cpus")


@dataclass(frozen=True)
class BoardSpec:
    """One board: its devices.yaml name (None for a bare URI), URI, pool kind, TVM target override, CPU
    pinning, and the options its Device takes (python, identity, meters, remote_dir, ...)."""

    uri: str
    name: str | None = None
    kind: str | None = None
    target: str | None = None
    pin_cpus: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The name where it has one, else the URI."""
        return self.name or self.uri

    def with_options(self, **overrides: Any) -> BoardSpec:
        """The same board with some device options replaced (None values are ignored)."""
        return dataclasses.replace(self, options={**self.options, **{k: v for k, v in overrides.items() if v is not None}})

    def protocol(self, base: Protocol) -> Protocol:
        """`base` with this board's pinning where `base` asks for none."""
        return dataclasses.replace(base, pin_cpus=self.pin_cpus) if self.pin_cpus and not base.pin_cpus else base


def profiles_path(path: str | Path | None = None) -> Path | None:
    for cand in (path, os.environ.get("EDGEOPT_DEVICES"), "devices.yaml", Path.home() / ".config/edgeopt/devices.yaml"):
        if cand and Path(cand).is_file():
            return Path(cand)
    if path:
        raise EdgeoptError(f"device list {path} does not exist", "write a devices.yaml (see docs/sweeps.md)")
    return None


def load_profiles(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """name -> {uri, options...} as written; empty when no devices.yaml exists."""
    import yaml

    p = profiles_path(path)
    if p is None:
        return {}
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise EdgeoptError(f"{p} is not valid YAML: {str(e).splitlines()[0]}", "fix the file") from None
    devs = data.get("devices", data) if isinstance(data, dict) else None
    if not isinstance(devs, dict):
        raise EdgeoptError(f"{p}: expected a mapping 'devices: {{name: {{uri: ...}}}}'", "see docs/sweeps.md")
    out = {}
    for name, entry in devs.items():
        if isinstance(entry, str):
            entry = {"uri": entry}
        if not isinstance(entry, dict) or "uri" not in entry:
            raise EdgeoptError(f"{p}: device {name!r} has no uri", "give each device a uri: local, ssh://user@host, ...")
        out[str(name)] = dict(entry)
    return out


def board_from_entry(entry: dict[str, Any], name: str | None = None) -> BoardSpec:
    """A BoardSpec from one devices.yaml entry (or a sweep file's mapping with uri + options)."""
    if "uri" not in entry:
        raise EdgeoptError(f"device entry {entry!r} has no uri", "write a URI or a name from devices.yaml")
    opts = {k: v for k, v in entry.items() if k not in BOARD_KEYS}
    kind, target, pin = entry.get("kind"), entry.get("target"), entry.get("pin_cpus")
    return BoardSpec(str(entry["uri"]), name or entry.get("name"), str(kind) if kind else None, str(target) if target else None,
                     str(pin) if pin else None, opts)


def load_boards(profiles: dict[str, dict[str, Any]] | str | Path | None = None) -> dict[str, BoardSpec]:
    """name -> BoardSpec for every devices.yaml entry (`profiles`: already loaded entries, or a path)."""
    entries = profiles if isinstance(profiles, dict) else load_profiles(profiles)
    return {name: board_from_entry(e, name) for name, e in entries.items()}


def is_uri(spec: str) -> bool:
    """Whether `spec` is a device URI (a scheme with `://`, or a scheme that needs none: local, qemu-arm64)."""
    return "://" in spec or spec in DEVICES


def find_board(spec: str, boards: dict[str, BoardSpec] | None = None, profiles_path: str | Path | None = None) -> BoardSpec:
    """The board a name or URI means: a devices.yaml name (its options applied) or a URI (no options).

    Anything else fails with one line naming the closest board names and kinds."""
    boards = load_boards(profiles_path) if boards is None else boards
    if spec in boards:
        return boards[spec]
    if is_uri(spec):
        return BoardSpec(spec)
    kinds = sorted({b.kind for b in boards.values() if b.kind})
    if spec in kinds:
        raise EdgeoptError(f"{spec!r} is a kind of board, not one board ({', '.join(b.label for b in boards.values() if b.kind == spec)})",
                           "name one of its boards here; a sweep may name the kind")
    near = closest(spec, [*boards, *kinds])
    known = f"did you mean {', '.join(near)}?" if near else (f"known: {', '.join(boards)}" if boards else "no devices.yaml found")
    raise EdgeoptError(f"unknown device {spec!r}: not a devices.yaml name nor a URI",
                       f"{known}; or write local, ssh://user@host[:port], adb://SERIAL, qemu-arm64")


def boards_of_kind(kind: str, boards: dict[str, BoardSpec]) -> list[BoardSpec]:
    """Every board of one kind, in devices.yaml order; a kind with no boards is an error naming the known kinds."""
    pool = [b for b in boards.values() if b.kind == kind]
    if not pool:
        kinds = sorted({b.kind for b in boards.values() if b.kind})
        near = closest(kind, kinds)
        hint = f"did you mean {', '.join(near)}?" if near else (f"known kinds: {', '.join(kinds)}" if kinds else "give boards a kind: in devices.yaml")
        raise EdgeoptError(f"no board of kind {kind!r} in devices.yaml", hint)
    return pool


def resolve_device(spec: str | dict[str, Any], profiles: dict[str, dict[str, Any]] | None = None) -> tuple[str, dict[str, Any]]:
    """(uri, options) for a device named in a sweep: a devices.yaml name, a URI, or a mapping with uri/name."""
    b = sweep_board(spec, load_boards(profiles))
    return b.uri, dict(b.options)


def sweep_board(spec: str | dict[str, Any], boards: dict[str, BoardSpec]) -> BoardSpec:
    """One board of a sweep's `devices:` list: a name, a URI, or a mapping with uri (or name) and options."""
    if isinstance(spec, str):
        return find_board(spec, boards)
    spec = dict(spec)
    if "name" in spec and spec["name"] in boards:
        base = boards[spec.pop("name")]
        merged = {"uri": base.uri, "kind": base.kind, "target": base.target, "pin_cpus": base.pin_cpus, **base.options, **spec}
        return board_from_entry(merged, base.name)
    return board_from_entry(spec)


def open_device(spec: str | BoardSpec, profiles_path: str | Path | None = None, **overrides: Any) -> Device:
    """The Device for a devices.yaml name or a URI, with the board's options applied (python, meters,
    identity, remote_dir, ...) and `overrides` (e.g. trust_new_host=True; None values ignored) over them.

    The device carries its board (`device.board_spec`: name, kind, TVM target override, pinning). An unknown name
    that is not a URI fails with one line naming the closest names (EdgeoptError)."""
    board = spec if isinstance(spec, BoardSpec) else find_board(spec, profiles_path=profiles_path)
    board = board.with_options(**overrides)
    dev = get_device(board.uri, **board.options)
    dev.board_spec = board
    return dev
