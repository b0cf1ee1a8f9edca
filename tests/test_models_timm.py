"""EfficientFormer (v1, v2) and SHViT: compile end to end with ORT parity, and load checkpoints written in
the official repositories' key layouts (the official -> edgeopt renaming is what is under test, so the
files here are written by an independent timm -> official renaming built from the official code's
module names)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from edgeopt.errors import CheckpointError
from edgeopt.models import get_spec

SMALLEST = ["efficientformerv2_s0", "shvit_s1"]
ALL = [f"efficientformer_{v}" for v in ("l1", "l3", "l7")] + [f"efficientformerv2_{v}" for v in ("s0", "s1", "s2", "l")] + [
    f"shvit_s{i}" for i in range(1, 5)
]


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter and BN statistic a distinct random value, so a mis-mapped key cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.dtype.is_floating_point:
                r = torch.rand(t.shape, generator=g)
                t.copy_(r + 0.5 if name.endswith("running_var") else r - 0.5)


# --- timm -> official key layouts (facts from the official repos' module definitions) ---------------


def v1_official(sd: dict) -> dict:
    """snap-research/EfficientFormer models/efficientformer.py: patch_embed Sequential(conv,bn,relu,conv,bn,relu),
    network = [stage0, Embedding(proj,norm), stage1, ...], layer_scale_1/2, dist_head."""
    out = {}
    for k, v in sd.items():
        k = k.replace("stem.conv1.", "patch_embed.0.").replace("stem.norm1.", "patch_embed.1.")
        k = k.replace("stem.conv2.", "patch_embed.3.").replace("stem.norm2.", "patch_embed.4.")
        k = re.sub(r"^stages\.(\d+)\.downsample\.conv\.", lambda m: f"network.{2 * int(m.group(1)) - 1}.proj.", k)
        k = re.sub(r"^stages\.(\d+)\.downsample\.norm\.", lambda m: f"network.{2 * int(m.group(1)) - 1}.norm.", k)
        k = re.sub(r"^stages\.(\d+)\.blocks\.", lambda m: f"network.{2 * int(m.group(1))}.", k)
        k = re.sub(r"\.ls(\d)\.gamma$", r".layer_scale_\1", k)
        k = k.replace("head_dist.", "dist_head.")
        out[k] = v
    return out


def v2_official(sd: dict) -> dict:
    """models/efficientformer_v2.py: Mlp(fc1, norm1, mid, mid_norm, fc2, norm2); q/k/v/v_local/stride_conv =
    Sequential(conv, BN); proj = Sequential(act, conv, BN); LGQuery(local=Sequential(conv), proj=Sequential(conv,BN));
    Embedding(proj, norm) or, with attention downsampling, Embedding(attn, conv, bn); layer_scale (dim,1,1)."""
    out = {}
    for k, v in sd.items():
        k = k.replace("stem.conv1.conv.", "patch_embed.0.").replace("stem.conv1.bn.", "patch_embed.1.")
        k = k.replace("stem.conv2.conv.", "patch_embed.3.").replace("stem.conv2.bn.", "patch_embed.4.")
        m = re.match(r"^stages\.(\d+)\.downsample\.(.*)$", k)
        if m:
            s, rest = int(m.group(1)), m.group(2)
            asub = any(x.startswith(f"stages.{s}.downsample.attn.") for x in sd)
            rest = rest.replace("conv.conv.", "conv." if asub else "proj.").replace("conv.bn.", "bn." if asub else "norm.")
            k = f"network.{2 * s - 1}.{rest}"
        k = re.sub(r"^stages\.(\d+)\.blocks\.", lambda m: f"network.{2 * int(m.group(1))}.", k)
        k = k.replace(".mlp.fc1.conv.", ".mlp.fc1.").replace(".mlp.fc1.bn.", ".mlp.norm1.")
        k = k.replace(".mlp.mid.conv.", ".mlp.mid.").replace(".mlp.mid.bn.", ".mlp.mid_norm.")
        k = k.replace(".mlp.fc2.conv.", ".mlp.fc2.").replace(".mlp.fc2.bn.", ".mlp.norm2.")
        k = k.replace(".q.local.", ".q.local.0.").replace(".q.proj.conv.", ".q.proj.0.").replace(".q.proj.bn.", ".q.proj.1.")
        k = re.sub(r"\.(q|k|v|v_local|stride_conv)\.conv\.", r".\1.0.", k)
        k = re.sub(r"\.(q|k|v|v_local|stride_conv)\.bn\.", r".\1.1.", k)
        k = k.replace(".proj.conv.", ".proj.1.").replace(".proj.bn.", ".proj.2.")
        if re.search(r"\.ls[12]\.gamma$", k):
            k, v = re.sub(r"\.ls([12])\.gamma$", r".layer_scale_\1", k), v.reshape(-1, 1, 1)
        k = k.replace("head_dist.", "dist_head.")
        out[k] = v
        if k.endswith("attention_biases"):  # the official modules persist their bias index buffer
            out[k.replace("attention_biases", "attention_bias_idxs")] = torch.zeros(4, 4, dtype=torch.long)
    return out


def shvit_official(sd: dict) -> dict:
    """ysj9909/SHViT model/shvit.py: blocks1..3; in blocks2/3: [0]=Seq(Res(dw), Res(ffn)), [1]=PatchMerging,
    [2]=Seq(Res(dw), Res(ffn)), then BasicBlocks."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"^stages\.(\d+)\.(downsample|blocks)\.(\d+)\.(.*)$", k)
        if m:
            s, kind, j, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
            if kind == "blocks":
                k = f"blocks{s + 1}.{j + (3 if s > 0 else 0)}.{rest}"
            else:
                k = f"blocks{s + 1}." + {0: "0.0", 1: "0.1", 2: "1", 3: "2.0", 4: "2.1"}[j] + f".{rest}"
        out[k] = v
    return out


