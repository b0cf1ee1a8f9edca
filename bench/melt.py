"""MELT's figures of generative bundles on this machine: load, time to first token, prefill positions/s at
32/128/512 prompt tokens, decode tokens/s over 128 tokens, peak memory, sustained drift, and the fidelity each
bundle kept. The table goes into docs/llm.md between the `melt` markers (bench/_doc.py: with the command, the
date, the load and other processes' CPU share; nothing is written when other processes used the CPUs).

    python bench/melt.py                                   # tinygpt_v_tiny fp32 and int4 (compiled here)
    python bench/melt.py --full                            # also the full 2.8 B tinygpt_v, int4 (compiled here: ~20 min, ~14 GB)
    python bench/melt.py --bundle /tmp/tgv-int4            # also bundles compiled before (the same full model:
                                                           #   edgeopt compile tinygpt_v -p quantize:int4 -o /tmp/tgv-int4)
    python bench/melt.py --no-write --new-tokens 16 --sustained 2

Each bundle is measured by `edgeopt.profile` on the local device (the device-side runner in a fresh process:
numpy + onnxruntime, no torch), one after another, with --threads intra-op threads.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "llm.md"
sys.path.insert(0, str(ROOT))

from _doc import DocRun, add_args, write_block  # noqa: E402

# Free disk --full needs under the temp folder: the full model's export and int4 intermediates sit beside its
# bundle while it compiles (a run with 35 GiB free ran out of space near the end of the export).
FULL_FREE_GIB = 37
TINY = (("tinygpt_v_tiny", None, "fp32"), ("tinygpt_v_tiny", "quantize:int4", "fp16"))


def _row(bundle: Path, threads: int, new_tokens: int, sustained: int) -> dict:
    import edgeopt
    from edgeopt.measurement import Protocol

    b = edgeopt.load_bundle(bundle)
    m = b.manifest
    res = edgeopt.profile(bundle, store=False, protocol=Protocol(warmup=1, runs=20, min_seconds=1.0, threads=threads, new_tokens=new_tokens,
                                                                 sustained=sustained))
    g = res.generation
    pre = {r["prompt_tokens"]: r["positions_per_s"] for r in g.prefill}
    return {
        "model": m.model.name, "llm": m.precision, "vision": m.backend_details.get("vision_precision"),
        "size_mb": (m.size_bytes or 0) / 1e6, "load_s": g.load_ms / 1e3, "ttft_ms": g.ttft_ms, "vision_ms": g.vision_ms,
        "prefill_ms": g.prefill_ms, "pre32": pre.get(32), "pre128": pre.get(128), "pre512": pre.get(512),
        "decode": g.decode_tokens_per_s, "p50": res.latency_ms.p50, "rss_mb": res.peak_rss_mb,
        "check": f"{g.check['matched']}/{g.check['check_tokens']}", "drift": g.drift,
        "sustained": " ".join(f"{r['tokens_per_s']:.1f}" for r in g.sustained),
        "next_token": m.fidelity.get("next_token_agreement"), "greedy": m.fidelity.get("greedy_sequence_agreement"),
        "cosine": m.fidelity.get("cosine"), "n": m.fidelity.get("n"), "flagged": bool(res.contamination and res.contamination.flagged),
    }


def _md(rows: list[dict], a: argparse.Namespace) -> str:
    def f(v, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    lines = [
        f"Local device, ONNX Runtime CPU, {a.threads} threads, batch 1, greedy; {a.new_tokens} tokens per timed generation, "
        f"{a.sustained} sustained generations. Prefill: positions/s at 32 / 128 / 512 text tokens after the image (prefix and "
        "32 image tokens included). Fidelity: against fp32 torch on the bundle's sample prompts (first-token logits cosine, "
        "next-token agreement, 16-token greedy-sequence agreement); random weights, so agreement says how the graphs agree, "
        "not how well the model answers.",
        "",
        "| model | LLM / vision | size MB | load s | TTFT ms (vision + prefill) | prefill pos/s 32 / 128 / 512 | decode tok/s | "
        "p50 ms/token | peak RSS MB | first tokens | sustained tok/s (drift) | cosine | next token | greedy 16 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        drift = "" if r["drift"] is None else f" ({100 * r['drift']:+.1f}%)"
        lines.append(
            f"| {r['model']} | {r['llm']} / {r['vision']} | {r['size_mb']:.1f} | {r['load_s']:.2f} | {r['ttft_ms']:.1f} "
            f"({r['vision_ms']:.1f} + {r['prefill_ms']:.1f}) | {f(r['pre32'], '.0f')} / {f(r['pre128'], '.0f')} / {f(r['pre512'], '.0f')} | "
            f"{r['decode']:.1f} | {f(r['p50'], '.2f')} | {f(r['rss_mb'], '.0f')} | {r['check']} | {r['sustained']}{drift} | "
            f"{f(r['cosine'], '.5f')} | {f(r['next_token'], '.2f')} (n={r['n']}) | {f(r['greedy'], '.2f')} |"
            + (" FLAGGED" if r["flagged"] else ""))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", action="append", default=[], help="a generative bundle compiled before (repeatable)")
    ap.add_argument("--full", action="store_true", help="also compile and measure the full tinygpt_v (int4 LLM graphs, fp32 vision)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--sustained", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    add_args(ap)
    a = ap.parse_args()
    from rich.console import Console

    import edgeopt

    con = Console(stderr=True)
    for b in a.bundle:
        if not edgeopt.load_bundle(b).generative:
            con.print(f"[red]{b} is not a generative bundle[/]")
            return 2
    if a.full:  # refuse before hours of work rather than fail at the end of the export
        free = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
        if free < FULL_FREE_GIB:
            con.print(f"[red]--full needs about {FULL_FREE_GIB} GiB free under {tempfile.gettempdir()} (the 2.8 B model's export and int4 "
                      f"intermediates); {free:.0f} GiB is free. Free space there, or point TMPDIR at a larger disk.[/]")
            return 2
    with DocRun.from_args(a), tempfile.TemporaryDirectory(prefix="bench-melt-") as tmp:
        bundles = []
        for i, (model, passes, vision) in enumerate(TINY):
            with con.status(f"compile {model} {passes or 'fp32'}"):
                bundles.append(edgeopt.compile(model, passes=passes, options={"vision": vision}, output=Path(tmp) / f"b{i}", samples=8).path)
        if a.full:
            with con.status("compile tinygpt_v quantize:int4 (the full model: about 20 minutes)"):
                bundles.append(edgeopt.compile("tinygpt_v", passes="quantize:int4", output=Path(tmp) / "full", samples=4).path)
        bundles += [Path(b) for b in a.bundle]
        rows = []
        for b in bundles:
            with con.status(f"profile {b}"):
                rows.append(_row(b, a.threads, a.new_tokens, a.sustained))
            con.print(f"{rows[-1]['model']} {rows[-1]['llm']}: {rows[-1]['decode']:.1f} tokens/s decode, TTFT {rows[-1]['ttft_ms']:.1f} ms")
        text = _md(rows, a)
        print(text)
        if not a.no_write:
            write_block(DOC, "melt", text, title="MELT figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
