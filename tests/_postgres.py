"""A real PostgreSQL server on 127.0.0.1 for the store tests (like _sshd.py for the SSH device).

`initdb` + `postgres` from Debian's postgresql package, on a free port, in a temporary data folder, with
trust authentication for one role and TCP on 127.0.0.1 only (no Unix socket). PostgreSQL refuses to run as
root, so when the tests run as root the server runs as `nobody` (subprocess's user=/group=) in a folder it owns.
"""

from __future__ import annotations

import ctypes
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from _sshd import _free_port

ROLE = "edgeopt"


def _bindir() -> Path | None:
    """Debian puts the server binaries in /usr/lib/postgresql/<major>/bin (not on PATH); newest wins."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("postgres")
    return Path(exe).parent if exe else None


def postgres_missing() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None."""
    b = _bindir()
    if b is None or not (b / "initdb").exists():
        return "PostgreSQL server binaries not installed (scripts/system-deps.sh postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "no PostgreSQL driver: pip install -c constraints.txt 'psycopg[binary]'"
    return None


@dataclass
class Postgres:
    port: int
    root: Path
    proc: subprocess.Popen

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://{ROLE}@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh, empty database on this server; its SQLAlchemy URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(host="127.0.0.1", port=self.port, user=ROLE, dbname="postgres", autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: ends open sessions (SIGTERM would wait for them)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the child runs as nobody and cannot read /root's Python


def _die_with_parent() -> None:
    """In the child before exec (after its uid change, which would clear it): a fast shutdown when the test
    process dies, so a killed pytest run leaves no server behind."""
    _LIBC.prctl(1, int(signal.SIGINT))  # PR_SET_PDEATHSIG


def start_postgres() -> Postgres:
    """initdb a temporary cluster and run `postgres` on a free 127.0.0.1 port until it accepts connections."""
    bindir = _bindir()
    assert bindir is not None, postgres_missing()
    # Not pytest's tmp_path: its parents are 0700 root, which `nobody` cannot enter.
    root = Path(tempfile.mkdtemp(prefix="edgeopt-pg-"))
    data = root / "data"
    as_user: dict[str, object] = {}
    if os.geteuid() == 0:
        shutil.chown(root, "nobody", "nogroup")
        as_user = {"user": "nobody", "group": "nogroup", "extra_groups": []}
    env = {**os.environ, "LC_ALL": "C", "HOME": str(root)}
    r = subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", ROLE, "--auth=trust", "-E", "UTF8", "--no-sync"],
        capture_output=True, text=True, env=env, cwd=root, timeout=120, **as_user,
    )
    if r.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {r.stderr[-800:]}")
    port = _free_port()
    log = open(root / "postgres.log", "wb")  # noqa: SIM115 - held by the server process for its lifetime
    proc = subprocess.Popen(
        [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
         "-c", "unix_socket_directories=", "-c", "fsync=off", "-c", "max_connections=50"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, preexec_fn=_die_with_parent, **as_user,
    )
    import psycopg

    deadline = time.time() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError("postgres exited: " + (root / "postgres.log").read_text()[-800:])
        try:
            psycopg.connect(host="127.0.0.1", port=port, user=ROLE, dbname="postgres", connect_timeout=2).close()
            break
        except psycopg.OperationalError:
            if time.time() > deadline:
                proc.kill()
                raise RuntimeError("postgres did not accept connections in 60 s: " + (root / "postgres.log").read_text()[-800:]) from None
            time.sleep(0.1)
    return Postgres(port, root, proc)
