"""What to build for a board: the device snapshot (arch, CPU part and features, runtimes present) decides
which backends a policy compiles for it and for which CPU (TVM cross-compiled through the named targets of
`runtimes/_tvm_targets.py`). ONNX Runtime and LiteRT artifacts are portable graphs, built as they are.

    plan_build(info, requested_backends, board) -> BoardBuild   (backends, the TVM target; or an EdgeoptError)

`--auto` and sweeps (local and on Ray) call it once per board (once per kind for a pool) before compiling,
so a board that no requested backend can serve fails before any compile starts.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from typing import Any

from edgeopt.errors import EdgeoptError
from edgeopt.harness.devices.profiles import BoardSpec

# Backends whose artifact is machine code, and the architectures they can build for; every other backend's
# artifact is a portable graph (ONNX, .tflite) that runs wherever its runtime does.
MACHINE_CODE = {"tvm": ("x86_64", "aarch64")}
# arm CPU part numbers (/proc/cpuinfo "CPU part") -> the named TVM target for that core.
ARM_PARTS = {"0xd08": "cortex-a72", "0xd0b": "cortex-a76", "0xd0d": "cortex-a76", "0xd41": "cortex-a76", "0xd42": "cortex-a78ae"}
_ARCH = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}


def norm_arch(arch: str | None) -> str:
    """aarch64 / x86_64 for their aliases; anything else lower-cased as given ("" when unknown)."""
    a = (arch or "").lower()
    return _ARCH.get(a, a)


@dataclass(frozen=True)
class BoardBuild:
    """What to compile for one board (or one kind of board): the backends to build, the TVM target
    (None: this host's own CPU, because the board is this kind of machine), and the backends left out
    with the reason."""

    board: str
    arch: str
    backends: tuple[str, ...]
    tvm_target: str | None = None
    left_out: tuple[tuple[str, str], ...] = ()

    def target(self, backend: str) -> str | None:
        """The compile target of `backend` for this board (None: the backend's default)."""
        return self.tvm_target if backend == "tvm" else None

    def why_not(self, backend: str) -> str | None:
        """Why `backend` is not built for this board, or None when it is."""
        return next((why for b, why in self.left_out if b == backend), None)


def _host_snapshot() -> dict[str, Any]:
    from edgeopt.harness.devices import _probe

    return {"arch": platform.machine(), **_probe.cpu_info()}


def tvm_target_for(info: dict[str, Any], override: str | None = None) -> str | None:
    """The TVM target for a board from its snapshot: its own override; for arm the named core (CPU part or
    model), else generic aarch64; for x86 None (the host's CPU) when the board has every CPU feature this
    host has, else a portable x86-64 level (v3 with AVX2, v2 otherwise). Raises where TVM cannot target it."""
    if override:
        return override
    arch, host = norm_arch(info.get("arch")), norm_arch(platform.machine())
    if arch == "aarch64":
        part = str(info.get("cpu_part") or "").lower()
        if part in ARM_PARTS:
            return ARM_PARTS[part]
        model = str(info.get("cpu_model") or "").lower()
        return next((name for name in ("cortex-a78ae", "cortex-a76", "cortex-a72") if name in model), "aarch64")
    if arch == "x86_64" and host == "x86_64":
        feats = set(info.get("cpu_features") or [])
        mine = set(_host_snapshot().get("cpu_features") or [])
        if not feats or mine <= feats:
            return None
        return json.dumps({"kind": "llvm", "mcpu": "x86-64-v3" if "avx2" in feats else "x86-64-v2"})
    raise EdgeoptError(f"TVM cannot build for a {arch or 'unknown'} board from this {host} host", "leave tvm out for this board, or compile on the board itself")


def plan_build(info: dict[str, Any], requested: list[str], board: BoardSpec | None = None, label: str = "") -> BoardBuild:
    """The backends of `requested` to build for a board with snapshot `info`, and the TVM target.

    A backend is left out when the board does not report its runtime (where the board reports runtimes at all)
    or cannot run its machine code. None left: an EdgeoptError naming each reason, before any compile."""
    from edgeopt.runtimes.base import backend_class

    label = label or (board.label if board else str(info.get("uri", "the device")))
    arch = norm_arch(info.get("arch"))
    present = set(info.get("runtimes") or {})
    keep: list[str] = []
    out: list[tuple[str, str]] = []
    tvm_target: str | None = None
    for name in requested:
        cls = backend_class(name)
        if present and not any(r in present for r in cls.device_runtimes):
            out.append((name, f"{label} has no {'/'.join(cls.device_runtimes) or name} runtime"))
            continue
        arches = MACHINE_CODE.get(name)
        if arches is not None:
            if arch not in arches:
                out.append((name, f"{name} cannot build for {label}'s architecture {arch or 'unknown'} (only {', '.join(arches)})"))
                continue
            try:
                tvm_target = tvm_target_for(info, board.target if board else None)
            except EdgeoptError as e:
                out.append((name, e.message))
                continue
        keep.append(name)
    if not keep:
        raise EdgeoptError(f"no backend can build for {label} ({arch or 'unknown arch'}): " + "; ".join(why for _, why in out),
                           "install a runtime on the board or name backends that target it")
    return BoardBuild(label, arch, tuple(keep), tvm_target, tuple(out))
