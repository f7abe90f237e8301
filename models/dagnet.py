"""DAG-Net, the Dual Attention Graph Network of "DAG-Net: Dual Attention Graph Network for
Emotion Recognition in the Wild" (ICME submission, sections 3-4), registered as `dagnet`.

    body crop I_B [B,3,Sb,Sb]
        BAM: λ = sigmoid(GAP(conv1x1(h -> 1)(ReLU(conv1x1(3 -> h)(I_B)))))    [B,1] in (0, 1)   (eq. 1)
        body trunk (paper ResNet-50) --GAP--> F_B [B,Cb];  ϑ_B = λ · F_B                         (eq. 2)
    masked image I_C [B,3,Sc,Sc] (the whole image, the person box zeroed)
        GSAM (an Attention Branch Network on the context ResNet, paper ResNet-18):
        g = stem..layer3(I_C) [B,C3,h,w]
        attention branch: maps = ReLU(BN(conv1x1(ReLU(BN(conv3x3(g)))))) [B,K,h,w]
            M = sigmoid(BN(conv1x1(maps))) [B,1,h,w];  attention logits = GAP(conv1x1(maps)) [B,K]
        ϑ_C = GAP(layer4(M · g)) [B,C4]   (eq. 3; `gsam.residual`: (1 + M) · g, as ABN's code)
    patches [B,N*N,3,s,s] (the whole image cut into N x N tiles, each resized to s = size / N)
        LSAM: each patch -> conv3x3-BN-ReLU (64) -> conv3x3-BN-ReLU (64) -> adaptive mean pool
        4x4 -> node ϑ_ij [1024];  V [B,N*N,1024]
        H^l = ReLU(A H^{l-1} W^{l-1} + b^l), widths 1024, 1024, 512 (eq. 4), A = softmax_rows(P)
        ϑ_L = mean over the N*N nodes of H^3 [B,512]
    raw = classifier([ϑ_B ; ϑ_C ; ϑ_L])  [B,K]
    logits = log_softmax(raw) (loss.kind kl) | raw (loss.kind bce)

forward returns ModelOutput(logits [B,K], attention = M as [B,h,w] (GSAM's map at layer3's
resolution, input side / 16, values in (0, 1), not normalised; None with GSAM off),
continuous = None, auxiliary = {"attention_logits": [B,K]} (None with GSAM off)).
`parts(inputs)` returns every intermediate (λ, the three features, the node features).
Frozen trunks (models/frozen.py, `train.frozen_backbone` / `tune.frozen_backbone`): the body
trunk's pooled feature F_B and the context trunk's layer3 map g are computed once and cached;
after `freeze_backbone()` forward reads them as `body_trunk` and `context_layer3` beside the body
pixels (BAM) and the patches (LSAM), and runs the frozen layer4 on M · g (GSAM) or on g (GSAM
off) in eval mode. One cache serves every ablation switch.
`backbone_parameters()` lists the ResNet trunks' parameters (body trunk; context stem..layer4,
the perception branch's layer4 included) for the trainer's separate `train.backbone_lr`.

Ablations (the paper's Table 2 and Fig. 3): `bam.enabled: false` sets λ = 1;
`gsam.enabled: false` makes the context stream the plain trunk on I_C, GAP'd (no attention
branch, no auxiliary loss); `lsam.enabled: false` drops the patch stream (the model then does
not read `patches`); `lsam.gcn: false` is the paper's variant without GCN: each node through a
Linear(1024 -> fc_dim) + ReLU shared by the patches, summed over the N x N patches.

The paper leaves these open; the choices made here:
- BAM. Two 1x1 convs with biases and a ReLU between them (without one the two collapse to one
  linear map, and GAP of a linear map is a function of the mean colour only), no BN; the first
  conv's width is `bam.hidden`. Applied to the body view as the loader normalises it. A 1x1
  conv sees one pixel, so λ is the sigmoid of the average of a per-pixel function of colour: no
  spatial structure, which is what the paper describes. λ multiplies the GAP'd feature vector.
- GSAM. ABN's attention branch (Fukui et al., CVPR 2019) for ResNet is a full ResNet stage at
  layer3's resolution, BN, conv1x1 to K maps, BN, ReLU; M = sigmoid(BN(conv1x1 K -> 1)); the
  branch's logits = GAP(conv1x1 K -> K). Here the stage is one conv3x3-BN-ReLU of width
  `gsam.hidden` (a small faithful version); K is the number of classes, as in ABN. The paper's
  eq. 3 is M · g; ABN's code uses (1 + M) · g so that a near-zero map does not kill the
  perception branch at the start: `gsam.residual` picks. The branch's logits are trained with
  their own loss (below), as ABN does; they are not used for prediction.
- LSAM input. The loader's `patches` view cuts the whole, unmasked image (the paper's "input
  image I"); `views.patches.size` is the side of that whole image, and each patch is resized to
  max(8, round(size / N)) (224 at N = 4: 56, the paper's W/N). Patches are cut row by row into
  near-equal tiles that cover the image exactly (core/data/views.py `patch_grid`).
- Patch encoder. "Two 3x3 convolutions of 64 and 64 channels, following a mean pooling" giving
  a 1024-d node: the 64 channels are mean-pooled to a 4x4 grid (`node_pool`), 64 x 16 = 1024.
  Stride 1, padding 1, BN and ReLU after each conv (ours); one encoder shared by all patches.
- The learned adjacency A [N^2,N^2] is one matrix shared by every image: the row softmax of a
  raw parameter P trained with the network (the same lr as the non-backbone parts). The softmax
  keeps A non-negative with rows summing to 1: every layer averages its neighbours with learned
  weights, the feature scale does not grow with N, and torch_geometric's DenseGCNConv (its
  D^-1/2 A D^-1/2, degrees clamped at 1, is then A itself; self loops not added) computes
  exactly A H W + b. `lsam.adjacency_init`: grid (P = log(G + 0.01), G the patch grid's
  4-neighbour graph with self loops: A starts as G row-normalised, every other pair at a small
  weight so that all edges get gradients) or uniform (P = 0, A = 1/N^2: every node starts as
  the mean of all, a poor start). N = 1 is one node with A = [[1]].
- GCN layers have biases (DenseGCNConv's default, glorot weights) and a ReLU after each, the
  last included ("each layer follows a ReLU layer"). The nodes are pooled by their mean.
- Without GCN: the paper's "fully connected layer" is one Linear shared by the patches,
  followed by a ReLU (ours), summed over the patches as the paper says (the sum grows with N^2);
  d is `lsam.fc_dim`.
- Fusion: plain concatenation (each stream keeps its width). Classifier: `classifier_hidden:
  null` is Dropout -> Linear; an int is Linear -> ReLU -> Dropout -> Linear. No BN.
- Loss. "Following [Kosti], we used Kullback-Leibler divergence": with `loss.kind: kl` the
  target distribution p is the multi-hot row divided by its number of labels, the loss is
  KL(p || softmax(raw)) = sum_j p_j (log p_j - log q_j) per person (0 log 0 = 0), averaged over
  the batch; a person without any label adds 0. The KL leaves each person's constant of `raw`
  free, so raw scores mean nothing across persons, while evaluation ranks each class across
  persons (AP): the model therefore returns log_softmax(raw) as its logits, a monotone map
  within a person (same ranking of classes) and a well-defined log-probability across persons.
  `loss.kind: bce` trains binary cross-entropy on raw logits (returned as is). On single-label
  data (CAER-S) both kinds are cross-entropy (= KL to the one-hot target).
- Attention branch loss: the same loss on its logits, weighted by `loss.attention_weight`
  (ABN sums the two with weight 1); always computed, so every parameter gets a gradient.
- Data augmentation (colour jitter 0.4, horizontal flip) and the optimiser are the trainer's;
  the paper gives lr 1e-4 and batch 32 (`train`) and names no optimiser.
- Initialisation: PyTorch's and torch_geometric's defaults; backbones as `BackboneConfig` says.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.backbones import build_backbone
from models.config import ConfigError, ViewConfig, view_spec, view_specs
from models.dagnet_config import SECTION, DAGNetConfig, DAGNetLossConfig
from models.frozen import FrozenInput
from models.output import ModelOutput
from models.registry import register_model

# torch_geometric (imported by dagnet_modules for DenseGCNConv) scripts helpers with torch.jit.script
# at import, which torch deprecates with a two-line FutureWarning on stderr of every command and
# Ray worker that loads this module: noise to a user, about code that is not ours. Only that one.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from models.dagnet_modules import (  # after the filter
    BodyAttention,
    GlobalSpatialAttention,
    LocalSpatialAttention,
    PlainContext,
    split_resnet,
)

TASKS = ("multiclass", "multilabel")
IMAGE_VIEWS = ("body", "image_body_masked")
ATTENTION_LOGITS = "attention_logits"  # the key of the attention branch's logits in ModelOutput.auxiliary
BODY_TRUNK = "body_trunk"  # frozen trunks (freeze_backbone): F_B [B,Cb], precomputed
CONTEXT_LAYER3 = "context_layer3"  # frozen trunks: the context trunk's layer3 map g [B,C3,h,w], precomputed


class DAGNetParts(NamedTuple):
    logits: torch.Tensor  # [B,K]: log_softmax(raw) with loss kl, raw with bce
    body_weight: torch.Tensor  # λ [B,1] (ones with BAM off)
    body_feature: torch.Tensor  # ϑ_B = λ · F_B [B,Cb]
    context_feature: torch.Tensor  # ϑ_C [B,C4]
    attention_map: torch.Tensor | None  # M [B,h,w] (GSAM on)
    attention_logits: torch.Tensor | None  # [B,K] (GSAM on)
    local_feature: torch.Tensor | None  # ϑ_L [B,d] (LSAM on)
    nodes: torch.Tensor | None  # the patch nodes [B,N*N,D] (LSAM on)


def _classifier(in_dim: int, hidden: int | None, dropout: float, num_classes: int) -> nn.Sequential:
    if hidden is None:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes))
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))


def dagnet_view_specs(cfg: DAGNetConfig) -> dict:
    """The loader's specs of the views the model reads; `patches` at size / N with grid N."""
    specs = view_specs(cfg.views, IMAGE_VIEWS, section=SECTION)
    if cfg.lsam.enabled:
        patches = ViewConfig(size=cfg.patch_size, norm=cfg.views["patches"].norm)
        specs["patches"] = view_spec("patches", patches, grid=int(cfg.lsam.n))
    return specs


