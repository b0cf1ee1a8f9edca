"""MobileR2L (Cao et al., CVPR 2023, "Real-Time Neural Light Field on Mobile Devices").

A neural light field: every pixel of a low-resolution ray grid carries 8 points sampled along its camera
ray, positionally encoded (L = 6, plus the raw coordinate): 3 x 8 x 13 = 312 channels laid out as an
image. A 1x1-conv residual network maps them to features and a super-resolution tail upsamples 8x
(Blender, 100x100 -> 800x800) or 12x (LLFF, 63x84 -> 756x1008) to RGB.

Layer names follow the official `model/R2L.py` (snap-research/MobileR2L): `head.0`, `body.<i>.conv_block.
{0,1,3,4}`, `tail.<n>`; official checkpoints keep them under `network_fn_state_dict` (next to a pickled
`network_fn` module, which the restricted unpickler reads without running code). Ray generation,
sampling and the encoding restate the official `data/rays_utils.py` in numpy (OpenGL camera convention;
LLFF rays in NDC space, near 0 far 1; Blender near 2 far 6).
"""

from __future__ import annotations

from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.errors import CheckpointError
from edgeopt.models.checkpoints import load_state_strict, read_state_dict
from edgeopt.models.registry import InputSpec, ModelSpec, PaperFigures, register

N_SAMPLES = 8
MULTIRES = 6
EMBED_DIM = 2 * MULTIRES + 1  # sin, cos per frequency + the raw coordinate
IN_CHANNELS = 3 * N_SAMPLES * EMBED_DIM  # 312
WIDTH = 256
DEPTH = 60  # official --netdepth: (60 - 2) // 2 = 29 residual blocks
SR_CHANNELS = (64, 64, 16)

# Scene set-ups (official defaults and typical scenes: Blender lego, LLFF fern at factor 4).
SCENES: dict[str, dict[str, Any]] = {
    "blender": {
        "in_hw": (100, 100), "out_hw": (800, 800), "near": 2.0, "far": 6.0, "ndc": False,
        # lego: camera_angle_x 0.6911112; focal at 800 px, scaled to the 100 px ray grid
        "focal": 0.5 * 800 / np.tan(0.5 * 0.6911112070083618) * 100 / 800, "radius": 4.0311,
        "last_up": (4, 2, 1), "params": 4.31,
    },
    "llff": {
        "in_hw": (63, 84), "out_hw": (756, 1008), "near": 0.0, "far": 1.0, "ndc": True,
        "focal": 815.1316 * 63 / 756, "radius": 0.15, "focus": 4.0,  # fern: focal 815 px at 1008x756
        "last_up": (3, 3, 0), "params": 4.30,
    },
}


# ------------------------------------------------------------------------------------------ network


