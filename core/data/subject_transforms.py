"""BENet's pre-transformations (Cladière et al., section 3.3): each training image is turned into the
input of one head, drawn per image with the probabilities of `model.benet.pre_transforms`.

| transform | what it does to the image | head | targets |
|---|---|---|---|
| `raw` | nothing | detection | every subject's box and labels |
| `random_mask_subjects` | masks a random subset of the subjects, never all | bottom_up | the kept subjects' boxes and labels |
| `extract_subject` | crops to the chosen subject's box | person | one row: the crop's extent, the subject's labels |
| `mask_all_subjects` | masks every subject | background | one row: the image's extent, the union of the labels |

Inputs: an RGB image (numpy [H,W,3] or PIL), the subjects' boxes [N,4] ([x1,y1,x2,y2] in pixels,
continuous: pixel j spans [j, j+1)) and their multi-hot labels [N,E]. A crop and a mask cover the
pixels of `core.data.views.pixel_box` (every pixel a box touches), the same rule as the other views;
masked pixels are set to 0 (the paper follows Yang et al., who zero the masked people; its own code
fills 0 too, and so do this project's other masked views). Output boxes are in the output image's
pixels; `resize_boxes` scales them when the loader resizes the image.

When each may be drawn (the paper's rules, made precise; the numbers are params):
- `extract_subject`: one subject is chosen uniformly first; the transform may be drawn only when no
  other subject is inside the chosen one's box. Subject j is inside box b when j's centre pixel
  (floor of the box centre) lies in b's pixels, or when at least `contain_overlap` of j's box area
  lies inside b (the paper: "does not contain other people", no threshold given).
- `mask_all_subjects`: only when the subjects' box areas (their pixels, clamped to the image; a
  plain sum, overlaps counted twice, as the paper writes it) add up to at most `max_masked_area`
  of the image (paper 0.4).
- `random_mask_subjects`: needs a subject. In a random order the first subject is always kept and
  every other one is drawn for masking with probability `mask_probability` (one draw each, in
  that order). A drawn subject whose box covers the centre pixel of a kept subject is kept instead
  (masking it would hide a target's centre), repeated until nothing changes.
- `raw`: always.
The probabilities of the transforms that may not be drawn are dropped and the others rescaled to
sum to 1; when none with a positive probability is left, the raw image is used. An image without
subjects is always raw. Every draw comes from the numpy Generator passed in, in a fixed order (the
subject, the transform, then the masking draws), so a seed reproduces a whole epoch's draws.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.data.views import crop, mask_boxes, pixel_box
from models.benet_config import PRE_TRANSFORMS, BENetPreTransformConfig

ORDER = ("extract_subject", "mask_all_subjects", "random_mask_subjects", "raw")  # the draw's order


@dataclass(frozen=True)
class PreTransformed:
    image: np.ndarray  # uint8 [h,w,3], a new array
    transform: str  # one of ORDER
    head: str  # the head it trains (models.benet_config.HEADS)
    boxes: np.ndarray  # float32 [P,4] in `image`'s pixels: the head's targets
    labels: np.ndarray  # float32 [P,E]
    subject: int | None = None  # extract_subject: the chosen subject's index
    masked: tuple[int, ...] = field(default_factory=tuple)  # the indices of the masked subjects


def as_rgb(image: Any) -> np.ndarray:
    """A uint8 [H,W,3] array of a numpy image or a PIL image."""
    if not isinstance(image, np.ndarray):
        image = np.asarray(image.convert("RGB"))
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H,W,3], got shape {image.shape}")
    return image


def _targets(boxes: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim != 2 or labels.shape[0] != boxes.shape[0]:
        raise ValueError(f"expected labels [N,E] for {boxes.shape[0]} boxes, got shape {labels.shape}")
    return boxes, labels


def centre_pixel(box: Sequence[float]) -> tuple[int, int]:
    """(x, y) of the pixel holding the box's centre."""
    return math.floor((float(box[0]) + float(box[2])) / 2), math.floor((float(box[1]) + float(box[3])) / 2)


