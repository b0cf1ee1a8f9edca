"""edgeopt._timed_worker: a graph timed in a process of its own, rounds that alternate, and workers that fail."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from edgeopt._timed_worker import TimedProcess, interleave, ort_latencies, ort_round_latencies
from edgeopt.errors import EdgeoptError
from edgeopt.export import export_onnx


def _export(module: nn.Module, width: int, path) -> dict[str, np.ndarray]:
    sample = {"x": np.random.default_rng(0).standard_normal((1, width)).astype(np.float32)}
    export_onnx(module.eval(), sample, ["x"], ["y"], path)
    return sample


def test_rounds_rotate_so_no_item_always_follows_the_same_one():
    order: list[int] = []
    per = interleave(3, 3, lambda i: order.append(i) or i * 10)
    assert order == [0, 1, 2, 1, 2, 0, 2, 0, 1]
    assert per == [[0, 0, 0], [10, 10, 10], [20, 20, 20]]


def test_round_medians_per_graph_and_a_graph_that_cannot_run_is_named(tmp_path):
    torch.manual_seed(0)
    sample = _export(nn.Linear(64, 64), 64, tmp_path / "small.onnx")
    _export(nn.Linear(1024, 1024), 1024, tmp_path / "wide.onnx")
    per = ort_round_latencies({"small": tmp_path / "small.onnx"}, sample, rounds=3, runs=5)
    assert list(per) == ["small"] and len(per["small"]) == 3 and all(v > 0 for v in per["small"])
    with pytest.raises(EdgeoptError, match="could not time .*wide.onnx"):
        ort_latencies({"wide": tmp_path / "wide.onnx"}, sample)  # a 64-wide sample does not fit a 1024-wide graph


def test_a_graph_twelve_times_the_work_reads_slower_side_by_side(tmp_path):
    torch.manual_seed(0)
    one = nn.Sequential(nn.Linear(512, 512))
    twelve = nn.Sequential(*[nn.Linear(512, 512) for _ in range(12)])
    sample = _export(one, 512, tmp_path / "one.onnx")
    _export(twelve, 512, tmp_path / "twelve.onnx")
    lat = ort_latencies({"one": tmp_path / "one.onnx", "twelve": tmp_path / "twelve.onnx"}, sample, rounds=3, runs=20)
    assert lat["twelve"] > 2 * lat["one"] > 0


def test_a_worker_that_dies_names_its_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    np.savez(tmp_path / "s.npz", x=np.zeros((1, 4), np.float32))
    with pytest.raises(RuntimeError, match="exited with 1") as e:
        TimedProcess(["-m", "edgeopt._timed_worker", "--onnx", str(bad), "--sample", str(tmp_path / "s.npz")],
                     env={**os.environ})
    assert "bad.onnx" in str(e.value) or "Protobuf" in str(e.value) or "INVALID" in str(e.value)


def test_rounds_spread_over_a_span_start_no_earlier_than_their_share_of_it():
    import time

    starts: list[float] = []
    t0 = time.monotonic()
    interleave(2, 4, lambda i: starts.append(time.monotonic() - t0), span_s=0.8)
    round_starts = starts[::2]  # each round's first measurement
    assert len(round_starts) == 4
    for r, t in enumerate(round_starts):
        assert t >= 0.8 * r / 4 - 0.01
    assert round_starts[-1] < 0.8  # the last round starts at 3/4 of the span, not after it
