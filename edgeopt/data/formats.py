"""What the user's data is, found from its path without decoding anything: the format, the records, the files
the content hash covers. Every layout error is found here, before any slow work.

Layouts (`LAYOUTS`):
- a folder with class subfolders: labelled; classes in sorted folder-name order are output indices 0..K-1
  (torchvision's ImageFolder convention), unless `--labels FILE` maps folder names to indices;
- a folder of images without subfolders: unlabelled (agreement with fp32 only);
- a COCO detection set: an instances JSON (`images`, `annotations`, `categories`) given as the path, or in the
  folder (`instances*.json` at the top level, or in `annotations/`), with its images beside it (`images/`, the JSON's own folder, or a
  folder named like the JSON's split, e.g. `val2017/`);
- a `.jsonl` file of prompts: one JSON object per line, `{"prompt": "...", "image": "optional/relative.jpg"}`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeopt.errors import EdgeoptError

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
LAYOUTS = ("a folder of images (class subfolders: labelled, ImageFolder order; flat: unlabelled), "
           "a COCO set (instances JSON + image folder) or a .jsonl of prompts")
Format = Literal["image_folder", "image_folder_unlabelled", "coco", "prompts"]
# progress(label, done, total): how the data layer reports streaming work
Progress = Callable[[str, int, int], None]


class DataError(EdgeoptError):
    """The user's data cannot be used as given (layout, a bad file, a bad line)."""


@dataclass(frozen=True)
class DataRequest:
    """What the user asked for: the data's path, an optional label mapping and the split sizes."""

    path: Path
    labels: Path | None = None
    calib_samples: int = 128
    eval_samples: int = 512
    skip_bad_images: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.calib_samples < 1 or self.eval_samples < 1:
            raise DataError(f"split sizes must be at least 1 (calibration {self.calib_samples}, evaluation {self.eval_samples})",
                            "pass --calib-samples N and --eval-samples N with N >= 1")

    @classmethod
    def of(cls, data: str | Path | DataRequest | None, **kwargs: Any) -> DataRequest | None:
        """A request from a path (plus keyword options) or an existing request; None stays None."""
        if data is None or isinstance(data, DataRequest):
            return data
        lab = kwargs.pop("labels", None)
        return cls(Path(data), Path(lab) if lab is not None else None, **{k: v for k, v in kwargs.items() if v is not None})


@dataclass(frozen=True)
class Record:
    """One sample on disk: an image and/or a prompt, its class index when labelled, its COCO image id."""

    image: Path | None = None
    label: int | None = None
    prompt: str | None = None
    image_id: int | None = None
    line: int | None = None  # line number in a prompts file


