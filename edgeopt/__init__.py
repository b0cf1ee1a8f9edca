"""edgeopt: take an efficient PyTorch model to a measured on-device artifact.

    import edgeopt
    b = edgeopt.compile("efficientformer_l1", backend="onnxruntime", passes="quantize:int8", output="l1.bundle")
    print(edgeopt.profile(b.path).latency_ms.p50)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["compile", "list_models", "load_bundle", "profile"]


def list_models() -> list[str]:
    from edgeopt.models import list_models as _lm

    return _lm()


def __getattr__(name: str) -> Any:
    # Lazy: `import edgeopt` must not import torch (the device runner lives in this package).
    if name in ("compile", "profile"):
        from edgeopt import api

        return getattr(api, name)
    if name == "load_bundle":
        from edgeopt.bundle import load_bundle

        return load_bundle
    raise AttributeError(name)
