"""CAER-Net-S, the static (image) model of "Context-Aware Emotion Recognition Networks"
(Lee, Kim, Kim, Park, Sohn; ICCV 2019), registered as `caernet`.

    face crop I_F [B,3,Sf,Sf] --face encoder--> [B,C5,h,w] --spatial mean--> X_F [B,C5]
    face-hidden image I_C [B,3,Sc,Sc] --context encoder--> X_C [B,C5,H,W]
        --attention inference--> A [B,1,H,W] --softmax over the H*W positions--> Â (sums to 1)
        X̄_C = sum_ij Â_ij X_C[:, :, i, j]   [B,C5]  (eq. 4, then spatial aggregation)
    λ_F = g_D(X_F), λ_C = g_E(X̄_C); (λ_F, λ_C) = softmax(λ_F, λ_C)  (λ_F + λ_C = 1)
    X_A = [λ_F X_F ; λ_C X̄_C]  [B,2*C5]  (eq. 5)
    logits = Linear(classifier_hidden -> K)(Dropout(ReLU(Linear(2*C5 -> classifier_hidden) X_A)))  (eq. 6)

C5 = channels[-1] (paper 256). Views: `face` (the face crop) and `image_face_masked` (the
whole image with the face box zeroed, core/data/views.py). The paper's CAER-Net-S reads both
at 224x224; its video model reads 96x96 faces and 112x112 context crops.

forward returns ModelOutput(logits [B,K], attention = the fusion weights [B,2] with columns
(λ_F, λ_C), continuous = None). `parts(inputs)` returns every intermediate, the spatial
context attention Â [B,H,W] included, for reports; the model keeps no state between calls.

Section 3.2 leaves these unsaid; the choices made here:
- Encoders. Each of the five layers is conv 3x3 (stride 1, padding 1, no bias: BN follows) ->
  BN -> ReLU, and layers 1-4 are followed by max pooling 2x2, stride 2 (the static model's 2D
  counterpart of the paper's 3D pooling; floor division for odd sizes). So the encoder's map is
  the input side / 16: a 224 input gives 14x14, a 32 input 2x2. Inputs must be at least 16
  pixels a side; they need not be square nor of the configured size (the view sizes are the
  loader's). The context stream has the same widths as the face stream: the paper lists
  "32, 64, 128, and 256" (four numbers) for its five context layers, read as a typo for the
  face stream's 32-64-128-256-256. Both streams share `channels`; their weights are separate.
- Attention inference on X_C (the context encoder's last map, after its BN and ReLU): conv
  3x3 (C5 -> attention_hidden, no bias) -> BN -> ReLU -> conv 3x3 (attention_hidden -> 1, no
  bias, no BN, no ReLU). The paper writes "followed by BN and ReLU" after the two layers; on
  the last, one-channel layer a ReLU would zero every negative score (all of them equal after
  the softmax, with no gradient), so the map could only raise positions above a floor, never
  rank the rest; raw scores are what a softmax takes. No bias: a constant added to all
  positions cancels in the spatial softmax.
- Aggregation: the paper "spatially averages" Â ⊙ X_C. Since Â sums to 1 over the positions,
  this module sums instead (X̄_C = attention-weighted mean of X_C's columns): the plain mean
  would only divide by H*W, a constant that shrinks X̄_C by 196 at 224 input relative to X_F
  (itself a uniformly weighted mean), and the fusion compares the two features' magnitudes.
- Adaptive fusion: the paper's 1x1 convolutions act on 1x1 maps, i.e. Linear layers on [B,C].
  g_D and g_E are each Linear(C5 -> fusion_hidden) -> ReLU -> Linear(fusion_hidden -> 1), with
  biases and no BN; the softmax is taken over the two scores. Dropout only in the classifier
  (the paper's "between 1x1 convolution layers" of the classifier): Linear(2*C5 ->
  classifier_hidden) -> ReLU -> Dropout(dropout) -> Linear(classifier_hidden -> K).
- Initialisation: PyTorch's defaults (the paper trains from scratch and names none).
- Task "multiclass" (CAER-S, the paper: cross-entropy) and "multilabel" (EMOTIC: trained with
  whatever `train.loss` is) share the head; the logits are plain (no temperature): the head is
  a small 128-d layer with dropout, not a 4096-d one. No criterion is registered: the default
  LogitsCriterion (models/losses.py) is exactly cross-entropy / train.loss on the logits.
- Training with batch norm needs more than one value per channel: batch 1 at a 16-31 pixel
  input (a 1x1 final map) fails in train mode, as any BN network does.
- `train` (the paper: SGD, lr 5e-3 divided by 10 every 4 epochs, batch 32) is read by the
  trainer, never by the model. No label graph, no pretrained weights: the builder ignores
  `cooccurrence`, `label_embeddings` and `load_pretrained`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from models.config import CAERNET_MIN_INPUT as MIN_INPUT
from models.config import CAERNET_SECTION as SECTION
from models.config import CAERNET_VIEWS as VIEWS
from models.config import CAERNetConfig, ConfigError, view_specs
from models.output import ModelOutput
from models.registry import register_model


class Encoder(nn.Sequential):
    """Five conv3x3-BN-ReLU layers, max pooling 2x2/2 after the first four: [B,3,S,S] -> [B,C5,S/16,S/16]."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        layers: list[nn.Module] = []
        width = 3
        for index, out in enumerate(channels):
            layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if index < len(channels) - 1:
                layers.append(nn.MaxPool2d(2, stride=2))
            width = out
        super().__init__(*layers)
        self.out_channels = width


