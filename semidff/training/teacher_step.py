"""Stage 1 step: one supervised R-FCN update (Eq. 2-3), its optimiser and learning-rate schedule.

    optimizer = build_optimizer(rfcn, cfg.teacher_training, world_size)
    schedule = LearningRateSchedule.from_config(cfg.teacher_training, world_size, steps_per_epoch)
    for step, batch in enumerate(batches):
        set_learning_rate(optimizer, schedule(step))
        losses = train_step(model, optimizer, batch.to(device), cfg.loss.supervised)

As in DFF's training symbol, the ground-truth boxes are appended to the RPN's proposals as extra
RoIs (dff-facts §2.2: all proposals plus the GT boxes, BATCH_ROIS = -1), so the PS heads see
perfect foreground RoIs from the first step on. ``model`` may be the bare :class:`RFCN` or its
DDP wrapper (Ray Train's ``prepare_model``): the forward goes through the wrapper so that
gradients are averaged across workers, the anchors come from the wrapped module.

Learning rate (DFF: SGD, momentum 0.9, weight decay 5e-4, lr 2.5e-4 per image; dff-facts §3.1):
``lr = base_lr x (world_size x batch_size) / reference_batch_size`` (linear scaling with the
effective batch, since every loss term is a mean over the images of the batch and DDP averages
gradients over workers), raised linearly over the first ``warmup_steps`` updates and multiplied
by 0.1 after each epoch in ``lr_decay_epochs``. Only parameters with ``requires_grad`` are
optimised: frozen ResNet stages and frozen BatchNorm (buffers) are left out.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from semidff.config import SupervisedLossConfig, TeacherTrainingConfig
from semidff.losses.supervised import SupervisedLoss, rfcn_supervised_loss
from semidff.models.rfcn import RFCN
from semidff.training.teacher_data import TeacherBatch

LR_DECAY_FACTOR = 0.1
"""DFF multiplies the lr by 0.1 at each step (lr_step)."""


@dataclass(frozen=True)
class TeacherStepLosses:
    """The Eq. 2 terms of one step (already normalised, as floats), their sum, and the step's lr."""

    total: float
    rpn_cls: float
    rpn_box: float
    rfcn_cls: float
    rfcn_box: float
    num_images: int
    lr: float

    @classmethod
    def from_loss(cls, loss: SupervisedLoss, num_images: int, lr: float) -> "TeacherStepLosses":
        return cls(
            total=float(loss.total.detach()),
            rpn_cls=float(loss.rpn_cls.detach()),
            rpn_box=float(loss.rpn_box.detach()),
            rfcn_cls=float(loss.rfcn_cls.detach()),
            rfcn_box=float(loss.rfcn_box.detach()),
            num_images=num_images,
            lr=lr,
        )

    def loss_terms(self) -> dict[str, float]:
        """{"total": ..., "rpn_cls": ..., "rpn_box": ..., "rfcn_cls": ..., "rfcn_box": ...}."""
        terms = asdict(self)
        del terms["num_images"], terms["lr"]
        return terms


def unwrap(model: nn.Module) -> RFCN:
    """The RFCN inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def gt_rois(gt_boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-image (G_i, 4) boxes → (sum G_i, 5) RoIs [batch_index, x1, y1, x2, y2], image by image."""
    rois = [
        torch.cat([boxes.new_full((boxes.shape[0], 1), float(i)), boxes.reshape(-1, 4).float()], dim=1)
        for i, boxes in enumerate(gt_boxes)
    ]
    return torch.cat(rois, dim=0) if rois else torch.zeros((0, 5))


