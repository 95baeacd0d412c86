"""bigperf.prune: magnitude pruning of a model's linear maps, in place."""

from __future__ import annotations

import re
from typing import Callable

import torch
from torch import nn

from bigperf.discovery import find_linear_maps
from bigperf.sparsity import apply_mask_, block_mask, kept_count, magnitude_mask, nm_mask

FUNCTION = "bigperf.prune"


def _mask_for(weight: torch.Tensor, pattern: str, density, block) -> torch.Tensor:
    if pattern == "unstructured":
        return magnitude_mask(weight, density)
    if pattern == "block":
        return block_mask(weight, block, density)
    match = re.fullmatch(r"(\d+):(\d+)", pattern)
    if match:
        return nm_mask(weight, int(match.group(1)), int(match.group(2)))
    raise ValueError(f"{FUNCTION}: argument 'pattern' must be 'N:M' (e.g. '2:4'), 'unstructured' or 'block', got {pattern!r}")


def prune(model: nn.Module, pattern: str = "2:4", *, density: float | None = None, block=(16, 16),
          scope: str = "layer", keep_masks: bool = False, filter: Callable | None = None) -> dict[str, torch.Tensor]:
    """Prune the linear maps of `model` by magnitude; returns {fqn: mask (True = kept)}.

    pattern: "2:4" (any "N:M" along K), "unstructured" (needs density) or "block" (needs
    density; block=(bn, bk)). scope="global" ranks unstructured weights across all layers.
    keep_masks=True registers a parametrisation so pruned weights stay zero in training.
    All masks are computed before any weight changes: a refused layer changes nothing.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"{FUNCTION}: argument 'model' must be an nn.Module, got {type(model).__name__}")
    if pattern in ("unstructured", "block") and density is None:
        raise ValueError(f"{FUNCTION}: pattern {pattern!r} needs a 'density' in (0, 1]")
    if scope not in ("layer", "global"):
        raise ValueError(f"{FUNCTION}: argument 'scope' must be 'layer' or 'global', got {scope!r}")
    targets = [lm for lm in find_linear_maps(model) if filter is None or filter(lm.module, lm.name)]
    if keep_masks:
        frozen = [lm.name for lm in targets if lm.module.weight.is_inference()]
        if frozen:  # keep_masks serves training, which inference tensors cannot take part in
            raise ValueError(f"{FUNCTION}: argument 'keep_masks' keeps pruned weights zero through training, but "
                             f"the weights of {frozen[:3]} are inference tensors (made under "
                             f"torch.inference_mode()), which cannot be trained; load the model outside "
                             f"inference mode, or prune with keep_masks=False")

    def oriented(lm):  # masks are computed in nn.Linear orientation (groups and blocks along K)
        return lm.module.weight.t() if lm.transposed else lm.module.weight

    masks: dict[str, torch.Tensor] = {}
    if scope == "global":
        if pattern != "unstructured":
            raise ValueError(f"{FUNCTION}: scope='global' applies to pattern 'unstructured' only")
        everything = torch.cat([oriented(lm).detach().abs().flatten().float() for lm in targets])
        keep = kept_count(density, everything.numel())
        threshold = torch.topk(everything, keep, sorted=True).values[-1]
        for lm in targets:
            masks[lm.name] = oriented(lm).detach().abs().float() >= threshold
    else:
        for lm in targets:
            try:
                masks[lm.name] = _mask_for(oriented(lm), pattern, density, block)
            except ValueError as error:
                raise ValueError(f"{FUNCTION}: layer {lm.name!r}: {error}") from None
    for lm in targets:
        mask = masks[lm.name]
        apply_mask_(lm.module, mask.t() if lm.transposed else mask, keep=keep_masks)
    return masks
