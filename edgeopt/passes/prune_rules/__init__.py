"""Per-family prune rules: what the prune pass must know about a family's layers that torch-pruning cannot
handle on its own.

A family that needs one adds a module to this package that registers a `PruneRule` under the family's
name, `PRUNE_RULES.register("shvit")(ShvitRule())`. The prune pass imports every module here on first use
(`family_rules`) and applies every rule to every model: a rule acts on module types, so it covers the
family's zoo variants and a user's model built from the same blocks alike, and the pass names no family.

The rules live here, beside the pass, rather than in `edgeopt/models/<family>.py`: models lie below passes
(a model module imports neither edgeopt.passes nor torch-pruning), and a rule is written against
torch-pruning's pruner API. Discovery instead of a list in the pass keeps a family's rule in one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from edgeopt._registry import Registry


class PruneRule:
    """One family's hooks into the prune pass; both default to nothing."""

    # what the report's "protected:" note calls the modules `frozen` returns, e.g. "attention blocks"
    reason: str = ""

    def leaf_pruners(self) -> dict[type, Any]:
        """Module types torch-pruning must trace as one leaf, each with its pruner (a
        `torch_pruning.pruner.function.BasePruningFunc`); empty when the family's library is missing."""
        return {}

    def frozen(self, model: Any, protect_attention: bool) -> list[Any]:
        """Modules of `model` that no pruned group may touch, as input or output."""
        return []


PRUNE_RULES: Registry[PruneRule] = Registry("prune rule")
_discovered = False


def family_rules() -> list[PruneRule]:
    """Every registered rule, importing this package's modules on the first call."""
    global _discovered
    if not _discovered:
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
        _discovered = True
    return list(PRUNE_RULES.loaded().values())
