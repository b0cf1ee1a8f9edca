"""ONNX Runtime's generative stack against edgeopt's own LLM export, on a random Phi-2-size model (issue 14 item 4).

    .venv/bin/python bench/llm_genai.py --small --no-write      # a quick check that every step works (~1 min)
    flock /tmp/edgeopt-bigmem.lock .venv/bin/python bench/llm_genai.py [--edgeopt-graphs /tmp/tgv_full]

Two sides, the same widths (Phi-2: hidden 2560, 32 layers, 32 heads, FFN 10240, vocab 51200, rotary 0.4 of
head 80; `--small`: hidden 320, 2 layers, 4 heads of 80), both int4 weight-only (MatMulNBits, block 32,
symmetric, accuracy level 4: the builder's CPU defaults and edgeopt's `quantize:int4` defaults), both on
ONNX Runtime's CPU provider with the same `--threads` (default 2):

- onnxruntime-genai: a random `transformers` PhiForCausalLM written with `save_pretrained` (fp16, seeded, built
  on the meta device, no download) -> `python -m onnxruntime_genai.models.builder -p int4 -e cpu` (one
  GroupQueryAttention graph, KV cache in a buffer of max_length) -> `onnxruntime_genai.Generator`.
- edgeopt: TinyGPT-V's LLM (edgeopt/models/_tinygpt_v_net.py: Phi-2 plus its QK LayerNorm and attention-output
  RMSNorm, seeded random weights) exported by edgeopt (`edgeopt.export.export_onnx`, then
  `quantize:int4`) as the split prefill and decode graphs, run by `edgeopt.llm.OnnxVLM`'s numpy greedy step
  (K/V in and out as numpy arrays). `--edgeopt-graphs DIR` uses graphs exported elsewhere (DIR/prefill.onnx,
  DIR/decode.onnx) instead; their export is then not timed by this run (DIR/export.json, if present, gives
  `export_s` and `peak_rss_gb`, else bench/llm_full.py's job records in DIR/work/; shown as read).

Measured: export wall time and peak RSS of the exporting process (os.wait4 on the child: each step runs in its own
process, so one side's memory never counts against the other's); model size on disk; session load time;
prefill tokens/s at prompt lengths `--prompts` (median of `--repeats`; edgeopt's prefill graph holds 32 image
tokens plus at least one token before and one after them, so a length below 34 is raised to 34 on both sides);
decode steps/s over `--new-tokens` greedy tokens after a `--decode-prompt`-token prompt (end of text is never
honoured: genai gets min_length = max_length, the numpy loop ignores EOS); peak RSS of each generating process.

`--only genai` or `--only edgeopt` runs one side. Writes its table to docs/llm.md (block `llm-genai`, under the
page's findings on what the builder can express) through bench/_doc.py, only for a full-size run of both sides
and only when the run ends clean (other processes used at most --max-foreign-share of the CPUs). `--small`
never writes. Memory: the full-size genai side holds the fp16 model (5.6 GB) while writing it and the builder
more; run it under `flock /tmp/edgeopt-bigmem.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _doc import DocRun, add_args, write_block  # noqa: E402

DOC = ROOT / "docs" / "llm.md"
BLOCK = "llm-genai"  # the block of docs/llm.md this script writes
SEED = 0
NUM_IMAGE_TOKENS = 32  # TinyGPT-V's Q-Former queries: the image tokens edgeopt's prefill graph takes

# Phi-2's widths (microsoft/phi-2 config.json). transformers' PhiConfig() defaults are phi-1's (hidden 2048,
# 24 layers, rotary 0.5), so every width is given here.
PHI2 = dict(vocab_size=51200, hidden_size=2560, intermediate_size=10240, num_hidden_layers=32, num_attention_heads=32,
            partial_rotary_factor=0.4, layer_norm_eps=1e-5, max_position_embeddings=2048, bos_token_id=50256,
            eos_token_id=50256)
# Small: the head stays 80 wide as Phi-2's (GroupQueryAttention's fused rotary wants rotary_dim / 2 a multiple of 8).
SMALL = {**PHI2, "hidden_size": 320, "intermediate_size": 1280, "num_hidden_layers": 2, "num_attention_heads": 4}


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def widths(small: bool) -> dict[str, Any]:
    return dict(SMALL if small else PHI2)


def _du(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


# -- child processes: each step in its own process, its wall time and peak RSS measured ---------------------
def run_measured(argv: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `argv` (output to `log`); its wall time, exit status and peak RSS (os.wait4's rusage of that child,
    which covers its own waited-for descendants). Raises with the log's tail when it fails."""
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{argv[:4]}... exited {p.returncode} after {wall:.0f} s; end of {log}:\n{tail}")
    return {"wall_s": wall, "peak_rss_gb": ru.ru_maxrss * 1024 / 2**30}  # ru_maxrss: KiB on Linux


