"""Device `qemu-arm64`: the emulated arm64 board (see harness/board.py).

The runner runs as `qemu-aarch64-static -cpu cortex-a72 -L ROOT ROOT/usr/bin/python3 -m edgeopt.runner ...`
on Debian's arm64 python with aarch64 wheels, so its outputs prove an artifact right on arm64. Its latency is
~350x native: the device says `emulated = True`, the protocol stores that with every measurement, and such
figures must never be compared with a real board's.

Options (from a devices.yaml profile or `--device-option`): `board` (a board folder to use as is),
`tvm` (include TVM when building, default true), `cpu` (qemu -cpu model, default cortex-a72),
`qemu` (path of qemu-aarch64-static), `cache` (boards folder).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgeopt._util import atomic_dir, atomic_write_bytes, sha256_file
from edgeopt.bundle import MANIFEST, Bundle
from edgeopt.errors import DeviceError
from edgeopt.harness.board import (
    BOARD_JSON,
    BUNDLES_IN_ROOT,
    DEFAULT_CPU,
    QEMU,
    Board,
    _exit_text,
    _tail,
    copy_tree_linked,
    default_spec,
    ensure_board,
    qemu_version,
    sync_runner,
    tool,
)
from edgeopt.harness.devices.base import Device, pinned, register_device
from edgeopt.harness.devices.local import linux_cpu_info

# dist name in the board -> edgeopt backend name
_RUNTIME_DISTS = {"onnxruntime": "onnxruntime", "ai-edge-litert": "ai-edge-litert", "apache-tvm": "apache-tvm"}


def _say(msg: str) -> None:
    """Building a board takes minutes the first time: say what is happening (stderr, never stdout)."""
    print(f"edgeopt: {msg}", file=sys.stderr, flush=True)


def _truthy(v: Any) -> bool:
    return v if isinstance(v, bool) else str(v).strip().lower() not in ("0", "false", "no", "off", "")


@register_device
class QemuArm64Device(Device):
    scheme = "qemu-arm64"
    emulated = True

    def __init__(self, uri: str, **options: Any) -> None:
        super().__init__(uri, **options)
        self.cpu = str(options.get("cpu", DEFAULT_CPU))
        self.qemu = str(options["qemu"]) if options.get("qemu") else tool(QEMU)  # fail early, naming the package
        self._board: Board | None = None

    @property
    def board(self) -> Board:
        """The board, built (or taken from the cache) on first use."""
        if self._board is None:
            given = self.options.get("board")
            if given:
                folder = Path(given).expanduser()
                meta_path = folder / BOARD_JSON
                if not meta_path.is_file():
                    raise DeviceError(f"{folder} is not a complete board (no {BOARD_JSON})", "run `edgeopt board create qemu-arm64` or drop the board option")
                board = Board(folder, json.loads(meta_path.read_text()))
                board.meta["runner_hash"] = sync_runner(board)
            else:
                spec = default_spec(tvm=_truthy(self.options.get("tvm", True)))
                board = ensure_board(spec, cache=self.options.get("cache"), progress=self.options.get("progress") or _say)
            self._board = board
        return self._board

    def info(self) -> dict[str, Any]:
        b = self.board
        host = linux_cpu_info()
        return {
            "uri": self.uri,
            "arch": "aarch64",
            "cpu_model": f"{self.cpu} (emulated by qemu-user {qemu_version(self.qemu)})",
            "host_cpu": host.get("cpu_model"),
            "host_arch": platform.machine(),
            "os": f"Debian {b.meta.get('spec', {}).get('suite', '?')} arm64 under qemu-user",
            "cores": os.cpu_count(),
            "python": b.meta.get("python") or b.meta.get("debian_python3"),
            "runtimes": {d: v for d, v in b.runtimes().items() if d in _RUNTIME_DISTS},
            "board": {"key": b.meta.get("key"), "path": str(b.path), "runner_hash": b.meta.get("runner_hash")},
            "emulated": True,
        }

    def push(self, bundle: Bundle) -> str:
        """Copy the bundle into the board's storage once per sha256 (hard links where possible)."""
        return self._copy_in(Path(bundle.path), f"{BUNDLES_IN_ROOT}/{bundle.sha256}", is_dir=True)

    def push_file(self, local: Path) -> str:
        return self._copy_in(Path(local), f"{BUNDLES_IN_ROOT}/files/{sha256_file(local)[:16]}-{Path(local).name}", is_dir=False)

    def _copy_in(self, src: Path, rel: str, is_dir: bool) -> str:
        """Copy into ROOT/rel unless there; return the path as the emulated process sees it (qemu -L maps ROOT)."""
        dest = self.board.root / rel
        if is_dir and not (dest / MANIFEST).is_file():
            with atomic_dir(dest, overwrite=True) as tmp:
                copy_tree_linked(src, tmp)
        elif not is_dir and not dest.is_file():
            atomic_write_bytes(dest, src.read_bytes())
        return "/" + rel

    def run_module(self, module: str, args: list[str], timeout: float, pin_cpus: str | None = None) -> str:
        prefix = pinned([str(x) for x in self.options.get("prefix") or []], pin_cpus)
        try:
            p = self.board.run_python(["-m", module, *args], timeout=timeout, cpu=self.cpu, qemu=self.qemu, prefix=prefix)
        except subprocess.TimeoutExpired:
            raise DeviceError(
                f"{module} on {self.uri} did not finish within {timeout:.0f} s (emulation is ~350x slower than native)",
                "raise --timeout or lower --runs/--warmup",
            ) from None
        if p.returncode < 0:
            raise DeviceError(f"{module} on {self.uri} crashed under emulation: {_exit_text(p.returncode)}", _tail(p.stderr))
        if p.returncode != 0 and not any(ln.lstrip().startswith("{") for ln in p.stdout.splitlines()):
            raise DeviceError(f"{module} on {self.uri} failed ({_exit_text(p.returncode)})", _tail(p.stderr or p.stdout))
        return p.stdout
