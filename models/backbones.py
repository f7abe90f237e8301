"""Body-crop backbones behind one factory: ResNet-50 (paper), ResNet-18, MobileNetV2.

`build_backbone(cfg)` returns a `Backbone`: the convolutional trunk of a torchvision
classifier (pooling and classifier removed) that maps a body crop [B,3,S,S] to its final
feature map [B,C,S/32,S/32], and says C in `out_channels`.

Weights, in order of precedence:
1. `cfg.weights` set: a local state_dict file of the full torchvision classifier (the file
   the enum would download, or any file with the same keys). This is the one place in
   models/ that reads a file: the issue asks for it, and it is the same read torchvision
   itself does from its cache for the enum.
2. `cfg.pretrained: true`: the ImageNet weight enum below, from the torch hub cache
   (`$TORCH_HOME/hub/checkpoints/`), downloaded there when the network allows it.
   Offline with an empty cache this raises `PretrainedWeightsUnavailable`, which names the
   enum, the cache path it looked in and the `weights` param of the section it was built from
   (`section`, e.g. model.rrla.backbone or model.kosti.context_backbone).
3. Otherwise random initialisation (the offline demo).
"""
from __future__ import annotations

import os
import urllib.error
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from models.config import BackboneConfig, ConfigError


class PretrainedWeightsUnavailable(ConfigError):
    """Pretrained backbone weights were asked for but cannot be loaded."""


@dataclass(frozen=True)
class _BackboneSpec:
    constructor: Callable[..., nn.Module]
    weights_enum: torchvision.models.WeightsEnum
    out_channels: int
    trunk: Callable[[nn.Module], nn.Module]


def _resnet_trunk(net: nn.Module) -> nn.Module:
    return nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )


def _mobilenet_trunk(net: nn.Module) -> nn.Module:
    return net.features


# IMAGENET1K_V1 for the ResNets: the classic torchvision weights, the closest to what the
# paper (2021) fine-tuned from. MobileNetV2 is our light variant, so it gets the better V2.
_BACKBONES: dict[str, _BackboneSpec] = {
    "resnet50": _BackboneSpec(
        torchvision.models.resnet50,
        torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
        2048,
        _resnet_trunk,
    ),
    "resnet18": _BackboneSpec(
        torchvision.models.resnet18,
        torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
        512,
        _resnet_trunk,
    ),
    "mobilenet_v2": _BackboneSpec(
        torchvision.models.mobilenet_v2,
        torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V2,
        1280,
        _mobilenet_trunk,
    ),
}


def available_backbones() -> tuple[str, ...]:
    return tuple(_BACKBONES)


def backbone_out_channels(name: str) -> int:
    return _spec_of(name).out_channels


def _spec_of(name: str, section: str = "backbone") -> _BackboneSpec:
    if name not in _BACKBONES:
        raise ConfigError(
            f"{section}.name: unknown backbone {name!r}; available: {sorted(_BACKBONES)}"
        )
    return _BACKBONES[name]


def enum_cache_path(weights: torchvision.models.WeightsEnum) -> str:
    """Where torch.hub looks for (and would download) the file of a weight enum."""
    filename = os.path.basename(urlparse(weights.url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def _enum_name(weights: torchvision.models.WeightsEnum) -> str:
    return f"torchvision.models.{type(weights).__name__}.{weights.name}"


def _load_enum_state_dict(weights: torchvision.models.WeightsEnum, section: str) -> dict[str, torch.Tensor]:
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        cache = enum_cache_path(weights)
        raise PretrainedWeightsUnavailable(
            f"{section}.pretrained is true but the ImageNet weights {_enum_name(weights)} "
            f"could not be loaded ({type(exc).__name__}: {exc}). Offline, put the file "
            f"{os.path.basename(cache)} (from {weights.url}) at {cache}, or set "
            f"{section}.weights to a local state_dict file, or set "
            f"{section}.pretrained: false."
        ) from exc


def _load_local_state_dict(path: str, section: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise PretrainedWeightsUnavailable(
            f"{section}.weights: file not found: {os.path.abspath(path)}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or non-tensor pickle: say which file
        raise PretrainedWeightsUnavailable(
            f"{section}.weights: cannot read {path} as a state_dict ({type(exc).__name__}: {exc})"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PretrainedWeightsUnavailable(
            f"{section}.weights: {path} holds a {type(state).__name__}, expected a state_dict"
        )
    return state


class Backbone(nn.Module):
    """Convolutional trunk: body crop [B,3,S,S] -> final feature map [B,C,h,w]."""

    def __init__(self, name: str, trunk: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.name = name
        self.trunk = trunk
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images)


def build_backbone(cfg: BackboneConfig, *, load_weights: bool = True, section: str = "model.rrla.backbone"
                   ) -> Backbone:
    """Build the trunk named by `cfg.name`; `load_weights=False` skips any weight loading
    (used when a checkpoint's state_dict is about to overwrite every tensor anyway). `section`
    is where `cfg` sits in params.yaml, for the error messages."""
    spec = _spec_of(cfg.name, section)
    net = spec.constructor(weights=None)
    if load_weights and (cfg.weights or cfg.pretrained):
        if cfg.weights:
            state, source = _load_local_state_dict(cfg.weights, section), cfg.weights
        else:
            state, source = _load_enum_state_dict(spec.weights_enum, section), _enum_name(spec.weights_enum)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise PretrainedWeightsUnavailable(
                f"backbone weights from {source} do not fit torchvision {cfg.name}: "
                f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
    return Backbone(cfg.name, spec.trunk(net), spec.out_channels)
