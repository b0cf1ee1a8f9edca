"""Model zoo: `build(name)`, `list_models()`, `get_spec(name)`.

Every module in this package (other than the helpers below) is a model family that registers its
variants on import; they are imported on first use so that `import edgeopt` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeopt.models.registry import (
    InputSpec,
    ModelSpec,
    PaperFigures,
    all_specs,
    get_spec,
    register,
)

if TYPE_CHECKING:
    import torch

__all__ = ["InputSpec", "ModelSpec", "PaperFigures", "build", "get_spec", "list_models", "register"]

def list_models() -> list[str]:
    """Names of every registered variant."""
    return [s.name for s in all_specs()]


def build(name: str, device: str = "cpu", weights: str | Path | None = None, **kwargs: Any) -> torch.nn.Module:
    """Build a registered model in eval mode (random init unless `weights` names a local checkpoint)."""
    return get_spec(name).build(weights=weights, device=device, **kwargs)
