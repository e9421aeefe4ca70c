"""R-FCN, the spatial module of semi-DFF (paper §3.2; dff-facts §2).

A feature extractor (ResNet + dilated 3×3, 1024 channels in DFF) makes one feature map per image.
Its channels are split in two (dff-facts §2.1): the first half feeds the RPN, whose 1×1 convs sit
directly on it, and the second half feeds the position-sensitive (PS) score maps. The RPN's
proposals are PS-RoI pooled and voted into class logits and class-agnostic box deltas.

``RFCN.forward_heads`` takes features rather than images, so the same heads run on features that
the flow network warped from a key frame (paper Eq. 1) and can be given the teacher's RoIs so that
student and teacher are compared on the same boxes (Eq. 7-9).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from semidff.ops.anchors import base_anchors, grid_anchors
from semidff.ops.boxes import RFCN_DELTA_STDS, RPN_DELTA_STDS, box_widths_heights, clip_boxes, decode_boxes
from semidff.ops.nms import batched_nms, nms
from semidff.ops.psroi_pool import ps_roi_pool, ps_roi_vote
from semidff.ops.rpn_layout import rpn_deltas_per_anchor, rpn_logits_per_anchor

FEATURE_STRIDE = 16
"""Input pixels per feature-map cell (dff-facts §2.1)."""


@dataclass
class RFCNOutput:
    """Everything the R-FCN predicts for a batch; the record the losses and the teacher cache read.

    features: (N, C, h, w) the extractor's feature map, or None when it was not kept.
    rpn_cls_logits: (N, 2A, h, w) channel a = background and A + a = foreground of anchor a.
    rpn_deltas: (N, 4A, h, w) RPN deltas, 4 consecutive channels per anchor, divided by RPN_DELTA_STDS.
    rois: (R, 5) [batch_index, x1, y1, x2, y2] in input-image pixels.
    cls_logits: (R, num_classes + 1) class logits, column 0 = background.
    box_deltas: (R, 8) class-agnostic deltas [background 4, foreground 4], divided by RFCN_DELTA_STDS.
    image_size: (H, W) of the network input in pixels.
    """

    features: torch.Tensor | None
    rpn_cls_logits: torch.Tensor
    rpn_deltas: torch.Tensor
    rois: torch.Tensor
    cls_logits: torch.Tensor
    box_deltas: torch.Tensor
    image_size: tuple[int, int]


@dataclass
class Detections:
    """Final detections of one image.

    boxes: (D, 4) float (x1, y1, x2, y2) in original-image pixels (inclusive corners).
    scores: (D,) class probabilities, descending.
    labels: (D,) int64 class indices in 1..num_classes.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


