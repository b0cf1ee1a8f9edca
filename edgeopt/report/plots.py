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
    _log_if_wide(ax, [x(r) for r in pts], "x")
    _log_if_wide(ax, [y(r) for r in pts], "y")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _png(fig)


def short_label(r: Row) -> str:
    """A configuration without its model name (for a panel that already names the model)."""
    passes = r.get("passes") or "fp32"
    t = r.get("threads")
    return f"{passes} | {r['backend']}/{r.get('precision') or '-'}" + (f" | t{t}" if t else "")


def _log_if_wide(ax: Any, values: list[float], axis: str = "x", ratio: float = 20.0) -> None:
    """A log axis where the values span more than `ratio` (one linear axis would crush the small ones)."""
    pos = [v for v in values if v > 0]
    if pos and max(pos) / min(pos) > ratio:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def latency_vs_fidelity(rows: list[Row]) -> bytes | None:
    """One panel per model: latency (log where the range calls for it) against output cosine, one series per
    device with its Pareto front dashed. Front points are numbered on the plot and named in a list under
    the panel, so labels never collide however close the points lie."""
    pts = [r for r in rows if r.get("p50_ms") is not None and (r.get("fidelity") or {}).get("cosine") is not None]
    if not pts:
        return None
    by_model: dict[str, list[Row]] = defaultdict(list)
    for r in pts:
        by_model[r["model"]].append(r)
    models = sorted(by_model)
    ncols = 1 if len(models) == 1 else 2
    nrows = (len(models) + ncols - 1) // ncols
    devices = sorted({r["device"] for r in pts})
    colours = {d: f"C{i % 10}" for i, d in enumerate(devices)}
    plt = _plt()
    heights = []
    for m in models:  # the list under each panel needs room: one line per front point
        n_front = sum(len(pareto_front([(r["p50_ms"], r["fidelity"]["cosine"]) for r in _by_device(by_model[m])[d]]))
                      for d in _by_device(by_model[m]))
        heights.append(3.0 + 0.16 * n_front)
    row_h = [max(heights[i * ncols:(i + 1) * ncols]) for i in range(nrows)]
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, sum(row_h)), squeeze=False, gridspec_kw={"height_ratios": row_h})
    for k, m in enumerate(models):
        ax = axes[k // ncols][k % ncols]
        items: list[tuple[str, Row]] = []
        for dev, rs in _by_device(by_model[m]).items():
            xy = [(r["p50_ms"], r["fidelity"]["cosine"]) for r in rs]
            ax.scatter(*zip(*xy, strict=True), color=colours[dev], alpha=0.75, s=22, label=dev)
            front = pareto_front(xy)
            ax.plot(*zip(*front, strict=True), "--", color=colours[dev], linewidth=1)
            for r, pt in zip(rs, xy, strict=True):
                if pt in front and all(pt != (x["p50_ms"], x["fidelity"]["cosine"]) for _, x in items):
                    items.append((dev, r))
        items.sort(key=lambda it: it[1]["p50_ms"])  # numbered fastest first
        for i, (dev, r) in enumerate(items, 1):
            ax.annotate(str(i), (r["p50_ms"], r["fidelity"]["cosine"]), fontsize=7, xytext=(3, 3), textcoords="offset points", color=colours[dev])
        _log_if_wide(ax, [r["p50_ms"] for r in by_model[m]])
        ax.set_title(m, fontsize=10)
        ax.set_xlabel("latency p50 (ms)", fontsize=8)
        ax.set_ylabel("output cosine vs fp32", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both")
        if len(devices) > 1:
            ax.legend(fontsize=6)
        listing = "\n".join(f"{i}. {short_label(r)} @ {dev}: {r['p50_ms']:.3g} ms, {r['fidelity']['cosine']:.4f}" for i, (dev, r) in enumerate(items, 1))
        ax.text(0, -0.2, listing, transform=ax.transAxes, fontsize=6.5, va="top", family="monospace")
    for k in range(len(models), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    fig.suptitle("Latency vs fidelity per model (dashed: Pareto front per device; numbered points listed under each panel)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


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
    _log_if_wide(ax, [v for v in val.values()], "x")
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


def tokens_per_iteration(rows: list[Row]) -> bytes | None:
    """Generative measurements with sustained runs: tokens/s of each back-to-back generation (MELT's drift)."""
    pts = [r for r in rows if (r.get("generation") or {}).get("sustained")]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    for r in pts:
        g = r["generation"]
        its = [x["iteration"] for x in g["sustained"]]
        drift = "" if g.get("drift") is None else f" (drift {100 * g['drift']:+.1f}%{', throttled' if g.get('throttled') else ''})"
        ax.plot(its, [x["tokens_per_s"] for x in g["sustained"]], marker="o", label=f"{config_label(r)} @ {r['device']}{drift}")
    ax.set_xlabel("generation (back to back)")
    ax.set_ylabel("tokens/s (first token to last)")
    ax.set_title("Sustained generation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


PLOTS = {
    "pareto": ("Latency vs fidelity (Pareto front)", latency_vs_fidelity),
    "size": ("Size vs latency", size_vs_latency),
    "energy": ("Energy per inference vs latency", energy_vs_latency),
    "devices": ("Per-device comparison", per_device),
    "distributions": ("Latency distributions", latency_distributions),
    "tokens": ("Tokens/s per generation (sustained)", tokens_per_iteration),
}
