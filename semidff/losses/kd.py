"""Knowledge-distillation loss: temperature-softened KL(teacher ‖ student), Eq. 7-8.

The official Semi-DFF op (``knowledge_distillation.py``, dff-facts §3.2) computes
``T² · Σ p_t (log p_t − log p_s) / count`` where ``count`` is the number of distributions
(anchors or RoIs), and back-propagates ``T · (p_s − p_t) / count`` — the exact derivative, so
plain autograd reproduces it. Eq. 8 writes the cross-entropy ``−Σ P_t log P_s``; the KL form
differs only by the teacher's entropy, a constant for the student, and is 0 at a perfect match.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    dim: int = 1,
) -> torch.Tensor:
    """Mean KL divergence of the student's softmax from the teacher's, times T² (Eq. 7-8).

    student_logits, teacher_logits: same shape, any rank; softmax runs along ``dim``. Every other
        index is one distribution, e.g. (R, C+1) RoI logits with dim=1, or (N, 2, A, h, w) RPN
        logits with dim=1.
    temperature: T > 0 of Eq. 7. T² keeps the gradient scale comparable across T (Hinton et al.).
    Returns a scalar: T² · Σ p_t (log p_t − log p_s) / count, count = numel / size(dim).
    The teacher is detached; an empty input gives 0.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"kd_loss: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape (pool the student on the teacher's RoIs)"
        )
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"kd_loss: temperature must be a finite number > 0, got {temperature}")
    count = max(student_logits.numel() // max(student_logits.shape[dim], 1), 1)
    # at least fp32: cached fp16 teacher logits would otherwise make the whole loss fp16
    dtype = torch.promote_types(torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32)
    log_p_student = F.log_softmax(student_logits.to(dtype) / temperature, dim=dim)
    log_p_teacher = F.log_softmax(teacher_logits.detach().to(dtype) / temperature, dim=dim)
    # kl_div(input=log p_s, target=log p_t, log_target) = Σ p_t (log p_t − log p_s).
    kl_sum = F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True)
    return temperature * temperature * kl_sum / count