class RPNHead(nn.Module):
    """Two 1×1 convs on the RPN half of the features (dff-facts §2.2: no extra 3×3 conv)."""

    def __init__(self, in_channels: int, num_anchors: int = 9):
        super().__init__()
        self.num_anchors = num_anchors
        self.rpn_cls_score = nn.Conv2d(in_channels, 2 * num_anchors, kernel_size=1)
        self.rpn_bbox_pred = nn.Conv2d(in_channels, 4 * num_anchors, kernel_size=1)
        for conv in (self.rpn_cls_score, self.rpn_bbox_pred):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (N, C, h, w) → class logits (N, 2A, h, w), deltas (N, 4A, h, w)."""
        return self.rpn_cls_score(features), self.rpn_bbox_pred(features)


class ProposalGenerator(nn.Module):
    """Turns RPN outputs into a fixed number of RoIs per image (DFF proposal op, dff-facts §2.2).

    Per image: foreground probability, decode with RPN_DELTA_STDS, clip, drop boxes narrower or
    shorter than ``min_size`` pixels, keep the ``pre_nms_top_n`` best, NMS, keep the
    ``post_nms_top_n`` best. When fewer boxes survive, the survivors are repeated in score order
    (cycling: 0, 1, …, m-1, 0, 1, …) until there are exactly ``post_nms_top_n``; DFF repeats them at
    random, which only changes the order of duplicate RoIs. No gradient flows through proposals.
    """

    def __init__(
        self,
        pre_nms_top_n: int = 6000,
        post_nms_top_n: int = 300,
        nms_threshold: float = 0.7,
        min_size: float = 0,
    ):
        super().__init__()
        self.pre_nms_top_n = pre_nms_top_n
        self.post_nms_top_n = post_nms_top_n
        self.nms_threshold = nms_threshold
        self.min_size = min_size

    @torch.no_grad()
    def forward(
        self,
        rpn_cls_logits: torch.Tensor,
        rpn_deltas: torch.Tensor,
        anchors: torch.Tensor,
        image_size: tuple[int, int],
    ) -> torch.Tensor:
        """Proposals for a batch.

        rpn_cls_logits: (N, 2A, h, w); rpn_deltas: (N, 4A, h, w); anchors: (h*w*A, 4) in (h, w, a)
        order; image_size: (H, W) pixels. Returns rois (N * post_nms_top_n, 5), image by image.
        """
        n, two_a, h, w = rpn_cls_logits.shape
        num_anchors = two_a // 2
        if anchors.shape[0] != h * w * num_anchors:
            raise ValueError(
                f"anchors: {anchors.shape[0]} boxes but the RPN map {h}x{w} with {num_anchors} anchors per "
                f"cell needs {h * w * num_anchors}; build them with RFCN.anchors({h}, {w})"
            )
        if anchors.shape[0] == 0:
            raise ValueError(f"rpn_cls_logits: empty feature map {h}x{w}, so there are no anchors to propose from")
        # Softmax over the (background a, foreground A + a) pair of each anchor, in (h, w, a) order.
        fg_prob = rpn_logits_per_anchor(rpn_cls_logits.float()).softmax(dim=-1)[..., 1]
        deltas = rpn_deltas_per_anchor(rpn_deltas.float())
        anchors = anchors.float()
        rois = []
        for image_index in range(n):
            boxes = self._propose_one(fg_prob[image_index], deltas[image_index], anchors, image_size)
            batch_column = boxes.new_full((boxes.shape[0], 1), float(image_index))
            rois.append(torch.cat([batch_column, boxes], dim=1))
        return torch.cat(rois, dim=0)

    def _propose_one(
        self, scores: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """scores (M,), deltas (M, 4), anchors (M, 4) → (post_nms_top_n, 4) boxes."""
        boxes = clip_boxes(decode_boxes(anchors, deltas, RPN_DELTA_STDS), *image_size)
        if self.min_size > 0:
            widths, heights = box_widths_heights(boxes)
            large_enough = (widths >= self.min_size) & (heights >= self.min_size)
            if large_enough.any():  # keep everything rather than nothing, so padding has boxes to repeat
                boxes, scores = boxes[large_enough], scores[large_enough]
        top = scores.topk(min(self.pre_nms_top_n, scores.shape[0])).indices
        boxes, scores = boxes[top], scores[top]
        keep = nms(boxes, scores, self.nms_threshold, max_kept=self.post_nms_top_n)
        if keep.shape[0] < self.post_nms_top_n:
            cycle = torch.arange(self.post_nms_top_n, device=keep.device) % keep.shape[0]
            keep = keep[cycle]
        return boxes[keep]


class PSRoIHead(nn.Module):
    """Position-sensitive score maps, PS-RoI pooling and voting (dff-facts §2.3).

    rfcn_cls makes k²·(C+1) class maps, rfcn_bbox k²·8 class-agnostic box maps (background and
    foreground, 4 deltas each); each RoI is pooled on a k×k grid and averaged ("voted").
    """

    def __init__(self, in_channels: int, num_classes: int, group_size: int = 7):
        super().__init__()
        self.num_classes = num_classes
        self.group_size = group_size
        self.rfcn_cls = nn.Conv2d(in_channels, group_size * group_size * (num_classes + 1), kernel_size=1)
        self.rfcn_bbox = nn.Conv2d(in_channels, group_size * group_size * 8, kernel_size=1)
        for conv in (self.rfcn_cls, self.rfcn_bbox):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (N, C, h, w) at stride 16, rois (R, 5) → cls_logits (R, num_classes + 1), box_deltas (R, 8)."""
        scale = 1.0 / FEATURE_STRIDE
        cls_maps = self.rfcn_cls(features)
        box_maps = self.rfcn_bbox(features)
        cls_logits = ps_roi_vote(ps_roi_pool(cls_maps, rois, self.num_classes + 1, self.group_size, scale))
        box_deltas = ps_roi_vote(ps_roi_pool(box_maps, rois, 8, self.group_size, scale))
        return cls_logits, box_deltas


