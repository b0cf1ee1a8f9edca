"""LeYOLO (Hollard et al. 2024, "LeYOLO, New Scalable and Efficient CNN Architecture for Object Detection").

The official code is a fork of ultralytics 8.1 that builds the networks from YAML files; the layer lists
below restate those YAMLs (LilianHollard/LeYOLO, ultralytics/cfg/cfg/leyolo{nano,small,medium}.yaml) and
scale channels the way its `parse_model` does: c -> ceil(min(c, 576) * width / 8) * 8, also for the
inverted-bottleneck expansion width. Large is medium's network at 768 input (its YAML is identical).

Module names follow ultralytics (`model.<i>.layers.0.c.weight`, `model.<i>.cv2.0.0.conv.weight`, ...)
so that official checkpoints load key for key, including the ultralytics pickle format (a pickled
`DetectionModel` object), read by the restricted unpickler in `_safe_pickle` without ultralytics.

The graph outputs the three raw head maps (4 x reg_max box logits + class logits per cell, strides
8/16/32); DFL decoding, class scores and NMS are in `edgeopt.postprocess` (numpy, usable on a device)
and `detect()` here (torchvision NMS on the host).
"""

from __future__ import annotations

import math
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.errors import CheckpointError
from edgeopt.models.checkpoints import load_state_strict
from edgeopt.models.inputs import photos
from edgeopt.models.registry import InputSpec, ModelSpec, PaperFigures, register
from edgeopt.postprocess import PAD_VALUE, letterbox  # shared with the device-side e2e runner

REG_MAX = 16
NUM_CLASSES = 80
STRIDES = (8, 16, 32)
MAX_CHANNELS = 576

# One row per layer: (from, module, args). Args as in the official YAML before width scaling:
#   mn_conv: (c2, k, s)          MB = MobileNetV3_BLOCK: (c2, k, e, stride, pw)        SPPF: (c2, k)
#   up: nearest x2               cat: channel concat of the `from` layers              detect: (nc,)
_BACKBONE_STEM = [
    (-1, "mn_conv", (16, 3, 2)),
    (-1, "mn_conv", (16, 1, 1)),
    (-1, "MB", (16, 3, 16, 2, False)),
    (-1, "MB", (32, 3, 96, 2, True)),
]


def _mb(c2: int, k: int, e: int | None, n: int = 1, stride: int = 1, pw: bool = True) -> list:
    return [(-1, "MB", (c2, k, e, stride, pw))] * n


_NANO = [
    *_BACKBONE_STEM,
    *_mb(32, 3, 96),                                   # 4: P2 out
    *_mb(64, 5, 96, stride=2), *_mb(64, 5, 192, 4),    # 5-9: P3 (9 out)
    *_mb(96, 5, 576, stride=2), *_mb(96, 5, 576, 3),   # 10-13: P4
    (-1, "SPPF", (96, 5)),                             # 14
    (-1, "up", ()), ([-1, 9], "cat", ()), *_mb(64, 5, 128, 3),              # 15-19
    (-1, "up", ()), ([-1, 4], "cat", ()), *_mb(32, 3, 96, pw=False), *_mb(32, 3, 64, 2),  # 20-24
    (-1, "mn_conv", (64, 3, 2)), ([-1, 19], "cat", ()), *_mb(64, 5, 128, 3),  # 25-29
    (-1, "mn_conv", (96, 3, 2)), ([-1, 14], "cat", ()), *_mb(96, 5, 192, 3),  # 30-34
    ([24, 29, 34], "detect", (NUM_CLASSES,)),          # 35
]
# Small: nano's layers at width 1.33; its first P3 head block keeps the concat width (e=None).
_SMALL = [*_NANO[:22], *_mb(32, 3, None, pw=False), *_NANO[23:]]
_MEDIUM = [
    *_BACKBONE_STEM,
    *_mb(32, 3, 96, 2),                                # 4-5
    *_mb(64, 5, 96, stride=2), *_mb(64, 5, 192, 5),    # 6-11
    *_mb(96, 5, 576, stride=2), *_mb(96, 5, 576, 4),   # 12-16
    (-1, "SPPF", (96, 5)),                             # 17
    (-1, "up", ()), ([-1, 11], "cat", ()), *_mb(64, 5, 128, 4),             # 18-23
    (-1, "up", ()), ([-1, 5], "cat", ()), *_mb(32, 3, None, pw=False), *_mb(32, 3, 64, 2), *_mb(64, 5, 128),  # 24-29
    (-1, "mn_conv", (64, 3, 2)), ([-1, 23], "cat", ()), *_mb(64, 5, 128, 4),  # 30-35
    (-1, "mn_conv", (96, 3, 2)), ([-1, 17], "cat", ()), *_mb(96, 5, 192, 3), *_mb(64, 5, 128),  # 36-41
    # The official YAML feeds Detect from 27, 32 and 37, so 38-41 are built (and counted, and loaded
    # from checkpoints) but feed nothing; ultralytics still runs them, and so do we.
    ([27, 32, 37], "detect", (NUM_CLASSES,)),          # 42
]

