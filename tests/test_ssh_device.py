"""ssh:// devices against a REAL OpenSSH server on 127.0.0.1 (temporary host key, user key and config)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _bundles import tiny_bundle
from _sshd import sshd_missing

from edgeopt.errors import DeviceError, EdgeoptError
from edgeopt.harness.devices import get_device
from edgeopt.harness.devices.ssh import device_side_zip, parse_ssh_uri
from edgeopt.harness.protocol import Protocol, measure

pytestmark = pytest.mark.skipif(sshd_missing() is not None, reason=str(sshd_missing()))


def _dev(sshd, tmp_path, **kw):
    opts = {"identity": str(sshd.identity), "known_hosts": str(sshd.trusted_known_hosts()), "python": sys.executable, "remote_dir": str(tmp_path / "board")}
    opts.update(kw)
    return get_device(sshd.uri, **opts)


def test_unknown_host_key_refused_then_trusted_once(sshd, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    d = _dev(sshd, tmp_path, known_hosts=str(kh))
    with pytest.raises(DeviceError, match="not in known_hosts: refused.*--trust-new-host"):
        d.info()
    d.close()
    assert kh.read_text() == ""
    d = _dev(sshd, tmp_path, known_hosts=str(kh), trust_new_host=True)
    info = d.info()
    d.close()
    assert info["uri"] == f"ssh://{sshd.uri.split('//')[1]}" and info["cores"] >= 1 and info["runtimes"].get("onnxruntime")
    assert sshd.host_pub.read_text().split()[1] in kh.read_text()  # the key was stored (hashed host name)
    d = _dev(sshd, tmp_path, known_hosts=str(kh))  # now known: accepted without the flag
    assert d.info()["arch"]
    d.close()


def test_changed_host_key_refused_even_with_trust(sshd, tmp_path):
    other = tmp_path / "other"
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} " + " ".join(other.with_suffix(".pub").read_text().split()[:2]) + "\n")
    d = _dev(sshd, tmp_path, known_hosts=str(kh), trust_new_host=True)
    with pytest.raises(DeviceError, match="CHANGED"):
        d.info()
    d.close()


def test_push_once_per_hash_run_and_verify(sshd, tmp_path):
    b = tiny_bundle(tmp_path / "t.bundle")
    d = _dev(sshd, tmp_path)
    try:
        remote = d.push(b)
        assert d.last_push_skipped is False
        assert (tmp_path / "board" / "bundles" / b.sha256 / "manifest.json").is_file()
        t0 = time.perf_counter()
        assert d.push(b) == remote
        assert d.last_push_skipped is True  # verified on the board, not copied again
        skip_s = time.perf_counter() - t0
        # An altered copy on the board is detected and replaced.
        (tmp_path / "board" / "bundles" / b.sha256 / "model.onnx").write_bytes(b"tampered")
        d.push(b)
        assert d.last_push_skipped is False
        res = measure(d, b.path, Protocol(warmup=1, runs=5, min_seconds=0.0, cooldown=False))
    finally:
        d.close()
    assert res["bundle_sha256"] == b.sha256 and res["outputs_match"] is True and res["runs"] >= 5
    assert res["device"]["uri"].startswith("ssh://") and res["device"]["emulated"] is False
    assert res["energy"] is None and "no energy meter configured" in res["energy_reason"]
    assert res["torch_loaded"] is False
    assert skip_s < 30


def test_device_side_zip_is_small_and_deterministic():
    a, sha_a = device_side_zip()
    b, sha_b = device_side_zip()
    assert a == b and sha_a == sha_b and len(a) < 200_000
    import io
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(a)).namelist()
    assert "edgeopt/runner.py" in names and "edgeopt/runtimes/onnxruntime.py" in names
    assert not any("models/" in n or "passes/" in n or "export" in n for n in names)


def test_runner_crash_and_hang_are_device_errors(sshd, tmp_path):
    broken = tiny_bundle(tmp_path / "broken.bundle", broken=True)
    good = tiny_bundle(tmp_path / "good.bundle", seed=1)
    d = _dev(sshd, tmp_path)
    try:
        with pytest.raises(DeviceError, match="runner on ssh://.* failed"):
            measure(d, broken.path, Protocol(warmup=0, runs=1, min_seconds=0, cooldown=False))
        with pytest.raises(DeviceError, match="did not finish within 3 s"):
            measure(d, good.path, Protocol(warmup=0, runs=10**9, min_seconds=600, timeout=3, cooldown=False))
    finally:
        d.close()


def test_unreachable_and_bad_uris(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = get_device(f"ssh://root@127.0.0.1:{port}", known_hosts=str(tmp_path / "kh"))
    with pytest.raises(DeviceError, match="unreachable"):
        d.info()
    d.close()
    for bad in ("ssh://-oProxyCommand=touch@host", "ssh://root@-evil", "ssh://root@host:notaport", "ssh://"):
        with pytest.raises(EdgeoptError):
            parse_ssh_uri(bad)
    assert parse_ssh_uri("ssh://pi@rpi4.local") == ("pi", "rpi4.local", 22)


def test_end_to_end_over_ssh(sshd, tmp_path):
    """Image file -> pre-processing -> model -> post-processing on the board, beside the model-only time."""
    pytest.importorskip("PIL")
    import numpy as np

    # a bundle with an image input: 1x3x16x16 -> global average -> 3 logits (a real ONNX graph)
    from onnx import TensorProto, helper
    from PIL import Image

    from edgeopt.bundle import Manifest, write_bundle

    g = helper.make_graph([helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])], "gap",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with write_bundle(tmp_path / "img.bundle") as w:
        (w.root / "model.onnx").write_bytes(m.SerializeToString())
        w.write_reference({"x": x}, {"y": x.mean(axis=(2, 3))})
        w.finish(Manifest.draft({"model": {"name": "gap", "family": "tiny", "task": "classification"}, "backend": "onnxruntime", "artifact": "model.onnx",
                  "precision": "fp32", "target": "host", "inputs": [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32"}],
                  "outputs": [{"name": "y", "shape": [1, 3], "dtype": "float32"}], "passes": [], "check": {"cosine_min": 0.999}}))
    img = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (250, 10, 10)).save(img)
    d = _dev(sshd, tmp_path)
    try:
        res = measure(d, tmp_path / "img.bundle", Protocol(warmup=1, runs=3, min_seconds=0, end_to_end=str(img), cooldown=False))
    finally:
        d.close()
    e2e = res["e2e"]
    assert e2e["end_to_end"]["runs"] >= 3 and e2e["preprocess_ms_p50"] > 0
    assert e2e["output"][0][0] == 0  # red channel wins after ImageNet normalisation
    assert Protocol(end_to_end=str(img)).key() != Protocol().key()
    shutil.rmtree(tmp_path / "board", ignore_errors=True)


def test_energy_through_a_board_meter(sshd, tmp_path):
    """A RAPL-layout counter on the 'board' (read over ssh) that rises at exactly 100 W: the protocol's idle
    baseline, window integration and per-inference figures must come out of it."""
    root = tmp_path / "sysroot"
    shutil.copytree(Path(__file__).parent / "fixtures" / "meters" / "rapl", root, symlinks=True)
    pc = root / "sys/class/powercap"
    (pc / "intel-rapl:1").rename(tmp_path / "unused-zone")  # one package
    # The counter is written by its own process (CLOCK_MONOTONIC is system-wide), not a thread of this
    # one: a thread competes for the GIL with the measurement and fell behind under load.
    writer = (
        "import sys, time, pathlib\n"
        "z = pathlib.Path(sys.argv[1]) / 'intel-rapl:0'\n"
        "t0 = float(sys.argv[2])\n"
        "while True:\n"
        "    (z / 'energy_uj.tmp').write_text(f'{int((time.monotonic() - t0) * 100.0 * 1e6)}\\n')\n"  # µJ at 100 W
        "    (z / 'energy_uj.tmp').rename(z / 'energy_uj')\n"
        "    time.sleep(0.002)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", writer, str(pc), repr(time.monotonic())])
    b = tiny_bundle(tmp_path / "e.bundle")
    d = _dev(sshd, tmp_path, meters=[{"name": "rapl", "root": str(pc)}])
    try:
        res = measure(d, b.path, Protocol(warmup=1, runs=20, min_seconds=1.0, idle_seconds=1.0, cooldown=False))
    finally:
        proc.kill()
        proc.wait()
        d.close()
    e = res["energy"]
    assert e["meter"] == "rapl" and e["samples"] >= 3 and res["energy_reason"] is None
    assert e["idle_watts"] == pytest.approx(100.0, rel=0.1)
    assert e["joules_window"] == pytest.approx(100.0 * e["window_s"], rel=0.1)
    assert e["joules_per_inference_gross"] == pytest.approx(100.0 * res["latency_ms"]["mean"] / 1e3, rel=0.1)
    assert abs(e["joules_per_inference"]) < 0.1 * e["joules_per_inference_gross"]  # same power idle and busy: ~0 net
