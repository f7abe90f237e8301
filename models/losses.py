"""Training losses behind one factory, `build_loss(name, task, label_freq)`.

Multi-label (EMOTIC), `name` is one of:
- "weighted_mse" (the paper's eq. 9): L = mean over the batch of sum_j alpha_j (ŷ_j - y_j)^2,
  alpha_j proportional to 1 / ln(lambda + p_j), normalised so that sum_j alpha_j = 1, with
  p_j the fraction of training samples that carry label j and lambda = 1.2. Rare classes
  weigh more; lambda > 1 keeps every log positive.
- "bce": binary cross-entropy on the raw scores (sigmoid inside, mean over all entries).
- "focal": multi-label sigmoid focal loss (Lin et al., 2017), gamma = 2, no alpha balancing
  by default (alpha 0.25 would down-weight the rare positive labels), mean over all entries.

Single-label (CAER-S, task "multiclass"): cross-entropy on the logits, the paper's choice.
The multi-label names are accepted and mean cross-entropy too, because params.yaml has a
single `train.loss` that the EMOTIC runs use; the returned module's `.name` says which
loss was built, for logging.

Targets: float multi-hot [B,C] (multilabel) or long class ids [B] (multiclass).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import sigmoid_focal_loss

from models.config import ConfigError

MULTILABEL_LOSSES = ("weighted_mse", "bce", "focal")
LOSS_NAMES = (*MULTILABEL_LOSSES, "cross_entropy")
PAPER_LAMBDA = 1.2


def emotic_class_weights(label_freq: np.ndarray, lam: float = PAPER_LAMBDA) -> np.ndarray:
    """alpha_j = (1 / ln(lam + p_j)) / sum_k (1 / ln(lam + p_k)) (eq. 9)."""
    freq = check_label_freq(label_freq)
    if lam <= 1.0:
        raise ConfigError(f"weighted_mse lambda must be > 1 so that ln(lambda + p) > 0, got {lam}")
    raw = 1.0 / np.log(lam + freq)
    return raw / raw.sum()


def check_label_freq(label_freq: np.ndarray | None, missing: str | None = None) -> np.ndarray:
    """The [C] training label frequencies as float64, checked; `missing`: the error when None."""
    if label_freq is None:
        raise ConfigError(missing or "weighted_mse needs label_freq: the fraction of training samples per class")
    freq = np.asarray(label_freq, dtype=np.float64)
    if freq.ndim != 1 or freq.size == 0:
        raise ValueError(f"label_freq must be a non-empty [C] vector, got shape {freq.shape}")
    if not np.isfinite(freq).all() or freq.min() < 0 or freq.max() > 1:
        raise ValueError(
            "label_freq must hold frequencies in [0, 1] (fraction of training samples with "
            f"each label; divide counts by the number of samples), got min {freq.min()} max {freq.max()}"
        )
    return freq


class WeightedMSELoss(nn.Module):
    name = "weighted_mse"

    def __init__(self, class_weights: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("class_weights", torch.as_tensor(class_weights, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_multilabel(logits, targets, self.class_weights.numel())
        weights = self.class_weights.to(device=logits.device, dtype=logits.dtype)
        return ((logits - targets.to(logits.dtype)) ** 2 * weights).sum(dim=1).mean()


class BCELoss(nn.Module):
    name = "bce"

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_multilabel(logits, targets, None)
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


class FocalLoss(nn.Module):
    name = "focal"

    def __init__(self, gamma: float = 2.0, alpha: float | None = None) -> None:
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_multilabel(logits, targets, None)
        # torchvision disables the alpha balancing for a negative alpha.
        alpha = -1.0 if self.alpha is None else self.alpha
        return sigmoid_focal_loss(
            logits, targets.to(logits.dtype), alpha=alpha, gamma=self.gamma, reduction="mean"
        )


class CrossEntropyLoss(nn.Module):
    name = "cross_entropy"

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.dim() != 1 or targets.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"multiclass targets must be integer class ids [B], got {targets.dtype} {tuple(targets.shape)}"
            )
        return F.cross_entropy(logits, targets.long())


def _check_multilabel(logits: torch.Tensor, targets: torch.Tensor, num_classes: int | None) -> None:
    if logits.shape != targets.shape or logits.dim() != 2:
        raise ValueError(
            f"multilabel loss needs logits and multi-hot targets of the same [B,C] shape, "
            f"got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"loss was built for {num_classes} classes, logits have {logits.shape[1]}")


class LogitsCriterion(nn.Module):
    """A loss on the logits alone, as a criterion: forward(output, batch) = loss(logits, batch["target"])."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss
        self.name = loss.name

    def forward(self, output, batch) -> torch.Tensor:
        return self.loss(output.logits, batch["target"].to(output.logits.device))


def build_loss(
    name: str,
    task: str,
    label_freq: np.ndarray | None = None,
    *,
    mse_lambda: float = PAPER_LAMBDA,
    focal_gamma: float = 2.0,
    focal_alpha: float | None = None,
) -> nn.Module:
    """The loss `loss_fn(logits, targets)` for `task` ("multilabel" | "multiclass")."""
    if name not in LOSS_NAMES:
        raise ConfigError(f"train.loss: unknown loss {name!r}; available: {list(LOSS_NAMES)}")
    if task == "multiclass":
        return CrossEntropyLoss()
    if task != "multilabel":
        raise ConfigError(f"task must be 'multilabel' or 'multiclass', got {task!r}")
    if name == "weighted_mse":
        return WeightedMSELoss(emotic_class_weights(label_freq, mse_lambda))
    if name == "bce":
        return BCELoss()
    if name == "focal":
        return FocalLoss(gamma=focal_gamma, alpha=focal_alpha)
    raise ConfigError(
        f"train.loss: {name!r} is for single-label data; multi-label choices: {list(MULTILABEL_LOSSES)}"
    )