def _phase(name: str, a: argparse.Namespace, work: Path, *extra: str) -> dict[str, Any]:
    """Run one `--phase` of this script in a child; returns its JSON result plus wall time and peak RSS."""
    out = work / f"{name}.json"
    argv = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--work", str(work),
            "--threads", str(a.threads), "--prompts", a.prompts, "--repeats", str(a.repeats),
            "--new-tokens", str(a.new_tokens), "--decode-prompt", str(a.decode_prompt), *(["--small"] if a.small else []), *extra]
    m = run_measured(argv, work / f"{name}.log")
    return {**json.loads(out.read_text()), **m}


# -- phase: the random Phi-2 in Hugging Face layout -------------------------------------------------------
def write_random_phi(folder: Path, small: bool, qk_layernorm: bool = False) -> dict[str, Any]:
    """A seeded random PhiForCausalLM (fp16, built on the meta device then filled in place, so its weights
    are allocated once) written with save_pretrained, plus a small BPE tokenizer (the builder reads one).
    `qk_layernorm`: transformers' per-head q/k LayerNorm (TinyGPT-V's), which the builder does not read."""
    import torch
    from transformers import PhiConfig, PhiForCausalLM, PreTrainedTokenizerFast

    from edgeopt.llm import EOS_TOKEN, train_tokenizer
    from edgeopt.models.tinygpt_v import CAPTIONS, PROMPTS

    cfg = PhiConfig(**widths(small), qk_layernorm=qk_layernorm)
    cfg.architectures = ["PhiForCausalLM"]
    with torch.device("meta"):
        model = PhiForCausalLM(cfg)
    model = model.to(torch.float16).to_empty(device="cpu")  # fp16 while still on meta: fp32 is never allocated
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * cfg.initializer_range)
            elif name.endswith("bias") and "layernorm" in name:  # non-zero, so that a dropped norm shows
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif name.endswith("bias"):
                p.zero_()
            else:  # LayerNorm weights
                p.fill_(1.0)
    model.save_pretrained(folder)
    tok = train_tokenizer([*CAPTIONS, *PROMPTS], vocab_size=512)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN).save_pretrained(folder)
    return {"params": sum(p.numel() for p in model.parameters()), "hf_bytes": _du(folder)}


