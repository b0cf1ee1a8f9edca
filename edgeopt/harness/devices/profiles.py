"""devices.yaml: the list of devices a team measures on (like MELT's device list).

    devices:
      laptop: {uri: local}
      jetson-orin:
        uri: ssh://ubuntu@orin.local
        python: /home/ubuntu/venv/bin/python3      # the board's own Python (numpy + runtime installed)
        identity: ~/.ssh/id_ed25519
        meters: [{name: ina3221, rail: VDD_IN}]
      pixel7: {uri: adb://28151FDH2000AB, python: /data/data/com.termux/files/usr/bin/python, meters: [android]}
      farm-rpi: {uri: tvm-rpc://127.0.0.1:9190/rpi4}

Looked up in this order: an explicit path, $EDGEOPT_DEVICES, ./devices.yaml, ~/.config/edgeopt/devices.yaml.
Every key besides `uri` is passed to the device as an option.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgeopt.errors import EdgeoptError


def profiles_path(path: str | Path | None = None) -> Path | None:
    for cand in (path, os.environ.get("EDGEOPT_DEVICES"), "devices.yaml", Path.home() / ".config/edgeopt/devices.yaml"):
        if cand and Path(cand).is_file():
            return Path(cand)
    if path:
        raise EdgeoptError(f"device list {path} does not exist", "write a devices.yaml (see docs/sweeps.md)")
    return None


def load_profiles(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """name -> {uri, options...}; empty when no devices.yaml exists."""
    import yaml

    p = profiles_path(path)
    if p is None:
        return {}
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise EdgeoptError(f"{p} is not valid YAML: {str(e).splitlines()[0]}", "fix the file") from None
    devs = data.get("devices", data) if isinstance(data, dict) else None
    if not isinstance(devs, dict):
        raise EdgeoptError(f"{p}: expected a mapping 'devices: {{name: {{uri: ...}}}}'", "see docs/sweeps.md")
    out = {}
    for name, entry in devs.items():
        if isinstance(entry, str):
            entry = {"uri": entry}
        if not isinstance(entry, dict) or "uri" not in entry:
            raise EdgeoptError(f"{p}: device {name!r} has no uri", "give each device a uri: local, ssh://user@host, ...")
        out[str(name)] = dict(entry)
    return out


def resolve_device(spec: str | dict[str, Any], profiles: dict[str, dict[str, Any]] | None = None) -> tuple[str, dict[str, Any]]:
    """(uri, options) for a device named in a sweep: a devices.yaml name, a URI, or a mapping with uri/name."""
    profiles = load_profiles() if profiles is None else profiles
    if isinstance(spec, str):
        spec = dict(profiles[spec]) if spec in profiles else {"uri": spec}
    else:
        spec = dict(spec)
        if "name" in spec and spec["name"] in profiles:
            spec = {**profiles[spec.pop("name")], **spec}
    if "uri" not in spec:
        raise EdgeoptError(f"device entry {spec!r} has no uri", "write a URI or a name from devices.yaml")
    uri = str(spec.pop("uri"))
    spec.pop("name", None)
    return uri, spec
