"""Harness: devices, the measurement protocol, energy meters, sweeps."""
