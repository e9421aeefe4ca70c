import math

import pytest
import torch

from semidff.ops.boxes import (
    RFCN_DELTA_STDS,
    RPN_DELTA_STDS,
    box_area,
    box_iou,
    box_widths_heights,
    clip_boxes,
    decode_boxes,
    encode_boxes,
)


def test_widths_heights_and_area_count_both_end_pixels():
    boxes = torch.tensor([[0.0, 0.0, 9.0, 4.0], [3.0, 3.0, 3.0, 3.0]])
    widths, heights = box_widths_heights(boxes)
    assert widths.tolist() == [10.0, 1.0]
    assert heights.tolist() == [5.0, 1.0]
    assert box_area(boxes).tolist() == [50.0, 1.0]


@pytest.mark.parametrize(
    "other, expected",
    [
        ((0.0, 0.0, 9.0, 9.0), 1.0),  # identical
        ((5.0, 0.0, 14.0, 9.0), 50.0 / 150.0),  # half overlap: 5 x 10 shared pixels
        ((9.0, 0.0, 18.0, 9.0), 10.0 / 190.0),  # sharing one pixel column still overlaps (+1)
        ((10.0, 0.0, 19.0, 9.0), 0.0),  # adjacent, no shared pixel
        ((2.0, 2.0, 5.0, 5.0), 16.0 / 100.0),  # contained 4 x 4
        ((0.0, 0.0, 9.0, 4.0), 0.5),  # top half
        ((50.0, 50.0, 60.0, 60.0), 0.0),  # far away
    ],
)
def test_iou_hand_cases(other, expected):
    reference = torch.tensor([[0.0, 0.0, 9.0, 9.0]], dtype=torch.float64)
    iou = box_iou(reference, torch.tensor([other], dtype=torch.float64))
    assert iou.shape == (1, 1)
    assert iou.item() == pytest.approx(expected, abs=1e-12)


def test_iou_matrix_shape_symmetry_and_degenerate_boxes():
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(6, 2, generator=generator) * 50
    boxes = torch.cat([corners, corners + torch.rand(6, 2, generator=generator) * 30], dim=1)
    others = boxes[:4] + 3.0
    iou = box_iou(boxes, others)
    assert iou.shape == (6, 4)
    torch.testing.assert_close(iou, box_iou(others, boxes).T)
    assert torch.all((iou >= 0) & (iou <= 1))
    torch.testing.assert_close(torch.diagonal(box_iou(boxes, boxes)), torch.ones(6))
    # Zero width (x2 = x1 - 1): area 0, IoU 0 even with itself.
    empty = torch.tensor([[5.0, 5.0, 4.0, 9.0]])
    assert box_iou(empty, empty).item() == 0.0
    assert box_iou(empty, boxes).abs().sum().item() == 0.0


def test_encode_known_shift():
    reference = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    target = torch.tensor([[5.0, 0.0, 14.0, 19.0]])  # centre +5 px in x, +5 px in y, height doubled
    deltas = encode_boxes(reference, target)
    torch.testing.assert_close(deltas, torch.tensor([[0.5, 0.5, 0.0, math.log(2.0)]]))
    normalised = encode_boxes(reference, target, RFCN_DELTA_STDS)
    torch.testing.assert_close(normalised, torch.tensor([[5.0, 5.0, 0.0, math.log(2.0) / 0.2]]))


@pytest.mark.parametrize("stds", [(1.0, 1.0, 1.0, 1.0), RPN_DELTA_STDS, RFCN_DELTA_STDS])
def test_encode_decode_round_trip(stds):
    generator = torch.Generator().manual_seed(1)
    corners = torch.rand(50, 2, generator=generator, dtype=torch.float64) * 500
    reference = torch.cat([corners, corners + 1 + torch.rand(50, 2, generator=generator, dtype=torch.float64) * 300], 1)
    corners = torch.rand(50, 2, generator=generator, dtype=torch.float64) * 500
    target = torch.cat([corners, corners + 1 + torch.rand(50, 2, generator=generator, dtype=torch.float64) * 300], 1)
    deltas = encode_boxes(reference, target, stds)
    torch.testing.assert_close(decode_boxes(reference, deltas, stds), target)


def test_decode_zero_deltas_is_identity_and_huge_deltas_stay_finite():
    reference = torch.tensor([[10.0, 20.0, 49.0, 29.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(decode_boxes(reference, torch.zeros(2, 4)), reference)
    huge = torch.tensor([[0.0, 0.0, 100.0, 100.0]] * 2)
    assert torch.isfinite(decode_boxes(reference, huge)).all()


def test_clip_boxes_to_image():
    boxes = torch.tensor([[-5.0, -3.0, 120.0, 80.0], [10.0, 10.0, 20.0, 20.0], [200.0, 90.0, 300.0, 95.0]])
    clipped = clip_boxes(boxes, image_height=60, image_width=100)
    expected = torch.tensor([[0.0, 0.0, 99.0, 59.0], [10.0, 10.0, 20.0, 20.0], [99.0, 59.0, 99.0, 59.0]])
    torch.testing.assert_close(clipped, expected)
    # Works on any leading shape.
    assert clip_boxes(boxes.reshape(1, 3, 4), 60, 100).shape == (1, 3, 4)
