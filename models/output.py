"""What every registered model's forward returns."""
from __future__ import annotations

from typing import NamedTuple

import torch


class ModelOutput(NamedTuple):
    logits: torch.Tensor                     # [B,C] raw class scores
    attention: torch.Tensor | None = None    # the model's attention weights to show (rrla: BOA's [B,h,N])
    continuous: torch.Tensor | None = None   # [B,3] valence, arousal, dominance, for models that predict them
