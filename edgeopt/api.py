"""The Python API under the CLI: compile(), profile(), load_bundle().

compile: spec -> module (+ weights) -> real samples + fp32 reference -> pass pipeline (torch passes,
export, graph passes, each checked against the budget) -> backend compile into a bundle being written ->
the artifact is loaded back through its backend and its fidelity measured on every sample -> manifest.
"""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt._util import sha256_file
from edgeopt.bundle import Bundle, Manifest, ModelInfo, TensorSpec, WeightsLabel, load_bundle, write_bundle
from edgeopt.errors import EdgeoptError
from edgeopt.fidelity import task_metrics
from edgeopt.measurement import Measurement, Protocol

__all__ = ["compile", "load_bundle", "profile", "tool_versions"]


def tool_versions(*dists: str) -> dict[str, str]:
    from edgeopt.runtimes.base import dist_versions

    return {"python": platform.python_version(), **dist_versions("edgeopt", "torch", "timm", "onnx", "onnxruntime", *dists)}


def weights_label(weights: str | Path | None) -> WeightsLabel:
    """Name the weights every fidelity figure was measured on (random weights make top-1 meaningless)."""
    if weights is None:
        return WeightsLabel("random", {"note": "random init: task agreement metrics say little; output cosine/SNR still hold"})
    if weights == "calibrated":
        return WeightsLabel("calibrated")
    p = Path(weights)
    return WeightsLabel("checkpoint", {"path": str(p), "sha256": sha256_file(p)})


def check_threshold(cos: float) -> float:
    """Minimum cosine a device must reach on the bundle's reference sample.

    Slightly below what the host measured for this artifact, to allow for another CPU's rounding
    (fp32 artifacts: 0.999; quantized ones: host cosine minus half the host's own loss, minus 0.001)."""
    return float(max(0.0, min(0.999, cos - 0.001 - 0.5 * (1.0 - cos))))


def compile(  # noqa: A001 - the public name the design asks for
    model: str,
    backend: str = "onnxruntime",
    passes: str | list | None = None,
    weights: str | Path | None = None,
    output: str | Path | None = None,
    target: str | None = None,
    options: dict[str, Any] | None = None,
    fidelity: float | None = None,
    samples: int = 8,
    overwrite: bool = False,
    module: Any = None,
    progress: Callable[[str], None] | None = None,
    exporter: str = "dynamo",
    weights_info: WeightsLabel | dict[str, Any] | None = None,
) -> Bundle:
    """Compile a registered model into a bundle folder and return it (verified).

    `weights`: a local checkpoint file, None (random init), or "calibrated" (edgeopt.calibrate: seeded
    random init, BN statistics re-estimated and a short training on real data; the manifest says so).
    `module` lets a caller pass an already built (e.g. calibrated) torch module for `model`, and
    `weights_info` the label of its weights (what the manifest records; default: from `weights`).
    `exporter`: "dynamo" (torch.export, the default) or "torchscript" (the older tracer: about twice as
    fast to export, and what Olive uses by default); either falls back as export.export_onnx says.
    """
    from edgeopt.export import check_parity, export_onnx, torch_outputs
    from edgeopt.models import get_spec
    from edgeopt.passes.base import PassContext
    from edgeopt.passes.pipeline import build_pipeline, run_pipeline
    from edgeopt.runtimes.base import CompileInput, get_backend

    say = progress or (lambda _msg: None)
    t_start = time.perf_counter()
    spec = get_spec(model)
    be = get_backend(backend)
    be.require()
    pipeline = build_pipeline(passes)  # parse before any slow work: a bad spec fails at once
    be.check_request(pipeline, options or {})  # e.g. tflite refuses quantize:int4 before building anything
    if exporter not in ("dynamo", "torchscript"):
        raise EdgeoptError(f"unknown exporter {exporter!r}", "use dynamo or torchscript")
    torch_passes_run = any(p.works_on == "torch" for p in pipeline)
    output = Path(output or f"{spec.name}-{be.name}.bundle")
    if output.exists() and not overwrite:
        raise EdgeoptError(f"{output} already exists", "choose another -o folder or pass --overwrite")
    say(f"build {spec.name}")
    if weights is not None and str(weights) == "calibrated" and not Path(weights).is_file():
        # random init made confident on real data (edgeopt.calibrate); a user's own checkpoint always wins
        from edgeopt.calibrate import build_calibrated

        say("calibrate weights (BN statistics + short training on load_digits)")
        if module is None:
            module, weights_info = build_calibrated(spec)
    elif module is None:
        module = spec.build(weights=weights)
    wlabel = WeightsLabel.of(weights_info) if weights_info is not None else weights_label(weights)
    input_names = [i.name for i in spec.inputs]
    output_names = list(spec.outputs)
    say("sample inputs and fp32 reference")
    sample_list = spec.sample_inputs(samples)
    refs = [torch_outputs(module, s, input_names, output_names) for s in sample_list]

    def fid(outs: list[dict[str, np.ndarray]]) -> dict[str, float]:
        return task_metrics(spec.task, refs, outs)

    # The last ONNX file the pipeline ran on ORT, and its outputs: the ORT artifact is a copy of that file,
    # so its fidelity needs no second session (the two are compared by sha256 only then, not on every run).
    last_ort: dict[str, Any] = {}

    def run_onnx(path: Path) -> list[dict[str, np.ndarray]]:
        from edgeopt._ort import ort_run_all

        outs = ort_run_all(path, sample_list)
        last_ort.update(path=path, outs=outs)
        return outs

    with tempfile.TemporaryDirectory(prefix="edgeopt-") as work:
        workdir = Path(work)
        ctx = PassContext(
            model_name=spec.name, task=spec.task, input_names=input_names, output_names=output_names,
            samples=sample_list, references=refs, workdir=workdir, backend=be.name, fidelity=fid,
        )

        def do_export(mod, path: Path):
            dyn = {i.name: dict(i.dynamic_axes) for i in spec.inputs if i.dynamic_axes} or None
            info = export_onnx(mod, sample_list[0], input_names, output_names, path, dynamic_axes=dyn, prefer=exporter)
            # no torch pass ran: the exported module is the reference module, its outputs are `refs`
            mod_refs = [torch_outputs(mod, s, input_names, output_names) for s in sample_list] if torch_passes_run else refs
            info.parity = check_parity(path, mod_refs, sample_list, outs=run_onnx(path))
            return path, info.to_dict()

        def eval_torch(mod):
            return [torch_outputs(mod, s, input_names, output_names) for s in sample_list]

        result = run_pipeline(
            pipeline, module, ctx,
            export=do_export if be.consumes == "onnx" else None,
            evaluate_torch=eval_torch, evaluate_onnx=run_onnx,
            budget=fidelity, delegate=be.implements, progress=say,
        )
        inp = CompileInput(
            model_name=spec.name, task=spec.task, input_names=input_names, output_names=output_names,
            samples=sample_list, module=result.module, onnx_path=result.onnx_path,
            delegated=result.delegated, workdir=workdir,
        )
        opts = {"precision": result.precision, **(options or {})}
        with write_bundle(output, overwrite=overwrite) as w:
            say(f"compile with {be.name}")
            t0 = time.perf_counter()
            cres = be.compile(inp, w.root, target or "host", opts)
            compile_s = time.perf_counter() - t0
            w.write_reference(sample_list[0], refs[0])
            manifest = Manifest(
                model=ModelInfo(spec.name, spec.family, spec.task),
                weights=wlabel,
                backend=be.name,
                target=cres.target,
                precision=cres.precision,
                artifact=cres.artifact,
                inputs=[TensorSpec(i.name, list(i.shape), i.dtype) for i in spec.inputs],
                outputs=[TensorSpec(n, list(refs[0][n].shape), str(refs[0][n].dtype)) for n in output_names],
                passes=[r.to_dict() for r in result.reports],
                delegated_passes=result.delegated,
                export=result.export,
                backend_details=cres.details,
                tools={**tool_versions(), **cres.tools},
                compile_seconds={"backend": compile_s, "total": None},
                samples=len(sample_list),
            )
            # Fidelity of the artifact itself, run through its own backend on every sample.
            say("measure fidelity of the artifact")
            manifest.fidelity, manifest.fidelity_note = _artifact_fidelity(be, w.root, manifest, sample_list, fid, last_ort)
            cos = manifest.fidelity.get("cosine", 1.0)
            if fidelity is not None and cos < fidelity:
                raise EdgeoptError(
                    f"the {be.name} artifact broke the fidelity budget: cosine {cos:.6f} < {fidelity}",
                    "relax --fidelity or change precision; no bundle was written",
                )
            manifest.check = {"cosine_min": check_threshold(cos)}
            manifest.compile_seconds["total"] = time.perf_counter() - t_start
            w.finish(manifest)
    return load_bundle(output)


