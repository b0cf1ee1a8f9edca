"""HTML report: real measurements of tiny bundles on the local device, rendered in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from _bundles import tiny_bundle

from edgeopt.harness.devices import get_device
from edgeopt.harness.protocol import Protocol, measure
from edgeopt.report.html import render_html, write_html
from edgeopt.report.plots import pareto_front
from edgeopt.store import Store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def test_pareto_front():
    pts = [(10, 0.99), (12, 0.999), (11, 0.98), (20, 0.9995), (25, 0.9990), (9, 0.95)]
    assert pareto_front(pts) == [(9, 0.95), (10, 0.99), (12, 0.999), (20, 0.9995)]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{tmp / 'r.db'}"
    st = Store(url)
    dev = get_device("local")
    info = dev.info()
    for i, (n, cos) in enumerate([(64, 1.0), (256, 0.9990), (512, 0.9995)]):
        b = tiny_bundle(tmp / f"b{i}.bundle", seed=i, n=n, model=f"tiny_{n}", cosine=cos)
        res = measure(dev, b.path, Protocol(warmup=1, runs=8, min_seconds=0.0, cooldown=False), device_info=info)
        st.add_measurement(b.manifest, res)
    st.record_job("k" * 32, {"model": "tiny_x", "passes": "", "backend": "onnxruntime", "precision": None, "device_id": "ssh://pi@board:22", "protocol_key": "p"},
                  "failed", stage="connect", error="ssh://pi@board:22 is unreachable: Connection refused")
    return url, tmp


def test_render_has_tables_plots_and_reasons(db):
    url, _ = db
    st = Store(url)
    rows = st.measurements()
    page = render_html(rows, failures=st.jobs(status="failed"), devices=st.devices())
    assert page.count("data-plot=") == 4  # pareto, size, per-device, distributions
    for key in ("pareto", "size", "devices", "distributions"):
        assert f"data-plot='{key}'" in page
    assert "data-missing-plot='energy'" in page and "no energy meter" in page  # said, not drawn empty
    assert "unreachable: Connection refused" in page and "tiny_512" in page
    assert "http://" not in page and "https://" not in page  # self-contained


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/system-deps.sh chromium)")
def test_renders_in_headless_chromium(db, tmp_path):
    url, _ = db
    out = write_html(Store(url).measurements(), tmp_path / "report.html", db=url)
    common = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<img data-plot=") == 4 and "<table id=\"measurements\">" in dom and "<table id=\"failures\">" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([*common, "--window-size=1200,2600", "--hide-scrollbars", f"--screenshot={shot}", out.as_uri()], capture_output=True, timeout=120, check=False)
    from PIL import Image

    a = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert a.shape[0] >= 2000 and a.std() > 20  # not a blank page
    # matplotlib's first colour (#1f77b4) painted by the embedded plots: the images decoded and drew
    blue = (np.abs(a - np.array([31, 119, 180])).sum(axis=2) < 40).sum()
    assert blue > 2000, blue


def test_cli_report_html(db, tmp_path):
    url, _ = db
    out = tmp_path / "cli.html"
    r = subprocess.run([__import__("sys").executable, "-m", "edgeopt.cli", "report", "--db", url, "--html", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert Path(out).read_text().count("data-plot=") == 4
