"""Supervised R-FCN loss of stage 1 (Eq. 2-3) with DFF's target assignment and normalisations.

    L_1 = L_RPN + L_FRCN,  each = cross-entropy + smooth-L1 box loss      (Eq. 2-3)

RPN (dff-facts §2.2): anchors fully inside the image are labelled positive (IoU ≥ 0.7, or best
anchor of a GT), negative (IoU < 0.3) or ignored, then subsampled to 256 per image with at most
half positive. CE averages over the non-ignored anchors; smooth-L1 (σ = 1, targets divided by
RPN_DELTA_STDS) sums over positives and is scaled by 1/256 per image.
R-FCN (dff-facts §2.2, §2.4): every RoI (all proposals plus the GT boxes the caller appended,
BATCH_ROIS = −1) is foreground with its best GT's class if IoU ≥ 0.5, else background. Box
regression is class-agnostic on columns 4:8 with RFCN_DELTA_STDS; background RoIs have no box
loss. OHEM keeps the 128 RoIs per image with the largest CE + smooth-L1 and scales the box loss
by 1/128.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import torch
import torch.nn.functional as F

from semidff.ops.rpn_layout import rpn_deltas_per_anchor, rpn_logits_per_anchor
from semidff.ops.boxes import RFCN_DELTA_STDS, RPN_DELTA_STDS, box_iou, encode_boxes

if TYPE_CHECKING:  # only for annotations: losses must not need the model code at run time
    from semidff.models.rfcn import RFCNOutput

IGNORE = -1
"""Label of anchors / RoIs that take no part in the classification loss."""


@dataclass
class SupervisedLoss:
    """The four Eq. 2 terms (already normalised) and their sum; scalars."""

    rpn_cls: torch.Tensor
    rpn_box: torch.Tensor
    rfcn_cls: torch.Tensor
    rfcn_box: torch.Tensor
    total: torch.Tensor


def label_anchors(
    anchors: torch.Tensor,
    gt_boxes: torch.Tensor,
    image_size: tuple[int, int],
    batch_size: int = 256,
    fg_fraction: float = 0.5,
    positive_iou: float = 0.7,
    negative_iou: float = 0.3,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RPN training labels and box targets for one image (DFF ``assign_anchor``).

    anchors: (M, 4) boxes in input-image pixels, order (h, w, a).
    gt_boxes: (G, 4) ground-truth boxes of the image; G may be 0 (every anchor is then negative).
    image_size: (H, W) of the network input; anchors not fully inside it are ignored.
    generator: torch.Generator for the random subsampling (None: the global RNG).
    Returns labels (M,) int64 in {-1 ignored, 0 negative, 1 positive}, at most ``batch_size`` of
    them ≥ 0 and at most ``fg_fraction · batch_size`` positive; and targets (M, 4): the
    RPN_DELTA_STDS-normalised deltas to the best-overlapping GT for positive anchors, 0 elsewhere.
    """
    height, width = image_size
    gt_boxes = _as_boxes(gt_boxes, "gt_boxes").to(anchors)
    labels = torch.full((anchors.shape[0],), IGNORE, dtype=torch.long, device=anchors.device)
    targets = anchors.new_zeros((anchors.shape[0], 4))
    inside = (anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] < width) & (anchors[:, 3] < height)
    inside_index = inside.nonzero().squeeze(1)
    if inside_index.numel() == 0:
        return labels, targets
    inside_anchors = anchors[inside_index]
    if gt_boxes.shape[0] == 0:
        labels[inside_index] = 0
    else:
        iou = box_iou(inside_anchors, gt_boxes)  # (K, G)
        max_iou, matched_gt = iou.max(dim=1)
        inside_labels = torch.full_like(matched_gt, IGNORE)
        inside_labels[max_iou < negative_iou] = 0
        # The best anchor(s) of every GT are positive, ties included; a GT that no inside anchor
        # touches (best IoU 0) contributes none, where py-faster-rcnn would mark every anchor.
        best_per_gt = iou.max(dim=0).values
        is_best = ((iou == best_per_gt[None, :]) & (best_per_gt[None, :] > 0)).any(dim=1)
        inside_labels[is_best] = 1
        inside_labels[max_iou >= positive_iou] = 1
        labels[inside_index] = inside_labels
        targets[inside_index] = encode_boxes(inside_anchors, gt_boxes[matched_gt], RPN_DELTA_STDS)
    _ignore_excess(labels, 1, int(fg_fraction * batch_size), generator)
    _ignore_excess(labels, 0, batch_size - int((labels == 1).sum()), generator)
    targets = torch.where((labels == 1)[:, None], targets, torch.zeros_like(targets))
    return labels, targets


