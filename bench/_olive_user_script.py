"""Olive user script for bench/peers.py: the same model, weights and calibration images edgeopt uses.

Olive imports this file by path; EDGEOPT_WEIGHTS names the checkpoint both tools load.
"""

from __future__ import annotations

import os

import torch
from olive.data.registry import Registry

from edgeopt.models import get_spec


def load_model(_model_path=None):
    spec = get_spec("efficientformer_l1")
    return spec.build(weights=os.environ["EDGEOPT_WEIGHTS"])


class _Photos(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.x = [torch.from_numpy(s["image"][0]) for s in get_spec("efficientformer_l1").sample_inputs(n)]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i]}, 0  # Olive's calibration reader wants dict batches keyed by input name


@Registry.register_dataset()
def edgeopt_photos(n: int = 8, **_kwargs):
    return _Photos(n)


def dummy_inputs(_model=None):
    # A tuple: Olive's dynamo path calls tuple() on what io_config's input_shapes give, which splits a single
    # 1x3x224x224 tensor into a 3-D one ("expected 4D input (got 3D input)"), olive-ai 0.13.0.
    return (torch.zeros(1, 3, 224, 224),)
