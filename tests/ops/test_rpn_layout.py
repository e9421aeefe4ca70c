"""Per-anchor views of the RPN maps (semidff.ops.rpn_layout.py): order (h, w, a), bg/fg pairing."""
from __future__ import annotations

import pytest
import torch

from semidff.ops.rpn_layout import rpn_deltas_per_anchor, rpn_logits_per_anchor


def test_logits_pair_channel_a_with_a_plus_num_anchors_in_hwa_order():
    n, num_anchors, h, w = 2, 3, 4, 5
    maps = torch.randn(n, 2 * num_anchors, h, w)
    per_anchor = rpn_logits_per_anchor(maps)
    assert per_anchor.shape == (n, h * w * num_anchors, 2)
    for image, y, x, a in [(0, 0, 0, 0), (1, 2, 3, 1), (0, 3, 4, 2), (1, 0, 4, 2)]:
        m = (y * w + x) * num_anchors + a
        assert per_anchor[image, m, 0].item() == maps[image, a, y, x].item()  # background
        assert per_anchor[image, m, 1].item() == maps[image, num_anchors + a, y, x].item()  # foreground


def test_deltas_take_four_consecutive_channels_per_anchor():
    n, num_anchors, h, w = 1, 3, 2, 3
    maps = torch.arange(n * 4 * num_anchors * h * w, dtype=torch.float32).reshape(n, 4 * num_anchors, h, w)
    per_anchor = rpn_deltas_per_anchor(maps)
    assert per_anchor.shape == (n, h * w * num_anchors, 4)
    y, x, a = 1, 2, 1
    m = (y * w + x) * num_anchors + a
    torch.testing.assert_close(per_anchor[0, m], maps[0, 4 * a : 4 * a + 4, y, x])


def test_bad_channel_counts_raise():
    with pytest.raises(ValueError, match="2A"):
        rpn_logits_per_anchor(torch.zeros(1, 5, 2, 2))
    with pytest.raises(ValueError, match="4A"):
        rpn_deltas_per_anchor(torch.zeros(1, 6, 2, 2))
