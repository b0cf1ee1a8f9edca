"""TinyGPT-V: component parameter counts of the full model (meta device) vs the paper, MACs of its single graph,
and for the tiny configuration: ONNX export time, ORT vs torch latency of each split graph, and the greedy
decode loop (torch KV cache vs the numpy loop over ORT sessions) with its tokens compared.

    .venv/bin/python bench/zoo_tinygpt_v.py [--runs 20] [--tokens 16]

Prints the tables and writes them to docs/models-tinygpt_v.md. Latency: medians of `--runs` calls on one real
sample (a skimage photograph and a prompt), after warm-up, measured side by side in this one process
(torch and ORT CPU with the same `--threads`, default 1: on a shared 2-core machine torch's
OpenMP pool at 2 threads slows down up to 40x under load). The tiny model is random-weight: its
figures show the pipeline's cost structure, not the full model's speed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _doc import DocRun, add_args, write_block

from edgeopt._timed_worker import median_ms

TINY = "tinygpt_v_tiny"
PARTS = ("vision", "prefill", "decode")


def _median_ms(fn, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    return median_ms(fn, runs)


def full_counts() -> tuple[dict, float, dict]:
    import torch

    from edgeopt.models import get_spec
    from edgeopt.models._tinygpt_v_net import component_params
    from edgeopt.models.counting import count_macs

    spec = get_spec("tinygpt_v")
    model = spec.build(device="meta")
    ex = tuple(torch.zeros(i.shape, dtype=getattr(torch, i.dtype), device="meta") for i in spec.inputs)
    return component_params(model), count_macs(model, ex) / 1e9, spec.extras["paper_components_m"]


def tiny_parts(runs: int, tokens: int, threads: int) -> tuple[list[dict], dict]:
    import torch

    from edgeopt._ort import ort_session
    from edgeopt.export import export_onnx, torch_outputs
    from edgeopt.llm import OnnxVLM
    from edgeopt.models import get_spec
    from edgeopt.models._tinygpt_v_net import PrefillPart, VisionPart, make_decode_part

    torch.set_num_threads(threads)
    whole = get_spec(TINY).build()
    mods = {"vision": VisionPart(whole), "prefill": PrefillPart(whole), "decode": make_decode_part(whole), "whole": whole}
    rows, paths = [], {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-tinygpt-"))
    for part in (*PARTS, "whole"):
        spec = get_spec(TINY if part == "whole" else f"{TINY}_{part}")
        names, outs = [i.name for i in spec.inputs], list(spec.outputs)
        sample = spec.sample_inputs(1)[0]
        path = paths[part] = tmp / f"{part}.onnx"
        info = export_onnx(mods[part], sample, names, outs, path, dynamic_axes=spec.dynamic_axes)
        ref = torch_outputs(mods[part], sample, names, outs)
        sess = ort_session(path, threads)
        feed = {n: sample[n] for n in names}
        got = dict(zip(outs, sess.run(outs, feed), strict=True))
        args = tuple(torch.from_numpy(sample[n]) for n in names)

        def run_torch(m=mods[part], a=args):
            with torch.inference_mode():
                m(*a)

        rows.append({
            "graph": spec.name, "exporter": info.exporter, "export_s": info.seconds,
            "params": sum(p.numel() for p in mods[part].parameters()),
            "torch_ms": _median_ms(run_torch, runs), "ort_ms": _median_ms(lambda s=sess, f=feed: s.run(None, f), runs),
            "max_abs": max(float(np.max(np.abs(ref[k] - got[k]))) for k in outs),
        })
    # Greedy loop, both sides, same photograph and prompt.
    s = get_spec(TINY).sample_inputs(1)[0]
    vlm = OnnxVLM(paths["vision"], paths["prefill"], paths["decode"], threads=threads)
    t_args = tuple(torch.from_numpy(s[k]) for k in ("image", "prefix_ids", "suffix_ids"))
    want = whole.generate(*t_args, max_new_tokens=tokens, eos_token_id=-1)
    got = vlm.generate(s["image"], s["prefix_ids"], s["suffix_ids"], max_new_tokens=tokens, eos_token_id=-1)
    gen = {
        "tokens": tokens, "identical": want == got,
        "torch_ms": _median_ms(lambda: whole.generate(*t_args, max_new_tokens=tokens, eos_token_id=-1), max(3, runs // 4), 1),
        "ort_ms": _median_ms(lambda: vlm.generate(s["image"], s["prefix_ids"], s["suffix_ids"], max_new_tokens=tokens, eos_token_id=-1), max(3, runs // 4), 1),
    }
    return rows, gen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch and ORT intra-op threads (same for both)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "models-tinygpt_v.md"))
    add_args(ap)
    a = ap.parse_args()
    with DocRun.from_args(a):
        run(a)


def run(a: argparse.Namespace) -> None:
    from rich.console import Console

    con = Console(stderr=True)
    with con.status("full model: count on the meta device"):
        counts, macs, paper = full_counts()
    with con.status("tiny model: export, ORT vs torch, greedy loop"):
        rows, gen = tiny_parts(a.runs, a.tokens, a.threads)

    m = 1e6
    lines = [
        f"--runs {a.runs}, --tokens {a.tokens}, --threads {a.threads} for both torch and ORT.", "",
        "## Full model: parameters per component (counted on the meta device)", "",
        "| component | params M (counted) | paper / official M |", "|---|---|---|",
        f"| EVA ViT-g/14 (39 blocks) + ln_vision | {counts['vision_encoder'] / m:.1f} | ~{paper['vision_encoder']:.0f} |",
        f"| Q-Former (no text branch) + 32 query tokens | {counts['qformer'] / m:.1f} | - |",
        f"| llama_proj + llama_proj2 | {counts['projections'] / m:.2f} | - |",
        f"| Phi-2 + QK LayerNorm + attention-output RMSNorm | {counts['llm'] / m:.1f} | {paper['phi2']:.0f} |",
        f"| LLM + projections (the paper's 2.8 B) | {counts['llm_plus_projections'] / m:.1f} | {paper['llm_plus_projections']:.0f} |",
        f"| total | {counts['total'] / m:.1f} | - |", "",
        f"MACs of the single graph (224x224 image, 3 + 32 + 12 prompt positions, first-token logits): {macs:.1f} G "
        "(FlopCounterMode; the paper gives none).", "",
        "## Tiny configuration: split graphs, ONNX Runtime vs torch (fp32, one sample, medians)", "",
        "| graph | exporter | params | export s | torch ms | ORT ms | max abs diff |", "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['graph']} | {r['exporter']} | {r['params']:,} | {r['export_s']:.1f} | {r['torch_ms']:.2f} | "
                     f"{r['ort_ms']:.2f} | {r['max_abs']:.2e} |")
    lines += [
        "", f"## Tiny configuration: greedy generation of {gen['tokens']} tokens (prefill + {gen['tokens'] - 1} decode steps)", "",
        "| loop | ms (median) | tokens/s | tokens identical to torch |", "|---|---|---|---|",
        f"| torch, KV cache | {gen['torch_ms']:.1f} | {gen['tokens'] / gen['torch_ms'] * 1e3:.0f} | - |",
        f"| numpy over ORT sessions (edgeopt.llm.OnnxVLM) | {gen['ort_ms']:.1f} | {gen['tokens'] / gen['ort_ms'] * 1e3:.0f} | "
        f"{'yes' if gen['identical'] else 'NO'} |", "",
    ]
    text = "\n".join(lines)
    print(text)
    write_block(a.out, "zoo-tinygpt-v", text, title="TinyGPT-V")


if __name__ == "__main__":
    main()
