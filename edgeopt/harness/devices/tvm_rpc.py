"""`tvm-rpc://HOST:PORT/KEY`: a board (or a farm of them) behind TVM's RPC tracker.

TVM's RPC is the existing engine for device farms: boards run `python -m tvm.exec.rpc_server --tracker
HOST:PORT --key KEY` (only the TVM runtime is needed there) and the tracker hands out one free board per
request. There is no edgeopt runner on such a board, so this device runs the protocol from the host
through the RPC session: upload the bundle's `.so` (once per sha256 per session), load it in a Relax VM
on the remote CPU, upload the weights once, check the outputs on the bundle's reference inputs, and time
`main` with TVM's remote `time_evaluator` (the timing happens on the board; one repeat = one inference).
The result has the same JSON shape as `edgeopt.runner`'s, so the protocol, store and reports are shared.
Only TVM bundles (`edgeopt compile --backend tvm`) run here; their target must match the board.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from edgeopt.errors import DeviceError, EdgeoptError
from edgeopt.harness.devices.base import Device, register_device


def parse_tvm_rpc_uri(uri: str) -> tuple[str, int, str]:
    parts = urlsplit(uri)
    key = parts.path.strip("/")
    try:
        port = parts.port or 9190
    except ValueError:
        raise EdgeoptError(f"bad port in {uri!r}", "write tvm-rpc://HOST:PORT/KEY") from None
    if parts.scheme != "tvm-rpc" or not parts.hostname or not key or "/" in key:
        raise EdgeoptError(f"bad TVM RPC device URI {uri!r}", "write tvm-rpc://TRACKER_HOST:PORT/DEVICE_KEY")
    return parts.hostname, port, key


@register_device
class TvmRpcDevice(Device):
    """Options: priority (tracker queue priority), session_timeout (s), request_timeout (s)."""

    scheme = "tvm-rpc"

    def __init__(self, uri: str, **options: Any) -> None:
        super().__init__(uri, **options)
        self.host, self.port, self.key = parse_tvm_rpc_uri(uri)
        self._sess = None
        self._uploaded: dict[str, str] = {}
        self._bundles: dict[str, Path] = {}
        self.last_push_skipped: bool | None = None

    @property
    def id(self) -> str:
        return f"tvm-rpc://{self.host}:{self.port}/{self.key}"

    def session(self):
        """One RPC session from the tracker (a free board with this key), opened on first use."""
        if self._sess is not None:
            return self._sess
        try:
            from tvm import rpc
        except ImportError:
            raise DeviceError("tvm-rpc devices need apache-tvm on the host", "pip install 'edgeopt[tvm]'") from None
        import socket

        try:  # TVM's own connect retries for a minute; say "unreachable" at once instead
            socket.create_connection((self.host, self.port), timeout=float(self.options.get("connect_timeout", 10))).close()
        except OSError as e:
            raise DeviceError(f"TVM RPC tracker {self.host}:{self.port} is unreachable: {e}", "start python -m tvm.exec.rpc_tracker there, or check host/port") from None
        try:
            tracker = rpc.connect_tracker(self.host, self.port)
        except Exception as e:  # noqa: BLE001 - TVM raises bare errors for socket failures
            raise DeviceError(f"TVM RPC tracker {self.host}:{self.port} is unreachable: {str(e).splitlines()[0][:200]}", "start python -m tvm.exec.rpc_tracker there, or check host/port") from None
        try:
            summary = tracker.summary()
            keys = {q.split(":")[0] for q in (summary.get("queue_info") or {})}
        except Exception:  # noqa: BLE001 - an old tracker without summary(): request and see
            keys = {self.key}
        if self.key not in keys:
            raise DeviceError(f"no board with key {self.key!r} is registered at tracker {self.host}:{self.port}", f"keys there: {', '.join(sorted(keys)) or 'none'}")
        try:
            self._sess = tracker.request(self.key, priority=int(self.options.get("priority", 1)), session_timeout=int(self.options.get("session_timeout", 0)), max_retry=3)
        except Exception as e:  # noqa: BLE001
            raise DeviceError(f"tracker {self.host}:{self.port} gave no {self.key!r} board: {str(e).splitlines()[0][:200]}", "all boards busy or gone; retry later") from None
        return self._sess

    def info(self) -> dict[str, Any]:
        sess = self.session()
        out: dict[str, Any] = {"uri": self.id, "transport": "tvm-rpc", "key": self.key, "emulated": False}
        try:
            dev = sess.cpu(0)
            out["cpu_exists"] = bool(dev.exist)
        except Exception as e:  # noqa: BLE001
            out["note"] = f"device query failed: {e}"
        try:
            import tvm

            out["runtimes"] = {"apache-tvm (host)": tvm.__version__}
        except ImportError:
            pass
        return out

    def push(self, bundle_dir: Path, sha256: str) -> str:
        from edgeopt.bundle import load_bundle

        b = load_bundle(bundle_dir)
        if b.backend != "tvm":
            raise DeviceError(f"{self.id} runs TVM bundles only; this one is for {b.backend}", "compile with --backend tvm for the board's target")
        name = f"edgeopt-{sha256[:16]}.so"
        if self._uploaded.get(sha256) == name:
            self.last_push_skipped = True
        else:
            try:
                self.session().upload(str(b.artifact), target=name)
            except Exception as e:  # noqa: BLE001
                raise DeviceError(f"upload to {self.id} failed: {str(e).splitlines()[0][:200]}") from None
            self._uploaded[sha256] = name
            self.last_push_skipped = False
        self._bundles[name] = b.path
        return name

    def run_runner(self, remote_bundle: str, args: list[str], timeout: float) -> str:
        """Run the protocol over RPC and return the runner-shaped JSON (errors as {"error": ...})."""
        import argparse

        ap = argparse.ArgumentParser()
        ap.add_argument("--warmup", type=int, default=5)
        ap.add_argument("--runs", type=int, default=20)
        ap.add_argument("--min-seconds", type=float, default=1.0)
        ap.add_argument("--threads", type=int, default=None)
        a, _ = ap.parse_known_args(args)
        try:
            return json.dumps(self._measure(remote_bundle, a.warmup, a.runs, a.min_seconds, a.threads, timeout))
        except DeviceError:
            raise
        except Exception as e:  # noqa: BLE001 - the protocol reads this like a runner's error line
            return json.dumps({"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"})

    def _measure(self, name: str, warmup: int, runs: int, min_seconds: float, threads: int | None, timeout: float) -> dict[str, Any]:
        import tvm
        from tvm import relax

        from edgeopt.bundle import load_bundle
        from edgeopt.fidelity import output_metrics
        from edgeopt.runner import summarize

        b = load_bundle(self._bundles[name])
        sess = self.session()
        dev = sess.cpu(0)
        if threads:
            sess.get_function("runtime.config_threadpool")(0, int(threads))
        t0 = time.perf_counter()
        lib = sess.load_module(name)
        vm = relax.VirtualMachine(lib, dev)
        details = b.manifest.get("backend_details", {})
        io_names = details.get("io") or {}
        in_names = io_names.get("inputs") or [i["name"] for i in b.manifest["inputs"]]
        out_names = io_names.get("outputs") or [o["name"] for o in b.manifest["outputs"]]
        with np.load(b.path / details.get("params_file", "params.npz")) as z:
            params = [tvm.runtime.tensor(np.asarray(z[k], order="C"), dev) for k in sorted(z.files)]
        init_ms = (time.perf_counter() - t0) * 1e3
        refs_in, refs_out = b.reference_inputs(), b.reference_outputs()
        args = [tvm.runtime.tensor(np.asarray(refs_in[n], order="C"), dev) for n in in_names]
        vm.set_input("main", *args, *params)
        vm.invoke_stateful("main")
        out = vm.get_outputs("main")
        outs = [out] if hasattr(out, "numpy") else [out[i] for i in range(len(out_names))]
        got = {n: o.numpy() for n, o in zip(out_names, outs, strict=True)}
        check = output_metrics([refs_out], [{k: got[k] for k in refs_out if k in got}])
        cos_min = b.manifest.get("check", {}).get("cosine_min", 0.999)
        check["cosine_min"] = cos_min
        # Warm-up, then repeats of one inference each, until both `runs` and `min_seconds` are met.
        if warmup:
            vm.time_evaluator("invoke_stateful", dev, number=warmup, repeat=1)("main")
        lat: list[float] = []
        deadline = time.monotonic() + timeout
        while len(lat) < runs or sum(lat) / 1e3 < min_seconds:
            if time.monotonic() > deadline:
                raise DeviceError(f"{self.id} did not finish within {timeout:.0f} s", "raise --timeout or lower --runs")
            res = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=max(1, runs - len(lat)) if len(lat) < runs else max(1, runs // 2))("main")
            lat += [r * 1e3 for r in res.results]
        return {
            "bundle_sha256": b.sha256, "model": b.model, "backend": b.backend, "precision": b.manifest.get("precision"),
            **summarize(lat), "warmup": warmup, "threads": threads, "init_ms": init_ms, "peak_rss_mb": None,
            "outputs_match": bool(set(refs_out) <= set(got) and check["cosine"] >= cos_min), "check": check, "energy": None,
            "platform": {"transport": "tvm-rpc", "key": self.key}, "torch_loaded": False,
            "timing": "TVM time_evaluator on the board (one inference per repeat)",
        }

    def close(self) -> None:
        self._sess = None
