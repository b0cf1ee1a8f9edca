"""Interleaved comparison of artifacts on one device: which is faster, and whether the difference is real.

    compare(device, [A, B, C], rounds=7) -> Comparison

Timing A fully and then B lets anything that changes between the two (another job starting, the CPU
clocking down, the page cache) pass for a difference between the artifacts. Here every round measures
each artifact once, in a fresh runner process, and the rounds rotate the order (A B C, B C A, C A B, ...)
so that no artifact always runs first or last. An artifact's figure is the median of its per-round p50s;
its ratio to the first artifact is `median(X) / median(A)`, with a 95 % interval from a paired bootstrap
over rounds (rounds resampled with replacement, both artifacts' p50s from the same rounds). When the
interval contains 1, or lies wholly within 5 % of it (`NEGLIGIBLE`), the artifacts are not told apart ("no
clear difference").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt._timed_worker import interleave
from edgeopt.bundle import Bundle, load_bundle
from edgeopt.errors import EdgeoptError
from edgeopt.harness.devices.base import Device
from edgeopt.measurement import Measurement, MeasureRequest, Protocol

# Ratios whose whole 95 % interval lies within this of 1 are no clear difference: two fresh runner processes
# of one artifact differ systematically by up to a few percent (memory placement, which core; 3 % on a
# 0.09 ms memory-bound graph on the 2-core VM, docs/measuring.md).
NEGLIGIBLE = 0.05
# A short protocol per round: the rounds, not one long loop, carry the statistics.
ROUND_PROTOCOL = Protocol(warmup=3, runs=10, min_seconds=0.5, cooldown=False, remeasure=0)


def tied(ci95: tuple[float, float]) -> bool:
    """A ratio's 95 % interval says "no clear difference": it holds 1, or lies wholly within NEGLIGIBLE of it
    (a difference of a few percent is within what fresh processes of one artifact differ by)."""
    lo, hi = ci95
    return lo <= 1.0 <= hi or (1 - NEGLIGIBLE <= lo and hi <= 1 + NEGLIGIBLE)


@dataclass
class Compared:
    """One artifact's figures over the rounds of a comparison."""

    bundle: str
    label: str
    p50_ms: float  # median over rounds of each round's p50
    ratio: float  # p50_ms / the first artifact's p50_ms
    ci95: tuple[float, float]  # 95 % bootstrap interval of the ratio (the first artifact: (1, 1))
    round_p50_ms: list[float] = field(default_factory=list)
    flagged_rounds: int = 0  # rounds whose runner reported contamination
    outputs_match: bool | None = None

    @property
    def verdict(self) -> str:
        """"no clear difference" when `tied(ci95)`; else slower or faster by the ratio."""
        if tied(self.ci95):
            return "no clear difference"
        lo = self.ci95[0]
        return f"{self.ratio:.2f}x slower" if lo > 1.0 else f"{1 / self.ratio:.2f}x faster"

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "label": self.label, "p50_ms": self.p50_ms, "ratio": self.ratio, "ci95": list(self.ci95),
                "verdict": self.verdict, "round_p50_ms": self.round_p50_ms, "flagged_rounds": self.flagged_rounds,
                "outputs_match": self.outputs_match}


@dataclass
class Comparison:
    """The result of `compare`: one entry per artifact, the first being the baseline."""

    device: str
    rounds: int
    protocol: Protocol
    results: list[Compared]
    measurements: list[list[Measurement]] = field(default_factory=list, repr=False)  # [artifact][round]

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "rounds": self.rounds, "protocol": self.protocol.to_dict(),
                "results": [r.to_dict() for r in self.results]}


def bootstrap_ratio(base: Sequence[float], other: Sequence[float], n_boot: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95 % paired-bootstrap interval of median(other) / median(base) over rounds."""
    a, b = np.asarray(base, dtype=float), np.asarray(other, dtype=float)
    if len(a) != len(b) or len(a) == 0:
        raise ValueError("paired rounds of equal, non-zero length expected")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    ratios = np.median(b[idx], axis=1) / np.median(a[idx], axis=1)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(lo), float(hi)


def rank(labels: Sequence[str], round_p50_ms: Sequence[Sequence[float]]) -> list[Compared]:
    """Each item's median p50 over rounds and its ratio to the first item, with the paired-bootstrap interval."""
    base = float(np.median(round_p50_ms[0]))
    out = []
    for i, label in enumerate(labels):
        med = float(np.median(round_p50_ms[i]))
        ci = (1.0, 1.0) if i == 0 else bootstrap_ratio(round_p50_ms[0], round_p50_ms[i])
        out.append(Compared(bundle=label, label=label, p50_ms=med, ratio=med / base, ci95=ci, round_p50_ms=list(round_p50_ms[i])))
    return out


def compare(device: Device, bundles: Sequence[Bundle | str | Path], rounds: int = 7, protocol: Protocol = ROUND_PROTOCOL,
            labels: Sequence[str] | None = None, on_round: Callable[[int, int], None] | None = None,
            measure_one: Callable[[Bundle], Measurement] | None = None) -> Comparison:
    """Measure each bundle once per round, in rotating order, and compare each to the first.

    `measure_one(bundle)` takes one measurement; by default the device's runner with `protocol`. A caller
    that stores what it measures passes the whole protocol instead (`harness.protocol.measure`: cool-down,
    meters, device snapshot, contamination re-measures)."""
    if len(bundles) < 2:
        raise EdgeoptError("compare needs at least two bundles", "give two or more bundle folders: edgeopt compare A B")
    if rounds < 3:
        raise EdgeoptError(f"compare needs at least 3 rounds for an interval, got {rounds}", "give --rounds 3 or more (7 is the default)")
    loaded = [b if isinstance(b, Bundle) else load_bundle(b) for b in bundles]
    one = measure_one or (lambda b: device.run(b, MeasureRequest(protocol)))
    per = interleave(len(loaded), rounds, lambda i: one(loaded[i]), on_round)
    p50s = [[float(m.latency_ms.p50 if m.latency_ms.p50 is not None else m.latency_ms.mean) for m in ms] for ms in per]
    results = rank(list(labels) if labels is not None else [str(b.path) for b in loaded], p50s)
    for r, b, ms in zip(results, loaded, per, strict=True):
        r.bundle = str(b.path)
        r.flagged_rounds = sum(1 for m in ms if m.contamination is not None and m.contamination.flagged)
        r.outputs_match = all(m.outputs_match is not False for m in ms)
    return Comparison(device=device.uri, rounds=rounds, protocol=protocol, results=results, measurements=per)
