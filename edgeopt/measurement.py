"""The measurement contract: what a device is asked to measure and what comes back.

    Protocol        the host's protocol: counts, durations, threads, pinning, cool-down, end-to-end image
    MeasureRequest  what the device-side runner is asked to do (a protocol and the runner's own options)
    Measurement     the result: latency summary, output check, memory, and what the host adds (energy,
                    thermal state, device snapshot, protocol key)

One codec crosses the process boundary: the runner prints `Measurement.to_json()` (or `{"error": ...}`)
as one line, and a device reads it back with `Measurement.from_runner_output`. Devices that measure
without the runner (TVM RPC, TFLite's benchmark tool over adb) build a `Measurement` directly.

The JSON form keeps the key names the results database has always stored (`latency_ms`, `energy`, ...),
so stores written by earlier versions read the same. `Measurement` also answers `m["key"]` and `m.get`
with its JSON view, for code written against the dict the Python API returned before it was typed.

Standard library only: the device-side runner imports this module.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgeopt.contention import Contamination
from edgeopt.errors import DeviceError, EdgeoptError

# Protocol fields that change how long the harness waits or what it does with a contaminated result, not
# what the figures mean: not in the key.
_NOT_KEYED = ("timeout", "cooldown", "cooldown_timeout_s", "cooldown_tolerance_c", "idle_seconds", "throttle_c",
              "max_foreign_share", "remeasure", "strict")

# Valid ranges of the numeric protocol fields: (field, lowest, whether the lowest is allowed, what it means).
_RANGES = (("warmup", 0, True, "warm-up calls"), ("runs", 1, True, "timed runs"), ("min_seconds", 0, True, "seconds"),
           ("threads", 1, True, "threads"), ("timeout", 0, False, "seconds"), ("cooldown_timeout_s", 0, True, "seconds"),
           ("cooldown_tolerance_c", 0, True, "degrees C"), ("idle_seconds", 0, True, "seconds"),
           ("max_foreign_share", 0, True, "share of the run's cores"), ("remeasure", 0, True, "re-measurements"),
           ("new_tokens", 1, True, "generated tokens"), ("sustained", 0, True, "back-to-back generations"))
# Generation fields, keyed only when they differ from these defaults (keys of earlier results stay valid).
_KEYED_IF_SET = {"new_tokens": 128, "sustained": 0}


@dataclass(frozen=True)
class Protocol:
    """The measurement protocol, the same on every device (LoadGen style: warm-up, then runs until both a
    count and a duration are reached). Every field may be set from a sweep file's `protocol:` section."""

    warmup: int = 5
    runs: int = 20
    min_seconds: float = 1.0
    threads: int | None = None
    timeout: float = 600.0
    pin_cpus: str | None = None  # a taskset CPU list, e.g. "0-3"; recorded with the result
    end_to_end: str | None = None  # an image file: also measure decode/resize/normalize + post-processing
    cooldown: bool = True
    cooldown_timeout_s: float = 120.0
    cooldown_tolerance_c: float = 3.0
    throttle_c: float = 85.0
    idle_seconds: float = 2.0  # idle power baseline length (only where a meter exists)
    # contamination (edgeopt.contention): flag a result when other processes took more than this share of
    # the run's cores; re-measure a flagged result up to `remeasure` times; with `strict`, refuse it then.
    max_foreign_share: float = 0.10
    remeasure: int = 2
    strict: bool = False
    # generative bundles (MELT's figures): tokens generated per timed generation, and `sustained` N: N more
    # generations back to back after the timed ones, each's tokens/s and temperature (drift, throttling)
    new_tokens: int = 128
    sustained: int = 0

    def __post_init__(self) -> None:
        for name, lowest, inclusive, unit in _RANGES:
            v = getattr(self, name)
            if v is None and name == "threads":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < lowest or (v == lowest and not inclusive):
                bound = f">= {lowest}" if inclusive else f"> {lowest}"
                flag = name.replace("_", "-")
                raise EdgeoptError(f"protocol {name} = {v!r} is out of range: {unit} must be {bound}", f"give --{flag} (or protocol.{name}) a value {bound}")
        if self.max_foreign_share > 1:
            raise EdgeoptError(f"protocol max_foreign_share = {self.max_foreign_share} is out of range: a share lies in [0, 1]",
                               "give protocol.max_foreign_share a value in [0, 1], e.g. 0.1")

    def key(self) -> str:
        """Hash of what changes the figures (not the waits), for resumable sweeps.

        Unset optional fields are left out so that keys stay stable as fields are added; an end-to-end
        image is keyed by its content, not its path."""
        d = asdict(self)
        for k in _NOT_KEYED:
            d.pop(k)
        for k in ("pin_cpus", "end_to_end"):
            if d[k] is None:
                d.pop(k)
        for k, default in _KEYED_IF_SET.items():
            if d[k] == default:
                d.pop(k)
        if "end_to_end" in d:
            img = Path(d["end_to_end"])
            if not img.is_file():
                raise EdgeoptError(f"end-to-end image {img} does not exist", "give protocol.end_to_end an image file (JPEG/PNG)")
            d["end_to_end"] = hashlib.sha256(img.read_bytes()).hexdigest()
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass(frozen=True)
class MeasureRequest:
    """What the device-side runner measures: the protocol's counts, and where to find its inputs there.

    `image` is the end-to-end image's path on the device (set by the device after pushing it); with it,
    the runner measures model-only and end-to-end latency side by side instead of the plain protocol."""

    protocol: Protocol = Protocol()
    image: str | None = None
    verify: bool = True  # re-check every file's sha256 on the device before running
    max_seconds: float | None = None  # stop after this long even if `runs` is not reached

    def with_image(self, image: str | None) -> MeasureRequest:
        return replace(self, image=image)

    def to_json(self) -> str:
        return json.dumps({"protocol": self.protocol.to_dict(), "image": self.image, "verify": self.verify, "max_seconds": self.max_seconds})

    @classmethod
    def from_json(cls, text: str) -> MeasureRequest:
        d = json.loads(text)
        return cls(Protocol(**d.get("protocol", {})), d.get("image"), bool(d.get("verify", True)), d.get("max_seconds"))


