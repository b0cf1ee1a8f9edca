"""NVIDIA NVML: `nvmlDeviceGetTotalEnergyConsumption` (mJ since the driver loaded; Volta and newer).

Called through ctypes on `libnvidia-ml.so.1` (the driver's own library), so no Python binding package is
needed and a machine without an NVIDIA driver says exactly that.
"""

from __future__ import annotations

import ctypes
from typing import Any

from edgeopt.harness.meters.base import Meter, MeterError, MeterTarget
from edgeopt.harness.meters.registry import METERS

_lib = None


def _nvml():
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL("libnvidia-ml.so.1")
        except OSError:
            raise MeterError("no NVIDIA driver (libnvidia-ml.so.1 not found)", "NVML needs an NVIDIA GPU and its driver") from None
        rc = lib.nvmlInit_v2()
        if rc != 0:
            raise MeterError(f"nvmlInit failed with NVML error {rc}", "check nvidia-smi works on this machine")
        _lib = lib
    return _lib


class NvmlMeter(Meter):
    name = "nvml"
    kind = "counter"

    def __init__(self, index: int = 0) -> None:
        super().__init__()
        lib = _nvml()
        self.handle = ctypes.c_void_p()
        rc = lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(self.handle))
        if rc != 0:
            raise MeterError(f"no NVIDIA GPU at index {index} (NVML error {rc})")
        self.name = f"nvml:gpu{index}"

    def read(self) -> float:
        mj = ctypes.c_ulonglong()
        rc = _nvml().nvmlDeviceGetTotalEnergyConsumption(self.handle, ctypes.byref(mj))
        if rc != 0:
            raise MeterError(f"nvmlDeviceGetTotalEnergyConsumption failed (NVML error {rc})", "it needs a Volta or newer GPU")
        return mj.value / 1e3


@METERS.register("nvml")
def _make(target: MeterTarget, **opts: Any) -> Meter:
    return NvmlMeter(**opts)
