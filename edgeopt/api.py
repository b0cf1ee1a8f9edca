"""The Python API under the CLI: compile(), profile(), compare(), load_bundle().

compile: spec -> module (+ weights) -> real samples + fp32 reference -> pass pipeline (torch passes,
export, graph passes, each checked against the budget) -> backend compile into a bundle being written ->
the artifact is loaded back through its backend and its fidelity measured on every sample -> manifest.
"""

from __future__ import annotations

import platform
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeopt._util import StageClock, sha256_file
from edgeopt.bundle import Bundle, Manifest, ModelInfo, TensorSpec, WeightsLabel, load_bundle, write_bundle
from edgeopt.errors import EdgeoptError
from edgeopt.fidelity import check_threshold, task_metrics
from edgeopt.measurement import Measurement, Protocol

if TYPE_CHECKING:
    from edgeopt.data import DataRequest, Dataset
    from edgeopt.harness.compare import Comparison

__all__ = ["check_threshold", "compare", "compile", "load_bundle", "profile", "tool_versions"]


def tool_versions(*dists: str) -> dict[str, str]:
    from edgeopt.runtimes.base import dist_versions

    return {"python": platform.python_version(), **dist_versions("edgeopt", "torch", "timm", "onnx", "onnxruntime", *dists)}


def weights_label(weights: str | Path | None) -> WeightsLabel:
    """Name the weights every fidelity figure was measured on (random weights make top-1 meaningless)."""
    if weights is None:
        from edgeopt.models.registry import RANDOM_INIT_SEED

        return WeightsLabel("random", {"seed": RANDOM_INIT_SEED,
                                       "note": "random init: task agreement metrics say little; output cosine/SNR still hold"})
    if weights == "calibrated":
        return WeightsLabel("calibrated")
    p = Path(weights)
    return WeightsLabel("checkpoint", {"path": str(p), "sha256": sha256_file(p)})


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
    data: str | Path | DataRequest | Dataset | None = None,
    labels: str | Path | None = None,
    calib_samples: int = 128,
    eval_samples: int = 512,
    skip_bad_images: bool = False,
    max_drop: float | None = None,
    progress_bar: Callable[[str, int, int], None] | None = None,
    external_data: bool | None = None,
) -> Bundle:
    """Compile a registered model into a bundle folder and return it (verified).

    `weights`: a local checkpoint file, None (random init), or "calibrated" (edgeopt.calibrate: seeded
    random init, BN statistics re-estimated and a short training on real data; the manifest says so).
    `module` lets a caller pass an already built (e.g. calibrated) torch module for `model`, and
    `weights_info` the label of its weights (what the manifest records; default: from `weights`).
    `exporter`: "dynamo" (torch.export, the default) or "torchscript" (the older tracer: about twice as
    fast to export, and what Olive uses by default); either falls back as export.export_onnx says.

    `data` (a path, a `DataRequest`, or a `Dataset` already prepared for this model): the user's data (edgeopt.data; docs/data.md). Its seeded calibration
    split (`calib_samples`) replaces the bundled photographs for calibration and every pass; the artifact's
    fidelity, agreement and accuracy are measured on the disjoint evaluation split (`eval_samples`), each
    with n and a 95 % interval. `labels`: another class mapping for a labelled folder; `skip_bad_images`:
    skip (and count) unreadable images instead of failing. `max_drop`: the most accuracy points against the
    labels the artifact may lose, judged on the drop's pessimistic 95 % bound; a drop that the evaluation
    split is too small to resolve is refused before any slow work. `progress_bar(label, done, total)`
    follows counted work (reading data, references, the artifact on the evaluation split).
    Without `data` the figures are measured on `samples` bundled photographs, as the manifest says.
    `external_data`: keep the ONNX graph's tensors in a `model.onnx.data` file beside it (True), never (False), or
    from 2 GB of weights on (None, the default; graphs past protobuf's 2 GB limit need it).
    """
    from edgeopt.data import DataRequest, Dataset
    from edgeopt.export import check_parity, export_onnx, torch_outputs
    from edgeopt.models import get_spec
    from edgeopt.passes.base import PassContext
    from edgeopt.passes.pipeline import build_pipeline, run_pipeline
    from edgeopt.runtimes.base import CompileInput, get_backend

    say = progress or (lambda _msg: None)
    bar = progress_bar or (lambda label, i, n: say(f"{label} {i}/{n}"))
    clock = StageClock()
    req = data if isinstance(data, Dataset) else DataRequest.of(
        data, labels=labels, calib_samples=calib_samples, eval_samples=eval_samples, skip_bad_images=skip_bad_images)
    if req is None and (labels is not None or max_drop is not None):
        raise EdgeoptError("--labels and --max-drop need --data (a labelled dataset)", "pass --data PATH")
    with clock.stage("setup"):  # the model registry (imports each family's library), the backend's runtime
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
    with clock.stage("data"):
        ds = _read_data(req, spec, pipeline, max_drop, say, bar) if req is not None else None
    if spec.generative is not None:
        from edgeopt.generative import compile_generative

        if module is not None or (weights is not None and str(weights) == "calibrated"):
            raise EdgeoptError(f"{spec.name} is built part by part from a checkpoint or seeded random weights",
                               "drop module= / --weights calibrated (pass a checkpoint file or nothing)")
        return compile_generative(
            spec, be, pipeline, build_pipeline=build_pipeline, weights=weights,
            wlabel=WeightsLabel.of(weights_info) if weights_info is not None else weights_label(weights),
            output=output, overwrite=overwrite, target=target, options=dict(options or {}), fidelity=fidelity,
            samples=spec.sample_inputs(samples) if ds is None else ds.calibration.samples,
            eval_samples=None if ds is None else ds.evaluation.samples, data_info=ds.info if ds is not None else None,
            exporter=exporter, say=say, tools=tool_versions(), clock=clock, external_data=external_data)
    say(f"build {spec.name}")
    with clock.stage("build"):
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
    with clock.stage("reference"):
        sample_list = spec.sample_inputs(samples) if ds is None else ds.calibration.samples
        refs = [torch_outputs(module, s, input_names, output_names) for s in sample_list]
        eval_list: list[dict[str, np.ndarray]] = [] if ds is None else ds.evaluation.samples
        eval_refs: list[dict[str, np.ndarray]] = []
        text_embeds = None
        if ds is not None:
            from edgeopt.data import DataError, check_outputs_cover_classes, zero_shot_text_embeds

            width = check_outputs_cover_classes(ds, refs, output_names)
            if width is not None:
                raise DataError(f"the data has {ds.catalog.num_classes} classes but {spec.name} has {width} outputs",
                                "use a model with enough classes, or map the classes onto its outputs with --labels FILE")
            for i, s in enumerate(eval_list):
                eval_refs.append(torch_outputs(module, s, input_names, output_names))
                if i % 16 == 15 or i + 1 == len(eval_list):
                    bar("fp32 reference on the evaluation split", i + 1, len(eval_list))
            if ds.kind == "clip" and ds.eval_labels is not None and ds.catalog.class_names:
                text_embeds = zero_shot_text_embeds(module, ds.catalog.class_names)

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
            eval_samples=eval_list, eval_references=eval_refs, eval_labels=ds.eval_labels if ds is not None else None,
        )

        def do_export(mod, path: Path):
            with clock.stage("export"):
                info = export_onnx(mod, sample_list[0], input_names, output_names, path, dynamic_axes=spec.dynamic_axes, prefer=exporter,
                                   external_data=external_data)
            with clock.stage("parity"):
                # no torch pass ran: the exported module is the reference module, its outputs are `refs`
                mod_refs = [torch_outputs(mod, s, input_names, output_names) for s in sample_list] if torch_passes_run else refs
                info.parity = check_parity(path, mod_refs, sample_list, outs=run_onnx(path))
            return path, info.to_dict()

        def eval_torch(mod):
            return [torch_outputs(mod, s, input_names, output_names) for s in sample_list]

        with clock.stage("passes"):
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
            with clock.stage("backend"):
                cres = be.compile(inp, w.root, target or "host", opts)
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
                samples=len(sample_list),
                data=ds.info if ds is not None else None,
            )
            # Fidelity of the artifact itself, run through its own backend on every sample (of the evaluation
            # split with --data), with its sample count, intervals and, against labels, accuracy.
            say("measure fidelity of the artifact")
            with clock.stage("fidelity"):
                if ds is None:
                    manifest.fidelity, manifest.fidelity_note, outs = _artifact_fidelity(be, w.root, manifest, sample_list, fid, last_ort)
                    used_refs = refs
                else:
                    manifest.fidelity, manifest.fidelity_note, outs = _artifact_fidelity(
                        be, w.root, manifest, eval_list, lambda o: task_metrics(spec.task, eval_refs, o), {}, bar)
                    used_refs = eval_refs
                _add_intervals(manifest, spec.task, used_refs, outs, ds, output_names, text_embeds, max_drop)
                if ds is not None and ds.kind == "vlm" and outs is not None:
                    say("greedy sequences of fp32 and the artifact")
                    _greedy_agreement(manifest, be, w.root, module, eval_list, input_names, output_names)
            cos = manifest.fidelity.get("cosine", 1.0)
            if fidelity is not None and cos < fidelity:
                raise EdgeoptError(
                    f"the {be.name} artifact broke the fidelity budget: cosine {cos:.6f} < {fidelity}",
                    "relax --fidelity or change precision; no bundle was written",
                )
            manifest.check = {"cosine_min": check_threshold(cos)}
            manifest.compile_seconds = clock.report()
            w.finish(manifest)
    return load_bundle(output)


