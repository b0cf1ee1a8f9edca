"""Device-side runner: `python -m edgeopt.runner BUNDLE [--warmup W --runs N --min-seconds S --threads T]`
or `python -m edgeopt.runner BUNDLE --request JSON` (a `MeasureRequest`, as the harness sends it).

Loads a bundle (refusing it if any sha256 differs), checks the artifact's outputs on the bundle's own
reference inputs, measures latency LoadGen-style (warm-up, then until both a run count and a duration are
reached), records how much of its cores other processes took meanwhile (`edgeopt.contention`) and
prints one `Measurement` as a JSON line on stdout (`{"error": ...}` with exit code 2 when it
cannot). With a request that names an image, it measures model-only and end-to-end latency instead
(`edgeopt.harness.e2e_runner`). A generative bundle (a manifest with `generation`) is measured in MELT's
terms instead: load, time to first token, prefill and decode tokens/s (`edgeopt.harness.gen_runner`). Needs only numpy and the bundle's runtime: never torch, except where the
bundle's manifest says its runtime needs it (`backend_details["device_needs"]`: ExecuTorch's Python runtime).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time

from edgeopt._loop import measure_session, peak_rss_mb, print_result
from edgeopt.contention import Census, contamination, sample
from edgeopt.measurement import Measurement, MeasureRequest, Protocol, summarize


def run_bundle(path: str, request: MeasureRequest) -> Measurement:
    """Load, check and time one bundle on this machine."""
    from edgeopt.bundle import load_bundle
    from edgeopt.fidelity import output_metrics
    from edgeopt.runtimes.base import get_backend

    p = request.protocol
    bundle = load_bundle(path, verify=request.verify)
    m = bundle.manifest
    backend = get_backend(m.backend)
    # What this bundle's runtime needs beyond numpy (ExecuTorch's Python runtime imports torch): say so first.
    missing = [mod for mod in m.backend_details.get("device_needs", []) if importlib.util.find_spec(mod) is None]
    if missing:
        raise RuntimeError(f"this {m.backend} bundle needs {', '.join(missing)} on the device and this device lacks it: "
                           f"pip install {' '.join(missing)} here, or compile for another backend (docs/backends.md)")
    ok, why = backend.available()
    if not ok:
        raise RuntimeError(f"backend {m.backend} is not available on this device: {why}")
    if m.generation is not None:
        from edgeopt.harness.gen_runner import run as run_generation

        return run_generation(bundle, request)
    t0 = time.perf_counter()
    session = backend.load(bundle.path, m, threads=p.threads)
    init_ms = (time.perf_counter() - t0) * 1e3

    inputs = bundle.reference_inputs()
    refs = bundle.reference_outputs()
    outs = session.run(inputs)
    check = output_metrics([refs], [{k: outs[k] for k in refs if k in outs}])
    check["cosine_min"] = m.cosine_min
    outputs_match = bool(set(refs) <= set(outs) and check["cosine"] >= m.cosine_min)

    for _ in range(p.warmup):
        session.run(inputs)
    census = Census.take()
    before = sample()
    lat = measure_session(lambda: session.run(inputs), 0, p.runs, p.min_seconds, request.max_seconds)
    after = sample()
    others = census.others(Census.take(), top=3)
    loop_end = time.monotonic()
    session.close()
    summary, cv = summarize(lat)
    return Measurement(
        bundle_sha256=bundle.sha256, model=m.model.name, backend=m.backend, precision=m.precision,
        latency_ms=summary, cv=cv, runs=len(lat), warmup=p.warmup, threads=p.threads, init_ms=init_ms,
        peak_rss_mb=peak_rss_mb(), outputs_match=outputs_match, check=check,
        platform={"machine": platform.machine(), "system": platform.system(), "python": platform.python_version(), "pid": os.getpid()},
        torch_loaded="torch" in sys.modules, loop_end=loop_end,
        contamination=contamination(before, after, p.threads, p.max_foreign_share, others),
    )


def run_request(path: str, request: MeasureRequest) -> Measurement:
    """The plain measurement, or with an image the end-to-end one (model-only + end-to-end, side by side)."""
    res = run_bundle(path, request)
    if request.image and res.generation is None:
        from edgeopt.harness.e2e_runner import run as run_e2e

        p = request.protocol
        res.e2e = run_e2e(path, request.image, p.warmup, p.runs, p.min_seconds, p.threads)
        res.e2e.pop("bundle_sha256", None)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeopt.runner", description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--request", help="a MeasureRequest as JSON (what the harness sends); overrides the flags below")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--max-seconds", type=float, default=None, help="stop after this long even if --runs is not reached")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-verify", action="store_true", help="skip the sha256 check (the harness verified on push)")
    a = ap.parse_args(argv)
    if a.request:
        req = MeasureRequest.from_json(a.request)
    else:
        req = MeasureRequest(Protocol(warmup=a.warmup, runs=a.runs, min_seconds=a.min_seconds, threads=a.threads),
                             verify=not a.no_verify, max_seconds=a.max_seconds)
    return print_result(lambda: run_request(a.bundle, req))


if __name__ == "__main__":
    sys.exit(main())
