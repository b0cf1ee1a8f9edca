"""MobileR2L: card, ray generation and encoding, ONNX export + ORT parity with PSNR/SSIM, official
checkpoint layout (including the pickled `network_fn` module), bad input."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from edgeopt.errors import CheckpointError
from edgeopt.models import build, get_spec
from edgeopt.models.mobile_r2l import SCENES, build_r2l, circle_poses, encode_rays, ray_directions
from edgeopt.postprocess import psnr, ssim


@pytest.mark.parametrize("scene", ["blender", "llff"])
def test_card_params(scene):
    spec = get_spec(f"mobile_r2l_{scene}")
    m = build(spec.name, device="meta")
    params = sum(p.numel() for p in m.parameters())
    assert abs(params / 1e6 / spec.paper.params_m - 1) < 0.03, params
    assert params == {"blender": 4_305_539, "llff": 4_298_371}[scene]  # official R2L at its defaults
    assert spec.inputs[0].shape[1] == 312
    # output resolution: 8x (Blender) and 12x (LLFF) of the ray grid
    h, w = SCENES[scene]["in_hw"]
    with torch.device("meta"):
        out = m(torch.empty(1, 312, h, w))
    assert tuple(out.shape) == (1, 3, *SCENES[scene]["out_hw"])
    sd = m.state_dict()
    assert "head.0.weight" in sd and "body.28.conv_block.4.running_var" in sd and "tail.9.weight" in sd


def test_blender_rays_look_at_the_object():
    """Every orbit camera's central ray passes (nearly) through the origin, and the encoding's channel
    layout is the official one: (sample*3 + xyz)*13 + [sin 2^0..2^5, cos 2^0..2^5, raw]."""
    poses = circle_poses(8, "blender")
    assert np.allclose(np.linalg.norm(poses[:, :, 3], axis=1), SCENES["blender"]["radius"])
    for c2w in poses:
        assert np.allclose(c2w[:, :3].T @ c2w[:, :3], np.eye(3), atol=1e-9)  # a rotation
        d = ray_directions(2, 2, 100.0).mean(0) @ c2w[:, :3].T  # central direction
        o = c2w[:, 3]
        t = -(o @ d) / (d @ d)
        assert np.linalg.norm(o + t * d) < 1e-6 and t > 0
    x = encode_rays(poses[0], "blender")[0]
    h, w = SCENES["blender"]["in_hw"]
    raw = x[12::13]  # (24, h, w): sample-major, xyz-minor
    pts = raw.reshape(8, 3, h, w)
    o = poses[0][:, 3]
    assert np.allclose(np.linalg.norm(pts[0, :, h // 2, w // 2] - o), 2.0, atol=0.02)  # near = 2 along a unit-ish ray
    np.testing.assert_allclose(x[0::13], np.sin(raw), atol=1e-5)
    np.testing.assert_allclose(x[5::13], np.sin(32 * raw), atol=1e-4)
    np.testing.assert_allclose(x[6::13], np.cos(raw), atol=1e-5)


def test_llff_rays_are_in_ndc():
    x = encode_rays(circle_poses(8, "llff")[3], "llff")[0]
    raw = x[12::13].reshape(8, 3, 63, 84)
    assert np.allclose(raw[0, 2], -1.0, atol=1e-5)  # near plane (z = -1 in NDC) at t = 0
    assert np.allclose(raw[-1, 2], 1.0, atol=1e-5)  # far = 1 reaches infinity's NDC depth
    assert np.abs(raw[:, :2]).max() < 1.5


def test_image_metrics_match_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (3, 64, 80))
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), rel=1e-9)
    ref = structural_similarity(a, b, channel_axis=0, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim(a, b) == pytest.approx(ref, abs=2e-3)
    assert ssim(a, a) == pytest.approx(1.0) and psnr(a, a) == float("inf")


def test_compile_blender_onnx_ort_parity(tmp_path):
    """Default end-to-end: export, ORT parity, bundle; the render matches torch's (PSNR, SSIM)."""
    import edgeopt.api as api

    b = api.compile("mobile_r2l_blender", output=tmp_path / "r2l.bundle", samples=1)
    assert b.manifest["export"]["parity"]["cosine"] > 0.9999
    fid = b.manifest["fidelity"]
    assert fid["psnr_db"] > 60 and fid["ssim"] > 0.999
    assert b.manifest["outputs"][0]["shape"] == [1, 3, 800, 800]


# ---------------------------------------------------------------------------------- checkpoints


def _official_checkpoint(path, module, monkeypatch, prefix=""):
    """What the official trainer saves: the state dict plus the pickled module (`network_fn`), whose
    class `model.R2L.R2L` we name with a throwaway class only while writing."""
    with monkeypatch.context() as mp:
        pkg, mod = types.ModuleType("model"), types.ModuleType("model.R2L")
        mp.setitem(sys.modules, "model", pkg)
        mp.setitem(sys.modules, "model.R2L", mod)
        names = {"R2L": "R2L", "ResnetBlock": "ResnetBlock"}
        made = {}
        for m in module.modules():
            cls = type(m)
            if cls.__name__ in names:
                if cls not in made:
                    made[cls] = type(cls.__name__, (cls,), {"__module__": "model.R2L", "__qualname__": cls.__name__})
                    setattr(mod, cls.__name__, made[cls])
                m.__class__ = made[cls]
        sd = {prefix + k: v for k, v in module.state_dict().items()}
        torch.save({"global_step": 10, "best_psnr": 30.1, "best_psnr_step": 9, "network_fn_state_dict": sd,
                    "optimizer_state_dict": {"state": {}, "param_groups": []}, "scaler": None, "network_fn": module}, path)
    assert "model.R2L" not in sys.modules


def test_official_checkpoint_with_pickled_module(tmp_path, monkeypatch):
    torch.manual_seed(0)
    src = build_r2l("llff").eval()
    donor = build_r2l("llff").eval()
    donor.load_state_dict(src.state_dict())
    path = tmp_path / "llff.tar"
    _official_checkpoint(path, donor, monkeypatch)
    m = build("mobile_r2l_llff", weights=path)
    for (k, a), b in zip(m.state_dict().items(), src.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_plain_state_dict_checkpoint_with_ddp_prefix(tmp_path):
    torch.manual_seed(0)
    src = build_r2l("blender").eval()
    path = tmp_path / "sd.pt"
    torch.save({"network_fn_state_dict": {"module." + k: v for k, v in src.state_dict().items()}, "global_step": 1}, path)
    m = build("mobile_r2l_blender", weights=path)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), src.state_dict().values(), strict=True))


def test_checkpoint_for_another_variant_names_key_and_shapes(tmp_path):
    path = tmp_path / "blender.pt"
    torch.save({"network_fn_state_dict": build_r2l("blender").state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"'tail\.6\.weight' has shape \(64, 16, 4, 4\) in the checkpoint but \(64, 16, 3, 3\)"):
        build("mobile_r2l_llff", weights=path)


def test_pickled_code_is_refused(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pt"
    torch.save({"network_fn_state_dict": {}, "network_fn": Evil()}, path)
    with pytest.raises(CheckpointError, match=r"'(posix|os)\.system'"):
        build("mobile_r2l_blender", weights=path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_compile_llff(tmp_path):
    import edgeopt.api as api

    b = api.compile("mobile_r2l_llff", output=tmp_path / "b", samples=2)
    assert b.manifest["export"]["parity"]["cosine"] > 0.9999
    assert b.manifest["fidelity"]["psnr_db"] > 60
    assert b.manifest["outputs"][0]["shape"] == [1, 3, 756, 1008]
