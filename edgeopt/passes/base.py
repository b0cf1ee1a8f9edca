"""Pass and PassReport: one optimization step with a typed config and an honest report.

Shape taken from Olive's pass: each pass declares a config schema and implements one `run`. A pass
works either on the torch module (`works_on = "torch"`) or on the ONNX graph (`"onnx"`, the model is a
path to an .onnx file); the pipeline runs torch passes, exports, then graph passes.

A config checks its own options (types, and numeric ranges with `in_range`), so a bad option fails when
the pipeline string is parsed, before any model is built. Passes register in `PASSES` by name; the
built-in ones are imported on first use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar, get_args

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

from edgeopt._registry import Registry
from edgeopt.errors import SpecError


class PassConfig(BaseModel):
    """Base of every pass config: unknown options are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


def in_range(interval: str) -> AfterValidator:
    """Range check for a numeric option, written as an interval: "(0, 1)", "(0, 1]", "[1, inf)".

    Use as `ratio: Annotated[float, in_range("(0, 1)")] = 0.3`; None passes (optional options). The
    error names the range, e.g. "must lie in (0, 1), got 1.5"."""
    lo_open, hi_open = interval[0] == "(", interval[-1] == ")"
    lo_text, hi_text = (x.strip() for x in interval[1:-1].split(","))
    lo, hi = float(lo_text), float(hi_text)
    if hi == float("inf"):
        wanted = f"must be {'above' if lo_open else 'at least'} {lo_text}"
    else:
        wanted = f"must lie in {interval}"

    def check(value: float | None) -> float | None:
        if value is None:
            return value
        above = value > lo if lo_open else value >= lo
        below = value < hi if hi_open else value <= hi
        if not (above and below):
            raise PydanticCustomError("out_of_range", "{wanted}, got {value}", {"wanted": wanted, "value": value})
        return value

    return AfterValidator(check)


@dataclass
class RecoveryReport:
    """What prune's recovery (distillation from the unpruned model, `_recover.py`) did and what it bought.

    `seconds` is the training loop alone; the fidelity figures are against the fp32 reference on
    `evaluated_on` (the evaluation split, or the calibration samples when there is none)."""

    steps: int
    batch: int
    lr: float
    temperature: float | None
    loss: str
    augment: str
    calibration_samples: int
    seconds: float
    loss_first: float
    loss_last: float
    evaluated_on: str
    fidelity_before: dict[str, float] = field(default_factory=dict)
    fidelity_after: dict[str, float] = field(default_factory=dict)


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
    recovery: RecoveryReport | None = None  # prune with recover=STEPS

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
    # the evaluation split (disjoint from `samples`, which is the calibration split); empty without --data
    eval_samples: list[dict[str, np.ndarray]] = field(default_factory=list)
    eval_references: list[dict[str, np.ndarray]] = field(default_factory=list)
    # class index per evaluation sample when the data is labelled, else None
    eval_labels: np.ndarray | None = None


ConfigT = TypeVar("ConfigT", bound=PassConfig)


class Pass(ABC, Generic[ConfigT]):
    """One step of a pipeline. A subclass names its config class once, as the type parameter
    (`class LowrankPass(TorchPass[LowrankConfig])`): that types `self.config` and sets `Config`."""

    name: ClassVar[str]
    works_on: ClassVar[Literal["torch", "onnx"]]
    Config: ClassVar[type[PassConfig]] = PassConfig
    # Shorthand values for `name:VALUE` (e.g. `quantize:int8`): VALUE -> the option it sets.
    shorthand_key: ClassVar[str | None] = None
    description: ClassVar[str] = ""
    config: ConfigT

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Config" not in cls.__dict__:
            for base in getattr(cls, "__orig_bases__", ()):
                params = [a for a in get_args(base) if isinstance(a, type) and issubclass(a, PassConfig)]
                if params:
                    cls.Config = params[0]

    def __init__(self, config: ConfigT | dict[str, Any] | None = None) -> None:
        if isinstance(config, PassConfig):
            self.config = config
        else:
            self.config = self.Config(**(config or {}))  # type: ignore[assignment]

    def applies_to(self, model: Any, ctx: PassContext) -> tuple[bool, str]:
        """(True, "") when the pass can run on this model, else (False, the reason).

        Options were checked by the config; what is left is the kind of model: a torch pass needs a torch
        module. A pass with further conditions on the model overrides this."""
        if self.works_on == "torch":
            import torch

            if not isinstance(model, torch.nn.Module):
                return False, f"{self.name} works on a torch module"
        return True, ""

    @abstractmethod
    def run(self, model: Any, ctx: PassContext) -> tuple[Any, PassReport]:
        """Return the transformed model (never mutate the input in place) and the report."""

    def new_report(self) -> PassReport:
        return PassReport(name=self.name, config=self.config.model_dump(mode="json"), works_on=self.works_on)


# The built-in passes, each imported on first use; a pass registers itself with `register_pass`.
PASSES: Registry[type[Pass]] = Registry(
    "pass",
    lazy={name: f"edgeopt.passes.{name}" for name in ("reparam", "prune", "lowrank", "quantize")},
    error=SpecError,
)


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: add a Pass subclass to `PASSES` under its `name`."""
    return PASSES.register(cls.name)(cls)


def pass_names() -> list[str]:
    return sorted(PASSES.names())


def get_pass_class(name: str) -> type[Pass]:
    """The Pass class registered as `name`; a SpecError naming the known passes when there is none."""
    return PASSES.get(name)
