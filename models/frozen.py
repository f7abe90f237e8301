"""The frozen-backbone protocol: what a model lets the training pipeline compute once.

A family that can train with its pretrained trunks frozen offers two methods:

- `frozen_inputs() -> {key: FrozenInput(view, encode)}`: for each precomputable input, the
  pixel view it is computed from and the frozen part that computes it (`encode`, pixels
  [B,3,S,S] -> a tensor per person). core/training/body_cache.py runs `encode` once over every
  person of a split and stores the result; the loaders then yield it under `key`.
- `freeze_backbone()`: from then on (`frozen` is then true) forward reads those keys instead of running the frozen
  parts, whose parameters no longer require gradients and which stay in eval mode (BatchNorm
  with its running statistics: that is what "frozen" means). `views` then lists only the
  pixel views the model still decodes. The mode is not part of the state_dict: a checkpoint
  trained this way loads into a model that reads pixels and computes the same outputs.

When `key` equals `view`, the cached tensor replaces that view's pixels (rrla's body map);
otherwise it is an extra input beside the pixel views (DAG-Net still reads the body pixels for
BAM while its trunk's pooled feature comes from the cache).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch


class FrozenInput(NamedTuple):
    view: str  # the pixel view the frozen part reads
    encode: Callable[[torch.Tensor], torch.Tensor]  # pixels [B,3,S,S] -> what the model reads instead


def has_frozen_path(model) -> bool:
    """Whether `model` implements the protocol above."""
    return callable(getattr(model, "frozen_inputs", None)) and callable(getattr(model, "freeze_backbone", None))


def frozen_keys(model) -> tuple[str, ...]:
    """The cached inputs a frozen model reads besides its pixel views (empty when not frozen)."""
    if not (has_frozen_path(model) and getattr(model, "frozen", False)):
        return ()
    return tuple(key for key in model.frozen_inputs() if key not in model.views)
