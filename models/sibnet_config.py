"""`model.sibnet`: the typed params of SIB-Net (models/sibnet.py), torch-free.

Every value comes from params.yaml (no defaults here); `models.config.from_dict` builds the
dataclasses, checking each value against its type and the rule beside its field first
(`model.sibnet.scm.cell must be one of ...`); what ties values together is checked on
construction. Either way a ConfigError names the dotted key. The network's reading of the paper,
and what each value means there, is in models/sibnet.py's docstring.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from models.config import (
    BackboneConfig,
    ConfigError,
    ViewConfig,
    at_least,
    check_views,
    one_of,
    within,
)

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
    cell: str = one_of(*CELLS)  # gru (paper) | rnn | lstm (the paper's ablation, Table 2)


@dataclass(frozen=True)
class ICMConfig:
    """`model.sibnet.icm`: the interactive context module, one per branch after each listed layer."""

    enabled: bool
    layers: tuple[int, ...] = within(LAYERS[0], LAYERS[-1])  # ResNet layers it follows; paper [2, 4]
    # d: Q, K, V have d*C channels (C: one branch's channels); 0.5 as in Non-local
    reduction: float = within(0, 1, low_open=True)

    def __post_init__(self) -> None:
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"{SECTION}.icm.layers must be a non-empty list of distinct ResNet layer numbers "
                              f"in {list(LAYERS)} (paper [2, 4]), got {list(self.layers)!r}")


@dataclass(frozen=True)
class BCMConfig:
    """`model.sibnet.bcm`: the biased context module (branch heads, distribution labels, L1 loss)."""

    enabled: bool
    # of the Gaussian that replaces every 0 of a branch's label: a probability (paper 0.4)
    mean: float = within(0, 1)
    variance: float = at_least(0)  # of that Gaussian (paper 0.1; std = sqrt(variance))
    weight: float = at_least(0)  # of the L1 term against the BCE on the fused logits (paper 1:1)
    # branch heads: null = one Linear(C -> K); else an MLP with this hidden width
    head_hidden: int | None = at_least(1)

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)


@dataclass(frozen=True)
class SIBNetConfig:
    """`model.sibnet`: each value is checked on load (from_dict), its views and the rules that tie values
    together on construction; a bad one is a ConfigError naming its key."""

    views: dict[str, ViewConfig]  # image_face_masked, image_body_masked, image (paper 230 px, symmetric)
    backbone: BackboneConfig  # one config for the three branches' trunks (separate weights; paper resnet18)
    # the fused classifier: null = one Linear; else Linear-ReLU-Dropout-Linear
    classifier_hidden: int | None = at_least(1)
    dropout: float = within(0, 1, high_open=True)  # before the last Linear of the classifier and of the branch heads
    scm: SCMConfig
    icm: ICMConfig
    bcm: BCMConfig
    train: dict[str, Any]  # train.* values this model trains with (paper: adam, lr 1e-3, backbone_lr 1e-4)

    def __post_init__(self) -> None:
        # each value's type and range is checked on load (from_dict); here what ties values together
        check_views(self.views, VIEWS, SECTION)
        if self.backbone.name not in RESNETS:
            raise ConfigError(f"{SECTION}.backbone.name must be one of {list(RESNETS)} (SCM and ICM sit between "
                              f"a ResNet's four layers; paper resnet18), got {self.backbone.name!r}")
        sizes = {name: self.views[name].size for name in VIEWS}
        if self.icm.enabled and len(set(sizes.values())) != 1:
            raise ConfigError(f"{SECTION}.views: ICM concatenates the three branches' maps, so the three views "
                              f"need one size (paper 230), got {sizes}")
