"""SIB-Net, "Sequential Interactive Biased Network for Context-Aware Emotion Recognition"
(Li, Peng, Ding), registered as `sibnet`.

    face branch:  image_face_masked [B,3,S,S] (the face box zeroed) -> ResNet #1 stem
    body branch:  image_body_masked [B,3,S,S] (the body box zeroed) -> ResNet #2 stem
    scene branch: image             [B,3,S,S] (the whole image)     -> ResNet #3 stem
    for l = 1..4 (the ResNet layers; three trunks, separate weights):
        F_t = layer_l^t(F_t)                                   t = face, body, scene
        SCM_l (every l):  x_t = GAP(F_t) [B,C]; h_0 = 0; h_t = cell(x_t, h_{t-1}), face -> body -> scene
        ICM_l^t (l in icm.layers, paper 2 and 4): Y_t = ICM_l^t([F_f; F_b; F_s]) [B,C,H,W]
        F_t <- F_t + h_t (broadcast over H, W) + Y_t
    f_t = GAP(F_t) [B,C4]; logits = classifier([f_f; f_b; f_s]) [B,K]  (C4 = 512 for ResNet-18)
    BCM: s_t = head_t(f_t) [B,K], returned in ModelOutput.auxiliary {"face", "body", "scene"}

GRU cell (eq. 2, [a; b] is concatenation):
    r = σ(W_r [h_{t-1}; x_t] + b_r),  z = σ(W_z [h_{t-1}; x_t] + b_z)
    ĥ = tanh(W_h [r ⊙ h_{t-1}; x_t] + b_h),  h_t = z ⊙ ĥ + (1 - z) ⊙ h_{t-1}
The ablation's cells (`scm.cell`): rnn, h_t = tanh(W [h_{t-1}; x_t] + b); lstm, torch's
LSTMCell (c_0 = 0) whose h_t is the output. ICM ("global correlated linear fusion", one
module per branch and per listed layer), X = [F_f; F_b; F_s] [B,3C,H,W]:
    Q, K, V = conv1x1_q(X), conv1x1_k(X), conv1x1_v(X) reshaped to [B,dC,HW]
    W = softmax_rows(Q Kᵀ / sqrt(HW)) [B,dC,dC];  Y_t = conv1x1_out((W V) reshaped [B,dC,H,W]) [B,C,H,W]
Loss (`build_sibnet_criterion`): L = BCE(logits, y) + bcm.weight * L_abs, with
    L_abs = mean over t of mean_{b,k} |σ(s_t) - y_t|,   y_t = distribution_labels(y) drawn per branch,
y the multi-hot target (EMOTIC) or the one-hot of the class id (CAER-S: BCE, as the paper).
Without BCM the heads are not built, `auxiliary` is None and L is the BCE alone.

Paper settings (section 4.2): ResNet-18 x 3 (ImageNet weights), 230 x 230 inputs in [-1, 1]
(views' norm `symmetric`), Adam, lr 1e-3 for the modules and classifier and 1e-4 for the
backbones (`backbone_parameters()` lists them), x0.1 at 50 %, 75 %, 87.5 % of training, batch
32 (EMOTIC) / 64 (CAER-S), L_bce : L_abs = 1 : 1. All of those are params.

What the paper leaves open, and the choices made here:
- SCM and ICM in parallel: "we make all layers' features as SCM's input and sum them with
  SCM's output", and the same for ICM at layers 2 and 4; so both read the layer's output F_t
  and both outputs are added to it (F_t + h_t + Y_t), neither reads the other's result.
- ICM's layers: section 3.3 ends "we place individual SCM after the 2nd and 4th layers";
  read as ICM (section 3.1 says so, and SCM follows every layer).
- Input scale: the paper feeds [-1, 1] (`symmetric`) also to ImageNet-pretrained trunks,
  whose torchvision weights were trained on `imagenet`-normalised inputs; the views' `norm`
  is a param, the paper's value is the default.
- SCM per layer: every layer has its own cell (channel counts differ) and its own h_0 = 0;
  nothing carries across layers. The state is C wide (the "expanded" h_t is added to every
  position). Linear maps with biases, PyTorch's default initialisation, no normalisation.
- ICM's "two convolutional layers" producing Y. The paper first describes linear fusion
  (lf: Y = two convs of X, no correlation; Table 2's lf) and then the correlated linear
  fusion it uses, where Q, K, V are "different single convolutional layers" and Y comes
  from the fused features "with one convolutional layer". Read together: the two convs are
  V's 1x1 conv and the output 1x1 conv, and the correlation matrix W is inserted between
  them (with W = I the module is exactly lf). Only the paper's final variant (gclf: every
  branch its own ICM over all three branches) is built; lf and clf are not.
- ICM scale: "divide W with the square of the 2nd dimension" of Q (HW): read as the square
  root, as in scaled dot-product attention (sqrt of the contracted length); dividing by
  (HW)^2 would flatten the softmax to uniform at any real map size. Softmax "along the 2nd
  dimension" of W: over its last index, so every row of W sums to 1.
- ICM sizes: W = Q Kᵀ is dC x dC (channel correlation; Qᵀ K would be HW x HW). d =
  `icm.reduction`, default 0.5: ICM follows Non-local, whose inner width is half the input's,
  and C here is one branch's width, so dC = C/2 (32..256 channels for ResNet-18). 1x1 convs
  with biases, no batch norm, default initialisation (not Non-local's zero-initialised BN,
  which the paper does not mention; it would also leave Q, K, V without gradient at the
  first step). The three views must share one size so that the maps concatenate.
- Classifier ("MLPs", sizes unsaid): `classifier_hidden` null gives Dropout -> Linear(3C4 -> K);
  an int h gives Linear(3C4 -> h) -> ReLU -> Dropout -> Linear(h -> K).
- Branch heads (form unsaid): the same builder on one branch's f_t (C4 -> K) with
  `bcm.head_hidden` (null: one Linear) and the same `dropout`. They read the same pooled
  features as the classifier, after the last SCM/ICM; their L1 gradient reaches the trunks.
  Built only with BCM on. They are training aids: evaluation reads only the fused logits.
- Branch scores for the L1 loss: σ(s_t). The distribution labels are probabilities that
  do not sum to 1 (the paper says so), so a per-class sigmoid, not a softmax.
- Distribution labels: the paper's "variance 0.1" is read as a variance (std = sqrt(0.1) ≈
  0.316), `bcm.variance`. Every 0 of the target gets its own draw, independently per branch,
  sample, class and step; the draws are clipped to [0, 1] because a label must stay a
  probability (the paper does not say what it does with the ~10 % of draws below 0 and ~3 %
  above 1; clipping raises the mean of the replaced zeros from 0.4 to ~0.41). Ones are kept.
- Randomness: the criterion owns a CPU torch.Generator seeded with `seed` (the run's seed),
  so a run's labels are reproducible. Its state is not checkpointed (a resumed run restarts
  the stream), and data-parallel workers share the seed (the same noise on other samples).
- L_abs averaging: over the elements and then over the three branches, so that it has the
  BCE's per-element scale and `bcm.weight` 1.0 is the paper's 1:1. `train.loss` and the label
  frequencies are ignored: the paper trains with BCE, also on single-label CAER-S (one-hot).
- Input sizes: any; every map is pooled, so the views' sizes are the loader's business. With
  ICM all three must be equal. Batch norm in train mode needs more than one value per
  channel (batch 1 at a 32 px input fails, as in any ResNet).
- `load_pretrained=False` skips the backbone weights (checkpoint rebuilds); no label graph:
  `cooccurrence` and `label_embeddings` are ignored.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.backbones import build_backbone
from models.config import ConfigError, view_specs
from models.output import ModelOutput
from models.registry import register_model
from models.sibnet_config import (
    BRANCHES,
    LAYERS,
    SECTION,
    VIEWS,
    BCMConfig,
    ICMConfig,
    SCMConfig,
    SIBNetConfig,
)

__all__ = ["BCMConfig", "CorrelatedFusion", "GRUCell", "ICMConfig", "InteractiveContext", "LSTMCell", "RNNCell",
           "SCMConfig", "SIBNet", "SIBNetConfig", "SIBNetLoss", "SequentialContext", "build_sibnet",
           "build_sibnet_criterion", "distribution_labels"]

TASKS = ("multiclass", "multilabel")
STEM = 4  # trunk[0:4] = conv1, bn1, relu, maxpool; trunk[4..7] = layer1..layer4


# --- SCM -------------------------------------------------------------------------------------

class GRUCell(nn.Module):
    """Eq. 2. `reset`, `update`, `candidate` are W_r, W_z, W_h (with b_r, b_z, b_h) on [h; x]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reset = nn.Linear(2 * channels, channels)
        self.update = nn.Linear(2 * channels, channels)
        self.candidate = nn.Linear(2 * channels, channels)

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def gates(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(r, z, ĥ) for input x [B,C] and previous state h [B,C]."""
        hx = torch.cat([h, x], dim=1)
        r = torch.sigmoid(self.reset(hx))
        z = torch.sigmoid(self.update(hx))
        candidate = torch.tanh(self.candidate(torch.cat([r * h, x], dim=1)))
        return r, z, candidate

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, z, candidate = self.gates(x, h)
        new = z * candidate + (1 - z) * h
        return new, new


class RNNCell(nn.Module):
    """The vanilla recurrence: h_t = tanh(W [h_{t-1}; x_t] + b)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * channels, channels)

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new = torch.tanh(self.linear(torch.cat([h, x], dim=1)))
        return new, new


