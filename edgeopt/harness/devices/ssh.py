"""`ssh://user@host[:port]`: a Linux board (Jetson, Raspberry Pi, any arm64/x86 box) over OpenSSH.

Why the OpenSSH client and not a library: it honours the user's ~/.ssh/config, agents and known_hosts
exactly as `ssh` does at the shell, and a ControlMaster socket makes the many small commands of a sweep
cost one TCP+key exchange. Every remote command is built from an argument list with `shlex.join`
(never from user-typed shell text); host and user are validated so they cannot become ssh options.

Host keys are checked (StrictHostKeyChecking=yes against known_hosts); `trust_new_host=True`
(`--trust-new-host`) accepts an unknown key once (accept-new) but still refuses a changed one.

What runs on the board: its own Python (profile option `python`, default `python3`) with numpy and the
bundle's runtime installed. edgeopt itself need not be installed there: the device-side files
(runner, bundle, fidelity, runtimes, ...) are pushed once as a small zip (keyed by its sha256) and put on
PYTHONPATH. Bundles are pushed once per sha256 under `remote_dir/bundles/<sha256>` (a tar stream written
into the SSH channel file by file, in chunks, so a bundle of several GB, e.g. an ONNX graph with its
external data file, is never held in memory; unpacked into a temp folder, renamed when complete) and
verified on the board by the runner's own sha256 check of every file; a second push of the same bundle is
skipped after that check passes.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from edgeopt.bundle import Bundle
from edgeopt.errors import DeviceError, DeviceUnreachable, EdgeoptError
from edgeopt.harness.devices.base import Device, pinned, register_device
from edgeopt.harness.meters.base import FileAccess

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9_.\-]*)$")

# The files a board needs to run bundles (stdlib + numpy + one runtime; never torch).
DEVICE_SIDE = [
    "__init__.py", "runner.py", "bundle.py", "fidelity.py", "errors.py", "_util.py", "_ort.py",
    "measurement.py", "_registry.py", "_loop.py", "contention.py", "stats.py",
    "runtimes/__init__.py", "runtimes/base.py", "runtimes/*.py", "harness/__init__.py", "harness/e2e_runner.py",
    "llm.py", "harness/gen_runner.py",  # generative bundles: the token loop and MELT's figures
    "harness/thermal.py", "harness/meters/__init__.py", "harness/meters/base.py", "harness/meters/registry.py",  # its temperatures
    "postprocess.py",  # the e2e runner's detection chain (letterbox, DFL decode, NMS)
]


def parse_ssh_uri(uri: str) -> tuple[str, str, int]:
    """(user, host, port) from ssh://user@host[:port]; refuse anything that could become an ssh option."""
    parts = urlsplit(uri)
    if parts.scheme != "ssh" or not parts.hostname:
        raise EdgeoptError(f"bad ssh device URI {uri!r}", "write ssh://user@host[:port]")
    user = parts.username or os.environ.get("USER", "root")
    host = parts.hostname
    try:
        port = parts.port or 22
    except ValueError:
        raise EdgeoptError(f"bad port in {uri!r}", "write ssh://user@host:PORT with PORT a number") from None
    if not _NAME.match(user) or not _HOST.match(host):
        raise EdgeoptError(f"bad user or host in {uri!r}", "user and host may hold letters, digits, '.', '-' and '_' only")
    return user, host, port


