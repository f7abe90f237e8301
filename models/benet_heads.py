"""BENet's parts (models/benet.py assembles them; its docstring says which choices are the paper's).

- `PyramidBackbone`: a torchvision ResNet's layer1..layer4 (1/4..1/32) fused top-down into four
  maps of `channels` channels, [B,C,H/4,W/4] .. [B,C,H/32,W/32] (an FPN), each optionally through
  a channel + spatial attention module (`ChannelSpatialAttention`).
- `DenseHead`: HigherHRNet's final layers: residual blocks and one predictor per output at 1/4,
  then a deconvolution of [features ; the 1/4 predictions] to 1/2, residual blocks and the same
  predictors again at 1/2. Used twice: emotions (E maps) and detection (centre 1 + size 2).
- `ClassifierHead`: HRNet's classification head with the bottleneck expansion cut to 1: one
  bottleneck per pyramid level, strided 3x3 convolutions merging 1/4 -> 1/32, a 1x1 conv,
  global average pooling and a linear (or two-layer) classifier -> [B,E].
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from models.backbones import Backbone


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ChannelSpatialAttention(nn.Module):
    """x * channel weights (sigmoid of an MLP on the average- and max-pooled channels), then * a
    spatial weight (sigmoid of a 7x7 conv on the channel mean and max): CBAM (Woo et al., 2018)."""

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))
        self.spatial = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel = torch.sigmoid(self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3))))
        x = x * channel[:, :, None, None]
        spatial = torch.sigmoid(self.spatial(torch.cat([x.mean(dim=1, keepdim=True),
                                                        x.amax(dim=1, keepdim=True)], dim=1)))
        return x * spatial


def resnet_stages(backbone: Backbone) -> tuple[nn.Sequential, list[nn.Module], list[int]]:
    """(stem, [layer1..layer4], their output channels) of a ResNet trunk from models.backbones."""
    trunk = backbone.trunk
    if not isinstance(trunk, nn.Sequential) or len(trunk) != 8:
        raise ValueError(f"BENet's pyramid needs a ResNet trunk (stem + 4 layers), got {backbone.name!r}")
    layers = [trunk[index] for index in range(4, 8)]
    channels = []
    for layer in layers:
        block = layer[-1]
        last = block.bn3 if hasattr(block, "bn3") else block.bn2  # Bottleneck (resnet50) | BasicBlock (resnet18)
        channels.append(int(last.num_features))
    return nn.Sequential(*trunk[:4]), layers, channels


class PyramidBackbone(nn.Module):
    """images [B,3,H,W] -> [P2, P3, P4, P5]: [B,C,ceil(H/4),ceil(W/4)] .. [B,C,ceil(H/32),ceil(W/32)]."""

    def __init__(self, backbone: Backbone, channels: int, attention: bool) -> None:
        super().__init__()
        self.stem, layers, widths = resnet_stages(backbone)
        self.layers = nn.ModuleList(layers)
        self.lateral = nn.ModuleList(nn.Conv2d(width, channels, 1) for width in widths)
        self.smooth = nn.ModuleList(_conv_bn_relu(channels, channels, 3) for _ in widths)
        self.attention = nn.ModuleList(ChannelSpatialAttention(channels) for _ in widths) if attention else None
        self.out_channels = channels

    def trunk_parameters(self) -> list[nn.Parameter]:
        """The (pretrainable) ResNet's parameters."""
        return [*self.stem.parameters(), *self.layers.parameters()]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(images)
        taps = []
        for layer in self.layers:
            x = layer(x)
            taps.append(x)
        merged: list[torch.Tensor] = [self.lateral[-1](taps[-1])]
        for index in range(len(taps) - 2, -1, -1):  # top-down: 1/16, 1/8, 1/4
            lateral = self.lateral[index](taps[index])
            merged.insert(0, lateral + F.interpolate(merged[0], size=lateral.shape[-2:], mode="nearest"))
        levels = [smooth(level) for smooth, level in zip(self.smooth, merged)]
        if self.attention is not None:
            levels = [attend(level) for attend, level in zip(self.attention, levels)]
        return levels


