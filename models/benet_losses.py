"""BENet's losses (section 3.4, eqs. 1-7) and the geometry they share with decoding.

Coordinates. Boxes are [x1, y1, x2, y2] in the network input's pixels, continuous (pixel j spans
[j, j + 1), as core/data/views.py). A map of size h x w over an input of H x W has the stride
(sy, sx) = (H / h, W / w) (`map_stride`; exactly 4 and 2 for an input side divisible by 4). A
person's centre p = ((x1 + x2) / 2, (y1 + y2) / 2) (the paper's p_k) falls in the map cell
(floor(py / sy), floor(px / sx)), clamped to the map (`centre_cells`): that one cell is where the
heatmap's target is 1, where the size map is supervised and where the emotion maps are read, in
training and at inference alike. Sizes are regressed in the map's pixels, (w / sx, h / sy), as
CenterNet does; decoding multiplies them back.

Terms (`BENetLoss.terms`, each already weighted; `forward` is their sum, L_TOT of eq. 7):
- centre_quarter / centre_half: centre_weight x eq. 1 on each detection image's heatmap, with the
  Gaussian targets of `render_centres`, normalised by the image's number of people N (by 1 when
  N = 0: negatives only), averaged over the detection images;
- size_quarter / size_half: size_weight x eq. 2, (1 / N) sum_k |Ŝ(p_k) - s_k|_1, averaged likewise;
- bottom_up_quarter / bottom_up_half: bottom_up_weight x eq. 5 on the N x E logits read at the
  centres of the people annotated in each bottom-up image, averaged over those images;
- person: person_weight x eq. 5 with N = 1 against the subject's labels; background:
  background_weight x eq. 5 with N = 1 against the union of the subjects' labels (the max over N).
A head that no image of the batch was routed to adds nothing. Both focal losses work on logits
(log σ(x) = logsigmoid(x), log(1 - σ(x)) = logsigmoid(-x)): no clamping, no eps.

The batch of targets (padded to the most people P of any image of the batch):
    head        long [B]        the head each image was routed to (models.benet_config.HEADS ids)
    boxes       float [B,P,4]   the people's boxes in input pixels; rows >= num_people are padding
    labels      float [B,P,E]   multi-hot per person; `person`: row 0 is the subject; `background`:
                                the rows are the subjects (or one row, their union: the max is the same)
    num_people  long [B]        the valid rows of each image
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from models.benet_config import HEADS, BENetLossConfig

Stride = tuple[float, float]
_BELOW_ONE = 1.0 - 2.0 ** -24  # the largest float32 below 1


def map_stride(image_size: Sequence[int], map_size: Sequence[int]) -> Stride:
    """(sy, sx): input pixels per map cell along each axis."""
    return float(image_size[0]) / float(map_size[0]), float(image_size[1]) / float(map_size[1])


def centre_cells(boxes: torch.Tensor, stride: Stride, map_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [P], cols [P]) of the map cells holding the boxes' centres, clamped to the map."""
    boxes = boxes.reshape(-1, 4).to(torch.float64)
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    rows = torch.floor(cy / stride[0]).long().clamp(0, int(map_size[0]) - 1)
    cols = torch.floor(cx / stride[1]).long().clamp(0, int(map_size[1]) - 1)
    return rows, cols


def box_sizes(boxes: torch.Tensor, stride: Stride) -> torch.Tensor:
    """[P,2]: each box's (width, height) in map pixels, the size maps' targets."""
    boxes = boxes.reshape(-1, 4)
    return torch.stack([(boxes[:, 2] - boxes[:, 0]) / stride[1], (boxes[:, 3] - boxes[:, 1]) / stride[0]], dim=1)


def read_emotions(maps: torch.Tensor, boxes: torch.Tensor, stride: Stride) -> torch.Tensor:
    """The emotion maps [E,h,w] (or [1,E,h,w]) read at the centre cell of each box [P,4] -> [P,E].

    Returns what the maps hold there (the model's are logits: sigmoid gives scores)."""
    if maps.dim() == 4:
        maps = maps[0]
    rows, cols = centre_cells(boxes, stride, maps.shape[-2:])
    return maps[:, rows.to(maps.device), cols.to(maps.device)].transpose(0, 1)


