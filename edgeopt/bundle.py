"""Bundle: a self-checking folder that carries a compiled model to a device.

    manifest.json      what it is, how it was made, sha256 of every file, fidelity
    <artifact>         model.onnx | model.so | model.tflite | model.mlpackage/ | llm/ (a generative bundle's graphs)
    tokenizer.json     a generative bundle's tokenizer
    reference/         inputs.npz (sample inputs) and outputs.npz (fp32 torch outputs), keyed by graph names

Device-side code reads bundles, so this module needs only the standard library and numpy.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt._ort import data_file
from edgeopt._util import atomic_dir, sha256_file
from edgeopt.errors import BundleError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 2  # 2: written from the typed Manifest; the JSON layout of 1 is unchanged, so both load
REFERENCE_DIR = "reference"
DEFAULT_COSINE_MIN = 0.999


def _files(root: Path) -> dict[str, str]:
    """sha256 of every file under root except the manifest, keyed by POSIX relative path."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(root).as_posix()] = sha256_file(p)
    return out


def content_hash(files: dict[str, str]) -> str:
    """The bundle's identity: a hash over its files' hashes (names included)."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str | None = None
    task: str = "classification"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: list[Any]
    dtype: str


@dataclass(frozen=True)
class WeightsLabel:
    """The weights every fidelity figure was measured on: `kind` (random, calibrated, checkpoint, ...) and
    what identifies them (a checkpoint's path and sha256, a seed, a note)."""

    kind: str
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, value: WeightsLabel | dict[str, Any]) -> WeightsLabel:
        if isinstance(value, WeightsLabel):
            return value
        d = dict(value)
        return cls(str(d.pop("kind")), d)

    @property
    def sha256(self) -> str | None:
        return self.details.get("sha256")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.details}


@dataclass(frozen=True)
class DataInfo:
    """The user's data a bundle was calibrated and gated on (`compile --data`): its format, a sha256 over its
    files' names and bytes, and the size of each split. `path`, `classes` and `skipped` are informative."""

    format: str
    sha256: str
    calibration: int
    evaluation: int
    path: str | None = None
    classes: int | None = None
    skipped: int = 0

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": self.format, "sha256": self.sha256, "calibration": self.calibration, "evaluation": self.evaluation}
        for k in ("path", "classes"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.skipped:
            d["skipped"] = self.skipped
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> DataInfo | None:
        if d is None:
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class GenerationInfo:
    """What makes a bundle generative: its graphs by role (`vision`, `prefill`, `decode`: files in the
    bundle), the tokenizer file, the end-of-sequence id, and the reference prompt's greedy tokens.

    The reference prompt is the bundle's reference inputs (image, prefix_ids, suffix_ids). `fp32_tokens` are
    torch fp32's greedy tokens on it, `tokens` the artifact's own on the host; a device must reproduce the
    first `check_tokens` of `tokens` (the device-side check of a generative bundle)."""

    graphs: dict[str, str]
    eos_token_id: int
    tokens: list[int]
    fp32_tokens: list[int]
    check_tokens: int
    tokenizer: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any] | None, where: str = "manifest") -> GenerationInfo | None:
        if d is None:
            return None
        known = {f.name for f in fields(cls)}
        try:
            g = cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as e:
            raise BundleError(f"{where}: 'generation' is malformed: {e}", "recompile the bundle with this edgeopt version") from None
        for name in [*g.graphs.values(), *([g.tokenizer] if g.tokenizer else [])]:
            check_member_name(name, where)
        return g


