"""core/data/views.py: every pixel view built exactly, checked against hand-computed pixels."""
from __future__ import annotations

import numpy as np
import pytest

from core.data import views


def photo(height: int = 10, width: int = 12, seed: int = 0) -> np.ndarray:
    """An RGB image with no zero pixel, so a mask shows as exactly the zeros."""
    return np.random.default_rng(seed).integers(1, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("box,expected", [
    ((1.2, 2.7, 3.1, 4.0), (1, 2, 4, 4)),       # every pixel the box touches
    ((2, 3, 5, 6), (2, 3, 5, 6)),                # integer edges: x2, y2 exclusive
    ((-4.5, -1, 30, 50), (0, 0, 12, 10)),        # clamped to the 12 x 10 image
    ((20, 20, 30, 30), (12, 10, 12, 10)),        # wholly outside: empty
    ((5, 5, 4, 4), (5, 5, 5, 5)),                # inverted: empty
])
def test_pixel_box_covers_every_touched_pixel_inside_the_image(box, expected):
    assert views.pixel_box(box, width=12, height=10) == expected


def test_a_mask_is_zero_exactly_inside_the_box_and_unchanged_outside():
    rgb = photo()
    masked = views.mask_boxes(rgb, [(1.2, 2.7, 3.1, 4.0)])
    inside = np.zeros(rgb.shape[:2], dtype=bool)
    inside[2:4, 1:4] = True
    assert (masked[inside] == 0).all()
    assert np.array_equal(masked[~inside], rgb[~inside])
    assert rgb.min() > 0, "the input is left untouched"


def test_masking_people_zeroes_the_union_of_their_boxes():
    rgb = photo()
    masked = views.pixel_view("image_people_masked", rgb, body_box=(0, 0, 2, 2), face_box=(0, 0, 1, 1),
                              people_boxes=[(10, 8, 12, 10), (1, 1, 3, 3)])
    assert int((masked == 0).all(axis=2).sum()) == 4 + 4 + 4 - 1   # the first and last box share (1, 1)
    assert (masked[8:10, 10:12] == 0).all() and (masked[0:3, 0:3][:2, :2] == 0).all()


def test_crops_take_the_pixels_of_the_box_and_never_come_back_empty():
    rgb = photo()
    assert np.array_equal(views.crop(rgb, (1.2, 2.7, 3.1, 4.0)), rgb[2:4, 1:4])
    assert views.crop(rgb, (20, 20, 30, 30)).shape == (1, 1, 3)     # outside: the nearest corner pixel
    assert views.crop(rgb, (5, 5, 5, 5)).shape == (1, 1, 3)


def test_the_patch_grid_tiles_the_image():
    rgb = photo(height=10, width=7)
    patches = views.patch_grid(rgb, 3)
    assert [p.shape[:2] for p in patches[:3]] == [(4, 3), (4, 2), (4, 2)]   # rows 4,3,3; columns 3,2,2
    rows = [np.concatenate(patches[r * 3:(r + 1) * 3], axis=1) for r in range(3)]
    assert np.array_equal(np.concatenate(rows, axis=0), rgb)
    assert views.grid_edges(10, 3) == [0, 4, 7, 10]
    with pytest.raises(ValueError, match="cannot cut 7 pixels into 8 parts"):
        views.patch_grid(rgb, 8)


def test_the_face_fallback_is_the_top_square_of_the_body_and_is_reported():
    assert views.face_fallback([10, 20, 40, 140]) == [10.0, 20.0, 40.0, 50.0]     # side min(30, 120/3)
    assert views.face_fallback([0, 0, 90, 60]) == [35.0, 0.0, 55.0, 20.0]         # side min(90, 60/3)
    assert views.face_box_or_fallback([1, 2, 3, 4], [0, 0, 90, 60]) == ([1.0, 2.0, 3.0, 4.0], False)
    assert views.face_box_or_fallback(None, [0, 0, 90, 60]) == ([35.0, 0.0, 55.0, 20.0], True)
    assert views.face_box_or_fallback([np.nan] * 4, [0, 0, 90, 60])[1] is True


def test_each_named_view_and_the_mistakes():
    rgb = photo()
    body, face = (2, 1, 8, 9), (3, 1, 6, 4)
    built = {name: views.pixel_view(name, rgb, body_box=body, face_box=face, grid=2) for name in views.PIXEL_VIEWS}
    assert np.array_equal(built["body"], rgb[1:9, 2:8]) and np.array_equal(built["face"], rgb[1:4, 3:6])
    assert built["image"] is rgb
    assert (built["image_body_masked"][1:9, 2:8] == 0).all() and built["image_body_masked"][0, 0].all()
    assert (built["image_face_masked"][1:4, 3:6] == 0).all() and built["image_face_masked"][5, 5].all()
    assert len(built["patches"]) == 4 and set(views.VIEWS) == set(views.PIXEL_VIEWS) | {"objects"}
    with pytest.raises(ValueError, match="unknown view 'scene'"):
        views.pixel_view("scene", rgb, body_box=body, face_box=face)
    with pytest.raises(ValueError, match="needs its grid size"):
        views.pixel_view("patches", rgb, body_box=body, face_box=face)


def test_normalise_resizes_and_scales_as_the_spec_says():
    spec = views.ViewSpec(size=4, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    grey = np.full((6, 9, 3), 255, dtype=np.uint8)
    tensor = views.normalise(grey, spec)
    assert tensor.shape == (3, 4, 4) and tensor.dtype == np.float32
    assert np.allclose(tensor[0], 1.0) and np.allclose(tensor[1], 3.0) and np.allclose(tensor[2], 1.0)
