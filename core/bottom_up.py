"""People found and read by a model that finds them itself (`model.finds_people`, BENet): one forward
pass over the whole photo gives every person's box, detection score and emotions.

Why here and not in models/: the photo's decoding, resizing and normalisation are the data code's
(core/data/dataset.py `view_tensor`, as in training), and the boxes go back to the photo's pixels the
way `box_in_view` brings a given box into the view's. `ctxemo predict` without boxes
(pipelines/predict.py) and any evaluation of detected people call `bottom_up_people`.

Emotion scores are what `core.inference.predict_loader` returns for a person: the model's logits as
they are (no sigmoid, no softmax), so the evaluation's thresholds (chosen on those scores) apply and
`ctxemo predict` shows the same kind of numbers for a detected person as for a given box.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from core.errors import UserError

VIEW = "image"  # the whole-photo view a bottom-up model detects on


def finds_people(model: Any) -> bool:
    """Whether a registered model (or a ModelPackage's) detects people itself."""
    model = getattr(model, "model", model)
    return bool(getattr(model, "finds_people", False))


def bottom_up_people(package_or_model: Any, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes [K,4] float32 in `rgb`'s pixels, clipped to it; detection scores [K] in [0, 1], best first;
    emotion scores [K,E], the raw logits read at each detection's centre, as predict_loader gives them).

    `rgb`: uint8 [H,W,3]. The model's `decode` params pick the peaks (top_k, threshold, nms_kernel). A peak
    whose box has no area inside the photo (its sizes decode to 0, as an untrained size head's do) is
    dropped: it is no person box, and neither the IoU matching of an evaluation nor a user can use it.
    """
    import torch

    from core.data.dataset import view_tensor
    from core.data.subject_transforms import resize_boxes

    model = getattr(package_or_model, "model", package_or_model)
    if not finds_people(model):
        raise UserError(f"model {getattr(model, 'family', type(model).__name__)!r} does not find people itself")
    rgb = np.asarray(rgb)
    height, width = rgb.shape[:2]
    spec = model.view_specs[VIEW]
    image = view_tensor(VIEW, rgb, spec, body_box=(0, 0, width, height), face_box=None)
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        output = model({VIEW: image[None].to(device)})
        ((boxes, scores),) = model.detect(output)
        (emotions,) = model.emotions_at(output, [boxes])
    boxes = resize_boxes(boxes.float().cpu().numpy(), (spec.size, spec.size), (height, width))
    boxes = np.clip(boxes, 0, np.array([width, height, width, height], np.float32)).astype(np.float32).reshape(-1, 4)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    scores = scores.float().cpu().numpy().reshape(-1)
    emotions = emotions.float().cpu().numpy().reshape(len(boxes), model.num_classes)
    return boxes[keep], scores[keep], emotions[keep]
