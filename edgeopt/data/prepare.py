"""The user's data as model inputs: each model's own preprocessing, the splits decoded from disk in batches.

Preprocessing is the model's: timm's eval transform (resize, centre crop, mean/std from the model's data config,
as `ModelSpec.extras` records it) for classifiers, MobileCLIP's own config for its image encoder, LeYOLO's
letterbox, TinyGPT-V's BLIP-2 transform and prompt template. Images are decoded batch by batch; only the two
splits are held (so memory depends on --calib-samples/--eval-samples, never on the folder's size).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeopt.bundle import DataInfo
from edgeopt.data.formats import (
    Catalog,
    DataError,
    DataRequest,
    Progress,
    Record,
    choose_splits,
    content_sha256,
    scan,
)

if TYPE_CHECKING:
    from edgeopt.models.registry import ModelSpec

BATCH = 32
GREY = 128  # the image a prompt without one is asked about: mid-grey


@dataclass
class Split:
    """One split: its records, their model inputs, labels (class index or -1) and per-image letterbox metadata."""

    name: str
    records: list[Record]
    samples: list[dict[str, np.ndarray]] = field(default_factory=list)
    meta: list[dict[str, float]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray | None:
        if not self.records or self.records[0].label is None:
            return None
        return np.asarray([r.label for r in self.records], np.int64)


@dataclass
class Dataset:
    """The user's data prepared for one model: the catalog it came from, its hash, the two splits."""

    catalog: Catalog
    sha256: str
    calibration: Split
    evaluation: Split
    skipped: list[str] = field(default_factory=list)
    kind: str = ""  # the preprocessing used (classifier, clip, clip_text, detection, vlm)

    @property
    def format(self) -> str:
        return self.catalog.format

    @property
    def info(self) -> DataInfo:
        src = self.catalog.source or self.catalog.root
        return DataInfo(self.format, self.sha256, len(self.calibration), len(self.evaluation), str(src.resolve()),
                        self.catalog.num_classes, len(self.skipped))

    @property
    def eval_labels(self) -> np.ndarray | None:
        """Class index per evaluation sample for classification-style labels (folders), else None."""
        return self.evaluation.labels if self.format == "image_folder" else None


Prep = Callable[[Record, np.ndarray | None], tuple[dict[str, np.ndarray], dict[str, float]]]


def _kind(spec: ModelSpec) -> str:
    names = [i.name for i in spec.inputs]
    if spec.family == "mobileclip":
        return "clip" if "image" in names else "clip_text"
    if spec.task == "detection" and spec.extras.get("letterbox"):
        return "detection"
    if spec.task == "vlm" and spec.family == "tinygpt_v":
        return "vlm"
    if spec.task == "classification" and len(spec.inputs) == 1 and len(spec.inputs[0].shape) == 4:
        return "classifier"
    return ""


# which formats each kind of model reads
_ACCEPTS = {
    "classifier": ("image_folder", "image_folder_unlabelled"),
    "clip": ("image_folder", "image_folder_unlabelled"),
    "clip_text": ("prompts",),
    "detection": ("coco", "image_folder_unlabelled"),
    "vlm": ("prompts",),
}
_WANTS = {
    "classifier": "an image folder (class subfolders for accuracy)",
    "clip": "an image folder (class subfolders for zero-shot accuracy)",
    "clip_text": "a .jsonl of prompts",
    "detection": "a COCO set (instances JSON + images) or a flat image folder",
    "vlm": "a .jsonl of prompts (with optional image paths)",
}


def check_fits(cat: Catalog, spec: ModelSpec) -> str:
    """The preprocessing kind for spec, after checking the data suits the model (format, classes). Raises DataError."""
    kind = _kind(spec)
    if not kind:
        raise DataError(f"--data is not supported for {spec.name} (task {spec.task}) yet",
                        "compile it without --data: its fidelity is measured on the bundled samples")
    if cat.format not in _ACCEPTS[kind]:
        raise DataError(f"{spec.name} cannot use {cat.format.replace('_', ' ')} data from {cat.root}", f"{spec.name} takes {_WANTS[kind]}")
    outputs = spec.extras.get("num_classes")
    if kind in ("classifier", "detection") and outputs is not None and cat.num_classes is not None and cat.num_classes > int(outputs):
        raise DataError(f"the data has {cat.num_classes} classes but {spec.name} has {outputs} outputs",
                        "use a model with enough classes, or map the classes onto its outputs with --labels FILE")
    return kind


