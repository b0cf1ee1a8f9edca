"""Real sample inputs: photographs that ship inside scikit-image, prepared the way each model expects.

Random tensors make calibration and fidelity figures meaningless, so every vision model calibrates and
is checked on these photographs (no network: these files are inside the scikit-image wheel).
"""

from __future__ import annotations

from functools import cache

import numpy as np

# Colour photographs bundled with scikit-image (no download needed); grey ones are stacked to RGB.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.0, 0.0, 0.0)
CLIP_STD = (1.0, 1.0, 1.0)


@cache
def photo(name: str) -> np.ndarray:
    """One bundled photograph as HxWx3 uint8 RGB."""
    from skimage import data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def photos(n: int) -> list[np.ndarray]:
    """n photographs (cycled when n exceeds the bundled set), always in the same order."""
    return [photo(PHOTOS[i % len(PHOTOS)]) for i in range(n)]


def resize_center_crop(img: np.ndarray, size: tuple[int, int], crop_pct: float = 0.875) -> np.ndarray:
    """Resize the shorter side to size/crop_pct (bicubic), then centre-crop to size (timm's eval transform)."""
    from PIL import Image

    h, w = size
    scale_to = int(round(min(h, w) / crop_pct))
    ih, iw = img.shape[:2]
    r = scale_to / min(ih, iw)
    nh, nw = max(h, int(round(ih * r))), max(w, int(round(iw * r)))
    pil = Image.fromarray(img).resize((nw, nh), Image.BICUBIC)
    top, left = (nh - h) // 2, (nw - w) // 2
    return np.asarray(pil)[top : top + h, left : left + w]


def preprocess(
    img: np.ndarray,
    size: tuple[int, int],
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    crop_pct: float = 0.875,
) -> np.ndarray:
    """uint8 HxWx3 photograph -> float32 1x3xHxW, normalised."""
    x = resize_center_crop(img, size, crop_pct).astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def image_samples(
    n: int,
    input_name: str,
    size: tuple[int, int],
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    crop_pct: float = 0.875,
) -> list[dict[str, np.ndarray]]:
    """n real-photograph samples for a single-image-input model."""
    return [{input_name: preprocess(img, size, mean, std, crop_pct)} for img in photos(n)]
