"""torch -> ONNX, checked against torch on the real sample inputs.

The dynamo exporter is tried first; when it fails the TorchScript exporter is used and the reason is
recorded, so a manifest always says which exporter produced its graph and why.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt._ort import data_file
from edgeopt.errors import EdgeoptError
from edgeopt.fidelity import output_metrics

OPSET = 18
TWO_GB = 2 * 1024**3
# export_onnx(external_data=None) writes external data when the module's parameters and buffers reach this.
EXTERNAL_DATA_MIN_BYTES = TWO_GB
# fp32 export must agree with torch this well (cosine of centred outputs, and max abs diff relative to
# the reference's largest magnitude); anything worse is an exporter or runtime bug, not rounding.
PARITY_MIN_COSINE = 0.9999
PARITY_REL_TOL = 1e-3


@dataclass
class ExportInfo:
    exporter: str
    opset: int
    seconds: float
    fallback_reason: str | None = None
    external_data: bool = False
    parity: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_torch_inputs(sample: dict[str, np.ndarray], names: list[str]) -> tuple:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(sample[n])) for n in names)


def torch_outputs(module, sample: dict[str, np.ndarray], input_names: list[str], output_names: list[str]) -> dict[str, np.ndarray]:
    """Run the module and name its outputs (tensor, tuple/list, or dict in output order)."""
    import torch

    with torch.inference_mode():
        out = module(*to_torch_inputs(sample, input_names))
    if isinstance(out, torch.Tensor):
        out = (out,)
    elif isinstance(out, dict):
        out = tuple(out.values())
    if len(out) != len(output_names):
        raise EdgeoptError(f"model returned {len(out)} outputs, spec names {len(output_names)}: {output_names}")
    return {n: t.detach().cpu().numpy() for n, t in zip(output_names, out, strict=True)}


def _param_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) + sum(b.numel() * b.element_size() for b in module.buffers())


def export_onnx(
    module,
    sample: dict[str, np.ndarray],
    input_names: list[str],
    output_names: list[str],
    path: Path,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    prefer: str = "dynamo",
    external_data: bool | None = None,
) -> ExportInfo:
    """Export to `path`: one self-contained ONNX file, or, with external data, `path` plus ONE data file
    `path.name + ".data"` beside it (edgeopt._ort's layout), written under temporary names and renamed into
    place (a data file left by an earlier export is removed). `external_data`: True forces external data
    (small models too), None uses it when the parameters and buffers reach EXTERNAL_DATA_MIN_BYTES (2 GiB),
    False asks for one file (the TorchScript exporter still writes external data for a graph protobuf
    cannot hold)."""
    import onnx
    import torch

    from edgeopt._ort import staged_onnx

    args = to_torch_inputs(sample, input_names)
    big = _param_bytes(module) >= EXTERNAL_DATA_MIN_BYTES if external_data is None else bool(external_data)
    t0 = time.perf_counter()
    reason = None
    exporter = prefer
    if prefer == "dynamo":
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                prog = torch.onnx.export(
                    module, args, input_names=input_names, output_names=output_names,
                    opset_version=OPSET, dynamo=True, external_data=big, optimize=True, verbose=False,
                    dynamic_shapes=_dynamic_shapes(dynamic_axes, input_names) if dynamic_axes else None,
                )
                with staged_onnx(path) as tmp:
                    prog.save(str(tmp), external_data=big)
        except Exception as e:  # noqa: BLE001 - any exporter failure triggers the fallback, recorded
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            exporter = "torchscript"
    if exporter == "torchscript":
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                _export_torchscript(module, args, path, input_names, output_names, dynamic_axes, big)
        except Exception as e:  # noqa: BLE001
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise EdgeoptError(
                f"ONNX export failed with both exporters: {msg}" + (f" (dynamo: {reason})" if reason else ""),
                "the model uses an op that ONNX cannot express; run with --debug for the trace",
            ) from e
    seconds = time.perf_counter() - t0
    model = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    return ExportInfo(exporter=exporter, opset=opset, seconds=seconds, fallback_reason=reason,
                      external_data=data_file(path).is_file())


def _export_torchscript(module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                        dynamic_axes: dict[str, dict[int, str]] | None, external: bool) -> None:
    """The TorchScript exporter into a scratch folder, then into `path` in edgeopt's layout: as exported
    when `external` is False, else with ONE data file `path.name + ".data"` (its own per-tensor files, which
    it writes above 2 GiB, merged without loading them; a self-contained graph re-saved with external data)."""
    import tempfile

    import torch

    from edgeopt._ort import copy_onnx, load_onnx, save_onnx, uses_external_data

    with tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent) as tmp:
        raw = Path(tmp) / path.name
        torch.onnx.export(
            module, args, str(raw), input_names=input_names, output_names=output_names,
            opset_version=OPSET, dynamo=False, dynamic_axes=dynamic_axes, do_constant_folding=True,
        )
        if uses_external_data(raw) or not external:
            copy_onnx(raw, path)
        else:
            save_onnx(load_onnx(raw), path, external=True)


def _dynamic_shapes(dynamic_axes: dict[str, dict[int, str]], input_names: list[str]):
    import torch

    return tuple(
        {ax: torch.export.Dim(nm) for ax, nm in dynamic_axes.get(n, {}).items()} or None for n in input_names
    )


def check_parity(
    onnx_path: Path,
    refs: list[dict[str, np.ndarray]],
    samples: list[dict[str, np.ndarray]],
    min_cosine: float = PARITY_MIN_COSINE,
    rel_tol: float = PARITY_REL_TOL,
    outs: list[dict[str, np.ndarray]] | None = None,
) -> dict[str, float]:
    """Run the ONNX file on ONNX Runtime (unless its `outs` are given) and compare with torch's outputs;
    raise when they disagree."""
    if outs is None:
        from edgeopt._ort import ort_run_all

        outs = ort_run_all(onnx_path, samples)
    m = output_metrics(refs, outs)
    scale = max(float(np.max(np.abs(r[k]))) for r in refs for k in r if np.issubdtype(r[k].dtype, np.floating)) if refs else 1.0
    m["rel_max_abs"] = m["max_abs"] / max(scale, 1e-12)
    if m["cosine"] < min_cosine or m["rel_max_abs"] > rel_tol:
        raise EdgeoptError(
            f"ONNX Runtime disagrees with torch after export: cosine {m['cosine']:.6f} (need >= {min_cosine}), "
            f"max abs diff {m['max_abs']:.3g} = {m['rel_max_abs']:.2e} of the output range (need <= {rel_tol})",
            "an op is exported or run incorrectly; try --exporter torchscript or report the model",
        )
    return m
