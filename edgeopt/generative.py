"""Compile a generative model (`ModelSpec.generative`) into one bundle.

The bundle holds the model's split graphs under `llm/` (vision: image -> image tokens; prefill: prompt and
image tokens -> first logits and the KV cache; decode: one token and the cache -> logits and the grown
cache), each exported, checked against torch and passed through the pipeline on its own; the tokenizer;
and a reference prompt (the reference inputs) with fp32 torch's greedy tokens and the artifact's own. A
device generates from it without torch (`Backend.load_generator`), checks its first tokens against the
reference and is measured in MELT's terms (`edgeopt.harness.gen_runner`).

Precision: the pipeline (graph passes: `quantize:int4`, `quantize:dynamic`, `quantize:fp16`, ...) applies
to the two LLM graphs; the vision graph's precision is the `vision` option (fp32, fp16, dynamic, int8).

Memory: the torch work (build, fp32 references, export) of the vision part and of the LLM each runs in a
fresh process, so torch holds one part's weights at a time and gives every byte back before ONNX Runtime
opens the graphs in this one (the prefill and decode graphs share the LLM's weights). Only registered
specs can be built there (the child imports the registry afresh).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt._util import StageClock
from edgeopt.bundle import (
    Bundle,
    GenerationInfo,
    Manifest,
    ModelInfo,
    TensorSpec,
    WeightsLabel,
    load_bundle,
    write_bundle,
)
from edgeopt.errors import EdgeoptError

GRAPHS_DIR = "llm"
TOKENIZER = "tokenizer.json"
REFERENCE_TOKENS = 16  # greedy tokens per prompt compared with fp32 (and kept for the reference prompt)
CHECK_TOKENS = 4  # leading tokens of the reference a device must reproduce
VISION_PRECISIONS = {"fp32": None, "fp16": "quantize:fp16", "dynamic": "quantize:dynamic", "int8": "quantize:int8"}


@dataclass
class _Graph:
    """One exported graph: its spec, samples, fp32 torch references and, after the passes, its file."""

    role: str
    spec: Any
    samples: list[dict[str, np.ndarray]]
    refs: list[dict[str, np.ndarray]]
    path: Path
    export: dict[str, Any] = field(default_factory=dict)
    reports: list[Any] = field(default_factory=list)
    precision: str | None = None

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.spec.inputs]

    @property
    def output_names(self) -> list[str]:
        return list(self.spec.outputs)


def check_request(spec: Any, be: Any, pipeline: list, options: dict[str, Any]) -> str | None:
    """Refuse what a generative bundle cannot be before any slow work; returns the vision graph's pipeline."""
    if not be.generative:
        raise EdgeoptError(f"backend {be.name} builds no generative bundles ({spec.name} generates token by token on the device)",
                           f"use -b onnxruntime, or compile {spec.name}_whole (one graph) for {be.name}")
    torch_passes = [p.name for p in pipeline if p.works_on == "torch"]
    if torch_passes:
        raise EdgeoptError(f"{spec.name} is compiled graph by graph and takes graph passes only, not {', '.join(torch_passes)}",
                           "use quantize:int4, quantize:dynamic or quantize:fp16 for the LLM graphs (and --option vision=fp16|int8)")
    vision = str(options.get("vision", "fp32"))
    if vision not in VISION_PRECISIONS:
        raise EdgeoptError(f"--option vision={vision} is not a precision of the vision graph", f"use one of {', '.join(VISION_PRECISIONS)}")
    tok = options.get("tokenizer")
    if tok is not None and not Path(tok).is_file():
        raise EdgeoptError(f"--option tokenizer={tok}: no such file", "pass the model's own tokenizer.json")
    return VISION_PRECISIONS[vision]


def _torch_greedy(prefill: Any, decode: Any, embeds: np.ndarray, pre: np.ndarray, suf: np.ndarray, n: int) -> tuple[np.ndarray, list[int]]:
    """fp32 torch's first logits and `n` greedy tokens through the two part modules (their graphs' signatures)."""
    import torch

    with torch.inference_mode():
        outs = prefill(torch.from_numpy(embeds), torch.from_numpy(pre), torch.from_numpy(suf))
        first = outs[0].numpy().copy()
        tokens: list[int] = []
        for i in range(n):
            tok = int(outs[0][0].argmax())
            tokens.append(tok)
            if i + 1 < n:
                outs = decode(torch.tensor([[tok]], dtype=torch.int64), *outs[1:])
    return first, tokens