class DAGNet(nn.Module):
    embedding_dim = None  # holds no label embeddings
    predicts_vad = False

    def __init__(self, cfg: DAGNetConfig, *, num_classes: int, task: str, load_pretrained: bool = True) -> None:
        super().__init__()
        if task not in TASKS:
            raise ConfigError(f"task must be 'multiclass' or 'multilabel', got {task!r}")
        self.config, self.num_classes, self.task = cfg, int(num_classes), task
        self.views = IMAGE_VIEWS + (("patches",) if cfg.lsam.enabled else ())
        self.view_specs = dagnet_view_specs(cfg)
        # The two trunks first: from a given seed their random initialisation then depends on their own
        # configs only, so a frozen-trunk cache (models/frozen.py) is shared by every module switch.
        self.body_backbone = build_backbone(cfg.body_backbone, load_weights=load_pretrained,
                                            section=f"{SECTION}.body_backbone")
        context = build_backbone(cfg.context_backbone, load_weights=load_pretrained,
                                 section=f"{SECTION}.context_backbone")
        self.bam = BodyAttention(cfg.bam.hidden) if cfg.bam.enabled else None
        self.context: GlobalSpatialAttention | PlainContext
        if cfg.gsam.enabled:
            self.context = GlobalSpatialAttention(context, hidden=cfg.gsam.hidden, num_classes=self.num_classes,
                                                  residual=cfg.gsam.residual)
        else:
            self.context = PlainContext(context)
        lsam = cfg.lsam
        self.lsam = LocalSpatialAttention(
            n=lsam.n, channels=tuple(lsam.channels), pool=lsam.node_pool, gcn=lsam.gcn, dims=tuple(lsam.gcn_dims),
            fc_dim=lsam.fc_dim, adjacency_init=lsam.adjacency_init) if lsam.enabled else None
        fused = self.body_backbone.out_channels + self.context.out_channels + (self.lsam.out_dim if self.lsam else 0)
        self.classifier = _classifier(fused, cfg.classifier_hidden, float(cfg.dropout), self.num_classes)
        self.log_probabilities = cfg.loss.kind == "kl"
        self.frozen = False  # see freeze_backbone

    def frozen_inputs(self) -> dict[str, FrozenInput]:
        """The frozen-backbone protocol (models/frozen.py): the body trunk's pooled feature F_B and the
        context trunk's layer3 map g. BAM and LSAM read pixels and GSAM's branch is trained, so they
        are not cached; layer4 runs on M · g every step, frozen. Needs a ResNet context trunk."""
        if isinstance(self.context, PlainContext):
            split_resnet(self.context.backbone)  # a clear error now rather than at the first batch
        return {BODY_TRUNK: FrozenInput("body", self.body_trunk_feature),
                CONTEXT_LAYER3: FrozenInput("image_body_masked", self.context.layer3)}

    def freeze_backbone(self) -> None:
        """From now on forward reads `body_trunk` and `context_layer3` instead of running the trunks,
        which stop training and stay in eval mode; `views` keeps the pixels BAM and LSAM read."""
        self.frozen = True
        for parameter in self.backbone_parameters():
            parameter.requires_grad_(False)
        self.views = (("body",) if self.bam is not None else ()) + (("patches",) if self.lsam is not None else ())
        self.train(self.training)

    def train(self, mode: bool = True) -> "DAGNet":
        super().train(mode)
        if self.frozen:
            for trunk in self._trunks():
                trunk.eval()
        return self

    def _trunks(self) -> list[nn.Module]:
        context = self.context.backbone if isinstance(self.context, PlainContext) else nn.ModuleList(
            [self.context.extractor, self.context.perception])
        return [self.body_backbone, context]

    def body_trunk_feature(self, body: torch.Tensor) -> torch.Tensor:
        """F_B = GAP(body trunk(I_B)) [B,Cb]."""
        return self.body_backbone(body).mean(dim=(2, 3))

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The pretrained-able ResNet trunks' parameters: the body trunk and the context trunk."""
        return [parameter for trunk in self._trunks() for parameter in trunk.parameters()]

    def parts(self, inputs: Mapping[str, torch.Tensor]) -> DAGNetParts:
        """Every intermediate of one forward pass."""
        dtype = next(self.parameters()).dtype
        if self.frozen:
            body, features, context_map, patches = _check_frozen_inputs(inputs, self)
            features, context_map = features.to(dtype), context_map.to(dtype)
        else:
            body, image, patches = _check_inputs(inputs, self.views, self.config.lsam.n)
            features = self.body_trunk_feature(body.to(dtype))
            context_map = self.context.layer3(image.to(dtype)) if isinstance(
                self.context, GlobalSpatialAttention) else None
        weight = self.bam(body.to(dtype)) if self.bam is not None else features.new_ones(features.shape[0], 1)
        body_feature = weight * features
        attention = attention_logits = None
        if isinstance(self.context, GlobalSpatialAttention):
            context_feature, attention, attention_logits = self.context.from_layer3(context_map)
        elif context_map is not None:
            context_feature = self.context.from_layer3(context_map)
        else:
            context_feature = self.context(image.to(dtype))
        streams = [body_feature, context_feature]
        local = nodes = None
        if self.lsam is not None:
            local, nodes = self.lsam(patches.to(dtype))
            streams.append(local)
        raw = self.classifier(torch.cat(streams, dim=1))
        logits = torch.log_softmax(raw, dim=1) if self.log_probabilities else raw
        return DAGNetParts(logits, weight, body_feature, context_feature, attention, attention_logits, local, nodes)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> ModelOutput:
        parts = self.parts(inputs)
        auxiliary = None if parts.attention_logits is None else {ATTENTION_LOGITS: parts.attention_logits}
        return ModelOutput(logits=parts.logits, attention=parts.attention_map, continuous=None, auxiliary=auxiliary)


