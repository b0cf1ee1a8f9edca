"""TinyGPT-V at full size (issue 14 item 1): the three split graphs exported with random weights within the
memory of a 24 GiB machine, their weight-only int4 / int8 variants, and a greedy run of the int4 graphs.

    flock /tmp/edgeopt-bigmem.lock .venv/bin/python bench/llm_full.py [--out /tmp/tgv_full] [--samples 2]
        [--tokens 8] [--max-rss-gb 19] [--keep-fp32] [--only vision.torch,vision.parity,...]

Each job runs in its own child process (`--job NAME`), one after the other, so memory freed by one job is
returned to the system before the next starts and a job's peak is its own:

- `vision.torch`: build the vision part (EVA ViT-g + ln_vision + Q-Former + projections, 1.1 B fp32: only
  that part is allocated), torch reference outputs on the samples, `export_onnx` to OUT/vision.onnx (external
  data), then free the module (del + gc).
- `llm.torch`: build the LLM part once (Phi-2, 2.78 B fp32, 11.1 GB), prefill references on the vision
  job's image tokens, the KV caches they give as decode samples, decode references, export both graphs to
  OUT/fp32/ (fp32 fits: the dynamo exporter writes the weights without copying them), then free it.
- `NAME.parity`: ONNX Runtime on the fp32 graph (a session without weight prepacking, so the 11 GB of
  weights are not held twice) against the torch references, `edgeopt.export.check_parity`.
- `prefill.int4`, `decode.int4`: `edgeopt.passes._ort_quant.weight_int4` (MatMulNBits, block 32, symmetric,
  accuracy level 4) -> OUT/prefill.onnx, OUT/decode.onnx; then their outputs against torch (cosine,
  next-token agreement).
- `generate`: `edgeopt.llm.OnnxVLM(vision, prefill, decode, threads=2).generate(...)` on the int4 graphs.
- `prefill.int8`, `decode.int8`, `vision.int8`: `dynamic_int8` (`quantize:dynamic`; graphs with external data are
  quantized MatMul by MatMul, one weight in memory at a time) -> OUT/int8/;
  `vision.fp16`: `to_fp16` -> OUT/fp16/.

Memory: the parent samples each child's resident set (itself and its children, psutil every 0.2 s) and
kills a job that passes --max-rss-gb; each child also samples its own RSS per step (a thread, every 0.1 s)
and reports its `ru_maxrss`. The table gives both. OUT/README says what each file is; OUT/READY is touched
once the three main graphs (vision fp32, prefill/decode int4) are written and checked.
"""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GB = 1e9
JOBS = ("vision.torch", "vision.parity", "llm.torch", "prefill.parity", "decode.parity", "prefill.int4",
        "decode.int4", "generate", "prefill.int8", "decode.int8", "vision.fp16", "vision.int8")
NAMES = {"full": "tinygpt_v", "tiny": "tinygpt_v_tiny"}


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- in the child: per-step records -------------------------------------------------------------------------
class RssSampler:
    """This process's resident set, sampled every `interval` seconds by a daemon thread; `peak` since `reset`."""

    def __init__(self, interval: float = 0.1) -> None:
        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._interval = interval
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self._interval)

    def reset(self) -> None:
        self.peak = self._proc.memory_info().rss


class Steps:
    """Times each step of a job and keeps its sampled peak RSS; written as JSON for the parent."""

    def __init__(self) -> None:
        self.sampler = RssSampler()
        self.records: list[dict[str, Any]] = []

    def run(self, name: str, fn: Callable[[], Any], note: str = "") -> Any:
        _say(f"  {name} ...")
        self.sampler.reset()
        t0 = time.perf_counter()
        out = fn()
        rec = {"step": name, "seconds": time.perf_counter() - t0, "peak_rss_gb": self.sampler.peak / GB, "note": note}
        self.records.append(rec)
        _say(f"  {name}: {rec['seconds']:.1f} s, peak RSS {rec['peak_rss_gb']:.2f} GB {note}")
        return out

    def note(self, text: str) -> None:
        self.records[-1]["note"] = (self.records[-1]["note"] + " " + text).strip()