class BasicBlock(nn.Module):
    """ReLU(x + BN(conv3x3(ReLU(BN(conv3x3(x)))))): ResNet's basic block at constant width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


def _predictor(channels: int, outputs: int, bias: float) -> nn.Sequential:
    """CenterNet's output head: conv3x3 (+bias) - ReLU - conv1x1 to `outputs` maps, last bias `bias`."""
    last = nn.Conv2d(channels, outputs, 1)
    nn.init.constant_(last.bias, bias)
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True), last)


def _deconv_padding(kernel: int) -> tuple[int, int]:
    """(padding, output_padding) with which a stride-2 ConvTranspose2d of `kernel` doubles a map exactly."""
    return {4: (1, 0), 3: (1, 1), 2: (0, 0)}[kernel]


class DenseHead(nn.Module):
    """features [B,C,h,w] -> ({name: [B,k,h,w]}, {name: [B,k,2h,2w]}) for each output `name` of width k."""

    def __init__(self, channels: int, outputs: dict[str, int], *, blocks: int, deconv_channels: int,
                 deconv_kernel: int, biases: dict[str, float] | None = None) -> None:
        super().__init__()
        biases = biases or {}
        self.names = tuple(outputs)
        self.quarter_blocks = nn.Sequential(*(BasicBlock(channels) for _ in range(blocks)))
        self.predict_quarter = nn.ModuleDict({name: _predictor(channels, width, biases.get(name, 0.0))
                                      for name, width in outputs.items()})
        padding, output_padding = _deconv_padding(deconv_kernel)
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(channels + sum(outputs.values()), deconv_channels, deconv_kernel, stride=2,
                               padding=padding, output_padding=output_padding, bias=False),
            nn.BatchNorm2d(deconv_channels), nn.ReLU(inplace=True),
            *(BasicBlock(deconv_channels) for _ in range(blocks)))
        self.predict_half = nn.ModuleDict({name: _predictor(deconv_channels, width, biases.get(name, 0.0))
                                   for name, width in outputs.items()})

    def forward(self, features: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        x = self.quarter_blocks(features)
        quarter = {name: self.predict_quarter[name](x) for name in self.names}
        y = self.deconv(torch.cat([x, *(quarter[name] for name in self.names)], dim=1))
        half = {name: self.predict_half[name](y) for name in self.names}
        return quarter, half


class Bottleneck(nn.Module):
    """ReLU(shortcut(x) + BN(conv1x1(ReLU(BN(conv3x3(ReLU(BN(conv1x1(x))))))))), expansion 1."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn_relu(in_channels, channels, 1), _conv_bn_relu(channels, channels, 3),
                                  nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.shortcut = (nn.Identity() if in_channels == channels else
                         nn.Sequential(nn.Conv2d(in_channels, channels, 1, bias=False), nn.BatchNorm2d(channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.shortcut(x) + self.body(x))


class ClassifierHead(nn.Module):
    """[P2..P5] (pyramid maps of `in_channels`) -> logits [B,E]."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], final_channels: int, hidden: int | None,
                 num_classes: int) -> None:
        super().__init__()
        self.increase = nn.ModuleList(Bottleneck(in_channels, width) for width in channels)
        self.down = nn.ModuleList(_conv_bn_relu(channels[index], channels[index + 1], 3, stride=2)
                                  for index in range(len(channels) - 1))
        self.final = _conv_bn_relu(channels[-1], final_channels, 1)
        self.classifier = (nn.Linear(final_channels, num_classes) if hidden is None else
                           nn.Sequential(nn.Linear(final_channels, hidden), nn.ReLU(inplace=True),
                                         nn.Linear(hidden, num_classes)))

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        y = self.increase[0](levels[0])
        for index, down in enumerate(self.down):
            y = self.increase[index + 1](levels[index + 1]) + down(y)
        return self.classifier(self.final(y).mean(dim=(2, 3)))
