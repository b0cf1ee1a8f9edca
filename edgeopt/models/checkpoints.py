"""Loading official checkpoints from a local file: safely, strictly, with errors a user can act on."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeopt.errors import CheckpointError

if TYPE_CHECKING:
    import torch

# Wrappers that training scripts put around the state dict, tried in order.
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "network_fn_state_dict", "module")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint with `torch.load(weights_only=True)` (or safetensors) and unwrap it."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist", "pass the path of a local .pt/.pth/.safetensors file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure means the file is unusable
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path}: {first}",
            "the file is corrupt, truncated, or a pickle with code (only tensors are loaded)",
        ) from None
    for _ in range(3):
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is not None and not any(hasattr(v, "shape") for v in obj.values()):
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping) or not any(hasattr(v, "shape") for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict", "expected a dict of tensors (optionally under 'model' or 'state_dict')")
    sd = {k: v for k, v in obj.items() if hasattr(v, "shape")}
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_into(
    module: torch.nn.Module,
    path: Path,
    key_map: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    ignore_missing: tuple[str, ...] = (),
    variant: str = "",
) -> None:
    """Load a checkpoint strictly: every key present, every shape equal, else name the first culprit."""
    sd = read_state_dict(path)
    if key_map is not None:
        sd = key_map(sd)
    load_state_strict(module, sd, Path(path), ignore_missing, variant)


def load_state_strict(
    module: torch.nn.Module,
    sd: Mapping[str, torch.Tensor],
    path: Path,
    ignore_missing: tuple[str, ...] = (),
    variant: str = "",
) -> None:
    """`load_into` for a state dict already read (e.g. by the restricted unpickler); `path` names it in errors."""
    own = module.state_dict()
    for k, v in sd.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{path.name} does not fit {variant or type(module).__name__}: key {k!r} has shape "
                f"{tuple(v.shape)} in the checkpoint but {tuple(own[k].shape)} in the model",
                "the checkpoint is probably for another variant",
            )
    missing = [k for k in own if k not in sd and not any(k.startswith(p) for p in ignore_missing)]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]!r})")
        raise CheckpointError(
            f"{path.name} does not fit {variant or type(module).__name__}: keys " + ", ".join(parts),
            "the checkpoint is for another model or variant",
        )
    module.load_state_dict(sd, strict=not ignore_missing)
