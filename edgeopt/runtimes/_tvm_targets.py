"""Named TVM targets: what `--target` means for the TVM backend.

TVM 0.27 takes targets as JSON dicts (the old `llvm -mcpu=...` strings are rejected), so each name here
maps to a dict plus what is needed to link for it (the host toolchain, or an aarch64 cross compiler).
`x86-host` asks LLVM which CPU this is, so the code uses every vector extension the machine has
(AVX-512 here); the arm names pin the core so LLVM schedules for its pipeline and feature set.
This module only builds dicts: it does not import tvm.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import dataclass, field
from typing import Any

from edgeopt._util import closest
from edgeopt.errors import EdgeoptError, SpecError

CROSS_CC = "aarch64-linux-gnu-gcc"
CROSS_PKG = "gcc-aarch64-linux-gnu"


@dataclass(frozen=True)
class TargetInfo:
    """A resolved target: the TVM dict, the compiler that links the .so, and whether this host can run it."""

    name: str
    target: dict[str, Any]
    arch: str  # "x86_64" | "aarch64"
    cross_cc: str | None = None  # None: link with the host compiler
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def host_runnable(self) -> bool | str:
        """True when this machine can load the .so; otherwise the reason (for the manifest)."""
        here = _host_arch()
        if self.arch != here:
            return f"cross-compiled for {self.arch} ({self.name}); this host is {here}, so the artifact runs only on the device"
        return True


def _host_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _arm(mcpu: str | None, cores: int, mattr: list[str], desc: str) -> dict[str, Any]:
    t: dict[str, Any] = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": mattr, "num-cores": cores}
    if mcpu:
        t["mcpu"] = mcpu
    return {"target": t, "description": desc}


# Core counts are those of the boards named; a different board overrides them with `num_cores`.
ARM_TARGETS: dict[str, dict[str, Any]] = {
    "aarch64": _arm(None, 4, ["+neon"], "generic ARMv8-A with NEON (any 64-bit arm board)"),
    "cortex-a72": _arm("cortex-a72", 4, ["+neon"], "Raspberry Pi 4 (4x Cortex-A72, ARMv8.0-A)"),
    "cortex-a76": _arm("cortex-a76", 4, ["+neon", "+dotprod", "+fullfp16"], "Cortex-A76 boards (e.g. Raspberry Pi 5, RK3588 big cores)"),
    "cortex-a78ae": _arm("cortex-a78ae", 6, ["+neon", "+dotprod", "+fullfp16"], "NVIDIA Jetson Orin (Cortex-A78AE, ARMv8.2-A)"),
}
KNOWN = ["host", "x86-host", *ARM_TARGETS]


def known_targets() -> list[str]:
    return list(KNOWN)


def _host_target(num_cores: int | None) -> TargetInfo:
    """The machine we run on, with LLVM's own name for its CPU (so every ISA extension is used)."""
    from tvm.target import codegen

    arch = _host_arch()
    cores = num_cores or _cores()
    if arch == "x86_64":
        mcpu = codegen.llvm_get_system_cpu()
        t = {"kind": "llvm", "mcpu": mcpu, "num-cores": cores}
        return TargetInfo("x86-host", t, "x86_64", description=f"this machine ({mcpu}, {cores} cores)")
    if arch == "aarch64":
        mcpu = codegen.llvm_get_system_cpu()
        t = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "num-cores": cores}
        return TargetInfo("host", t, "aarch64", description=f"this machine ({mcpu}, {cores} cores)")
    raise EdgeoptError(f"TVM backend: no host target for machine {arch!r}", "use a named target: " + ", ".join(KNOWN))


def resolve_target(name: str | None, num_cores: int | None = None, require_toolchain: bool = True) -> TargetInfo:
    """Map a target name (or a JSON dict string) to a TargetInfo; unknown names list the known ones."""
    name = (name or "host").strip()
    if name.startswith("{"):
        try:
            t = json.loads(name)
        except json.JSONDecodeError as e:
            raise SpecError(f"TVM target is not valid JSON: {e.msg}", 'e.g. {"kind": "llvm", "mcpu": "skylake-avx512"}') from None
        if not isinstance(t, dict) or t.get("kind") != "llvm":
            raise SpecError("TVM target dict must have \"kind\": \"llvm\" (CPU targets only)", "or use a named target: " + ", ".join(KNOWN))
        if num_cores:
            t["num-cores"] = num_cores
        arch = "aarch64" if "aarch64" in str(t.get("mtriple", "")) else _host_arch()
        info = TargetInfo("custom", t, arch, cross_cc=CROSS_CC if arch != _host_arch() else None, description="user-supplied dict")
    elif name in ("host", "x86-host", "cpu"):
        info = _host_target(num_cores)
        if name == "x86-host" and info.arch != "x86_64":
            raise EdgeoptError(f"target x86-host asked for, but this machine is {info.arch}", "use --target host")
    elif name in ARM_TARGETS:
        spec = ARM_TARGETS[name]
        t = dict(spec["target"])
        if num_cores:
            t["num-cores"] = num_cores
        info = TargetInfo(name, t, "aarch64", cross_cc=None if _host_arch() == "aarch64" else CROSS_CC, description=spec["description"])
    else:
        near = closest(name, KNOWN)
        raise SpecError(
            f"unknown TVM target {name!r}",
            "known: " + ", ".join(KNOWN) + (f"; did you mean {near[0]}?" if near else "") + '; or pass a JSON dict {"kind": "llvm", ...}',
        )
    if require_toolchain:
        check_toolchain(info)
    return info


def check_toolchain(info: TargetInfo) -> str:
    """The linker for this target's .so, or a clear error naming the Debian package that provides it."""
    cc = info.cross_cc or os.environ.get("CC") or "gcc"
    path = shutil.which(cc)
    if path is None:
        if info.cross_cc:
            raise EdgeoptError(
                f"TVM target {info.name} needs the cross compiler {cc}, which is not installed",
                f"install the Debian package {CROSS_PKG} (apt-get install {CROSS_PKG}, or `make system`)",
            )
        raise EdgeoptError(f"TVM links its .so with {cc}, which is not installed", "install gcc (apt-get install gcc)")
    return path
