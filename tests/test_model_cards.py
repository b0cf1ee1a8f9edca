"""Every registered variant against its card: params within 3%, MACs within 5% of the paper's figures.

Counted on the `meta` device (no memory, no weights), so the multi-billion-parameter models are checked
too. A spec with no figure for a quantity skips that check only; a spec whose card describes another
configuration (a tiny test build of a large model) says so with `extras["card_applies"] = False`; a card
that counts only part of the module (an LLM-side figure of a VLM) names those submodules in
`extras["card_params_of"]` (a tuple of attribute paths, e.g. ("language_model", "llama_proj")).
"""

from __future__ import annotations

import pytest
import torch

from edgeopt.models import all_specs, get_spec
from edgeopt.models.counting import count_macs, count_params

PARAMS_TOL = 0.03
MACS_TOL = 0.05

_SPECS = [s.name for s in all_specs()]


def meta_example(spec) -> dict[str, torch.Tensor]:
    """Zero tensors of each input's shape and dtype on `meta`, in input order (forward takes them positionally)."""
    return {i.name: torch.zeros(i.shape, dtype=getattr(torch, i.dtype), device="meta") for i in spec.inputs}


def measured(name: str) -> tuple[float, float | None]:
    """(params in M, MACs in G or None when the card has no MAC figure) of one variant, on meta."""
    spec = get_spec(name)
    module = spec.build(device="meta")
    parts = spec.extras.get("card_params_of")
    if parts:
        params = sum(count_params(module.get_submodule(p)) for p in parts) / 1e6
    else:
        params = count_params(module) / 1e6
    ex = tuple(meta_example(spec).values())
    macs = count_macs(module, ex, convention=spec.paper.macs_convention) / 1e9 if spec.paper.macs_g is not None else None
    return params, macs


@pytest.mark.parametrize("name", _SPECS)
def test_card(name: str) -> None:
    spec = get_spec(name)
    p = spec.paper
    if spec.extras.get("card_applies") is False:
        pytest.skip(f"{name}: its card describes another configuration")
    if p.params_m is None and p.macs_g is None:
        pytest.skip(f"{name}: the card has no params or MAC figure")
    params, macs = measured(name)
    errors = []
    if p.params_m is not None and abs(params / p.params_m - 1) > PARAMS_TOL:
        errors.append(f"params {params:.3f} M vs card {p.params_m} M ({params / p.params_m - 1:+.1%})")
    if p.macs_g is not None and macs is not None and abs(macs / p.macs_g - 1) > MACS_TOL:
        errors.append(f"MACs {macs:.3f} G vs card {p.macs_g} G ({macs / p.macs_g - 1:+.1%})")
    assert not errors, f"{name}: " + "; ".join(errors) + f" [{p.source}]"


def test_every_family_of_the_zoo_is_registered() -> None:
    fams = {s.family for s in all_specs()}
    assert {"efficientformer", "shvit", "mobileclip"} <= fams


def test_cards_say_where_their_figures_come_from() -> None:
    for s in all_specs():
        if s.paper.params_m is not None or s.paper.macs_g is not None:
            assert s.paper.source, f"{s.name}: a card figure without a source"
