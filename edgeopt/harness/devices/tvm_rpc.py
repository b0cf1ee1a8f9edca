"""`tvm-rpc://HOST:PORT/KEY`: a board (or a farm of them) behind TVM's RPC tracker.

TVM's RPC is the existing engine for device farms: boards run `python -m tvm.exec.rpc_server --tracker
HOST:PORT --key KEY` (only the TVM runtime is needed there) and the tracker hands out one free board per
request. There is no edgeopt runner on such a board, so this device runs the protocol from the host
through the RPC session: upload the bundle's `.so` (once per sha256 per session), load it in a Relax VM
on the remote CPU, upload the weights once, check the outputs on the bundle's reference inputs, and time
`main` with TVM's remote `time_evaluator` (the timing happens on the board; one repeat = one inference).
It returns the same `Measurement` as the runner, so the protocol, store and reports are shared.
Only TVM bundles (`edgeopt compile --backend tvm`) run here; their target must match the board.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from edgeopt.bundle import Bundle
from edgeopt.errors import DeviceError, DeviceUnreachable, EdgeoptError
from edgeopt.harness.devices.base import Device, register_device
from edgeopt.measurement import Measurement, MeasureRequest, Protocol, summarize


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
            raise DeviceUnreachable(f"TVM RPC tracker {self.host}:{self.port} is unreachable: {e}", "start python -m tvm.exec.rpc_tracker there, or check host/port") from None
        try:
            tracker = rpc.connect_tracker(self.host, self.port)
        except Exception as e:  # noqa: BLE001 - TVM raises bare errors for socket failures
            raise DeviceUnreachable(f"TVM RPC tracker {self.host}:{self.port} is unreachable: {str(e).splitlines()[0][:200]}", "start python -m tvm.exec.rpc_tracker there, or check host/port") from None
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

    def push(self, bundle: Bundle) -> str:
        if bundle.backend != "tvm":
            raise DeviceError(f"{self.id} runs TVM bundles only; this one is for {bundle.backend}", "compile with --backend tvm for the board's target")
        name = f"edgeopt-{bundle.sha256[:16]}.so"
        if self._uploaded.get(bundle.sha256) == name:
            self.last_push_skipped = True
            return name
        try:
            self.session().upload(str(bundle.artifact), target=name)
        except Exception as e:  # noqa: BLE001
            raise DeviceError(f"upload to {self.id} failed: {str(e).splitlines()[0][:200]}") from None
        self._uploaded[bundle.sha256] = name
        self.last_push_skipped = False
        return name

    def run(self, bundle: Bundle, request: MeasureRequest) -> Measurement:
        """Upload, load in a Relax VM on the board, check outputs, time with TVM's remote time_evaluator."""
        p = request.protocol
        if p.end_to_end or p.pin_cpus:
            raise DeviceError(f"{self.id} runs the model only over RPC: no end-to-end mode, no CPU pinning", "drop end_to_end/pin_cpus for tvm-rpc devices")
        name = self.push(bundle)
        try:
            return self._measure(bundle, name, p)
        except EdgeoptError:
            raise
        except Exception as e:  # noqa: BLE001 - a failure on the board is this measurement's error, said in one line
            raise DeviceError(f"runner on {self.uri} failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}") from None

    def _measure(self, b: Bundle, name: str, p: Protocol) -> Measurement:
        import tvm
        from tvm import relax

        from edgeopt.fidelity import output_metrics

        sess = self.session()
        dev = sess.cpu(0)
        if p.threads:
            sess.get_function("runtime.config_threadpool")(0, int(p.threads))
        t0 = time.perf_counter()
        lib = sess.load_module(name)
        vm = relax.VirtualMachine(lib, dev)
        m = b.manifest
        io_names = m.backend_details.get("io") or {}
        in_names = io_names.get("inputs") or m.input_names
        out_names = io_names.get("outputs") or m.output_names
        with np.load(b.path / m.backend_details.get("params_file", "params.npz")) as z:
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
        check["cosine_min"] = m.cosine_min
        # Warm-up, then repeats of one inference each, until both `runs` and `min_seconds` are met.
        if p.warmup:
            vm.time_evaluator("invoke_stateful", dev, number=p.warmup, repeat=1)("main")
        lat: list[float] = []
        deadline = time.monotonic() + p.timeout
        while len(lat) < p.runs or sum(lat) / 1e3 < p.min_seconds:
            if time.monotonic() > deadline:
                raise DeviceError(f"{self.id} did not finish within {p.timeout:.0f} s", "raise --timeout or lower --runs")
            repeat = max(1, p.runs - len(lat)) if len(lat) < p.runs else max(1, p.runs // 2)
            res = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=repeat)("main")
            lat += [r * 1e3 for r in res.results]
        summary, cv = summarize(lat)
        return Measurement(
            bundle_sha256=b.sha256, model=m.model.name, backend=m.backend, precision=m.precision,
            latency_ms=summary, cv=cv, runs=len(lat), warmup=p.warmup, threads=p.threads, init_ms=init_ms,
            outputs_match=bool(set(refs_out) <= set(got) and check["cosine"] >= m.cosine_min), check=check,
            platform={"transport": "tvm-rpc", "key": self.key}, torch_loaded=False, after_loop_s=0.0,
            timing="TVM time_evaluator on the board (one inference per repeat)",
        )

    def thermal(self) -> None:
        return None  # the host's sensors say nothing of the board's

    def meters(self) -> tuple[list, str | None]:
        return [], f"no energy meter reachable through TVM RPC on {self.id}"

    def close(self) -> None:
        self._sess = None
