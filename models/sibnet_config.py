"""`model.sibnet`: the typed params of SIB-Net (models/sibnet.py), torch-free.

Every value comes from params.yaml (no defaults here); `models.config.from_dict` builds the
dataclasses and each validates itself on construction, raising a ConfigError that names the
dotted key (`model.sibnet.scm.cell must be one of ...`). The network's reading of the paper,
and what each value means there, is in models/sibnet.py's docstring.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from models.config import BackboneConfig, ConfigError, ViewConfig, check_views

SECTION = "model.sibnet"
# the view each branch reads (core/data/views.py), in the SCM's order face -> body -> scene
BRANCH_VIEWS = (("face", "image_face_masked"), ("body", "image_body_masked"), ("scene", "image"))
BRANCHES = tuple(branch for branch, _ in BRANCH_VIEWS)
VIEWS = tuple(view for _, view in BRANCH_VIEWS)
CELLS = ("gru", "rnn", "lstm")  # the paper's SCM (GRU-like) and its two ablations
RESNETS = ("resnet18", "resnet50")  # SCM/ICM sit between a ResNet's four layers (paper: resnet18)
LAYERS = (1, 2, 3, 4)  # the ResNet layers a module may follow


@dataclass(frozen=True)
class SCMConfig:
    """`model.sibnet.scm`: the sequential context module, one after every ResNet layer."""

    enabled: bool
    cell: str  # gru (paper) | rnn | lstm (the paper's ablation, Table 2)

    def __post_init__(self) -> None:
        _check_bool(self.enabled, f"{SECTION}.scm.enabled")
        if self.cell not in CELLS:
            raise ConfigError(f"{SECTION}.scm.cell must be one of {list(CELLS)}, got {self.cell!r}")


@dataclass(frozen=True)
class ICMConfig:
    """`model.sibnet.icm`: the interactive context module, one per branch after each listed layer."""

    enabled: bool
    layers: tuple[int, ...]  # ResNet layers (1..4) it follows; paper [2, 4]
    reduction: float  # d: Q, K, V have d*C channels (C: one branch's channels); 0.5 as in Non-local

    def __post_init__(self) -> None:
        _check_bool(self.enabled, f"{SECTION}.icm.enabled")
        layers = self.layers
        if (not isinstance(layers, (tuple, list)) or not layers or len(set(layers)) != len(layers)
                or not all(_is_int(n) and n in LAYERS for n in layers)):
            raise ConfigError(f"{SECTION}.icm.layers must be a non-empty list of distinct ResNet layer numbers "
                              f"in {list(LAYERS)} (paper [2, 4]), got {layers!r}")
        if not _is_number(self.reduction) or not 0.0 < self.reduction <= 1.0:
            raise ConfigError(f"{SECTION}.icm.reduction must be a number in (0, 1] (the factor d that reduces "
                              f"the inner channels to d*C), got {self.reduction!r}")


@dataclass(frozen=True)
class BCMConfig:
    """`model.sibnet.bcm`: the biased context module (branch heads, distribution labels, L1 loss)."""

    enabled: bool
    mean: float  # of the Gaussian that replaces every 0 of a branch's label (paper 0.4)
    variance: float  # of that Gaussian (paper 0.1; std = sqrt(variance))
    weight: float  # of the L1 term against the BCE on the fused logits (paper 1:1)
    head_hidden: int | None  # branch heads: null = one Linear(C -> K); else an MLP with this hidden width

    def __post_init__(self) -> None:
        key = f"{SECTION}.bcm"
        _check_bool(self.enabled, f"{key}.enabled")
        if not _is_number(self.mean) or not 0.0 <= self.mean <= 1.0:
            raise ConfigError(f"{key}.mean must be a number in [0, 1] (a label is a probability; paper 0.4), "
                              f"got {self.mean!r}")
        if not _is_number(self.variance) or self.variance < 0:
            raise ConfigError(f"{key}.variance must be a finite number >= 0 (paper 0.1), got {self.variance!r}")
        if not _is_number(self.weight) or self.weight < 0:
            raise ConfigError(f"{key}.weight must be a finite number >= 0 (paper 1.0), got {self.weight!r}")
        _check_optional_width(self.head_hidden, f"{key}.head_hidden")

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)


@dataclass(frozen=True)
class SIBNetConfig:
    """`model.sibnet` (validated on construction: a bad value is a ConfigError naming its key)."""

    views: dict[str, ViewConfig]  # image_face_masked, image_body_masked, image (paper 230 px, symmetric)
    backbone: BackboneConfig  # one config for the three branches' trunks (separate weights; paper resnet18)
    classifier_hidden: int | None  # the fused classifier: null = one Linear; else Linear-ReLU-Dropout-Linear
    dropout: float  # before the last Linear of the classifier and of the branch heads
    scm: SCMConfig
    icm: ICMConfig
    bcm: BCMConfig
    train: dict[str, Any]  # train.* values this model trains with (paper: adam, lr 1e-3, backbone_lr 1e-4)

    def __post_init__(self) -> None:
        check_views(self.views, VIEWS, SECTION)
        if self.backbone.name not in RESNETS:
            raise ConfigError(f"{SECTION}.backbone.name must be one of {list(RESNETS)} (SCM and ICM sit between "
                              f"a ResNet's four layers; paper resnet18), got {self.backbone.name!r}")
        _check_optional_width(self.classifier_hidden, f"{SECTION}.classifier_hidden")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{SECTION}.dropout must be a number in [0, 1), got {self.dropout!r}")
        sizes = {name: self.views[name].size for name in VIEWS}
        if self.icm.enabled and len(set(sizes.values())) != 1:
            raise ConfigError(f"{SECTION}.views: ICM concatenates the three branches' maps, so the three views "
                              f"need one size (paper 230), got {sizes}")
        if not isinstance(self.train, dict):
            raise ConfigError(f"{SECTION}.train: expected a mapping, got {type(self.train).__name__}")


def _check_bool(value: Any, key: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")


def _check_optional_width(value: Any, key: str) -> None:
    if value is not None and not (_is_int(value) and value > 0):
        raise ConfigError(f"{key} must be a positive int or null, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
