"""Box arithmetic in the DFF / py-faster-rcnn convention.

Boxes are ``(x1, y1, x2, y2)`` in image pixels with *inclusive* corners, so a box's width is
``x2 - x1 + 1`` (dff-facts §2.2, §2.4). Deltas are ``(dx, dy, dw, dh)`` relative to a reference
box's centre and size; the networks predict them divided by per-coordinate stds.
"""
from __future__ import annotations

import torch

RPN_DELTA_STDS = (0.1, 0.1, 0.4, 0.4)
"""ANCHOR_STDS of the DFF RPN (NORMALIZE_RPN: true)."""

RFCN_DELTA_STDS = (0.1, 0.1, 0.2, 0.2)
"""BBOX_STDS of the R-FCN head (BBOX_NORMALIZATION_PRECOMPUTED)."""

# exp() of a delta larger than this overflows box sizes to nonsense; torchvision clamps the same way.
_MAX_LOG_SCALE = float(torch.log(torch.tensor(1000.0 / 16)))


def box_widths_heights(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Widths and heights of (..., 4) boxes with the +1 pixel convention."""
    return boxes[..., 2] - boxes[..., 0] + 1.0, boxes[..., 3] - boxes[..., 1] + 1.0


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of (..., 4) boxes in pixels (+1 convention)."""
    w, h = box_widths_heights(boxes)
    return w * h


def box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (A, 4) and (B, 4) boxes → (A, B), +1 pixel convention.

    Boxes that do not overlap get 0; degenerate boxes (area ≤ 0) get 0 against everything.
    """
    area_a = box_area(boxes_a)
    area_b = box_area(boxes_b)
    top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    inter_wh = (bottom_right - top_left + 1.0).clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def encode_boxes(reference: torch.Tensor, target: torch.Tensor, stds=(1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """Regression targets (dx, dy, dw, dh) / stds that move ``reference`` boxes onto ``target``.

    reference, target: (N, 4) boxes; returns (N, 4).
    """
    ref_w, ref_h = box_widths_heights(reference)
    ref_cx = reference[:, 0] + 0.5 * (ref_w - 1.0)
    ref_cy = reference[:, 1] + 0.5 * (ref_h - 1.0)
    tgt_w, tgt_h = box_widths_heights(target)
    tgt_cx = target[:, 0] + 0.5 * (tgt_w - 1.0)
    tgt_cy = target[:, 1] + 0.5 * (tgt_h - 1.0)
    deltas = torch.stack(
        [
            (tgt_cx - ref_cx) / ref_w,
            (tgt_cy - ref_cy) / ref_h,
            torch.log(tgt_w / ref_w),
            torch.log(tgt_h / ref_h),
        ],
        dim=1,
    )
    return deltas / deltas.new_tensor(stds)


def decode_boxes(reference: torch.Tensor, deltas: torch.Tensor, stds=(1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """Inverse of :func:`encode_boxes`: apply (N, 4) normalised deltas to (N, 4) reference boxes."""
    deltas = deltas * deltas.new_tensor(stds)
    ref_w, ref_h = box_widths_heights(reference)
    ref_cx = reference[:, 0] + 0.5 * (ref_w - 1.0)
    ref_cy = reference[:, 1] + 0.5 * (ref_h - 1.0)
    cx = deltas[:, 0] * ref_w + ref_cx
    cy = deltas[:, 1] * ref_h + ref_cy
    w = torch.exp(deltas[:, 2].clamp(max=_MAX_LOG_SCALE)) * ref_w
    h = torch.exp(deltas[:, 3].clamp(max=_MAX_LOG_SCALE)) * ref_h
    return torch.stack(
        [cx - 0.5 * (w - 1.0), cy - 0.5 * (h - 1.0), cx + 0.5 * (w - 1.0), cy + 0.5 * (h - 1.0)], dim=1
    )


def clip_boxes(boxes: torch.Tensor, image_height: int, image_width: int) -> torch.Tensor:
    """Clip (..., 4) boxes to [0, W-1] × [0, H-1]."""
    x = boxes[..., 0::2].clamp(0, image_width - 1)
    y = boxes[..., 1::2].clamp(0, image_height - 1)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)
