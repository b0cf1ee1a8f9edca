"""The capability table: every backend's `modes`, read in one place.

`capability_table()` is what the capability matrix tries (`edgeopt.capabilities.CELLS`), `auto_grid()` what
`--auto` searches, `get_mode()` one cell. Reading the table imports every backend module (cheap: they import
their runtimes lazily), never a runtime.
"""

from __future__ import annotations

from edgeopt.runtimes.base import BACKENDS, Mode, backend_class


def capability_table() -> list[tuple[str, Mode]]:
    """(backend name, mode) for every mode of every backend, in registry order, then each backend's own."""
    return [(name, m) for name in BACKENDS.names() for m in backend_class(name).modes]


def auto_grid(backends: list[str] | None = None) -> list[tuple[str, Mode]]:
    """The (backend, mode) pairs `--auto` tries, in its search order on a CPU (`Mode.auto_rank`).

    `backends` (names or aliases) narrows the grid; None means every backend. The order puts the plain ONNX
    Runtime export first, so the winner is never slower than a plain export whatever the time budget, then
    the int8 paths, cheapest to compile first so that a short `--budget-minutes` measures as many of them as
    it can (ORT static QDQ ~10 s on a 2-core machine, LiteRT dynamic int8 20-60 s, ExecuTorch/XNNPACK int8
    60-100 s, LiteRT static int8; docs/backends.md compares them), then the fp32/fp16 artifacts, then untuned
    TVM. Ranks are unique, so the order does not depend on the registry's.
    """
    names = BACKENDS.names() if backends is None else [BACKENDS.canonical(b) for b in backends]
    grid = [(name, m) for name in names for m in backend_class(name).modes if m.auto_rank is not None]
    return sorted(grid, key=lambda bm: bm[1].auto_rank or 0)


def get_mode(backend: str, precision: str) -> Mode:
    """The mode `precision` of `backend` (a name or alias); a one-line error lists the backend's modes."""
    return backend_class(backend).get_mode(precision)


def label(backend: str, precision: str) -> str:
    """What tables call `precision` on `backend`: the mode's label ("int8 (computes in float)" for TVM's int8), or
    the precision itself where no mode of that name exists (a mixed-precision result)."""
    try:
        return get_mode(backend, precision).label
    except Exception:  # noqa: BLE001 - an unknown backend or precision is shown as recorded
        return precision