def _shape(value: object) -> object:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def _check_inputs(inputs: Mapping[str, torch.Tensor], views: tuple[str, ...], n: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if not isinstance(inputs, Mapping):
        raise TypeError(f"dagnet reads a mapping of views {list(views)}, got {type(inputs).__name__}")
    missing = [name for name in views if name not in inputs]
    if missing:
        raise ValueError(f"dagnet: input view(s) {missing} missing; got {sorted(inputs)}")
    for name in IMAGE_VIEWS:
        x = inputs[name]
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"dagnet: input {name!r} must be [B,3,H,W], got {_shape(x)}")
    body, image = inputs["body"], inputs["image_body_masked"]
    sizes = {"body": body.shape[0], "image_body_masked": image.shape[0]}
    patches = None
    if "patches" in views:
        patches = inputs["patches"]
        if not isinstance(patches, torch.Tensor) or patches.dim() != 5 or patches.shape[2] != 3:
            raise ValueError(f"dagnet: input 'patches' must be [B,N*N,3,s,s] (N = lsam.n = {n}), "
                             f"got {_shape(patches)}")
        if patches.shape[1] != n * n:
            raise ValueError(f"dagnet: input 'patches' holds {patches.shape[1]} patches per person, but "
                             f"lsam.n = {n} needs N*N = {n * n}; the loader's patches view must be cut with the "
                             f"model's grid (view_specs['patches'].grid)")
        sizes["patches"] = patches.shape[0]
    if len(set(sizes.values())) != 1:
        raise ValueError(f"dagnet: the input views have different batch sizes {sizes}")
    return body, image, patches