class RFCN(nn.Module):
    """R-FCN detector: feature extractor, RPN on the first feature half, PS heads on the second half.

    feature_extractor: any module mapping (N, 3, H, W) images to (N, C, h, w) stride-16 features
    with an even ``out_channels`` attribute C. num_classes excludes background.
    Test-time settings follow dff-facts §2.6.
    """

    def __init__(
        self,
        feature_extractor: nn.Module,
        num_classes: int,
        anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
        anchor_scales: tuple[float, ...] = (8, 16, 32),
        group_size: int = 7,
        pre_nms_top_n: int = 6000,
        post_nms_top_n: int = 300,
        proposal_nms_threshold: float = 0.7,
        test_score_threshold: float = 1e-4,
        test_nms_threshold: float = 0.3,
        max_detections: int = 300,
    ):
        super().__init__()
        channels = getattr(feature_extractor, "out_channels", None)
        if not isinstance(channels, int) or channels <= 0 or channels % 2:
            raise ValueError(
                f"feature_extractor.out_channels = {channels!r}: need a positive even int, because the features "
                "are split in half between the RPN and the PS heads (dff-facts §2.1)"
            )
        if num_classes < 1:
            raise ValueError(f"num_classes = {num_classes}: need at least one foreground class")
        self.feature_extractor = feature_extractor
        self.num_classes = num_classes
        self.test_score_threshold = test_score_threshold
        self.test_nms_threshold = test_nms_threshold
        self.max_detections = max_detections
        anchors = base_anchors(base_size=FEATURE_STRIDE, ratios=tuple(anchor_ratios), scales=tuple(anchor_scales))
        # Derived from the config, so kept out of state_dict; it still follows .to(device).
        self.register_buffer("base_anchors", anchors, persistent=False)
        self.rpn_head = RPNHead(channels // 2, num_anchors=anchors.shape[0])
        self.proposal_generator = ProposalGenerator(
            pre_nms_top_n=pre_nms_top_n, post_nms_top_n=post_nms_top_n, nms_threshold=proposal_nms_threshold
        )
        self.ps_roi_head = PSRoIHead(channels // 2, num_classes, group_size=group_size)

    @property
    def feature_channels(self) -> int:
        """Channels C of the feature map that the heads read (and that DFF warps)."""
        return self.feature_extractor.out_channels

    def anchors(self, feature_height: int, feature_width: int) -> torch.Tensor:
        """All anchors of a feature map, (h*w*A, 4) in input pixels, order (h, w, a)."""
        return grid_anchors(self.base_anchors, feature_height, feature_width, stride=FEATURE_STRIDE)

    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) mean-subtracted RGB → features (N, C, h, w)."""
        return self.feature_extractor(images)

    def forward_heads(
        self,
        features: torch.Tensor,
        image_size: tuple[int, int],
        rois: torch.Tensor | None = None,
        extra_rois: torch.Tensor | None = None,
    ) -> RFCNOutput:
        """Run the RPN and PS heads on (N, C, h, w) features of (H, W) = image_size input images.

        rois: (R, 5) RoIs to classify instead of the RPN's proposals (e.g. the teacher's).
        extra_rois: (E, 5) RoIs appended after the proposals or ``rois`` (e.g. GT boxes in training).
        """
        if features.dim() != 4 or features.shape[1] != self.feature_channels:
            raise ValueError(
                f"features: shape {tuple(features.shape)}, expected (N, {self.feature_channels}, h, w)"
            )
        image_size = (int(image_size[0]), int(image_size[1]))
        rpn_features, ps_features = features.chunk(2, dim=1)  # dff-facts §2.1 channel split
        rpn_cls_logits, rpn_deltas = self.rpn_head(rpn_features)
        if rois is None:
            anchors = self.anchors(features.shape[2], features.shape[3])
            rois = self.proposal_generator(rpn_cls_logits, rpn_deltas, anchors, image_size)
        rois = rois.detach().to(device=features.device, dtype=torch.float32)
        if extra_rois is not None:
            rois = torch.cat([rois, extra_rois.detach().to(device=rois.device, dtype=rois.dtype)], dim=0)
        _check_batch_indices(rois, features.shape[0])
        cls_logits, box_deltas = self.ps_roi_head(ps_features, rois)
        return RFCNOutput(
            features=features,
            rpn_cls_logits=rpn_cls_logits,
            rpn_deltas=rpn_deltas,
            rois=rois,
            cls_logits=cls_logits,
            box_deltas=box_deltas,
            image_size=image_size,
        )

    def forward(self, images: torch.Tensor, extra_rois: torch.Tensor | None = None) -> RFCNOutput:
        """images (N, 3, H, W) → RFCNOutput with the RPN's proposals (plus ``extra_rois``)."""
        features = self.extract_features(images)
        return self.forward_heads(features, (images.shape[2], images.shape[3]), extra_rois=extra_rois)

    @torch.no_grad()
    def detect(self, output: RFCNOutput, scale: float = 1.0) -> list[Detections]:
        """Final detections per image (dff-facts §2.6).

        Softmax over classes, foreground box (columns 4:8) decoded with RFCN_DELTA_STDS against
        the RoIs and clipped to the input image, score > test_score_threshold, per-class NMS, the
        best ``max_detections`` over all classes, and boxes divided by ``scale`` (the resize
        factor from the original image to the network input).
        """
        height, width = output.image_size
        num_images = output.rpn_cls_logits.shape[0]
        probs = output.cls_logits.float().softmax(dim=1)
        rois = output.rois.float()
        boxes = decode_boxes(rois[:, 1:5], output.box_deltas[:, 4:8].float(), RFCN_DELTA_STDS)
        boxes = clip_boxes(boxes, height, width)
        batch_index = rois[:, 0].round().long()
        class_ids = torch.arange(1, self.num_classes + 1, device=probs.device)
        detections = []
        for image_index in range(num_images):
            in_image = batch_index == image_index
            # One candidate per (RoI, foreground class): the class-agnostic box with that class's score.
            scores = probs[in_image, 1:]
            num_rois = scores.shape[0]
            candidate_boxes = boxes[in_image][:, None, :].expand(num_rois, self.num_classes, 4).reshape(-1, 4)
            candidate_labels = class_ids[None, :].expand(num_rois, self.num_classes).reshape(-1)
            scores = scores.reshape(-1)
            above = scores > self.test_score_threshold
            candidate_boxes, scores, candidate_labels = candidate_boxes[above], scores[above], candidate_labels[above]
            keep = batched_nms(candidate_boxes, scores, candidate_labels, self.test_nms_threshold)
            keep = keep[: self.max_detections]
            detections.append(
                Detections(
                    boxes=candidate_boxes[keep] / scale,
                    scores=scores[keep],
                    labels=candidate_labels[keep].long(),
                )
            )
        return detections


def _check_batch_indices(rois: torch.Tensor, num_images: int) -> None:
    """RoIs must name an image of the batch in column 0; otherwise pooling reads the wrong image."""
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be (R, 5) [batch_index, x1, y1, x2, y2], got {tuple(rois.shape)}")
    index = rois[:, 0]
    if rois.shape[0] and (bool((index != index.round()).any()) or index.min() < 0 or index.max() >= num_images):
        raise ValueError(
            f"rois column 0 must hold whole batch indices in [0, {num_images}) for a batch of {num_images} "
            f"feature maps, got values in [{index.min().item()}, {index.max().item()}]"
        )