@dataclass
class Catalog:
    """What a scan found: the format, the records, every file the content hash covers, the classes."""

    format: Format
    root: Path
    records: list[Record]
    files: list[Path]
    class_names: list[str] | None = None
    coco: dict[str, Any] | None = None  # the parsed instances JSON (COCO sets)
    category_ids: list[int] = field(default_factory=list)  # COCO: class index i -> category id
    source: Path | None = None  # the path the user gave (a folder, an instances JSON, a prompts file)

    @property
    def labelled(self) -> bool:
        return self.format in ("image_folder", "coco")

    @property
    def num_classes(self) -> int | None:
        if self.format == "coco":
            return len(self.category_ids)
        return len(self.class_names) if self.class_names is not None else None


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_image(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def scan(req: DataRequest) -> Catalog:
    """Detect the format of `req.path` and list its records; a clear one-line error when no layout fits."""
    cat = _scan(req)
    cat.source = req.path
    return cat


def _scan(req: DataRequest) -> Catalog:
    path = req.path
    if not path.exists():
        raise DataError(f"--data {path} does not exist", f"pass {LAYOUTS}")
    if path.is_file():
        if path.suffix.lower() == ".jsonl":
            return _scan_prompts(path)
        if path.suffix.lower() == ".json":
            return _scan_coco(path, path.parent)
        raise DataError(f"--data {path} is a file of a kind edgeopt does not read", f"pass {LAYOUTS}")
    coco = _find_coco_json(path)
    if coco is not None:
        return _scan_coco(coco, path)
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    top = sorted(p for p in path.iterdir() if _is_image(p))
    if subdirs and any(_images_under(d) for d in subdirs):
        if top:
            raise DataError(f"--data {path} has both images at its top ({top[0].name}, ...) and class subfolders",
                            "put every image in its class folder (labelled) or use a flat folder (unlabelled)")
        return _scan_labelled(path, subdirs, req.labels)
    if top:
        if req.labels is not None:
            raise DataError(f"--labels was given but {path} has no class subfolders", "put the images in one folder per class, or drop --labels")
        return Catalog("image_folder_unlabelled", path, [Record(image=p) for p in top], list(top))
    raise DataError(f"--data {path} holds no images", f"expected {LAYOUTS}")


def _read_label_map(path: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Folder name -> class index, and folder name -> human name, from --labels: a JSON object
    {folder: index}, a JSON list of folder names, or text lines `folder [human name, synonyms]` (line i -> i)."""
    if not path.is_file():
        raise DataError(f"--labels {path} does not exist", "pass a text file with one class folder name per line, in output order")
    text = path.read_text(errors="replace")
    if path.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"--labels {path} is not valid JSON (line {e.lineno}: {e.msg})", "give {\"folder\": index} or a list of folder names") from None
        if isinstance(obj, list) and all(isinstance(x, str) for x in obj):
            return {n: i for i, n in enumerate(obj)}, {}
        if isinstance(obj, dict) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in obj.values()):
            return {str(k): int(v) for k, v in obj.items()}, {}
        raise DataError(f"--labels {path} is neither {{folder: index}} nor a list of folder names", "fix the file")
    mapping, names = {}, {}
    for line in (ln.strip() for ln in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        folder, _, human = line.partition(" ")
        mapping[folder] = len(mapping)
        if human.strip():
            names[folder] = human.split(",")[0].strip()
    if not mapping:
        raise DataError(f"--labels {path} names no class", "one class folder name per line, in output order")
    return mapping, names


def _scan_labelled(root: Path, subdirs: list[Path], labels: Path | None) -> Catalog:
    folders = [d.name for d in subdirs]
    human: dict[str, str] = {}
    if labels is not None:
        mapping, human = _read_label_map(labels)
        missing = [f for f in folders if f not in mapping]
        if missing:
            raise DataError(f"--labels {labels} does not map {len(missing)} class folder(s): {', '.join(missing[:5])}",
                            "add them to the file, or remove those folders")
    else:
        mapping = {f: i for i, f in enumerate(folders)}
    records, files = [], []
    for d in subdirs:
        for p in _images_under(d):
            records.append(Record(image=p, label=mapping[d.name]))
            files.append(p)
    if not records:
        raise DataError(f"--data {root} has class folders but no images in them", f"expected {LAYOUTS}")
    k = max(mapping.values()) + 1
    by_index = {i: f for f, i in mapping.items()}
    class_names = [human.get(by_index.get(i, ""), by_index.get(i, f"class {i}")).replace("_", " ") for i in range(k)]
    return Catalog("image_folder", root, records, files + ([labels] if labels is not None else []), class_names)


def _find_coco_json(folder: Path) -> Path | None:
    """The instances JSON of a COCO folder: `instances*.json` at the top, or the JSON(s) in `annotations/` (another
    JSON at the top, e.g. a --labels file kept with the images, is not taken for annotations)."""
    ann = sorted((folder / "annotations").glob("*.json")) if (folder / "annotations").is_dir() else []
    cands = sorted(folder.glob("instances*.json")) + ann
    inst = [p for p in cands if p.name.startswith("instances")] or cands
    if not inst:
        return None
    if len(inst) > 1:
        raise DataError(f"--data {folder} holds {len(inst)} annotation JSON files ({', '.join(p.name for p in inst[:3])})",
                        "pass the instances JSON you mean as --data")
    return inst[0]


def _scan_coco(js: Path, root: Path) -> Catalog:
    hint = "a COCO instances JSON has 'images' [{id, file_name}], 'annotations' [{image_id, category_id, bbox}] and 'categories' [{id, name}]"
    try:
        d = json.loads(js.read_text(errors="replace"))
    except json.JSONDecodeError as e:
        raise DataError(f"COCO annotations {js} are malformed JSON (line {e.lineno}: {e.msg})", hint) from None
    if not isinstance(d, dict) or not all(isinstance(d.get(k), list) for k in ("images", "annotations", "categories")):
        raise DataError(f"COCO annotations {js} lack 'images', 'annotations' or 'categories' lists", hint)
    try:
        images = {int(im["id"]): str(im["file_name"]) for im in d["images"]}
        cats = sorted({int(c["id"]) for c in d["categories"]})
        for i, a in enumerate(d["annotations"]):
            if int(a["image_id"]) not in images or int(a["category_id"]) not in cats or len(a["bbox"]) != 4:
                raise DataError(f"COCO annotations {js}: annotation {i} names an unknown image or category, or its bbox is not [x, y, w, h]", hint)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"COCO annotations {js} are malformed ({type(e).__name__}: {e})", hint) from None
    if not images:
        raise DataError(f"COCO annotations {js} list no images", hint)
    folder = _coco_image_dir(js, root, next(iter(images.values())))
    missing = [f for f in images.values() if not (folder / f).is_file()]
    if missing:
        raise DataError(f"COCO annotations {js} name {len(missing)} image(s) missing from {folder}: {', '.join(missing[:3])}",
                        "copy the images beside the JSON (images/ or the split's folder) or remove them from the JSON")
    records = [Record(image=folder / f, image_id=i) for i, f in sorted(images.items())]
    return Catalog("coco", root, records, [js, *(r.image for r in records if r.image is not None)],
                   class_names=[next(str(c.get("name", c["id"])) for c in d["categories"] if int(c["id"]) == cid) for cid in cats],
                   coco=d, category_ids=cats)


def _coco_image_dir(js: Path, root: Path, first: str) -> Path:
    split = js.stem.replace("instances_", "")
    for cand in (root / "images", root, root / split, js.parent, js.parent.parent / "images", js.parent.parent / split, js.parent / "images"):
        if (cand / first).is_file():
            return cand
    raise DataError(f"COCO annotations {js}: image {first} is in none of images/, {root}, {split}/",
                    "put the images in images/ beside the JSON, or in a folder named like the split")


def _scan_prompts(path: Path) -> Catalog:
    hint = 'each line is a JSON object {"prompt": "...", "image": "optional/path.jpg"} (the image path relative to the file)'
    records, files = [], [path]
    for no, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"prompts file {path}, line {no}: not JSON ({e.msg})", hint) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
            raise DataError(f"prompts file {path}, line {no}: no \"prompt\" string", hint)
        img = obj.get("image")
        if img is not None:
            if not isinstance(img, str):
                raise DataError(f"prompts file {path}, line {no}: \"image\" is not a path", hint)
            p = (path.parent / img) if not Path(img).is_absolute() else Path(img)
            if not p.is_file():
                raise DataError(f"prompts file {path}, line {no}: image {img} does not exist", hint)
            files.append(p)
            img = p
        records.append(Record(image=img, prompt=obj["prompt"], line=no))
    if not records:
        raise DataError(f"prompts file {path} holds no prompts", hint)
    return Catalog("prompts", path.parent, records, files)


def content_sha256(files: list[Path], root: Path, progress: Progress | None = None, chunk: int = 1 << 20) -> str:
    """sha256 over every file's name (relative to root, POSIX) and bytes, in sorted order, streamed in chunks."""
    h = hashlib.sha256()
    uniq = sorted(set(files), key=lambda p: _rel(p, root))
    for i, p in enumerate(uniq):
        h.update(_rel(p, root).encode() + b"\0")
        try:
            with open(p, "rb") as f:
                while block := f.read(chunk):
                    h.update(block)
        except OSError as e:
            raise DataError(f"cannot read {p}: {e.strerror or e}", "fix its permissions or remove it from the data") from None
        h.update(b"\0")
        if progress is not None and (i % 64 == 0 or i + 1 == len(uniq)):
            progress("hash data", i + 1, len(uniq))
    return h.hexdigest()


def _rel(p: Path, root: Path) -> str:
    try:
        return p.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return p.name


def choose_splits(n: int, calib: int, evaluation: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded, disjoint (calibration, evaluation, reserve) index arrays over n records.

    When the data holds fewer than calib + evaluation records, both shrink in proportion (each at least 1);
    the reserve (the rest, in the same seeded order) replaces images skipped as unreadable."""
    if n < 2:
        raise DataError(f"the data holds {n} usable sample(s); edgeopt needs at least 2 (one to calibrate, one to evaluate)",
                        "add samples to the data")
    order = np.random.default_rng(seed).permutation(n)
    if n < calib + evaluation:
        c = int(min(calib, max(1, round(n * calib / (calib + evaluation)))))
        c = min(c, n - 1)
        e = min(evaluation, n - c)
    else:
        c, e = calib, evaluation
    return order[:c], order[c : c + e], order[c + e :]