def _spec_io(variant: str, part: str) -> tuple[list[str], list[str], dict[str, dict[int, str]] | None]:
    from edgeopt.models import get_spec

    spec = get_spec(f"{NAMES[variant]}_{part}")
    return [i.name for i in spec.inputs], list(spec.outputs), spec.dynamic_axes


def _save(path: Path, obj: Any) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _load(path: Path) -> Any:
    with open(path, "rb") as f:
        return pickle.load(f)  # noqa: S301 - our own file, written by the job before


def _free(*names: str, scope: dict) -> None:
    for n in names:
        scope.pop(n, None)
    gc.collect()


def job_vision_torch(out: Path, work: Path, st: Steps, a: argparse.Namespace) -> None:
    from edgeopt.export import export_onnx, torch_outputs
    from edgeopt.models.tinygpt_v import _vision_samples, build_tinygpt_v

    ins, outs, dyn = _spec_io(a.variant, "vision")
    samples = _vision_samples(a.variant, a.samples)
    box: dict[str, Any] = {}
    box["m"] = st.run("build (fp32, vision part only)", lambda: build_tinygpt_v(a.variant, "vision"))
    st.note(f"{sum(p.numel() for p in box['m'].parameters()) / 1e6:.1f} M params")
    refs = st.run("torch reference", lambda: [torch_outputs(box["m"], s, ins, outs) for s in samples])
    _save(work / "vision.refs.pkl", {"samples": samples, "refs": refs})
    info = st.run("export fp32", lambda: export_onnx(box["m"], samples[0], ins, outs, out / "vision.onnx", dynamic_axes=dyn))
    st.note(f"{info.exporter}, external data {info.external_data}")
    st.run("free torch module", lambda: _free("m", scope=box))


def job_llm_torch(out: Path, work: Path, st: Steps, a: argparse.Namespace) -> None:
    import torch

    from edgeopt.export import export_onnx, torch_outputs
    from edgeopt.models._tinygpt_v_net import make_decode_part
    from edgeopt.models.tinygpt_v import _text_samples, build_tinygpt_v

    vis = _load(work / "vision.refs.pkl")
    texts = _text_samples(a.variant, a.samples)
    pre_samples = [{"image_embeds": r["image_embeds"], "prefix_ids": t["prefix_ids"], "suffix_ids": t["suffix_ids"]}
                   for r, t in zip(vis["refs"], texts, strict=True)]
    (out / "fp32").mkdir(exist_ok=True)
    box: dict[str, Any] = {}
    box["m"] = st.run("build (fp32, LLM part only)", lambda: build_tinygpt_v(a.variant, "prefill"))
    st.note(f"{sum(p.numel() for p in box['m'].parameters()) / 1e6:.1f} M params")
    ins, outs, dyn = _spec_io(a.variant, "prefill")
    pre_refs = st.run("prefill torch reference", lambda: [torch_outputs(box["m"], s, ins, outs) for s in pre_samples])
    dec_samples = [{"input_ids": r["logits"].argmax(-1)[:, None].astype(np.int64),
                    **{k.replace("present.", "past.", 1): v for k, v in r.items() if k.startswith("present.")}}
                   for r in pre_refs]
    _save(work / "prefill.refs.pkl", {"samples": pre_samples, "refs": pre_refs})
    info = st.run("prefill export fp32", lambda: export_onnx(box["m"], pre_samples[0], ins, outs, out / "fp32" / "prefill.onnx", dynamic_axes=dyn))
    st.note(f"{info.exporter}, external data {info.external_data}")
    box["d"] = make_decode_part(box["m"].full).eval()
    ins, outs, dyn = _spec_io(a.variant, "decode")
    dec_refs = st.run("decode torch reference", lambda: [torch_outputs(box["d"], s, ins, outs) for s in dec_samples])
    _save(work / "decode.refs.pkl", {"samples": dec_samples, "refs": dec_refs})
    info = st.run("decode export fp32", lambda: export_onnx(box["d"], dec_samples[0], ins, outs, out / "fp32" / "decode.onnx", dynamic_axes=dyn))
    st.note(f"{info.exporter}, external data {info.external_data}")
    # the torch greedy tokens for the generate job to compare with
    with torch.inference_mode():
        s = pre_samples[0]
        logits, past = box["m"].full.prefill(torch.from_numpy(s["image_embeds"]), torch.from_numpy(s["prefix_ids"]),
                                             torch.from_numpy(s["suffix_ids"]))
        tokens: list[int] = []
        for _ in range(a.tokens):
            tokens.append(int(logits[0].argmax()))
            logits, past = box["m"].full.decode_step(torch.tensor([[tokens[-1]]]), past)
    _save(work / "torch_tokens.pkl", tokens)
    st.run("free torch module", lambda: _free("m", "d", scope=box))