VARIANTS: dict[str, dict[str, Any]] = {
    "nano": {"layers": _NANO, "width": 1.0, "size": 320, "params": 1_120_480, "gflops": {320: 0.66, 480: 1.47}},
    "small": {"layers": _SMALL, "width": 1.33, "size": 640, "params": 1_917_440, "gflops": {480: 2.53, 640: 4.51}},
    "medium": {"layers": _MEDIUM, "width": 1.33, "size": 640, "params": 2_402_744, "gflops": {640: 5.8}},
    "large": {"layers": _MEDIUM, "width": 1.33, "size": 768, "params": 2_402_744, "gflops": {768: 8.4}},
}


def _div8(c: float) -> int:
    """ultralytics make_divisible(x, 8): round up to a multiple of 8."""
    return int(math.ceil(c / 8) * 8)


def _scale(c: int, width: float) -> int:
    return _div8(min(c, MAX_CHANNELS) * width)


@cache
def _modules():
    """The torch building blocks, defined on first use so that importing the registry stays light."""
    import torch
    from torch import nn

    class MnConv(nn.Module):
        """`mn_conv`: Conv2d with bias + BN + SiLU; no padding when kernel == stride (as official)."""

        def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1) -> None:
            super().__init__()
            self.c = nn.Conv2d(c1, c2, k, s, 0 if k == s else k // 2, groups=g)
            self.bn = nn.BatchNorm2d(c2)
            self.act = nn.SiLU()

        def forward(self, x):
            return self.act(self.bn(self.c(x)))

    class MobileNetV3Block(nn.Module):
        """Inverted bottleneck without SE: [1x1 expand] -> dw kxk -> 1x1 (bias) + BN; residual if shapes allow."""

        def __init__(self, c1: int, c2: int, k: int, e: int | None, stride: int, pw: bool) -> None:
            super().__init__()
            c_mid = e if e is not None else c1
            self.residual = c1 == c2 and stride == 1
            feats: list[nn.Module] = [MnConv(c1, c_mid)] if pw else []
            feats += [MnConv(c_mid, c_mid, k, stride, g=c_mid), nn.Conv2d(c_mid, c2, 1), nn.BatchNorm2d(c2)]
            self.layers = nn.Sequential(*feats)

        def forward(self, x):
            return x + self.layers(x) if self.residual else self.layers(x)

    class Conv(nn.Module):
        """ultralytics `Conv`: Conv2d without bias + BN + SiLU, 'same' padding."""

        def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False)
            self.bn = nn.BatchNorm2d(c2)
            self.act = nn.SiLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class SPPF(nn.Module):
        def __init__(self, c1: int, c2: int, k: int = 5) -> None:
            super().__init__()
            c_ = c1 // 2
            self.cv1 = Conv(c1, c_)
            self.cv2 = Conv(c_ * 4, c2)
            self.m = nn.MaxPool2d(k, 1, k // 2)

        def forward(self, x):
            x = self.cv1(x)
            y1 = self.m(x)
            y2 = self.m(y1)
            return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))

    class DFL(nn.Module):
        """Distribution focal loss integral: a fixed 1x1 conv with weights 0..reg_max-1 (kept for key parity)."""

        def __init__(self, c1: int = REG_MAX) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
            self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)

    class Detect(nn.Module):
        """DNiN head: per level 1x1 -> DW3x3 -> DW3x3 -> 1x1, one branch for boxes, one for classes."""

        def __init__(self, nc: int, ch: tuple[int, ...]) -> None:
            super().__init__()
            self.nc, self.nl, self.reg_max = nc, len(ch), REG_MAX
            c2, c3 = max(16, ch[0] // 4, REG_MAX * 4), max(ch[0], min(nc, 100))
            self.cv2 = nn.ModuleList(
                nn.Sequential(Conv(x, c2, 1), Conv(c2, c2, 3, g=c2), Conv(c2, c2, 3, g=c2), nn.Conv2d(c2, 4 * REG_MAX, 1)) for x in ch
            )
            self.cv3 = nn.ModuleList(
                nn.Sequential(Conv(x, c3, 1), Conv(c3, c3, 3, g=c3), Conv(c3, c3, 3, g=c3), nn.Conv2d(c3, nc, 1)) for x in ch
            )
            self.dfl = DFL(REG_MAX)
            # ultralytics' bias init (box logits 1.0; class prior ~0.01 objects per 640 image)
            for a, b, s in zip(self.cv2, self.cv3, STRIDES, strict=True):
                a[-1].bias.data[:] = 1.0
                b[-1].bias.data[:nc] = math.log(5 / nc / (640 / s) ** 2)

        def forward(self, xs):
            return tuple(torch.cat((self.cv2[i](x), self.cv3[i](x)), 1) for i, x in enumerate(xs))

    class LeYOLO(nn.Module):
        """The layer list run like ultralytics' DetectionModel: each layer reads the outputs it names."""

        def __init__(self, layers: list, width: float, nc: int = NUM_CLASSES) -> None:
            super().__init__()
            ch: list[int] = []
            mods: list[nn.Module] = []
            self.froms: list[int | list[int]] = []
            for i, (f, kind, args) in enumerate(layers):
                c1 = 3 if i == 0 else ch[f] if isinstance(f, int) else 0
                if kind == "mn_conv":
                    c2 = _scale(args[0], width)
                    m: nn.Module = MnConv(c1, c2, args[1], args[2])
                elif kind == "MB":
                    c2 = _scale(args[0], width)
                    e = _scale(args[2], width) if args[2] is not None else None
                    m = MobileNetV3Block(c1, c2, args[1], e, args[3], args[4])
                elif kind == "SPPF":
                    c2 = _scale(args[0], width)
                    m = SPPF(c1, c2, args[1])
                elif kind == "up":
                    c2, m = c1, nn.Upsample(None, 2, "nearest")
                elif kind == "cat":
                    c2, m = sum(ch[j] for j in f), nn.Identity()  # concatenation happens in forward
                elif kind == "detect":
                    c2, m = 0, Detect(args[0], tuple(ch[j] for j in f))
                else:  # pragma: no cover - table typo
                    raise ValueError(kind)
                ch.append(c2)
                mods.append(m)
                self.froms.append([i - 1 if j == -1 else j for j in f] if isinstance(f, list) else f)
            self.model = nn.ModuleList(mods)
            self.kinds = [k for _, k, _ in layers]
            keep = {j for f in self.froms if isinstance(f, list) for j in f}
            self._save = keep

        def forward(self, x):
            y: dict[int, Any] = {}
            for i, (m, f, kind) in enumerate(zip(self.model, self.froms, self.kinds, strict=True)):
                if kind == "cat":
                    x = torch.cat([y[j] for j in f], 1)
                elif kind == "detect":
                    return m([y[j] for j in f])
                else:
                    x = m(x)
                if i in self._save:
                    y[i] = x
            raise RuntimeError("no detect layer")

    return LeYOLO


def ultralytics_macs(module, size: int) -> tuple[int, int]:
    """(conv MACs by FlopCounterMode, MACs in the ultralytics convention behind the paper's GFLOPs)."""
    import torch

    from edgeopt.models.counting import count_macs

    p = next(module.parameters())
    x = (torch.empty(1, 3, size, size, device=p.device),)
    return count_macs(module, x), count_macs(module, x, convention="ultralytics")


def build_leyolo(variant: str, device: str = "cpu"):
    import torch

    cfg = VARIANTS[variant]
    with torch.device(device):
        return _modules()(cfg["layers"], cfg["width"])


# ----------------------------------------------------------------------------------------- inputs


def detection_samples(n: int, size: int) -> list[dict[str, np.ndarray]]:
    """n scikit-image photographs letterboxed to the network's square input."""
    return [{"images": letterbox(p, size)[0]} for p in photos(n)]


# ------------------------------------------------------------------------------------ post-process


def torchvision_nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Host NMS (torchvision), same contract as `edgeopt.postprocess.nms`: kept indices, best first."""
    import torch
    from torchvision.ops import nms

    keep = nms(torch.from_numpy(np.ascontiguousarray(boxes, np.float32)), torch.from_numpy(np.ascontiguousarray(scores, np.float32)), iou)
    return keep.numpy()


def detect(outputs: dict[str, np.ndarray] | list[np.ndarray], conf: float = 0.25, iou: float = 0.45,
           max_det: int = 300, meta: dict[str, float] | None = None) -> np.ndarray:
    """Host post-processing: DFL decode, class scores, torchvision NMS; (N, 6) x1 y1 x2 y2 score class."""
    from edgeopt.postprocess import postprocess

    return postprocess(outputs, conf=conf, iou=iou, max_det=max_det, meta=meta, nms_fn=torchvision_nms)


# ------------------------------------------------------------------------------------- checkpoints

# Classes an ultralytics checkpoint pickles; they become inert placeholders (their code never runs).
ULTRALYTICS_PREFIXES = ("ultralytics.", "torch.nn.modules.")


def read_ultralytics_state(path: Path) -> dict[str, Any]:
    """State dict of an official ultralytics-format `.pt` (EMA weights when present), or of a plain one."""
    from edgeopt.models._safe_pickle import is_module_placeholder, restricted_load, state_dict_of

    obj = restricted_load(path, ULTRALYTICS_PREFIXES)
    if isinstance(obj, dict):
        for key in ("ema", "model"):
            if is_module_placeholder(obj.get(key)):
                return state_dict_of(obj[key])
        inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), obj)
        sd = {k: v for k, v in inner.items() if hasattr(v, "shape")}
        if sd:
            return sd
    if is_module_placeholder(obj):
        return state_dict_of(obj)
    raise CheckpointError(f"{path} holds no LeYOLO weights", "expected an ultralytics .pt (with 'model'/'ema') or a state dict")


def load_leyolo_checkpoint(variant: str, module, path: Path) -> None:
    sd = read_ultralytics_state(Path(path))
    load_state_strict(module, sd, Path(path), variant=f"leyolo_{variant}")


# ---------------------------------------------------------------------------------------- registry

_SRC = "Hollard et al. 2024, LeYOLO, Table/README (GFLOPs = 2 x MACs, ultralytics convention)"
for _v, _cfg in VARIANTS.items():
    _size = _cfg["size"]
    _gf = _cfg["gflops"][_size]
    register(
        ModelSpec(
            name=f"leyolo_{_v}",
            family="leyolo",
            task="detection",
            builder=partial(build_leyolo, _v),
            inputs=(InputSpec("images", (1, 3, _size, _size)),),
            outputs=("p3", "p4", "p5"),
            sample_inputs=partial(detection_samples, size=_size),
            paper=PaperFigures(
                params_m=_cfg["params"] / 1e6, macs_g=_gf / 2, resolution=(_size, _size), source=_SRC, macs_convention="ultralytics",
                note=(f"paper gives {_gf} GFLOPs = 2 x MACs (ultralytics/thop, which also counts BN at 4 ops "
                      f"per element; FlopCounterMode counts convs only and reads ~5-7% lower); params {_cfg['params']:,}"),
            ),
            load_checkpoint=partial(load_leyolo_checkpoint, _v),
            description=f"LeYOLO-{_v.capitalize()}: MobileNetV3-style backbone, FPAN neck, DNiN head; COCO 80 classes; raw head maps out",
            extras={
                "strides": STRIDES, "reg_max": REG_MAX, "num_classes": NUM_CLASSES, "params_exact": _cfg["params"],
                "paper_gflops": dict(_cfg["gflops"]), "letterbox": {"size": _size, "pad_value": PAD_VALUE},
                "postprocess": "edgeopt.postprocess:postprocess",  # numpy, device-side capable
            },
        )
    )