def _artifact_fidelity(be, root: Path, manifest: Manifest, samples, fid, last_ort: dict[str, Any]) -> tuple[dict[str, float], str | None]:
    """Run the written artifact through its backend on the host; say why when the host cannot.

    An ORT artifact whose bytes the pipeline already ran (`last_ort`, same sha256) reuses those outputs."""
    host_ok = manifest.backend_details.get("host_runnable", True)
    if host_ok is not True:
        return dict(manifest.passes[-1]["fidelity"]) if manifest.passes else {}, str(host_ok)
    if be.runs_pipeline_onnx and last_ort and sha256_file(root / manifest.artifact) == sha256_file(last_ort["path"]):
        return fid(last_ort["outs"]), None
    sess = be.load(root, manifest)
    try:
        outs = [sess.run(s) for s in samples]
    finally:
        sess.close()
    return fid(outs), None


def profile(
    bundle: str | Path,
    device: str = "local",
    runs: int = 20,
    warmup: int = 5,
    min_seconds: float = 1.0,
    threads: int | None = None,
    db: str | None = None,
    store: bool = True,
    timeout: float = 600.0,
    device_options: dict[str, Any] | None = None,
    protocol: Protocol | None = None,
) -> Measurement:
    """Measure a bundle on a device with the standard protocol; store the result unless store=False.

    `protocol` gives every protocol field at once (it wins over runs/warmup/min_seconds/threads/timeout)."""
    from edgeopt.harness.devices import get_device
    from edgeopt.harness.protocol import measure
    from edgeopt.store import Store

    b = load_bundle(bundle)
    st = Store(db) if store else None  # open the database first: a bad URL fails before the run
    proto = protocol or Protocol(warmup=warmup, runs=runs, min_seconds=min_seconds, threads=threads, timeout=timeout)
    dev = get_device(device, **(device_options or {}))
    try:
        res = measure(dev, b, proto)
    finally:
        dev.close()
    if st is not None:
        res.measurement_id = st.add_measurement(b.manifest, res, replace=True)
    return res
