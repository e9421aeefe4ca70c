"""Position-sensitive RoI pooling with the MXNet geometry used by DFF / R-FCN (dff-facts §2.3).

Output channel c, bin (gh, gw) averages input channel (c * k + gh) * k + gw over that bin, where
the bins split the RoI into a k x k grid. The RoI corners are rounded in image pixels before
scaling, the far corner gets +1 pixel, and bins are widened outwards to whole feature cells
(``PSROIPoolForwardKernel`` in DFF ``dff_rfcn/operator_cxx/psroi_pooling.cu``). torchvision's
``ps_roi_pool`` differs in all three, so it is not used.

Every bin is averaged at once from a summed-area table of the score maps, so the cost is one
cumulative sum over the maps plus four gathers per bin, and autograd gives the exact gradient
(each pixel of a bin receives grad / bin area, as in the MXNet backward kernel).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# dff-facts §2.3: RoI sides are clamped to at least 0.1 feature pixels.
_MIN_ROI_SIZE = 0.1


def ps_roi_pool(
    score_maps: torch.Tensor,
    rois: torch.Tensor,
    output_dim: int,
    group_size: int = 7,
    spatial_scale: float = 1.0 / 16,
) -> torch.Tensor:
    """Pool position-sensitive score maps over RoIs.

    score_maps: (N, output_dim * k * k, H, W) with k = group_size, channel (c * k + gh) * k + gw
        holding class c's scores for bin (gh, gw).
    rois: (R, 5) [batch_index, x1, y1, x2, y2] in input-image pixels, inclusive corners.
    spatial_scale: feature pixels per image pixel (1/16 for stride 16).
    Returns (R, output_dim, k, k) bin averages in score_maps' dtype; empty bins (outside the map) are 0.
    """
    if score_maps.dim() != 4 or score_maps.shape[1] != output_dim * group_size * group_size:
        raise ValueError(
            f"score_maps must be (N, output_dim * group_size**2 = {output_dim * group_size**2}, H, W), "
            f"got {tuple(score_maps.shape)}"
        )
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be (R, 5) [batch_index, x1, y1, x2, y2], got {tuple(rois.shape)}")
    _, num_channels, height, width = score_maps.shape
    k = group_size

    row_start, row_end = _bin_edges(rois[:, 2], rois[:, 4], k, spatial_scale, height)  # (R, k) each
    col_start, col_end = _bin_edges(rois[:, 1], rois[:, 3], k, spatial_scale, width)

    # Summed-area table with a zero first row and column: table[y, x] = sum of maps[:y, :x].
    # Float64 keeps differences of large running sums exact enough for float32 maps.
    table = F.pad(score_maps.to(torch.float64).cumsum(dim=2).cumsum(dim=3), (1, 0, 1, 0))
    table = table.reshape(-1)

    # Flat index of table[b, channel(c, gh, gw), y, x], broadcast to (R, output_dim, k, k).
    channels = torch.arange(num_channels, device=score_maps.device).reshape(1, output_dim, k, k)
    batch = rois[:, 0].long().reshape(-1, 1, 1, 1)
    plane = (batch * num_channels + channels) * ((height + 1) * (width + 1))
    y0 = (row_start * (width + 1))[:, None, :, None]
    y1 = (row_end * (width + 1))[:, None, :, None]
    x0 = col_start[:, None, None, :]
    x1 = col_end[:, None, None, :]
    bin_sums = table.take(plane + y1 + x1) - table.take(plane + y0 + x1) - table.take(plane + y1 + x0)
    bin_sums = bin_sums + table.take(plane + y0 + x0)

    area = ((row_end - row_start)[:, :, None] * (col_end - col_start)[:, None, :])[:, None]  # (R, 1, k, k)
    pooled = torch.where(area > 0, bin_sums / area.clamp(min=1), torch.zeros_like(bin_sums))
    return pooled.to(score_maps.dtype)


def ps_roi_vote(pooled: torch.Tensor) -> torch.Tensor:
    """R-FCN voting: global average of (R, D, k, k) pooled scores → (R, D) (dff-facts §2.3)."""
    return pooled.mean(dim=(2, 3))


def _bin_edges(
    roi_low: torch.Tensor, roi_high: torch.Tensor, k: int, spatial_scale: float, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature-cell ranges [start, end) of the k bins along one axis, clipped to [0, size].

    roi_low, roi_high: (R,) RoI corner coordinates in image pixels. Returns two (R, k) int64 tensors.
    Operations follow the CUDA kernel's order and the RoIs' dtype.
    """
    start = _round_half_away(roi_low) * spatial_scale
    end = (_round_half_away(roi_high) + 1.0) * spatial_scale
    bin_size = (end - start).clamp(min=_MIN_ROI_SIZE) / k
    steps = torch.arange(k, dtype=roi_low.dtype, device=roi_low.device)
    bin_start = torch.floor(steps[None, :] * bin_size[:, None] + start[:, None])
    bin_end = torch.ceil((steps[None, :] + 1.0) * bin_size[:, None] + start[:, None])
    return bin_start.clamp(0, size).long(), bin_end.clamp(0, size).long()


def _round_half_away(values: torch.Tensor) -> torch.Tensor:
    """C ``round``: halves go away from zero (torch.round goes to even)."""
    return torch.sign(values) * torch.floor(values.abs() + 0.5)
