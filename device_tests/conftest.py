"""The device test suite: `pytest device_tests --device URI`.

For each model family (a small variant each) and each backend the device supports, a test compiles a bundle
on this host, pushes it to the device, runs the device-side runner, checks the outputs against the bundle's
reference (fp32 torch outputs computed here, on x86) and records the measurement in the results store.
The same suite runs unchanged against `qemu-arm64` (the emulated board CI uses), an `ssh://` board (Jetson,
Raspberry Pi) or an `adb://` phone; `--device` also takes a name from devices.yaml, whose options apply.

    pytest device_tests --device qemu-arm64 --matrix ci          # what CI runs
    pytest device_tests --device jetson-orin --db sqlite:///orin.db --report orin.md
    pytest device_tests --device ssh://pi@rpi4.local -m "onnxruntime or tflite"

Markers: one per backend (onnxruntime, tflite, tvm, coreml) and `macos` (Core ML needs macOS).
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgeopt.capabilities import REPRESENTATIVES
from edgeopt.runtimes.base import backend_class, backend_names

BACKEND_MARKERS = tuple(backend_names())
# Distributions whose presence on the device means it can run a backend's bundles: each backend's own
# `device_runtimes` (the capability table), plus the other builds of a runtime a board may carry.
_OTHER_BUILDS: dict[str, tuple[str, ...]] = {"onnxruntime": ("onnxruntime-gpu",), "tvm": ("tvm",)}
BACKEND_RUNTIMES: dict[str, tuple[str, ...]] = {
    b: (*backend_class(b).device_runtimes, *_OTHER_BUILDS.get(b, ())) for b in backend_names()
}
# The variant each family is tested with: the capability matrix's representative (small, so an emulated
# run stays in minutes). Families not named there are tested with their smallest variant (MACs, then params).
SMALL_VARIANTS: dict[str, str] = REPRESENTATIVES
# The family every backend is tried with in `--matrix ci`.
CI_FAMILY = "efficientformer"


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("edgeopt device tests")
    g.addoption("--device", default=None, help="device URI (qemu-arm64, ssh://user@host, adb://SERIAL, local) or a devices.yaml name")
    g.addoption("--device-option", action="append", default=[], metavar="KEY=VALUE", help="device option (YAML value), repeatable")
    g.addoption("--devices-file", default=None, help="devices.yaml to resolve --device names from")
    g.addoption("--db", default=None, help="results database URL (default: a fresh SQLite file under pytest's temp folder)")
    g.addoption("--families", default=None, help="comma list of families (default: every registered family)")
    g.addoption("--models", default=None, help="comma list of variants, overriding the small variant per family")
    g.addoption("--backends", default=None, help="comma list of backends (default: all; those the device lacks are skipped)")
    g.addoption("--matrix", default="full", choices=("full", "ci"), help="full: every family x every backend; ci: every family on onnxruntime + one family on every backend")
    g.addoption("--warmup", type=int, default=None, help="warm-up runs (default 1 on an emulator, 5 on a device)")
    g.addoption("--runs", type=int, default=None, help="timed runs (default 2 on an emulator, 20 on a device)")
    g.addoption("--min-seconds", type=float, default=None, help="minimum timed duration (default 0 on an emulator, 1 on a device)")
    g.addoption("--runner-timeout", type=float, default=None, help="seconds one runner call may take (default 1800 emulated, 600 otherwise)")
    g.addoption("--tvm-target", default=None, help="TVM target for the device (default: from its arch; cortex-a72 on qemu-arm64)")
    g.addoption("--emulated-max-gmacs", type=float, default=3.0,
                help="on an emulator, skip variants above this many GMACs per inference (emulation runs ~100-350x slower)")
    g.addoption("--report", default=None, help="write the family x backend table (markdown) to this file")


def pytest_configure(config: pytest.Config) -> None:
    for m in BACKEND_MARKERS:
        config.addinivalue_line("markers", f"{m}: runs a {m} bundle on the device")
    config.addinivalue_line("markers", "macos: needs a macOS device (Core ML)")
    config._edgeopt_rows = []  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Case:
    family: str
    model: str
    backend: str

    @property
    def id(self) -> str:
        return f"{self.model}-{self.backend}"


def _csv(v: str | None) -> list[str] | None:
    return [x.strip() for x in v.split(",") if x.strip()] if v else None


def _variants(config: pytest.Config) -> dict[str, str]:
    """family -> variant under test."""
    from edgeopt.models.registry import _discover, all_specs

    _discover()
    by_family: dict[str, list[Any]] = {}
    for s in all_specs():
        by_family.setdefault(s.family, []).append(s)
    chosen: dict[str, str] = {}
    for fam, specs in sorted(by_family.items()):
        names = {s.name for s in specs}
        if SMALL_VARIANTS.get(fam) in names:
            chosen[fam] = SMALL_VARIANTS[fam]
        else:
            def size(s: Any) -> tuple[float, float, str]:
                return (s.paper.macs_g or math.inf, s.paper.params_m or math.inf, s.name)

            chosen[fam] = min(specs, key=size).name
    fams = _csv(config.getoption("--families"))
    if fams:
        unknown = [f for f in fams if f not in chosen]
        if unknown:
            raise pytest.UsageError(f"--families: unknown {unknown}; registered: {', '.join(chosen)}")
        chosen = {f: chosen[f] for f in fams}
    models = _csv(config.getoption("--models"))
    if models:
        fam_of = {s.name: s.family for specs in by_family.values() for s in specs}
        for m in models:
            if m not in fam_of:
                raise pytest.UsageError(f"--models: {m!r} is not a registered variant")
        chosen = {}
        for m in models:
            chosen.setdefault(fam_of[m], m)
    return chosen


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    from edgeopt.runtimes.base import backend_names

    backends = _csv(config.getoption("--backends")) or backend_names()
    bad = [b for b in backends if b not in backend_names()]
    if bad:
        raise pytest.UsageError(f"--backends: unknown {bad}; known: {', '.join(backend_names())}")
    variants = _variants(config)
    ci = config.getoption("--matrix") == "ci"
    params = []
    for fam, model in variants.items():
        for be in backends:
            if ci and be != "onnxruntime" and fam != CI_FAMILY:
                continue
            marks = [getattr(pytest.mark, be)] + ([pytest.mark.macos] if be == "coreml" else [])
            c = Case(fam, model, be)
            params.append(pytest.param(c, id=c.id, marks=marks))
    metafunc.parametrize("case", params)


# ---------------------------------------------------------------------------------------------- fixtures


def _parse_options(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for it in items:
        if "=" not in it:
            raise pytest.UsageError(f"--device-option {it!r}: expected KEY=VALUE")
        k, v = it.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _jetson_state(device: Any) -> dict[str, Any] | None:
    """nvpmodel mode and jetson_clocks state of a Jetson reached over ssh (None on other boards)."""
    run = getattr(device, "exec", None)
    if run is None:
        return None
    rel = run(["cat", "/etc/nv_tegra_release"], timeout=30, check=False)
    if rel.returncode != 0:
        return None
    state: dict[str, Any] = {"nv_tegra_release": rel.stdout.strip().splitlines()[0] if rel.stdout.strip() else ""}
    for key, argv in (("nvpmodel", ["nvpmodel", "-q"]), ("jetson_clocks", ["jetson_clocks", "--show"])):
        p = run(argv, timeout=60, check=False)
        state[key] = p.stdout.strip() if p.returncode == 0 else f"unavailable (exit {p.returncode}): {p.stderr.strip()[:200]}"
    return state


@dataclass
class DeviceUnderTest:
    device: Any
    info: dict[str, Any]
    backends: dict[str, str]  # backend -> runtime version on the device
    emulated: bool


@pytest.fixture(scope="session")
def dut(pytestconfig: pytest.Config) -> DeviceUnderTest:
    """The device under test, opened once; its info snapshot is taken once and stored with every result."""
    uri = pytestconfig.getoption("--device")
    if not uri:
        pytest.skip("no device given: run `pytest device_tests --device URI` (e.g. --device qemu-arm64)")
    from edgeopt.harness.devices import get_device
    from edgeopt.harness.devices.profiles import load_profiles, resolve_device

    uri, options = resolve_device(uri, load_profiles(pytestconfig.getoption("--devices-file")))
    options.update(_parse_options(pytestconfig.getoption("--device-option")))
    device = get_device(uri, **options)
    info = dict(device.info())
    jetson = _jetson_state(device)
    if jetson is not None:
        info["jetson"] = jetson
    runtimes = info.get("runtimes") or {}
    backends = {}
    for be, dists in BACKEND_RUNTIMES.items():
        for d in dists:
            if d in runtimes:
                backends[be] = runtimes[d]
                break
    if "coreml" in backends and not str(info.get("os", "")).lower().startswith(("darwin", "macos")):
        backends.pop("coreml")  # coremltools installs on Linux but predicts only on macOS
    yield DeviceUnderTest(device, info, backends, bool(getattr(device, "emulated", False)))
    device.close()


@pytest.fixture(scope="session")
def protocol(pytestconfig: pytest.Config, dut: DeviceUnderTest) -> Any:
    from edgeopt.harness.protocol import Protocol

    emu = dut.emulated

    def opt(name: str, emulated: Any, real: Any) -> Any:
        v = pytestconfig.getoption(name)
        return v if v is not None else (emulated if emu else real)

    return Protocol(
        warmup=opt("--warmup", 1, 5), runs=opt("--runs", 2, 20), min_seconds=opt("--min-seconds", 0.0, 1.0),
        timeout=opt("--runner-timeout", 1800.0, 600.0), cooldown=not emu,
    )


@pytest.fixture(scope="session")
def store(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from edgeopt.store import Store

    url = pytestconfig.getoption("--db") or f"sqlite:///{tmp_path_factory.mktemp('store') / 'device_tests.db'}"
    return Store(url)


def _norm_arch(a: str | None) -> str:
    a = (a or "").lower()
    return {"arm64": "aarch64", "amd64": "x86_64"}.get(a, a)


@pytest.fixture(scope="session")
def tvm_target(pytestconfig: pytest.Config, dut: DeviceUnderTest) -> str:
    given = pytestconfig.getoption("--tvm-target")
    if given:
        return given
    arch = _norm_arch(dut.info.get("arch"))
    if arch == "aarch64":
        return "cortex-a72" if dut.emulated else "aarch64"
    if arch == platform.machine().lower():
        return "host"
    pytest.skip(f"no default TVM target for a {arch} device; pass --tvm-target")
    return ""


@pytest.fixture(scope="session")
def compile_bundle(tmp_path_factory: pytest.TempPathFactory):
    """Compile (model, backend, target) once per session on this host."""
    cache: dict[tuple[str, str, str | None], Any] = {}
    root = tmp_path_factory.mktemp("bundles")

    def get(model: str, backend: str, target: str | None) -> Any:
        key = (model, backend, target)
        if key not in cache:
            import edgeopt

            out = root / f"{model}-{backend}-{target or 'default'}.bundle"
            cache[key] = edgeopt.compile(model, backend=backend, target=target, output=out, samples=2, overwrite=True)
        return cache[key]

    return get


_GMACS: dict[str, float] = {}


def gmacs(model: str) -> float:
    """GMACs of one inference: the paper's figure when the card has one, else counted on this host."""
    if model not in _GMACS:
        from edgeopt.models import get_spec

        spec = get_spec(model)
        if spec.paper.macs_g:
            _GMACS[model] = float(spec.paper.macs_g)
        else:
            import torch

            from edgeopt.models.counting import count_macs

            x = spec.sample_inputs(1)[0]
            module = spec.build()
            _GMACS[model] = count_macs(module, tuple(torch.from_numpy(x[i.name]) for i in spec.inputs)) / 1e9
    return _GMACS[model]


