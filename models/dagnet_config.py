"""`model.dagnet`: the typed, frozen config of DAG-Net (models/dagnet.py). Torch-free.

`models.config.from_dict(DAGNetConfig, section, "model.dagnet")` builds it from the params
section; nothing here has a default (params.yaml is the one home of every value). from_dict
checks each value against its type and the rule beside its field; what ties values together
is checked on construction. Either way a `ConfigError` names the dotted key.
"""
from __future__ import annotations

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

SECTION = "model.dagnet"
# every view the family may read (patches only with LSAM on): params must size all of them
DAGNET_VIEWS = ("body", "image_body_masked", "patches")
# GSAM splits the context trunk into stem..layer3 and layer4 (the perception branch): ResNets only
RESNETS = ("resnet18", "resnet50")
LOSS_KINDS = ("kl", "bce")
ADJACENCY_INITS = ("grid", "uniform")
MIN_PATCH = 8  # the smallest patch side the loader is asked for (models.config.view_spec's floor)


def _check_widths(value: Any, key: str, what: str) -> None:
    if not value:  # each width's type and range: on load (from_dict)
        raise ConfigError(f"{key} must be a non-empty list of ints >= 1 ({what}), got {list(value)!r}")


@dataclass(frozen=True)
class DAGNetBAMConfig:
    """`model.dagnet.bam`: the body attention module (the credibility weight λ)."""

    enabled: bool  # off: λ = 1 (the ablation without BAM)
    hidden: int = at_least(1)  # width of the first 1x1 convolution (3 -> hidden -> 1); the paper gives none


@dataclass(frozen=True)
class DAGNetGSAMConfig:
    """`model.dagnet.gsam`: the global spatial attention module (an Attention Branch Network)."""

    enabled: bool  # off: the context stream is the plain trunk on the masked image, GAP'd
    residual: bool  # perception input (1 + M) * g (ABN's code) instead of M * g (the paper's eq. 3)
    # width of the attention branch's 3x3 conv (ABN: a whole ResNet stage of 512 * expansion)
    hidden: int = at_least(1)


@dataclass(frozen=True)
class DAGNetLSAMConfig:
    """`model.dagnet.lsam`: the local spatial attention module (patch graph)."""

    enabled: bool  # off: no patch stream (the model does not read `patches`)
    gcn: bool  # off: each node through a shared Linear(node -> fc_dim) + ReLU, summed over the patches
    # the N of the N x N grid (paper: searched over 2..9, best 4); 1 = the whole image, no graph
    n: int = at_least(1)
    channels: tuple[int, ...] = at_least(1)  # the patch encoder's 3x3 conv widths (paper 64, 64)
    # adaptive mean pooling to node_pool x node_pool: node dim = channels[-1] * node_pool^2
    node_pool: int = at_least(1)
    gcn_dims: tuple[int, ...] = at_least(1)  # output widths of the GCN layers (paper 1024, 1024, 512)
    fc_dim: int = at_least(1)  # d of the ablation without GCN (paper: unnamed)
    # grid (self + 4-neighbours of the patch grid) | uniform (all patches alike)
    adjacency_init: str = one_of(*ADJACENCY_INITS)

    def __post_init__(self) -> None:
        key = f"{SECTION}.lsam"
        _check_widths(self.channels, f"{key}.channels", "the patch encoder's conv widths, paper [64, 64]")
        _check_widths(self.gcn_dims, f"{key}.gcn_dims", "the GCN layers' output widths, paper [1024, 1024, 512]")

    @property
    def node_dim(self) -> int:
        """The width of one patch's node feature (paper 1024 = 64 channels x 4 x 4)."""
        return int(self.channels[-1]) * int(self.node_pool) ** 2

    @property
    def out_dim(self) -> int:
        """The width of the pooled local context feature."""
        return int(self.gcn_dims[-1]) if self.gcn else int(self.fc_dim)


@dataclass(frozen=True)
class DAGNetLossConfig:
    """`model.dagnet.loss`: the criterion (models/dagnet.py `DAGNetLoss`)."""

    # kl (the paper, after Kosti) | bce; single-label data always trains with cross-entropy
    kind: str = one_of(*LOSS_KINDS)
    attention_weight: float = at_least(0)  # weight of the GSAM attention branch's own loss (ABN: 1)


@dataclass(frozen=True)
class DAGNetConfig:
    """`model.dagnet`: each value is checked on load (from_dict), its views and the rules that tie values
    together on construction; a bad one is a ConfigError naming its key."""

    views: dict[str, ViewConfig]  # body, image_body_masked (paper 224 both), patches (size = the whole image cut)
    body_backbone: BackboneConfig  # ResNet-50 in the paper
    context_backbone: BackboneConfig  # ResNet-18 in the paper (GSAM needs a ResNet)
    bam: DAGNetBAMConfig
    gsam: DAGNetGSAMConfig
    lsam: DAGNetLSAMConfig
    # null: one Linear on the fused feature; an int: Linear-ReLU-Dropout-Linear
    classifier_hidden: int | None = at_least(1)
    dropout: float = within(0, 1, high_open=True)  # before the last Linear of the classifier
    loss: DAGNetLossConfig
    train: dict[str, Any]  # train.* values this model trains with (paper: lr 1e-4, batch 32); not read by the model

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def patch_size(self) -> int:
        """The side of one patch as the loader resizes it: the whole image's size / N (paper 224 / 4 = 56)."""
        return max(MIN_PATCH, round(self.views["patches"].size / self.lsam.n))


def _validate(cfg: DAGNetConfig) -> None:
    # each value's type and range is checked on load (from_dict); here what ties values together
    check_views(cfg.views, DAGNET_VIEWS, SECTION)  # exactly these three, each with a known norm and size >= 8
    for name, sub in (("body_backbone", cfg.body_backbone), ("context_backbone", cfg.context_backbone)):
        if not isinstance(sub, BackboneConfig):
            raise ConfigError(f"{SECTION}.{name}: expected a backbone section, got {type(sub).__name__}")
    if cfg.gsam.enabled and cfg.context_backbone.name not in RESNETS:
        raise ConfigError(f"{SECTION}.context_backbone.name must be one of {list(RESNETS)} with gsam.enabled "
                          f"(the attention branch splits the trunk at layer3/layer4), got {cfg.context_backbone.name!r}")
