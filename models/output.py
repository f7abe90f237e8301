"""What every registered model's forward returns."""
from __future__ import annotations

from typing import NamedTuple

import torch


class ModelOutput(NamedTuple):
    logits: torch.Tensor                     # [B,C] raw class scores
    attention: torch.Tensor | None = None    # the model's attention weights to show (rrla: BOA's [B,h,N])
    continuous: torch.Tensor | None = None   # [B,3] valence, arousal, dominance, for models that predict them
    # extra tensors the model's own criterion trains on and evaluation ignores, by name
    # (SIB-Net: its three branch heads' logits; DAG-Net: the attention branch's logits)
    auxiliary: dict[str, torch.Tensor] | None = None
