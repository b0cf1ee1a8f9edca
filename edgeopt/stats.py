"""Figures with their uncertainty: Wilson intervals for proportions, a seeded bootstrap for the rest, and the
rule every gate follows (the interval's pessimistic end; a gate that its sample count cannot resolve says so).

numpy only (foundation layer): fidelity figures, the data layer's accuracy and the gates use it.

Why Wilson: on 8 samples, 8/8 agreement has a 95 % interval of [0.68, 1.0]; the normal approximation would
say [1.0, 1.0]. A gate of 0.99 needs at least 381 samples that all agree before its lower bound can reach it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
BOOTSTRAP_RESAMPLES = 200


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of the proportion k/n; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def min_samples_for_lower_bound(threshold: float, z: float = Z95) -> int | None:
    """The fewest samples n for which n/n has a Wilson lower bound >= threshold (None for threshold >= 1).

    The lower bound of n/n is n / (n + z^2), so n >= z^2 t / (1 - t)."""
    if threshold >= 1.0:
        return None
    if threshold <= 0.0:
        return 1
    n = math.ceil(z * z * threshold / (1.0 - threshold) - 1e-9)
    while wilson(n, n, z)[0] < threshold:  # guard the float edge
        n += 1
    return max(1, n)


def min_samples_for_upper_bound(limit: float, z: float = Z95) -> int | None:
    """The fewest samples n for which 0/n has a Wilson upper bound <= limit (None for limit <= 0)."""
    if limit <= 0.0:
        return None
    if limit >= 1.0:
        return 1
    n = math.ceil(z * z * (1.0 - limit) / limit - 1e-9)
    while wilson(0, n, z)[1] > limit:
        n += 1
    return max(1, n)


def bootstrap_ci(
    stat: Callable[[np.ndarray], float], n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat(indices)` over `resamples` draws of n indices with replacement."""
    if n <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = np.asarray([stat(rng.integers(0, n, n)) for _ in range(resamples)], np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return float("nan"), float("nan")
    a = (1.0 - level) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))


@dataclass(frozen=True)
class Figure:
    """One measured figure: its value, the sample count behind it and its 95 % interval."""

    metric: str
    value: float
    n: int
    ci95: tuple[float, float]

    @classmethod
    def proportion(cls, metric: str, hits: np.ndarray) -> Figure:
        h = np.asarray(hits, bool).ravel()
        k, n = int(h.sum()), int(h.size)
        return cls(metric, k / n if n else float("nan"), n, wilson(k, n))

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": _r(self.value), "n": self.n, "ci95": [_r(self.ci95[0]), _r(self.ci95[1])]}


@dataclass(frozen=True)
class Accuracy:
    """A figure against labels: the fp32 reference's, the artifact's (with its interval) and the drop in points.

    `drop_points_ci95` for proportions: [-(Wilson upper of samples only the artifact got right),
    Wilson upper of samples only the reference got right] x 100, a conservative paired bound; for mAP a
    paired bootstrap over images."""

    metric: Literal["top1", "map50_95", "zero_shot_top1"]
    reference: float
    artifact: float
    n: int
    ci95: tuple[float, float]
    drop_points_ci95: tuple[float, float]
    extra: dict[str, Any] | None = None

    @property
    def drop_points(self) -> float:
        return 100.0 * (self.reference - self.artifact)

    @classmethod
    def paired(cls, metric: Literal["top1", "zero_shot_top1"], ref_hits: np.ndarray, art_hits: np.ndarray) -> Accuracy:
        r, a = np.asarray(ref_hits, bool).ravel(), np.asarray(art_hits, bool).ravel()
        n = int(r.size)
        lost, gained = int(np.sum(r & ~a)), int(np.sum(~r & a))
        return cls(metric, float(r.mean()) if n else float("nan"), float(a.mean()) if n else float("nan"), n,
                   wilson(int(a.sum()), n), (-100.0 * wilson(gained, n)[1], 100.0 * wilson(lost, n)[1]))

    def to_json(self) -> dict[str, Any]:
        d = {
            "metric": self.metric, "reference": _r(self.reference), "artifact": _r(self.artifact), "n": self.n,
            "ci95": [_r(self.ci95[0]), _r(self.ci95[1])], "drop_points": _r(self.drop_points),
            "drop_points_ci95": [_r(self.drop_points_ci95[0]), _r(self.drop_points_ci95[1])],
        }
        return {**d, **(self.extra or {})}


GateStatus = Literal["pass", "fail", "unresolved"]


@dataclass(frozen=True)
class GateResult:
    """What a gate decided: pass, fail or unresolved (too few samples to show the threshold), and why."""

    status: GateStatus
    reason: str
    need_n: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, **({"need_n": self.need_n} if self.need_n else {})}


def gate_at_least(fig: Figure, threshold: float) -> GateResult:
    """A proportion gate `value >= threshold`, judged on the interval's lower end.

    Unresolved when even n/n could not reach the threshold with n samples: then neither passing nor failing
    says anything, and the caller must say so (edgeopt's gates refuse, see docs/data.md)."""
    need = min_samples_for_lower_bound(threshold)
    if need is None or fig.n < need:
        return GateResult("unresolved", f"{fig.metric} >= {threshold:g} cannot be shown on {fig.n} samples "
                          f"(the 95 % lower bound of {fig.n}/{fig.n} is {wilson(fig.n, fig.n)[0]:.3f}; needs {need or 'infinitely many'})", need)
    lo = fig.ci95[0]
    if lo >= threshold:
        return GateResult("pass", f"{fig.metric} {fig.value:.4f}, 95 % lower bound {lo:.4f} >= {threshold:g} (n={fig.n})")
    return GateResult("fail", f"{fig.metric} {fig.value:.4f}, 95 % lower bound {lo:.4f} < {threshold:g} (n={fig.n})")


def drop_resolvable(max_drop_points: float, n: int) -> tuple[bool, int | None]:
    """Whether a drop gate of `max_drop_points` can pass on n paired samples (no sample lost at all)."""
    need = min_samples_for_upper_bound(max_drop_points / 100.0)
    return (need is not None and n >= need), need


def gate_max_drop(acc: Accuracy, max_drop_points: float) -> GateResult:
    """A drop gate `drop <= max_drop_points`, judged on the drop interval's upper (pessimistic) end."""
    hi = acc.drop_points_ci95[1]
    if acc.metric != "map50_95":
        ok, need = drop_resolvable(max_drop_points, acc.n)
        if not ok:
            return GateResult("unresolved", f"a drop of at most {max_drop_points:g} points cannot be shown on {acc.n} samples "
                              f"(needs {need or 'infinitely many'})", need)
    if hi <= max_drop_points:
        return GateResult("pass", f"{acc.metric} drop {acc.drop_points:.2f} points, 95 % upper bound {hi:.2f} <= {max_drop_points:g} (n={acc.n})")
    return GateResult("fail", f"{acc.metric} drop {acc.drop_points:.2f} points, 95 % upper bound {hi:.2f} > {max_drop_points:g} (n={acc.n})")


def _r(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 6)