def _covers(box: Sequence[float], pixel: tuple[int, int], width: int, height: int) -> bool:
    x0, y0, x1, y1 = pixel_box(box, width, height)
    return x0 <= pixel[0] < x1 and y0 <= pixel[1] < y1


def inside_fraction(inner: Sequence[float], outer: Sequence[float]) -> float:
    """The fraction of `inner`'s area that lies inside `outer` (0 for an empty `inner`)."""
    area = max(float(inner[2]) - float(inner[0]), 0.0) * max(float(inner[3]) - float(inner[1]), 0.0)
    if area == 0:
        return 0.0
    w = min(float(inner[2]), float(outer[2])) - max(float(inner[0]), float(outer[0]))
    h = min(float(inner[3]), float(outer[3])) - max(float(inner[1]), float(outer[1]))
    return max(w, 0.0) * max(h, 0.0) / area


def people_inside(boxes: np.ndarray, subject: int, contain_overlap: float, width: int, height: int) -> list[int]:
    """The other subjects inside subject `subject`'s box (the rule in the module docstring)."""
    outer = boxes[subject]
    return [j for j, inner in enumerate(boxes) if j != subject and (
        _covers(outer, centre_pixel(inner), width, height) or inside_fraction(inner, outer) >= contain_overlap)]


def masked_area(boxes: np.ndarray, width: int, height: int) -> int:
    """The sum of the boxes' pixel areas, each clamped to the image."""
    total = 0
    for box in boxes:
        x0, y0, x1, y1 = pixel_box(box, width, height)
        total += (x1 - x0) * (y1 - y0)
    return total


