"""The emulated arm64 board: a Debian arm64 root file system run under qemu-user, built once and cached.

Edge targets are arm64 and CI machines are x86. This module gives CI a real arm64 userland: Debian's own
arm64 `python3` and the aarch64 wheels of numpy, onnxruntime, ai-edge-litert (and optionally TVM), run
instruction by instruction by `qemu-aarch64-static`. It proves that artifacts and the device runner are
correct on arm64 (outputs vs the bundle's reference); at ~350x native it says nothing about speed.

Build (no emulation needed, ~1 min, needs Debian's mirror and the package index):
    mmdebstrap --mode=root --arch=arm64 --variant=extract --include=python3,libstdc++6,libgomp1 bookworm ROOT
    pip install --target ROOT/opt/site --platform manylinux2014_aarch64 --platform manylinux_2_27_aarch64 ...
    ROOT/proc/cpuinfo   an aarch64 cpuinfo: onnxruntime under qemu 7 reads the host's x86 one and segfaults
                        (qemu-user's `-L ROOT` serves ROOT/proc/cpuinfo in place of /proc/cpuinfo)

Cache: `$XDG_CACHE_HOME/edgeopt/boards/qemu-arm64-<key>` (or `$EDGEOPT_BOARDS/...`), where key hashes the
package list (Debian suite and packages, wheels pinned to the host's versions, platform tags, cpuinfo).
`board.json` is written last; a folder without it (an interrupted build) or whose recorded package list or
files disagree is rebuilt, never used. The edgeopt runner files are not baked into that hash: they change
with every commit, so they are synced into the board (keyed by their own hash, a sub-second copy)
each time the board is opened (ROOT/opt/edgeopt-runners/<runner hash>), and a cached board stays valid across edits.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeopt._util import atomic_dir, sha256_file
from edgeopt.errors import DeviceError, EdgeoptError

BOARD_FORMAT = 1  # bump when the layout of a board folder changes: old boards are then rebuilt
BOARD_JSON = "board.json"
QEMU = "qemu-aarch64-static"
DEFAULT_CPU = "cortex-a72"
# Where pushed bundles live inside the board's file system (the "device storage").
BUNDLES_IN_ROOT = "var/lib/edgeopt/bundles"
RUNNER_IN_ROOT = "opt/edgeopt-runners"  # + /<runner hash>: one folder per version of the runner files
KEEP_RUNNERS = 4  # older runner folders are pruned (a board is shared by every checkout on the machine)
SITE_IN_ROOT = "opt/site"

# Which Debian package provides each tool we call (named in the error when it is missing).
DEBIAN_PACKAGE = {QEMU: "qemu-user-static", "mmdebstrap": "mmdebstrap"}

# Cortex-A72 (Raspberry Pi 4 class). One entry per host core is written at build time.
_CPUINFO_ENTRY = """processor\t: {n}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3
"""

# Wheels installed into the board, pinned to the host's versions so a bundle compiled here meets the same
# runtime there. TVM is optional (~370 MB): it is what lets CI run TVM bundles cross-compiled for aarch64.
CORE_WHEELS = ("numpy", "onnxruntime", "ai-edge-litert")
TVM_WHEELS = ("apache-tvm", "apache-tvm-ffi")
# A module per wheel, imported on the board as its smoke test.
WHEEL_MODULE = {"numpy": "numpy", "onnxruntime": "onnxruntime", "ai-edge-litert": "ai_edge_litert", "apache-tvm": "tvm", "apache-tvm-ffi": "tvm_ffi"}


def tool(name: str) -> str:
    """Absolute path of a host tool, or an EdgeoptError naming the Debian package that provides it."""
    path = shutil.which(name)
    if path is None:
        pkg = DEBIAN_PACKAGE.get(name, name)
        raise DeviceError(
            f"{name} is not installed on this machine (the emulated arm64 board needs it)",
            f"install the Debian package {pkg}: `apt-get install {pkg}` or `scripts/system-deps.sh {pkg}`",
        )
    return path


def _pin(dist: str) -> str:
    """`dist==<host version>` when the host has it, else the bare name (pip picks the newest)."""
    try:
        return f"{dist}=={md.version(dist)}"
    except md.PackageNotFoundError:
        return dist


@dataclass(frozen=True)
class BoardSpec:
    """What goes into a board. Its `key()` names the cache folder: change anything, get a new board."""

    name: str = "qemu-arm64"
    suite: str = "bookworm"
    arch: str = "arm64"
    debs: tuple[str, ...] = ("python3", "libstdc++6", "libgomp1")
    python_version: str = "3.11"  # what `suite` ships as python3; the wheels' ABI must match it
    platforms: tuple[str, ...] = ("manylinux2014_aarch64", "manylinux_2_27_aarch64", "manylinux_2_28_aarch64")
    wheels: tuple[str, ...] = field(default_factory=tuple)
    mirror: str | None = None  # Debian mirror URL; None lets mmdebstrap choose (deb.debian.org)

    def key(self) -> str:
        payload = {"format": BOARD_FORMAT, "cpuinfo": _CPUINFO_ENTRY, **asdict(self)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def folder_name(self) -> str:
        return f"{self.name}-{self.key()}"


def default_spec(tvm: bool = True, mirror: str | None = None) -> BoardSpec:
    """The board CI uses: core runtimes, plus TVM unless `tvm=False`; versions pinned to the host's."""
    wheels = tuple(_pin(d) for d in CORE_WHEELS + (TVM_WHEELS if tvm else ()))
    return BoardSpec(wheels=wheels, mirror=mirror or os.environ.get("EDGEOPT_DEBIAN_MIRROR") or None)


