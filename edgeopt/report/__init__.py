"""Reports: a rich table of stored measurements here; HTML with plots in report/html.py."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def measurements_table(rows: list[dict[str, Any]], title: str = "measurements") -> Table:
    t = Table(title=f"{title} ({len(rows)})")
    for c in ("id", "model", "backend", "precision", "passes", "device", "p50 ms", "p90 ms", "CV", "size MB", "cosine", "top-1 agr.", "weights", "match"):
        t.add_column(c, overflow="fold")
    for r in rows:
        f = r.get("fidelity") or {}
        t.add_row(
            str(r["id"]), r["model"], r["backend"], r.get("precision") or "-", r.get("passes") or "-", r["device"],
            _f(r.get("p50_ms")), _f(r.get("p90_ms")), _f(r.get("cv"), 3),
            _f((r.get("size_bytes") or 0) / 1e6), _f(f.get("cosine"), 5), _f(f.get("top1_agreement"), 3),
            r.get("weights") or "-", "-" if r.get("outputs_match") is None else str(r["outputs_match"]),
        )
    return t


def _f(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"