def build_genai(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The builder as its own process (argv list, no shell): int4 for the CPU provider."""
    hf, out = work / "hf", work / "genai"
    argv = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out), "-p", "int4",
            "-e", "cpu", "-c", str(work / "genai_cache"), "--extra_options", "hf_token=false"]
    m = run_measured(argv, work / "builder.log")
    shutil.rmtree(work / "genai_cache", ignore_errors=True)
    return {**m, "bytes": sum(_du(p) for p in out.glob("model.onnx*"))}


# -- phase: onnxruntime-genai's generate loop ---------------------------------------------------------------
def prompt_lengths(spec: str) -> list[int]:
    """The prompt lengths both sides run: at least 32 image tokens + 1 before + 1 after (edgeopt's prefill graph)."""
    return [max(int(x), NUM_IMAGE_TOKENS + 2) for x in spec.split(",") if x.strip()]


def _ids(n: int, vocab: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, n)


def genai_phase(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    import onnxruntime_genai as og

    vocab = widths(a.small)["vocab_size"]
    t0 = time.perf_counter()
    cfg = og.Config(str(work / "genai"))
    cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": a.threads, "inter_op_num_threads": 1}}}}))
    model = og.Model(cfg)
    load_s = time.perf_counter() - t0

    def generator(length: int) -> Any:
        p = og.GeneratorParams(model)
        # min_length = max_length: end of text is never honoured, so every run makes all its tokens
        p.set_search_options(max_length=length, min_length=length, do_sample=False)
        return og.Generator(model, p)

    prefill = {}
    for n in prompt_lengths(a.prompts):
        ids = _ids(n, vocab, SEED + n).astype(np.int32)
        times = []
        for _ in range(a.repeats + 1):  # the first is a warm-up
            g = generator(n + 1)
            t = time.perf_counter()
            g.append_tokens(ids)  # runs the prompt through the model (logits of its last position)
            times.append(time.perf_counter() - t)
            del g
        prefill[n] = n / statistics.median(times[1:])
    n0 = prompt_lengths(str(a.decode_prompt))[0]
    g = generator(n0 + a.new_tokens)
    g.append_tokens(_ids(n0, vocab, SEED).astype(np.int32))
    made, t = 0, time.perf_counter()
    while not g.is_done():
        g.generate_next_token()  # the first picks from the prompt's logits; each later one runs one decode step
        made += 1
    dt = time.perf_counter() - t
    return {"load_s": load_s, "prefill_tps": prefill, "new_tokens": made, "decode_steps": made - 1,
            "decode_sps": (made - 1) / dt, "genai": og.__name__}


# -- phase: edgeopt's export and its numpy loop -------------------------------------------------------------
def _net_config(small: bool):
    """TinyGPT-V's config with the LLM at these widths (the vision side at the tiny widths: it is not exported)."""
    from edgeopt.models._tinygpt_v_net import TINY

    w = widths(small)
    return dataclasses.replace(
        TINY, llm_hidden=w["hidden_size"], llm_layers=w["num_hidden_layers"], llm_heads=w["num_attention_heads"],
        llm_ffn=w["intermediate_size"], vocab_size=w["vocab_size"], partial_rotary_factor=w["partial_rotary_factor"],
        eos_token_id=w["eos_token_id"])


def edgeopt_export_phase(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    """TinyGPT-V's LLM (seeded random weights) -> fp32 prefill.onnx and decode.onnx (int4: `edgeopt_int4_phase`)."""
    from edgeopt.export import export_onnx
    from edgeopt.models._tinygpt_v_net import PrefillPart, TinyGPTV, make_decode_part

    cfg = _net_config(a.small)
    full = TinyGPTV.build_seeded(cfg, SEED, components=["llama_model"])  # the LLM only: the vision tower is not exported here
    h, nl, nh = cfg.llm_hidden, cfg.llm_layers, cfg.llm_heads
    hd = h // nh
    rng = np.random.default_rng(SEED)
    pre_sample = {"image_embeds": rng.standard_normal((1, cfg.num_query_tokens, h)).astype(np.float32),
                  "prefix_ids": _ids(3, cfg.vocab_size, 1).reshape(1, -1), "suffix_ids": _ids(12, cfg.vocab_size, 2).reshape(1, -1)}
    past_names = [f"past.{i}.{t}" for i in range(nl) for t in ("key", "value")]
    kv = [f"present.{i}.{t}" for i in range(nl) for t in ("key", "value")]
    dec_sample = {"input_ids": np.array([[5]], np.int64),
                  **{n: rng.standard_normal((1, nh, 40, hd)).astype(np.float32) for n in past_names}}
    out, fp32 = work / "edgeopt", work / "edgeopt_fp32"
    out.mkdir(exist_ok=True)
    fp32.mkdir(exist_ok=True)
    res: dict[str, Any] = {}
    params = sum(p.numel() for p in full.llama_model.parameters())
    for part, module, sample, names, dyn in (
        ("prefill", PrefillPart(full).eval(), pre_sample, ["image_embeds", "prefix_ids", "suffix_ids"],
         {"prefix_ids": {1: "prefix_len"}, "suffix_ids": {1: "suffix_len"}}),
        ("decode", make_decode_part(full), dec_sample, ["input_ids", *past_names], {n: {2: "past_len"} for n in past_names}),
    ):
        t = time.perf_counter()
        info = export_onnx(module, sample, names, ["logits", *kv], fp32 / f"{part}.onnx", dynamic_axes=dyn)
        res[part] = {"export_s": time.perf_counter() - t, "exporter": info.exporter}
    return {"parts": res, "params": params}


def edgeopt_int4_phase(work: Path) -> dict[str, Any]:
    """The exported fp32 graphs -> int4 (MatMulNBits). A phase of its own (a fresh process): memory the export
    phase freed is not all given back to the system, and the 11 GB fp32 graph plus the quantizer's copies would
    not fit beside it on a 24 GB machine."""
    from edgeopt.passes._ort_quant import weight_int4
    from edgeopt.passes.quantize_config import QuantizeConfig

    out, fp32 = work / "edgeopt", work / "edgeopt_fp32"
    res: dict[str, Any] = {}
    for part in ("prefill", "decode"):
        t = time.perf_counter()
        res[part] = {**weight_int4(fp32 / f"{part}.onnx", out / f"{part}.onnx", QuantizeConfig(mode="int4")), "int4_s": time.perf_counter() - t}
    shutil.rmtree(fp32, ignore_errors=True)
    return {"parts": res}


class TextLoop:
    """edgeopt.llm.OnnxVLM's prefill and decode steps without its vision graph (the image tokens are given)."""

    def __init__(self, prefill: Path, decode: Path, threads: int) -> None:
        from edgeopt._ort import ort_session

        self.prefill = ort_session(prefill, threads)
        self.decode = ort_session(decode, threads)
        self._past_names = [i.name for i in self.decode.get_inputs() if i.name.startswith("past.")]
        self._dec_out = [o.name for o in self.decode.get_outputs()]
        self._pre_out = [o.name for o in self.prefill.get_outputs()]
        self.inputs = [i.name for i in self.prefill.get_inputs()]
        shape = {i.name: i.shape for i in self.prefill.get_inputs()}.get("image_embeds")
        self.image_tokens = shape[1] if shape and isinstance(shape[1], int) else NUM_IMAGE_TOKENS
        self.hidden = shape[2] if shape and isinstance(shape[2], int) else None

    def first(self, ids: np.ndarray, image: np.ndarray | None):
        """Prefill over `ids` (1-D): [ids[0], image tokens, ids[1:]] for TinyGPT-V's graph, else the ids alone."""
        from edgeopt.llm import OnnxVLM

        if "image_embeds" in self.inputs:
            return OnnxVLM.first_step(self, image, ids[None, :1].astype(np.int64), ids[None, 1:].astype(np.int64))
        outs = dict(zip(self._pre_out, self.prefill.run(self._pre_out, {"input_ids": ids[None].astype(np.int64)}), strict=True))
        return outs["logits"], {n.replace("present.", "past.", 1): v for n, v in outs.items() if n.startswith("present.")}

    def step(self, token: int, past: dict[str, np.ndarray]):
        from edgeopt.llm import OnnxVLM

        return OnnxVLM.step(self, token, past)


def edgeopt_phase(a: argparse.Namespace, work: Path, graphs: Path) -> dict[str, Any]:
    vocab = widths(a.small)["vocab_size"]
    t0 = time.perf_counter()
    loop = TextLoop(graphs / "prefill.onnx", graphs / "decode.onnx", a.threads)
    load_s = time.perf_counter() - t0
    image = None
    if "image_embeds" in loop.inputs:
        hidden = loop.hidden or widths(a.small)["hidden_size"]
        image = np.random.default_rng(SEED).standard_normal((1, loop.image_tokens, hidden)).astype(np.float32)
    text = (lambda n: n - loop.image_tokens) if image is not None else (lambda n: n)  # text ids of an n-token prompt
    prefill = {}
    for n in prompt_lengths(a.prompts):
        ids = _ids(text(n), vocab, SEED + n)
        times = []
        for _ in range(a.repeats + 1):
            t = time.perf_counter()
            loop.first(ids, image)
            times.append(time.perf_counter() - t)
        prefill[n] = n / statistics.median(times[1:])
    n0 = prompt_lengths(str(a.decode_prompt))[0]
    logits, past = loop.first(_ids(text(n0), vocab, SEED), image)
    tokens, t = [], time.perf_counter()
    for i in range(a.new_tokens):  # greedy; end of text ignored, as on the genai side
        tokens.append(int(np.argmax(logits[0])))
        if i + 1 < a.new_tokens:
            logits, past = loop.step(tokens[-1], past)
    dt = time.perf_counter() - t
    return {"load_s": load_s, "prefill_tps": prefill, "new_tokens": len(tokens), "decode_steps": len(tokens) - 1,
            "decode_sps": (len(tokens) - 1) / dt, "image_tokens": loop.image_tokens if image is not None else 0,
            "prefill_inputs": loop.inputs}


def external_export(graphs: Path) -> dict[str, Any]:
    """Export figures of graphs made elsewhere: DIR/export.json ({"export_s", "peak_rss_gb"}), or the job records
    bench/llm_full.py leaves in DIR/work/ (LLM build + both exports, then both int4 passes; torch reference runs
    left out). Empty when neither is there."""
    info = graphs / "export.json"
    if info.is_file():
        return json.loads(info.read_text())
    jobs = [graphs / "work" / f"{j}.json" for j in ("llm.torch", "prefill.int4", "decode.int4")]
    if not all(j.is_file() for j in jobs):
        return {}
    steps = [st for j in jobs for st in json.loads(j.read_text()).get("steps", [])
             if st["step"].startswith(("build", "prefill export", "decode export", "int4"))]
    if not steps:
        return {}
    return {"export_s": sum(st["seconds"] for st in steps), "peak_rss_gb": max(st["peak_rss_gb"] for st in steps),
            "source": "bench/llm_full.py records (" + ", ".join(st["step"] for st in steps) + ")"}


# -- the whole run ------------------------------------------------------------------------------------------
def run(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    import onnxruntime

    res: dict[str, Any] = {"widths": widths(a.small), "threads": a.threads, "onnxruntime": onnxruntime.__version__}
    try:
        import importlib.metadata as md

        res["onnxruntime_genai"] = md.version("onnxruntime-genai")
    except Exception:  # noqa: BLE001 - only a label
        res["onnxruntime_genai"] = "?"
    sides = set(a.only.split(","))
    if "genai" in sides:
        _say("writing the random Phi in Hugging Face layout (save_pretrained)")
        res["hf"] = _phase("write", a, work)
        _say(f"  {res['hf']['params'] / 1e9:.2f} B params, {_size(res['hf']['hf_bytes'])}, "
             f"{res['hf']['wall_s']:.0f} s, peak RSS {res['hf']['peak_rss_gb']:.2f} GiB")
        _say("onnxruntime-genai model builder: int4, cpu")
        res["builder"] = build_genai(a, work)
        _say(f"  {res['builder']['wall_s']:.0f} s, peak RSS {res['builder']['peak_rss_gb']:.2f} GiB, "
             f"{_size(res['builder']['bytes'])} on disk")
        shutil.rmtree(work / "hf", ignore_errors=True)
        _say("onnxruntime-genai: prefill and decode")
        res["genai"] = _phase("genai", a, work)
        _say(f"  decode {res['genai']['decode_sps']:.2f} steps/s, prefill {res['genai']['prefill_tps']}, "
             f"peak RSS {res['genai']['peak_rss_gb']:.2f} GiB")
        shutil.rmtree(work / "genai", ignore_errors=True)
    if "edgeopt" in sides:
        if a.edgeopt_graphs:
            graphs = Path(a.edgeopt_graphs)
            res["edgeopt_export"] = {"external": str(graphs), **external_export(graphs)}
            res["edgeopt_export"]["bytes"] = sum(_du(p) for p in graphs.iterdir() if p.name.startswith(("prefill.onnx", "decode.onnx")))
        else:
            _say("edgeopt: export TinyGPT-V's LLM (prefill + decode graphs), int4")
            graphs = work / "edgeopt"
            res["edgeopt_export"] = _phase("edgeopt-export", a, work)
            q = _phase("edgeopt-int4", a, work)
            for part, d in q["parts"].items():
                res["edgeopt_export"]["parts"][part].update(d)
            res["edgeopt_export"]["wall_s"] += q["wall_s"]
            res["edgeopt_export"]["peak_rss_gb"] = max(res["edgeopt_export"]["peak_rss_gb"], q["peak_rss_gb"])
            res["edgeopt_export"]["bytes"] = _du(graphs)
            _say(f"  {res['edgeopt_export']['wall_s']:.0f} s, peak RSS {res['edgeopt_export']['peak_rss_gb']:.2f} GiB")
        _say("edgeopt: prefill and decode (numpy loop over ORT sessions)")
        res["edgeopt"] = _phase("edgeopt", a, work, "--graphs", str(graphs))
        _say(f"  decode {res['edgeopt']['decode_sps']:.2f} steps/s, prefill {res['edgeopt']['prefill_tps']}, "
             f"peak RSS {res['edgeopt']['peak_rss_gb']:.2f} GiB")
    return res


def _f(v: Any, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def table_rows(res: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(row, genai, edgeopt) cells; "-" for a side that did not run."""
    g, e, b, hf, ex = (res.get(k) or {} for k in ("genai", "edgeopt", "builder", "hf", "edgeopt_export"))
    ext = "external" in ex

    def side(d: dict, text) -> str:
        return text() if d else "-"

    def eo_export(key: str, fmt: str) -> str:
        if not ex:
            return "-"
        if ext:
            src = "bench/llm_full.py's records" if "source" in ex else "export.json"
            return f"{fmt.format(ex[key])} (read from {src})" if key in ex else "not measured here (--edgeopt-graphs)"
        return fmt.format(ex["wall_s" if key == "export_s" else key])

    rows = [
        ("export: wall s", side(b, lambda: f"{b['wall_s']:.0f} (builder) + {hf['wall_s']:.0f} (save_pretrained)"),
         eo_export("export_s", "{:.0f}")),
        ("export: peak RSS GiB", side(b, lambda: f"{b['peak_rss_gb']:.1f} (builder); {hf['peak_rss_gb']:.1f} (save_pretrained)"),
         eo_export("peak_rss_gb", "{:.1f}")),
        ("model on disk", side(b, lambda: f"{_size(b['bytes'])} (one graph)"),
         side(ex, lambda: f"{_size(ex['bytes'])} (prefill + decode graphs)")),
        ("session load s", side(g, lambda: f"{g['load_s']:.1f}"), side(e, lambda: f"{e['load_s']:.1f}")),
    ]
    for n in sorted({*g.get("prefill_tps", {}), *e.get("prefill_tps", {})}, key=int):
        rows.append((f"prefill tokens/s, {n}-token prompt", _f(g.get("prefill_tps", {}).get(n)), _f(e.get("prefill_tps", {}).get(n))))
    steps = g.get("new_tokens") or e.get("new_tokens")
    rows += [
        (f"decode steps/s ({steps} new tokens)", _f(g.get("decode_sps"), "{:.2f}"), _f(e.get("decode_sps"), "{:.2f}")),
        ("generation peak RSS GiB", _f(g.get("peak_rss_gb"), "{:.2f}"), _f(e.get("peak_rss_gb"), "{:.2f}")),
    ]
    return rows


def _params(res: dict[str, Any]) -> int:
    return (res.get("hf") or res.get("edgeopt_export") or {}).get("params") or 0


def render(a: argparse.Namespace, res: dict[str, Any], rows: list[tuple[str, str, str]]) -> str:
    w = res["widths"]
    lines = [
        f"Random Phi-2-size model ({_params(res) / 1e9:.2f} B params: hidden {w['hidden_size']}, "
        f"{w['num_hidden_layers']} layers, {w['num_attention_heads']} heads, FFN {w['intermediate_size']}, "
        f"vocab {w['vocab_size']}), int4 (MatMulNBits, block 32, accuracy level 4) on both sides; ONNX Runtime "
        f"{res['onnxruntime']} CPU, onnxruntime-genai {res['onnxruntime_genai']}, {a.threads} intra-op threads. "
        f"Prefill: median of {a.repeats} runs after one warm-up (edgeopt's prompt is 32 image tokens + text); decode: "
        f"{a.new_tokens} greedy tokens after a {prompt_lengths(str(a.decode_prompt))[0]}-token prompt, end of text ignored.", "",
        "| | onnxruntime-genai (model builder + Generator) | edgeopt (export + quantize:int4 + numpy loop) |",
        "|---|---|---|",
        *[f"| {r[0]} | {r[1]} | {r[2]} |" for r in rows],
    ]
    return "\n".join(lines) + "\n"


def print_table(rows: list[tuple[str, str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="onnxruntime-genai vs edgeopt (random Phi-2-size, int4, CPU)")
    for c in ("", "onnxruntime-genai", "edgeopt"):
        t.add_column(c)
    for r in rows:
        t.add_row(*r)
    Console().print(t)


def child(a: argparse.Namespace) -> None:
    work = Path(a.work)
    if a.phase == "write":
        res = write_random_phi(work / "hf", a.small)
    elif a.phase == "genai":
        res = genai_phase(a, work)
    elif a.phase == "edgeopt-export":
        res = edgeopt_export_phase(a, work)
    elif a.phase == "edgeopt-int4":
        res = edgeopt_int4_phase(work)
    else:
        res = edgeopt_phase(a, work, Path(a.graphs))
    (work / f"{a.phase}.json").write_text(json.dumps(res, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="hidden 320, 2 layers: checks the script in about a minute (never writes docs)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads, both sides")
    ap.add_argument("--prompts", default="32,128,512", help="prompt lengths for prefill (raised to 34 at least)")
    ap.add_argument("--repeats", type=int, default=3, help="timed prefill runs per length (after one warm-up)")
    ap.add_argument("--new-tokens", type=int, default=128, help="greedy tokens generated for the decode rate")
    ap.add_argument("--decode-prompt", type=int, default=32, help="prompt length before decoding")
    ap.add_argument("--only", default="genai,edgeopt", help="the sides to run (docs are written only when both run)")
    ap.add_argument("--edgeopt-graphs", help="a folder with edgeopt's prefill.onnx and decode.onnx (int4) to use instead of exporting")
    ap.add_argument("--work", help="work folder (default: a temporary one, removed at the end)")
    ap.add_argument("--json", help="also save the raw results here")
    ap.add_argument("--out", default=str(DOC), help="the page the table goes into (block llm-genai)")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument("--phase", choices=("write", "genai", "edgeopt-export", "edgeopt-int4", "edgeopt"), help=argparse.SUPPRESS)
    ap.add_argument("--graphs", help=argparse.SUPPRESS)
    add_args(ap)
    a = ap.parse_args(argv)
    if a.phase:
        child(a)
        return 0
    tmp = None
    if a.work:
        work = Path(a.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-llm-genai-")
        work = Path(tmp.name)
    try:
        with DocRun.from_args(a):
            t0 = time.perf_counter()
            res = run(a, work)
            res["total_s"] = time.perf_counter() - t0
            rows = table_rows(res)
            print_table(rows)
            if a.json:
                Path(a.json).write_text(json.dumps(res, indent=1))
            body = render(a, res, rows)
            print(body)
            if not (a.small or a.no_write) and {"genai", "edgeopt"} <= set(a.only.split(",")):
                write_block(Path(a.out), BLOCK, body, title="Language models: export and generation")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
