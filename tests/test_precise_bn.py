"""Precise BatchNorm: the running statistics recomputed as the plain average over the training pass."""
from __future__ import annotations

import torch

from core.training.loop import recompute_batchnorm_statistics


class TinyNet(torch.nn.Module):
    views = ("body",)

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(3)

    def forward(self, inputs):
        return self.norm(inputs["body"])


def test_statistics_are_the_average_of_the_batch_statistics_and_momentum_is_restored():
    gen = torch.Generator().manual_seed(0)
    batches = [{"body": torch.randn(8, 3, generator=gen) * (i + 1) + i} for i in range(4)]
    model = TinyNet().eval()
    model.norm.running_mean.fill_(100.0)  # stale statistics, as after a few epochs from scratch
    assert recompute_batchnorm_statistics(model, batches, "cpu") == 1
    means = torch.stack([b["body"].mean(0) for b in batches])
    variances = torch.stack([b["body"].var(0, unbiased=True) for b in batches])
    torch.testing.assert_close(model.norm.running_mean, means.mean(0))
    torch.testing.assert_close(model.norm.running_var, variances.mean(0))
    assert model.norm.momentum == 0.1 and not model.training  # left as it was found
    assert recompute_batchnorm_statistics(torch.nn.Linear(2, 2), [], "cpu") == 0