def _session(path: Path, threads: int = 2):
    """A CPU session that does not prepack weights (prepacking keeps a second copy of every MatMul weight)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run_graph(path: Path, samples: list[dict[str, np.ndarray]], st: Steps) -> list[dict[str, np.ndarray]]:
    box: dict[str, Any] = {}
    box["s"] = st.run(f"ORT session {path.parent.name}/{path.name}", lambda: _session(path))
    names = [o.name for o in box["s"].get_outputs()]
    ins = [i.name for i in box["s"].get_inputs()]
    outs = st.run("ORT run", lambda: [dict(zip(names, box["s"].run(names, {n: x[n] for n in ins}), strict=True)) for x in samples])
    _free("s", scope=box)
    return outs


def job_parity(part: str, path: Path, work: Path, st: Steps) -> None:
    from edgeopt.export import check_parity

    d = _load(work / f"{part}.refs.pkl")
    outs = _run_graph(path, d["samples"], st)
    m = check_parity(path, d["refs"], d["samples"], outs=outs)
    st.note(f"parity cosine {m['cosine']:.6f}, rel max abs {m['rel_max_abs']:.1e}")


def _fidelity(part: str, path: Path, work: Path, st: Steps) -> None:
    from edgeopt.fidelity import output_metrics, task_metrics

    d = _load(work / f"{part}.refs.pkl")
    outs = _run_graph(path, d["samples"], st)
    m = output_metrics(d["refs"], outs)
    text = f"cosine vs torch {m['cosine']:.5f}"
    if "logits" in outs[0]:
        t = task_metrics("language_model", [{"logits": r["logits"]} for r in d["refs"]], [{"logits": o["logits"]} for o in outs])
        text += f", next-token agreement {t['next_token_agreement']:.2f}"
    st.note(text)


def _quant(st: Steps, name: str, fn: Callable[[], Any]) -> bool:
    """Run an edgeopt quantization helper; on failure keep its exact error in the step's note."""
    try:
        st.run(name, fn)
        return True
    except Exception as e:  # noqa: BLE001 - reported, the job goes on with what it can
        msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
        st.records.append({"step": name, "seconds": float("nan"), "peak_rss_gb": st.sampler.peak / GB, "note": f"FAILED {msg}"})
        _say(f"  {name} FAILED: {msg}")
        return False


def job_int4(part: str, out: Path, work: Path, st: Steps) -> None:
    from edgeopt.passes._ort_quant import weight_int4
    from edgeopt.passes.quantize_config import QuantizeConfig

    src, dst = out / "fp32" / f"{part}.onnx", out / f"{part}.onnx"
    if not _quant(st, "int4 (weight_int4)", lambda: weight_int4(src, dst, QuantizeConfig())):
        raise SystemExit(2)
    _fidelity(part, dst, work, st)


def job_int8(part: str, out: Path, work: Path, st: Steps) -> None:
    from edgeopt.passes._ort_quant import dynamic_int8
    from edgeopt.passes.quantize_config import QuantizeConfig

    src = out / ("vision.onnx" if part == "vision" else f"fp32/{part}.onnx")
    (out / "int8").mkdir(exist_ok=True)
    dst = out / "int8" / f"{part}.onnx"
    info: dict[str, Any] = {}
    if _quant(st, "int8 dynamic (dynamic_int8)", lambda: info.update(dynamic_int8(src, dst, QuantizeConfig(mode="dynamic")))):
        if "dynamic_quantize_matmul" in info:  # the streamed path (graphs with external data)
            st.note(f"{info['method']}: {info['dynamic_quantize_matmul']} MatMul -> DynamicQuantizeMatMul, "
                    f"{info['matmul_left_float']} MatMul and {info['gemm_left_float']} Gemm left float")
        else:
            st.note(info["method"])
        _fidelity(part, dst, work, st)


