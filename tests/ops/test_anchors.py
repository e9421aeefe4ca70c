import pytest
import torch

from semidff.ops.anchors import base_anchors, grid_anchors

# dff-facts §2.2: base anchors of the legacy generate_anchors, ratio-major then scale.
DFF_BASE_ANCHORS = [
    [-84, -40, 99, 55],
    [-176, -88, 191, 103],
    [-360, -184, 375, 199],
    [-56, -56, 71, 71],
    [-120, -120, 135, 135],
    [-248, -248, 263, 263],
    [-36, -80, 51, 95],
    [-80, -168, 95, 183],
    [-168, -344, 183, 359],
]


def test_base_anchors_equal_dff_table():
    anchors = base_anchors()
    assert anchors.dtype == torch.float32
    assert anchors.tolist() == [[float(v) for v in row] for row in DFF_BASE_ANCHORS]


def test_base_anchors_are_centred_on_first_cell_with_ratio_shapes():
    anchors = base_anchors(base_size=16, ratios=(0.5, 1.0, 2.0), scales=(8, 16, 32))
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    torch.testing.assert_close(centres, torch.full((9, 2), 7.5))
    widths = anchors[:, 2] - anchors[:, 0] + 1
    heights = anchors[:, 3] - anchors[:, 1] + 1
    # height / width follows the ratio (up to the integer rounding of the ratio box).
    ratio_of_each = torch.tensor([0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0])
    assert torch.allclose(heights / widths, ratio_of_each, rtol=0.1)


def test_base_anchors_single_ratio_and_scale():
    # Ratio 1, scale 1 is the reference box itself.
    assert base_anchors(16, (1.0,), (1,)).tolist() == [[0.0, 0.0, 15.0, 15.0]]
    assert base_anchors(16, (1.0,), (2,)).tolist() == [[-8.0, -8.0, 23.0, 23.0]]


@pytest.mark.parametrize("height, width", [(1, 1), (3, 5), (38, 63)])
def test_grid_anchors_count_and_order(height, width):
    base = base_anchors()
    anchors = grid_anchors(base, height, width, stride=16)
    assert anchors.shape == (9 * height * width, 4)
    per_cell = anchors.reshape(height, width, 9, 4)
    for i, j in [(0, 0), (height - 1, 0), (0, width - 1), (height // 2, width // 3)]:
        shift = torch.tensor([16.0 * j, 16.0 * i, 16.0 * j, 16.0 * i])
        torch.testing.assert_close(per_cell[i, j], base + shift)


def test_grid_anchors_flat_index_is_h_w_a():
    base = base_anchors()
    anchors = grid_anchors(base, 2, 3, stride=16)
    # Flat index (i * w + j) * A + a: row i = 1, column j = 2, anchor a = 4.
    assert anchors[(1 * 3 + 2) * 9 + 4].tolist() == (base[4] + torch.tensor([32.0, 16.0, 32.0, 16.0])).tolist()
    # The anchor index runs fastest: consecutive rows within one cell share the same centre.
    centres = (anchors[:9, :2] + anchors[:9, 2:]) / 2
    torch.testing.assert_close(centres, torch.full((9, 2), 7.5))


def test_grid_anchors_follow_dtype_and_reject_bad_base():
    base = base_anchors().double()
    assert grid_anchors(base, 2, 2).dtype == torch.float64
    with pytest.raises(ValueError, match="base anchors"):
        grid_anchors(torch.zeros(9, 5), 2, 2)
