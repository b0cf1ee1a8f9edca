"""adb:// parsing on recorded outputs (no phone is attached here: a real phone runs device_tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeopt.errors import DeviceError
from edgeopt.harness.devices import get_device
from edgeopt.harness.devices.adb import parse_benchmark_model, parse_cpufreq, parse_getprop, parse_meminfo_mb

FIX = Path(__file__).parent / "fixtures" / "adb"


def test_getprop_meminfo_cpufreq():
    p = parse_getprop((FIX / "getprop.txt").read_text())
    assert p["ro.product.model"] == "Pixel 7" and p["ro.soc.model"] == "GS201" and p["ro.kernel.qemu"] == ""
    assert p["ro.product.cpu.abilist"] == "arm64-v8a,armeabi-v7a,armeabi"
    assert parse_meminfo_mb((FIX / "meminfo.txt").read_text()) == 7869476 // 1024
    c = parse_cpufreq((FIX / "cpufreq.txt").read_text())
    assert len(c) == 8 and c["cpu7"]["max_khz"] == 2850000 and c["cpu0"]["governor"] == "sched_pixel"
    assert parse_cpufreq("cpu0 - - -\n")["cpu0"] == {"governor": "-", "cur_khz": None, "max_khz": None}


def test_benchmark_model_output():
    r = parse_benchmark_model((FIX / "benchmark_model.txt").read_text())
    assert r["runs"] == 50  # the timed phase, not the warm-up phase
    assert r["latency_ms"]["mean"] == pytest.approx(22.7025) and r["latency_ms"]["min"] == pytest.approx(22.433)
    assert r["latency_ms"]["p50"] is None  # the tool prints no per-run latencies: not invented
    assert r["init_ms"] == pytest.approx(53.219) and r["first_inference_ms"] == pytest.approx(43.188)
    assert r["peak_rss_mb"] == pytest.approx(21.0469) and r["outputs_match"] is None
    assert r["cv"] == pytest.approx(0.180 / 22.7025)
    with pytest.raises(DeviceError, match="no timings"):
        parse_benchmark_model("ERROR: Could not open '/data/local/tmp/x.tflite'.\n")


def test_bad_uri_and_no_adb_server():
    with pytest.raises(DeviceError, match="bad adb device URI"):
        get_device("adb://")
    with pytest.raises(DeviceError, match="bad adb device URI"):
        get_device("adb://a;reboot")
    d = get_device("adb://28151FDH2000AB", adb_port=1)  # nothing listens on port 1
    with pytest.raises(DeviceError, match="no adb server"):
        d.info()
