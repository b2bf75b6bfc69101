"""RoIAlign through crop_and_resize: bin centres read exactly off a linear feature map."""
import numpy as np

from models.detection.roi_align import multilevel_roi_align, pyramid_level, roi_align


def _ramp(size):
    """[1, size, size, 2]: channel 0 holds the column index, channel 1 the row index."""
    x = np.tile(np.arange(size, dtype=np.float32)[None, :], (size, 1))
    return np.stack([x, x.T], -1)[None]


def test_bins_read_their_centres():
    box = np.array([[[0.25, 0.125, 0.75, 0.625]]], np.float32)  # x 0.25..0.75, y 0.125..0.625
    pooled = roi_align(_ramp(8), box, output_size=2, sampling_ratio=2).numpy()[0, 0]
    # Bin centres x = 0.375, 0.625 -> cells 0.375 * 8 - 0.5 = 2.5 and 4.5; y = 0.25, 0.5 -> 1.5, 3.5.
    np.testing.assert_allclose(pooled[..., 0], [[2.5, 4.5], [2.5, 4.5]], atol=1e-5)
    np.testing.assert_allclose(pooled[..., 1], [[1.5, 1.5], [3.5, 3.5]], atol=1e-5)
    assert pooled.shape == (2, 2, 2)


def test_levels_by_box_size_and_multilevel_pick():
    boxes = np.array([[[0, 0, 0.25, 0.25], [0, 0, 0.5, 0.5], [0, 0, 1, 1]]], np.float32)  # 16, 32, 64 px of 64
    np.testing.assert_array_equal(pyramid_level(boxes, (64, 64), 2, canonical_size=16.0).numpy(), [[0, 1, 1]])
    fine, coarse = _ramp(8), _ramp(4) * 10.0
    pooled = multilevel_roi_align([fine, coarse], boxes, (64, 64), 1, canonical_size=16.0, sampling_ratio=1).numpy()
    np.testing.assert_allclose(pooled[0, 0, 0, 0], [0.5, 0.5], atol=1e-5)  # fine map: centre 0.125 * 8 - 0.5
    np.testing.assert_allclose(pooled[0, 1, 0, 0], [5.0, 5.0], atol=1e-5)  # coarse: (0.25 * 4 - 0.5) * 10