OFFICIAL = {"efficientformer_l1": v1_official, "efficientformerv2_s0": v2_official, "efficientformerv2_l": v2_official, "shvit_s1": shvit_official}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "efficientformerv2_l" else n for n in OFFICIAL]
)
def test_official_checkpoint_layout_loads(name: str, tmp_path: Path) -> None:
    spec = get_spec(name)
    src = spec.build()
    _randomize(src)
    official = OFFICIAL[name](src.state_dict())
    assert not any(k.startswith("stages.") or k.startswith("stem.") for k in official), "test mapping left timm keys"
    path = tmp_path / "official.pth"
    torch.save({"model": official}, path)
    dst = spec.build(weights=path)
    ref, got = src.state_dict(), dst.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    x = torch.from_numpy(spec.sample_inputs(1)[0]["image"])
    with torch.no_grad():
        torch.testing.assert_close(src(x), dst(x))


def test_timm_layout_loads_too(tmp_path: Path) -> None:
    spec = get_spec("shvit_s1")
    src = spec.build()
    _randomize(src, seed=3)
    torch.save(src.state_dict(), tmp_path / "timm.pth")
    dst = spec.build(weights=tmp_path / "timm.pth")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True))


def test_checkpoint_for_other_variant_names_key_and_shapes(tmp_path: Path) -> None:
    other = get_spec("shvit_s2").build()
    torch.save({"model": shvit_official(other.state_dict())}, tmp_path / "s2.pth")
    with pytest.raises(CheckpointError) as e:
        get_spec("shvit_s1").build(weights=tmp_path / "s2.pth")
    msg = str(e.value)
    assert "key '" in msg and "in the checkpoint but" in msg and "shvit_s1" in msg


def _compile_and_check(name: str, out: Path) -> None:
    from edgeopt.api import compile as eo_compile

    b = eo_compile(name, output=out, samples=2)
    man = b.manifest
    assert man["export"]["parity"]["cosine"] >= 0.9999
    assert man["fidelity"]["cosine"] >= 0.9999 and man["fidelity"]["top1_agreement"] == 1.0
    assert (out / "model.onnx").is_file()


@pytest.mark.parametrize("name", SMALLEST)
def test_smallest_compiles_with_parity(name: str, tmp_path: Path) -> None:
    _compile_and_check(name, tmp_path / "b")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ALL if n not in SMALLEST])
def test_every_variant_compiles_with_parity(name: str, tmp_path: Path) -> None:
    _compile_and_check(name, tmp_path / "b")
