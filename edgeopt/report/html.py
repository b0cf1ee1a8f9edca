"""`edgeopt report --html report.html`: one self-contained page (inline CSS, plots embedded as PNG data
URIs) that opens anywhere, mails as one file and needs no server.

Sections: summary, plots (latency vs fidelity Pareto front, size vs latency, energy vs latency, per-device
comparison, latency distributions), the measurement table, failed jobs with their reasons, and the
device snapshots. A plot with nothing to show is replaced by a sentence saying why (e.g. no energy meter).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from pathlib import Path
from typing import Any

from edgeopt._util import atomic_write_bytes
from edgeopt.report import load_cell
from edgeopt.report.plots import PLOTS

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0} td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
td.l,th.l{text-align:left} tr:nth-child(even){background:#f6f6f6} .note{color:#666;font-style:italic} tr.flagged td{color:#a00}
figure{margin:12px 0} figure img{max-width:100%;border:1px solid #eee} .fail{color:#a00}
"""


def _f(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return html.escape(str(v))


def _energy_note(rows: list[dict[str, Any]]) -> str:
    reasons = sorted({r.get("energy_reason") for r in rows if r.get("energy_reason")})
    return "No energy figures: " + "; ".join(reasons) if reasons else "No energy figures were stored for these measurements."


def render_html(rows: list[dict[str, Any]], title: str = "edgeopt report", failures: list[dict[str, Any]] | None = None, devices: dict[str, Any] | None = None) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head><body>"]
    out.append(f"<h1>{html.escape(title)}</h1>")
    devs = sorted({r["device"] for r in rows})
    models = sorted({r["model"] for r in rows})
    out.append(
        f"<p id='summary'>{len(rows)} measurements of {len(models)} models on {len(devs)} devices"
        f"{f', {len(failures)} failed jobs' if failures else ''}; generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC.</p>"
    )
    out.append("<h2>Plots</h2>")
    for key, (caption, fn) in PLOTS.items():
        png = fn(rows) if rows else None
        if png is None:
            why = _energy_note(rows) if key == "energy" else "Nothing to plot: no measurement has the figures this plot needs."
            out.append(f"<p class='note' data-missing-plot='{key}'>{html.escape(caption)}: {html.escape(why)}</p>")
            continue
        b64 = base64.b64encode(png).decode()
        out.append(f"<figure><img data-plot='{key}' alt='{html.escape(caption)}' src='data:image/png;base64,{b64}'><figcaption>{html.escape(caption)}</figcaption></figure>")

    out.append("<h2>Measurements</h2><table id='measurements'><tr>")
    cols = [("model", "l"), ("passes", "l"), ("backend", "l"), ("precision", "l"), ("device", "l"), ("threads", ""), ("p50 ms", ""), ("p90 ms", ""),
            ("p99 ms", ""), ("CV", ""), ("runs", ""), ("e2e p50 ms", ""), ("size MB", ""), ("cosine", ""), ("energy mJ", ""), ("meter", "l"), ("throttled", ""), ("other load", "l")]
    out += [f"<th class='{c}'>{n}</th>" for n, c in cols]
    out.append("</tr>")
    for r in sorted(rows, key=lambda r: (r["model"], r.get("passes") or "", r["backend"], r["device"], r.get("threads") or 0)):
        fid = r.get("fidelity") or {}
        vals = [r["model"], r.get("passes") or "-", r["backend"], r.get("precision"), r["device"], r.get("threads"), r.get("p50_ms"), r.get("p90_ms"),
                r.get("p99_ms"), _f(r.get("cv"), 3), r.get("runs"), r.get("e2e_p50_ms"), (r.get("size_bytes") or 0) / 1e6, _f(fid.get("cosine"), 5),
                None if r.get("energy_j") is None else r["energy_j"] * 1e3, r.get("energy_meter"), r.get("throttled"), load_cell(r.get("contamination"))]
        flagged = bool((r.get("contamination") or {}).get("flagged"))
        out.append(("<tr class='flagged'>" if flagged else "<tr>") + "".join(f"<td class='{c}'>{_f(v)}</td>" for v, (_, c) in zip(vals, cols, strict=True)) + "</tr>")
    out.append("</table>")
    gens = [r for r in rows if r.get("generation")]
    if gens:
        out.append("<h2>Generation (MELT)</h2><table id='generation'><tr><th class='l'>model</th><th class='l'>precision</th><th class='l'>device</th>"
                   "<th>load ms</th><th>TTFT ms</th><th>prefill 128 pos/s</th><th>decode tok/s</th><th>peak RSS MB</th><th>energy mJ/token</th><th>drift</th><th>throttled</th></tr>")
        for r in sorted(gens, key=lambda r: (r["model"], r["device"])):
            g = r["generation"]
            pre = next((x["positions_per_s"] for x in g.get("prefill", []) if x.get("prompt_tokens") == 128), None)
            e = g.get("energy_per_token_j")
            vals = [g.get("load_ms"), g.get("ttft_ms"), pre, g.get("decode_tokens_per_s"), r.get("peak_rss_mb"), None if e is None else e * 1e3,
                    None if g.get("drift") is None else f"{100 * g['drift']:+.1f}%", g.get("throttled")]
            out.append(f"<tr><td class='l'>{_f(r['model'])}</td><td class='l'>{_f(r.get('precision'))}</td><td class='l'>{_f(r['device'])}</td>"
                       + "".join(f"<td>{_f(v)}</td>" for v in vals) + "</tr>")
        out.append("</table>")
    if failures:
        out.append("<h2>Failed jobs</h2><table id='failures'><tr><th class='l'>job</th><th class='l'>stage</th><th class='l'>reason</th><th>attempts</th></tr>")
        for f in failures:
            job = f"{f['model']} | {f.get('passes') or 'fp32'} | {f['backend']}/{f.get('precision') or '-'} @ {f['device_id']}"
            out.append(f"<tr class='fail'><td class='l'>{html.escape(job)}</td><td class='l'>{_f(f.get('stage'))}</td><td class='l'>{_f(f.get('error'))}</td><td>{f.get('attempts')}</td></tr>")
        out.append("</table>")
    if devices:
        out.append("<h2>Devices</h2><table id='devices'><tr><th class='l'>device</th><th class='l'>arch</th><th class='l'>CPU</th><th>cores</th><th>memory MB</th><th class='l'>OS</th><th class='l'>runtimes</th></tr>")
        for d, info in sorted(devices.items()):
            rt = ", ".join(f"{k} {v}" for k, v in (info.get("runtimes") or {}).items())
            out.append(f"<tr><td class='l'>{_f(d)}</td><td class='l'>{_f(info.get('arch'))}</td><td class='l'>{_f(info.get('cpu_model'))}</td><td>{_f(info.get('cores'))}</td>"
                       f"<td>{_f(info.get('memory_mb'))}</td><td class='l'>{_f(info.get('os'))}</td><td class='l'>{html.escape(rt)}</td></tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def write_html(rows: list[dict[str, Any]], path: str | Path, title: str = "edgeopt report", db: str | None = None) -> Path:
    """Write the report (atomically). Failed jobs and device snapshots come from the store when `db` is given
    or EDGEOPT_DB/the default database exists."""
    failures, devices = None, None
    try:
        import os

        from edgeopt.store import DEFAULT_URL, Store

        if db is None and not os.environ.get("EDGEOPT_DB") and not Path(DEFAULT_URL.removeprefix("sqlite:///")).is_file():
            raise FileNotFoundError  # no database to read failures from; never create one as a side effect
        st = Store(db)
        failures = st.jobs(status="failed")
        devices = {k: v for k, v in st.devices().items() if k in {r["device"] for r in rows}}
    except Exception:  # noqa: BLE001 - the report of the given rows must still be written
        pass
    p = Path(path)
    atomic_write_bytes(p, render_html(rows, title, failures, devices).encode())
    return p
