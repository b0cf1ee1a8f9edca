"""tvm-rpc:// devices: a real TVM RPC tracker and server on 127.0.0.1 run a bundle built by edgeopt's TVM backend."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from _bundles import tiny_bundle, tiny_tvm_bundle

from edgeopt.errors import DeviceError, EdgeoptError
from edgeopt.harness.devices import get_device
from edgeopt.harness.devices.tvm_rpc import parse_tvm_rpc_uri
from edgeopt.harness.protocol import Protocol, measure

tvm = pytest.importorskip("tvm")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# TVM's own Tracker and Server classes (what `python -m tvm.exec.rpc_tracker/rpc_server` wrap), started in one
# child process bound to 127.0.0.1. (Here the `-m tvm.exec.rpc_tracker` entry point never listened within 60 s.)
_FARM = """
import sys, time
from tvm.rpc.tracker import Tracker
from tvm.rpc.server import Server
t = Tracker("127.0.0.1", int(sys.argv[1]), int(sys.argv[1]) + 50, silent=True)
s = Server(host="127.0.0.1", port=int(sys.argv[2]), port_end=int(sys.argv[2]) + 50, tracker_addr=("127.0.0.1", t.port), key="edgeopt-test", silent=True)
print(t.port, flush=True)
while True:
    time.sleep(60)
"""


@pytest.fixture(scope="module")
def tracker():
    import os
    import signal

    p = subprocess.Popen([sys.executable, "-c", _FARM, str(_port()), str(_port())], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        port = int(p.stdout.readline().strip() or 0)
        assert port, "the TVM RPC tracker did not start"
        from tvm import rpc

        deadline = time.time() + 60
        while time.time() < deadline:  # wait until the server has registered its key
            try:
                if "edgeopt-test" in rpc.connect_tracker("127.0.0.1", port).summary().get("queue_info", {}):
                    break
            except Exception:  # noqa: BLE001 - tracker still starting
                pass
            time.sleep(0.3)
        yield port
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(10)


def test_uri_parsing():
    assert parse_tvm_rpc_uri("tvm-rpc://127.0.0.1:9190/rpi4") == ("127.0.0.1", 9190, "rpi4")
    for bad in ("tvm-rpc://host:9190", "tvm-rpc://host:x/k", "tvm-rpc:///k"):
        with pytest.raises(EdgeoptError):
            parse_tvm_rpc_uri(bad)


def test_tvm_bundle_over_rpc(tracker, tmp_path):
    b = tiny_tvm_bundle(tmp_path / "tvm.bundle")
    d = get_device(f"tvm-rpc://127.0.0.1:{tracker}/edgeopt-test")
    try:
        res = measure(d, b.path, Protocol(warmup=2, runs=10, min_seconds=0.0, cooldown=False))
        assert d.last_push_skipped is False
        d.push(b)
        assert d.last_push_skipped is True  # once per sha256 per session
        onnx_b = tiny_bundle(tmp_path / "onnx.bundle")
        with pytest.raises(DeviceError, match="runs TVM bundles only"):
            measure(d, onnx_b.path, Protocol(runs=1, cooldown=False))
    finally:
        d.close()
    assert res["outputs_match"] is True and res["check"]["cosine"] > 0.9999
    assert res["runs"] >= 10 and res["latency_ms"]["p50"] > 0
    assert res["device"]["uri"] == f"tvm-rpc://127.0.0.1:{tracker}/edgeopt-test"


def test_unknown_key_and_unreachable_tracker(tracker):
    with pytest.raises(DeviceError, match="no board with key 'pixel'"):
        get_device(f"tvm-rpc://127.0.0.1:{tracker}/pixel").info()
    with pytest.raises(DeviceError, match="unreachable"):
        get_device(f"tvm-rpc://127.0.0.1:{_port()}/edgeopt-test").info()
