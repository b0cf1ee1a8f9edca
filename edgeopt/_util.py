"""Small helpers shared by host and device code (stdlib + numpy only: the runner imports this)."""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Closest names, for 'did you mean' messages."""
    choices = list(choices)
    hits = difflib.get_close_matches(name, choices, n=n, cutoff=0.4)
    return hits or [c for c in choices if name.split("_")[0] in c][:n]


@contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; rename it to `final` only when the block succeeds.

    An interrupted or failing writer leaves nothing at `final` (the temp folder is removed).
    """
    final = Path(final).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            if not overwrite:
                raise FileExistsError(f"{final} exists")
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StageClock:
    """Wall seconds per named stage of one job, exclusive: a stage entered inside another pauses the outer one,
    so the stages add up to the time spent inside any of them. A stage entered twice adds up."""

    def __init__(self) -> None:
        import time

        self._now = time.perf_counter
        self.started = self._now()
        self.seconds: dict[str, float] = {}
        self._stack: list[tuple[str, float]] = []

    def _charge(self, now: float) -> None:
        if self._stack:
            name, since = self._stack[-1]
            self.seconds[name] = self.seconds.get(name, 0.0) + now - since

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        now = self._now()
        self._charge(now)
        self._stack.append((name, now))
        try:
            yield
        finally:
            now = self._now()
            self._charge(now)
            self._stack.pop()
            if self._stack:
                self._stack[-1] = (self._stack[-1][0], now)

    def report(self) -> dict[str, float]:
        """Each stage's seconds (rounded to ms) in the order first entered, `other` (time outside every stage)
        and `total` since the clock started."""
        total = self._now() - self.started
        out = {k: round(v, 3) for k, v in self.seconds.items()}
        out["other"] = round(max(0.0, total - sum(self.seconds.values())), 3)
        out["total"] = round(total, 3)
        return out
