"""What the frozen teacher gives the student, per image and per training batch.

The teacher cache stores one :class:`ImageTargets` per frame; the flow trainer rebuilds a batch
with :func:`stack_targets` and trains on a :class:`PairBatch`. The on-the-fly mode builds the
same :class:`PairBatch` by running the teacher inside the worker (:func:`pair_batch_on_the_fly`),
so both modes feed one training step with identical tensors.

    outputs = teacher_outputs(teacher, images)              # RFCNOutput, no grad
    per_image = split_targets(outputs)                      # list[ImageTargets] → cache rows
    batch_targets = stack_targets(per_image, image_size)    # RFCNOutput again, RoIs re-indexed
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from semidff.models.rfcn import RFCN, RFCNOutput


@dataclass
class ImageTargets:
    """The teacher's outputs on one frame (what the cache stores per frame).

    features: (C, h, w) the feature map (the regression target, Eq. 4, and the key features to warp).
    rpn_cls_logits: (2A, h, w), rpn_deltas: (4A, h, w): the RPN's dense outputs (Eq. 6-9).
    rois: (R, 4) float32 x1, y1, x2, y2 in network-input pixels: the teacher's proposals, which
        the student's PS heads pool too (row i of the student ↔ row i of the teacher).
    cls_logits: (R, num_classes + 1), box_deltas: (R, 8): the R-FCN outputs on those RoIs.
    """

    features: torch.Tensor
    rpn_cls_logits: torch.Tensor
    rpn_deltas: torch.Tensor
    rois: torch.Tensor
    cls_logits: torch.Tensor
    box_deltas: torch.Tensor


@dataclass
class PairBatch:
    """One stage-2 training batch of (key, current) frame pairs of the same input size.

    key_images, cur_images: (N, 3, H, W) float32 network input (semidff.preprocess.normalize_frames).
    key_features: (N, C, h, w) the teacher's features of the key frames (what the flow warps, Eq. 1).
    teacher: the teacher's RFCNOutput on the current frames (features = the Eq. 4 target; RoIs,
        logits and deltas = the Eq. 5 targets), RoIs as (R, 5) with batch indices.
    offsets: (N,) int64 frames from key to current (d = cur - key).
    """

    key_images: torch.Tensor
    cur_images: torch.Tensor
    key_features: torch.Tensor
    teacher: RFCNOutput
    offsets: torch.Tensor

    @property
    def image_size(self) -> tuple[int, int]:
        return self.teacher.image_size

    def to(self, device: torch.device | str) -> "PairBatch":
        teacher = self.teacher
        moved = RFCNOutput(
            features=teacher.features.to(device) if teacher.features is not None else None,
            rpn_cls_logits=teacher.rpn_cls_logits.to(device),
            rpn_deltas=teacher.rpn_deltas.to(device),
            rois=teacher.rois.to(device),
            cls_logits=teacher.cls_logits.to(device),
            box_deltas=teacher.box_deltas.to(device),
            image_size=teacher.image_size,
        )
        return PairBatch(
            key_images=self.key_images.to(device),
            cur_images=self.cur_images.to(device),
            key_features=self.key_features.to(device),
            teacher=moved,
            offsets=self.offsets.to(device),
        )


@torch.no_grad()
def teacher_outputs(teacher: RFCN, images: torch.Tensor) -> RFCNOutput:
    """The frozen teacher on (N, 3, H, W) network-input images: features, proposals, head outputs."""
    return teacher(images)


def split_targets(output: RFCNOutput) -> list[ImageTargets]:
    """A batch RFCNOutput → one ImageTargets per image (RoIs grouped by their batch index)."""
    if output.features is None:
        raise ValueError("split_targets needs the features in the RFCNOutput (the regression target)")
    batch_index = output.rois[:, 0].round().long()
    targets = []
    for image in range(output.features.shape[0]):
        rows = batch_index == image
        targets.append(
            ImageTargets(
                features=output.features[image],
                rpn_cls_logits=output.rpn_cls_logits[image],
                rpn_deltas=output.rpn_deltas[image],
                rois=output.rois[rows, 1:5].float(),
                cls_logits=output.cls_logits[rows],
                box_deltas=output.box_deltas[rows],
            )
        )
    return targets


def stack_targets(targets: list[ImageTargets], image_size: tuple[int, int]) -> RFCNOutput:
    """ImageTargets of same-size frames → one batch RFCNOutput with (R, 5) batch-indexed RoIs."""
    if not targets:
        raise ValueError("stack_targets: no images")
    shapes = {tuple(t.features.shape) for t in targets}
    if len(shapes) != 1:
        raise ValueError(f"stack_targets: frames of different feature sizes in one batch: {sorted(shapes)}; batch same-size frames")
    rois = torch.cat(
        [
            torch.cat([torch.full((t.rois.shape[0], 1), float(i), dtype=torch.float32, device=t.rois.device), t.rois.float()], dim=1)
            for i, t in enumerate(targets)
        ]
    )
    return RFCNOutput(
        features=torch.stack([t.features for t in targets]),
        rpn_cls_logits=torch.stack([t.rpn_cls_logits for t in targets]),
        rpn_deltas=torch.stack([t.rpn_deltas for t in targets]),
        rois=rois,
        cls_logits=torch.cat([t.cls_logits for t in targets]),
        box_deltas=torch.cat([t.box_deltas for t in targets]),
        image_size=(int(image_size[0]), int(image_size[1])),
    )


@torch.no_grad()
def pair_batch_on_the_fly(teacher: RFCN, key_images: torch.Tensor, cur_images: torch.Tensor, offsets: torch.Tensor) -> PairBatch:
    """The on-the-fly mode: run the frozen teacher on both frames of each pair inside the worker.

    key_images, cur_images: (N, 3, H, W) network input. The key frames need only the features;
    the current frames need every output (same tensors the cache would have stored).
    """
    key_features = teacher.extract_features(key_images)
    return PairBatch(
        key_images=key_images,
        cur_images=cur_images,
        key_features=key_features,
        teacher=teacher_outputs(teacher, cur_images),
        offsets=offsets,
    )
