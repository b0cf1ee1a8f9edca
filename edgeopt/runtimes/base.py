"""Backend and Session: what every runtime implements.

A backend has two halves. `compile()` runs on the host (it may import torch lazily); `load()` runs on the
device inside the runner and must need only numpy and the runtime itself. Backends register by name;
`get_backend(name)` imports only that backend's module, so a board needs only the runtime it uses.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from edgeopt._util import closest
from edgeopt.errors import EdgeoptError


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
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    targets: ClassVar[tuple[str, ...]] = ("host",)
    # Names of passes this backend implements itself (their config is delegated to compile()).
    implements: ClassVar[tuple[str, ...]] = ()
    # True when the artifact is the pipeline's final ONNX file, run by ONNX Runtime's CPU provider with
    # the same session settings: outputs already measured on those bytes stand for the artifact's.
    runs_pipeline_onnx: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def available(cls) -> tuple[bool, str]:
        """(True, version) when usable on this machine, else (False, why and how to fix)."""

    @abstractmethod
    def compile(self, inp: CompileInput, out_dir: Path, target: str, options: dict[str, Any]) -> CompileResult:
        """Write the artifact into out_dir (a bundle folder being written)."""

    @abstractmethod
    def load(self, bundle_dir: Path, manifest: dict[str, Any], threads: int | None = None) -> Session:
        """Open the bundle's artifact for inference (device side: no torch)."""

    def require(self) -> None:
        ok, why = self.available()
        if not ok:
            raise EdgeoptError(f"backend {self.name!r} is not available here: {why}")

    def check_request(self, passes: list[Any], options: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Refuse, before any slow work (model build, export, passes), a request this backend cannot build.

        `passes` is the parsed pipeline (objects with `.name` and `.config`); a backend that implements a pass
        itself checks that pass's config here. The default accepts everything and lets compile() decide.
        """


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


# name -> module under edgeopt.runtimes; aliases map to the canonical name.
BACKEND_MODULES: dict[str, str] = {
    "onnxruntime": "onnxruntime",
    "tvm": "tvm",
    "tflite": "tflite",
    "coreml": "coreml",
}
ALIASES = {"ort": "onnxruntime", "litert": "tflite"}
_BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    _BACKENDS[cls.name] = cls
    return cls


def backend_names() -> list[str]:
    return list(BACKEND_MODULES)


def get_backend(name: str) -> Backend:
    """Instantiate a backend by name, importing only its module."""
    canonical = ALIASES.get(name, name)
    if canonical not in BACKEND_MODULES:
        near = closest(name, list(BACKEND_MODULES) + list(ALIASES))
        raise EdgeoptError(f"unknown backend {name!r}", f"known: {', '.join(BACKEND_MODULES)}" + (f"; did you mean {near[0]}?" if near else ""))
    if canonical not in _BACKENDS:
        try:
            importlib.import_module(f"edgeopt.runtimes.{BACKEND_MODULES[canonical]}")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("edgeopt"):
                raise EdgeoptError(f"backend {canonical!r} is not part of this edgeopt build") from None
            raise
    return _BACKENDS[canonical]()
