"""DAG-Net's three attention modules (models/dagnet.py assembles them; its docstring says why).

- `BodyAttention` (BAM): body image [B,3,H,W] -> λ [B,1] in (0, 1).
- `GlobalSpatialAttention` (GSAM): an Attention Branch Network on a ResNet trunk: masked
  image -> (context feature [B,C4], attention map M [B,h,w], attention-branch logits [B,K]);
  `PlainContext` is the ablation without it (the trunk, GAP'd).
- `LocalSpatialAttention` (LSAM): patches [B,N*N,3,s,s] -> node features [B,N*N,D] -> three
  GCN layers over a learned adjacency -> mean over the nodes [B,d]; `gcn: false` replaces
  the graph by a shared Linear + ReLU per patch, summed over the patches.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn
from torch_geometric.nn import DenseGCNConv

from models.backbones import Backbone

GRID_FLOOR = 0.01  # adjacency_init grid: weight of a non-neighbour pair before row normalisation


class BodyAttention(nn.Module):
    """λ = sigmoid(GAP(conv1x1(ReLU(conv1x1(x))))): one credibility weight per body image [B,1]."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, hidden, 1)
        self.conv2 = nn.Conv2d(hidden, 1, 1)

    def forward(self, body: torch.Tensor) -> torch.Tensor:
        scores = self.conv2(torch.relu(self.conv1(body)))  # [B,1,H,W]
        return torch.sigmoid(scores.mean(dim=(2, 3)))


def split_resnet(backbone: Backbone) -> tuple[nn.Sequential, nn.Module, int]:
    """(stem..layer3, layer4, layer3's channels) of a ResNet trunk from models.backbones."""
    trunk = backbone.trunk
    if not isinstance(trunk, nn.Sequential) or len(trunk) != 8:
        raise ValueError(f"GSAM and the frozen context trunk need a ResNet trunk (conv1, bn1, relu, maxpool, "
                         f"layer1..layer4), got {backbone.name}")
    layer4 = trunk[7]
    return nn.Sequential(*list(trunk)[:7]), layer4, int(layer4[0].conv1.in_channels)


class AttentionBranch(nn.Module):
    """ABN's attention branch on the feature extractor's map g [B,C,h,w].

    maps = ReLU(BN(conv1x1(ReLU(BN(conv3x3(g))))))  [B,K,h,w]   (ABN: a ResNet stage, BN, conv1x1 to K, BN, ReLU)
    M = sigmoid(BN(conv1x1(maps)))  [B,1,h,w]                    (K -> 1)
    logits = GAP(conv1x1(maps))  [B,K]                           (K -> K, ABN's att_conv2 + GAP)
    """

    def __init__(self, channels: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_classes, 1, bias=False), nn.BatchNorm2d(num_classes), nn.ReLU(inplace=True),
        )
        self.to_map = nn.Sequential(nn.Conv2d(num_classes, 1, 1, bias=False), nn.BatchNorm2d(1))
        self.to_logits = nn.Conv2d(num_classes, num_classes, 1, bias=False)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.block(features)
        attention = torch.sigmoid(self.to_map(maps))
        return attention, self.to_logits(maps).mean(dim=(2, 3))


