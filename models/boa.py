"""Body-object attention (BOA), eq. 1-5 of the paper, and its "off" ablation.

For every head k = 1..h and object m (of the N stored objects, padded ones masked out):

    w_A^{km} = <W1_k O_A^m, W2_k B_A> / sqrt(d)                         (appearance, eq. 3)
    g^m      = [log(|x_m - x_B| / w_B), log(|y_m - y_B| / h_B),
                log(w_m / w_B),         log(h_m / h_B)]                 (top-left corners)
    w_G^{km} = max(ReLU(W_G,k E(g^m)), 1e-6)                             (geometry, eq. 4)
    w^{km}   = softmax over valid m of (w_A^{km} + log w_G^{km})        (eq. 2; = w_G e^{w_A} / sum)
    O_B^k    = sum_m w^{km} O_A^m                                        (2048-d, eq. 1)
    context  = W3 [O_B^1; ...; O_B^h]                                    (h*2048 -> 2048, eq. 5)

With `value_dim` d_v set (not the paper's; Relation Networks' reading), each head projects its
own O_B^k first: V_k O_B^k (2048 -> d_v, no bias), and W3 maps h*d_v -> 2048. Projecting the
pooled O_B^k equals pooling projected objects (the weights sum over m, V_k is linear) and costs
N times less. At h = 16, d_v = 128 the two hold 4.2 M parameters instead of W3's 67 M, which
dominate the demo model's step (#20); whether it costs accuracy is for the ablation runner.

E is the sin/cos embedding of Relation Networks (Hu et al., 2018): each of the 4 relative
coordinates is scaled by 100 and divided by wavelength^(8i/D), i = 0..D/8-1 (wavelength
1000, D = `model.rrla.boa.geometry_dim`), and sin and cos of all of them are concatenated (D values).
The ratios inside the logs are clamped at 1e-3 (so an object sharing the person's corner
gives log(1e-3), not -inf) and box sides at 1e-3 pixels (a degenerate person box must not
divide by zero).

W3 has no bias: an image with no valid object gets O_B = 0 and so a context of exactly 0.

With `geometry: false` only the appearance term is used (softmax of w_A) and W_G is not
created. `EqualObjectPooling` is the "BOA off" ablation of the paper's Table 4: every valid
object gets the same weight 1/n (a single "head", so no W1, W2, W_G) before W3 (2048 -> 2048).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from models.config import ConfigError

OBJECT_FEATURE_DIM = 2048
GEOMETRY_WAVELENGTH = 1000.0
GEOMETRY_SCALE = 100.0
_LOG_CLAMP = 1e-3
_MIN_BOX_SIDE = 1e-3
_MIN_GEOMETRY_WEIGHT = 1e-6


def relative_geometry(obj_boxes: torch.Tensor, person_box: torch.Tensor) -> torch.Tensor:
    """g of eq. 4 from x1y1x2y2 boxes: objects [B,N,4], person [B,4] -> [B,N,4]."""
    person_x, person_y = person_box[:, None, 0], person_box[:, None, 1]
    person_w = (person_box[:, None, 2] - person_box[:, None, 0]).clamp(min=_MIN_BOX_SIDE)
    person_h = (person_box[:, None, 3] - person_box[:, None, 1]).clamp(min=_MIN_BOX_SIDE)
    obj_x, obj_y = obj_boxes[..., 0], obj_boxes[..., 1]
    obj_w = obj_boxes[..., 2] - obj_boxes[..., 0]
    obj_h = obj_boxes[..., 3] - obj_boxes[..., 1]
    ratios = torch.stack(
        [
            (obj_x - person_x).abs() / person_w,
            (obj_y - person_y).abs() / person_h,
            obj_w / person_w,
            obj_h / person_h,
        ],
        dim=-1,
    )
    return ratios.clamp(min=_LOG_CLAMP).log()


def geometry_embedding(
    geometry: torch.Tensor, dim: int, wavelength: float = GEOMETRY_WAVELENGTH
) -> torch.Tensor:
    """E(g): [..., 4] -> [..., dim] sin/cos features (dim a multiple of 8)."""
    if dim % 8 != 0 or dim <= 0:
        raise ConfigError(f"model.rrla.boa.geometry_dim must be a positive multiple of 8, got {dim}")
    num_freqs = dim // 8
    exponents = torch.arange(num_freqs, dtype=geometry.dtype, device=geometry.device) * (8.0 / dim)
    wavelengths = wavelength**exponents
    angles = GEOMETRY_SCALE * geometry[..., None] / wavelengths  # [..., 4, num_freqs]
    embedding = torch.cat([angles.sin(), angles.cos()], dim=-1)  # [..., 4, 2*num_freqs]
    return embedding.flatten(-2)


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis of [B,h,N] restricted to mask [B,N] (True = valid).

    Masked entries are exactly 0; a row with no valid entry is all 0 (never NaN, and no NaN
    in the backward pass either, because no -inf-only row ever reaches the softmax).
    """
    valid = mask[:, None, :]
    has_valid = mask.any(dim=-1)[:, None, None]
    neg_inf = torch.full_like(logits, float("-inf"))
    safe = torch.where(valid, logits, neg_inf)
    safe = torch.where(has_valid, safe, torch.zeros_like(logits))
    return torch.softmax(safe, dim=-1) * valid.to(logits.dtype)


