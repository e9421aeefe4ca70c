"""Semantic (distillation) loss of Semi-DFF stage 2, Eq. 5-9, with the official normalisations.

The student's RPN and R-FCN heads run on the propagated feature and pool on the teacher's RoIs;
four terms transfer the teacher's knowledge (paper §3.4, Table 3c; dff-facts §3.2):

    rpn_cls   RPN 2-way KD per anchor, count N·A·h·w                  "attention maps"
    rfcn_cls  R-FCN (C+1)-way KD per teacher RoI, count R              "inter-class relationship"
    rpn_box   mean over elements of (student − teacher)² raw RPN deltas  ┐ "box locations",
    rfcn_box  mean over (R, 8) of (student − teacher)² raw R-FCN deltas  ┘ both × λ = box_weight

Deltas are compared in their std-normalised units, background columns of the R-FCN box included.
The official code has no λ (box terms weight 1), so ``box_weight=1`` reproduces it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from semidff.losses.kd import kd_loss
from semidff.ops.rpn_layout import rpn_logits_per_anchor

if TYPE_CHECKING:  # only for annotations: losses must not need the model code at run time
    from semidff.models.rfcn import RFCNOutput


@dataclass
class SemanticLoss:
    """The four Eq. 5 terms as they enter ``total`` (box terms already multiplied by λ); scalars."""

    rpn_cls: torch.Tensor
    rpn_box: torch.Tensor
    rfcn_cls: torch.Tensor
    rfcn_box: torch.Tensor
    total: torch.Tensor


def semantic_loss(
    student: RFCNOutput,
    teacher: RFCNOutput,
    temperature: float = 1.0,
    box_weight: float = 1.0,
    class_knowledge: bool = True,
    attention_knowledge: bool = True,
    box_knowledge: bool = True,
) -> SemanticLoss:
    """Eq. 5-9: distil the teacher's detection outputs into the student's.

    student, teacher: RFCNOutput-like records, duck-typed on rpn_cls_logits (N, 2A, h, w),
        rpn_deltas (N, 4A, h, w), cls_logits (R, C+1) and box_deltas (R, 8). The student's R-FCN
        outputs must be pooled on the teacher's R RoIs (row i ↔ row i); teacher tensors are detached.
    temperature: T of Eq. 7 for both KD terms.
    box_weight: λ of Eq. 6, multiplies both box terms.
    class_knowledge / attention_knowledge / box_knowledge: the Table 3c switches for the R-FCN
        KD, the RPN KD and the two box terms. A switched-off term is an exact 0 and the teacher
        fields it would read are not touched.
    """
    zero = student.cls_logits.new_zeros(())
    rpn_cls = rpn_box = rfcn_cls = rfcn_box = zero
    if attention_knowledge:  # Eq. 7-8 on the RPN, count N·A·h·w
        rpn_cls = kd_loss(
            rpn_logits_per_anchor(student.rpn_cls_logits),
            rpn_logits_per_anchor(teacher.rpn_cls_logits),
            temperature,
            dim=2,
        )
    if class_knowledge:  # Eq. 7-8 on the R-FCN, count R
        rfcn_cls = kd_loss(student.cls_logits, teacher.cls_logits, temperature, dim=1)
    if box_knowledge:  # Eq. 6 λ · Eq. 9, as a mean over elements (official normalisation)
        rpn_box = box_weight * _mean_squared(student.rpn_deltas, teacher.rpn_deltas, "rpn_deltas")
        rfcn_box = box_weight * _mean_squared(student.box_deltas, teacher.box_deltas, "box_deltas")
    return SemanticLoss(rpn_cls, rpn_box, rfcn_cls, rfcn_box, total=rpn_cls + rpn_box + rfcn_cls + rfcn_box)


def joint_loss(
    regression: torch.Tensor, semantic_total: torch.Tensor, regression_weight: float, semantic_weight: float
) -> torch.Tensor:
    """Table 3f "joint training": one weighted sum of L_reg (Eq. 4) and L_sem (Eq. 5) in a single step."""
    return regression_weight * regression + semantic_weight * semantic_total


def _mean_squared(student: torch.Tensor, teacher: torch.Tensor, name: str) -> torch.Tensor:
    if student.shape != teacher.shape:
        raise ValueError(
            f"semantic_loss: student {name} {tuple(student.shape)} and teacher {name} {tuple(teacher.shape)} differ"
        )
    if student.numel() == 0:  # no RoIs: nothing to match
        return student.sum()
    return F.mse_loss(student, teacher.detach())