def boards_dir() -> Path:
    """The user cache folder for boards (`$EDGEOPT_BOARDS`, else `$XDG_CACHE_HOME/edgeopt/boards`)."""
    if os.environ.get("EDGEOPT_BOARDS"):
        return Path(os.environ["EDGEOPT_BOARDS"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "edgeopt" / "boards"


@dataclass
class Board:
    """A built board folder: `root/` (the arm64 file system) and `board.json` (what it holds)."""

    path: Path
    meta: dict[str, Any]
    built_now: bool = False  # True when this call built it, False when it came from the cache

    @property
    def root(self) -> Path:
        return self.path / "root"

    @property
    def python(self) -> Path:
        return self.root / "usr" / "bin" / "python3"

    def runtimes(self) -> dict[str, str]:
        return dict(self.meta.get("installed", {}))

    def command(self, args: list[str], cpu: str = DEFAULT_CPU, qemu: str | None = None, prefix: list[str] | None = None) -> list[str]:
        """argv that runs the board's python3 with `args` under qemu-user (no shell involved);
        `prefix` (e.g. ["taskset", "-c", "0"]) goes in front of qemu."""
        # -s: no user site; -P: no cwd on sys.path, so the host tree never shadows the board's runner.
        return [*(prefix or []), qemu or tool(QEMU), "-cpu", cpu, "-L", str(self.root), str(self.python), "-s", "-P", *args]

    def runner_hash(self) -> str:
        """The runner folder this board object runs (synced on first use)."""
        if not self.meta.get("runner_hash"):
            self.meta["runner_hash"] = sync_runner(self)
        return str(self.meta["runner_hash"])

    def env(self) -> dict[str, str]:
        """A clean environment for the emulated process. Absolute paths are resolved inside ROOT by
        qemu's -L prefix first, so /opt/site means ROOT/opt/site."""
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "PYTHONPATH": f"/{RUNNER_IN_ROOT}/{self.runner_hash()}:/{SITE_IN_ROOT}",
            "PYTHONNOUSERSITE": "1",
            "LANG": "C.UTF-8",
            "HOME": "/root",
            "TMPDIR": "/tmp",
        }
        for k in ("OMP_NUM_THREADS", "TVM_NUM_THREADS"):
            if k in os.environ:
                env[k] = os.environ[k]
        return env

    def run_python(
        self, args: list[str], timeout: float, cpu: str = DEFAULT_CPU, qemu: str | None = None, prefix: list[str] | None = None
    ) -> subprocess.CompletedProcess:
        """Run the board's python3 under qemu; core dumps of a crashing runner are suppressed."""
        return subprocess.run(
            self.command(args, cpu=cpu, qemu=qemu, prefix=prefix), env=self.env(), cwd=self.root / "tmp",
            capture_output=True, text=True, timeout=timeout, check=False, preexec_fn=_no_core_dumps,
        )


def _no_core_dumps() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


# ---------------------------------------------------------------------------------------------- checks


def check_board(folder: Path, spec: BoardSpec) -> str | None:
    """None when `folder` is a complete board for `spec`, else why it must be rebuilt."""
    meta_path = folder / BOARD_JSON
    if not folder.is_dir():
        return "not built yet"
    if not meta_path.is_file():
        return f"{folder} is incomplete (no {BOARD_JSON}: an interrupted or failed build)"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return f"{meta_path} is unreadable ({e})"
    if meta.get("format") != BOARD_FORMAT or meta.get("key") != spec.key() or meta.get("spec") != json.loads(json.dumps(asdict(spec))):
        return f"{folder} was built for another package list (key {meta.get('key')}, wanted {spec.key()})"
    root = folder / "root"
    for rel in meta.get("sentinels", []):
        if not (root / rel).exists():
            return f"{folder} is incomplete: {rel} is missing"
    n = _count_files(root / SITE_IN_ROOT)
    if n < meta.get("site_files", 0):
        return f"{folder} is incomplete: {meta['site_files'] - n} of its installed wheel files are missing"
    return None


def _count_files(path: Path) -> int:
    if not path.is_dir():
        return 0
    return sum(1 for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


# ---------------------------------------------------------------------------------------------- build


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock so two processes never build (or sync) the same board at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], what: str, timeout: float, env: dict[str, str] | None = None) -> None:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    except subprocess.TimeoutExpired:
        raise DeviceError(f"{what} did not finish within {timeout:.0f} s", "check the network (Debian mirror, package index)") from None
    if p.returncode != 0:
        lines = [ln for ln in (p.stderr or p.stdout).strip().splitlines() if "is ignored: it is neither" not in ln]
        tail = " | ".join(lines[-3:]) or "(no output)"
        raise DeviceError(f"{what} failed (exit {p.returncode}): {tail[:600]}", "check the network and the package list; rerun with --rebuild")


