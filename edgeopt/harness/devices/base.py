"""Device: where a bundle runs. Shape taken from TVM MetaSchedule's runner: a few small, replaceable
steps (push, run a module, read files, meters, thermal) that `run()` composes into one measurement.

    Device.run(bundle, request) -> Measurement

The default `run` pushes the bundle (and the end-to-end image), runs the device-side runner with the
request and decodes its `Measurement`; a device that measures some other way (TVM RPC, a native
benchmark tool) overrides `run` and returns the same type. Everything the protocol needs from a device
(its files, meters, thermal sensors, CPU pinning, its idle temperature) is a method here, so the protocol
never asks which kind of device it holds.

A device URI picks the implementation by scheme: `local`, `ssh://user@host:port`, `adb://SERIAL`,
`qemu-arm64`, `tvm-rpc://host:port/key`. Implementations register in `DEVICES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeopt._registry import Registry
from edgeopt.bundle import Bundle
from edgeopt.errors import DeviceError, EdgeoptError
from edgeopt.harness.meters.base import LOCAL_FILES, FileAccess
from edgeopt.measurement import Measurement, MeasureRequest

if TYPE_CHECKING:
    from edgeopt.harness.devices.profiles import BoardSpec
    from edgeopt.harness.meters.base import Meter
    from edgeopt.harness.thermal import ThermalReader

DEVICES: Registry[type[Device]] = Registry(
    "device",
    lazy={
        "local": "edgeopt.harness.devices.local",
        "ssh": "edgeopt.harness.devices.ssh",
        "adb": "edgeopt.harness.devices.adb",
        "qemu-arm64": "edgeopt.harness.devices.qemu_arm64",
        "tvm-rpc": "edgeopt.harness.devices.tvm_rpc",
    },
    hint="write local, ssh://user@host[:port], adb://SERIAL, qemu-arm64 or tvm-rpc://host:port/key",
)
RUNNER = "edgeopt.runner"


class Device(ABC):
    """A place that runs bundles."""

    scheme: str = ""
    emulated: bool = False  # latency from an emulator proves correctness, never speed
    board_spec: BoardSpec | None = None  # the devices.yaml entry it was opened from (profiles.open_device), if any

    def __init__(self, uri: str, **options: Any) -> None:
        self.uri = uri
        self.options = options
        self.idle_c: float | None = None  # the hottest sensor when this device was first seen (thermal cool-down)

    @property
    def id(self) -> str:
        """A stable identifier for the store (the URI without secrets)."""
        return self.uri

    # -- the steps a device implements --------------------------------------------------------------
    @abstractmethod
    def info(self) -> dict[str, Any]:
        """arch, cpu, cores, memory, os, runtimes present (a snapshot stored with every measurement)."""

    @abstractmethod
    def push(self, bundle: Bundle) -> str:
        """Make the bundle available on the device (once per sha256); return its path there."""

    def push_file(self, local: Path) -> str:
        """Make one file (an end-to-end image) available on the device; return its path there."""
        raise DeviceError(f"{self.scheme} devices cannot take files", "use local, ssh://, adb:// or qemu-arm64 for end-to-end runs")

    def run_module(self, module: str, args: list[str], timeout: float, pin_cpus: str | None = None) -> str:
        """Run `python -m MODULE ARGS...` on the device (pinned to `pin_cpus` with taskset where given); its stdout."""
        raise DeviceError(f"{self.scheme} devices run no Python modules", "measure there with Device.run")

    def files(self) -> FileAccess:
        """Read sysfs-style files on the device (meters and thermal sensors use it)."""
        return LOCAL_FILES

    def shell_prefix(self) -> list[str] | None:
        """argv that runs a command on the device from this host (a streaming meter uses it); None: no such way."""
        return None

    def meters(self) -> tuple[list[Meter], str | None]:
        """The energy meters of this device from its `meters:` option, or ([], why there are none)."""
        from edgeopt.harness.meters import MeterError, meters_from_profile

        specs = self.options.get("meters") or self.default_meters()
        if not specs:
            return [], f"no energy meter configured for {self.uri} (add meters: to its devices.yaml entry)"
        try:
            return meters_from_profile(specs, self), None
        except MeterError as e:
            return [], f"meter on {self.uri} unavailable: {e.message}"

    def default_meters(self) -> list[Any]:
        """Meters assumed where the profile names none (an Android phone's battery)."""
        return []

    def thermal(self) -> ThermalReader | None:
        """A thermal reader for this device's sensors, or None where it has none."""
        from edgeopt.harness.thermal import ThermalReader

        r = ThermalReader(self.files())
        return r if r.zones else None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (optional)."""

    # -- the measurement ----------------------------------------------------------------------------
    def run(self, bundle: Bundle, request: MeasureRequest) -> Measurement:
        """Push the bundle (and the end-to-end image), run the device-side runner, decode its Measurement."""
        remote = self.push(bundle)
        p = request.protocol
        if p.end_to_end:
            image = Path(p.end_to_end)
            if not image.is_file():
                raise EdgeoptError(f"end-to-end image {image} does not exist", "pass an image file (JPEG/PNG) with --e2e-image")
            request = request.with_image(self.push_file(image.resolve()))
        out = self.run_module(RUNNER, [remote, "--request", request.to_json()], p.timeout, p.pin_cpus)
        res = Measurement.from_runner_output(out, self.uri)
        if res.bundle_sha256 != bundle.sha256:
            raise DeviceError(f"{self.uri} ran bundle {res.bundle_sha256[:12]}, not {bundle.sha256[:12]}")
        return res


def register_device(cls: type[Device]) -> type[Device]:
    return DEVICES.register(cls.scheme)(cls)


def scheme_of(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else uri


def get_device(uri: str, **options: Any) -> Device:
    """The Device for a URI (options come from a devices.yaml profile or the CLI)."""
    return DEVICES.get(scheme_of(uri))(uri, **options)


def pinned(argv: list[str], pin_cpus: str | None) -> list[str]:
    """argv run under `taskset -c CPUS` where pinning is asked for."""
    return ["taskset", "-c", pin_cpus, *argv] if pin_cpus else argv