def preprocessor(spec: ModelSpec, kind: str) -> Prep:
    """record, decoded uint8 HxWx3 image (or None) -> (model inputs, letterbox metadata)."""
    from edgeopt.models.inputs import IMAGENET_MEAN, IMAGENET_STD, preprocess

    if kind == "classifier":
        size = tuple(spec.inputs[0].shape[2:])
        mean, std = tuple(spec.extras.get("mean", IMAGENET_MEAN)), tuple(spec.extras.get("std", IMAGENET_STD))
        crop = float(spec.extras.get("crop_pct", 0.875))
        name = spec.inputs[0].name
        return lambda rec, img: ({name: preprocess(img, size, mean, std, crop)}, {})
    if kind == "clip":
        from edgeopt.models.mobileclip import preprocess_images, tokenize

        variant = spec.extras["variant"]
        text = tokenize(list(spec.extras["prompts"])) if "text" in [i.name for i in spec.inputs] else None

        def clip(rec: Record, img: np.ndarray | None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
            s = {"image": preprocess_images(variant, [img])}
            return ({**s, "text": text} if text is not None else s), {}

        return clip
    if kind == "clip_text":
        from edgeopt.models.mobileclip import tokenize

        return lambda rec, img: ({"text": tokenize([rec.prompt or ""])}, {})
    if kind == "detection":
        from edgeopt.postprocess import letterbox

        size = int(spec.extras["letterbox"]["size"])
        name = spec.inputs[0].name

        def det(rec: Record, img: np.ndarray | None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
            x, meta = letterbox(img, size)
            return {name: x}, meta

        return det
    if kind == "vlm":
        from edgeopt.models.tinygpt_v import prompt_ids, sample_tokenizer

        cfg = spec.extras["config"]
        size = (int(cfg["img_size"]), int(cfg["img_size"]))
        tok = sample_tokenizer(min(int(cfg["vocab_size"]), 512))
        mean, std = tuple(spec.extras["mean"]), tuple(spec.extras["std"])

        def vlm(rec: Record, img: np.ndarray | None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
            pic = img if img is not None else np.full((*size, 3), GREY, np.uint8)
            pre, suf = prompt_ids(tok, rec.prompt or "")
            return {"image": preprocess(pic, size, mean, std, crop_pct=1.0), "prefix_ids": pre, "suffix_ids": suf}, {}

        return vlm
    raise DataError(f"no preprocessing for {spec.name}")


def decode_image(path: Any) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB; DataError naming the file when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                        "remove or replace the file, or pass --skip-bad-images to skip (and count) unreadable images") from None


def prepare(req: DataRequest, spec: ModelSpec, progress: Progress | None = None, catalog: Catalog | None = None) -> Dataset:
    """Scan (unless `catalog` is given), check, hash and split the data, then decode both splits for `spec`.

    Unreadable images fail naming the file, or with `req.skip_bad_images` are skipped, counted and replaced
    from the records left over (in the same seeded order)."""
    cat = catalog if catalog is not None else scan(req)
    kind = check_fits(cat, spec)
    sha = content_sha256(cat.files, cat.root, progress)
    ci, ei, reserve = choose_splits(len(cat.records), req.calib_samples, req.eval_samples, req.seed)
    prep = preprocessor(spec, kind)
    spare = [cat.records[i] for i in reserve]
    skipped: list[str] = []
    total = len(ci) + len(ei)
    done = [0]

    def load(name: str, idx: np.ndarray) -> Split:
        split = Split(name, [])
        todo = [cat.records[i] for i in idx]
        while todo:
            batch, todo = todo[:BATCH], todo[BATCH:]
            for rec in batch:
                try:
                    img = decode_image(rec.image) if rec.image is not None else None
                except DataError:
                    if not req.skip_bad_images:
                        raise
                    skipped.append(str(rec.image))
                    if spare:
                        todo.append(spare.pop(0))
                    continue
                x, meta = prep(rec, img)
                split.records.append(rec)
                split.samples.append(x)
                split.meta.append(meta)
                done[0] += 1
            if progress is not None:
                progress(f"read {name} split", done[0], total)
        return split

    calib = load("calibration", ci)
    evaluation = load("evaluation", ei)
    if not len(calib) or not len(evaluation):
        raise DataError(f"after skipping {len(skipped)} unreadable image(s), {cat.root} leaves no "
                        f"{'calibration' if not len(calib) else 'evaluation'} sample", "add readable images")
    return Dataset(cat, sha, calib, evaluation, skipped, kind)