def device_side_zip() -> tuple[bytes, str]:
    """The device-side edgeopt files as a deterministic zip (same bytes for the same sources) and its sha256."""
    import hashlib

    pkg = Path(__file__).resolve().parents[2]
    files: set[Path] = set()
    for pat in DEVICE_SIDE:
        files.update(p for p in pkg.glob(pat) if p.is_file())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(files):
            info = zipfile.ZipInfo("edgeopt/" + p.relative_to(pkg).as_posix(), date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, p.read_bytes())
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def _ssh_error(uri: str, host: str, stderr: str) -> DeviceError:
    """Turn ssh's stderr into one line saying what happened and what to do."""
    s = stderr.strip()
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in s:
        return DeviceError(f"host key of {host} has CHANGED since it was stored in known_hosts", "if the board was reinstalled, remove the old key with ssh-keygen -R; otherwise do not connect")
    if "Host key verification failed" in s or "No ED25519 host key is known" in s or "host key is known" in s:
        return DeviceError(f"host key of {host} is not in known_hosts: refused", "check the key (ssh-keyscan) and add it, or pass --trust-new-host to accept it once")
    if "Permission denied" in s:
        return DeviceError(f"{uri}: permission denied", "set up key login for this user (ssh-copy-id) or give identity= in devices.yaml")
    if any(w in s for w in ("Connection refused", "Connection timed out", "No route to host", "Could not resolve", "Network is unreachable", "Operation timed out")):
        return DeviceUnreachable(f"{uri} is unreachable: {s.splitlines()[-1]}", "check that the board is on and sshd listens on that port")
    last = s.splitlines()[-1] if s else "connection lost"
    return DeviceUnreachable(f"{uri}: ssh failed: {last}", "check the connection; the board may have gone away")


class SSHFiles(FileAccess):
    """Read one-line sysfs files and globs on the board (one ssh command for many files)."""

    def __init__(self, dev: SSHDevice) -> None:
        self.dev = dev

    def read_many(self, paths: list[str]) -> list[str | None]:
        if not paths:
            return []
        script = 'for f in "$@"; do if [ -r "$f" ]; then cat "$f"; else echo "@@MISSING"; fi; echo "@@END"; done'
        out = self.dev.exec(["sh", "-c", script, "sh", *paths], timeout=30).stdout
        vals: list[str | None] = []
        for chunk in out.split("@@END\n")[: len(paths)]:
            chunk = chunk.strip()
            vals.append(None if chunk == "@@MISSING" else chunk)
        return vals + [None] * (len(paths) - len(vals))

    def glob(self, pattern: str) -> list[str]:
        # The pattern comes from edgeopt's own meter code, never from user input; sh expands it remotely.
        script = f'for f in {pattern}; do [ -e "$f" ] && echo "$f"; done; true'
        return sorted(x for x in self.dev.exec(["sh", "-c", script], timeout=30).stdout.splitlines() if x)