@dataclass
class Manifest:
    """What a bundle is, how it was made, the sha256 of every file and the fidelity it kept.

    Written and read here only (`to_json` / `from_json`); every other module reads attributes. Keys this
    version does not know (a newer minor addition, a tool's own notes) are kept in `extra` and written back."""

    model: ModelInfo
    weights: WeightsLabel
    backend: str
    target: str
    precision: str | None
    artifact: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    passes: list[dict[str, Any]] = field(default_factory=list)  # each pass's report (PassReport.to_dict())
    delegated_passes: dict[str, dict[str, Any]] = field(default_factory=dict)
    export: dict[str, Any] | None = None
    backend_details: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    compile_seconds: dict[str, float | None] = field(default_factory=dict)
    samples: int = 0
    # cosine, snr_db, the task's agreement figures (floats); `agreement` and, with labelled data, `accuracy`:
    # {"metric", ..., "n", "ci95"}; `evaluated_on` and `n`: what the figures were measured on; `gate`
    fidelity: dict[str, Any] = field(default_factory=dict)
    fidelity_note: str | None = None
    data: DataInfo | None = None  # the user's data (compile --data), None: the bundled photographs
    check: dict[str, float] = field(default_factory=dict)  # cosine_min: what a device must reach on the reference
    preprocess: dict[str, Any] | None = None  # end-to-end preprocessing overrides (mean, std, crop_pct)
    auto: dict[str, Any] | None = None  # the --auto search that picked this artifact
    generation: GenerationInfo | None = None  # a generative bundle's graphs, tokenizer and reference tokens
    # -- completed by BundleWriter.finish --
    schema: int = SCHEMA_VERSION
    created: str = ""
    host: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    bundle_sha256: str = ""
    size_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cosine_min(self) -> float:
        return float(self.check.get("cosine_min", DEFAULT_COSINE_MIN))

    @property
    def pass_names(self) -> list[str]:
        return [p["name"] for p in self.passes]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema": self.schema, "created": self.created, "host": self.host,
            "model": asdict(self.model), "weights": self.weights.to_json(),
            "backend": self.backend, "target": self.target, "precision": self.precision, "artifact": self.artifact,
            "inputs": [asdict(t) for t in self.inputs], "outputs": [asdict(t) for t in self.outputs],
            "passes": self.passes, "delegated_passes": self.delegated_passes, "export": self.export,
            "backend_details": self.backend_details, "tools": self.tools, "compile_seconds": self.compile_seconds,
            "samples": self.samples, "fidelity": self.fidelity,
            "data": self.data.to_json() if self.data is not None else None,
        }
        for k in ("fidelity_note", "preprocess", "auto"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.generation is not None:
            d["generation"] = self.generation.to_json()
        d["check"] = self.check
        d.update(self.extra)
        d.update({"files": self.files, "bundle_sha256": self.bundle_sha256, "size_bytes": self.size_bytes})
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str = "manifest") -> Manifest:
        for key in ("schema", "artifact", "backend", "files", "bundle_sha256", "model"):
            if key not in d:
                raise BundleError(f"{where} lacks {key!r}", "recompile the bundle with this edgeopt version")
        if d["schema"] > SCHEMA_VERSION:
            raise BundleError(f"bundle schema {d['schema']} is newer than this edgeopt's ({SCHEMA_VERSION})", "upgrade edgeopt on this machine")
        if not isinstance(d["files"], dict):
            raise BundleError(f"{where}: 'files' is not a mapping of file name to sha256", "recompile the bundle")
        for name in (*d["files"], d["artifact"]):
            check_member_name(name, where)
        known = {f.name for f in fields(cls)} - {"extra"}
        try:
            return cls(
                model=ModelInfo(**d["model"]),
                weights=WeightsLabel.of(d.get("weights") or {"kind": "unknown"}),
                inputs=[TensorSpec(**t) for t in d.get("inputs", [])],
                outputs=[TensorSpec(**t) for t in d.get("outputs", [])],
                target=d.get("target", "host"),
                precision=d.get("precision"),
                data=DataInfo.from_json(d.get("data")),
                generation=GenerationInfo.from_json(d.get("generation"), where),
                **{k: d[k] for k in known - {"model", "weights", "inputs", "outputs", "target", "precision", "data", "generation"}
                   if k in d and d[k] is not None},
                extra={k: v for k, v in d.items() if k not in known},
            )
        except TypeError as e:
            raise BundleError(f"{where} is malformed: {e}", "recompile the bundle with this edgeopt version") from None

    @classmethod
    def draft(cls, d: dict[str, Any]) -> Manifest:
        """A manifest for BundleWriter.finish to complete (hashes, sizes, dates), from its JSON fields: for
        tools and tests that assemble a bundle by hand."""
        return cls.from_json({"schema": SCHEMA_VERSION, "files": {}, "bundle_sha256": "", **d}, "draft manifest")

    # The JSON view, for code written against the dict the Python API returned before the manifest was typed.
    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_json().get(key, default)


@dataclass
class Bundle:
    """A bundle on disk whose files have been checked against its manifest."""

    path: Path
    manifest: Manifest

    @property
    def sha256(self) -> str:
        return self.manifest.bundle_sha256

    @property
    def artifact(self) -> Path:
        return self.path / self.manifest.artifact

    @property
    def backend(self) -> str:
        return self.manifest.backend

    @property
    def generative(self) -> bool:
        return self.manifest.generation is not None

    @property
    def model(self) -> str:
        return self.manifest.model.name

    def reference_inputs(self) -> dict[str, np.ndarray]:
        with np.load(self.path / REFERENCE_DIR / "inputs.npz") as z:
            return {k: z[k] for k in z.files}

    def reference_outputs(self) -> dict[str, np.ndarray]:
        with np.load(self.path / REFERENCE_DIR / "outputs.npz") as z:
            return {k: z[k] for k in z.files}

    def size_bytes(self) -> int:
        """Size of the deployable artifact (file or folder), not of the reference data."""
        return artifact_size(self.artifact)


