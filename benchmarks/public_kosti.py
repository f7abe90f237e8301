"""What the most used public PyTorch code for Kosti's model (Tandon's EMOTIC repository) computes
in one training step, rebuilt here so that bench_kosti can time it beside ours in one run.

Written from that code's behaviour, not copied from it:
- two torchvision ResNet-18s cut before their classifier (`children()[:-1]`: the trunk and the
  global average pool), one on the whole image (224 x 224), one on the body crop (128 x 128);
- a head on [context ; body] (1024): Linear(1024, 256) -> BatchNorm1d -> ReLU -> Dropout(0.5),
  then Linear(256, 26) for the categories and Linear(256, 3) for valence, arousal, dominance;
- the discrete loss with "dynamic" weights: w_j = 1 / ln(n_j + 1.2), n_j the count of the
  batch's samples with category j, and 1e-4 for a category absent from the batch (the weights
  are made on the CPU); L_disc = sum over the batch and categories of w_j (pred - target)^2;
- the continuous loss: smooth L1 with margin 1 on (pred x 10, target x 10), summed;
- loss = 0.5 L_disc + 0.5 L_cont; torch.optim.Adam over the three modules (lr 0.01, weight
  decay 5e-4, torch's default implementation for CPU tensors), `zero_grad`, `backward`, `step`,
  and each loss read with `.item()` every step, as that loop does.

The inputs are in-memory tensors ("model-only": the public code loads pre-cropped arrays).
"""
from __future__ import annotations

import torch
from torch import nn

CATEGORIES = 26
CONTINUOUS = 3
FEATURES = 512  # a ResNet-18's pooled feature


def trunk() -> nn.Module:
    """A ResNet-18 without its final Linear: [B,3,H,W] -> [B,512,1,1]."""
    from torchvision.models import resnet18

    return nn.Sequential(*list(resnet18(weights=None).children())[:-1])


class FusionHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fuse = nn.Linear(2 * FEATURES, 256)
        self.norm = nn.BatchNorm1d(256)
        self.drop = nn.Dropout(p=0.5)
        self.categories = nn.Linear(256, CATEGORIES)
        self.continuous = nn.Linear(256, CONTINUOUS)

    def forward(self, context: torch.Tensor, body: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        joint = torch.cat((context.view(-1, FEATURES), body.view(-1, FEATURES)), 1)
        hidden = self.drop(torch.relu(self.norm(self.fuse(joint))))
        return self.categories(hidden), self.continuous(hidden)


def dynamic_weights(target: torch.Tensor) -> torch.Tensor:
    """[1, C]: 1 / ln(count + 1.2) for the categories the batch has, 1e-4 for the others."""
    counts = target.sum(dim=0).float().unsqueeze(0).cpu()
    weights = torch.full_like(counts, 1e-4)
    present = counts != 0
    weights[present] = 1.0 / torch.log(counts[present] + 1.2)
    return weights


def discrete_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (((pred - target) ** 2) * dynamic_weights(target).to(pred.device)).sum()


def continuous_loss(pred: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Smooth L1: 0.5 d^2 where d <= margin, d - 0.5 above it; summed."""
    gap = torch.abs(pred - target)
    loss = 0.5 * gap ** 2
    above = gap > margin
    loss[above] = gap[above] - 0.5
    return loss.sum()


class PublicKostiStep:
    """The public code's models, optimiser and training step."""

    def __init__(self, seed: int = 0):
        torch.manual_seed(seed)
        self.context, self.body, self.head = trunk(), trunk(), FusionHead()
        params = [*self.head.parameters(), *self.context.parameters(), *self.body.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=0.01, weight_decay=5e-4)
        for module in (self.context, self.body, self.head):
            module.train()

    def __call__(self, batch: dict[str, torch.Tensor]) -> int:
        self.optimizer.zero_grad()
        categories, continuous = self.head(self.context(batch["context"]), self.body(batch["body"]))
        cat_loss = discrete_loss(categories, batch["categories"])
        cont_loss = continuous_loss(continuous * 10, batch["continuous"] * 10)
        loss = 0.5 * cat_loss + 0.5 * cont_loss
        loss.item(), cat_loss.item(), cont_loss.item()  # noqa: B018 -- the public loop reads all three
        loss.backward()
        self.optimizer.step()
        return len(batch["context"])


def random_batch(batch: int, body_size: int, image_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Normalised-image-like inputs and EMOTIC-like targets (multi-hot categories, VAD in [0, 1])."""
    gen = torch.Generator().manual_seed(seed)
    return {"context": torch.randn(batch, 3, image_size, image_size, generator=gen),
            "body": torch.randn(batch, 3, body_size, body_size, generator=gen),
            "categories": (torch.rand(batch, CATEGORIES, generator=gen) < 0.15).float(),
            "continuous": torch.rand(batch, CONTINUOUS, generator=gen)}
