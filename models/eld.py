"""Emotion-label dependency (ELD): a two-layer GCN over the label graph whose outputs are the
per-class classifiers applied to the fused feature F. Equation numbers are the paper's:

    A_ij   = 1[P_ij >= t]                    for i != j        (text below eq. 6)
    A^r_ij = p * A_ij / sum_{k != i} A_ik     for i != j;   A^r_ii = 1 - p      (eq. 7)
    Â      = D^-1/2 A^r D^-1/2,   D_ii = sum_j A^r_ij          ("normalized", unnumbered)
    H^(1)  = σ(Â Z W^(0))                      Z: [C, d_z] label embeddings    (eq. 6, l = 0)
    H^(2)  = Â H^(1) W^(1)                     [C, 4096]                        (eq. 6, l = 1)
    ŷ      = F H^(2)^T / s                     one dot product per class; s = sqrt(4096) or 1  (eq. 8)

Reading of the equations:
- P is the contract's P[i,j] = P(label j | label i) with P[i,i] = 0. The diagonal of A is
  not an edge (eq. 7 sets A^r_ii itself), so it is left out of the row sums even when
  t <= 0 would make 1[P_ii >= t] true.
- A row with no neighbour above t would divide 0 by 0 in eq. 7. We give such a class all
  of its weight on itself (A^r_ii = 1): the p that would go to neighbours has nowhere to go.
  So every row of A^r sums to 1 for every p in [0, 1], D has no zero entry, and Â is
  well defined. With rows summing to 1, D = I and Â = A^r: the adjacency the GCN applies is
  row-stochastic (each class mixes a convex combination of its neighbours), not symmetric.
  The normalisation is still computed, with zero degrees mapped to 0, so the code stays right
  for any A^r.
- Two readings differ between the paper and ML-GCN's code (Chen et al., 2019, on which ELD is
  built), each a param with today's behaviour as the default:
  `model.rrla.eld.propagation`: `as_written` applies Â as above (class i reads its
  neighbours j with P(j|i) >= t); `transposed` applies Âᵀ, as ML-GCN's gen_adj does
  ((A D)ᵀ D, so class j reads the classes i that predict it).
  `model.rrla.eld.activation`: `between_layers` puts σ between the two layers only, as
  ML-GCN does; `every_layer` also applies it to H^(2), as eq. 6 writes for every l.
  σ is LeakyReLU(0.2) (ML-GCN's; the paper says "usually ReLU"). The GCN weights have no
  bias: ŷ is a pure dot product. Neither switch changes a parameter or a buffer: a model
  built with either one loads the state_dict of the other.

The 1/sqrt(feature_dim) temperature (`model.rrla.eld.scaled`, default on) is ours, not the
paper's: ŷ is a product of two learned 4096-d vectors, and at a standard initialisation its
scale (|H^(2)_c| ~ 8, |F| ~ 20) makes the first SGD steps at the paper's lr 0.01 diverge when
the backbone trains from scratch (the loss went 7.6 -> 1900 in 8 steps on the demo data; with
the temperature it falls from 0.14). A constant factor changes neither the ranking of scores
nor what the network can express (it is a reparametrisation of W^(1)); set `scaled: false`
for eq. 8 verbatim, e.g. with pretrained features and a smaller lr. The "ELD off" ablation's
linear classifier uses the same temperature (models/rrla.py), so that ablation removes the
graph and nothing else.

P, Z and Â (as written, whatever the propagation) are buffers: they travel in the
state_dict. `set_edge_params(t, p)` recomputes Â from the stored P, so a sweep over t and p
never recomputes the co-occurrence statistics.

Plain torch rather than torch-geometric's DenseGCNConv: DenseGCNConv renormalises the
adjacency inside every call with its own rule (self-loops overwritten with 1 when
add_loop is on, degrees clamped at 1), which is not eq. 7. Precomputing Â once and
applying it with two bias-free linear maps is exact, cheaper (C is 26) and keeps
torch-geometric out of the model's import path.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.config import ConfigError

LEAKY_SLOPE = 0.2
PROPAGATIONS = ("as_written", "transposed")
ACTIVATIONS = ("between_layers", "every_layer")


def _as_float_tensor(value: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.array(value) if not torch.is_tensor(value) else value)  # a copy: inputs may be read-only
    tensor = tensor.detach().to(dtype=torch.float32, device="cpu").clone()
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    return tensor


def binary_adjacency(cooccurrence: torch.Tensor, t: float) -> torch.Tensor:
    """The thresholding below eq. 6, without the diagonal: A_ij = 1[P_ij >= t] for i != j, A_ii = 0."""
    adjacency = (cooccurrence >= t).to(cooccurrence.dtype)
    return adjacency * (1.0 - torch.eye(len(cooccurrence), dtype=cooccurrence.dtype))


def reweighted_adjacency(cooccurrence: torch.Tensor, t: float, p: float) -> torch.Tensor:
    """Eq. 7: A^r from P, t and p (rows with no neighbour: 1 on the diagonal)."""
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"model.rrla.eld.p must lie in [0, 1], got {p}")
    adjacency = binary_adjacency(cooccurrence, t)
    neighbours = adjacency.sum(dim=1, keepdim=True)
    off_diagonal = p * adjacency / neighbours.clamp(min=1.0)
    self_weight = torch.where(
        neighbours.squeeze(1) > 0,
        torch.full_like(neighbours.squeeze(1), 1.0 - p),
        torch.ones_like(neighbours.squeeze(1)),
    )
    return off_diagonal + torch.diag(self_weight)


def normalized_adjacency(reweighted: torch.Tensor) -> torch.Tensor:
    """Â = D^-1/2 A^r D^-1/2 with D_ii = sum_j A^r_ij (a zero degree maps to 0)."""
    degree = reweighted.sum(dim=1)
    inv_sqrt = torch.where(degree > 0, degree.clamp(min=1e-12).rsqrt(), torch.zeros_like(degree))
    return inv_sqrt[:, None] * reweighted * inv_sqrt[None, :]


def eld_adjacency(cooccurrence: torch.Tensor, t: float, p: float) -> torch.Tensor:
    """Â (thresholding, eq. 7, normalisation) from the raw co-occurrence matrix P."""
    return normalized_adjacency(reweighted_adjacency(cooccurrence, t, p))


class EmotionLabelDependency(nn.Module):
    """Label-graph classifier: fused features [B,feature_dim] -> scores [B,C]."""

    def __init__(
        self,
        cooccurrence: np.ndarray | torch.Tensor,
        label_embeddings: np.ndarray | torch.Tensor,
        t: float,
        p: float,
        hidden: int = 2048,
        feature_dim: int = 4096,
        scaled: bool = True,
        propagation: str = "as_written",
        activation: str = "between_layers",
    ) -> None:
        super().__init__()
        if propagation not in PROPAGATIONS:
            raise ConfigError(f"model.rrla.eld.propagation must be one of {PROPAGATIONS}, got {propagation!r}")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"model.rrla.eld.activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.propagation, self.activation = propagation, activation
        cooc = _as_float_tensor(cooccurrence, "cooccurrence (P)")
        embeddings = _as_float_tensor(label_embeddings, "label_embeddings (Z)")
        if cooc.dim() != 2 or cooc.shape[0] != cooc.shape[1]:
            raise ValueError(f"cooccurrence (P) must be a square [C,C] matrix, got {tuple(cooc.shape)}")
        if embeddings.dim() != 2 or embeddings.shape[0] != cooc.shape[0]:
            raise ValueError(
                f"label_embeddings (Z) must be [C,d_z] with C = {cooc.shape[0]} (from P), "
                f"got {tuple(embeddings.shape)}"
            )
        if hidden < 1:
            raise ConfigError(f"model.rrla.eld.hidden must be >= 1, got {hidden}")
        self.register_buffer("cooccurrence", cooc)
        self.register_buffer("label_embeddings", embeddings)
        self.register_buffer("adjacency", eld_adjacency(cooc, t, p))
        self.t, self.p = float(t), float(p)
        self.gcn1 = nn.Linear(embeddings.shape[1], hidden, bias=False)  # W^(0)
        self.gcn2 = nn.Linear(hidden, feature_dim, bias=False)  # W^(1)
        self.logit_scale = 1.0 / float(np.sqrt(feature_dim)) if scaled else 1.0

    @property
    def num_classes(self) -> int:
        return self.cooccurrence.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.label_embeddings.shape[1]

    def set_edge_params(self, t: float, p: float) -> None:
        """Rebuild Â for new t, p from the stored P (no statistics are recomputed)."""
        self.adjacency.copy_(eld_adjacency(self.cooccurrence, t, p))
        self.t, self.p = float(t), float(p)

    def propagation_matrix(self) -> torch.Tensor:
        """The matrix each GCN layer multiplies by: Â as written, or Âᵀ (ML-GCN)."""
        return self.adjacency if self.propagation == "as_written" else self.adjacency.t()

    def classifiers(self) -> torch.Tensor:
        """H^(2): one 4096-d classifier per class, [C, feature_dim] (eq. 6 twice)."""
        return self._classifiers(self.propagation_matrix())

    def graph_free_classifiers(self) -> torch.Tensor:
        """H^(2) with the propagation matrix replaced by the identity (Â = I): σ(Z W^(0)) W^(1).

        The same trained weights, each class's classifier computed from its own label embedding
        only: what the label graph's mixing adds is removed and nothing else. Â is row-stochastic
        (module docstring) and so is I, so the classifiers keep their scale. With p = 0, Â = I
        already and these are `classifiers()`. Not a model trained without ELD (that is the
        `no_eld` ablation): the GCN weights were learnt with the graph in place.
        """
        eye = torch.eye(self.num_classes, dtype=self.adjacency.dtype, device=self.adjacency.device)
        return self._classifiers(eye)

    def graph_free_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Eq. 8 with `graph_free_classifiers`: the scores of fused features [B,feature_dim] without the graph."""
        return (features @ self.graph_free_classifiers().t()) * self.logit_scale

    def _classifiers(self, adjacency: torch.Tensor) -> torch.Tensor:
        hidden = F.leaky_relu(adjacency @ self.gcn1(self.label_embeddings), LEAKY_SLOPE)
        output = adjacency @ self.gcn2(hidden)
        return F.leaky_relu(output, LEAKY_SLOPE) if self.activation == "every_layer" else output

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Eq. 8: one score per class, F · H^(2)_c (divided by s when scaled)."""
        return (features @ self.classifiers().t()) * self.logit_scale