@dataclass
class Latency:
    """Latency summary in milliseconds. Percentiles are None where a tool reports only mean/std."""

    p50: float | None
    p90: float | None
    p99: float | None
    mean: float
    std: float
    min: float
    max: float


@dataclass
class Energy:
    """Energy of the timed loop, from a named meter, with the idle baseline subtracted."""

    meter: str
    joules_window: float
    window_s: float
    idle_watts: float
    joules_per_inference: float
    joules_per_inference_gross: float
    samples: int
    estimate: bool = False


@dataclass
class Generation:
    """A generative bundle's figures in MELT's terms (Laskaridis et al. 2024), measured by the device's runner.

    Times in ms. `ttft_ms` = `vision_ms` + `prefill_ms` on the reference prompt (image encode + prefill up to
    the first token), each also timed alone. `prefill` holds prompt-length sweeps: per length of text after
    the image, the positions processed (prefix + image tokens + text) and positions/s. Decode figures cover
    `new_tokens` generated tokens per timed generation (end-of-sequence ignored); the measurement's
    `latency_ms` is the per-token decode latency, so energy per inference is energy per decoded token.
    `check`: how many of the reference's first tokens the device reproduced. `sustained`: one row per
    back-to-back generation (tokens/s, ms to first token, the hottest sensor in C where readable);
    `drift` = last/first tokens/s - 1."""

    load_ms: float
    vision_ms: float
    prefill_ms: float
    ttft_ms: float
    prompt_positions: int
    new_tokens: int
    decode_tokens_per_s: float
    prefill: list[dict[str, Any]] = field(default_factory=list)
    check: dict[str, Any] = field(default_factory=dict)
    sustained: list[dict[str, Any]] = field(default_factory=list)
    drift: float | None = None
    throttled: bool | None = None
    energy_per_token_j: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(latencies_ms: list[float]) -> tuple[Latency, float]:
    """Latency summary and coefficient of variation of a list of latencies (ms)."""
    n = len(latencies_ms)
    s = sorted(latencies_ms)
    mean = sum(s) / n
    std = (sum((x - mean) ** 2 for x in s) / (n - 1)) ** 0.5 if n > 1 else 0.0
    lat = Latency(p50=_percentile(s, 50), p90=_percentile(s, 90), p99=_percentile(s, 99), mean=mean, std=std, min=s[0], max=s[-1])
    return lat, (std / mean if mean > 0 else 0.0)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default 'linear' method)."""
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class Measurement:
    """One measurement of one bundle on one device.

    The first block is filled on the device (by the runner, or by a device that measures itself); the
    second by the harness on the host (`edgeopt.harness.protocol.measure`)."""

    bundle_sha256: str
    model: str
    backend: str
    precision: str | None
    latency_ms: Latency
    cv: float | None
    runs: int
    warmup: int | None = None
    threads: int | None = None
    init_ms: float | None = None
    peak_rss_mb: float | None = None
    outputs_match: bool | None = None  # None: the tool that measured did not check outputs
    check: dict[str, float] | None = None  # output metrics vs the bundle's reference, with cosine_min
    platform: dict[str, Any] = field(default_factory=dict)
    torch_loaded: bool | None = None
    timing: str | None = None  # how the timing was taken, where it is not the runner's own loop
    first_inference_ms: float | None = None
    e2e: dict[str, Any] | None = None  # end-to-end mode: model-only and end-to-end summaries side by side
    after_loop_s: float | None = None  # seconds between the end of the timed loop and the result being printed
    loop_end: float | None = None  # the device's monotonic clock at the loop's end (runner-internal, never sent)
    contamination: Contamination | None = None  # other processes' use of the run's cores during the timed loop
    generation: Generation | None = None  # generative bundles: MELT's figures (load, TTFT, prefill/decode tokens/s)
    # -- added by the harness on the host --
    energy: Energy | None = None
    energy_reason: str | None = None
    thermal: dict[str, Any] = field(default_factory=dict)
    throttled: bool | None = None
    pinning: str | None = None
    device: dict[str, Any] = field(default_factory=dict)  # the device snapshot (uri, arch, cpu, runtimes, ...)
    protocol: dict[str, Any] = field(default_factory=dict)
    protocol_key: str = ""
    measurement_id: int | None = None  # the store's row id, once stored

    @property
    def p50(self) -> float | None:
        return self.latency_ms.p50

    @property
    def device_id(self) -> str:
        return str(self.device.get("uri") or "unknown")

    @property
    def joules_per_inference(self) -> float | None:
        return self.energy.joules_per_inference if self.energy is not None else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON view (the key names the results database stores)."""
        d = asdict(self)
        if d["measurement_id"] is None:
            d.pop("measurement_id")
        d.pop("loop_end")
        for k in ("timing", "first_inference_ms", "e2e", "after_loop_s", "contamination", "generation"):
            if d[k] is None:
                d.pop(k)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["latency_ms"] = Latency(**d["latency_ms"])
        if isinstance(kw.get("energy"), dict):
            kw["energy"] = Energy(**kw["energy"])
        if isinstance(kw.get("contamination"), dict):
            kw["contamination"] = Contamination(**kw["contamination"])
        if isinstance(kw.get("generation"), dict):
            g = {f.name for f in fields(Generation)}
            kw["generation"] = Generation(**{k: v for k, v in kw["generation"].items() if k in g})
        return cls(**kw)

    @classmethod
    def from_runner_output(cls, stdout: str, where: str) -> Measurement:
        """The runner prints one JSON object (possibly after a runtime's log lines): find and decode it.

        An `{"error": ...}` object becomes a DeviceError naming `where`."""
        for line in reversed(stdout.strip().splitlines()):
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "error" in d:
                raise DeviceError(f"runner on {where} failed: {d['error']}")
            try:
                return cls.from_dict(d)
            except (KeyError, TypeError) as e:
                raise DeviceError(f"runner on {where} printed a result this edgeopt cannot read ({e})", "use the same edgeopt version on both sides") from None
        tail = stdout.strip().splitlines()[-1:] or ["(no output)"]
        raise DeviceError(f"runner on {where} printed no result: {tail[0][:300]}")

    # The JSON view, for code written against the dict API.
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)