def host_max_abs(bundle: Any) -> float | None:
    """Max abs diff of the artifact run on this (x86) host vs the reference; None when it cannot run here."""
    if bundle.manifest.get("backend_details", {}).get("host_runnable", True) is not True:
        return None
    from edgeopt.fidelity import output_metrics
    from edgeopt.runtimes.base import get_backend

    sess = get_backend(bundle.backend).load(bundle.path, bundle.manifest)
    try:
        outs = sess.run(bundle.reference_inputs())
    finally:
        sess.close()
    refs = bundle.reference_outputs()
    return output_metrics([refs], [{k: outs[k] for k in refs if k in outs}])["max_abs"]


# ---------------------------------------------------------------------------------------------- the table


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def table_markdown(rows: list[dict[str, Any]], device: str) -> str:
    head = (
        "| family | model | backend | outputs match | max abs diff vs x86 reference (device) | same, artifact on x86 host "
        "| p50 ms | emulated | host compile s | push+run s |\n"
    )
    head += "|---|---|---|---|---|---|---|---|---|---|\n"
    body = "".join(
        f"| {r['family']} | {r['model']} | {r['backend']} | {r['match']} | {_fmt(r.get('device_max_abs'))} | "
        f"{_fmt(r.get('host_max_abs'))} | {_fmt(r.get('p50_ms'))} | {r.get('emulated')} | "
        f"{r.get('compile_s', 0):.0f} | {r.get('device_s', 0):.0f} |\n"
        for r in rows
    )
    return f"Device: `{device}`\n\n{head}{body}"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = getattr(config, "_edgeopt_rows", [])
    if not rows:
        return
    text = table_markdown(sorted(rows, key=lambda r: (r["family"], r["backend"])), config.getoption("--device") or "?")
    terminalreporter.write_sep("=", "device tests: family x backend")
    terminalreporter.write_line(text)
    out = config.getoption("--report")
    if out:
        from edgeopt._util import atomic_write_bytes

        atomic_write_bytes(Path(out), text.encode())
        terminalreporter.write_line(f"table written to {out}")
