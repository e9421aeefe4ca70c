"""Greedy non-maximum suppression with the +1 pixel IoU of DFF (dff-facts §2.2, §2.6).

The result is exactly that of the classic greedy loop (py-faster-rcnn ``nms``): visit boxes by
descending score, keep a box unless a kept box overlaps it with IoU > threshold. Score ties are
visited in index order. Without torchvision the greedy loop is replaced by vectorised work on
blocks of boxes (a boolean suppression matrix per block), so no Python loop runs per box.
"""
from __future__ import annotations

import torch

from semidff.ops.boxes import box_iou

try:
    from torchvision.ops import nms as _torchvision_nms
except Exception:  # absent, or built for another torch (its ops fail to load): use the pure-torch path
    _torchvision_nms = None

# Boxes decided together by the pure-torch path (see _greedy_nms), and rows of a block's IoU
# matrix computed at once (small row chunks keep box_iou's temporaries in cache).
_BLOCK_SIZE = 512
_IOU_CHUNK_ROWS = 128


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_kept: int | None = None) -> torch.Tensor:
    """Greedy NMS.

    boxes: (N, 4) (x1, y1, x2, y2) inclusive corners, pixels; scores: (N,).
    A box is suppressed by a higher-scoring kept box when their IoU (+1 convention) is
    strictly greater than ``iou_threshold``. Returns int64 indices of the kept boxes, sorted by
    descending score; with ``max_kept`` only the first ``max_kept`` of them (the proposal stage
    keeps 300 of 6000, and stops as soon as it has them).
    """
    _check_inputs(boxes, scores)
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    if boxes.dtype in (torch.float16, torch.bfloat16):
        boxes = boxes.float()  # areas of 600x1000-pixel boxes overflow fp16
    if _torchvision_nms is not None:
        # torchvision measures width as x2 - x1; shifting the far corner by one pixel gives the +1 IoU.
        dtype = torch.float64 if boxes.dtype == torch.float64 else torch.float32
        shifted = torch.cat([boxes[:, :2], boxes[:, 2:] + 1.0], dim=1).to(dtype)
        # Distinct rank scores make its (unstable) sort visit ties in index order, like the pure path.
        order = _visiting_order(scores)
        ranks = torch.empty(order.shape[0], dtype=dtype, device=scores.device)
        ranks[order] = torch.arange(order.shape[0], 0, -1, dtype=dtype, device=scores.device)
        return _torchvision_nms(shifted, ranks, iou_threshold)[:max_kept]
    return _greedy_nms(boxes, scores, iou_threshold, max_kept)


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS applied separately to each label; boxes of different labels never suppress each other.

    boxes: (N, 4); scores: (N,); labels: (N,) integer class ids. Returns int64 indices of the kept
    boxes over all labels, sorted by descending score.
    """
    _check_inputs(boxes, scores)
    if labels.shape != scores.shape:
        raise ValueError(f"labels must be (N,) like scores {tuple(scores.shape)}, got {tuple(labels.shape)}")
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    # One NMS per label (a loop over classes, not boxes). Unlike torchvision's coordinate-offset
    # trick this stays exact for boxes with negative coordinates.
    kept = []
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).squeeze(1)
        kept.append(members[nms(boxes[members], scores[members], iou_threshold)])
    kept = torch.cat(kept)
    order = torch.sort(scores[kept], descending=True, stable=True).indices
    return kept[order]


def _check_inputs(boxes: torch.Tensor, scores: torch.Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4), got {tuple(boxes.shape)}")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must be (N,) with N = {boxes.shape[0]} boxes, got {tuple(scores.shape)}")


def _visiting_order(scores: torch.Tensor) -> torch.Tensor:
    """Indices by descending score; equal scores in index order."""
    return torch.sort(scores, descending=True, stable=True).indices


def _greedy_nms(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_kept: int | None
) -> torch.Tensor:
    """Pure-torch greedy NMS; same contract as :func:`nms`.

    Greedy decisions about the first k boxes (in visiting order) never depend on later boxes, so
    the sorted boxes are decided block by block: a block first drops every box that an already
    kept box suppresses, then resolves the rest among themselves (:func:`_resolve_block`). Work is
    about N x (kept + block) IoUs instead of N^2, and it stops once ``max_kept`` boxes are kept.
    """
    order = _visiting_order(scores)
    sorted_boxes = boxes[order]
    kept_positions: list[torch.Tensor] = []
    kept_boxes = sorted_boxes[:0]
    for start in range(0, sorted_boxes.shape[0], _BLOCK_SIZE):
        block = sorted_boxes[start : start + _BLOCK_SIZE]
        positions = torch.arange(start, start + block.shape[0], device=boxes.device)
        if kept_boxes.shape[0]:
            alive = ~(box_iou(kept_boxes, block) > iou_threshold).any(dim=0)
            block, positions = block[alive], positions[alive]
        keep = _resolve_block(block, iou_threshold)
        kept_positions.append(positions[keep])
        kept_boxes = torch.cat([kept_boxes, block[keep]])
        if max_kept is not None and kept_boxes.shape[0] >= max_kept:
            break
    return order[torch.cat(kept_positions)][:max_kept]


def _resolve_block(sorted_boxes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy keep mask (B,) of boxes already in visiting order, with no outside suppressor.

    Greedy NMS is the unique solution of keep[j] = not any(keep[i] and suppress[i, j] for i < j).
    Instead of solving it box by box, each round decides many boxes at once: a box is kept once
    all of its suppressors are known to be removed, and removed once any suppressor is known to be
    kept. The first undecided box is always decided in the next round, and each row of the
    suppression matrix is read at most twice, so the work is O(B^2) bit operations however many
    rounds it takes (about the number of kept boxes along the longest overlapping chain).
    """
    suppress, live_suppressors = _suppression_matrix(sorted_boxes, iou_threshold)
    num_boxes = sorted_boxes.shape[0]
    undecided = torch.ones(num_boxes, dtype=torch.bool, device=sorted_boxes.device)
    keep = torch.zeros(num_boxes, dtype=torch.bool, device=sorted_boxes.device)
    # live_suppressors: suppressors of each box not yet known to be removed.
    while bool(undecided.any()):
        newly_kept = undecided & (live_suppressors == 0)
        keep |= newly_kept
        undecided &= ~newly_kept
        newly_removed = undecided & suppress[newly_kept].any(dim=0)
        undecided &= ~newly_removed
        live_suppressors -= suppress[newly_removed].sum(dim=0, dtype=torch.int32)
    return keep


def _suppression_matrix(sorted_boxes: torch.Tensor, iou_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Suppression matrix of boxes in visiting order, and its column counts.

    Returns (N, N) bool, entry (i, j) true when i < j and IoU(box i, box j) > threshold, and (N,)
    int32 number of suppressors of each box.
    """
    num_boxes = sorted_boxes.shape[0]
    suppress = torch.zeros(num_boxes, num_boxes, dtype=torch.bool, device=sorted_boxes.device)
    num_suppressors = torch.zeros(num_boxes, dtype=torch.int32, device=sorted_boxes.device)
    for start in range(0, num_boxes, _IOU_CHUNK_ROWS):
        stop = min(start + _IOU_CHUNK_ROWS, num_boxes)
        # Only columns >= start can lie above the diagonal for these rows.
        block = torch.triu(box_iou(sorted_boxes[start:stop], sorted_boxes[start:]) > iou_threshold, diagonal=1)
        suppress[start:stop, start:] = block
        num_suppressors[start:] += block.sum(dim=0, dtype=torch.int32)
    return suppress, num_suppressors