def supervised_loss(
    model: nn.Module, batch: TeacherBatch, loss_cfg: SupervisedLossConfig, generator: Optional[torch.Generator] = None
) -> SupervisedLoss:
    """Eq. 2-3 on one batch: R-FCN forward with the GT boxes as extra RoIs, then the DFF targets."""
    output = model(batch.images, extra_rois=gt_rois(batch.gt_boxes))
    anchors = unwrap(model).anchors(output.rpn_cls_logits.shape[2], output.rpn_cls_logits.shape[3])
    return rfcn_supervised_loss(
        output,
        anchors,
        batch.gt_boxes,
        batch.gt_labels,
        batch.image_size,
        rpn_batch_size=loss_cfg.rpn_batch_size,
        ohem=loss_cfg.ohem,
        ohem_rois=loss_cfg.ohem_rois,
        generator=generator,
    )


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: TeacherBatch,
    loss_cfg: SupervisedLossConfig,
    generator: Optional[torch.Generator] = None,
) -> TeacherStepLosses:
    """One SGD update on ``batch`` (already on the model's device); the model must be in train mode.

    Raises FloatingPointError when the loss is not finite (the lr is too high for this batch size,
    or the data holds degenerate boxes), before the weights are touched.
    """
    loss = supervised_loss(model, batch, loss_cfg, generator)
    if not torch.isfinite(loss.total):
        terms = {name: float(getattr(loss, name).detach()) for name in ("total", "rpn_cls", "rpn_box", "rfcn_cls", "rfcn_box")}
        raise FloatingPointError(
            f"teacher loss is {terms['total']} (rpn_cls {terms['rpn_cls']}, rpn_box {terms['rpn_box']}, "
            f"rfcn_cls {terms['rfcn_cls']}, rfcn_box {terms['rfcn_box']}) on samples {batch.samples}; "
            "lower teacher_training.base_lr or add teacher_training.warmup_steps"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.total.backward()
    optimizer.step()
    return TeacherStepLosses.from_loss(loss, len(batch), optimizer.param_groups[0]["lr"])


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters the optimiser updates: those with requires_grad (frozen stages excluded)."""
    return [p for p in model.parameters() if p.requires_grad]


def scaled_learning_rate(base_lr: float, world_size: int, batch_size: int, reference_batch_size: int) -> float:
    """base_lr for reference_batch_size images, scaled linearly to world_size x batch_size images."""
    if world_size < 1 or batch_size < 1 or reference_batch_size < 1:
        raise ValueError(
            f"world_size={world_size}, batch_size={batch_size}, reference_batch_size={reference_batch_size}: all must be >= 1"
        )
    return base_lr * world_size * batch_size / reference_batch_size


def build_optimizer(model: nn.Module, tcfg: TeacherTrainingConfig, world_size: int) -> torch.optim.SGD:
    """SGD with momentum and weight decay over the trainable parameters, at the scaled peak lr."""
    params = trainable_parameters(model)
    if not params:
        raise ValueError("the model has no trainable parameters; lower model.backbone.frozen_stages")
    lr = scaled_learning_rate(tcfg.base_lr, world_size, tcfg.batch_size, tcfg.reference_batch_size)
    return torch.optim.SGD(params, lr=lr, momentum=tcfg.momentum, weight_decay=tcfg.weight_decay)


@dataclass(frozen=True)
class LearningRateSchedule:
    """lr of update ``step`` (0-based): linear warm-up, then x0.1 after each decay step.

    peak_lr: the scaled lr. warmup_steps: updates 0..warmup_steps-1 use peak_lr x (step + 1) /
    warmup_steps. decay_steps: global steps at which the lr drops (epoch x steps_per_epoch).
    """

    peak_lr: float
    warmup_steps: int = 0
    decay_steps: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, tcfg: TeacherTrainingConfig, world_size: int, steps_per_epoch: int) -> "LearningRateSchedule":
        peak = scaled_learning_rate(tcfg.base_lr, world_size, tcfg.batch_size, tcfg.reference_batch_size)
        return cls(peak, tcfg.warmup_steps, tuple(sorted(e * steps_per_epoch for e in tcfg.lr_decay_epochs)))

    def __call__(self, step: int) -> float:
        lr = self.peak_lr * LR_DECAY_FACTOR ** sum(step >= d for d in self.decay_steps)
        if step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's lr."""
    for group in optimizer.param_groups:
        group["lr"] = lr
