"""GroundTruth: points move together and survive a save/load round trip."""

import numpy as np

from ecgtrace.data.groundtruth import GroundTruth
from ecgtrace.paper import CANONICAL, MARKERS


def _gt() -> GroundTruth:
    pts, idx = CANONICAL.grid_points()
    stride = 20
    gx, gy = np.meshgrid(np.arange(0, 2201, stride), np.arange(0, 1701, stride))
    t = np.linspace(0, 2.5, 11)
    return GroundTruth(
        image_size=CANONICAL.size,
        traces={"I": np.stack(CANONICAL.lead_to_px("I", t, np.sin(t)), axis=1)},
        trace_times={"I": t},
        trace_mv={"I": np.sin(t)},
        markers=CANONICAL.label_centers.copy(),
        grid_points=pts,
        grid_index=idx,
        fwd_map=np.stack([gx, gy], -1).astype(np.float32),
        map_stride=stride,
    )


def test_transform_moves_everything(tmp_path):
    gt = _gt()
    shift = np.array([3.5, -2.0])
    moved = gt.transformed(lambda p: p + shift, (1800, 2300), variant="0005")
    np.testing.assert_allclose(moved.markers, gt.markers + shift)
    np.testing.assert_allclose(moved.traces["I"], gt.traces["I"] + shift)
    np.testing.assert_allclose(moved.grid_points, gt.grid_points + shift)
    np.testing.assert_allclose(moved.fwd_map, gt.fwd_map + shift.astype(np.float32), atol=1e-4)
    assert moved.image_size == (1800, 2300) and moved.variant == "0005" and gt.variant == "0001"

    path = tmp_path / "x.gt.npz"
    moved.save(path)
    back = GroundTruth.load(path)
    assert back.variant == "0005" and back.image_size == (1800, 2300)
    np.testing.assert_allclose(back.traces["I"], moved.traces["I"], atol=1e-3)
    np.testing.assert_array_equal(back.grid_index, gt.grid_index)
    assert set(back.marker_dict()) == set(MARKERS)
    assert not list(tmp_path.glob("*.tmp*"))


def test_load_corrupt_file_says_what_to_do(tmp_path):
    bad = tmp_path / "bad.gt.npz"
    bad.write_bytes(b"not a zip")
    try:
        GroundTruth.load(bad)
    except ValueError as e:
        assert "ecgtrace synth" in str(e)
    else:
        raise AssertionError("corrupt ground truth was accepted")
