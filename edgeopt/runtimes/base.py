"""Backend and Session: what every runtime implements, and the table of what each backend builds.

A backend has two halves. `compile()` runs on the host (it may import torch lazily); `load()` runs on the
device inside the runner and must need only numpy and the runtime itself. Backends register by name;
`get_backend(name)` imports only that backend's module, so a board needs only the runtime it uses.

Each backend declares the precisions it builds as `Mode`s (`Backend.modes`): how each is asked for, what
it gives, and whether `--auto` tries it. That declaration is the one capability table: `--auto`'s grid,
the capability matrix (`edgeopt.capabilities`), `check_request` and LiteRT's quantize-mode spellings are
read from it (`edgeopt.runtimes.table`). Backend modules import their runtime lazily, so reading the table
imports every backend module without needing any runtime installed.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from edgeopt._registry import Registry
from edgeopt.errors import EdgeoptError

if TYPE_CHECKING:
    from edgeopt.bundle import Manifest
    from edgeopt.llm import Generator


RUNS_ANYWHERE = "Linux, macOS, Windows, Android, arm64 boards"


@dataclass(frozen=True)
class Mode:
    """One precision a backend builds: how to ask for it, what it gives, and whether `--auto` tries it.

    `passes` and `options` are the `edgeopt.compile` arguments that build it (`passes` a pipeline string
    such as "quantize:int8", None for none). `modes` are the quantize-pass modes and `precision` option
    spellings that ask for it on a backend that implements the quantize pass itself (LiteRT, Core ML);
    where the quantize pass runs on the ONNX graph (ONNX Runtime, TVM) it is empty and unused.
    `auto_rank` is the place in `--auto`'s search order on a CPU (1 first, across all backends); None
    where `--auto` does not try this mode. `computes` names the arithmetic the artifact runs where it is not
    what `precision` says (TVM's QDQ int8 is lowered to float: "float"); `label` is what tables show.
    `repair` is (precision, quantize pipeline) that `--auto` tries next on this backend when this mode narrowly
    misses the fidelity budget (ONNX Runtime's int8: mixed precision, the most sensitive nodes kept float until
    the budget holds); the search adds the budget to the pipeline as its `target`.
    """

    precision: str
    passes: str | None
    artifact: str
    meaning: str
    options: dict[str, Any] = field(default_factory=dict)
    runs_on: str = RUNS_ANYWHERE
    modes: tuple[str, ...] = ()
    auto_rank: int | None = None
    computes: str | None = None
    repair: tuple[str, str] | None = None

    @property
    def label(self) -> str:
        return precision_label(self.precision, self.computes)


def precision_label(precision: str, computes: str | None) -> str:
    """How tables name a precision: "int8", or "int8 (computes in float)" where the artifact does not."""
    return precision if not computes else f"{precision} (computes in {computes})"


class Session(ABC):
    """A loaded model that maps named numpy inputs to named numpy outputs."""

    input_names: list[str]
    output_names: list[str]

    @abstractmethod
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        """Refuse a feed that lacks one of the model's inputs, naming what the model takes."""
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise EdgeoptError(f"inputs missing: {missing}", f"the model takes {self.input_names}")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the runtime's resources (optional)."""


@dataclass
class CompileInput:
    """What the pipeline hands a backend: the model after the passes, in the form(s) it has.

    `module` is the torch module after torch-level passes (None where only a graph exists);
    `onnx_path` is the ONNX file after graph-level passes (None for backends that compile from torch);
    `delegated` holds configs of passes this backend implements itself (e.g. LiteRT's own quantizer).
    """

    model_name: str
    task: str
    input_names: list[str]
    output_names: list[str]
    samples: list[dict[str, np.ndarray]]
    module: Any = None
    onnx_path: Path | None = None
    delegated: dict[str, dict[str, Any]] = field(default_factory=dict)
    workdir: Path | None = None


@dataclass
class CompileResult:
    """A backend's part of the manifest."""

    artifact: str
    precision: str
    target: str
    tools: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """One compiler/runtime. Subclasses set the class attributes and implement the three methods."""

    name: ClassVar[str]
    # What compile() consumes: the ONNX graph after passes, or the torch module.
    consumes: ClassVar[Literal["onnx", "torch"]] = "onnx"
    # The precisions this backend builds, in the capability matrix's column order.
    modes: ClassVar[tuple[Mode, ...]] = ()
    # Quantize modes this backend refuses, with the reason given in check_request's message.
    refusals: ClassVar[dict[str, str]] = {}
    targets: ClassVar[tuple[str, ...]] = ("host",)
    # Distributions a device must have (any one of them) to run this backend's artifacts: --auto skips the
    # backend on a device whose snapshot lists runtimes and none of these.
    device_runtimes: ClassVar[tuple[str, ...]] = ()
    # Names of passes this backend implements itself (their config is delegated to compile()).
    implements: ClassVar[tuple[str, ...]] = ()
    # True when the artifact is the pipeline's final ONNX file, run by ONNX Runtime's CPU provider with
    # the same session settings: outputs already measured on those bytes stand for the artifact's.
    runs_pipeline_onnx: ClassVar[bool] = False
    # Builds and runs generative bundles (a model's vision/prefill/decode graphs and a token loop; docs/llm.md)
    generative: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def available(cls) -> tuple[bool, str]:
        """(True, version) when usable on this machine, else (False, why and how to fix)."""

    @abstractmethod
    def compile(self, inp: CompileInput, out_dir: Path, target: str, options: dict[str, Any]) -> CompileResult:
        """Write the artifact into out_dir (a bundle folder being written)."""

    @abstractmethod
    def load(self, bundle_dir: Path, manifest: Manifest, threads: int | None = None) -> Session:
        """Open the bundle's artifact for inference (device side: no torch)."""

    def load_generator(self, bundle_dir: Path, manifest: Manifest, threads: int | None = None) -> Generator:
        """Open a generative bundle's graphs as a greedy token loop (device side, no torch)."""
        raise EdgeoptError(f"backend {self.name} runs no generative bundles", "compile the generative model for onnxruntime")

    def require(self) -> None:
        ok, why = self.available()
        if not ok:
            raise EdgeoptError(f"backend {self.name!r} is not available here: {why}")

    def check_request(self, passes: list[Any], options: dict[str, Any]) -> None:
        """Refuse, before any slow work (model build, export, passes), a request this backend cannot build.

        `passes` is the parsed pipeline (objects with `.name` and `.config`). A backend that implements the
        quantize pass itself builds only its `modes`: the pass's mode (or, without the pass, the `precision`
        option) must be one of their spellings. Where the quantize pass runs on the ONNX graph, the graph
        is what the backend compiles and the `precision` option only labels the bundle: nothing to check.
        Accuracy control (`max_drop`) keeps ONNX nodes in float; a backend's own quantizer is not told which,
        so a delegated quantize pass with `max_drop` is refused rather than built without it.
        """
        if "quantize" not in self.implements:
            return
        self.refuse_accuracy_control(passes)
        q = next((p for p in passes if p.name == "quantize"), None)
        if q is not None:
            self.mode_for(str(getattr(q.config, "mode", "int8")), "quantize mode")
        elif "precision" in options:
            self.mode_for(str(options["precision"]), "precision")

    def refuse_accuracy_control(self, passes: list[Any]) -> None:
        """A quantize pass this backend implements itself must not ask for `max_drop` (it would be ignored)."""
        q = next((p for p in passes if p.name == "quantize" and p.name in self.implements), None)
        if q is not None and getattr(q.config, "max_drop", None) is not None:
            raise EdgeoptError(f"backend {self.name} quantizes with its own quantizer, which cannot keep chosen layers in float: max_drop is not applied there",
                               "drop max_drop, or use -b onnxruntime for accuracy-controlled int8")

    @classmethod
    def get_mode(cls, precision: str) -> Mode:
        """The Mode of this backend with that precision name (a capability-matrix cell)."""
        for m in cls.modes:
            if m.precision == precision:
                return m
        raise EdgeoptError(
            f"no capability cell {cls.name}/{precision}",
            "known: " + ", ".join(f"{cls.name}/{m.precision}" for m in cls.modes),
        )

    @classmethod
    def mode_for(cls, raw: str, source: str = "quantize mode") -> Mode:
        """The Mode a quantize mode or `precision` option spelling asks for, or a one-line refusal that says
        what this backend builds. `source` names what was asked for in the message."""
        key = raw.lower()
        for m in cls.modes:
            if key in m.modes:
                return m
        why = cls.refusals.get(key, "")
        supported = ", ".join(m.precision for m in cls.modes if m.modes)
        raise EdgeoptError(
            f"{cls.name} cannot build {source} {raw!r}" + (f": {why}" if why else ""),
            f"supported on {cls.name}: {supported}; or use --backend onnxruntime for {raw!r}",
        )


def torch_converter(backend: str, module: str, extra: str, inp: CompileInput) -> Any:
    """Import the converter package a torch-consuming backend needs, and check a module was handed over.

    One place for the preamble every torch-consuming compile() shares, so the messages stay alike."""
    try:
        conv = importlib.import_module(module)
    except ImportError:
        raise EdgeoptError(f"{module} is not installed: {backend} cannot compile here", f"pip install 'edgeopt[{extra}]'") from None
    if inp.module is None:
        raise EdgeoptError(f"{backend} compiles from the torch module and none was given")
    return conv


# Options of the quantize pass (edgeopt.passes.quantize_config.QuantizeConfig) that only ONNX Runtime's
# quantizer reads, with their defaults: a backend taking the pass delegated reports any of them set to another
# value as not applied. tests/test_quantize.py checks these against the config's own defaults.
ORT_ONLY_QUANTIZE_DEFAULTS: dict[str, Any] = {
    "calibration": "minmax", "activation_type": "uint8", "weight_type": "int8", "exclude_ops": [],
    "exclude_nodes": [], "percentile": 99.999, "float_slow_ops": True,
}


def quantize_options_not_applied(qcfg: dict[str, Any], honoured: set[str]) -> dict[str, Any]:
    """The delegated quantize options a backend does not honour that differ from their defaults."""
    return {k: v for k, v in qcfg.items() if k not in honoured and ORT_ONLY_QUANTIZE_DEFAULTS.get(k, v) != v}


def dist_versions(*dists: str) -> dict[str, str]:
    """Installed versions of the given distributions (absent ones left out), for a manifest's `tools`."""
    import importlib.metadata as md

    found = {}
    for d in dists:
        try:
            found[d] = md.version(d)
        except md.PackageNotFoundError:
            pass
    return found


# name -> module under edgeopt.runtimes, in the capability matrix's column order; aliases map to the name.
BACKEND_MODULES: dict[str, str] = {
    "onnxruntime": "onnxruntime",
    "tflite": "tflite",
    "tvm": "tvm",
    "coreml": "coreml",
    "executorch": "executorch",
}
ALIASES: dict[str, str] = {"ort": "onnxruntime", "litert": "tflite"}
BACKENDS: Registry[type[Backend]] = Registry(
    "backend", lazy={name: f"edgeopt.runtimes.{mod}" for name, mod in BACKEND_MODULES.items()}, aliases=ALIASES
)


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make a Backend subclass known under its `name`."""
    return BACKENDS.register(cls.name)(cls)


def backend_names() -> list[str]:
    return BACKENDS.names()


def backend_class(name: str) -> type[Backend]:
    """The Backend subclass for a name or alias, importing only its module."""
    return BACKENDS.get(name)


def get_backend(name: str) -> Backend:
    """Instantiate a backend by name, importing only its module."""
    return backend_class(name)()
