"""One timed path in a process of its own, driven over stdin/stdout by bench/peers.py.

Why a process per path: timed in one process, torch's OpenMP pool and the artifact runtime's thread pool
(XNNPACK's pthreadpool, ORT's) share two cores and spin against each other: a .tflite read 6.0-7.9 ms right
after torch eager in the same process and 5.9-6.0 ms in a process without torch, and eager itself read
slower beside it. A deployed artifact runs without torch, as edgeopt's runner does; eager runs in a torch
process, as a PyTorch app would. The parent alternates rounds between the workers, so a load swing still
hits every path alike.

Protocol: after loading, the worker prints `@@ {"first_ms": ...}`; then each stdin line `N` times N calls
and answers `@@ {"median_ms": ...}`; an empty line or EOF ends it. Lines without `@@ ` are library chatter.
"""

from __future__ import annotations

import argparse

from edgeopt._timed_worker import serve


def _eager(model: str, weights: str | None, threads: int):
    import torch

    from edgeopt.export import to_torch_inputs
    from edgeopt.models import get_spec

    torch.set_num_threads(threads)
    spec = get_spec(model)
    module = spec.build(weights=weights).eval()
    args = to_torch_inputs(spec.sample_inputs(1)[0], [i.name for i in spec.inputs])

    def run() -> None:
        with torch.inference_mode():
            module(*args)

    return run


def _bundle(path: str, threads: int):
    from edgeopt.bundle import load_bundle
    from edgeopt.runtimes.base import get_backend

    bundle = load_bundle(path)
    sess = get_backend(bundle.backend).load(bundle.path, bundle.manifest, threads=threads)
    x = bundle.reference_inputs()
    return lambda: sess.run(x)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eager", help="model name: time the torch module (built from --weights)")
    ap.add_argument("--weights")
    ap.add_argument("--bundle", help="bundle folder: time its artifact through its backend's session")
    ap.add_argument("--threads", type=int, required=True)
    a = ap.parse_args()
    return serve(_eager(a.eager, a.weights, a.threads) if a.eager else _bundle(a.bundle, a.threads))


if __name__ == "__main__":
    raise SystemExit(main())