def job_fp16(out: Path, work: Path, st: Steps) -> None:
    from edgeopt.passes._ort_quant import to_fp16
    from edgeopt.passes.quantize_config import QuantizeConfig

    (out / "fp16").mkdir(exist_ok=True)
    dst = out / "fp16" / "vision.onnx"
    if _quant(st, "fp16 (to_fp16)", lambda: to_fp16(out / "vision.onnx", dst, QuantizeConfig())):
        _fidelity("vision", dst, work, st)


def job_generate(out: Path, work: Path, st: Steps, a: argparse.Namespace) -> None:
    from edgeopt.llm import OnnxVLM
    from edgeopt.models.tinygpt_v import _text_samples

    s = _text_samples(a.variant, 1)[0]
    vlm = st.run("OnnxVLM load (vision fp32, prefill/decode int4)",
                 lambda: OnnxVLM(out / "vision.onnx", out / "prefill.onnx", out / "decode.onnx", threads=2))
    tokens = st.run(f"generate {a.tokens} tokens", lambda: vlm.generate(s["image"], s["prefix_ids"], s["suffix_ids"],
                                                                       max_new_tokens=a.tokens, eos_token_id=-1))
    want = _load(work / "torch_tokens.pkl") if (work / "torch_tokens.pkl").is_file() else None
    st.note(f"tokens {tokens}; torch fp32 {want}")
    _save(work / "onnx_tokens.pkl", tokens)


def run_job(name: str, a: argparse.Namespace) -> None:
    import logging

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)  # one INFO line per graph node
    out, work = Path(a.out), Path(a.out) / "work"
    st = Steps()
    part, _, kind = name.partition(".")
    try:
        if name == "vision.torch":
            job_vision_torch(out, work, st, a)
        elif name == "llm.torch":
            job_llm_torch(out, work, st, a)
        elif kind == "parity":
            job_parity(part, out / ("vision.onnx" if part == "vision" else f"fp32/{part}.onnx"), work, st)
        elif kind == "int4":
            job_int4(part, out, work, st)
        elif kind == "int8":
            job_int8(part, out, work, st)
        elif name == "vision.fp16":
            job_fp16(out, work, st)
        elif name == "generate":
            job_generate(out, work, st, a)
    finally:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB
        (work / f"{name}.json").write_text(json.dumps({"steps": st.records, "ru_maxrss_gb": maxrss}))


# -- in the parent: one child per job -------------------------------------------------------------------------
def _tree_rss(proc) -> int:
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def spawn(name: str, a: argparse.Namespace) -> dict[str, Any]:
    """Run one job in a child process; sample its RSS, kill it above --max-rss-gb."""
    import psutil

    work = Path(a.out) / "work"
    (work / f"{name}.json").unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--job", name, "--out", a.out, "--samples", str(a.samples), "--tokens", str(a.tokens),
           "--variant", a.variant]
    _say(f"job {name}")
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd)
    proc, peak, killed = psutil.Process(child.pid), 0, False
    while child.poll() is None:
        rss = _tree_rss(proc)
        peak = max(peak, rss)
        if rss > a.max_rss_gb * GB:
            killed = True
            child.kill()
        time.sleep(0.2)
    res = {"job": name, "rc": child.returncode, "seconds": time.perf_counter() - t0, "peak_rss_gb": peak / GB,
           "killed": killed, "steps": [], "ru_maxrss_gb": float("nan")}
    f = work / f"{name}.json"
    if f.is_file():
        res.update(json.loads(f.read_text()))
    if killed:
        res["steps"].append({"step": "KILLED", "seconds": res["seconds"], "peak_rss_gb": peak / GB,
                             "note": f"resident set passed {a.max_rss_gb} GB"})
    return res


