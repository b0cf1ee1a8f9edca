"""Bundle: a self-checking folder that carries a compiled model to a device.

    manifest.json      what it is, how it was made, sha256 of every file, fidelity
    <artifact>         model.onnx | model.so | model.tflite | model.mlpackage/
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt._util import atomic_dir, sha256_file
from edgeopt.errors import BundleError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
REFERENCE_DIR = "reference"


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


@dataclass
class Bundle:
    """A bundle on disk whose files have been checked against its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def sha256(self) -> str:
        return self.manifest["bundle_sha256"]

    @property
    def artifact(self) -> Path:
        return self.path / self.manifest["artifact"]

    @property
    def backend(self) -> str:
        return self.manifest["backend"]

    @property
    def model(self) -> str:
        return self.manifest["model"]["name"]

    def reference_inputs(self) -> dict[str, np.ndarray]:
        with np.load(self.path / REFERENCE_DIR / "inputs.npz") as z:
            return {k: z[k] for k in z.files}

    def reference_outputs(self) -> dict[str, np.ndarray]:
        with np.load(self.path / REFERENCE_DIR / "outputs.npz") as z:
            return {k: z[k] for k in z.files}

    def size_bytes(self) -> int:
        """Size of the deployable artifact (file or folder), not of the reference data."""
        a = self.artifact
        return sum(p.stat().st_size for p in a.rglob("*") if p.is_file()) if a.is_dir() else a.stat().st_size


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Open a bundle folder; with `verify`, refuse it unless every file matches its recorded sha256."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path} is not a folder", "pass the folder that `edgeopt compile -o DIR` wrote")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{path} is not a bundle: it has no {MANIFEST}", "pass the folder that `edgeopt compile -o DIR` wrote")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON ({e.msg if hasattr(e, 'msg') else e})", "recompile the bundle") from None
    for key in ("schema", "artifact", "backend", "files", "bundle_sha256", "model"):
        if key not in manifest:
            raise BundleError(f"{mpath} lacks {key!r}", "recompile the bundle with this edgeopt version")
    if manifest["schema"] > SCHEMA_VERSION:
        raise BundleError(f"bundle schema {manifest['schema']} is newer than this edgeopt's ({SCHEMA_VERSION})", "upgrade edgeopt on this machine")
    bundle = Bundle(path, manifest)
    if verify:
        verify_bundle(bundle)
    return bundle


def verify_bundle(bundle: Bundle) -> None:
    files: dict[str, str] = bundle.manifest["files"]
    for rel, want in files.items():
        p = bundle.path / rel
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

    def finish(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Hash every file, complete and write the manifest. Returns the manifest written."""
        art = self.root / manifest["artifact"]
        if not art.exists():
            raise BundleError(f"backend wrote no {manifest['artifact']}", "this is a bug in the backend")
        files = _files(self.root)
        manifest = {
            "schema": SCHEMA_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version()},
            **manifest,
            "files": files,
            "bundle_sha256": content_hash(files),
        }
        manifest["size_bytes"] = Bundle(self.root, manifest).size_bytes()
        (self.root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False, default=_json_default))
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