class ContextAttention(nn.Module):
    """Attention inference and aggregation: X_C [B,C,H,W] -> (X̄_C [B,C], Â [B,H,W]).

    Â = softmax over the H*W positions of conv(ReLU(BN(conv(X_C)))); X̄_C = sum_ij Â_ij X_C[:,:,i,j].
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, 1, 3, padding=1, bias=False)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """The unnormalised map A [B,H,W]."""
        return self.conv2(torch.relu(self.bn1(self.conv1(features)))).squeeze(1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, height, width = features.shape
        weights = torch.softmax(self.scores(features).reshape(batch, height * width), dim=1)
        attended = torch.einsum("bcn,bn->bc", features.reshape(batch, -1, height * width), weights)
        return attended, weights.reshape(batch, height, width)


class FusionWeights(nn.Module):
    """λ_F, λ_C: a two-layer scorer per stream, then a softmax over the two: [B,C], [B,C] -> [B,2]."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.face = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))
        self.context = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, face: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return torch.softmax(torch.cat([self.face(face), self.context(context)], dim=1), dim=1)


class CAERNetParts(NamedTuple):
    logits: torch.Tensor  # [B,K]
    fusion_weights: torch.Tensor  # [B,2]: λ_F, λ_C (rows sum to 1)
    spatial_attention: torch.Tensor  # [B,H,W]: Â over the context encoder's map (sums to 1 per image)
    face_feature: torch.Tensor  # X_F [B,C5]
    context_feature: torch.Tensor  # X̄_C [B,C5]


class CAERNetS(nn.Module):
    views = VIEWS  # the input views it reads (core/data/views.py)
    embedding_dim = None  # holds no label embeddings
    predicts_vad = False

    def __init__(self, cfg: CAERNetConfig, *, num_classes: int, task: str) -> None:
        super().__init__()
        if task not in ("multiclass", "multilabel"):
            raise ConfigError(f"task must be 'multiclass' or 'multilabel', got {task!r}")
        self.config, self.num_classes, self.task = cfg, int(num_classes), task
        self.view_specs = view_specs(cfg.views, self.views, section=SECTION)
        channels = tuple(int(c) for c in cfg.channels)
        self.face_encoder = Encoder(channels)
        self.context_encoder = Encoder(channels)
        self.context_attention = ContextAttention(channels[-1], cfg.attention_hidden)
        self.fusion = FusionWeights(channels[-1], cfg.fusion_hidden)
        self.classifier = nn.Sequential(
            nn.Linear(2 * channels[-1], cfg.classifier_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(float(cfg.dropout)),
            nn.Linear(cfg.classifier_hidden, self.num_classes),
        )

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The two encoders (trained from scratch; `train.backbone_lr` applies to them when set)."""
        return [*self.face_encoder.parameters(), *self.context_encoder.parameters()]

    def parts(self, inputs: Mapping[str, torch.Tensor]) -> CAERNetParts:
        """Every intermediate of one forward pass (reports read the spatial attention here)."""
        face, context = _check_inputs(inputs)
        dtype = next(self.parameters()).dtype
        face_feature = self.face_encoder(face.to(dtype)).mean(dim=(2, 3))
        context_feature, spatial = self.context_attention(self.context_encoder(context.to(dtype)))
        weights = self.fusion(face_feature, context_feature)
        fused = torch.cat([weights[:, :1] * face_feature, weights[:, 1:] * context_feature], dim=1)
        return CAERNetParts(self.classifier(fused), weights, spatial, face_feature, context_feature)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> ModelOutput:
        parts = self.parts(inputs)
        return ModelOutput(logits=parts.logits, attention=parts.fusion_weights, continuous=None)


def _check_inputs(inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(inputs, Mapping):
        raise TypeError(f"caernet reads a mapping of views {list(VIEWS)}, got {type(inputs).__name__}")
    missing = [name for name in VIEWS if name not in inputs]
    if missing:
        raise ValueError(f"caernet: input view(s) {missing} missing; got {sorted(inputs)}")
    tensors = []
    for name in VIEWS:
        x = inputs[name]
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or min(x.shape[2:]) < MIN_INPUT:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"caernet: input {name!r} must be [B,3,H,W] with H, W >= {MIN_INPUT}, got {shape}")
        tensors.append(x)
    face, context = tensors
    if face.shape[0] != context.shape[0]:
        raise ValueError(f"caernet: inputs 'face' and 'image_face_masked' have batch sizes "
                         f"{face.shape[0]} and {context.shape[0]}")
    return face, context


@register_model("caernet", config=CAERNetConfig)
def build_caernet(
    cfg: CAERNetConfig,
    *,
    num_classes: int,
    task: str,
    cooccurrence: np.ndarray | torch.Tensor | None = None,
    label_embeddings: np.ndarray | torch.Tensor | None = None,
    load_pretrained: bool = True,
) -> CAERNetS:
    # No label graph and no pretrained weights: the paper trains CAER-Net from scratch.
    del cooccurrence, label_embeddings, load_pretrained
    return CAERNetS(cfg, num_classes=num_classes, task=task)
