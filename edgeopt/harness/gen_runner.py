"""Device side: MELT's figures of a generative bundle (load, time to first token, prefill and decode
throughput, sustained generation), measured with the bundle's backend's generator (`Backend.load_generator`).

Run by `edgeopt.runner` when the bundle's manifest has a `generation` block. numpy + the runtime only.

What is timed (all batch 1, greedy):
- load: creating the generator's sessions (every graph);
- check: the reference prompt's first `check_tokens` greedy tokens against the host's (outputs_match);
- vision and prefill on the reference prompt, each alone, and together as the time to first token;
- prefill at MELT's prompt lengths (PREFILL_LENGTHS tokens of text after the image): positions/s;
- decode: generations of `new_tokens` tokens from the reference prompt (end-of-sequence ignored), repeated
  until the protocol's run count and duration are met; each step's latency is one run, so the result's
  latency is per decoded token; other processes' share of the cores is taken around these generations only;
- sustained: `protocol.sustained` more generations back to back, each's tokens/s, time to first token and
  the hottest thermal sensor readable here.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any

import numpy as np

from edgeopt._loop import peak_rss_mb
from edgeopt.contention import Census, contamination, sample
from edgeopt.harness.thermal import ThermalReader
from edgeopt.measurement import Generation, Measurement, MeasureRequest, summarize

PREFILL_LENGTHS = (32, 128, 512)  # MELT's prompt lengths (tokens of text)
PREFILL_REPEATS = 3  # median of this many prefills per length
DRIFT_THROTTLED = -0.10  # a sustained run whose tokens/s fell more than 10 % counts as throttled


def _median_ms(fn, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times)), out


def _tiled(ids: np.ndarray, n: int) -> np.ndarray:
    """`n` token ids made by repeating `ids` (a synthetic prompt of that length)."""
    flat = ids.reshape(-1)
    reps = -(-n // max(1, flat.size))
    return np.tile(flat, reps)[:n].reshape(1, n).astype(np.int64)


def _generate_timed(gen, embeds: np.ndarray, prefix: np.ndarray, suffix: np.ndarray, n: int) -> tuple[float, list[float], list[int]]:
    """(prefill ms, per-step decode ms, tokens) of one greedy generation of `n` tokens."""
    t0 = time.perf_counter()
    logits, past = gen.first_step(embeds, prefix, suffix)
    prefill_ms = (time.perf_counter() - t0) * 1e3
    steps, tokens = [], []
    for i in range(n):
        tok = int(np.argmax(logits[0]))
        tokens.append(tok)
        if i + 1 == n:
            break
        t0 = time.perf_counter()
        logits, past = gen.step(tok, past)
        steps.append((time.perf_counter() - t0) * 1e3)
    return prefill_ms, steps, tokens


def run(bundle, request: MeasureRequest) -> Measurement:
    """Measure a loaded (verified) generative bundle on this machine."""
    from edgeopt.runtimes.base import get_backend

    p = request.protocol
    m = bundle.manifest
    g = m.generation
    backend = get_backend(m.backend)
    t0 = time.perf_counter()
    gen = backend.load_generator(bundle.path, m, threads=p.threads)
    load_ms = (time.perf_counter() - t0) * 1e3

    ref = bundle.reference_inputs()
    image, prefix, suffix = ref["image"], ref["prefix_ids"], ref["suffix_ids"]
    k = g.check_tokens
    got = gen.generate(image, prefix, suffix, max_new_tokens=k)
    matched = next((i for i, (a, b) in enumerate(zip(got, g.tokens[:k], strict=False)) if a != b), min(len(got), k))
    fp32 = next((i for i, (a, b) in enumerate(zip(got, g.fp32_tokens, strict=False)) if a != b), min(len(got), len(g.fp32_tokens)))
    check = {"check_tokens": k, "matched": matched, "matched_fp32": fp32, "tokens": got}
    outputs_match = matched >= k

    reps = max(1, PREFILL_REPEATS)
    vision_ms, embeds = _median_ms(lambda: gen.encode_image(image), reps)
    prefill_ms, _ = _median_ms(lambda: gen.first_step(embeds, prefix, suffix), reps)

    def ttft() -> int:
        logits, _ = gen.first_step(gen.encode_image(image), prefix, suffix)
        return int(np.argmax(logits[0]))

    ttft_ms, _ = _median_ms(ttft, reps)
    positions = int(prefix.shape[1] + embeds.shape[1] + suffix.shape[1])
    sweeps = []
    for n in PREFILL_LENGTHS:
        text = _tiled(suffix, n)
        ms, _ = _median_ms(lambda text=text: gen.first_step(embeds, prefix, text), reps)
        pos = int(prefix.shape[1] + embeds.shape[1] + n)
        sweeps.append({"prompt_tokens": n, "positions": pos, "ms": ms, "positions_per_s": pos / ms * 1e3})

    for _ in range(max(0, min(p.warmup, 1))):
        _generate_timed(gen, embeds, prefix, suffix, min(p.new_tokens, 8))
    steps: list[float] = []
    census = Census.take()
    before = sample()
    start = time.perf_counter()
    while True:
        _, s, _ = _generate_timed(gen, embeds, prefix, suffix, p.new_tokens)
        steps.extend(s)
        elapsed = time.perf_counter() - start
        if (len(steps) >= p.runs and elapsed >= p.min_seconds) or (request.max_seconds is not None and elapsed >= request.max_seconds):
            break
    after = sample()
    others = census.others(Census.take(), top=3)
    loop_end = time.monotonic()
    if not steps:  # new_tokens == 1: the first token is all there is; time one decode step to report one
        logits, past = gen.first_step(embeds, prefix, suffix)
        t0 = time.perf_counter()
        gen.step(int(np.argmax(logits[0])), past)
        steps = [(time.perf_counter() - t0) * 1e3]
    summary, cv = summarize(steps)

    sustained = []
    thermal = ThermalReader() if p.sustained else None  # temp_c: the hottest readable sensor, None where none is
    for i in range(p.sustained):
        t0 = time.perf_counter()
        v_ms, emb = _median_ms(lambda: gen.encode_image(image), 1)
        pre_ms, s, toks = _generate_timed(gen, emb, prefix, suffix, p.new_tokens)
        total_s = time.perf_counter() - t0
        sustained.append({"iteration": i + 1, "tokens_per_s": len(toks) / total_s, "decode_tokens_per_s": len(s) / (sum(s) / 1e3) if s else None,
                          "ttft_ms": v_ms + pre_ms, "temp_c": thermal.snapshot().max_c})
    drift = None
    throttled = None
    if len(sustained) >= 2:
        drift = sustained[-1]["tokens_per_s"] / sustained[0]["tokens_per_s"] - 1.0
        temps = [r["temp_c"] for r in sustained if r["temp_c"] is not None]
        throttled = drift < DRIFT_THROTTLED or bool(temps and max(temps) >= p.throttle_c)

    gen_fig = Generation(
        load_ms=load_ms, vision_ms=vision_ms, prefill_ms=prefill_ms, ttft_ms=ttft_ms, prompt_positions=positions,
        new_tokens=p.new_tokens, decode_tokens_per_s=1e3 / summary.mean, prefill=sweeps, check=check,
        sustained=sustained, drift=drift, throttled=throttled,
    )
    gen.close()
    return Measurement(
        bundle_sha256=bundle.sha256, model=m.model.name, backend=m.backend, precision=m.precision,
        latency_ms=summary, cv=cv, runs=len(steps), warmup=p.warmup, threads=p.threads, init_ms=load_ms,
        peak_rss_mb=peak_rss_mb(), outputs_match=outputs_match, check={"tokens_matched": float(matched), "check_tokens": float(k)},
        platform={"machine": platform.machine(), "system": platform.system(), "python": platform.python_version(), "pid": os.getpid()},
        torch_loaded="torch" in sys.modules, loop_end=loop_end, timing="per decoded token",
        contamination=contamination(before, after, p.threads, p.max_foreign_share, others), generation=gen_fig,
    )
