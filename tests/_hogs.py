"""CPU hogs for the contamination tests: busy-loop processes that are or are not this process's descendants."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def foreign_hogs(n: int = 2) -> Iterator[list[int]]:
    """`n` busy loops that are not descendants of this process (every descendant's CPU time is a docs run's
    own): a shell starts them and exits at once; with this process not a subreaper, init adopts them. Yields
    their pids; kills them on exit."""
    ctypes.CDLL(None, use_errno=True).prctl(36, 0, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER off (a DocRun turns it on)
    loop = f"{sys.executable} -c 'while True: pass' >/dev/null 2>&1 & echo $!"
    sh = subprocess.run(["/bin/sh", "-c", f"for i in $(seq {n}); do {loop}; done"], capture_output=True, text=True, check=True)
    pids = [int(x) for x in sh.stdout.split()]
    assert len(pids) == n, sh.stdout
    try:
        yield pids
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