def _onnx_files(out: Path) -> list[tuple[str, float]]:
    return [(str(p.relative_to(out)), p.stat().st_size / GB) for p in sorted(out.rglob("*.onnx*")) if "work" not in p.parts]


def write_readme(out: Path, variant: str, final: bool) -> None:
    """OUT/README: each file, its inputs/outputs, how to run it."""
    from edgeopt.models import get_spec

    spec = get_spec(NAMES[variant])
    cfg = spec.extras["config"]
    lines = [
        f"TinyGPT-V ({variant} size), random weights (seeded: edgeopt.models.tinygpt_v.build_tinygpt_v({variant!r}, part, seed=0)),",
        "written by bench/llm_full.py. Each X.onnx keeps its weights in X.onnx.data beside it (ONNX external data): keep",
        "the pair together and open the .onnx by path.",
        "",
        "vision.onnx        fp32. EVA ViT-g/14 (39 blocks) + ln_vision + Q-Former (32 queries) + llama_proj/llama_proj2.",
        f"                   in:  image float32 [1, 3, {cfg['img_size']}, {cfg['img_size']}] (BLIP-2 normalised: mean {spec.extras['mean']}, std {spec.extras['std']})",
        f"                   out: image_embeds float32 [1, 32, {cfg['llm_hidden']}]",
        "prefill.onnx       Phi-2 (TinyGPT-V's QK LayerNorm + attention-output RMSNorm), weight-only int4: ONNX Runtime",
        "                   MatMulNBits (block 32, symmetric, accuracy_level 4) on every linear incl. lm_head; the",
        "                   token embedding (Gather) stays fp32.",
        f"                   in:  image_embeds float32 [1, 32, {cfg['llm_hidden']}], prefix_ids int64 [1, prefix_len], suffix_ids int64 [1, suffix_len]",
        f"                   out: logits float32 [1, {cfg['vocab_size']}] (last position), present.{{i}}.key / present.{{i}}.value float32",
        f"                        [1, {cfg['llm_heads']}, prefix_len + 32 + suffix_len, {cfg['llm_hidden'] // cfg['llm_heads']}] for i in 0..{cfg['llm_layers'] - 1}",
        "decode.onnx        one decode step, same LLM weights, int4 as prefill.onnx.",
        f"                   in:  input_ids int64 [1, 1], past.{{i}}.key / past.{{i}}.value float32 [1, {cfg['llm_heads']}, past_len, {cfg['llm_hidden'] // cfg['llm_heads']}]",
        "                   out: logits float32 [1, vocab], present.{i}.key / present.{i}.value [.., past_len + 1, ..]",
        "int8/X.onnx        dynamic int8 (quantize:dynamic: int8 weights per channel, activations quantized at run time)",
        "                   of the same graphs; same inputs and outputs. Graphs with external data (all of them at full",
        "                   size): every MatMul weight int8 per column (symmetric) in com.microsoft DynamicQuantizeMatMul",
        "                   nodes, written one tensor at a time (dynamic_int8_streamed); other ops stay fp32.",
        "fp16/vision.onnx   the vision graph in float16 (fp32 inputs and outputs, casts inside).",
        "fp32/              the fp32 LLM graphs, when the run kept them (--keep-fp32).",
        "work/              the samples and torch references the checks used (pickles), per-job JSON records.",
        "",
        "The prompt: token ids of '[INST] <Img>' (prefix) and '</Img> {question} [/INST]' (suffix) from",
        "edgeopt.models.tinygpt_v.sample_tokenizer(512) (random weights: any ids < 51200 work). Sample inputs:",
        f"edgeopt.models.tinygpt_v._text_samples({variant!r}, n) (image, prefix_ids, suffix_ids); EOS id {cfg['eos_token_id']}.",
        "",
        "Run (greedy, batch 1):",
        "    from edgeopt.llm import OnnxVLM",
        "    vlm = OnnxVLM('vision.onnx', 'prefill.onnx', 'decode.onnx', threads=2)",
        "    tokens = vlm.generate(image, prefix_ids, suffix_ids, max_new_tokens=8, eos_token_id=-1)",
        "or by hand: image_embeds = vision(image); logits, present.* = prefill(image_embeds, prefix_ids, suffix_ids);",
        "then repeat: token = argmax(logits); logits, present.* = decode(input_ids=[[token]], past.* = present.*).",
        "",
        "Files now:" if final else "Files now (the int8/ and fp16/ variants are still being written; README is rewritten and DONE",
    ]
    if not final:
        lines.append("is touched when they are):")
    lines += [f"    {n:40s} {s:7.2f} GB" for n, s in _onnx_files(out)]
    lines += ["", "Random weights give near-flat logits, so int4 rounding can change greedy tokens after the first one;",
              "the fp32 graphs match torch (cosine 1.000000 in the parity jobs)."]
    tok = out / "work" / "onnx_tokens.pkl"
    if tok.is_file():
        lines += ["", f"Greedy tokens of the int4 graphs on sample 0 ({PROMPT0!r}): {_load(tok)}"]
        ttok = out / "work" / "torch_tokens.pkl"
        if ttok.is_file():
            lines.append(f"torch fp32 tokens of the same prompt:                  {_load(ttok)}")
    lines += ["", "Per-job figures (wall time, peak RSS under load, fidelity notes): see the table bench/llm_full.py printed,",
              "also in work/*.json."]
    (out / "README").write_text("\n".join(lines) + "\n")


