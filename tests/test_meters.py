"""Energy meters and thermal sensors, parsed from fixture files in the real formats (tests/fixtures/meters)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from edgeopt.harness.meters import auto_meters, make_meter
from edgeopt.harness.meters.android import AndroidBatteryMeter, battery_watts, parse_dumpsys_battery
from edgeopt.harness.meters.base import FileAccess, Meter, MeterError, RootedFiles, energy_between, mean_power
from edgeopt.harness.meters.ina3221 import Ina3221Meter
from edgeopt.harness.meters.rapl import RaplMeter
from edgeopt.harness.meters.tegrastats import parse_line, total_watts
from edgeopt.harness.thermal import ThermalReader, ThermalSnapshot, cool_down, throttle_check

FIX = Path(__file__).parent / "fixtures" / "meters"


def test_rapl_sums_packages_only_and_unwraps(tmp_path):
    root = tmp_path / "rapl"
    shutil.copytree(FIX / "rapl", root, symlinks=True)
    m = RaplMeter(RootedFiles(root))
    assert [z.rsplit("/", 1)[1] for z in m.zones] == ["intel-rapl:0", "intel-rapl:1"]  # sub-zones would double count
    e0 = m.read()
    assert e0 == pytest.approx((262143000000 + 1000000) / 1e6)
    pkg = root / "sys/class/powercap/intel-rapl:0/energy_uj"
    pkg.write_text("500000\n")  # wrapped past max_energy_range_uj (262143328850)
    e1 = m.read()
    assert e1 - e0 == pytest.approx((262143328850 - 262143000000 + 500000) / 1e6)
    pkg.write_text("1500000\n")
    assert m.read() - e1 == pytest.approx(1.0)


def test_rapl_absent_or_unreadable(tmp_path):
    with pytest.raises(MeterError, match="no RAPL package zones"):
        RaplMeter(RootedFiles(tmp_path))
    root = tmp_path / "r"
    shutil.copytree(FIX / "rapl", root, symlinks=True)
    m = RaplMeter(RootedFiles(root))
    (root / "sys/class/powercap/intel-rapl:1/energy_uj").unlink()
    with pytest.raises(MeterError, match="not readable"):
        m.read()


def test_ina3221_jetpack4_iio_layout():
    m = Ina3221Meter(RootedFiles(FIX / "jp4"))
    assert set(m.rails) == {"POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"}
    assert m.name == "ina3221:POM_5V_IN"
    assert m.read() == pytest.approx(2.545)
    assert m.read_rails()["POM_5V_CPU"] == pytest.approx(0.549)


def test_ina3221_jetpack5_hwmon_layout_skips_sum_channel():
    m = Ina3221Meter(RootedFiles(FIX / "jp5"))
    assert set(m.rails) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}  # in7 "sum of shunt voltages" skipped
    assert m.read() == pytest.approx(5072 * 1164 / 1e6)
    soc = Ina3221Meter(RootedFiles(FIX / "jp5"), rail="VDD_SOC")
    assert soc.read() == pytest.approx(5064 * 311 / 1e6)
    with pytest.raises(MeterError, match="no rail 'VDD_GPU'"):
        Ina3221Meter(RootedFiles(FIX / "jp5"), rail="VDD_GPU")


def test_tegrastats_both_generations():
    nano = [parse_line(x) for x in (FIX / "tegrastats_jp4_nano.txt").read_text().splitlines()]
    assert nano[1]["rails_mw"] == {"POM_5V_IN": (2545, 2547), "POM_5V_GPU": (0, 0), "POM_5V_CPU": (549, 529)}
    assert "RAM" not in nano[1]["rails_mw"] and "SWAP" not in nano[1]["rails_mw"]
    assert nano[0]["temps_c"]["GPU"] == 31.5
    assert total_watts(nano[1]) == pytest.approx(2.545)
    orin = [parse_line(x) for x in (FIX / "tegrastats_orin.txt").read_text().splitlines()]
    assert orin[0]["rails_mw"]["VDD_IN"] == (5832, 5852)
    assert total_watts(orin[1]) == pytest.approx(9.12)
    assert total_watts(orin[1], "VDD_SOC") == pytest.approx(1.702)
    assert orin[1]["temps_c"]["tj"] == 52.3
    with pytest.raises(MeterError, match="no power rails"):
        total_watts(parse_line("RAM 1/2MB SWAP 0/1MB CPU [1%@100]"))


def test_android_battery_sign_and_units():
    a = FIX / "android"
    pixel = battery_watts((a / "current_now_pixel").read_text(), (a / "voltage_now_pixel").read_text())
    assert pixel == pytest.approx(0.452 * 3.874)  # negative while discharging on Pixels
    samsung = battery_watts((a / "current_now_samsung").read_text(), (a / "voltage_now_samsung").read_text())
    assert samsung == pytest.approx(0.318 * 4.012)
    ma = battery_watts((a / "current_now_ma").read_text(), (a / "voltage_now_pixel").read_text())
    assert ma == pytest.approx(pixel)  # a kernel that reports mA
    with pytest.raises(MeterError):
        battery_watts(None, "3874000")
    d = parse_dumpsys_battery((a / "dumpsys_battery.txt").read_text())
    assert d["level"] == "87" and d["USB powered"] == "true" and d["temperature"] == "291"


def test_android_meter_reads_through_file_access(tmp_path):
    bat = tmp_path / "sys/class/power_supply/battery"
    bat.mkdir(parents=True)
    shutil.copy(FIX / "android/current_now_pixel", bat / "current_now")
    shutil.copy(FIX / "android/voltage_now_pixel", bat / "voltage_now")
    m = AndroidBatteryMeter(RootedFiles(tmp_path))
    assert m.read() == pytest.approx(0.452 * 3.874)


def test_energy_integration_counter_and_power():
    power = [(0.0, 2.0), (1.0, 4.0), (2.0, 4.0)]
    assert energy_between(power, "power", 0.0, 2.0) == pytest.approx(3.0 + 4.0)
    assert energy_between(power, "power", 0.5, 1.5) == pytest.approx(0.5 * (3.0 + 4.0) / 2 + 0.5 * 4.0)
    counter = [(0.0, 10.0), (1.0, 12.0), (2.0, 16.0)]
    assert energy_between(counter, "counter", 0.5, 2.0) == pytest.approx(16.0 - 11.0)
    assert mean_power(counter, "counter") == pytest.approx(3.0)
    with pytest.raises(MeterError):
        energy_between([], "power", 0, 1)


class _Ramp(Meter):
    """A power source whose watts come from a real file, written while the sampler runs."""

    name = "file-watts"
    kind = "power"
    interval = 0.01

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def read(self) -> float:
        return float(self.path.read_text())


def test_sampler_thread_integrates_changing_power(tmp_path):
    f = tmp_path / "watts"
    f.write_text("2.0")
    m = _Ramp(f)
    m.start()
    time.sleep(0.3)
    f.write_text("6.0")
    time.sleep(0.3)
    j = m.stop()
    dur = m.samples[-1][0] - m.samples[0][0]
    assert len(m.samples) > 20
    assert 2.0 * dur < j < 6.0 * dur
    assert j == pytest.approx(4.0 * dur, rel=0.15)


def test_make_meter_and_auto_meters_here():
    with pytest.raises(MeterError, match="unknown meter"):
        make_meter("joulescope")
    with pytest.raises(MeterError, match="monsoon package"):
        make_meter("monsoon")
    found, why = auto_meters()
    if not found:  # this sandbox: no RAPL, no NVIDIA driver, no Jetson; the reason names each
        assert "rapl" in why and "nvml" in why and "ina3221" in why
    else:
        assert why is None and all(m.available()[0] for m in found)


def test_thermal_zones_cooldown_and_throttle(tmp_path):
    root = tmp_path / "t"
    shutil.copytree(FIX / "thermal", root)
    r = ThermalReader(RootedFiles(root))
    s = r.snapshot()
    assert s.temps_c == {"x86_pkg_temp": 45.0, "acpitz": 27.8}  # the -273 C sensor is dropped
    assert s.freqs_khz == {"cpu0": 2400000, "cpu1": 2400000}
    assert cool_down(r, idle_c=44.0, timeout_s=1)["reached_idle"] is True
    hot = cool_down(r, idle_c=30.0, timeout_s=0.2, poll_s=0.05)
    assert hot["reached_idle"] is False and hot["start_c"] == 45.0
    (root / "sys/devices/system/cpu/cpu1/cpufreq/scaling_cur_freq").write_text("1200000\n")
    (root / "sys/class/thermal/thermal_zone0/temp").write_text("91000\n")
    t = throttle_check(s, r.snapshot(), throttle_c=85.0)
    assert t["throttled"] and any("cpu1 2400->1200" in x for x in t["reasons"]) and any("91.0 C" in x for x in t["reasons"])
    assert throttle_check(s, s)["throttled"] is False
    assert ThermalSnapshot().max_c is None


def test_local_file_access():
    fa = FileAccess()
    assert fa.read("/proc/self/stat") is not None
    assert fa.read("/nonexistent/x") is None


def test_nvml_on_a_real_gpu():
    """Runs where an NVIDIA driver exists (checked on an H200: idle ~79 W, matmul load ~650 W); skipped elsewhere."""

    from edgeopt.harness.meters.nvml import NvmlMeter

    try:
        m = NvmlMeter(0)
    except MeterError as e:
        assert "NVIDIA" in e.message or "NVML" in e.message
        pytest.skip(e.message)
    a = m.read()
    time.sleep(0.5)
    assert m.read() > a  # a GPU always draws power: the counter moves
