"""Body-part attention (BPA): squeeze-and-excitation over the backbone's final feature map.

The paper gives BPA as two fully connected layers "of 32-d and 512-d" that re-weight the
channels of the body feature map. We read those sizes as a squeeze-and-excitation block
(Hu et al., 2018) with reduction 16 on a 512-channel map: squeeze 512 -> 32 (ReLU), excite
32 -> 512 (sigmoid), then scale each channel of the map by its gate. The excitation width
always equals the map's channel count C (512 for ResNet-18, 2048 for ResNet-50, 1280 for
MobileNetV2) so that every channel gets a gate; the bottleneck width is the parameter
`model.rrla.bpa.hidden` (default 32, the paper's number), kept absolute rather than as a ratio so
that "32" means the same thing whatever the backbone (on ResNet-50 it is reduction 64).

Channels are where the body parts live in a late CNN map (part detectors), hence the name;
the spatial layout is left to the global average pooling that follows (models/rrla.py).
"""
from __future__ import annotations

import torch
from torch import nn

from models.config import ConfigError


class BodyPartAttention(nn.Module):
    """Channel gates from a squeeze-and-excitation bottleneck: [B,C,h,w] -> [B,C,h,w]."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        if hidden < 1:
            raise ConfigError(f"model.rrla.bpa.hidden must be >= 1, got {hidden}")
        self.squeeze = nn.Linear(channels, hidden)
        self.excite = nn.Linear(hidden, channels)

    def gates(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Per-channel weights in (0, 1), shape [B,C]."""
        pooled = feature_map.mean(dim=(2, 3))
        return torch.sigmoid(self.excite(torch.relu(self.squeeze(pooled))))

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return feature_map * self.gates(feature_map)[:, :, None, None]
