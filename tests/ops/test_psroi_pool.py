import math

import pytest
import torch

from semidff.ops.psroi_pool import ps_roi_pool, ps_roi_vote


def c_round(value):
    """C round(): halves away from zero."""
    return math.copysign(math.floor(abs(value) + 0.5), value)


def reference_ps_roi_pool(score_maps, rois, output_dim, group_size, spatial_scale):
    """One bin at a time, transcribing PSROIPoolForwardKernel (dff-facts §2.3) with Python floats."""
    _, _, height, width = score_maps.shape
    out = torch.zeros(rois.shape[0], output_dim, group_size, group_size, dtype=torch.float64)
    for r, (batch, x1, y1, x2, y2) in enumerate(rois.tolist()):
        start_w = c_round(x1) * spatial_scale
        start_h = c_round(y1) * spatial_scale
        end_w = (c_round(x2) + 1.0) * spatial_scale
        end_h = (c_round(y2) + 1.0) * spatial_scale
        bin_w = max(end_w - start_w, 0.1) / group_size
        bin_h = max(end_h - start_h, 0.1) / group_size
        for c in range(output_dim):
            for gh in range(group_size):
                for gw in range(group_size):
                    h0 = min(max(math.floor(gh * bin_h + start_h), 0), height)
                    h1 = min(max(math.ceil((gh + 1) * bin_h + start_h), 0), height)
                    w0 = min(max(math.floor(gw * bin_w + start_w), 0), width)
                    w1 = min(max(math.ceil((gw + 1) * bin_w + start_w), 0), width)
                    if h1 <= h0 or w1 <= w0:
                        continue
                    channel = (c * group_size + gh) * group_size + gw
                    total = 0.0
                    for y in range(h0, h1):
                        for x in range(w0, w1):
                            total += float(score_maps[int(batch), channel, y, x])
                    out[r, c, gh, gw] = total / ((h1 - h0) * (w1 - w0))
    return out


def layout_maps(output_dim=31, k=7, height=38, width=63):
    """Channel block (c, gh, gw) filled with the constant c * k * k + gh * k + gw."""
    values = torch.arange(output_dim * k * k, dtype=torch.float32)
    return values.reshape(1, -1, 1, 1).expand(1, -1, height, width).contiguous()


def test_channel_layout_is_class_major_with_k_by_k_blocks():
    maps = layout_maps()
    rois = torch.tensor([[0.0, 32.0, 48.0, 500.0, 400.0], [0.0, 0.0, 0.0, 1007.0, 607.0], [0.0, 300.0, 200.0, 330.0, 215.0]])
    pooled = ps_roi_pool(maps, rois, output_dim=31, group_size=7, spatial_scale=1 / 16)
    assert pooled.shape == (3, 31, 7, 7)
    assert pooled.dtype == torch.float32
    expected = torch.arange(31 * 49, dtype=torch.float32).reshape(1, 31, 7, 7).expand(3, -1, -1, -1)
    assert torch.equal(pooled, expected)


def test_vote_is_global_average():
    pooled = ps_roi_pool(layout_maps(), torch.tensor([[0.0, 32.0, 48.0, 500.0, 400.0]]), output_dim=31)
    votes = ps_roi_vote(pooled)
    assert votes.shape == (1, 31)
    # Mean of gh * 7 + gw over the 7 x 7 bins is 24.
    torch.testing.assert_close(votes, (torch.arange(31.0) * 49 + 24).reshape(1, 31))


def test_roi_covering_one_feature_cell_returns_that_cell():
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 3 * 49, 10, 12, generator=generator)
    # Image pixels 80..95 x 48..63 are exactly feature cell (y=3, x=5) at stride 16, in image 1.
    rois = torch.tensor([[1.0, 80.0, 48.0, 95.0, 63.0]])
    pooled = ps_roi_pool(maps, rois, output_dim=3, group_size=7)
    torch.testing.assert_close(pooled[0], maps[1, :, 3, 5].reshape(3, 7, 7), rtol=0, atol=1e-6)


def test_bins_outside_the_map_are_zero():
    maps = torch.ones(1, 2 * 49, 10, 10)  # 160 x 160 image at stride 16
    rois = torch.tensor(
        [
            [0.0, 400.0, 400.0, 600.0, 600.0],  # entirely outside
            [0.0, 80.0, 80.0, 191.0, 191.0],  # cells 5..11 in both axes: bins 5, 6 (cells 10, 11) are outside
            [0.0, -112.0, 0.0, 111.0, 159.0],  # cells -7..6 in x: the left bins (cells -7..-1) are outside
        ]
    )
    pooled = ps_roi_pool(maps, rois, output_dim=2, group_size=7)
    assert torch.equal(pooled[0], torch.zeros(2, 7, 7))
    inside = torch.zeros(7, 7)
    inside[:5, :5] = 1.0
    assert torch.equal(pooled[1], inside.expand(2, 7, 7))
    # Width 14 cells → bin width 2 cells starting at -7: bins 0..2 end at or before cell 0, bin 3 spans -1..0.
    left = torch.ones(7, 7)
    left[:, :3] = 0.0
    assert torch.equal(pooled[2], left.expand(2, 7, 7))