class KeepRaw:
    name, head = "raw", "detection"

    def __call__(self, rgb: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> PreTransformed:
        return PreTransformed(rgb.copy(), self.name, self.head, boxes.copy(), labels.copy())


class ExtractSubject:
    name, head = "extract_subject", "person"

    def __init__(self, contain_overlap: float) -> None:
        self.contain_overlap = float(contain_overlap)

    def allowed(self, rgb: np.ndarray, boxes: np.ndarray, subject: int) -> bool:
        height, width = rgb.shape[:2]
        return not people_inside(boxes, subject, self.contain_overlap, width, height)

    def __call__(self, rgb: np.ndarray, boxes: np.ndarray, labels: np.ndarray, subject: int) -> PreTransformed:
        pixels = crop(rgb, boxes[subject]).copy()
        extent = np.array([[0, 0, pixels.shape[1], pixels.shape[0]]], dtype=np.float32)
        return PreTransformed(pixels, self.name, self.head, extent, labels[subject:subject + 1].copy(),
                              subject=int(subject))


class MaskAllSubjects:
    name, head = "mask_all_subjects", "background"

    def __init__(self, max_masked_area: float) -> None:
        self.max_masked_area = float(max_masked_area)

    def allowed(self, rgb: np.ndarray, boxes: np.ndarray) -> bool:
        height, width = rgb.shape[:2]
        return len(boxes) > 0 and masked_area(boxes, width, height) <= self.max_masked_area * width * height

    def __call__(self, rgb: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> PreTransformed:
        height, width = rgb.shape[:2]
        extent = np.array([[0, 0, width, height]], dtype=np.float32)
        union = labels.max(axis=0, keepdims=True) if len(labels) else np.zeros((1, labels.shape[1]), np.float32)
        return PreTransformed(mask_boxes(rgb, boxes), self.name, self.head, extent, union.astype(np.float32),
                              masked=tuple(range(len(boxes))))


class RandomMaskSubjects:
    name, head = "random_mask_subjects", "bottom_up"

    def __init__(self, mask_probability: float) -> None:
        self.mask_probability = float(mask_probability)

    @staticmethod
    def allowed(boxes: np.ndarray) -> bool:
        return len(boxes) > 0

    def choose(self, rgb: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> list[int]:
        """The sorted indices to mask (the rule in the module docstring)."""
        height, width = rgb.shape[:2]
        order = rng.permutation(len(boxes))
        draws = rng.random(max(len(boxes) - 1, 0))
        masked = {int(j) for j, draw in zip(order[1:], draws) if draw < self.mask_probability}
        changed = True
        while changed:
            kept = [centre_pixel(boxes[j]) for j in range(len(boxes)) if j not in masked]
            hiding = {j for j in masked if any(_covers(boxes[j], pixel, width, height) for pixel in kept)}
            changed = bool(hiding)
            masked -= hiding
        return sorted(masked)

    def __call__(self, rgb: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator
                 ) -> PreTransformed:
        masked = self.choose(rgb, boxes, rng)
        kept = [j for j in range(len(boxes)) if j not in masked]
        return PreTransformed(mask_boxes(rgb, boxes[masked]), self.name, self.head, boxes[kept].copy(),
                              labels[kept].copy(), masked=tuple(masked))


class SubjectPreTransforms:
    """Draws and applies one pre-transformation per image: `(image, boxes, labels, rng) -> PreTransformed`."""

    def __init__(self, probabilities: Mapping[str, float], *, contain_overlap: float, max_masked_area: float,
                 mask_probability: float) -> None:
        if set(probabilities) != set(PRE_TRANSFORMS) or any(p < 0 for p in probabilities.values()):
            raise ValueError(f"probabilities must give each of {sorted(PRE_TRANSFORMS)} a number >= 0, "
                             f"got {dict(probabilities)}")
        self.probabilities = {name: float(probabilities[name]) for name in ORDER}
        self.extract = ExtractSubject(contain_overlap)
        self.mask_all = MaskAllSubjects(max_masked_area)
        self.random_mask = RandomMaskSubjects(mask_probability)
        self.raw = KeepRaw()

    @classmethod
    def from_config(cls, cfg: BENetPreTransformConfig) -> SubjectPreTransforms:
        return cls(cfg.probabilities, contain_overlap=cfg.contain_overlap, max_masked_area=cfg.max_masked_area,
                   mask_probability=cfg.mask_probability)

    def weights(self, rgb: np.ndarray, boxes: np.ndarray, subject: int | None) -> dict[str, float]:
        """The probability of each transform for this image (with this chosen subject), summing to 1."""
        allowed = {
            "extract_subject": subject is not None and self.extract.allowed(rgb, boxes, subject),
            "mask_all_subjects": self.mask_all.allowed(rgb, boxes),
            "random_mask_subjects": self.random_mask.allowed(boxes),
            "raw": True,
        }
        weights = {name: self.probabilities[name] if allowed[name] else 0.0 for name in ORDER}
        total = sum(weights.values())
        if total == 0:
            return {name: float(name == "raw") for name in ORDER}
        return {name: weight / total for name, weight in weights.items()}

    def __call__(self, image: Any, boxes: Any, labels: Any, rng: np.random.Generator) -> PreTransformed:
        rgb = as_rgb(image)
        boxes, labels = _targets(boxes, labels)
        subject = int(rng.integers(len(boxes))) if len(boxes) else None
        weights = self.weights(rgb, boxes, subject)
        name = ORDER[int(rng.choice(len(ORDER), p=[weights[n] for n in ORDER]))]
        if name == "extract_subject":
            return self.extract(rgb, boxes, labels, subject)
        if name == "mask_all_subjects":
            return self.mask_all(rgb, boxes, labels)
        if name == "random_mask_subjects":
            return self.random_mask(rgb, boxes, labels, rng)
        return self.raw(rgb, boxes, labels)


def resize_boxes(boxes: np.ndarray, from_size: Sequence[int], to_size: Sequence[int]) -> np.ndarray:
    """Boxes [P,4] of an image of (height, width) `from_size` in the pixels of it resized to `to_size`."""
    sy, sx = float(to_size[0]) / float(from_size[0]), float(to_size[1]) / float(from_size[1])
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32))
