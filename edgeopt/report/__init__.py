"""Reports: a rich table of stored measurements here; HTML with plots in report/html.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table

if TYPE_CHECKING:
    from edgeopt.bundle import Manifest


# (header, cell(row, fidelity), priority): priority 0 columns are always shown, 1 from 120 columns of
# terminal, 2 from 170; the model name never wraps.
_COLUMNS: list[tuple[str, Any, int]] = [
    ("id", lambda r, f: str(r["id"]), 0),
    ("model", lambda r, f: r["model"], 0),
    ("backend", lambda r, f: f"{r['backend']}/{r.get('precision') or '-'}", 0),
    ("passes", lambda r, f: r.get("passes") or "-", 1),
    ("device", lambda r, f: r["device"], 0),
    ("p50 ms", lambda r, f: _f(r.get("p50_ms")), 0),
    ("p90 ms", lambda r, f: _f(r.get("p90_ms")), 2),
    ("CV", lambda r, f: _f(r.get("cv"), 3), 2),
    ("size MB", lambda r, f: _f((r.get("size_bytes") or 0) / 1e6), 2),
    ("cosine", lambda r, f: _f(f.get("cosine"), 5), 0),
    ("top-1 agr.", lambda r, f: _f(f.get("top1_agreement"), 3), 1),
    ("accuracy", lambda r, f: accuracy_cell(f), 1),
    ("gate on", lambda r, f: evaluated_on(f), 2),
    ("weights", lambda r, f: r.get("weights") or "-", 2),
    ("match", lambda r, f: "-" if r.get("outputs_match") is None else str(r["outputs_match"]), 1),
    ("load", lambda r, f: load_cell(r.get("contamination")), 0),
]


def measurements_table(rows: list[dict[str, Any]], title: str = "measurements", width: int | None = None) -> Table:
    """Stored measurements as a table fitted to a terminal `width` (all columns when None): the columns a
    narrow terminal leaves out are named in the caption; `edgeopt report --json` has every field."""
    level = 2 if width is None or width >= 170 else 1 if width >= 120 else 0
    cols = [c for c in _COLUMNS if c[2] <= level]
    hidden = [c[0] for c in _COLUMNS if c[2] > level]
    t = Table(title=f"{title} ({len(rows)})", caption=f"not shown at this width: {', '.join(hidden)} (widen the terminal or use --json)" if hidden else None)
    for name, _, _ in cols:
        t.add_column(name, no_wrap=name in ("model", "id", "backend", "load", "p50 ms"), overflow="fold", justify="right" if name.endswith(("ms", "MB", "CV")) else "left")
    for r in rows:
        f = r.get("fidelity") or {}
        t.add_row(*(cell(r, f) for _, cell, _ in cols))
    return t


def load_cell(c: dict[str, Any] | None) -> str:
    """The contamination flag of a stored measurement: `ok 2%`, `FLAGGED 41%`, `-` (not recorded)."""
    if not c:
        return "-"
    share = c.get("foreign_cpu_share")
    if share is None:
        return "not measured"
    return f"{'FLAGGED' if c.get('flagged') else 'ok'} {100 * share:.0f}%"


def _f(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def evaluated_on(fid: dict[str, Any]) -> str:
    """What the fidelity gate ran on: "data (n=512)" or "8 bundled photos"; "-" for bundles made before it was recorded."""
    on, n = fid.get("evaluated_on"), fid.get("n")
    if on is None:
        return "-"
    return f"data (n={n})" if str(on).startswith("data") else f"{n} bundled photos"


def accuracy_cell(fid: dict[str, Any]) -> str:
    """The artifact's accuracy against labels with its 95 % interval and the drop, e.g. "top1 0.912 [0.88, 0.94] -0.4 pt"."""
    a = fid.get("accuracy")
    if not isinstance(a, dict) or a.get("artifact") is None:
        return "-"
    lo, hi = (a.get("ci95") or [None, None])[:2]
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
    drop = a.get("drop_points")
    return f"{a['metric']} {a['artifact']:.3f}{ci}" + (f" -{drop:.1f} pt" if drop is not None else "")


def fidelity_lines(m: Manifest) -> list[str]:
    """Human lines for a compiled bundle: what the gate ran on (the data, its hash and splits, or the bundled
    photographs), the agreement with its interval, the accuracy against labels and the --max-drop gate."""
    f = m.fidelity
    out = []
    if m.data is not None:
        d = m.data
        out.append(f"data: {d.format} {d.sha256[:12]}, calibration {d.calibration}, evaluation {d.evaluation}"
                   + (f", {d.skipped} unreadable skipped" if d.skipped else ""))
    elif f.get("evaluated_on"):
        out.append(f"gate ran on {f.get('n')} bundled photographs (no --data)")
    ag = f.get("agreement")
    if isinstance(ag, dict) and ag.get("value") is not None:
        lo, hi = ag["ci95"]
        out.append(f"{ag['metric']} {ag['value']:.4f} (95 % [{lo:.4f}, {hi:.4f}], n={ag['n']})")
    if isinstance(f.get("accuracy"), dict):
        a = f["accuracy"]
        out.append(f"accuracy {a['metric']}: fp32 {_f(a.get('reference'), 4)}, artifact {_f(a.get('artifact'), 4)} "
                   f"(95 % [{_f(a['ci95'][0], 4)}, {_f(a['ci95'][1], 4)}], n={a['n']}), drop {_f(a.get('drop_points'), 2)} points")
    elif f.get("accuracy_note"):
        out.append(f"accuracy: {f['accuracy_note']}")
    if isinstance(f.get("gate"), dict):
        out.append(f"--max-drop gate: {f['gate']['status']}: {f['gate']['reason']}")
    return out
