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
    # after the family's own train section, which may set the layout
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


def test_a_model_trained_in_channels_last_is_scored_in_it_to_the_same_numbers(tiny_workspace, tmp_path):
    """Evaluate and predict load the package in the layout `train.channels_last` trained it in."""
    from core.inference import load_model_package, predict_loader
    from core.params import params_to_dict
    from models import model_spec

    params = params_from_dict(apply_overrides(tiny_workspace.params_dict, {"model.name": "kosti"})).for_model()
    assert params.train.channels_last  # params.yaml's default
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, loader_workers=0))
    epoch_loop = loop.EpochLoop(worker_config(params, tiny_workspace.train_paths("layout-package")))
    epoch_loop.prepare()
    packages = {}
    for channels_last in (False, True):
        trained_in = dataclasses.replace(params, train=dataclasses.replace(params.train, channels_last=channels_last))
        folder = tmp_path / f"channels_last={channels_last}"
        folder.mkdir()
        torch.save({"spec": model_spec(epoch_loop.model), "state_dict": epoch_loop.model.state_dict(),
                    "classes": [f"c{i}" for i in range(epoch_loop.model.num_classes)], "task": epoch_loop.model.task,
                    "params": params_to_dict(trained_in)}, folder / "model.pt")
        packages[channels_last] = load_model_package(folder)
        convs = [m for m in packages[channels_last].model.modules() if isinstance(m, torch.nn.Conv2d)]
        # (a 1x1 kernel's weight is contiguous in both layouts)
        assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
                             for c in convs if c.kernel_size != (1, 1))
    scored = {layout: predict_loader(package.model, epoch_loop.val_loader) for layout, package in packages.items()}
    indices, scores = scored[False]
    assert len(indices) > 0
    torch.testing.assert_close(torch.from_numpy(scored[True][1]), torch.from_numpy(scores), rtol=1e-4, atol=1e-5)
    assert (scored[True][0] == indices).all()
