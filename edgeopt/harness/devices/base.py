"""Device: where a bundle runs. Shape taken from TVM MetaSchedule's runner: a handful of small,
replaceable functions (push, run, info, meters) rather than one large class per board.

A device URI picks the implementation by scheme: `local`, `ssh://user@host:port`, `adb://SERIAL`,
`qemu-arm64`, `tvm-rpc://host:port/key`. Implementations register with `register_device`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from edgeopt._util import closest
from edgeopt.errors import DeviceError, EdgeoptError

# scheme -> module under edgeopt.harness.devices
DEVICE_MODULES: dict[str, str] = {
    "local": "local",
    "ssh": "ssh",
    "adb": "adb",
    "qemu-arm64": "qemu_arm64",
    "tvm-rpc": "tvm_rpc",
}
_DEVICES: dict[str, type[Device]] = {}


class Device(ABC):
    """A place that runs bundles. `run` executes the device-side runner and returns its stdout."""

    scheme: str = ""
    emulated: bool = False  # latency from an emulator proves correctness, never speed

    def __init__(self, uri: str, **options: Any) -> None:
        self.uri = uri
        self.options = options

    @property
    def id(self) -> str:
        """A stable identifier for the store (the URI without secrets)."""
        return self.uri

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """arch, cpu, cores, memory, os, runtimes present (a snapshot stored with every measurement)."""

    @abstractmethod
    def push(self, bundle_dir: Path, sha256: str) -> str:
        """Make the bundle available on the device (once per hash); return its path there."""

    @abstractmethod
    def run_runner(self, remote_bundle: str, args: list[str], timeout: float) -> str:
        """Run `python -m edgeopt.runner REMOTE_BUNDLE ARGS...` on the device and return its stdout."""

    def meters(self) -> list[Any]:
        """Energy meters available on this device (see harness/meters)."""
        return []

    def thermal(self) -> Any | None:
        """A thermal reader for this device, or None."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (optional)."""


def register_device(cls: type[Device]) -> type[Device]:
    _DEVICES[cls.scheme] = cls
    return cls


def scheme_of(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else uri


def get_device(uri: str, **options: Any) -> Device:
    """The Device for a URI (options come from a devices.yaml profile or the CLI)."""
    scheme = scheme_of(uri)
    if scheme not in DEVICE_MODULES:
        near = closest(scheme, DEVICE_MODULES)
        raise EdgeoptError(
            f"unknown device {uri!r}",
            "use local, ssh://user@host[:port], adb://SERIAL, qemu-arm64 or tvm-rpc://host:port/key"
            + (f"; did you mean {near[0]}?" if near else ""),
        )
    if scheme not in _DEVICES:
        try:
            importlib.import_module(f"edgeopt.harness.devices.{DEVICE_MODULES[scheme]}")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("edgeopt"):
                raise DeviceError(f"device type {scheme!r} is not implemented in this edgeopt build") from None
            raise
    return _DEVICES[scheme](uri, **options)
