"""The model registry: one `ModelSpec` per named variant, filled by the family modules themselves.

A family module (one file per family, as in timm) calls `register(ModelSpec(...))` at import time;
`edgeopt.models` imports every module in this package, so adding a file is all it takes to add a family.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeopt._registry import Registry
from edgeopt._util import closest
from edgeopt.errors import EdgeoptError

if TYPE_CHECKING:  # torch is imported lazily so `edgeopt models` stays fast
    import numpy as np
    import torch

TASKS = ("classification", "clip", "detection", "vlm", "light_field", "language_model", "embedding")


@dataclass(frozen=True)
class InputSpec:
    """One graph input. `dynamic_axes` maps axis index -> symbolic name (e.g. {0: "batch"})."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    dynamic_axes: Mapping[int, str] = field(default_factory=dict)


RANDOM_INIT_SEED = 0  # ModelSpec.build's seed for a random init


@dataclass(frozen=True)
class PaperFigures:
    """What the paper (or the official README) reports, to compare with what we count.

    `macs_g` is multiply-accumulates in G; where a paper says FLOPs but means MACs, `note` says so.
    """

    params_m: float | None = None
    macs_g: float | None = None
    resolution: tuple[int, ...] | None = None
    source: str = ""
    note: str = ""
    # how the paper counts MACs (see edgeopt/models/counting.py): "flop_counter" or "ultralytics"
    macs_convention: str = "flop_counter"


@dataclass(frozen=True)
class Generative:
    """How a model generates on a device: the split graphs an on-device loop runs, named by their specs
    (`vision`: image -> image tokens; `prefill`: prompt + image tokens -> first logits + KV cache; `decode`:
    one token + KV cache -> logits + grown cache), the end-of-sequence id and the tokenizer to ship with it.

    `tokenizer()` returns a `tokenizers.Tokenizer` (for random weights a small BPE trained on the spec's
    captions; for real weights the user passes the model's own tokenizer.json). `decode_from_prefill(part)`
    makes the decode part on the built prefill part's weights (the two graphs share the LLM)."""

    vision: str
    prefill: str
    decode: str
    eos_token_id: int
    tokenizer: Callable[[], Any]
    decode_from_prefill: Callable[[Any], Any]
    max_positions: int = 2048


@dataclass
class ModelSpec:
    """Everything edgeopt knows about one named variant.

    builder(**kwargs) returns a randomly initialised torch module (kwargs such as device="meta").
    sample_inputs(n) returns n real samples, each a dict input-name -> numpy array of the input's shape.
    load_checkpoint(module, path) loads an official or timm checkpoint into the module (strict, with a
    clear error on a mismatch); None means the family cannot load checkpoints yet.
    `generative`: set on a model that generates token by token; compiling it gives a generative bundle (its
    split graphs, tokenizer and reference tokens; docs/llm.md) instead of one graph.
    """

    name: str
    family: str
    task: str
    builder: Callable[..., torch.nn.Module]
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    sample_inputs: Callable[[int], list[dict[str, np.ndarray]]]
    paper: PaperFigures = field(default_factory=PaperFigures)
    load_checkpoint: Callable[[torch.nn.Module, Path], None] | None = None
    description: str = ""
    # Free-form extras a task needs (class names for classification, prompts for CLIP, ...).
    extras: dict[str, Any] = field(default_factory=dict)
    generative: Generative | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"{self.name}: unknown task {self.task!r}; known: {', '.join(TASKS)}")

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]] | None:
        """The exporter's dynamic axes by input name (`export_onnx(dynamic_axes=)`), None when all are static."""
        return {i.name: dict(i.dynamic_axes) for i in self.inputs if i.dynamic_axes} or None

    def build(self, weights: str | Path | None = None, device: str = "cpu", init_seed: int | None = RANDOM_INIT_SEED,
              **kwargs: Any) -> torch.nn.Module:
        """Build the module in eval mode; load `weights` (a local file) when given.

        Without weights the random init draws from torch's generator seeded with `init_seed` (restored after),
        so one model always gets the same random weights and two compiles of it the same artifact; None draws
        from the global generator as it stands (a caller that seeds it itself)."""
        import torch

        def make() -> torch.nn.Module:
            return self.builder(device=device, **kwargs) if device != "cpu" else self.builder(**kwargs)

        if weights is None and init_seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)
                module = make()
        else:
            module = make()
        module.eval()
        if weights is not None:
            if self.load_checkpoint is None:
                raise EdgeoptError(f"{self.name} cannot load checkpoints yet", "build it without --weights")
            self.load_checkpoint(module, Path(weights))
        return module


MODELS: Registry[ModelSpec] = Registry("model")
# The registered specs by name, live (tests/_tiny.py reads it to register a test model once).
_REGISTRY: dict[str, ModelSpec] = MODELS._entries


def register(spec: ModelSpec) -> ModelSpec:
    """Add a variant; a family module calls this at import time for each of its variants."""
    return MODELS.register(spec.name)(spec)


# Modules of this package that are not model families.
_HELPERS = {"registry", "inputs", "checkpoints", "counting"}
_discovered = False


def _discover() -> None:
    """Import every family module of edgeopt.models once (each registers its variants on import)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name not in _HELPERS and not info.name.startswith("_"):
            importlib.import_module(f"edgeopt.models.{info.name}")


def get_spec(name: str) -> ModelSpec:
    _discover()
    if name not in MODELS:
        # the zoo is too long to list in one line: suggest the closest names instead
        near = closest(name, MODELS.names())
        hint = f"did you mean {', '.join(near)}?" if near else "run `edgeopt models` for the list"
        raise EdgeoptError(f"unknown model {name!r}", hint)
    return MODELS.get(name)


def all_specs() -> list[ModelSpec]:
    _discover()
    return sorted(MODELS.loaded().values(), key=lambda s: (s.family, s.name))
