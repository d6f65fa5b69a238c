"""orient.py: the 8 orientations move points exactly like pixels."""

import numpy as np
import pytest

from ecgtrace import orient


@pytest.mark.parametrize("c", range(8))
def test_points_follow_pixels(c):
    h, w = 7, 11
    img = np.zeros((h, w), np.uint8)
    pts = np.array([[0, 0], [10, 0], [3, 5], [10, 6]], float)
    for k, (x, y) in enumerate(pts.astype(int)):
        img[y, x] = k + 1
    out = orient.orient_image(img, c)
    assert out.shape == orient.oriented_size((h, w), c)
    moved = orient.orient_points(pts, c, (h, w))
    for k, (x, y) in enumerate(np.round(moved).astype(int)):
        assert out[y, x] == k + 1
    np.testing.assert_array_equal(orient.unorient_image(out, c), img)
    np.testing.assert_allclose(orient.unorient_points(moved, c, (h, w)), pts)


def test_bad_class_and_names():
    with pytest.raises(ValueError):
        orient.orient_image(np.zeros((2, 2)), 8)
    assert orient.describe(0) == "upright"
    assert orient.describe(5) == "flip + rot90cw"