def _debootstrap(spec: BoardSpec, root: Path) -> None:
    mode = "root" if os.geteuid() == 0 else "unshare"  # unshare: unprivileged, needs user namespaces
    cmd = [
        tool("mmdebstrap"), f"--mode={mode}", f"--arch={spec.arch}", "--variant=extract",
        f"--include={','.join(spec.debs)}", "--quiet", spec.suite, str(root),
    ]
    if spec.mirror:
        cmd.append(spec.mirror)
    _run(cmd, f"mmdebstrap ({spec.suite} {spec.arch})", timeout=900)


def _pip_wheels(spec: BoardSpec, root: Path) -> None:
    if not spec.wheels:
        return
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-warn-conflicts",
           "--no-compile", "--target", str(root / SITE_IN_ROOT), "--only-binary=:all:",
           "--python-version", spec.python_version, "--implementation", "cp"]
    for plat in spec.platforms:
        cmd += ["--platform", plat]
    _run([*cmd, *spec.wheels], f"pip install of aarch64 wheels ({', '.join(spec.wheels)})", timeout=1200)


def _installed_versions(site: Path) -> dict[str, str]:
    out = {}
    for d in sorted(site.glob("*.dist-info")):
        name, _, version = d.name[: -len(".dist-info")].partition("-")
        out[name.lower().replace("_", "-")] = version
    return out


def _debian_python(root: Path) -> str | None:
    """The python3 the root file system ships, e.g. "3.11" (from the /usr/bin/python3 link: an extract-only
    root file system has no dpkg status to ask)."""
    try:
        target = os.readlink(root / "usr" / "bin" / "python3")
    except OSError:
        return None
    return target.removeprefix("python") or None


