"""Pass and PassReport: one optimization step with a typed config and an honest report.

Shape taken from Olive's pass: each pass declares a config schema and implements one `run`. A pass
works either on the torch module (`works_on = "torch"`) or on the ONNX graph (`"onnx"`, the model is a
path to an .onnx file); the pipeline runs torch passes, exports, then graph passes.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgeopt._util import closest
from edgeopt.errors import SpecError


class PassConfig(BaseModel):
    """Base of every pass config: unknown options are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class PassReport:
    """What a pass changed and what fidelity it kept (against the fp32 reference on the sample inputs)."""

    name: str
    config: dict[str, Any]
    works_on: str
    seconds: float = 0.0
    params_before: int | None = None
    params_after: int | None = None
    macs_before: int | None = None
    macs_after: int | None = None
    size_before: int | None = None
    size_after: int | None = None
    nodes_before: int | None = None
    nodes_after: int | None = None
    latency_ms_before: float | None = None
    latency_ms_after: float | None = None
    fidelity: dict[str, float] = field(default_factory=dict)
    changes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    precision: str | None = None  # set by passes that change numeric precision

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PassContext:
    """What a pass may use: the task, real samples, the fp32 reference, a scratch folder."""

    model_name: str
    task: str
    input_names: list[str]
    output_names: list[str]
    samples: list[dict[str, np.ndarray]]
    references: list[dict[str, np.ndarray]]
    workdir: Path
    backend: str = "onnxruntime"
    # fidelity(outputs) -> metrics dict; set by the pipeline from edgeopt.fidelity.task_metrics
    fidelity: Callable[[list[dict[str, np.ndarray]]], dict[str, float]] | None = None
    # the pipeline's fidelity budget (min cosine), so that a pass such as mixed precision can aim for it
    budget: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class Pass(ABC):
    name: ClassVar[str]
    works_on: ClassVar[Literal["torch", "onnx"]]
    Config: ClassVar[type[PassConfig]] = PassConfig
    # Shorthand values for `name:VALUE` (e.g. `quantize:int8`): VALUE -> the option it sets.
    shorthand_key: ClassVar[str | None] = None
    description: ClassVar[str] = ""

    def __init__(self, config: PassConfig | dict[str, Any] | None = None) -> None:
        if isinstance(config, PassConfig):
            self.config = config
        else:
            self.config = self.Config(**(config or {}))

    def applies_to(self, model: Any, ctx: PassContext) -> tuple[bool, str]:
        """(True, "") when the pass can run on this model, else (False, the reason)."""
        return True, ""

    @abstractmethod
    def run(self, model: Any, ctx: PassContext) -> tuple[Any, PassReport]:
        """Return the transformed model (never mutate the input in place) and the report."""

    def new_report(self) -> PassReport:
        return PassReport(name=self.name, config=self.config.model_dump(mode="json"), works_on=self.works_on)


_PASSES: dict[str, type[Pass]] = {}
_discovered = False


def register_pass(cls: type[Pass]) -> type[Pass]:
    _PASSES[cls.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    import edgeopt.passes as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in ("base", "pipeline") and not info.name.startswith("_"):
            importlib.import_module(f"edgeopt.passes.{info.name}")


def pass_names() -> list[str]:
    _discover()
    return sorted(_PASSES)


def get_pass_class(name: str) -> type[Pass]:
    _discover()
    if name not in _PASSES:
        near = closest(name, _PASSES)
        raise SpecError(
            f"unknown pass {name!r}",
            f"valid passes: {', '.join(sorted(_PASSES))}" + (f"; did you mean {near[0]}?" if near else ""),
        )
    return _PASSES[name]
