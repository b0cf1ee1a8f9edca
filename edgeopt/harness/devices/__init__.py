"""Devices by URI scheme; see base.py."""

from edgeopt.harness.devices.base import Device, get_device, register_device

__all__ = ["Device", "get_device", "register_device"]