def test_rounding_half_away_from_zero_and_inclusive_end():
    # spatial_scale 1 makes feature cells image pixels; column x holds the value x.
    maps = torch.arange(10.0).reshape(1, 1, 1, 10).expand(1, 1, 3, 10).contiguous()
    rois = torch.tensor([[0.0, 2.5, 0.0, 5.0, 2.0]])  # x1 rounds to 3 (torch.round would give 2)
    pooled = ps_roi_pool(maps, rois, output_dim=1, group_size=1, spatial_scale=1.0)
    assert pooled.item() == pytest.approx((3 + 4 + 5) / 3)  # columns 3..5, x2 inclusive


def test_tiny_roi_is_widened_to_minimum_size():
    maps = torch.arange(10.0).reshape(1, 1, 1, 10).expand(1, 1, 3, 10).contiguous()
    rois = torch.tensor([[0.0, 5.0, 1.0, 3.0, 1.0]])  # x2 < x1: width clamped to 0.1 → the cell at x1
    pooled = ps_roi_pool(maps, rois, output_dim=1, group_size=1, spatial_scale=1.0)
    assert pooled.item() == 5.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_reference(seed):
    generator = torch.Generator().manual_seed(seed)
    output_dim, k, height, width = 3, 3, 9, 11
    maps = torch.randn(2, output_dim * k * k, height, width, generator=generator, dtype=torch.float64)
    num_rois = 25
    # Image is 144 x 176 at stride 16; corners range beyond it on all sides, some RoIs are inverted.
    corners = torch.rand(num_rois, 2, generator=generator, dtype=torch.float64) * 220 - 40
    sides = torch.rand(num_rois, 2, generator=generator, dtype=torch.float64) * 150 - 10
    batch = torch.randint(0, 2, (num_rois, 1), generator=generator).double()
    rois = torch.cat([batch, corners, corners + sides], dim=1)
    pooled = ps_roi_pool(maps, rois, output_dim, group_size=k, spatial_scale=1 / 16)
    expected = reference_ps_roi_pool(maps, rois, output_dim, k, 1 / 16)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-10)


def test_float32_maps_match_float64():
    generator = torch.Generator().manual_seed(4)
    maps = torch.randn(1, 8 * 49, 38, 63, generator=generator) * 10 + 50
    corners = torch.rand(40, 2, generator=generator) * 900
    rois = torch.cat([torch.zeros(40, 1), corners, corners + torch.rand(40, 2, generator=generator) * 400], 1)
    pooled = ps_roi_pool(maps, rois, output_dim=8)
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled.double(), ps_roi_pool(maps.double(), rois, output_dim=8), rtol=1e-6, atol=1e-5)


def test_gradcheck_float64():
    generator = torch.Generator().manual_seed(5)
    maps = torch.randn(1, 2 * 4, 5, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [[0.0, 0.0, 0.0, 47.0, 31.0], [0.0, 20.0, 10.0, 130.0, 90.0], [0.0, 60.0, 60.0, 200.0, 200.0]],
        dtype=torch.float64,
    )
    assert torch.autograd.gradcheck(lambda m: ps_roi_pool(m, rois, output_dim=2, group_size=2), (maps,))


def test_gradient_spreads_evenly_over_a_bin():
    maps = torch.zeros(1, 1, 4, 4, requires_grad=True)
    rois = torch.tensor([[0.0, 16.0, 16.0, 47.0, 47.0]])  # cells 1..2 in both axes, one 2 x 2 bin
    ps_roi_pool(maps, rois, output_dim=1, group_size=1).sum().backward()
    expected = torch.zeros(4, 4)
    expected[1:3, 1:3] = 0.25
    torch.testing.assert_close(maps.grad[0, 0], expected)


def test_empty_rois_and_bad_shapes():
    maps = torch.zeros(1, 2 * 49, 5, 5)
    assert ps_roi_pool(maps, torch.zeros(0, 5), output_dim=2).shape == (0, 2, 7, 7)
    with pytest.raises(ValueError, match="score_maps"):
        ps_roi_pool(maps, torch.zeros(1, 5), output_dim=3)
    with pytest.raises(ValueError, match="rois"):
        ps_roi_pool(maps, torch.zeros(1, 4), output_dim=2)