def build_board(spec: BoardSpec, folder: Path, say: Callable[[str], None]) -> Board:
    """Build a board for `spec` into `folder` (replacing it); everything lands in a temp folder first."""
    qemu = tool(QEMU)
    tool("mmdebstrap")
    t0 = time.perf_counter()
    with atomic_dir(folder, overwrite=True) as tmp:
        root = tmp / "root"
        say(f"mmdebstrap {spec.suite} {spec.arch}: {', '.join(spec.debs)}")
        _debootstrap(spec, root)
        deb_py = _debian_python(root)
        if deb_py and not deb_py.startswith(spec.python_version):
            raise DeviceError(f"{spec.suite} ships python3 {deb_py}, the board spec expects {spec.python_version}", "set python_version in the BoardSpec to match")
        say(f"aarch64 wheels: {', '.join(spec.wheels)}")
        _pip_wheels(spec, root)
        # qemu-user with -L ROOT resolves /proc/cpuinfo to ROOT/proc/cpuinfo when that file exists.
        (root / "proc").mkdir(exist_ok=True)
        ncpu = max(1, os.cpu_count() or 1)
        (root / "proc" / "cpuinfo").write_text("\n".join(_CPUINFO_ENTRY.format(n=i) for i in range(ncpu)) + "\n")
        (root / "tmp").mkdir(exist_ok=True)
        (root / BUNDLES_IN_ROOT).mkdir(parents=True, exist_ok=True)
        site = root / SITE_IN_ROOT
        installed = _installed_versions(site) if site.is_dir() else {}
        meta: dict[str, Any] = {
            "format": BOARD_FORMAT,
            "key": spec.key(),
            "spec": asdict(spec),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "debian_python3": deb_py,
            "installed": installed,
            "site_files": _count_files(site),
            "sentinels": ["proc/cpuinfo", "lib/ld-linux-aarch64.so.1"]
            + (["usr/bin/python3"] if "python3" in spec.debs else [])
            + [f"{SITE_IN_ROOT}/{WHEEL_MODULE[w.split('==')[0]]}" for w in spec.wheels if w.split("==")[0] in WHEEL_MODULE],
            "cpus_in_cpuinfo": ncpu,
        }
        board = Board(tmp, meta)
        mods = [WHEEL_MODULE[w.split("==")[0]] for w in spec.wheels if w.split("==")[0] in WHEEL_MODULE]
        if mods:
            # Smoke test under emulation (also byte-compiles the wheels once, so later runs start faster).
            say(f"smoke test under qemu: import {', '.join(mods)}")
            code = f"import platform, {', '.join(mods)}; print(platform.machine(), platform.python_version())"
            p = board.run_python(["-c", code], timeout=600, qemu=qemu)
            got = p.stdout.split()
            if p.returncode != 0 or len(got) != 2 or got[0] != "aarch64":
                raise DeviceError(f"the new board fails its smoke test ({_exit_text(p.returncode)}): {_tail(p.stderr or p.stdout)}", "rerun with --rebuild")
            meta["python"] = got[1]
        meta.pop("runner_hash", None)  # synced on every open, not part of the build
        meta["build_seconds"] = round(time.perf_counter() - t0, 1)
        (tmp / BOARD_JSON).write_text(json.dumps(meta, indent=2))  # written last: marks the board complete
    return Board(folder, meta)


def _exit_text(rc: int) -> str:
    if rc < 0:
        import signal

        try:
            return f"killed by signal {-rc} ({signal.Signals(-rc).name})"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit {rc}"


def _tail(text: str, n: int = 3) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[:600] or "(no output)"


# ---------------------------------------------------------------------------------------------- runner sync


def runner_files() -> dict[str, Path]:
    """The edgeopt package's Python files, keyed by their path relative to the package's parent."""
    pkg = Path(__file__).resolve().parents[1]  # .../edgeopt
    return {p.relative_to(pkg.parent).as_posix(): p for p in sorted(pkg.rglob("*.py")) if "__pycache__" not in p.parts}