PROMPT0 = "Describe this image in detail."


def table(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="TinyGPT-V full size: export and quantization (peak RSS under load)")
    for c in ("job", "step", "s", "peak RSS GB", "note"):
        t.add_column(c, justify="right" if c in ("s", "peak RSS GB") else "left", overflow="fold")
    for r in results:
        head = (f"[bold]{r['job']}[/bold]", f"whole job (rc {r['rc']}, child ru_maxrss {r['ru_maxrss_gb']:.2f} GB)",
                f"{r['seconds']:.0f}", f"{r['peak_rss_gb']:.2f}", "parent-sampled tree RSS")
        t.add_row(*head)
        for s in r["steps"]:
            t.add_row("", s["step"], f"{s['seconds']:.1f}", f"{s['peak_rss_gb']:.2f}", s["note"])
    Console(width=200).print(t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/tgv_full")
    ap.add_argument("--variant", choices=sorted(NAMES), default="full", help="tiny: the same jobs at test size (minutes)")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--max-rss-gb", type=float, default=19.0)
    ap.add_argument("--keep-fp32", action="store_true", help="keep OUT/fp32/ (22 GB) after the int4/int8 graphs are made")
    ap.add_argument("--only", default="", help="comma-separated jobs to run (default: all, in order)")
    ap.add_argument("--job", help=argparse.SUPPRESS)
    a = ap.parse_args()
    out = Path(a.out)
    (out / "work").mkdir(parents=True, exist_ok=True)
    if a.job:
        run_job(a.job, a)
        return 0
    jobs = [j for j in a.only.split(",") if j] or list(JOBS)
    unknown = [j for j in jobs if j not in JOBS]
    if unknown:
        ap.error(f"unknown jobs {unknown}; known: {', '.join(JOBS)}")
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for j in jobs:
        results.append(spawn(j, a))
        (out / "work" / "results.json").write_text(json.dumps(results, indent=1))
        if results[-1]["rc"] != 0 and j in ("vision.torch", "llm.torch"):
            _say(f"{j} failed: the jobs that need its files cannot run")
            break
        main3 = all((out / f).is_file() for f in ("vision.onnx", "prefill.onnx", "decode.onnx"))
        if j == "generate" and main3:
            write_readme(out, a.variant, final=False)
            (out / "READY").touch()
            _say(f"{out}/READY touched")
    llm_ok = all(r["rc"] == 0 for r in results if r["job"].startswith(("llm.", "prefill.", "decode.")))
    if not a.keep_fp32 and llm_ok and "decode.int8" in jobs:
        shutil.rmtree(out / "fp32", ignore_errors=True)  # 22 GB at full size; the rerun of an LLM job needs it
    write_readme(out, a.variant, final=True)
    (out / "DONE").touch()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / GB
    table(results)
    _say(f"all jobs: {time.perf_counter() - t0:.0f} s; largest child ru_maxrss {children:.2f} GB; "
         f"parent ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
