"""`train.channels_last`: every model family trains in NHWC layout to the same numbers as in NCHW."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from core.params import apply_overrides, params_from_dict
from core.training import loop
from core.training.inputs import worker_config

FAMILIES = ("rrla", "kosti", "caernet", "sibnet", "dagnet", "benet")


def first_step(tiny_workspace, name: str, channels_last: bool):
    """The loss and the gradients of a first training step, and the layouts its first convolution
    saw and wrote."""
    params = params_from_dict(apply_overrides(tiny_workspace.params_dict, {"model.name": name})).for_model(name)
    # after the family's own train section, which may set the layout (Kosti's does)
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, loader_workers=0,
                                                                   channels_last=channels_last))
    epoch_loop = loop.EpochLoop(worker_config(params, tiny_workspace.train_paths(f"layout-{name}-{channels_last}")))
    epoch_loop.prepare()
    epoch_loop.model.train()
    conv = next(m for m in epoch_loop.model.modules() if isinstance(m, torch.nn.Conv2d))
    layouts = []
    conv.register_forward_hook(lambda module, args, out: layouts.append(
        (module.weight.is_contiguous(memory_format=torch.channels_last),
         out.is_contiguous(memory_format=torch.channels_last))))
    batch = next(iter(epoch_loop.train_loader))
    loss = float(epoch_loop.train_step(batch))  # the gradients stay until the next step's zero_grad
    grads = {name: p.grad for name, p in epoch_loop.model.named_parameters() if p.grad is not None}
    return loss, grads, layouts[0]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_trains_in_channels_last_to_the_same_numbers(tiny_workspace, name):
    loss_nchw, grads_nchw, layout_nchw = first_step(tiny_workspace, name, channels_last=False)
    loss_nhwc, grads_nhwc, layout_nhwc = first_step(tiny_workspace, name, channels_last=True)
    assert layout_nchw == (False, False) and layout_nhwc == (True, True)
    # The same sums in another order: equal to float32 rounding. Compared before the optimiser,
    # since Adam's first step is the gradient's sign, which rounding flips where a gradient is ~0.
    assert loss_nhwc == pytest.approx(loss_nchw, rel=1e-5)
    assert grads_nhwc.keys() == grads_nchw.keys() and grads_nchw
    # Most gradients agree to 3e-5 of their norm. A ReLU whose input rounds to either side of 0 in
    # the two layouts passes or stops one element's gradient: on these 8-person batches of tiny
    # images that moved a trunk's gradients by up to 1.3 % (one element, traced op by op in a
    # ResNet-18 at 32 px), while a layout error (a view across NHWC strides) is off by ~100 %.
    # A gradient that is zero in exact arithmetic (a key bias under softmax, a bias before a
    # BatchNorm) is rounding noise in both layouts: measured against the largest gradient instead.
    largest = max(float(grad.norm()) for grad in grads_nchw.values())
    for key, grad in grads_nchw.items():
        assert grads_nhwc[key].shape == grad.shape, key
        difference = float((grads_nhwc[key] - grad).norm())
        assert difference <= 5e-2 * float(grad.norm()) + 1e-7 * largest, (key, difference, float(grad.norm()))
