"""The relational region-level network ("Human Emotion Recognition with Relational
Region-Level Analysis", Li, Dong, Wang), registered as `rrla`.

    body crop --backbone--> map [B,C,h,w] --BPA--> --GAP--> [B,C] --(C != 2048: linear)--> B_A [B,2048]
    objects O_A [B,N,2048] + boxes + person box --BOA(B_A)--> W3 O_B [B,2048]
    F = [B_A ; W3 O_B]  (4096)
    multilabel + ELD on : ŷ = H^(2) F   (models/eld.py)
    multilabel, ELD off : ŷ = Linear(4096 -> C) F / s   (s = sqrt(4096) when model.rrla.eld.scaled, else 1)
    multiclass (CAER-S) : logits = Linear(4096 -> C) F   (the paper's CAER-S head; ELD is not
                          used for single-label data whatever model.rrla.eld.enabled says)

B_A is 2048-d for every backbone, as in the paper's ResNet-50: when the backbone has fewer
channels (ResNet-18: 512, MobileNetV2: 1280) a linear layer (`body_proj`, with bias, no
activation) maps the pooled feature to 2048; for ResNet-50 there is no such layer.

Ablation switches (paper Table 4), each of which changes the module tree, not just a flag:
`bpa.enabled: false` (no SE block), `boa.enabled: false` (EqualObjectPooling: mean of the
valid objects, no W1/W2/W_G), `boa.geometry: false` (no W_G; boxes are not read),
`eld.enabled: false` (linear classifier), `backbone.name` (resnet50 | resnet18 | mobilenet_v2).

The "ELD off" classifier keeps ELD's score temperature s (models/eld.py, `model.rrla.eld.scaled`):
the ablation removes the label graph, not the scaling that makes the head trainable at the
shared learning rate. Without it the free 4096-d classifier diverged on the demo data at
lr 0.1 (train loss 8-24 for all ten epochs while the full model's fell to 0.08), so "no ELD"
measured an unstable optimiser, not the missing label dependencies.

Inputs (one mapping, as for every registered model): the person crop under the name of the
person view, and the `objects` view as obj_feats [B,N,2048], obj_boxes [B,N,4], obj_mask [B,N]
and person_box [B,4]. The person view is `model.rrla.person_view`: `auto` reads the face on
single-label data (CAER-S: the paper's input there is the face) and the body crop otherwise.

Precomputed body maps (the frozen-backbone fast path, models/frozen.py): after
`freeze_backbone()` (or `set_body_input("feature_map")`) the person view's tensor is the backbone's output map
[B,C,h,w] (computed once and cached) instead of the crop, and the backbone is skipped; BPA,
GAP, the projection and everything after it run as usual. The mode is not part of the
state_dict: a checkpoint trained this way loads into a model that reads crops.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from models.backbones import build_backbone
from models.boa import OBJECT_FEATURE_DIM, BodyObjectAttention, EqualObjectPooling
from models.bpa import BodyPartAttention
from models.config import ConfigError, RRLAConfig, view_specs
from models.eld import EmotionLabelDependency
from models.frozen import FrozenInput
from models.output import ModelOutput
from models.registry import register_model

BODY_FEATURE_DIM = 2048
FUSED_FEATURE_DIM = BODY_FEATURE_DIM + OBJECT_FEATURE_DIM
BODY_INPUTS = ("image", "feature_map")
# Object-feature channels with a smaller training std are centred, not scaled (set_object_feature_stats).
# The features are ReLU outputs of order 0.1-10; fp16 storage resolves about 1e-3 at 1.
MIN_SCALED_STD = 1e-3
PERSON_VIEWS = ("auto", "body", "face")
OBJECT_INPUTS = ("obj_feats", "obj_boxes", "obj_mask", "person_box")


def resolve_person_view(setting: str, task: str) -> str:
    """`auto`: the face on single-label data (the paper's CAER-S input), the body crop otherwise."""
    if setting not in PERSON_VIEWS:
        raise ConfigError(f"model.rrla.person_view must be one of {PERSON_VIEWS}, got {setting!r}")
    if setting == "auto":
        return "face" if task == "multiclass" else "body"
    return setting


class RelationalRegionLevelNet(nn.Module):
    predicts_vad = False

    def __init__(
        self,
        cfg: RRLAConfig,
        *,
        num_classes: int,
        task: str,
        cooccurrence: np.ndarray | torch.Tensor | None,
        label_embeddings: np.ndarray | torch.Tensor | None,
        load_pretrained: bool = True,
    ) -> None:
        super().__init__()
        self.config, self.num_classes, self.task = cfg, num_classes, task
        self.body_input = "image"  # or "feature_map": see set_body_input
        self.person_view = resolve_person_view(cfg.person_view, task)
        # The input views it reads (core/data/views.py names them): the person crop and the stored objects.
        self.views = (self.person_view, "objects")
        self.view_specs = view_specs(cfg.views, self.views, section="model.rrla")
        if cfg.boa.max_objects is not None and cfg.boa.max_objects < 0:
            raise ConfigError(f"model.rrla.boa.max_objects must be >= 0 or null, got {cfg.boa.max_objects}")

        self.backbone = build_backbone(cfg.backbone, load_weights=load_pretrained)
        channels = self.backbone.out_channels
        self.bpa = BodyPartAttention(channels, cfg.bpa.hidden) if cfg.bpa.enabled else None
        self.body_proj = nn.Linear(channels, BODY_FEATURE_DIM) if channels != BODY_FEATURE_DIM else None

        if cfg.boa.enabled:
            self.boa: nn.Module = BodyObjectAttention(
                heads=cfg.boa.heads,
                dim=cfg.boa.dim,
                geometry=cfg.boa.geometry,
                geometry_dim=cfg.boa.geometry_dim,
                value_dim=cfg.boa.value_dim,
            )
        else:
            self.boa = EqualObjectPooling()

        # Per-dimension standardisation of the stored object features (like ImageNet mean/std
        # for pixels). Identity until the trainer sets train-split statistics; saved in the
        # state_dict so prediction normalises exactly as training did. Without it, features of
        # an untrained extractor reach magnitudes of ~100 and SGD diverges in one step.
        self.register_buffer("object_feature_mean", torch.zeros(OBJECT_FEATURE_DIM))
        self.register_buffer("object_feature_std", torch.ones(OBJECT_FEATURE_DIM))

        self.eld: EmotionLabelDependency | None = None
        self.classifier: nn.Linear | None = None
        if task == "multilabel" and cfg.eld.enabled:
            if cooccurrence is None or label_embeddings is None:
                raise ConfigError(
                    "model.rrla.eld.enabled is true: build_model needs `cooccurrence` (P, "
                    "data/graph/cooccurrence.npy) and `label_embeddings` (Z, "
                    "data/graph/label_embeddings.npy); or set model.rrla.eld.enabled: false"
                )
            self.eld = EmotionLabelDependency(
                cooccurrence, label_embeddings, cfg.eld.t, cfg.eld.p,
                hidden=cfg.eld.hidden, feature_dim=FUSED_FEATURE_DIM, scaled=cfg.eld.scaled,
                propagation=cfg.eld.propagation, activation=cfg.eld.activation,
            )
            if self.eld.num_classes != num_classes:
                raise ValueError(
                    f"cooccurrence is {self.eld.num_classes}x{self.eld.num_classes} "
                    f"but num_classes is {num_classes}"
                )
        else:
            self.classifier = nn.Linear(FUSED_FEATURE_DIM, num_classes)
        scaled_scores = task == "multilabel" and self.eld is None and cfg.eld.scaled
        self.classifier_scale = 1.0 / float(np.sqrt(FUSED_FEATURE_DIM)) if scaled_scores else 1.0

    @property
    def embedding_dim(self) -> int | None:
        return None if self.eld is None else self.eld.embedding_dim

    def set_label_graph(self, t: float, p: float) -> None:
        """Change ELD's t and p (thresholding and eq. 7) in place; the saved config follows."""
        if self.eld is None:
            raise ConfigError("set_label_graph: this model has no ELD module")
        self.eld.set_edge_params(t, p)
        eld_cfg = dataclasses.replace(self.config.eld, t=float(t), p=float(p))
        self.config = dataclasses.replace(self.config, eld=eld_cfg)

    def set_object_feature_stats(self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor) -> None:
        """Standardise object features with these [2048] statistics.

        A channel whose training std is below MIN_SCALED_STD (a ReLU channel that is dead on the
        training split, std exactly 0) is centred but not scaled: dividing by a tiny std would
        turn any small test-time value there into a huge one (0.05 / 1e-6 = 50,000, measured to
        raise the context norm from 12.8 to 28,564), and such a channel carries no information
        the training could have learnt from anyway.

        With `model.rrla.standardise_objects: false` the features are read as stored (the paper's
        way): the buffers stay the identity, so the state_dict has the same keys either way.
        """
        if not self.config.standardise_objects:
            return
        # torch.tensor copies: arrays arriving through Ray's object store are read-only
        mean = torch.tensor(np.asarray(mean), dtype=self.object_feature_mean.dtype).reshape(OBJECT_FEATURE_DIM)
        std = torch.tensor(np.asarray(std), dtype=self.object_feature_std.dtype).reshape(OBJECT_FEATURE_DIM)
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError("object feature statistics contain NaN or infinite values")
        self.object_feature_mean.copy_(mean)
        self.object_feature_std.copy_(torch.where(std < MIN_SCALED_STD, torch.ones_like(std), std))

    def set_body_input(self, kind: str) -> None:
        """What `body` is in forward: "image" (crops [B,3,S,S]) or "feature_map" (backbone
        output [B,C,h,w], precomputed by a frozen backbone; the backbone is then not run)."""
        if kind not in BODY_INPUTS:
            raise ValueError(f"body input must be one of {BODY_INPUTS}, got {kind!r}")
        self.body_input = kind

    def frozen_inputs(self) -> dict[str, FrozenInput]:
        """The frozen-backbone protocol (models/frozen.py): the backbone's map replaces the person view."""
        return {self.person_view: FrozenInput(self.person_view, self.backbone)}

    @property
    def frozen(self) -> bool:
        return self.body_input == "feature_map"

    def freeze_backbone(self) -> None:
        """Read the person view as the backbone's map from now on; the backbone is not trained."""
        self.set_body_input("feature_map")
        self.backbone.requires_grad_(False)

    def body_feature(self, body: torch.Tensor) -> torch.Tensor:
        """B_A: [B,3,S,S] -> [B,2048]."""
        return self.body_feature_from_map(self.backbone(body))

    def body_feature_from_map(self, feature_map: torch.Tensor) -> torch.Tensor:
        """B_A from the backbone's output map: [B,C,h,w] -> BPA -> GAP -> [B,2048]."""
        if self.bpa is not None:
            feature_map = self.bpa(feature_map)
        pooled = feature_map.mean(dim=(2, 3))
        return pooled if self.body_proj is None else self.body_proj(pooled)

    def fused_feature(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """F = [B_A ; W3 O_B] ([B,4096]) and the BOA weights."""
        missing = [key for key in (self.person_view, *OBJECT_INPUTS) if key not in inputs]
        if missing:
            raise ValueError(f"rrla reads {[self.person_view, *OBJECT_INPUTS]}; missing {missing}")
        body = inputs[self.person_view]
        obj_feats, obj_boxes, obj_mask, person_box = (inputs[key] for key in OBJECT_INPUTS)
        from_map = self.body_input == "feature_map"
        _check_inputs(body, obj_feats, obj_boxes, obj_mask, person_box,
                      body_channels=self.backbone.out_channels if from_map else 3)
        dtype = next(self.parameters()).dtype  # float16 object features are cast to the weights' dtype
        limit = self.config.boa.max_objects
        if limit is not None:
            obj_feats, obj_boxes, obj_mask = obj_feats[:, :limit], obj_boxes[:, :limit], obj_mask[:, :limit]
        obj_mask = obj_mask.to(torch.bool)
        obj_feats = (obj_feats.to(dtype) - self.object_feature_mean) / self.object_feature_std
        obj_feats = obj_feats * obj_mask.unsqueeze(-1)  # padding stays exactly zero
        obj_boxes, person_box = obj_boxes.to(dtype), person_box.to(dtype)
        # Padded boxes become the person's own box before the geometry term: their attention is
        # masked out anyway, but NaN or huge padding would otherwise reach the geometry gate's
        # gradient (NaN * 0 = NaN).
        obj_boxes = torch.where(obj_mask.unsqueeze(-1), obj_boxes, person_box.unsqueeze(1))

        body = body.to(dtype)
        body_feature = self.body_feature_from_map(body) if from_map else self.body_feature(body)
        context, attention = self.boa(body_feature, obj_feats, obj_boxes, obj_mask, person_box)
        return torch.cat([body_feature, context], dim=1), attention

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The person-crop trunk's parameters (`train.backbone_lr` applies to them)."""
        return list(self.backbone.parameters())

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> ModelOutput:
        fused, attention = self.fused_feature(inputs)
        if self.eld is not None:
            return ModelOutput(logits=self.eld(fused), attention=attention)
        return ModelOutput(logits=self.classifier(fused) * self.classifier_scale, attention=attention)


def _check_inputs(
    body: torch.Tensor,
    obj_feats: torch.Tensor,
    obj_boxes: torch.Tensor,
    obj_mask: torch.Tensor,
    person_box: torch.Tensor,
    body_channels: int = 3,
) -> None:
    if body.dim() != 4 or body.shape[1] != body_channels:
        expected = "[B,3,S,S]" if body_channels == 3 else f"a backbone map [B,{body_channels},h,w]"
        raise ValueError(f"body must be {expected}, got {tuple(body.shape)}")
    batch = body.shape[0]
    if obj_feats.dim() != 3 or obj_feats.shape[0] != batch or obj_feats.shape[2] != OBJECT_FEATURE_DIM:
        raise ValueError(f"obj_feats must be [B={batch},N,{OBJECT_FEATURE_DIM}], got {tuple(obj_feats.shape)}")
    num_objects = obj_feats.shape[1]
    if tuple(obj_boxes.shape) != (batch, num_objects, 4):
        raise ValueError(f"obj_boxes must be [{batch},{num_objects},4], got {tuple(obj_boxes.shape)}")
    if tuple(obj_mask.shape) != (batch, num_objects):
        raise ValueError(f"obj_mask must be [{batch},{num_objects}], got {tuple(obj_mask.shape)}")
    if tuple(person_box.shape) != (batch, 4):
        raise ValueError(f"person_box must be [{batch},4], got {tuple(person_box.shape)}")


@register_model("rrla", config=RRLAConfig)
def build_rrla(
    cfg: RRLAConfig,
    *,
    num_classes: int,
    task: str,
    cooccurrence: np.ndarray | torch.Tensor | None = None,
    label_embeddings: np.ndarray | torch.Tensor | None = None,
    load_pretrained: bool = True,
) -> RelationalRegionLevelNet:
    return RelationalRegionLevelNet(
        cfg,
        num_classes=num_classes,
        task=task,
        cooccurrence=cooccurrence,
        label_embeddings=label_embeddings,
        load_pretrained=load_pretrained,
    )
