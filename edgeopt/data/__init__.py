"""The user's data (`compile --data PATH`): format detection, seeded calibration and evaluation splits, each
model's own preprocessing streamed from disk, and accuracy against labels. See docs/data.md.

Layer: beside export (imports models and the foundation, never passes, runtimes or anything above).

    scan(DataRequest) -> Catalog           what the path holds; every layout error, nothing decoded
    prepare(DataRequest, spec) -> Dataset  hashed, split, decoded for the model (progress callback)
    accuracy(Dataset, refs, outs, names)   top-1 / zero-shot top-1 / COCO mAP, with intervals
"""

from edgeopt.bundle import DataInfo
from edgeopt.data.evaluate import accuracy, check_outputs_cover_classes, zero_shot_text_embeds
from edgeopt.data.formats import (
    LAYOUTS,
    Catalog,
    DataError,
    DataRequest,
    Record,
    choose_splits,
    content_sha256,
    scan,
)
from edgeopt.data.prepare import Dataset, Split, check_fits, prepare

__all__ = [
    "LAYOUTS", "Catalog", "DataError", "DataInfo", "DataRequest", "Dataset", "Record", "Split", "accuracy", "check_fits",
    "check_outputs_cover_classes", "choose_splits", "content_sha256", "prepare", "scan", "zero_shot_text_embeds",
]
