"""BENet's pre-transformations (core/data/subject_transforms.py): pixel checks of every crop and mask
on a 12 x 16 synthetic image, the 'contains' and area rules that forbid a transform, the drawing
with its probabilities and its reproducibility per seed."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.data.subject_transforms import (
    ExtractSubject,
    MaskAllSubjects,
    RandomMaskSubjects,
    SubjectPreTransforms,
    inside_fraction,
    people_inside,
    resize_boxes,
)
from models.benet_config import PRE_TRANSFORMS

H, W = 12, 16
A = [1.0, 1.0, 5.0, 7.0]      # pixels x 1..4, y 1..6; nobody inside
B = [9.0, 2.0, 14.0, 10.0]    # pixels x 9..13, y 2..9; C's centre pixel (11, 6) is inside
C = [10.0, 5.0, 12.0, 8.0]    # pixels x 10..11, y 5..7; B's centre pixel (11, 6) is inside
LABELS = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0]], dtype=np.float32)
BOXES = np.array([A, B, C], dtype=np.float32)
EQUAL = {name: 0.25 for name in PRE_TRANSFORMS}


def image() -> np.ndarray:
    """Every pixel non-zero and different, so that a mask (0) and a crop are visible exactly."""
    values = np.arange(1, H * W * 3 + 1, dtype=np.int64).reshape(H, W, 3) % 251 + 1
    return values.astype(np.uint8)


def draw(probabilities=None, **rules):
    settings = {"contain_overlap": 0.5, "max_masked_area": 0.4, "mask_probability": 0.5, **rules}
    return SubjectPreTransforms(probabilities or EQUAL, **settings)


def only(name: str) -> dict[str, float]:
    return {key: float(key == name) for key in PRE_TRANSFORMS}


def test_extract_subject_crops_exactly_the_subjects_pixels():
    rgb = image()
    out = ExtractSubject(0.5)(rgb, BOXES, LABELS, 0)
    assert np.array_equal(out.image, rgb[1:7, 1:5]) and out.head == "person" and out.subject == 0
    assert np.array_equal(out.boxes, [[0, 0, 4, 6]]) and np.array_equal(out.labels, [[1, 0, 0, 0]])
    fractional = ExtractSubject(0.5)(rgb, np.array([[1.5, 0.2, 3.1, 2.0]]), LABELS[:1], 0)  # every touched pixel
    assert np.array_equal(fractional.image, rgb[0:2, 1:4])


def test_a_box_contains_a_person_by_centre_or_by_overlap():
    assert people_inside(BOXES, 0, 0.5, W, H) == []
    assert people_inside(BOXES, 1, 0.5, W, H) == [2]  # C's centre pixel lies in B
    assert people_inside(BOXES, 2, 0.5, W, H) == [1]  # and B's in C
    d = [3.0, 2.0, 8.0, 6.0]  # 20 px^2, 2 x 4 = 8 of them inside A (0.4); its centre pixel (5, 4) is not
    assert inside_fraction(d, A) == pytest.approx(0.4)
    boxes = np.array([A, d], dtype=np.float32)
    assert people_inside(boxes, 0, 0.4, W, H) == [1] and people_inside(boxes, 0, 0.41, W, H) == []


def test_extract_subject_is_never_drawn_for_a_box_that_contains_another_person():
    rgb = image()
    seen = set()
    for seed in range(40):
        out = draw(only("extract_subject"))(rgb, BOXES, LABELS, np.random.default_rng(seed))
        subject = int(np.random.default_rng(seed).integers(3))  # the subject is the first draw
        seen.add(subject)
        if subject == 0:
            assert out.transform == "extract_subject" and np.array_equal(out.image, rgb[1:7, 1:5])
        else:  # B and C contain each other: only raw is left
            assert out.transform == "raw" and out.head == "detection" and np.array_equal(out.image, rgb)
    assert seen == {0, 1, 2}
    weights = draw().weights(rgb, BOXES, 1)
    assert weights["extract_subject"] == 0 and weights["raw"] == pytest.approx(1 / 3)


def test_mask_all_subjects_zeroes_exactly_the_boxes_and_targets_the_union():
    rgb = image()
    out = MaskAllSubjects(0.4)(rgb, BOXES, LABELS)
    inside = np.zeros((H, W), dtype=bool)
    inside[1:7, 1:5] = inside[2:10, 9:14] = inside[5:8, 10:12] = True
    assert (out.image[inside] == 0).all() and np.array_equal(out.image[~inside], rgb[~inside])
    assert np.array_equal(out.labels, [[1, 1, 1, 0]]) and np.array_equal(out.boxes, [[0, 0, W, H]])
    assert out.head == "background" and out.masked == (0, 1, 2)


def test_mask_all_subjects_needs_the_boxes_to_cover_at_most_the_area_share():
    rgb = image()  # areas 24 + 40 + 6 = 70 px of 192: 0.3646
    assert MaskAllSubjects(0.37).allowed(rgb, BOXES) and not MaskAllSubjects(0.36).allowed(rgb, BOXES)
    weights = draw(max_masked_area=0.36).weights(rgb, BOXES, 0)
    assert weights["mask_all_subjects"] == 0 and weights["extract_subject"] == pytest.approx(1 / 3)


def test_random_mask_subjects_masks_the_drawn_and_keeps_the_first():
    rgb = image()
    boxes = np.array([A, B], dtype=np.float32)
    for seed in range(6):
        out = RandomMaskSubjects(1.0)(rgb, boxes, LABELS[:2], np.random.default_rng(seed))
        first = int(np.random.default_rng(seed).permutation(2)[0])
        other = 1 - first
        assert out.masked == (other,) and np.array_equal(out.boxes, boxes[[first]])
        assert np.array_equal(out.labels, LABELS[[first]]) and out.head == "bottom_up"
        x0, y0, x1, y1 = (int(v) for v in boxes[other])
        hidden = np.zeros((H, W), dtype=bool)
        hidden[y0:y1, x0:x1] = True
        assert (out.image[hidden] == 0).all() and np.array_equal(out.image[~hidden], rgb[~hidden])
    none = RandomMaskSubjects(0.0)(rgb, BOXES, LABELS, np.random.default_rng(0))
    assert none.masked == () and np.array_equal(none.image, rgb) and np.array_equal(none.boxes, BOXES)


def test_random_mask_subjects_never_masks_a_box_over_a_kept_centre():
    rgb = image()
    for seed in range(6):  # B covers C's centre and C covers B's: whichever is kept first saves the other
        out = RandomMaskSubjects(1.0)(rgb, BOXES[1:], LABELS[1:], np.random.default_rng(seed))
        assert out.masked == () and np.array_equal(out.image, rgb) and len(out.boxes) == 2


def test_raw_keeps_the_image_and_every_subject_and_a_pil_image_is_read():
    rgb = image()
    out = draw(only("raw"))(Image.fromarray(rgb), BOXES.tolist(), LABELS, np.random.default_rng(0))
    assert out.transform == "raw" and out.head == "detection" and np.array_equal(out.image, rgb)
    assert np.array_equal(out.boxes, BOXES) and np.array_equal(out.labels, LABELS)
    empty = draw()(rgb, np.zeros((0, 4)), np.zeros((0, 4)), np.random.default_rng(0))
    assert empty.transform == "raw" and empty.boxes.shape == (0, 4)


def test_the_draw_follows_the_probabilities_and_is_reproducible_per_seed():
    rgb = image()
    boxes, labels = np.array([A, B], dtype=np.float32), LABELS[:2]  # nothing forbidden (areas 64 / 192)

    def epoch(seed: int) -> list:
        rng = np.random.default_rng(seed)
        outs = [draw(max_masked_area=0.5)(rgb, boxes, labels, rng) for _ in range(400)]
        return [(o.transform, o.masked, o.image.tobytes(), o.boxes.tobytes()) for o in outs]

    first, again, other = epoch(3), epoch(3), epoch(4)
    assert first == again and first != other
    counts = {name: sum(t == name for t, *_ in first) for name in PRE_TRANSFORMS}
    assert all(70 <= count <= 130 for count in counts.values()), counts  # 100 expected each


def test_resize_boxes_scales_each_axis():
    got = resize_boxes(np.array([[2.0, 3.0, 6.0, 9.0]]), (12, 16), (24, 64))
    assert np.allclose(got, [[8.0, 6.0, 24.0, 18.0]])
