"""Plots for the HTML report (matplotlib, Agg backend, returned as PNG bytes).

Each function takes the rows of `Store.measurements()` and returns PNG bytes, or None when the rows hold
nothing to plot (the report then says why instead of showing an empty axis).
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Callable
from typing import Any

Row = dict[str, Any]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def config_label(r: Row) -> str:
    passes = r.get("passes") or "fp32"
    t = r.get("threads")
    return f"{r['model']} | {passes} | {r['backend']}/{r.get('precision') or '-'}" + (f" | t{t}" if t else "")


def _by_device(rows: list[Row]) -> dict[str, list[Row]]:
    d: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        d[r["device"]].append(r)
    return dict(sorted(d.items()))


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by another with lower-or-equal latency and higher-or-equal fidelity."""
    front: list[tuple[float, float]] = []
    best = float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def _scatter_by_device(
    pts: list[Row], x: Callable[[Row], float], y: Callable[[Row], float], xlabel: str, ylabel: str, title: str,
    label: Callable[[str, list[Row]], str] = lambda dev, _rs: dev, decorate: Callable[[Any, Any, list[Row]], None] | None = None,
) -> bytes:
    """One scatter series per device on a shared axis: the set-up every two-quantity plot here shares.

    `decorate(ax, series, rows)` adds what is particular to a plot (e.g. the Pareto front) to each series."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for dev, rs in _by_device(pts).items():
        sc = ax.scatter([x(r) for r in rs], [y(r) for r in rs], label=label(dev, rs), alpha=0.8)
        if decorate is not None:
            decorate(ax, sc, rs)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def _draw_front(ax: Any, sc: Any, rs: list[Row]) -> None:
    """The device's Pareto front as a dashed line in its series' colour, its points labelled."""
    xy = [(r["p50_ms"], r["fidelity"]["cosine"]) for r in rs]
    front = pareto_front(xy)
    ax.plot(*zip(*front, strict=True), "--", color=sc.get_facecolor()[0], linewidth=1)
    for r, (x, y) in zip(rs, xy, strict=True):
        if (x, y) in front:
            ax.annotate(config_label(r), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")


def latency_vs_fidelity(rows: list[Row]) -> bytes | None:
    pts = [r for r in rows if r.get("p50_ms") is not None and (r.get("fidelity") or {}).get("cosine") is not None]
    if not pts:
        return None
    return _scatter_by_device(
        pts, lambda r: r["p50_ms"], lambda r: r["fidelity"]["cosine"], "latency p50 (ms)", "fidelity: output cosine vs fp32 torch",
        "Latency vs fidelity (dashed: Pareto front per device)", decorate=_draw_front,
    )


def size_vs_latency(rows: list[Row]) -> bytes | None:
    pts = [r for r in rows if r.get("p50_ms") is not None and r.get("size_bytes")]
    if not pts:
        return None
    return _scatter_by_device(pts, lambda r: r["size_bytes"] / 1e6, lambda r: r["p50_ms"], "artifact size (MB)", "latency p50 (ms)", "Size vs latency")


def energy_vs_latency(rows: list[Row]) -> bytes | None:
    pts = [r for r in rows if r.get("p50_ms") is not None and r.get("energy_j") is not None]
    if not pts:
        return None
    return _scatter_by_device(
        pts, lambda r: r["p50_ms"], lambda r: r["energy_j"] * 1e3, "latency p50 (ms)", "energy per inference (mJ, idle subtracted)",
        "Energy vs latency", label=lambda dev, rs: f"{dev} ({', '.join(sorted({r.get('energy_meter') or '?' for r in rs}))})",
    )


def per_device(rows: list[Row]) -> bytes | None:
    """Grouped bars: each configuration's p50 on every device that measured it."""
    pts = [r for r in rows if r.get("p50_ms") is not None]
    devs = sorted({r["device"] for r in pts})
    if not pts:
        return None
    cfgs = sorted({config_label(r) for r in pts})
    val = {(config_label(r), r["device"]): r["p50_ms"] for r in pts}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(cfgs) * max(1, len(devs)) + 1.5))
    h = 0.8 / len(devs)
    for i, d in enumerate(devs):
        ys = [k + i * h for k in range(len(cfgs))]
        ax.barh(ys, [val.get((c, d), 0.0) for c in cfgs], height=h, label=d)
    ax.set_yticks([k + 0.4 - h / 2 for k in range(len(cfgs))])
    ax.set_yticklabels(cfgs, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("latency p50 (ms)")
    ax.set_title("Per-device comparison")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def latency_distributions(rows: list[Row]) -> bytes | None:
    """Box per measurement from the runner's summary: whiskers min..p99, box p50..p90, line p50."""
    pts = [r for r in rows if r.get("latency_ms") and r["latency_ms"].get("p50") is not None]
    if not pts:
        return None
    plt = _plt()
    stats = []
    for r in pts:
        lat = r["latency_ms"]
        stats.append({
            "label": f"{config_label(r)} @ {r['device']}", "whislo": lat.get("min", lat["p50"]), "q1": lat["p50"],
            "med": lat["p50"], "q3": lat.get("p90", lat["p50"]), "whishi": lat.get("p99", lat["p50"]), "fliers": [lat["max"]] if "max" in lat else [],
        })
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(stats) + 1.5))
    ax.bxp(stats, vert=False, showfliers=True)
    ax.tick_params(axis="y", labelsize=6)
    ax.set_xlabel("latency (ms): whiskers min..p99, box p50..p90, dot max")
    ax.set_title("Latency distributions")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


PLOTS = {
    "pareto": ("Latency vs fidelity (Pareto front)", latency_vs_fidelity),
    "size": ("Size vs latency", size_vs_latency),
    "energy": ("Energy per inference vs latency", energy_vs_latency),
    "devices": ("Per-device comparison", per_device),
    "distributions": ("Latency distributions", latency_distributions),
}
