"""Bilinear feature warping by a flow field, in DFF's convention (dff-facts §1.5).

Backward warping: output pixel (x, y) reads the input at (x + u, y + v), bilinearly, with taps
outside the map reading 0. DFF does this with MXNet's GridGenerator("warp") + BilinearSampler,
which normalise by (size - 1) / 2, i.e. ``grid_sample(align_corners=True, padding_mode="zeros")``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def warp_features(features: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Warp features by flow: out[n, :, y, x] = features[n, :, y + v, x + u] (0 outside the map).

    features: (N, C, H, W) feature maps.
    flow: (N, 2, H, W) displacement in feature-map pixels on the output grid; channel 0 = u (x,
        width), channel 1 = v (y, height). It points to where the content sits in ``features``.
    Returns (N, C, H, W) in features' dtype; differentiable in both features and flow.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be (N, C, H, W), got shape {tuple(features.shape)}")
    num_images, _, height, width = features.shape
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be (N, 2, H, W) with channel 0 = x, got shape {tuple(flow.shape)}")
    if flow.shape[0] != num_images or flow.shape[2:] != features.shape[2:]:
        raise ValueError(
            f"flow {tuple(flow.shape)} must match features {tuple(features.shape)} in batch size and H, W"
        )

    # A side of length 1 has no (size - 1) to normalise by; a zero row/column after it gives the
    # same zero-padded bilinear result (tap 0 weighted by 1 - |offset|). The output keeps the
    # sampling grid's H x W, so nothing needs cropping.
    padded = F.pad(features, (0, 1 if width == 1 else 0, 0, 1 if height == 1 else 0))
    padded_height, padded_width = padded.shape[2:]

    # Grid and sampling in at least fp32: in fp16, x + u near x = 63 has a step of 0.03 feature pixels.
    compute_dtype = torch.promote_types(torch.promote_types(features.dtype, flow.dtype), torch.float32)
    flow = flow.to(compute_dtype)
    grid_y, grid_x = torch.meshgrid(
        torch.arange(height, dtype=compute_dtype, device=flow.device),
        torch.arange(width, dtype=compute_dtype, device=flow.device),
        indexing="ij",
    )
    # MXNet GridGenerator kWarp: x_n = (x + u) / ((W - 1) / 2) - 1.
    sample_x = (grid_x + flow[:, 0]) / ((padded_width - 1) / 2.0) - 1.0
    sample_y = (grid_y + flow[:, 1]) / ((padded_height - 1) / 2.0) - 1.0
    grid = torch.stack([sample_x, sample_y], dim=-1)  # (N, H, W, 2), x first
    warped = F.grid_sample(padded.to(compute_dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return warped.to(features.dtype)
