"""The two-stream baseline of Kosti et al. ("Context based emotion recognition using EMOTIC
dataset", TPAMI 2019), registered as `kosti`.

    body crop  [B,3,Sb,Sb] --body backbone-->    map --GAP--> [B,Cb]
    whole image [B,3,Si,Si] --context backbone--> map --GAP--> [B,Cc]
    [body ; context] --Linear(Cb+Cc -> fusion_dim)--BatchNorm1d--ReLU--Dropout--> f [B,fusion_dim]
    multilabel (EMOTIC): logits = Linear(fusion_dim -> C) f   (the 26 categories, regressed)
                         continuous = Linear(fusion_dim -> 3) f   (valence, arousal, dominance)
    multiclass (CAER-S): logits = Linear(fusion_dim -> C) f, no continuous head (no VAD there)

The paper's loss is L = lambda_disc L_disc + lambda_cont L_cont, with
- L_disc = sum_j w_j (ŷ_j - y_j)^2, w_j = 1 / ln(c + p_j), c = 1.2, where p_j is the
  probability of category j: per batch ("dynamic", the paper's choice) or over the training
  split ("static");
- L_cont over valence, arousal and dominance: a smooth L1 (Huber) loss, or an L2 loss whose
  errors smaller than a margin theta cost nothing ("margin_l2").
On single-label data (CAER-S) the criterion is plain cross-entropy on the logits;
`model.kosti.loss.*` does not apply there (the loss weights included).

The most used public PyTorch version (Tandon's EMOTIC repository) trains a ResNet-18 body
stream on 128x128 body crops, a ResNet-18 context stream (Places365 weights) on 224x224
whole images, a 256-d fusion layer with dropout 0.5, batch 52. Those are params here
(`model.kosti.views`, `body_backbone`, `context_backbone`, `fusion_dim`, `dropout`,
`train.batch_size` in `model.kosti.train`): the demo configs use smaller pixel sizes so that
the model trains on CPUs; nothing in the network depends on the sizes (every map is
globally average-pooled). The context backbone takes the same `BackboneConfig` as any other
(torchvision ImageNet weights or a local state_dict file in `weights`, e.g. Places365).

Choices that are ours, not the paper's or the public code's:
- VAD units. The continuous head predicts valence, arousal and dominance in the data's own
  1..10 units (core/data: EMOTIC's scale), not divided by 10 as the public code does; its bias
  starts at 5.5, the middle of the scale (see `KostiTwoStream.__init__`). `margin` is in the
  same units.
- Dynamic weights. p_j is the fraction of the batch's samples that carry label j (a
  probability, as the paper's formula says). The public code instead feeds raw batch counts
  into ln(c + count) and gives a class absent from the batch the weight 1e-4; we follow the
  paper's formula, so an absent class has p_j = 0 and weight 1/ln(c) (the largest weight:
  its all-zero column is still a target the network must meet).
- No normalisation of w_j (the paper's formula as printed). models/losses.py's
  `weighted_mse` (the rrla paper's eq. 9) normalises its weights to sum to 1; this loss does
  not, so with C = 26 and c = 1.2 L_disc is about 26 x larger per unit of squared error than
  `weighted_mse`. Learning rates are not interchangeable between the two.
- Averaging. The public code sums its losses over the batch; we average over the batch
  (L_disc) and over the persons with VAD labels (L_cont), so the loss scale and the learning
  rate do not depend on the batch size. Within one person the 26 (resp. 3) terms are summed.
- Persons without VAD (`has_vad` false; EMOTIC has a few) take no part in L_cont; a batch
  with none of them has L_cont = 0.

models/ stays pure PyTorch: no file reads here (the backbone factory's optional weight file
aside, models/backbones.py).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.backbones import build_backbone
from models.config import ConfigError, KostiConfig, KostiLossConfig, view_specs
from models.losses import CrossEntropyLoss, check_label_freq
from models.output import ModelOutput
from models.registry import register_model

SECTION = "model.kosti"
DISCRETE_WEIGHTS = ("dynamic", "static")
CONTINUOUS_LOSSES = ("smooth_l1", "margin_l2")
VAD_DIM = 3  # valence, arousal, dominance
VAD_MIDPOINT = 5.5  # the middle of EMOTIC's 1..10 scale


def check_loss_config(cfg: KostiLossConfig) -> None:
    """ConfigError naming `model.kosti.loss.<key>` for any value the loss cannot use."""
    key = f"{SECTION}.loss"
    if cfg.discrete_weights not in DISCRETE_WEIGHTS:
        raise ConfigError(f"{key}.discrete_weights: must be one of {list(DISCRETE_WEIGHTS)}, "
                          f"got {cfg.discrete_weights!r}")
    if cfg.continuous not in CONTINUOUS_LOSSES:
        raise ConfigError(f"{key}.continuous: must be one of {list(CONTINUOUS_LOSSES)}, got {cfg.continuous!r}")
    if not _is_number(cfg.c) or not cfg.c > 1.0:
        raise ConfigError(f"{key}.c: must be a number > 1 so that ln(c + p) > 0 for every p >= 0 "
                          f"(paper 1.2), got {cfg.c!r}")
    if not _is_number(cfg.margin) or cfg.margin < 0 or (cfg.continuous == "smooth_l1" and cfg.margin == 0):
        bound = "> 0 (the Huber switch point)" if cfg.continuous == "smooth_l1" else ">= 0"
        raise ConfigError(f"{key}.margin: must be a number {bound} for continuous {cfg.continuous!r}, "
                          f"got {cfg.margin!r}")
    for name in ("discrete_weight", "continuous_weight"):
        value = getattr(cfg, name)
        if not _is_number(value) or value < 0:
            raise ConfigError(f"{key}.{name}: must be a number >= 0, got {value!r}")
    if cfg.discrete_weight == 0 and cfg.continuous_weight == 0:
        raise ConfigError(f"{key}.discrete_weight and {key}.continuous_weight are both 0: nothing to train")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _check_model_config(cfg: KostiConfig) -> None:
    if not isinstance(cfg.fusion_dim, int) or isinstance(cfg.fusion_dim, bool) or cfg.fusion_dim < 1:
        raise ConfigError(f"{SECTION}.fusion_dim: must be a positive integer, got {cfg.fusion_dim!r}")
    if not _is_number(cfg.dropout) or not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"{SECTION}.dropout: must be a probability in [0, 1), got {cfg.dropout!r}")
    check_loss_config(cfg.loss)


class KostiTwoStream(nn.Module):
    # The input views it reads (core/data/views.py names them): the body crop and the whole image.
    views = ("body", "image")

    def __init__(self, cfg: KostiConfig, *, num_classes: int, task: str, load_pretrained: bool = True) -> None:
        super().__init__()
        _check_model_config(cfg)
        self.config, self.num_classes, self.task = cfg, num_classes, task
        self.view_specs = view_specs(cfg.views, self.views, section=SECTION)
        self.embedding_dim = None  # no label embeddings
        self.predicts_vad = task == "multilabel"

        self.body_backbone = build_backbone(cfg.body_backbone, load_weights=load_pretrained,
                                            section=f"{SECTION}.body_backbone")
        self.context_backbone = build_backbone(cfg.context_backbone, load_weights=load_pretrained,
                                               section=f"{SECTION}.context_backbone")
        fused_in = self.body_backbone.out_channels + self.context_backbone.out_channels
        self.fusion = nn.Sequential(
            nn.Linear(fused_in, cfg.fusion_dim),
            nn.BatchNorm1d(cfg.fusion_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(cfg.dropout),
        )
        self.classifier = nn.Linear(cfg.fusion_dim, num_classes)
        self.continuous_head: nn.Linear | None = None
        if self.predicts_vad:
            self.continuous_head = nn.Linear(cfg.fusion_dim, VAD_DIM)
            # VAD targets live in 1..10. With the default zero-centred bias the first
            # predictions are ~0, errors ~5 per dimension: L_cont starts near 3 x 25 (margin_l2)
            # and its gradient, through the shared fusion layer, swamps L_disc's for the first
            # steps. Starting at the scale's middle makes every initial error at most 4.5.
            nn.init.constant_(self.continuous_head.bias, VAD_MIDPOINT)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Both streams' trunks (`train.backbone_lr` applies to them)."""
        return [*self.body_backbone.parameters(), *self.context_backbone.parameters()]

    def pooled_features(self, body: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """[GAP(body map) ; GAP(context map)]: [B, Cb + Cc], the fusion layer's input."""
        body_feature = self.body_backbone(body).mean(dim=(2, 3))
        context_feature = self.context_backbone(image).mean(dim=(2, 3))
        return torch.cat([body_feature, context_feature], dim=1)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> ModelOutput:
        body, image = _read_inputs(inputs)
        dtype = next(self.parameters()).dtype
        fused = self.fusion(self.pooled_features(body.to(dtype), image.to(dtype)))
        continuous = None if self.continuous_head is None else self.continuous_head(fused)
        return ModelOutput(logits=self.classifier(fused), attention=None, continuous=continuous)


def _read_inputs(inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(inputs, Mapping):
        raise TypeError(f"kosti forward takes a mapping of views {list(KostiTwoStream.views)}, "
                         f"got {type(inputs).__name__}")
    tensors = []
    for key in KostiTwoStream.views:
        if key not in inputs:
            raise ValueError(f"kosti forward: missing input view {key!r} (it reads {list(KostiTwoStream.views)}, "
                             f"got {sorted(inputs)})")
        value = inputs[key]
        if not isinstance(value, torch.Tensor) or value.dim() != 4 or value.shape[1] != 3:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"kosti forward: input {key!r} must be [B,3,S,S], got {shape}")
        tensors.append(value)
    body, image = tensors
    if body.shape[0] != image.shape[0]:
        raise ValueError(f"kosti forward: 'body' and 'image' batch sizes differ: {body.shape[0]} vs {image.shape[0]}")
    return body, image


class KostiLoss(nn.Module):
    """forward(output, batch): the paper's L on EMOTIC, cross-entropy on CAER-S.

    Batch keys read: "target" (multilabel: float multi-hot [B,C]; multiclass: long ids [B]);
    multilabel also "vad" (float [B,3], any value where unknown) and "has_vad" (bool [B]).
    """

    name = "kosti"

    def __init__(self, cfg: KostiLossConfig, *, task: str, label_freq: np.ndarray | None = None) -> None:
        super().__init__()
        check_loss_config(cfg)
        if task not in ("multilabel", "multiclass"):
            raise ConfigError(f"task must be 'multilabel' or 'multiclass', got {task!r}")
        self.config, self.task = cfg, task
        self.cross_entropy = CrossEntropyLoss() if task == "multiclass" else None
        weights = None
        if task == "multilabel" and cfg.discrete_weights == "static":
            freq = _check_label_freq(label_freq)
            weights = torch.as_tensor(1.0 / np.log(cfg.c + freq), dtype=torch.float32)
        self.register_buffer("static_weights", weights)  # None: per-batch weights (or cross-entropy)

    def class_weights(self, target: torch.Tensor) -> torch.Tensor:
        """w_j = 1 / ln(c + p_j) [C]: p_j from the train split (static) or this batch (dynamic)."""
        if self.static_weights is not None:
            if self.static_weights.numel() != target.shape[1]:
                raise ValueError(f"kosti loss: static weights were built for {self.static_weights.numel()} "
                                 f"classes, targets have {target.shape[1]}")
            return self.static_weights.to(device=target.device, dtype=target.dtype)
        freq = target.detach().mean(dim=0)  # fraction of the batch's samples carrying each label
        return 1.0 / torch.log(self.config.c + freq)

    def discrete_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """mean over the batch of sum_j w_j (ŷ_j - y_j)^2."""
        target = target.to(device=logits.device, dtype=logits.dtype)
        if logits.dim() != 2 or logits.shape != target.shape:
            raise ValueError(f"kosti loss: logits and multi-hot targets must share one [B,C] shape, "
                             f"got {tuple(logits.shape)} and {tuple(target.shape)}")
        weights = self.class_weights(target)
        return ((logits - target) ** 2 * weights).sum(dim=1).mean()

    def continuous_loss(self, continuous: torch.Tensor, vad: torch.Tensor, has_vad: torch.Tensor) -> torch.Tensor:
        """Mean over the persons with VAD of the sum over valence, arousal, dominance."""
        batch = continuous.shape[0]
        vad = vad.to(device=continuous.device, dtype=continuous.dtype)
        has_vad = has_vad.to(device=continuous.device)
        if continuous.shape != (batch, VAD_DIM) or vad.shape != (batch, VAD_DIM):
            raise ValueError(f"kosti loss: continuous predictions and batch['vad'] must be [B,3], "
                             f"got {tuple(continuous.shape)} and {tuple(vad.shape)}")
        if has_vad.shape != (batch,):
            raise ValueError(f"kosti loss: batch['has_vad'] must be [B={batch}], got {tuple(has_vad.shape)}")
        keep = has_vad.to(torch.bool)
        if not bool(keep.any()):
            return continuous.sum() * 0.0  # stays in the graph: DDP expects every parameter to get a grad
        pred, target = continuous[keep], vad[keep]  # rows without VAD never enter (NaN there is harmless)
        margin = float(self.config.margin)
        if self.config.continuous == "smooth_l1":
            per_element = F.smooth_l1_loss(pred, target, reduction="none", beta=margin)
        else:  # margin_l2
            error = pred - target
            per_element = torch.where(error.abs() >= margin, error ** 2, torch.zeros_like(error))
        return per_element.sum(dim=1).mean()

    def forward(self, output: ModelOutput, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits = output.logits
        if self.cross_entropy is not None:
            return self.cross_entropy(logits, _batch_key(batch, "target").to(logits.device))
        if output.continuous is None:
            raise ValueError("kosti loss on multilabel data needs the model's continuous (VAD) output, got None")
        cfg = self.config
        discrete = self.discrete_loss(logits, _batch_key(batch, "target"))
        continuous = self.continuous_loss(output.continuous, _batch_key(batch, "vad"), _batch_key(batch, "has_vad"))
        return cfg.discrete_weight * discrete + cfg.continuous_weight * continuous


def _batch_key(batch: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in batch:
        raise ValueError(f"kosti loss: the batch has no {key!r} (keys: {sorted(batch)})")
    return batch[key]


def _check_label_freq(label_freq: np.ndarray | None) -> np.ndarray:
    key = f"{SECTION}.loss.discrete_weights"
    return check_label_freq(label_freq, missing=(
        f"{key} is 'static': the criterion needs label_freq, the fraction of training samples per class "
        "(or set it to 'dynamic', the paper's per-batch weights)"))


def build_kosti_criterion(cfg: KostiConfig, *, task: str, loss_name: str | None = None,
                          label_freq: np.ndarray | None = None, seed: int = 0) -> KostiLoss:
    """The family's training loss. `loss_name` (train.loss) is ignored: Kosti has its own loss,
    set in `model.kosti.loss`; so is `seed` (the loss has no randomness)."""
    del seed
    return KostiLoss(cfg.loss, task=task, label_freq=label_freq)


@register_model("kosti", config=KostiConfig, criterion=build_kosti_criterion)
def build_kosti(
    cfg: KostiConfig,
    *,
    num_classes: int,
    task: str,
    cooccurrence: np.ndarray | torch.Tensor | None = None,
    label_embeddings: np.ndarray | torch.Tensor | None = None,
    load_pretrained: bool = True,
) -> KostiTwoStream:
    # cooccurrence and label_embeddings are ignored: Kosti has no label graph.
    return KostiTwoStream(cfg, num_classes=num_classes, task=task, load_pretrained=load_pretrained)