class GlobalSpatialAttention(nn.Module):
    """GSAM: g = layer3 map; M, logits = attention branch(g); feature = GAP(layer4(M * g or (1 + M) * g)).

    forward returns (feature [B,C4], M [B,h,w], attention-branch logits [B,K]).
    """

    def __init__(self, backbone: Backbone, *, hidden: int, num_classes: int, residual: bool) -> None:
        super().__init__()
        self.extractor, self.perception, channels = split_resnet(backbone)
        self.branch = AttentionBranch(channels, hidden, num_classes)
        self.residual = bool(residual)
        self.out_channels = backbone.out_channels

    def layer3(self, image: torch.Tensor) -> torch.Tensor:
        """g: the trunk's stem..layer3 map [B,C3,h,w] (what a frozen trunk lets be cached)."""
        return self.extractor(image)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.from_layer3(self.extractor(image))

    def from_layer3(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """forward from g = layer3(image)."""
        attention, logits = self.branch(features)
        weights = 1.0 + attention if self.residual else attention
        feature = self.perception(weights * features).mean(dim=(2, 3))
        return feature, attention.squeeze(1), logits


class PlainContext(nn.Module):
    """The ablation without GSAM: the whole trunk on the masked image, GAP'd: [B,C]."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_channels = backbone.out_channels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.backbone(image).mean(dim=(2, 3))

    def layer3(self, image: torch.Tensor) -> torch.Tensor:
        """The trunk's stem..layer3 map, as GSAM's: one cache serves the model with and without GSAM."""
        extractor, _, _ = split_resnet(self.backbone)
        return extractor(image)

    def from_layer3(self, features: torch.Tensor) -> torch.Tensor:
        """forward from the layer3 map: GAP(layer4(g))."""
        _, layer4, _ = split_resnet(self.backbone)
        return layer4(features).mean(dim=(2, 3))


class PatchEncoder(nn.Module):
    """Each patch [P,3,s,s] -> conv3x3-BN-ReLU per width -> adaptive mean pool to pool x pool -> [P, C * pool^2]."""

    def __init__(self, channels: tuple[int, ...], pool: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 3
        for out in channels:
            layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            width = out
        layers += [nn.AdaptiveAvgPool2d(pool), nn.Flatten(1)]
        self.layers = nn.Sequential(*layers)
        self.out_dim = width * pool * pool

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.layers(patches)


def grid_adjacency(n: int) -> torch.Tensor:
    """The N x N patch grid's graph [N^2,N^2]: 1 between a patch, itself and its 4-neighbours, else 0."""
    rows = torch.arange(n * n) // n
    cols = torch.arange(n * n) % n
    distance = (rows[:, None] - rows[None, :]).abs() + (cols[:, None] - cols[None, :]).abs()
    return (distance <= 1).float()


class LearnedAdjacency(nn.Module):
    """A = softmax over each row of a raw parameter P [N^2,N^2]: non-negative, rows summing to 1.

    P starts at log(G + floor) with G the grid graph (init "grid"), so A starts as the grid graph
    row-normalised with a small weight on every other pair; or at 0 (init "uniform": A = 1/N^2).
    """

    def __init__(self, n: int, init: str) -> None:
        super().__init__()
        if init == "grid":
            raw = torch.log(grid_adjacency(n) + GRID_FLOOR)
        elif init == "uniform":
            raw = torch.zeros(n * n, n * n)
        else:
            raise ValueError(f"unknown adjacency init {init!r}; known: grid, uniform")
        self.raw = nn.Parameter(raw)

    def forward(self) -> torch.Tensor:
        return torch.softmax(self.raw, dim=1)


class GraphLayers(nn.Module):
    """H^l = ReLU(A H^{l-1} W^{l-1} + b^l) per width in `dims` (eq. 4, with a bias).

    DenseGCNConv(add_loop=False) computes D^-1/2 A D^-1/2 H W + b with degrees clamped at 1;
    A's rows sum to 1, so D = I and the layer is A H W + b.
    """

    def __init__(self, in_dim: int, dims: tuple[int, ...]) -> None:
        super().__init__()
        widths = (in_dim, *dims)
        self.layers = nn.ModuleList(DenseGCNConv(a, b) for a, b in itertools.pairwise(widths))

    def forward(self, nodes: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            nodes = torch.relu(layer(nodes, adjacency, add_loop=False))
        return nodes


class LocalSpatialAttention(nn.Module):
    """LSAM: patches [B,N*N,3,s,s] -> (local feature [B,d], node features [B,N*N,D]).

    With the GCN: d = dims[-1], the mean over the nodes of the last GCN layer. Without
    (`gcn: false`): d = fc_dim, the sum over the patches of ReLU(Linear(node)).
    """

    def __init__(self, *, n: int, channels: tuple[int, ...], pool: int, gcn: bool, dims: tuple[int, ...],
                 fc_dim: int, adjacency_init: str) -> None:
        super().__init__()
        self.n = int(n)
        self.encoder = PatchEncoder(channels, pool)
        self.adjacency = LearnedAdjacency(self.n, adjacency_init) if gcn else None
        self.graph = GraphLayers(self.encoder.out_dim, dims) if gcn else None
        self.fc = None if gcn else nn.Linear(self.encoder.out_dim, fc_dim)
        self.out_dim = int(dims[-1]) if gcn else int(fc_dim)

    def nodes(self, patches: torch.Tensor) -> torch.Tensor:
        """The node features [B,N*N,D] of a batch of patch grids [B,N*N,3,s,s]."""
        batch, count = patches.shape[:2]
        return self.encoder(patches.flatten(0, 1)).reshape(batch, count, -1)

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nodes = self.nodes(patches)
        if self.graph is not None:
            feature = self.graph(nodes, self.adjacency()).mean(dim=1)
        else:
            feature = torch.relu(self.fc(nodes)).sum(dim=1)
        return feature, nodes
