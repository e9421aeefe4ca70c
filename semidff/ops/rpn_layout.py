"""Per-anchor views of the RPN head's score maps, in the anchor order (h, w, a), a fastest.

Layout (dff-facts §2.2): class logits (N, 2A, h, w) hold background in channels [0, A) and
foreground in [A, 2A), so anchor a pairs channel a with A + a; deltas (N, 4A, h, w) hold 4
consecutive channels per anchor. Anchors from ``grid_anchors`` use the same (h, w, a) order.
"""
from __future__ import annotations

import torch


def rpn_logits_per_anchor(rpn_cls_logits: torch.Tensor) -> torch.Tensor:
    """(N, 2A, h, w) RPN logits → (N, h·w·A, 2) [background, foreground] logits per anchor."""
    n, channels, h, w = rpn_cls_logits.shape
    if channels % 2:
        raise ValueError(f"rpn_cls_logits must have 2A channels, got {channels}")
    pairs = rpn_cls_logits.reshape(n, 2, channels // 2, h, w)
    return pairs.permute(0, 3, 4, 2, 1).reshape(n, -1, 2)


def rpn_deltas_per_anchor(rpn_deltas: torch.Tensor) -> torch.Tensor:
    """(N, 4A, h, w) RPN deltas → (N, h·w·A, 4) (dx, dy, dw, dh) per anchor, still std-normalised."""
    n, channels, h, w = rpn_deltas.shape
    if channels % 4:
        raise ValueError(f"rpn_deltas must have 4A channels, got {channels}")
    return rpn_deltas.reshape(n, channels // 4, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
