"""RPN anchors in the DFF / py-faster-rcnn convention (dff-facts §2.2).

The base anchors come from the legacy "+1" algorithm around the reference box (0, 0, 15, 15):
for each aspect ratio the box area is kept and the width rounded, then each ratio box is scaled.
They are ordered ratio-major, then scale. Anchors over a feature grid are flattened in order
(h, w, a), a fastest, which matches the RPN head's channel layout.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def base_anchors(
    base_size: int = 16,
    ratios: Sequence[float] = (0.5, 1.0, 2.0),
    scales: Sequence[float] = (8, 16, 32),
) -> torch.Tensor:
    """The A = len(ratios) * len(scales) anchors centred on the first feature cell.

    Returns (A, 4) float32 boxes (x1, y1, x2, y2) in input-image pixels, inclusive corners.
    """
    # Float64 so the rounding below sees the same numbers as the reference numpy code.
    size = float(base_size)
    centre = 0.5 * (size - 1.0)  # centre of (0, 0, size-1, size-1) with the +1 width convention
    ratios_t = torch.tensor(list(ratios), dtype=torch.float64)
    scales_t = torch.tensor(list(scales), dtype=torch.float64)
    # _ratio_enum: keep the area, round the width, derive the height (numpy round = half to even,
    # as is torch.round).
    widths = torch.round(torch.sqrt(size * size / ratios_t))
    heights = torch.round(widths * ratios_t)
    # _scale_enum: every ratio box times every scale, ratio-major.
    widths = (widths[:, None] * scales_t[None, :]).reshape(-1)
    heights = (heights[:, None] * scales_t[None, :]).reshape(-1)
    anchors = torch.stack(
        [
            centre - 0.5 * (widths - 1.0),
            centre - 0.5 * (heights - 1.0),
            centre + 0.5 * (widths - 1.0),
            centre + 0.5 * (heights - 1.0),
        ],
        dim=1,
    )
    return anchors.to(torch.float32)


def grid_anchors(base: torch.Tensor, feature_height: int, feature_width: int, stride: int = 16) -> torch.Tensor:
    """Shift (A, 4) base anchors to every cell of an h x w feature map.

    Cell (i, j) shifts the base anchors by (j * stride, i * stride) pixels. Returns (h * w * A, 4)
    boxes in base's dtype and device, ordered (h, w, a) with a fastest.
    """
    if base.dim() != 2 or base.shape[1] != 4:
        raise ValueError(f"base anchors must be (A, 4), got {tuple(base.shape)}")
    shift_x = torch.arange(feature_width, dtype=base.dtype, device=base.device) * stride
    shift_y = torch.arange(feature_height, dtype=base.dtype, device=base.device) * stride
    grid_y, grid_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = torch.stack([grid_x, grid_y, grid_x, grid_y], dim=-1)  # (h, w, 4)
    return (shifts[:, :, None, :] + base[None, None, :, :]).reshape(-1, 4)