def sample_rois(
    rois: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, fg_threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """R-FCN training labels and box targets for all RoIs of one image (BATCH_ROIS = −1).

    rois: (R, 5) [batch_index, x1, y1, x2, y2] of one image (the caller appends its GT boxes).
    gt_boxes: (G, 4); gt_labels: (G,) int64 classes in 1..C. G may be 0 (all RoIs background).
    Returns labels (R,) int64: the best GT's class where its IoU ≥ fg_threshold, else 0; and
    targets (R, 4): RFCN_DELTA_STDS-normalised deltas to that GT for foreground RoIs, 0 elsewhere.
    """
    gt_boxes = _as_boxes(gt_boxes, "gt_boxes").to(rois)
    gt_labels = gt_labels.reshape(-1).to(device=rois.device, dtype=torch.long)
    if gt_labels.shape[0] != gt_boxes.shape[0]:
        raise ValueError(f"sample_rois: {gt_boxes.shape[0]} gt_boxes but {gt_labels.shape[0]} gt_labels")
    labels = torch.zeros(rois.shape[0], dtype=torch.long, device=rois.device)
    targets = rois.new_zeros((rois.shape[0], 4))
    if rois.shape[0] == 0 or gt_boxes.shape[0] == 0:
        return labels, targets
    boxes = rois[:, 1:5]
    max_iou, matched_gt = box_iou(boxes, gt_boxes).max(dim=1)
    foreground = max_iou >= fg_threshold  # BG range [0, fg_threshold): everything else is background
    labels = torch.where(foreground, gt_labels[matched_gt], labels)
    encoded = encode_boxes(boxes, gt_boxes[matched_gt], RFCN_DELTA_STDS)
    targets = torch.where(foreground[:, None], encoded, targets)
    return labels, targets


def rfcn_supervised_loss(
    output: RFCNOutput,
    anchors: torch.Tensor,
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    image_size: tuple[int, int],
    *,
    rpn_batch_size: int = 256,
    ohem: bool = True,
    ohem_rois: int = 128,
    generator: Optional[torch.Generator] = None,
) -> SupervisedLoss:
    """Eq. 2-3 on a batch of N images that share one input size.

    output: RFCNOutput-like record, duck-typed on rpn_cls_logits (N, 2A, h, w), rpn_deltas
        (N, 4A, h, w), rois (R, 5), cls_logits (R, C+1) and box_deltas (R, 8).
    anchors: (h·w·A, 4) anchors of the feature map, order (h, w, a).
    gt_boxes, gt_labels: one (G_i, 4) float and one (G_i,) int64 tensor per image; G_i may be 0.
    image_size: (H, W) of the network input.
    rpn_batch_size: anchors sampled per image; also the RPN box-loss divisor (per image).
    ohem / ohem_rois: keep only the ohem_rois hardest RoIs per image; the box-loss divisor is
        ohem_rois per image with OHEM and the number of RoIs without.
    generator: torch.Generator for the anchor subsampling.
    """
    num_images = output.rpn_cls_logits.shape[0]
    if not len(gt_boxes) == len(gt_labels) == num_images:
        raise ValueError(
            f"rfcn_supervised_loss: {num_images} images in the output but {len(gt_boxes)} gt_boxes "
            f"and {len(gt_labels)} gt_labels entries; pass one (possibly empty) tensor per image"
        )

    # RPN, Eq. 3 with DFF's normalisation (dff-facts §2.2).
    rpn_logits = rpn_logits_per_anchor(output.rpn_cls_logits)  # (N, M, 2)
    rpn_deltas = rpn_deltas_per_anchor(output.rpn_deltas)  # (N, M, 4)
    if anchors.shape[0] != rpn_logits.shape[1]:
        raise ValueError(
            f"rfcn_supervised_loss: {anchors.shape[0]} anchors but the RPN predicts {rpn_logits.shape[1]} "
            "(h·w·A); build anchors for this feature map size"
        )
    assigned = [
        label_anchors(anchors, gt_boxes[i], image_size, batch_size=rpn_batch_size, generator=generator)
        for i in range(num_images)
    ]
    anchor_labels = torch.stack([labels for labels, _ in assigned])  # (N, M)
    anchor_targets = torch.stack([targets for _, targets in assigned])  # (N, M, 4)
    num_valid = (anchor_labels != IGNORE).sum().clamp(min=1)
    rpn_ce_sum = F.cross_entropy(
        rpn_logits.reshape(-1, 2).float(), anchor_labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    rpn_cls = rpn_ce_sum / num_valid  # mean over non-ignored anchors
    positive = anchor_labels == 1
    rpn_box = F.smooth_l1_loss(
        rpn_deltas[positive].float(), anchor_targets[positive], beta=1.0, reduction="sum"
    ) / (rpn_batch_size * num_images)

    # R-FCN, Eq. 3 with optional OHEM (dff-facts §2.2 "OHEM").
    rois = output.rois
    batch_index = rois[:, 0].long()
    roi_labels = torch.zeros(rois.shape[0], dtype=torch.long, device=rois.device)
    roi_targets = rois.new_zeros((rois.shape[0], 4))
    for i in range(num_images):
        in_image = (batch_index == i).nonzero().squeeze(1)
        roi_labels[in_image], roi_targets[in_image] = sample_rois(rois[in_image], gt_boxes[i], gt_labels[i])
    per_roi_cls = F.cross_entropy(output.cls_logits.float(), roi_labels, reduction="none")  # (R,)
    per_roi_box = F.smooth_l1_loss(
        output.box_deltas[:, 4:8].float(), roi_targets, beta=1.0, reduction="none"
    ).sum(dim=1)  # class-agnostic foreground columns
    per_roi_box = torch.where(roi_labels > 0, per_roi_box, torch.zeros_like(per_roi_box))  # no box loss for bg
    if ohem:
        keep = _hardest_per_image(per_roi_cls.detach() + per_roi_box.detach(), batch_index, num_images, ohem_rois)
        rfcn_cls = per_roi_cls[keep].sum() / keep.sum().clamp(min=1)
        rfcn_box = per_roi_box[keep].sum() / (ohem_rois * num_images)
    else:
        num_rois = max(rois.shape[0], 1)
        rfcn_cls = per_roi_cls.sum() / num_rois
        rfcn_box = per_roi_box.sum() / num_rois
    return SupervisedLoss(rpn_cls, rpn_box, rfcn_cls, rfcn_box, total=rpn_cls + rpn_box + rfcn_cls + rfcn_box)


def _as_boxes(boxes: torch.Tensor, name: str) -> torch.Tensor:
    if boxes.numel() == 0:
        return boxes.reshape(0, 4)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must be (G, 4) boxes (x1, y1, x2, y2), got shape {tuple(boxes.shape)}")
    return boxes


def _ignore_excess(labels: torch.Tensor, value: int, keep: int, generator: Optional[torch.Generator]) -> None:
    """Set all but ``keep`` randomly chosen entries equal to ``value`` to IGNORE, in place."""
    index = (labels == value).nonzero().squeeze(1)
    excess = index.numel() - max(keep, 0)
    if excess > 0:
        device = generator.device if generator is not None else labels.device
        order = torch.randperm(index.numel(), generator=generator, device=device).to(labels.device)
        labels[index[order[:excess]]] = IGNORE


def _hardest_per_image(loss: torch.Tensor, batch_index: torch.Tensor, num_images: int, k: int) -> torch.Tensor:
    """Boolean (R,) mask of the k largest ``loss`` values within each image."""
    by_loss = torch.argsort(loss, descending=True)
    order = by_loss[torch.argsort(batch_index[by_loss], stable=True)]  # grouped by image, hardest first
    counts = torch.bincount(batch_index, minlength=num_images)
    first_of_image = torch.cumsum(counts, dim=0) - counts
    rank = torch.arange(loss.shape[0], device=loss.device) - first_of_image[batch_index[order]]
    keep = torch.zeros_like(batch_index, dtype=torch.bool)
    keep[order] = rank < k
    return keep