def artifact_size(a: Path) -> int:
    """Bytes of an artifact folder's files, or of an artifact file plus its external data file
    (`<artifact>.data` beside it, as an ONNX graph with external data has)."""
    if a.is_dir():
        return sum(p.stat().st_size for p in a.rglob("*") if p.is_file())
    data = data_file(a)
    return a.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def read_manifest(path: str | Path) -> Manifest:
    """The manifest of a bundle folder, without checking its files (see load_bundle for that)."""
    mpath = Path(path) / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{path} is not a bundle: it has no {MANIFEST}", "pass the folder that `edgeopt compile -o DIR` wrote")
    try:
        d = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON ({e.msg if hasattr(e, 'msg') else e})", "recompile the bundle") from None
    if not isinstance(d, dict):
        raise BundleError(f"{mpath} is not a manifest (a JSON object)", "recompile the bundle")
    return Manifest.from_json(d, str(mpath))


def write_manifest(folder: Path, manifest: Manifest) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=False, default=_json_default))


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Open a bundle folder; with `verify`, refuse it unless every file matches its recorded sha256."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path} is not a folder", "pass the folder that `edgeopt compile -o DIR` wrote")
    bundle = Bundle(path, read_manifest(path))
    if verify:
        verify_bundle(bundle)
    return bundle


def check_member_name(name: Any, where: str) -> None:
    """Refuse a file name from a manifest unless it is a relative path inside the bundle: no absolute
    path, no `..`, no drive or backslash tricks. (Symbolic links are checked on disk, in verify_bundle.)"""
    from pathlib import PurePosixPath

    ok = isinstance(name, str) and name and "\\" not in name and "\x00" not in name
    pp = PurePosixPath(name) if ok else None
    if not ok or pp is None or pp.is_absolute() or ".." in pp.parts or name.startswith("~") or ":" in pp.parts[0]:
        raise BundleError(f"{where} names the file {name!r}, which is not a relative path inside the bundle",
                          "a bundle's manifest may only name files inside its folder; recompile it, and do not run bundles from untrusted sources")


def verify_bundle(bundle: Bundle) -> None:
    files = bundle.manifest.files
    root = bundle.path.resolve()
    for rel, want in files.items():
        p = bundle.path / rel
        if p.is_symlink() or not p.resolve().is_relative_to(root):
            raise BundleError(f"bundle {bundle.path}: {rel} is a symbolic link or leads outside the bundle",
                              "a bundle holds plain files only; copy it again with links resolved (cp -rL) or recompile")
        if not p.is_file():
            raise BundleError(f"bundle {bundle.path} is incomplete: {rel} is missing", "copy the whole folder again or recompile")
        got = sha256_file(p)
        if got != want:
            raise BundleError(
                f"bundle {bundle.path}: sha256 of {rel} is {got[:12]}..., manifest says {want[:12]}...",
                "the file was altered or truncated in transit; copy it again or recompile",
            )
    if content_hash(files) != bundle.sha256:
        raise BundleError(f"bundle {bundle.path}: manifest file list does not match its bundle_sha256", "recompile the bundle")


@contextmanager
def write_bundle(final: str | Path, overwrite: bool = False) -> Iterator[BundleWriter]:
    """Write a bundle into a temporary folder and rename it into place only when complete."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise BundleError(f"{final} already exists", "choose another -o folder or pass --overwrite")
    with atomic_dir(final, overwrite=overwrite) as tmp:
        writer = BundleWriter(tmp)
        yield writer
        if not writer.finished:
            raise RuntimeError("write_bundle: finish() was not called")


class BundleWriter:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.finished = False
        (root / REFERENCE_DIR).mkdir()

    def write_reference(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        np.savez(self.root / REFERENCE_DIR / "inputs.npz", **inputs)
        np.savez(self.root / REFERENCE_DIR / "outputs.npz", **outputs)

    def finish(self, manifest: Manifest) -> Manifest:
        """Hash every file, complete and write the manifest. Returns the manifest written."""
        art = self.root / manifest.artifact
        if not art.exists():
            raise BundleError(f"backend wrote no {manifest.artifact}", "this is a bug in the backend")
        files = _files(self.root)
        manifest.schema = SCHEMA_VERSION
        manifest.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest.host = {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version()}
        manifest.files = files
        manifest.bundle_sha256 = content_hash(files)
        manifest.size_bytes = artifact_size(art)
        write_manifest(self.root, manifest)
        self.finished = True
        return manifest


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, set | tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