class LSTMCell(nn.Module):
    """torch's LSTMCell with state (h, c), both 0 at the start; the output is h_t."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(channels, channels)

    def initial_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros_like(x), torch.zeros_like(x)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        h, c = self.cell(x, state)
        return h, (h, c)


CELL_TYPES: dict[str, type[nn.Module]] = {"gru": GRUCell, "rnn": RNNCell, "lstm": LSTMCell}


class SequentialContext(nn.Module):
    """SCM after one layer: the three branch maps (face, body, scene order) -> their h_t [B,C]."""

    def __init__(self, channels: int, cell: str) -> None:
        super().__init__()
        if cell not in CELL_TYPES:
            raise ConfigError(f"{SECTION}.scm.cell must be one of {sorted(CELL_TYPES)}, got {cell!r}")
        self.cell = CELL_TYPES[cell](channels)

    def forward(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        outputs, state = [], None
        for feature_map in maps:
            x = feature_map.mean(dim=(2, 3))
            if state is None:
                state = self.cell.initial_state(x)
            h, state = self.cell(x, state)
            outputs.append(h)
        return outputs


# --- ICM -------------------------------------------------------------------------------------

class CorrelatedFusion(nn.Module):
    """One branch's ICM: X [B,3C,H,W] -> Y [B,C,H,W] (correlated linear fusion, see the module doc)."""

    def __init__(self, channels: int, inner: int, branches: int = len(BRANCHES)) -> None:
        super().__init__()
        self.query = nn.Conv2d(branches * channels, inner, 1)
        self.key = nn.Conv2d(branches * channels, inner, 1)
        self.value = nn.Conv2d(branches * channels, inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)

    def correlation(self, x: torch.Tensor) -> torch.Tensor:
        """W = softmax over the last dim of Q Kᵀ / sqrt(HW): [B,dC,dC], rows summing to 1."""
        positions = x.shape[2] * x.shape[3]
        query, key = self.query(x).flatten(2), self.key(x).flatten(2)
        return torch.softmax(query @ key.transpose(1, 2) / math.sqrt(positions), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        fused = self.correlation(x) @ self.value(x).flatten(2)
        return self.out(fused.reshape(batch, -1, height, width))


class InteractiveContext(nn.Module):
    """ICM after one layer: every branch its own CorrelatedFusion of all three maps."""

    def __init__(self, channels: int, inner: int) -> None:
        super().__init__()
        self.fusions = nn.ModuleDict({branch: CorrelatedFusion(channels, inner) for branch in BRANCHES})

    def forward(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        shapes = {tuple(m.shape) for m in maps}
        if len(shapes) != 1:
            raise ValueError(f"sibnet ICM: the branches' maps must share one shape to be concatenated, got "
                             f"{[tuple(m.shape) for m in maps]} (give the three views one size)")
        x = torch.cat(list(maps), dim=1)
        return [self.fusions[branch](x) for branch in BRANCHES]


# --- the network -----------------------------------------------------------------------------

def _mlp(width: int, hidden: int | None, out: int, dropout: float) -> nn.Sequential:
    if hidden is None:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(width, out))
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, out))


