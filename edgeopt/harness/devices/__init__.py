"""Devices by URI scheme (see base.py); boards by devices.yaml name or kind (see profiles.py)."""

from edgeopt.harness.devices.base import Device, get_device, register_device
from edgeopt.harness.devices.profiles import BoardSpec, open_device

__all__ = ["BoardSpec", "Device", "get_device", "open_device", "register_device"]