def gaussian_radius(width: torch.Tensor, height: torch.Tensor, min_overlap: float) -> torch.Tensor:
    """The largest r such that the box shifted by (r, r) keeps IoU >= min_overlap with itself.

    (w - r)(h - r) / (2wh - (w - r)(h - r)) >= t  <=>  r^2 - (w + h) r + wh (1 - t) / (1 + t) >= 0;
    r is the smaller root (0 for an empty box)."""
    total = width + height
    product = width * height * (1 - min_overlap) / (1 + min_overlap)
    return ((total - torch.sqrt((total * total - 4 * product).clamp_min(0))) / 2).clamp_min(0)


def render_centres(boxes: torch.Tensor, stride: Stride, map_size: Sequence[int], min_overlap: float) -> torch.Tensor:
    """The centre heatmap target [h,w]: the max over people of exp(-d^2 / 2σ^2) around each centre
    cell, σ = (2r + 1) / 6 with r = `gaussian_radius` of the box in map pixels (CenterNet's σ), and
    exactly 1 at every centre cell (the only 1s)."""
    height, width = int(map_size[0]), int(map_size[1])
    target = torch.zeros(height, width, dtype=torch.float32, device=boxes.device)
    if boxes.numel() == 0:
        return target
    rows, cols = centre_cells(boxes, stride, map_size)
    sizes = box_sizes(boxes.to(torch.float32), stride)
    sigma = (2 * gaussian_radius(sizes[:, 0], sizes[:, 1], min_overlap) + 1) / 6
    ys = torch.arange(height, dtype=torch.float32, device=boxes.device)[None, :, None]
    xs = torch.arange(width, dtype=torch.float32, device=boxes.device)[None, None, :]
    distance = (ys - rows.to(ys)[:, None, None]) ** 2 + (xs - cols.to(xs)[:, None, None]) ** 2
    gaussians = torch.exp(-distance / (2 * sigma[:, None, None] ** 2))
    target = gaussians.amax(dim=0).clamp_max(_BELOW_ONE)  # 1 only at the centres, set below
    target[rows.to(boxes.device), cols.to(boxes.device)] = 1.0
    return target


def centre_focal_loss(logits: torch.Tensor, target: torch.Tensor, num_people: int, alpha: float, beta: float
                      ) -> torch.Tensor:
    """Eq. 1: -(1/N) sum over cells of (1 - p)^α log p where the target is 1, else
    (1 - y)^β p^α log(1 - p); p = σ(logits), N = max(num_people, 1)."""
    target = target.to(logits)
    positive = target == 1
    p = torch.sigmoid(logits)
    positives = (1 - p) ** alpha * F.logsigmoid(logits)
    negatives = (1 - target) ** beta * p ** alpha * F.logsigmoid(-logits)
    total = torch.where(positive, positives, negatives).sum()
    return -total / max(int(num_people), 1)


def emotion_focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Eq. 5 on logits [N,E] against multi-hot targets [N,E]: -(1/N) sum_n sum_i
    y (1 - p)^γ log p + (1 - y) p^γ log(1 - p), p = σ(logits). 0 for N = 0."""
    if logits.shape != target.shape or logits.dim() != 2:
        raise ValueError(f"emotion focal loss: logits and targets must share one [N,E] shape, "
                         f"got {tuple(logits.shape)} and {tuple(target.shape)}")
    if logits.shape[0] == 0:
        return logits.sum() * 0
    target = target.to(logits)
    p = torch.sigmoid(logits)
    terms = target * (1 - p) ** gamma * F.logsigmoid(logits) + (1 - target) * p ** gamma * F.logsigmoid(-logits)
    return -terms.sum() / logits.shape[0]


def size_l1_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 2: (1/N) sum_k |Ŝ(p_k) - s_k|_1 over [N,2] (width, height) pairs. 0 for N = 0."""
    if predicted.shape[0] == 0:
        return predicted.sum() * 0
    return (predicted - target.to(predicted)).abs().sum() / predicted.shape[0]


def _mean(values: list[torch.Tensor]) -> torch.Tensor | None:
    return torch.stack(values).mean() if values else None