def _layer_channels(trunk: nn.Module) -> tuple[int, ...]:
    """Output channels of the ResNet layers trunk[4..7] (the last BatchNorm of each)."""
    return tuple([m for m in trunk[STEM + i].modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features
                 for i in range(len(LAYERS)))


def _inner_channels(icm: ICMConfig, channels: int, layer: int) -> int:
    inner = round(icm.reduction * channels)
    if inner < 1:
        raise ConfigError(f"{SECTION}.icm.reduction {icm.reduction} leaves no channel at layer {layer} "
                          f"({channels} channels)")
    return inner


class SIBNet(nn.Module):
    views = VIEWS  # image_face_masked, image_body_masked, image: the face, body and scene branches
    embedding_dim = None  # holds no label embeddings
    predicts_vad = False

    def __init__(self, cfg: SIBNetConfig, *, num_classes: int, task: str, load_pretrained: bool = True) -> None:
        super().__init__()
        if task not in TASKS:
            raise ConfigError(f"task must be 'multiclass' or 'multilabel', got {task!r}")
        self.config, self.num_classes, self.task = cfg, int(num_classes), task
        self.view_specs = view_specs(cfg.views, self.views, section=SECTION)
        self.trunks = nn.ModuleDict({
            branch: build_backbone(cfg.backbone, load_weights=load_pretrained, section=f"{SECTION}.backbone")
            for branch in BRANCHES})
        channels = _layer_channels(self.trunks[BRANCHES[0]].trunk)
        self.scm: nn.ModuleDict | None = None
        if cfg.scm.enabled:
            self.scm = nn.ModuleDict({f"layer{n}": SequentialContext(c, cfg.scm.cell) for n, c in zip(LAYERS, channels)})
        self.icm: nn.ModuleDict | None = None
        if cfg.icm.enabled:
            self.icm = nn.ModuleDict({
                f"layer{n}": InteractiveContext(channels[n - 1], _inner_channels(cfg.icm, channels[n - 1], n))
                for n in sorted(cfg.icm.layers)})
        width = channels[-1]
        self.classifier = _mlp(len(BRANCHES) * width, cfg.classifier_hidden, self.num_classes, cfg.dropout)
        self.heads: nn.ModuleDict | None = None
        if cfg.bcm.enabled:
            self.heads = nn.ModuleDict({branch: _mlp(width, cfg.bcm.head_hidden, self.num_classes, cfg.dropout)
                                        for branch in BRANCHES})

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The three ResNet trunks (`train.backbone_lr` applies to them; paper 1e-4)."""
        return list(self.trunks.parameters())

    def _context(self, layer: int, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """F_t + h_t + Y_t after `layer` (SCM and ICM both read the layer's own output)."""
        key = f"layer{layer}"
        out = list(maps)
        if self.scm is not None:
            out = [m + h[:, :, None, None] for m, h in zip(out, self.scm[key](maps))]
        if self.icm is not None and key in self.icm:
            out = [m + y for m, y in zip(out, self.icm[key](maps))]
        return out

    def branch_features(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """f_t = GAP of each branch's last map (after its last SCM/ICM): {branch: [B,C4]}."""
        images = _read_inputs(inputs)
        dtype = next(self.parameters()).dtype
        maps = [self.trunks[b].trunk[:STEM](x.to(dtype)) for b, x in zip(BRANCHES, images)]
        for layer in LAYERS:
            maps = [self.trunks[b].trunk[STEM + layer - 1](m) for b, m in zip(BRANCHES, maps)]
            maps = self._context(layer, maps)
        return {branch: m.mean(dim=(2, 3)) for branch, m in zip(BRANCHES, maps)}

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> ModelOutput:
        features = self.branch_features(inputs)
        logits = self.classifier(torch.cat([features[b] for b in BRANCHES], dim=1))
        auxiliary = None if self.heads is None else {b: self.heads[b](features[b]) for b in BRANCHES}
        return ModelOutput(logits=logits, attention=None, continuous=None, auxiliary=auxiliary)


def _read_inputs(inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    if not isinstance(inputs, Mapping):
        raise TypeError(f"sibnet forward takes a mapping of views {list(VIEWS)}, got {type(inputs).__name__}")
    missing = [name for name in VIEWS if name not in inputs]
    if missing:
        raise ValueError(f"sibnet forward: missing input view(s) {missing} (it reads {list(VIEWS)}, "
                         f"got {sorted(inputs)})")
    tensors = []
    for name in VIEWS:
        value = inputs[name]
        if not isinstance(value, torch.Tensor) or value.dim() != 4 or value.shape[1] != 3:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"sibnet forward: input {name!r} must be [B,3,H,W], got {shape}")
        tensors.append(value)
    sizes = {name: int(t.shape[0]) for name, t in zip(VIEWS, tensors)}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"sibnet forward: the views' batch sizes differ: {sizes}")
    return tensors


# --- BCM: distribution labels and the criterion ----------------------------------------------

def distribution_labels(target_multi_hot: torch.Tensor, generator: torch.Generator, mean: float,
                        std: float) -> torch.Tensor:
    """The target with every 0 replaced by clip(N(mean, std²), 0, 1), drawn from `generator`; 1s kept."""
    target = target_multi_hot
    if target.dim() != 2 or not bool(((target == 0) | (target == 1)).all()):
        raise ValueError(f"distribution_labels needs a 0/1 multi-hot target [B,K], got {target.dtype} "
                         f"{tuple(target.shape)}")
    noise = torch.randn(tuple(target.shape), generator=generator, device=generator.device, dtype=torch.float32)
    noise = (noise * float(std) + float(mean)).clamp_(0.0, 1.0).to(device=target.device, dtype=target.dtype)
    return torch.where(target == 0, noise, target)


class SIBNetLoss(nn.Module):
    """forward(output, batch): BCE on the fused logits (+ bcm.weight x L_abs on the branch heads).

    batch["target"]: float multi-hot [B,K] (multilabel) or long class ids [B] (multiclass, one-hot here).
    """

    def __init__(self, cfg: BCMConfig, *, task: str, seed: int = 0) -> None:
        super().__init__()
        if task not in TASKS:
            raise ConfigError(f"task must be 'multilabel' or 'multiclass', got {task!r}")
        self.config, self.task = cfg, task
        self.name = "sibnet_bce_l1" if cfg.enabled else "sibnet_bce"
        self.generator = torch.Generator().manual_seed(int(seed))

    def multi_hot(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The target as float [B,K] (the one-hot of the class ids on multiclass data)."""
        target = target.to(logits.device)
        if self.task == "multiclass":
            if target.dim() != 1 or target.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"sibnet loss: multiclass targets must be integer class ids [B], "
                                 f"got {target.dtype} {tuple(target.shape)}")
            if target.numel() and not (0 <= int(target.min()) and int(target.max()) < logits.shape[1]):
                raise ValueError(f"sibnet loss: class ids must lie in [0, {logits.shape[1]}), got "
                                 f"{int(target.min())}..{int(target.max())}")
            target = F.one_hot(target.long(), logits.shape[1])
        if target.shape != logits.shape or logits.dim() != 2:
            raise ValueError(f"sibnet loss: logits and targets must share one [B,K] shape, "
                             f"got {tuple(logits.shape)} and {tuple(target.shape)}")
        return target.to(logits.dtype)

    def branch_loss(self, auxiliary: dict[str, torch.Tensor] | None, target: torch.Tensor) -> torch.Tensor:
        """L_abs: the mean over the branches of mean |σ(s_t) - y_t|, one label draw per branch."""
        if not isinstance(auxiliary, Mapping) or any(b not in auxiliary for b in BRANCHES):
            found = sorted(auxiliary) if isinstance(auxiliary, Mapping) else auxiliary
            raise ValueError(f"sibnet loss: BCM is on, so the output needs the branch logits {list(BRANCHES)} "
                             f"in `auxiliary`, got {found}")
        terms = []
        for branch in BRANCHES:
            scores = auxiliary[branch]
            if scores.shape != target.shape:
                raise ValueError(f"sibnet loss: branch {branch!r} logits {tuple(scores.shape)} differ from the "
                                 f"target's {tuple(target.shape)}")
            labels = distribution_labels(target, self.generator, self.config.mean, self.config.std)
            terms.append((torch.sigmoid(scores) - labels).abs().mean())
        return torch.stack(terms).mean()

    def forward(self, output: ModelOutput, batch: Mapping[str, Any]) -> torch.Tensor:
        if "target" not in batch:
            raise ValueError(f"sibnet loss: the batch has no 'target' (keys: {sorted(batch)})")
        logits = output.logits
        target = self.multi_hot(logits, batch["target"])
        loss = F.binary_cross_entropy_with_logits(logits, target)
        if not self.config.enabled:
            return loss
        return loss + self.config.weight * self.branch_loss(output.auxiliary, target)


def build_sibnet_criterion(cfg: SIBNetConfig, *, task: str, loss_name: str | None = None,
                           label_freq: np.ndarray | None = None, seed: int = 0) -> SIBNetLoss:
    """The family's loss. `loss_name` (train.loss) and `label_freq` are ignored: the paper trains
    with BCE (+ L1 with BCM); `seed` seeds the distribution labels."""
    del loss_name, label_freq
    return SIBNetLoss(cfg.bcm, task=task, seed=seed)


@register_model("sibnet", config=SIBNetConfig, criterion=build_sibnet_criterion)
def build_sibnet(
    cfg: SIBNetConfig,
    *,
    num_classes: int,
    task: str,
    cooccurrence: np.ndarray | torch.Tensor | None = None,
    label_embeddings: np.ndarray | torch.Tensor | None = None,
    load_pretrained: bool = True,
) -> SIBNet:
    # No label graph: cooccurrence and label_embeddings are ignored.
    del cooccurrence, label_embeddings
    return SIBNet(cfg, num_classes=num_classes, task=task, load_pretrained=load_pretrained)