def _export(g: _Graph, module: Any, workdir: Path, exporter: str, external_data: bool | None) -> None:
    from edgeopt.export import export_onnx

    folder = workdir / g.role
    folder.mkdir(parents=True, exist_ok=True)
    info = export_onnx(module, g.samples[0], g.input_names, g.output_names, folder / "exported.onnx", dynamic_axes=g.spec.dynamic_axes, prefer=exporter,
                       external_data=external_data)
    g.path = folder / "exported.onnx"
    g.export = info.to_dict()


def _passes(g: _Graph, pipeline: list, be: Any, budget: float | None, say: Callable[[str], None]) -> None:
    """Parity of the exported graph with torch, then the graph passes, each checked on the graph's samples."""
    from edgeopt._ort import ort_run_all
    from edgeopt.export import check_parity
    from edgeopt.fidelity import task_metrics
    from edgeopt.passes.base import PassContext
    from edgeopt.passes.pipeline import run_pipeline

    say(f"{g.role}: check the export against torch")
    outs = ort_run_all(g.path, g.samples)
    g.export["parity"] = check_parity(g.path, g.refs, g.samples, outs=outs)
    if not pipeline:
        return
    ctx = PassContext(
        model_name=g.spec.name, task=g.spec.task, input_names=g.input_names, output_names=g.output_names,
        samples=g.samples, references=g.refs, workdir=g.path.parent, backend=be.name,
        fidelity=lambda o: task_metrics(g.spec.task, g.refs, o),
    )
    result = run_pipeline(
        pipeline, None, ctx, export=lambda _m, _p: (g.path, g.export),
        evaluate_torch=lambda _m: [], evaluate_onnx=lambda p: ort_run_all(p, g.samples),
        budget=budget, progress=lambda msg: say(f"{g.role}: {msg}"),
    )
    g.path, g.reports, g.precision = Path(result.onnx_path), result.reports, result.precision