@cache
def _modules():
    from torch import nn

    class ResnetBlock(nn.Module):
        """[1x1 conv, BN, GELU, 1x1 conv, BN] plus the input (official ResnetBlock, kernel 1, zero pad)."""

        def __init__(self, dim: int) -> None:
            super().__init__()
            self.conv_block = nn.Sequential(
                nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim), nn.GELU(), nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim)
            )

        def forward(self, x):
            return x + self.conv_block(x)

    class R2L(nn.Module):
        def __init__(self, last_up: tuple[int, int, int]) -> None:
            super().__init__()
            self.head = nn.Sequential(nn.Conv2d(IN_CHANNELS, WIDTH, 1), nn.GELU())
            self.body = nn.Sequential(*[ResnetBlock(WIDTH) for _ in range((DEPTH - 2) // 2)])
            c0, c1, c2 = SR_CHANNELS
            k, s, p = last_up
            self.tail = nn.Sequential(
                nn.ConvTranspose2d(WIDTH, c0, 4, stride=2, padding=1), ResnetBlock(c0), ResnetBlock(c0),
                nn.ConvTranspose2d(c0, c1, 4, stride=2, padding=1), ResnetBlock(c1), ResnetBlock(c1),
                nn.ConvTranspose2d(c1, c2, k, stride=s, padding=p), ResnetBlock(c2), ResnetBlock(c2),
                nn.Conv2d(c2, 3, 1), nn.Sigmoid(),
            )

        def forward(self, x):
            x = self.head(x)
            x = self.body(x) + x  # global skip
            return self.tail(x)

    return R2L


def build_r2l(scene: str, device: str = "cpu"):
    import torch

    with torch.device(device):
        return _modules()(SCENES[scene]["last_up"])


# --------------------------------------------------------------------------------- rays and inputs


def ray_directions(h: int, w: int, focal: float) -> np.ndarray:
    """Camera-space ray directions, OpenGL convention (x right, y up, looking down -z): (h*w, 3)."""
    v, u = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    d = np.stack([(u - 0.5 * w + 0.5) / focal, -(v - 0.5 * h + 0.5) / focal, -np.ones_like(u)], -1)
    return d.reshape(-1, 3)


def to_ndc(o: np.ndarray, d: np.ndarray, h: int, w: int, focal: float, near: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Forward-facing scenes: rays to normalised device coordinates (Mildenhall et al.; official _to_ndc)."""
    t = -(near + o[:, 2]) / d[:, 2]
    o = o + t[:, None] * d
    ox, oy, oz = o[:, 0], o[:, 1], o[:, 2]
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    o_ndc = np.stack([-focal / (w / 2) * ox / oz, -focal / (h / 2) * oy / oz, 1 + 2 * near / oz], -1)
    d_ndc = np.stack([-focal / (w / 2) * (dx / dz - ox / oz), -focal / (h / 2) * (dy / dz - oy / oz), -2 * near / oz], -1)
    return o_ndc, d_ndc


def encode_rays(c2w: np.ndarray, scene: str) -> np.ndarray:
    """One camera pose (3x4 camera-to-world) -> the network input (1, 312, h, w), float32.

    Channel layout as the official code: for pixel p, channel (s*3 + xyz)*13 + j holds, for sample s and
    coordinate xyz, sin(2^j x) for j < 6, cos(2^(j-6) x) for 6 <= j < 12, and x itself for j = 12."""
    cfg = SCENES[scene]
    h, w = cfg["in_hw"]
    dirs = ray_directions(h, w, cfg["focal"])
    rays_d = dirs @ c2w[:3, :3].T
    rays_o = np.broadcast_to(c2w[:3, 3], rays_d.shape).copy()
    if cfg["ndc"]:
        rays_o, rays_d = to_ndc(rays_o, rays_d, h, w, cfg["focal"])
    t = np.linspace(0.0, 1.0, N_SAMPLES)
    z = cfg["near"] * (1 - t) + cfg["far"] * t
    pts = (rays_o[:, None, :] + rays_d[:, None, :] * z[None, :, None]).reshape(h * w, -1)  # (N, 24)
    freqs = 2.0 ** np.linspace(0, MULTIRES - 1, MULTIRES)
    y = pts[..., None] * freqs  # (N, 24, 6)
    emb = np.concatenate([np.sin(y), np.cos(y), pts[..., None]], -1).reshape(h * w, IN_CHANNELS)
    return np.ascontiguousarray(emb.T.reshape(1, IN_CHANNELS, h, w).astype(np.float32))


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-10)


def circle_poses(n: int, scene: str) -> np.ndarray:
    """n camera-to-world poses (n, 3, 4) on a circle around the scene.

    Blender: the official novel-view orbit (polar angle 45 degrees at the training cameras' radius,
    looking at the origin). LLFF: a small circle in the camera plane, looking at a point `focus` ahead."""
    cfg = SCENES[scene]
    phis = np.linspace(0, 2 * np.pi, n + 1)[:-1]
    if scene == "blender":
        th = np.pi / 4
        centers = cfg["radius"] * np.stack([np.sin(th) * np.cos(phis), np.sin(th) * np.sin(phis), np.full_like(phis, np.cos(th))], -1)
        fwd = _normalize(centers)  # OpenGL: the camera's +z points away from what it looks at
        up0 = np.broadcast_to([0.0, 0.0, -1.0], fwd.shape)
        right = _normalize(np.cross(fwd, up0))
        up = _normalize(np.cross(fwd, right))
    else:
        centers = cfg["radius"] * np.stack([np.cos(phis), np.sin(phis), np.zeros_like(phis)], -1)
        fwd = _normalize(centers - np.array([0.0, 0.0, -cfg["focus"]]))
        right = _normalize(np.cross(np.broadcast_to([0.0, 1.0, 0.0], fwd.shape), fwd))
        up = _normalize(np.cross(fwd, right))
    poses = np.zeros((n, 3, 4))
    poses[:, :, 0], poses[:, :, 1], poses[:, :, 2], poses[:, :, 3] = right, up, fwd, centers
    return poses


def r2l_samples(n: int, scene: str) -> list[dict[str, np.ndarray]]:
    """n real ray grids from camera poses on a circle (8 poses per orbit, cycled)."""
    poses = circle_poses(max(n, 8), scene)
    return [{"rays": encode_rays(poses[i % len(poses)], scene)} for i in range(n)]


# ------------------------------------------------------------------------------------- checkpoints

# Classes the official checkpoint pickles in `network_fn` (the module itself) and its args.
R2L_PREFIXES = ("model.R2L.", "torch.nn.modules.", "easydict.", "torch.nn.parallel.")


def read_r2l_state(path: Path) -> dict[str, Any]:
    """The `network_fn_state_dict` of an official checkpoint (or a bare state dict)."""
    from edgeopt.models._safe_pickle import UnsafePickleError, restricted_load

    path = Path(path)
    try:
        return read_state_dict(path)
    except UnsafePickleError:
        raise
    except CheckpointError as e:
        if not path.is_file():
            raise
        first_error = e
    # weights_only refused the file: the official one also pickles the module (`network_fn`)
    obj = restricted_load(path, R2L_PREFIXES)
    sd = obj.get("network_fn_state_dict") if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} has no network_fn_state_dict", first_error.hint or "expected an official MobileR2L checkpoint")
    sd = {k: v for k, v in sd.items() if hasattr(v, "shape")}
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_r2l_checkpoint(scene: str, module, path: Path) -> None:
    load_state_strict(module, read_r2l_state(Path(path)), Path(path), variant=f"mobile_r2l_{scene}")


# ---------------------------------------------------------------------------------------- registry

_SRC = "Cao et al. CVPR 2023, MobileR2L (params; the network is official model/R2L.py at its defaults)"
for _scene, _cfg in SCENES.items():
    _h, _w = _cfg["in_hw"]
    _oh, _ow = _cfg["out_hw"]
    register(
        ModelSpec(
            name=f"mobile_r2l_{_scene}",
            family="mobile_r2l",
            task="light_field",
            builder=partial(build_r2l, _scene),
            inputs=(InputSpec("rays", (1, IN_CHANNELS, _h, _w)),),
            outputs=("rgb",),
            sample_inputs=partial(r2l_samples, scene=_scene),
            paper=PaperFigures(
                params_m=_cfg["params"], resolution=(_oh, _ow), source=_SRC,
                note="the paper gives no MAC count for this network; measured MACs are ours",
            ),
            load_checkpoint=partial(load_r2l_checkpoint, _scene),
            description=(f"MobileR2L {_scene}: {_h}x{_w} ray grid (8 points/ray, PE L=6) -> 29 res blocks "
                         f"-> SR tail -> {_oh}x{_ow} RGB"),
            extras={"scene": {k: (list(v) if isinstance(v, tuple) else v) for k, v in _cfg.items()},
                    "n_samples": N_SAMPLES, "multires": MULTIRES},
        )
    )