def _artifact_fidelity(be, root: Path, manifest: Manifest, samples, fid, last_ort: dict[str, Any],
                       bar: Callable[[str, int, int], None] | None = None) -> tuple[dict[str, Any], str | None, list | None]:
    """Run the written artifact through its backend on the host: (fidelity, why the host could not, outputs).

    An ORT artifact whose bytes the pipeline already ran (`last_ort`, same sha256) reuses those outputs."""
    host_ok = manifest.backend_details.get("host_runnable", True)
    if host_ok is not True:
        return dict(manifest.passes[-1]["fidelity"]) if manifest.passes else {}, str(host_ok), None
    if be.runs_pipeline_onnx and last_ort and sha256_file(root / manifest.artifact) == sha256_file(last_ort["path"]):
        return fid(last_ort["outs"]), None, last_ort["outs"]
    sess = be.load(root, manifest)
    outs = []
    try:
        for i, s in enumerate(samples):
            outs.append(sess.run(s))
            if bar is not None and (i % 16 == 15 or i + 1 == len(samples)):
                bar("artifact on the evaluation split", i + 1, len(samples))
    finally:
        sess.close()
    return fid(outs), None, outs


def _read_data(req: DataRequest | Dataset, spec: Any, pipeline: list, max_drop: float | None, say: Callable[[str], None],
               bar: Callable[[str, int, int], None]) -> Dataset:
    """Scan, check, hash, split and decode the user's data before any slow work (a `Dataset` is used as it is);
    quantize passes whose `calibration_samples` the user left at its default calibrate on the whole calibration split."""
    from edgeopt.data import DataError, Dataset, check_fits, prepare, scan
    from edgeopt.stats import drop_resolvable

    if isinstance(req, Dataset):
        ds = req
        check_fits(ds.catalog, spec)
    else:
        say(f"read data {req.path}")
        cat = scan(req)
        check_fits(cat, spec)
        if max_drop is not None and not cat.labelled:
            raise DataError(f"--max-drop needs labelled data; {req.path} is {cat.format.replace('_', ' ')}",
                            "use a folder with class subfolders (or a COCO set), or drop --max-drop")
        ds = prepare(req, spec, bar, catalog=cat)
    if max_drop is not None and not ds.catalog.labelled:
        raise DataError(f"--max-drop needs labelled data; {ds.catalog.root} is {ds.format.replace('_', ' ')}", "drop --max-drop")
    if max_drop is not None and ds.format != "coco":
        ok, need = drop_resolvable(max_drop, len(ds.evaluation))
        if not ok:
            raise DataError(f"--max-drop {max_drop:g} cannot be resolved on {len(ds.evaluation)} evaluation samples "
                            f"(a 95 % bound that tight needs {need or 'infinitely many'})",
                            f"pass --eval-samples {need} with data that holds them, or relax --max-drop")
    for p in pipeline:
        if p.name == "quantize" and "calibration_samples" in type(p.config).model_fields and "calibration_samples" not in p.config.model_fields_set:
            p.config.calibration_samples = len(ds.calibration)
    return ds


