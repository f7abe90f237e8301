"""`model.dagnet`: the typed, frozen config of DAG-Net (models/dagnet.py). Torch-free.

`models.config.from_dict(DAGNetConfig, section, "model.dagnet")` builds it from the params
section; nothing here has a default (params.yaml is the one home of every value). Each class
validates itself on construction and raises `ConfigError` naming the dotted key.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from models.config import BackboneConfig, ConfigError, ViewConfig, check_views

SECTION = "model.dagnet"
# every view the family may read (patches only with LSAM on): params must size all of them
DAGNET_VIEWS = ("body", "image_body_masked", "patches")
# GSAM splits the context trunk into stem..layer3 and layer4 (the perception branch): ResNets only
RESNETS = ("resnet18", "resnet50")
LOSS_KINDS = ("kl", "bce")
ADJACENCY_INITS = ("grid", "uniform")
MIN_PATCH = 8  # the smallest patch side the loader is asked for (models.config.view_spec's floor)


def _positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_bool(value: Any, key: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")


def _check_positive(value: Any, key: str) -> None:
    if not _positive_int(value):
        raise ConfigError(f"{key} must be a positive int, got {value!r}")


def _check_widths(value: Any, key: str, what: str) -> None:
    if not isinstance(value, (tuple, list)) or not value or not all(_positive_int(v) for v in value):
        raise ConfigError(f"{key} must be a non-empty list of positive ints ({what}), got {value!r}")


@dataclass(frozen=True)
class DAGNetBAMConfig:
    """`model.dagnet.bam`: the body attention module (the credibility weight λ)."""

    enabled: bool  # off: λ = 1 (the ablation without BAM)
    hidden: int  # width of the first 1x1 convolution (3 -> hidden -> 1); the paper gives none

    def __post_init__(self) -> None:
        _check_bool(self.enabled, f"{SECTION}.bam.enabled")
        _check_positive(self.hidden, f"{SECTION}.bam.hidden")


@dataclass(frozen=True)
class DAGNetGSAMConfig:
    """`model.dagnet.gsam`: the global spatial attention module (an Attention Branch Network)."""

    enabled: bool  # off: the context stream is the plain trunk on the masked image, GAP'd
    residual: bool  # perception input (1 + M) * g (ABN's code) instead of M * g (the paper's eq. 3)
    hidden: int  # width of the attention branch's 3x3 conv (ABN: a whole ResNet stage of 512 * expansion)

    def __post_init__(self) -> None:
        _check_bool(self.enabled, f"{SECTION}.gsam.enabled")
        _check_bool(self.residual, f"{SECTION}.gsam.residual")
        _check_positive(self.hidden, f"{SECTION}.gsam.hidden")


@dataclass(frozen=True)
class DAGNetLSAMConfig:
    """`model.dagnet.lsam`: the local spatial attention module (patch graph)."""

    enabled: bool  # off: no patch stream (the model does not read `patches`)
    gcn: bool  # off: each node through a shared Linear(node -> fc_dim) + ReLU, summed over the patches
    n: int  # the N of the N x N grid (paper: searched over 2..9, best 4); 1 = the whole image, no graph
    channels: tuple[int, ...]  # the patch encoder's 3x3 conv widths (paper 64, 64)
    node_pool: int  # adaptive mean pooling to node_pool x node_pool: node dim = channels[-1] * node_pool^2
    gcn_dims: tuple[int, ...]  # output widths of the GCN layers (paper 1024, 1024, 512)
    fc_dim: int  # d of the ablation without GCN (paper: unnamed)
    adjacency_init: str  # grid (self + 4-neighbours of the patch grid) | uniform (all patches alike)

    def __post_init__(self) -> None:
        key = f"{SECTION}.lsam"
        _check_bool(self.enabled, f"{key}.enabled")
        _check_bool(self.gcn, f"{key}.gcn")
        if not _positive_int(self.n):
            raise ConfigError(f"{key}.n must be an int >= 1 (the N of the N x N patch grid; paper 4), got {self.n!r}")
        _check_widths(self.channels, f"{key}.channels", "the patch encoder's conv widths, paper [64, 64]")
        _check_positive(self.node_pool, f"{key}.node_pool")
        _check_widths(self.gcn_dims, f"{key}.gcn_dims", "the GCN layers' output widths, paper [1024, 1024, 512]")
        _check_positive(self.fc_dim, f"{key}.fc_dim")
        if self.adjacency_init not in ADJACENCY_INITS:
            raise ConfigError(f"{key}.adjacency_init must be one of {list(ADJACENCY_INITS)}, "
                              f"got {self.adjacency_init!r}")

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

    kind: str  # kl (the paper, after Kosti) | bce; single-label data always trains with cross-entropy
    attention_weight: float  # weight of the GSAM attention branch's own loss (ABN: 1)

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ConfigError(f"{SECTION}.loss.kind must be one of {list(LOSS_KINDS)}, got {self.kind!r}")
        if not _number(self.attention_weight) or self.attention_weight < 0:
            raise ConfigError(f"{SECTION}.loss.attention_weight must be a number >= 0, got {self.attention_weight!r}")


@dataclass(frozen=True)
class DAGNetConfig:
    """`model.dagnet` (validated on construction: a bad value is a ConfigError naming its key)."""

    views: dict[str, ViewConfig]  # body, image_body_masked (paper 224 both), patches (size = the whole image cut)
    body_backbone: BackboneConfig  # ResNet-50 in the paper
    context_backbone: BackboneConfig  # ResNet-18 in the paper (GSAM needs a ResNet)
    bam: DAGNetBAMConfig
    gsam: DAGNetGSAMConfig
    lsam: DAGNetLSAMConfig
    classifier_hidden: int | None  # null: one Linear on the fused feature; an int: Linear-ReLU-Dropout-Linear
    dropout: float  # before the last Linear of the classifier
    loss: DAGNetLossConfig
    train: dict[str, Any]  # train.* values this model trains with (paper: lr 1e-4, batch 32); not read by the model

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def patch_size(self) -> int:
        """The side of one patch as the loader resizes it: the whole image's size / N (paper 224 / 4 = 56)."""
        return max(MIN_PATCH, round(self.views["patches"].size / self.lsam.n))


def _validate(cfg: DAGNetConfig) -> None:
    check_views(cfg.views, DAGNET_VIEWS, SECTION)  # exactly these three, each with a known norm and size >= 8
    for name, sub in (("body_backbone", cfg.body_backbone), ("context_backbone", cfg.context_backbone)):
        if not isinstance(sub, BackboneConfig):
            raise ConfigError(f"{SECTION}.{name}: expected a backbone section, got {type(sub).__name__}")
    if cfg.gsam.enabled and cfg.context_backbone.name not in RESNETS:
        raise ConfigError(f"{SECTION}.context_backbone.name must be one of {list(RESNETS)} with gsam.enabled "
                          f"(the attention branch splits the trunk at layer3/layer4), got {cfg.context_backbone.name!r}")
    hidden = cfg.classifier_hidden
    if hidden is not None and not _positive_int(hidden):
        raise ConfigError(f"{SECTION}.classifier_hidden must be null or a positive int, got {hidden!r}")
    if not _number(cfg.dropout) or not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"{SECTION}.dropout must be a number in [0, 1), got {cfg.dropout!r}")
    if not isinstance(cfg.train, dict):
        raise ConfigError(f"{SECTION}.train: expected a mapping, got {type(cfg.train).__name__}")