def _zero_padding(obj_feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Padded rows may hold anything (float16 garbage, NaN): 0 * NaN is NaN, so clear them.
    return torch.where(mask[..., None], obj_feats, torch.zeros_like(obj_feats))


class BodyObjectAttention(nn.Module):
    """Multi-head body-object attention; forward returns (context [B,2048], weights [B,h,N])."""

    def __init__(
        self,
        heads: int,
        dim: int,
        geometry: bool,
        geometry_dim: int = 64,
        feature_dim: int = OBJECT_FEATURE_DIM,
        value_dim: int | None = None,
    ) -> None:
        super().__init__()
        if heads < 1 or dim < 1:
            raise ConfigError(f"model.rrla.boa.heads and model.rrla.boa.dim must be >= 1, got {heads}, {dim}")
        if value_dim is not None and value_dim < 1:
            raise ConfigError(f"model.rrla.boa.value_dim must be >= 1 or null, got {value_dim}")
        self.heads, self.dim, self.feature_dim = heads, dim, feature_dim
        self.geometry_dim = geometry_dim
        self.object_key = nn.Linear(feature_dim, heads * dim)  # W1
        self.body_query = nn.Linear(feature_dim, heads * dim)  # W2
        self.geometry_gate = nn.Linear(geometry_dim, heads) if geometry else None  # W_G
        # V_k per head [h, 2048, d_v], initialised as nn.Linear(2048, d_v) would be
        self.value_proj = None if value_dim is None else nn.Parameter(
            torch.empty(heads, feature_dim, value_dim).uniform_(-1 / math.sqrt(feature_dim), 1 / math.sqrt(feature_dim)))
        head_width = feature_dim if value_dim is None else value_dim
        self.output_proj = nn.Linear(heads * head_width, feature_dim, bias=False)  # W3
        if geometry:
            geometry_embedding(torch.zeros(1, 4), geometry_dim)  # validates geometry_dim early

    @property
    def uses_geometry(self) -> bool:
        return self.geometry_gate is not None

    def attention_weights(
        self,
        body: torch.Tensor,
        obj_feats: torch.Tensor,
        obj_boxes: torch.Tensor,
        obj_mask: torch.Tensor,
        person_box: torch.Tensor,
    ) -> torch.Tensor:
        batch, num_objects, _ = obj_feats.shape
        query = self.body_query(body).view(batch, self.heads, self.dim)
        keys = self.object_key(obj_feats).view(batch, num_objects, self.heads, self.dim)
        logits = torch.einsum("bnhd,bhd->bhn", keys, query) / math.sqrt(self.dim)
        if self.geometry_gate is not None:
            embedding = geometry_embedding(
                relative_geometry(obj_boxes, person_box), self.geometry_dim
            )
            gate = torch.relu(self.geometry_gate(embedding)).clamp(min=_MIN_GEOMETRY_WEIGHT)
            logits = logits + gate.log().transpose(1, 2)
        return masked_softmax(logits, obj_mask)

    def forward(
        self,
        body: torch.Tensor,
        obj_feats: torch.Tensor,
        obj_boxes: torch.Tensor,
        obj_mask: torch.Tensor,
        person_box: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        obj_feats = _zero_padding(obj_feats, obj_mask)
        weights = self.attention_weights(body, obj_feats, obj_boxes, obj_mask, person_box)
        per_head = torch.einsum("bhn,bnf->bhf", weights, obj_feats)  # O_B^k, [B,h,2048]
        if self.value_proj is not None:
            per_head = torch.einsum("bhf,hfv->bhv", per_head, self.value_proj)  # V_k O_B^k, [B,h,d_v]
        context = self.output_proj(per_head.flatten(1))
        return context, weights


class EqualObjectPooling(nn.Module):
    """BOA off: the mean of the valid object features, then W3 (2048 -> 2048, no bias)."""

    def __init__(self, feature_dim: int = OBJECT_FEATURE_DIM) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.output_proj = nn.Linear(feature_dim, feature_dim, bias=False)

    def forward(
        self,
        body: torch.Tensor,
        obj_feats: torch.Tensor,
        obj_boxes: torch.Tensor,
        obj_mask: torch.Tensor,
        person_box: torch.Tensor,
    ) -> tuple[torch.Tensor, None]:
        obj_feats = _zero_padding(obj_feats, obj_mask)
        counts = obj_mask.sum(dim=1, keepdim=True).clamp(min=1).to(obj_feats.dtype)
        pooled = obj_feats.sum(dim=1) / counts
        return self.output_proj(pooled), None