@register_device
class SSHDevice(Device):
    """A board reached with the OpenSSH client. Options (devices.yaml or CLI): python, identity,
    known_hosts, trust_new_host, remote_dir, connect_timeout, meters, prefix (e.g. ["taskset","-c","4-7"])."""

    scheme = "ssh"

    def __init__(self, uri: str, **options: Any) -> None:
        super().__init__(uri, **options)
        self.user, self.host, self.port = parse_ssh_uri(uri)
        self.python = str(options.get("python") or "python3")
        self.remote_dir = str(options.get("remote_dir") or ".cache/edgeopt")
        self.trust_new_host = bool(options.get("trust_new_host", False))
        self.last_push_skipped: bool | None = None
        self._ctl_dir = tempfile.mkdtemp(prefix="edgeopt-ssh-")
        self._lib: str | None = None

    @property
    def id(self) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}"

    # -- transport ----------------------------------------------------------------------------------
    def ssh_base(self) -> list[str]:
        o = self.options
        kh = os.path.expanduser(str(o.get("known_hosts") or "~/.ssh/known_hosts"))
        cmd = [
            "ssh", "-p", str(self.port),
            "-o", "BatchMode=yes",
            "-o", f"StrictHostKeyChecking={'accept-new' if self.trust_new_host else 'yes'}",
            "-o", f"UserKnownHostsFile={kh}",
            "-o", f"ConnectTimeout={int(o.get('connect_timeout', 10))}",
            "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
            "-o", "ControlMaster=auto", "-o", f"ControlPath={self._ctl_dir}/%C", "-o", "ControlPersist=120",
            "-o", "LogLevel=ERROR",
        ]
        if o.get("identity"):
            cmd += ["-o", "IdentitiesOnly=yes", "-i", os.path.expanduser(str(o["identity"]))]
        return [*cmd, "-l", self.user, "--", self.host]

    def exec(self, argv: list[str], timeout: float = 60, stdin: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run argv on the board (quoted with shlex.join); raise DeviceError on ssh failures."""
        cmd = [*self.ssh_base(), shlex.join(argv)]
        try:
            p = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.uri}: command did not finish within {timeout:.0f} s", "the board may be hung or the link down") from None
        return self._checked(argv, subprocess.CompletedProcess(p.args, p.returncode, p.stdout, p.stderr), check)

    def _checked(self, argv: list[str], p: subprocess.CompletedProcess, check: bool) -> subprocess.CompletedProcess:
        """`p` with its output decoded; ssh's own failure (status 255) and, with `check`, any other
        non-zero status raised as DeviceError."""
        out = subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))
        if p.returncode == 255:
            raise _ssh_error(self.uri, self.host, out.stderr)
        if check and p.returncode != 0:
            raise DeviceError(f"{self.uri}: {argv[0]} exited {p.returncode}: {(out.stderr.strip().splitlines() or [''])[-1][:300]}")
        return out

    def exec_stream(self, argv: list[str], feed: Callable[[IO[bytes]], None], timeout: float) -> subprocess.CompletedProcess:
        """Run argv on the board with `feed` writing its stdin as a stream (nothing is held in memory); the
        ssh process is killed after `timeout` s. Raise DeviceError as `exec` does (check=True)."""
        cmd = [*self.ssh_base(), shlex.join(argv)]
        timed_out = threading.Event()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err)
            assert p.stdin is not None

            def kill() -> None:
                if p.poll() is None:
                    timed_out.set()
                    p.kill()

            timer = threading.Timer(timeout, kill)
            timer.start()
            try:
                try:
                    feed(p.stdin)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the remote side stopped reading: its exit status and stderr say why
                finally:
                    try:
                        p.stdin.close()
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                rc = p.wait()
            finally:
                timer.cancel()
                if p.poll() is None:
                    p.kill()
                    p.wait()
            out.seek(0)
            err.seek(0)
            res = subprocess.CompletedProcess(cmd, rc, out.read(), err.read())
        if timed_out.is_set():
            raise DeviceError(f"{self.uri}: {argv[0]} did not finish within {timeout:.0f} s", "the board may be hung or the link slow; raise push_timeout in devices.yaml")
        return self._checked(argv, res, check=True)

    def files(self) -> FileAccess:
        return SSHFiles(self)

    # -- Device interface ---------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        src = (Path(__file__).with_name("_probe.py")).read_bytes()
        p = self.exec([self.python, "-"], stdin=src, timeout=60, check=False)
        if p.returncode != 0:
            raise DeviceError(f"{self.uri}: {self.python} failed to run the probe: {(p.stderr.strip().splitlines() or [''])[-1]}", "set python: /path/to/python3 for this device in devices.yaml")
        info = json.loads(p.stdout.strip().splitlines()[-1])
        return {"uri": self.id, **info, "emulated": False}

    def _ensure_lib(self) -> str:
        if self._lib:
            return self._lib
        data, sha = device_side_zip()
        path = f"{self.remote_dir}/lib/edgeopt-{sha[:16]}.zip"
        have = self.exec(["sh", "-c", 'test -f "$1" && echo have; true', "sh", path], timeout=60).stdout.strip()
        if have != "have":
            script = 'mkdir -p "$(dirname "$1")" && cat > "$1.tmp.$$" && mv "$1.tmp.$$" "$1"'
            self.exec(["sh", "-c", script, "sh", path], timeout=120, stdin=data)
        self._lib = path
        return path

    def _py(self, argv: list[str]) -> list[str]:
        return ["env", f"PYTHONPATH={self._ensure_lib()}", "PYTHONDONTWRITEBYTECODE=1", self.python, *argv]

    def remote_sha(self, remote_bundle: str) -> str | None:
        """The bundle's sha256 if the board holds a complete, verified copy (sha256 of every file re-checked there)."""
        code = "import sys\nfrom edgeopt.bundle import load_bundle\ntry:\n    print(load_bundle(sys.argv[1]).sha256)\nexcept Exception as e:\n    print('BAD', e)"
        p = self.exec(self._py(["-c", code, remote_bundle]), timeout=300, check=False)
        if p.returncode != 0:
            raise DeviceError(f"{self.uri}: {self.python} cannot load edgeopt's device side: {(p.stderr.strip().splitlines() or [''])[-1]}", "the board needs Python >= 3.9 with numpy; set python: in devices.yaml")
        line = (p.stdout.strip().splitlines() or [""])[-1]
        return None if line.startswith("BAD") or not line else line

    def push(self, bundle: Bundle) -> str:
        sha256 = bundle.sha256
        remote = f"{self.remote_dir}/bundles/{sha256}"
        if self.remote_sha(remote) == sha256:
            self.last_push_skipped = True
            return remote

        def feed(pipe: IO[bytes]) -> None:
            with tarfile.open(fileobj=pipe, mode="w|") as tar:  # a stream: each file copied in chunks
                tar.add(str(bundle.path), arcname=".")

        script = 'set -e; mkdir -p "$(dirname "$1")"; t="$1.tmp.$$"; rm -rf "$t"; mkdir "$t"; tar -xf - -C "$t"; rm -rf "$1"; mv "$t" "$1"'
        self.exec_stream(["sh", "-c", script, "sh", remote], feed, timeout=float(self.options.get("push_timeout", 600)))
        got = self.remote_sha(remote)
        if got != sha256:
            raise DeviceError(f"{self.uri}: the pushed bundle does not verify on the board ({got})", "the copy was altered in transit; retry")
        self.last_push_skipped = False
        return remote

    def run_module(self, module: str, args: list[str], timeout: float, pin_cpus: str | None = None) -> str:
        """Run a device-side module with the board's Python, under `timeout` there (killed after it)."""
        t = max(1, int(timeout))
        prefix = [str(x) for x in self.options.get("prefix") or []]
        argv = ["timeout", "-k", "5", str(t), *pinned([*prefix, *self._py(["-m", module, *args])], pin_cpus)]
        p = self.exec(argv, timeout=timeout + 30, check=False)
        if p.returncode in (124, 137):
            raise DeviceError(f"{module} on {self.uri} did not finish within {t} s (killed)", "raise --timeout or lower --runs")
        if p.returncode > 128 and not p.stdout.strip():
            raise DeviceError(f"{module} on {self.uri} was killed by signal {p.returncode - 128}", (p.stderr.strip().splitlines() or [""])[-1])
        return p.stdout if p.stdout.strip() else p.stderr

    def push_file(self, local: Path) -> str:
        """Copy one file (an image for end-to-end runs) into remote_dir/files/; return its remote path."""
        from edgeopt._util import sha256_file

        remote = f"{self.remote_dir}/files/{sha256_file(local)[:16]}-{Path(local).name}"
        script = 'if [ ! -f "$1" ]; then mkdir -p "$(dirname "$1")" && cat > "$1.tmp.$$" && mv "$1.tmp.$$" "$1"; fi'

        def feed(pipe: IO[bytes]) -> None:
            with open(local, "rb") as f:
                shutil.copyfileobj(f, pipe)

        self.exec_stream(["sh", "-c", script, "sh", remote], feed, timeout=120)
        return remote

    def shell_prefix(self) -> list[str] | None:
        return self.ssh_base()

    def close(self) -> None:
        try:
            subprocess.run([*self.ssh_base()[:-2], "-O", "exit", "--", self.host], capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            pass
        try:
            os.rmdir(self._ctl_dir)
        except OSError:
            pass