def runner_hash(files: dict[str, Path] | None = None) -> str:
    files = files if files is not None else runner_files()
    h = hashlib.sha256()
    for rel, p in files.items():
        h.update(f"{rel}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()[:16]


def sync_runner(board: Board) -> str:
    """Put this edgeopt's package files into ROOT/opt/edgeopt-runners/<hash> unless they are there already.

    One folder per hash, never rewritten in place, so a runner started from another checkout (another
    hash) keeps its files while this one syncs; the oldest folders beyond KEEP_RUNNERS are pruned."""
    files = runner_files()
    want = runner_hash(files)
    base = board.root / RUNNER_IN_ROOT
    dest = base / want
    if not (dest / ".complete").is_file():
        with atomic_dir(dest, overwrite=True) as tmp:
            for rel, src in files.items():
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, out)
            (tmp / ".complete").write_text(want + "\n")
    os.utime(dest)  # mark as recently used
    others = sorted((p for p in base.iterdir() if p.is_dir() and p.name != want and not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
    for old in others[: max(0, len(others) - (KEEP_RUNNERS - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return want


# ---------------------------------------------------------------------------------------------- entry point


def ensure_board(
    spec: BoardSpec | None = None,
    cache: Path | None = None,
    rebuild: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Board:
    """The board for `spec`, from the cache when complete and current, else built (then cached)."""
    spec = spec or default_spec()
    say = progress or (lambda _m: None)
    cache = Path(cache) if cache is not None else boards_dir()
    folder = cache / spec.folder_name()
    with _locked(cache / f".{spec.folder_name()}.lock"):
        why = "rebuild requested" if rebuild else check_board(folder, spec)
        if why is None:
            board = Board(folder, json.loads((folder / BOARD_JSON).read_text()))
        else:
            say(f"building {spec.name} board ({why})")
            board = build_board(spec, folder, say)
            board.built_now = True
        board.meta["runner_hash"] = sync_runner(board)
    return board


def find_board(spec: BoardSpec | None = None, cache: Path | None = None) -> tuple[Path, str | None]:
    """Where the board for `spec` lives and why it is not usable (None when it is)."""
    spec = spec or default_spec()
    folder = (Path(cache) if cache is not None else boards_dir()) / spec.folder_name()
    return folder, check_board(folder, spec)


def remove_stale_boards(spec: BoardSpec | None = None, cache: Path | None = None) -> list[Path]:
    """Delete boards of the same name built for other package lists (they are never used again)."""
    spec = spec or default_spec()
    cache = Path(cache) if cache is not None else boards_dir()
    removed = []
    for p in sorted(cache.glob(f"{spec.name}-*")):
        if p.is_dir() and p.name != spec.folder_name():
            with _locked(cache / f".{p.name}.lock"):
                shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    for p in cache.glob(f".{spec.name}-*.tmp-*"):  # leftovers of interrupted builds
        shutil.rmtree(p, ignore_errors=True)
    return removed


def qemu_version(qemu: str | None = None) -> str:
    try:
        out = subprocess.run([qemu or tool(QEMU), "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = out.strip().splitlines()[0] if out.strip() else ""
    return first.split("version", 1)[1].strip() if "version" in first else first or "unknown"


def copy_tree_linked(src: Path, dst: Path) -> None:
    """Copy a folder, hard-linking files where the file system allows (bundles are read-only)."""

    def link_or_copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link_or_copy, dirs_exist_ok=True)


def check_board_name(name: str) -> None:
    """Only one emulated board exists; say so for any other name."""
    if name != "qemu-arm64":
        raise EdgeoptError(f"unknown board {name!r}", "the only emulated board is qemu-arm64")


__all__ = [
    "Board", "BoardSpec", "boards_dir", "build_board", "check_board", "check_board_name", "default_spec", "ensure_board",
    "find_board", "qemu_version", "remove_stale_boards", "sync_runner",
]