def _check_frozen_inputs(inputs: Mapping[str, torch.Tensor], model: DAGNet
                         ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(body pixels or None, F_B [B,Cb], g [B,C3,h,w], patches or None) of a frozen model's inputs."""
    if not isinstance(inputs, Mapping):
        raise TypeError(f"dagnet reads a mapping of inputs, got {type(inputs).__name__}")
    needed = (BODY_TRUNK, CONTEXT_LAYER3, *model.views)
    missing = [name for name in needed if name not in inputs]
    if missing:
        raise ValueError(f"dagnet with frozen trunks reads {list(needed)}; missing {missing} (got {sorted(inputs)})")
    features, context_map = inputs[BODY_TRUNK], inputs[CONTEXT_LAYER3]
    channels = model.body_backbone.out_channels
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[1] != channels:
        raise ValueError(f"dagnet: {BODY_TRUNK!r} must be the body trunk's pooled feature [B,{channels}], "
                         f"got {_shape(features)}")
    if not isinstance(context_map, torch.Tensor) or context_map.dim() != 4:
        raise ValueError(f"dagnet: {CONTEXT_LAYER3!r} must be the context trunk's layer3 map [B,C,h,w], "
                         f"got {_shape(context_map)}")
    sizes = {BODY_TRUNK: features.shape[0], CONTEXT_LAYER3: context_map.shape[0]}
    body = patches = None
    if "body" in model.views:
        body = inputs["body"]
        if not isinstance(body, torch.Tensor) or body.dim() != 4 or body.shape[1] != 3:
            raise ValueError(f"dagnet: input 'body' must be [B,3,H,W], got {_shape(body)}")
        sizes["body"] = body.shape[0]
    if "patches" in model.views:
        patches = inputs["patches"]
        n = model.config.lsam.n
        if not isinstance(patches, torch.Tensor) or patches.dim() != 5 or patches.shape[1:3] != (n * n, 3):
            raise ValueError(f"dagnet: input 'patches' must be [B,{n * n},3,s,s] (N = lsam.n = {n}), "
                             f"got {_shape(patches)}")
        sizes["patches"] = patches.shape[0]
    if len(set(sizes.values())) != 1:
        raise ValueError(f"dagnet: the inputs have different batch sizes {sizes}")
    return body, features, context_map, patches


def kl_divergence(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of KL(p || softmax(logits)), p = the multi-hot row / its number of labels.

    A row without labels has p = 0 and adds 0. Exact for logits that already are log-probabilities.
    """
    target = target.to(device=logits.device, dtype=logits.dtype)
    p = target / target.sum(dim=1, keepdim=True).clamp_min(torch.finfo(logits.dtype).tiny)
    log_q = torch.log_softmax(logits, dim=1)
    return (torch.special.xlogy(p, p) - p * log_q).sum(dim=1).mean()


class DAGNetLoss(nn.Module):
    """forward(output, batch): loss(logits) + attention_weight * loss(attention-branch logits).

    loss: multilabel: KL (kind kl) or binary cross-entropy (kind bce) against the multi-hot
    batch["target"] [B,K]; multiclass: cross-entropy against the class ids batch["target"] [B].
    """

    def __init__(self, cfg: DAGNetLossConfig, *, task: str, attention: bool) -> None:
        super().__init__()
        if task not in TASKS:
            raise ConfigError(f"task must be 'multiclass' or 'multilabel', got {task!r}")
        self.config, self.task, self.attention = cfg, task, bool(attention)
        self.name = "dagnet_cross_entropy" if task == "multiclass" else f"dagnet_{cfg.kind}"

    def term(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.task == "multiclass":
            if target.dim() != 1 or target.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"dagnet loss: multiclass targets must be integer class ids [B], "
                                 f"got {target.dtype} {tuple(target.shape)}")
            return F.cross_entropy(logits, target.to(logits.device).long())
        if target.dim() != 2 or logits.shape != target.shape:
            raise ValueError(f"dagnet loss: logits and multi-hot targets must share one [B,K] shape, "
                             f"got {tuple(logits.shape)} and {tuple(target.shape)}")
        if self.config.kind == "kl":
            return kl_divergence(logits, target)
        return F.binary_cross_entropy_with_logits(logits, target.to(device=logits.device, dtype=logits.dtype))

    def forward(self, output: ModelOutput, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if "target" not in batch:
            raise ValueError(f"dagnet loss: the batch has no 'target' (keys: {sorted(batch)})")
        target = batch["target"]
        loss = self.term(output.logits, target)
        if self.attention:
            auxiliary = output.auxiliary or {}
            if ATTENTION_LOGITS not in auxiliary:
                raise ValueError(f"dagnet loss: gsam is enabled but the output has no auxiliary "
                                 f"{ATTENTION_LOGITS!r} (got {sorted(auxiliary)})")
            loss = loss + float(self.config.attention_weight) * self.term(auxiliary[ATTENTION_LOGITS], target)
        return loss


def build_dagnet_criterion(cfg: DAGNetConfig, *, task: str, loss_name: str | None = None,
                           label_freq: np.ndarray | None = None, seed: int = 0) -> DAGNetLoss:
    """The family's training loss, set in `model.dagnet.loss`: `loss_name` (train.loss),
    `label_freq` and `seed` are ignored (no class weights, no randomness)."""
    del loss_name, label_freq, seed
    return DAGNetLoss(cfg.loss, task=task, attention=cfg.gsam.enabled)


@register_model("dagnet", config=DAGNetConfig, criterion=build_dagnet_criterion)
def build_dagnet(
    cfg: DAGNetConfig,
    *,
    num_classes: int,
    task: str,
    cooccurrence: np.ndarray | torch.Tensor | None = None,
    label_embeddings: np.ndarray | torch.Tensor | None = None,
    load_pretrained: bool = True,
) -> DAGNet:
    # No label graph: cooccurrence and label_embeddings are ignored.
    del cooccurrence, label_embeddings
    return DAGNet(cfg, num_classes=num_classes, task=task, load_pretrained=load_pretrained)