def _greedy_agreement(manifest: Manifest, be: Any, root: Path, module: Any, samples: list, input_names: list[str], output_names: list[str]) -> None:
    """`fidelity["greedy_sequence_agreement"]`: the share of prompts whose greedy continuation (GREEDY_STEPS
    tokens) the artifact reproduces exactly, with n and ci95; a note where the artifact takes no longer prompt."""
    from edgeopt.data.evaluate import GREEDY_STEPS, greedy_tokens
    from edgeopt.export import torch_outputs
    from edgeopt.stats import Figure

    ref = greedy_tokens(lambda s: torch_outputs(module, s, input_names, output_names), samples)
    sess = be.load(root, manifest)
    try:
        art = greedy_tokens(sess.run, samples)
    except Exception as e:  # noqa: BLE001 - a graph with a fixed prompt length cannot be asked for more tokens
        manifest.fidelity["greedy_note"] = f"greedy-sequence agreement not measured: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        return
    finally:
        sess.close()
    fig = Figure.proportion("greedy_sequence_agreement", np.all(ref == art, axis=1))
    manifest.fidelity["greedy_sequence_agreement"] = fig.value
    manifest.fidelity["greedy_sequence"] = {**fig.to_json(), "steps": GREEDY_STEPS}


def _add_intervals(manifest: Manifest, task: str, refs: list, outs: list | None, ds: Dataset | None, output_names: list[str],
                   text_embeds: np.ndarray | None, max_drop: float | None) -> None:
    """Complete `manifest.fidelity`: what it was measured on, the agreement figure with n and ci95, the accuracy
    against labels, and the --max-drop gate (an EdgeoptError when it fails or cannot be resolved)."""
    from edgeopt.fidelity import agreement_figure
    from edgeopt.stats import gate_max_drop

    f = manifest.fidelity
    if outs is None:  # the host cannot run the artifact: the figures (if any) are the last pass's, on the calibration samples
        if f:
            f["evaluated_on"] = ("data: calibration split" if ds is not None else "bundled photographs") + " (last pass; the artifact does not run here)"
            f["n"] = manifest.samples
        if max_drop is not None:
            raise EdgeoptError("--max-drop cannot be checked: the artifact does not run on this host", "drop --max-drop or compile on a host that runs it")
        return
    f["evaluated_on"] = "data: evaluation split" if ds is not None else "bundled photographs"
    f["n"] = len(refs)
    agree = agreement_figure(task, refs, outs)
    if agree is not None:
        f["agreement"] = agree.to_json()
    if ds is None:
        return
    from edgeopt.data import accuracy

    acc, why = accuracy(ds, refs, outs, output_names, text_embeds)
    if acc is not None:
        f["accuracy"] = acc.to_json()
    elif why:
        f["accuracy_note"] = why
    if max_drop is not None:
        if acc is None:
            raise EdgeoptError(f"--max-drop cannot be checked: {why}", "drop --max-drop")
        gate = gate_max_drop(acc, max_drop)
        f["gate"] = {"max_drop_points": max_drop, **gate.to_json()}
        if gate.status != "pass":
            raise EdgeoptError(f"the {manifest.backend} artifact {'failed' if gate.status == 'fail' else 'cannot be judged by'} --max-drop: {gate.reason}",
                               "relax --max-drop, evaluate on more samples or change precision; no bundle was written")


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
    strict: bool = False,
    sustained: int = 0,
    new_tokens: int = 128,
) -> Measurement:
    """Measure a bundle on a device with the standard protocol; store the result unless store=False.

    `protocol` gives every protocol field at once (it wins over runs/warmup/min_seconds/threads/timeout/strict).
    A result that other processes disturbed is measured again (`Protocol.remeasure`); with `strict` it is
    refused (`Contaminated`) instead of kept with its flag. A generative bundle is measured in MELT's terms
    (`Measurement.generation`): `new_tokens` per timed generation, and `sustained` N more generations back
    to back for tokens/s drift and temperatures."""
    from edgeopt.harness.devices import open_device
    from edgeopt.harness.protocol import measure
    from edgeopt.store import Store

    b = load_bundle(bundle)
    st = Store(db) if store else None  # open the database first: a bad URL fails before the run
    proto = protocol or Protocol(warmup=warmup, runs=runs, min_seconds=min_seconds, threads=threads, timeout=timeout, strict=strict,
                                 sustained=sustained, new_tokens=new_tokens)
    dev = open_device(device, **(device_options or {}))  # a devices.yaml name (its options apply) or a URI
    if dev.board_spec is not None:
        proto = dev.board_spec.protocol(proto)  # the board's pin_cpus where the protocol sets none
    try:
        res = measure(dev, b, proto)
    finally:
        dev.close()
    if st is not None:
        res.measurement_id = st.add_measurement(b.manifest, res, replace=True)
    return res


def compare(
    bundles: list[str | Path],
    device: str = "local",
    rounds: int = 7,
    threads: int | None = None,
    runs: int = 10,
    min_seconds: float = 0.5,
    device_options: dict[str, Any] | None = None,
    on_round: Callable[[int, int], None] | None = None,
) -> Comparison:
    """Interleaved comparison of bundles on one device (`edgeopt.harness.compare`): each round times every
    bundle once in a fresh runner process; ratios to the first bundle with 95 % bootstrap intervals."""
    from edgeopt.harness.compare import ROUND_PROTOCOL
    from edgeopt.harness.compare import compare as do_compare
    from edgeopt.harness.devices import open_device

    loaded = [load_bundle(b) for b in bundles]  # every bundle verified before the first round
    proto = replace(ROUND_PROTOCOL, threads=threads, runs=runs, min_seconds=min_seconds)
    dev = open_device(device, **(device_options or {}))  # a devices.yaml name (its options apply) or a URI
    if dev.board_spec is not None:
        proto = dev.board_spec.protocol(proto)
    try:
        return do_compare(dev, loaded, rounds=rounds, protocol=proto, labels=[str(b) for b in bundles], on_round=on_round)
    finally:
        dev.close()
