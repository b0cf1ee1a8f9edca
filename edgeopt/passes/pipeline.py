"""Pipelines are data: `reparam,prune:ratio=0.3,quantize:int8` on the CLI, the same list in YAML.

Grammar of the string form: comma-separated items; an item `name` or `name:VALUE` (VALUE sets the pass's
shorthand option) or `name:key=value` starts a pass; a following item `key=value` (no colon) adds an
option to the pass before it. So `reparam,quantize:mode=int8,calibration=percentile` is two passes.
"""

from __future__ import annotations

import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from edgeopt.errors import EdgeoptError, SpecError
from edgeopt.passes.base import Pass, PassContext, PassReport, get_pass_class


class FidelityBudgetError(EdgeoptError):
    """A pass broke the fidelity budget; `reports` holds the pipeline's reports so far."""

    def __init__(self, message: str, hint: str, reports: list[PassReport]) -> None:
        super().__init__(message, hint)
        self.reports = reports


def _coerce(v: str) -> Any:
    low = v.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    if "|" in v:
        return [_coerce(x) for x in v.split("|")]
    return v


def parse_pipeline(spec: str | list | None) -> list[tuple[str, dict[str, Any]]]:
    """Parse a pipeline string or a YAML-style list into [(pass name, options)]."""
    if spec is None or spec == "" or spec == "none":
        return []
    if isinstance(spec, list):
        out = []
        for item in spec:
            if isinstance(item, str):
                out.extend(parse_pipeline(item))
            elif isinstance(item, dict) and len(item) == 1:
                (name, opts), = item.items()
                out.append((str(name), dict(opts or {})))
            else:
                raise SpecError(f"pipeline item {item!r} is neither 'name' nor {{name: {{options}}}}")
        return out
    out: list[tuple[str, dict[str, Any]]] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            raise SpecError(f"empty item in pipeline {spec!r}", "remove the doubled or trailing comma")
        if "=" in item and ":" not in item:
            if not out:
                raise SpecError(f"option {item!r} comes before any pass in {spec!r}", "write it as pass:key=value")
            k, v = item.split("=", 1)
            out[-1][1][k.strip()] = _coerce(v.strip())
            continue
        name, _, rest = item.partition(":")
        opts: dict[str, Any] = {}
        if rest:
            if "=" in rest:
                k, v = rest.split("=", 1)
                opts[k.strip()] = _coerce(v.strip())
            else:
                opts["__shorthand__"] = rest.strip()
        out.append((name.strip(), opts))
    return out


def make_pass(name: str, opts: dict[str, Any]) -> Pass:
    cls = get_pass_class(name)
    opts = dict(opts)
    if "__shorthand__" in opts:
        value = opts.pop("__shorthand__")
        if cls.shorthand_key is None:
            raise SpecError(f"pass {name!r} takes no shorthand value ({value!r})", f"write {name}:key=value; options: {_options(cls)}")
        opts.setdefault(cls.shorthand_key, value)
    for k, v in opts.items():  # `skip=head` is a one-item list (the string form writes lists as a|b)
        f = cls.Config.model_fields.get(k)
        if f is not None and typing.get_origin(f.annotation) is list and not isinstance(v, list):
            opts[k] = [v]
    try:
        return cls(opts)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "?"
        raise SpecError(f"pass {name!r}: option {loc}: {err['msg']}", f"valid options: {_options(cls)}") from None


def _options(cls: type[Pass]) -> str:
    parts = []
    for k, f in cls.Config.model_fields.items():
        ann = getattr(f.annotation, "__name__", str(f.annotation)).replace("typing.", "")
        parts.append(f"{k} ({ann}, default {f.default!r})")
    return "; ".join(parts) or "none"


def build_pipeline(spec: str | list | None) -> list[Pass]:
    return [make_pass(n, o) for n, o in parse_pipeline(spec)]


@dataclass
class PipelineResult:
    module: Any
    onnx_path: Path | None
    reports: list[PassReport] = field(default_factory=list)
    export: dict[str, Any] | None = None
    precision: str = "fp32"
    delegated: dict[str, dict[str, Any]] = field(default_factory=dict)
    fidelity: dict[str, float] = field(default_factory=dict)


def run_pipeline(
    passes: list[Pass],
    module: Any,
    ctx: PassContext,
    export: Callable[[Any, Path], tuple[Path, dict[str, Any]]] | None,
    evaluate_torch: Callable[[Any], list[dict[str, np.ndarray]]],
    evaluate_onnx: Callable[[Path], list[dict[str, np.ndarray]]],
    budget: float | None = None,
    delegate: tuple[str, ...] = (),
    progress: Callable[[str], None] | None = None,
) -> PipelineResult:
    """Run torch passes, export (when `export` is given), then ONNX passes; check the budget after each.

    `delegate` names passes the backend implements itself: ONNX passes in it are handed to the backend
    instead of run here (the backend compiles from torch). An ONNX pass with no export is an error.
    """
    torch_passes = [p for p in passes if p.works_on == "torch"]
    graph_passes = [p for p in passes if p.works_on == "onnx"]
    order = [p.name for p in passes]
    if order != [p.name for p in torch_passes + graph_passes]:
        raise SpecError(
            f"pipeline {','.join(order)} runs a torch pass after a graph pass",
            f"put torch passes ({', '.join(p.name for p in torch_passes)}) before graph passes ({', '.join(p.name for p in graph_passes)})",
        )
    result = PipelineResult(module=module, onnx_path=None)
    ctx.budget = budget

    def check(rep: PassReport, outs: list[dict[str, np.ndarray]]) -> None:
        rep.fidelity = ctx.fidelity(outs) if ctx.fidelity else {}
        result.reports.append(rep)
        result.fidelity = rep.fidelity
        if budget is not None and rep.fidelity.get("cosine", 1.0) < budget:
            raise FidelityBudgetError(
                f"pass {rep.name!r} broke the fidelity budget: cosine {rep.fidelity['cosine']:.6f} < {budget}",
                "relax --fidelity, change the pass options, or drop the pass; no bundle was written",
                result.reports,
            )

    def run_stage(stage: list[Pass], model: Any, evaluate: Callable[[Any], list[dict[str, np.ndarray]]]) -> Any:
        for p in stage:
            ok, why = p.applies_to(model, ctx)
            if not ok:
                raise EdgeoptError(f"pass {p.name!r} does not apply to {ctx.model_name}: {why}", "remove it from --passes")
            if progress:
                progress(f"pass {p.name}")
            t0 = time.perf_counter()
            model, rep = p.run(model, ctx)
            if p.works_on == "onnx":
                model = Path(model)
            rep.seconds = rep.seconds or time.perf_counter() - t0
            result.precision = rep.precision or result.precision
            check(rep, evaluate(model))
        return model

    result.module = run_stage(torch_passes, result.module, evaluate_torch)
    if export is None:
        for p in graph_passes:
            if p.name not in delegate:
                raise SpecError(
                    f"pass {p.name!r} works on the ONNX graph, and backend {ctx.backend!r} compiles from torch without one",
                    f"drop {p.name!r} or use a backend that takes ONNX",
                )
            result.delegated[p.name] = p.config.model_dump(mode="json")
        return result

    if progress:
        progress("export to ONNX")
    onnx_path, result.export = export(result.module, ctx.workdir / "exported.onnx")
    result.onnx_path = run_stage(graph_passes, onnx_path, evaluate_onnx)
    return result