def _in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(*args)` in a fresh (spawned) process and return its result; its errors are raised here."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as ex:
        try:
            return ex.submit(fn, *args).result()
        except BrokenProcessPool:
            raise EdgeoptError(f"the process running {fn.__name__.strip('_')} died (out of memory?)",
                               "free memory (close other jobs) and compile again; docs/llm.md gives the peak of each stage") from None


def _vision_stage(name: str, weights: str | Path | None, samples: list[dict[str, np.ndarray]], evals: list[dict[str, np.ndarray]] | None,
                  workdir: Path, exporter: str, external_data: bool | None) -> dict[str, Any]:
    """Build the vision part, take its fp32 outputs on the samples (and the image tokens of the evaluation
    prompts, where they are others: `evals`), export it. Runs in a child process (`_in_child`)."""
    from edgeopt.export import torch_outputs
    from edgeopt.models import get_spec

    vspec = get_spec(name)
    vmod = vspec.build(weights=weights)
    g = _Graph("vision", vspec, [{"image": s["image"]} for s in samples], [], workdir / "vision.onnx")
    g.refs = [torch_outputs(vmod, x, g.input_names, g.output_names) for x in g.samples]
    embeds = (None if evals is None else
              [torch_outputs(vmod, {"image": s["image"]}, g.input_names, g.output_names)["image_embeds"] for s in evals])
    _export(g, vmod, workdir, exporter, external_data)
    return {"samples": g.samples, "refs": g.refs, "embeds": embeds, "path": str(g.path), "export": g.export}


def _llm_stage(model: str, weights: str | Path | None, samples: list[dict[str, np.ndarray]], vision_refs: list[dict[str, np.ndarray]],
               embeds: list[np.ndarray] | None, evals: list[dict[str, np.ndarray]] | None, n_tok: int, workdir: Path, exporter: str,
               external_data: bool | None) -> dict[str, Any]:
    """Build the LLM once (prefill and decode parts share it), take the fp32 references of both graphs and
    fp32's greedy tokens on the reference prompt (`samples[0]`) and every evaluation prompt (`evals`, with
    their image tokens `embeds`; None: the samples), export both graphs. Runs in a child process (`_in_child`)."""
    from edgeopt.export import torch_outputs
    from edgeopt.models import get_spec

    gen = get_spec(model).generative
    pspec, dspec = get_spec(gen.prefill), get_spec(gen.decode)
    pmod = pspec.build(weights=weights)
    dmod = gen.decode_from_prefill(pmod)
    prefill = _Graph("prefill", pspec, [], [], workdir / "prefill.onnx")
    decode = _Graph("decode", dspec, [], [], workdir / "decode.onnx")
    for s, v in zip(samples, vision_refs, strict=True):
        ps = {"image_embeds": v["image_embeds"], "prefix_ids": s["prefix_ids"], "suffix_ids": s["suffix_ids"]}
        pr = torch_outputs(pmod, ps, prefill.input_names, prefill.output_names)
        prefill.samples.append(ps)
        prefill.refs.append(pr)
        ds = {"input_ids": np.asarray([[int(np.argmax(pr["logits"][0]))]], np.int64)}
        ds.update(zip(decode.input_names[1:], (pr[o] for o in prefill.output_names[1:]), strict=True))
        decode.samples.append(ds)
        decode.refs.append(torch_outputs(dmod, ds, decode.input_names, decode.output_names))
    ref = _torch_greedy(pmod, dmod, vision_refs[0]["image_embeds"], samples[0]["prefix_ids"], samples[0]["suffix_ids"], n_tok)
    if evals is None:  # the evaluation prompts are the samples: the first is the reference prompt, just run
        fp32 = [ref] + [_torch_greedy(pmod, dmod, v["image_embeds"], s["prefix_ids"], s["suffix_ids"], n_tok)
                        for v, s in zip(vision_refs[1:], samples[1:], strict=True)]
    else:
        fp32 = [_torch_greedy(pmod, dmod, e, s["prefix_ids"], s["suffix_ids"], n_tok) for e, s in zip(embeds, evals, strict=True)]
    ref_first, ref_tokens = ref
    _export(prefill, pmod, workdir, exporter, external_data)
    _export(decode, dmod, workdir, exporter, external_data)
    return {"prefill_samples": prefill.samples, "prefill_refs": prefill.refs, "prefill_path": str(prefill.path), "prefill_export": prefill.export,
            "decode_samples": decode.samples, "decode_refs": decode.refs, "decode_path": str(decode.path), "decode_export": decode.export,
            "fp32": fp32, "ref_first": ref_first, "ref_tokens": ref_tokens}


def compile_generative(
    spec: Any, be: Any, pipeline: list, *, build_pipeline: Callable[[str | None], list], weights: str | Path | None,
    wlabel: WeightsLabel, output: Path, overwrite: bool, target: str | None, options: dict[str, Any],
    fidelity: float | None, samples: list[dict[str, np.ndarray]], eval_samples: list[dict[str, np.ndarray]] | None,
    data_info: Any, exporter: str, say: Callable[[str], None], tools: dict[str, str], clock: StageClock,
    external_data: bool | None = None,
) -> Bundle:
    """Build, export, pass, bundle and check a generative model; returns the verified bundle.

    `samples` are whole-model prompts (image, prefix_ids, suffix_ids): the calibration samples and, without
    `eval_samples`, the ones fidelity is measured on."""
    import tempfile

    from edgeopt.fidelity import agreement_figure, check_threshold, output_metrics
    from edgeopt.models import get_spec
    from edgeopt.runtimes.base import CompileInput
    from edgeopt.stats import Figure

    gen = spec.generative
    vision_pipeline = build_pipeline(check_request(spec, be, pipeline, options))
    opts = {k: v for k, v in options.items() if k not in ("vision", "tokenizer")}
    evals = eval_samples or samples
    n_tok = REFERENCE_TOKENS

    with tempfile.TemporaryDirectory(prefix="edgeopt-gen-") as work:
        workdir = Path(work)
        # -- torch stages, each in a fresh process: its memory (the LLM's weights, the exporter's copies) is
        # returned to the system whole when it ends, before ONNX Runtime opens the graphs here --------------
        say(f"vision: build {gen.vision}, fp32 reference, export (child process)")
        with clock.stage("vision"):
            v = _in_child(_vision_stage, gen.vision, weights, samples, eval_samples, workdir, exporter, external_data)
        vision = _Graph("vision", get_spec(gen.vision), v["samples"], v["refs"], Path(v["path"]), v["export"])
        say(f"prefill and decode: build {gen.prefill}, fp32 references and greedy tokens, export (child process)")
        with clock.stage("llm"):
            lm = _in_child(_llm_stage, spec.name, weights, samples, vision.refs, v["embeds"], eval_samples, n_tok, workdir, exporter, external_data)
        prefill = _Graph("prefill", get_spec(gen.prefill), lm["prefill_samples"], lm["prefill_refs"], Path(lm["prefill_path"]), lm["prefill_export"])
        decode = _Graph("decode", get_spec(gen.decode), lm["decode_samples"], lm["decode_refs"], Path(lm["decode_path"]), lm["decode_export"])
        fp32, ref_first, ref_tokens = lm["fp32"], lm["ref_first"], lm["ref_tokens"]

        # -- parity and passes, graph by graph (torch is no longer holding weights) --------------------------
        # the --fidelity budget judges the whole loop's first-token logits (below), not each graph's outputs
        with clock.stage("passes"):
            _passes(vision, vision_pipeline, be, None, say)
            for g in (prefill, decode):
                _passes(g, pipeline, be, None, say)

        with write_bundle(output, overwrite=overwrite) as w:
            say(f"compile with {be.name}")
            graphs: dict[str, str] = {}
            details: dict[str, Any] = {}
            btools: dict[str, str] = {}
            with clock.stage("backend"):
                for g in (vision, prefill, decode):
                    out_dir = w.root / GRAPHS_DIR / g.role
                    out_dir.mkdir(parents=True)
                    cres = be.compile(
                        CompileInput(model_name=g.spec.name, task=g.spec.task, input_names=g.input_names, output_names=g.output_names,
                                     samples=g.samples, onnx_path=g.path, workdir=g.path.parent),
                        out_dir, target or "host", {"precision": g.precision or "fp32", **opts})
                    graphs[g.role] = f"{GRAPHS_DIR}/{g.role}/{cres.artifact}"
                    details[g.role] = {"precision": cres.precision, **cres.details}
                    btools.update(cres.tools)
            tokenizer_src = options.get("tokenizer")
            if tokenizer_src is not None:
                shutil.copyfile(tokenizer_src, w.root / TOKENIZER)
            else:
                gen.tokenizer().save(str(w.root / TOKENIZER))
            w.write_reference(samples[0], {"logits": ref_first, "tokens": np.asarray([ref_tokens], np.int64)})
            info = GenerationInfo(graphs=graphs, eos_token_id=gen.eos_token_id, tokens=[], fp32_tokens=ref_tokens,
                                  check_tokens=min(CHECK_TOKENS, n_tok), tokenizer=TOKENIZER)
            llm_precision = prefill.precision or "fp32"
            manifest = Manifest(
                model=ModelInfo(spec.name, spec.family, spec.task), weights=wlabel, backend=be.name, target=target or "host",
                precision=llm_precision, artifact=GRAPHS_DIR,
                inputs=[TensorSpec(i.name, list(i.shape), i.dtype) for i in spec.inputs],
                outputs=[TensorSpec("tokens", [1, n_tok], "int64")],
                passes=[{**r.to_dict(), "graph": g.role} for g in (vision, prefill, decode) for r in g.reports],
                export={g.role: g.export for g in (vision, prefill, decode)},
                backend_details={"graphs": details, "vision_precision": vision.precision or "fp32"},
                tools={**tools, **btools},
                samples=len(samples), data=data_info, generation=info,
            )

            # -- the artifact's own tokens on the host, against fp32 -----------------------------------------
            say("greedy tokens of the artifact")
            with clock.stage("fidelity"):
                loop = be.load_generator(w.root, manifest)
                try:
                    firsts, seqs = [], []
                    for e_s in evals:
                        logits, past = loop.first_step(loop.encode_image(e_s["image"]), e_s["prefix_ids"], e_s["suffix_ids"])
                        firsts.append(logits)
                        seqs.append(loop.greedy(logits, past, n_tok))
                    own = seqs[0] if eval_samples is None else loop.generate(
                        samples[0]["image"], samples[0]["prefix_ids"], samples[0]["suffix_ids"], max_new_tokens=n_tok)
                finally:
                    loop.close()
                refs = [{"logits": f} for f, _ in fp32]
                outs = [{"logits": f} for f in firsts]
                fid = output_metrics(refs, outs)
                agree = agreement_figure("vlm", refs, outs)
                seq = Figure.proportion("greedy_sequence_agreement", np.asarray([a == t for a, (_, t) in zip(seqs, fp32, strict=True)]))
                prefix_len = [next((i for i, (x, y) in enumerate(zip(a, t, strict=False)) if x != y), n_tok) for a, (_, t) in zip(seqs, fp32, strict=True)]
                fid.update({
                    "next_token_agreement": agree.value if agree is not None else None,
                    "greedy_sequence_agreement": seq.value,
                    "greedy_sequence": {**seq.to_json(), "steps": n_tok},
                    "matched_prefix_mean": float(np.mean(prefix_len)),
                    "evaluated_on": "data: evaluation split" if eval_samples else "bundled photographs", "n": len(evals),
                })
                if agree is not None:
                    fid["agreement"] = agree.to_json()
                manifest.fidelity = fid
                manifest.generation = replace(info, tokens=own)
            cos = fid.get("cosine", 1.0)
            if fidelity is not None and cos < fidelity:
                raise EdgeoptError(f"the {be.name} artifact broke the fidelity budget: first-token logits cosine {cos:.6f} < {fidelity}",
                                   "relax --fidelity or change precision; no bundle was written")
            manifest.check = {"cosine_min": check_threshold(cos)}
            manifest.compile_seconds = clock.report()
            w.finish(manifest)
    return load_bundle(output)