class BENetLoss(nn.Module):
    """forward(output, batch) -> L_TOT (eq. 7); `terms` gives its weighted parts by name."""

    RESOLUTIONS = ("quarter", "half")

    def __init__(self, cfg: BENetLossConfig) -> None:
        super().__init__()
        self.config = cfg
        self.name = "benet"

    def forward(self, output, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        terms = self.terms(output, batch)
        if not terms:
            raise ValueError("benet loss: no image of the batch was routed to any head")
        return torch.stack(list(terms.values())).sum()

    def terms(self, output, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        targets = _check_batch(batch, output)
        terms: dict[str, torch.Tensor] = {}
        if output.centre is not None:
            terms.update(self._detection(output, *targets["detection"]))
        if output.emotions is not None:
            terms.update(self._bottom_up(output, *targets["bottom_up"]))
        cfg = self.config
        for name, weight in (("person", cfg.person_weight), ("background", cfg.background_weight)):
            logits = getattr(output, name)
            if logits is None:
                continue
            _, labels, counts = targets[name]
            keep = counts > 0
            if name == "person":
                wanted = labels[:, 0]
            else:  # the union of the subjects' labels: max over the valid rows
                valid = torch.arange(labels.shape[1], device=labels.device)[None, :] < counts[:, None]
                wanted = torch.where(valid[:, :, None], labels, torch.zeros_like(labels)).amax(dim=1)
            if bool(keep.any()):
                terms[name] = weight * emotion_focal_loss(logits[keep.to(logits.device)],
                                                          wanted[keep].to(logits), cfg.emotion_gamma)
        return terms

    def _detection(self, output, boxes: torch.Tensor, _labels: torch.Tensor, counts: torch.Tensor
                   ) -> dict[str, torch.Tensor]:
        cfg, terms = self.config, {}
        for index, resolution in enumerate(self.RESOLUTIONS):
            centre, size = output.centre[index], output.size[index]
            stride = map_stride(output.image_size, centre.shape[-2:])
            centres, sizes = [], []
            for row in range(centre.shape[0]):
                people = boxes[row, :int(counts[row])].to(centre.device)
                target = render_centres(people, stride, centre.shape[-2:], cfg.min_overlap)
                centres.append(centre_focal_loss(centre[row, 0], target, people.shape[0], cfg.centre_alpha,
                                                 cfg.centre_beta))
                predicted = read_emotions(size[row], people, stride)  # the (w, h) maps at the centres
                sizes.append(size_l1_loss(predicted, box_sizes(people, stride)))
            terms[f"centre_{resolution}"] = cfg.centre_weight * _mean(centres)
            terms[f"size_{resolution}"] = cfg.size_weight * _mean(sizes)
        return terms

    def _bottom_up(self, output, boxes: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor
                   ) -> dict[str, torch.Tensor]:
        cfg, terms = self.config, {}
        for index, resolution in enumerate(self.RESOLUTIONS):
            maps = output.emotions[index]
            stride = map_stride(output.image_size, maps.shape[-2:])
            losses = []
            for row in range(maps.shape[0]):
                count = int(counts[row])
                if count == 0:
                    continue
                logits = read_emotions(maps[row], boxes[row, :count].to(maps.device), stride)
                losses.append(emotion_focal_loss(logits, labels[row, :count].to(logits), cfg.emotion_gamma))
            mean = _mean(losses)
            if mean is not None:
                terms[f"bottom_up_{resolution}"] = cfg.bottom_up_weight * mean
        return terms


def _check_batch(batch: Mapping[str, torch.Tensor], output) -> dict[str, tuple[torch.Tensor, ...]]:
    """{head: (boxes, labels, num_people) of the images routed to it}, checked against output.rows."""
    missing = [key for key in ("head", "boxes", "labels", "num_people") if key not in batch]
    if missing:
        raise ValueError(f"benet loss: the batch lacks {missing} (keys: {sorted(batch)})")
    head, boxes, labels, counts = (batch[key] for key in ("head", "boxes", "labels", "num_people"))
    size = head.shape[0]
    if (boxes.dim() != 3 or boxes.shape[0] != size or boxes.shape[2] != 4 or labels.dim() != 3
            or labels.shape[:2] != boxes.shape[:2] or tuple(counts.shape) != (size,)):
        raise ValueError(f"benet loss: expected head [B], boxes [B,P,4], labels [B,P,E], num_people [B]; got "
                         f"{tuple(head.shape)}, {tuple(boxes.shape)}, {tuple(labels.shape)}, {tuple(counts.shape)}")
    if bool((counts < 0).any()) or bool((counts > boxes.shape[1]).any()):
        raise ValueError(f"benet loss: num_people must lie in [0, {boxes.shape[1]}], got {counts.tolist()}")
    targets = {}
    for index, name in enumerate(HEADS):
        rows = torch.nonzero(head.cpu() == index).flatten()
        ran = output.rows[name].cpu()
        if not torch.equal(rows, ran):
            raise ValueError(f"benet loss: batch['head'] routes rows {rows.tolist()} to {name!r} but the model ran "
                             f"that head on rows {ran.tolist()} (pass the same 'head' to the model)")
        targets[name] = (boxes[rows], labels[rows], counts[rows])
    return targets
