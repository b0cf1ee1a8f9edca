"""Each family x backend: compile here, push, run on the device, check outputs, record the measurement."""

from __future__ import annotations

import time

import pytest
from conftest import BACKEND_RUNTIMES, Case, DeviceUnderTest, _norm_arch, gmacs, host_max_abs

from edgeopt.errors import EdgeoptError


def test_family_on_backend(case: Case, dut: DeviceUnderTest, protocol, store, compile_bundle, request) -> None:
    from edgeopt.harness.protocol import measure
    from edgeopt.runtimes.base import get_backend

    if case.backend not in dut.backends:
        have = ", ".join(f"{b} {v}" for b, v in dut.backends.items()) or "none"
        pytest.skip(f"{dut.device.uri} has no {case.backend} runtime ({' or '.join(BACKEND_RUNTIMES[case.backend])}); it has: {have}")
    try:
        backend = get_backend(case.backend)
    except EdgeoptError as e:
        pytest.skip(f"{case.backend}: {e.message}")
    ok, why = backend.available()
    if not ok:
        pytest.skip(f"this host cannot compile for {case.backend}: {why}")
    target = request.getfixturevalue("tvm_target") if case.backend == "tvm" else None
    if dut.emulated:
        budget = request.config.getoption("--emulated-max-gmacs")
        g = gmacs(case.model)
        if g > budget:
            pytest.skip(
                f"{case.model} takes {g:.1f} GMACs per inference, beyond the emulated budget of {budget:g} "
                "(emulation is ~100-350x slower than native); run it on a real device or raise --emulated-max-gmacs"
            )

    t0 = time.perf_counter()
    try:
        bundle = compile_bundle(case.model, case.backend, target)
    except EdgeoptError as e:  # a known limitation of the backend for this model, said in one line
        pytest.xfail(f"host could not compile {case.model} for {case.backend}: {e}")

    t1 = time.perf_counter()
    res = measure(dut.device, bundle.path, protocol, dut.info)
    t2 = time.perf_counter()
    mid = store.add_measurement(bundle.manifest, res, replace=True)
    host_mad = host_max_abs(bundle)
    request.config._edgeopt_rows.append({
        "family": case.family, "model": case.model, "backend": case.backend,
        "match": "yes" if res["outputs_match"] else "no",
        "device_max_abs": res["check"].get("max_abs"), "host_max_abs": host_mad,
        "cosine": res["check"].get("cosine"), "p50_ms": res["latency_ms"]["p50"], "emulated": dut.emulated,
        "compile_s": t1 - t0, "device_s": t2 - t1,
    })

    # The device really ran it, on its own architecture, without torch, with the emulation flag recorded.
    assert _norm_arch(res["platform"]["machine"]) == _norm_arch(dut.info.get("arch")), res["platform"]
    assert res["torch_loaded"] is False
    assert res["device"]["emulated"] is dut.emulated
    assert res["runs"] >= protocol.runs
    # Stored, once, under this device and protocol.
    assert store.has(bundle.sha256, res["device"].get("uri") or dut.device.id, res["protocol_key"])
    assert mid > 0
    # Outputs on the device vs the fp32 reference computed on this host.
    assert res["outputs_match"], (
        f"{case.model} on {case.backend}: outputs differ on {dut.device.uri}: cosine {res['check']['cosine']:.6f} "
        f"< {res['check']['cosine_min']}, max abs diff {res['check']['max_abs']:.3g}"
    )
