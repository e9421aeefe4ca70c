"""Semantic distillation loss (semidff/losses/semantic.py): Eq. 5-9, switches, λ and RPN channel pairing."""
from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from semidff.losses.kd import kd_loss
from semidff.losses.semantic import joint_loss, semantic_loss
from tests.rfcn_records import rfcn_output




def _outputs(seed: int, n=2, anchors=3, h=4, w=5, rois=6, classes=4) -> HeadOutputs:
    g = torch.Generator().manual_seed(seed)
    boxes = torch.rand(rois, 4, generator=torch.Generator().manual_seed(99)) * 50
    return rfcn_output(
        rpn_cls_logits=torch.randn(n, 2 * anchors, h, w, generator=g),
        rpn_deltas=torch.randn(n, 4 * anchors, h, w, generator=g),
        rois=torch.cat([torch.zeros(rois, 1), boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1),
        cls_logits=torch.randn(rois, classes + 1, generator=g),
        box_deltas=torch.randn(rois, 8, generator=g),
    )


def test_identical_student_and_teacher_give_zero():
    teacher = _outputs(0)
    loss = semantic_loss(teacher, teacher, temperature=2.0)
    for term in (loss.rpn_cls, loss.rpn_box, loss.rfcn_cls, loss.rfcn_box, loss.total):
        assert term.item() == pytest.approx(0.0, abs=1e-7)


def test_terms_match_their_definitions():
    student, teacher = _outputs(1), _outputs(2)
    loss = semantic_loss(student, teacher, temperature=2.0)
    rpn_student = student.rpn_cls_logits.reshape(2, 2, 3, 4, 5)
    rpn_teacher = teacher.rpn_cls_logits.reshape(2, 2, 3, 4, 5)
    torch.testing.assert_close(loss.rpn_cls, kd_loss(rpn_student, rpn_teacher, 2.0, dim=1))  # count N·A·h·w
    torch.testing.assert_close(loss.rfcn_cls, kd_loss(student.cls_logits, teacher.cls_logits, 2.0))  # count R
    torch.testing.assert_close(loss.rpn_box, (student.rpn_deltas - teacher.rpn_deltas).pow(2).mean())
    torch.testing.assert_close(loss.rfcn_box, (student.box_deltas - teacher.box_deltas).pow(2).mean())
    torch.testing.assert_close(loss.total, loss.rpn_cls + loss.rpn_box + loss.rfcn_cls + loss.rfcn_box)


@pytest.mark.parametrize(
    "switch, removed",
    [
        ("class_knowledge", ["rfcn_cls"]),
        ("attention_knowledge", ["rpn_cls"]),
        ("box_knowledge", ["rpn_box", "rfcn_box"]),
    ],
)
def test_each_switch_removes_exactly_its_terms(switch, removed):
    student, teacher = _outputs(3), _outputs(4)
    full = semantic_loss(student, teacher)
    partial = semantic_loss(student, teacher, **{switch: False})
    for name in ("rpn_cls", "rpn_box", "rfcn_cls", "rfcn_box"):
        if name in removed:
            assert getattr(partial, name).item() == 0.0
            assert getattr(full, name).item() > 0.0
        else:
            assert getattr(partial, name).item() == getattr(full, name).item()
    kept = [name for name in ("rpn_cls", "rpn_box", "rfcn_cls", "rfcn_box") if name not in removed]
    expected_total = sum(getattr(full, name) for name in kept)
    torch.testing.assert_close(partial.total, expected_total)


def test_switched_off_terms_do_not_read_teacher_fields():
    student = _outputs(5)
    rpn_only_teacher = SimpleNamespace(rpn_cls_logits=_outputs(6).rpn_cls_logits)
    loss = semantic_loss(student, rpn_only_teacher, class_knowledge=False, box_knowledge=False)
    assert loss.rpn_cls.item() > 0.0
    assert loss.total.item() == loss.rpn_cls.item()


def test_box_weight_scales_only_box_terms():
    student, teacher = _outputs(7), _outputs(8)
    base = semantic_loss(student, teacher)
    weighted = semantic_loss(student, teacher, box_weight=2.5)
    assert weighted.rpn_cls.item() == base.rpn_cls.item()
    assert weighted.rfcn_cls.item() == base.rfcn_cls.item()
    torch.testing.assert_close(weighted.rpn_box, 2.5 * base.rpn_box)
    torch.testing.assert_close(weighted.rfcn_box, 2.5 * base.rfcn_box)


def test_rpn_channels_pair_a_with_a_plus_num_anchors():
    # A = 2 anchors at one location; channels [bg0, bg1, fg0, fg1]; the student is 50/50 everywhere.
    student = rfcn_output(
        torch.zeros(1, 4, 1, 1), torch.zeros(1, 8, 1, 1), torch.zeros(0, 5), torch.zeros(0, 5), torch.zeros(0, 8)
    )

    def rpn_kd(teacher_channels):
        teacher = replace(student, rpn_cls_logits=torch.tensor(teacher_channels).reshape(1, 4, 1, 1))
        return semantic_loss(student, teacher).rpn_cls.item()

    # bg1 = fg1 = 5: both anchors are still 50/50, so 0 with the right pairing (the adjacent
    # pairing (bg0, bg1), (fg0, fg1) would compare 0 with 5).
    assert rpn_kd([0.0, 5.0, 0.0, 5.0]) == pytest.approx(0.0, abs=1e-7)
    # bg0 = bg1 = ln 3: both anchors are (3/4, 1/4) against (1/2, 1/2) (adjacent pairing: 0).
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert rpn_kd([math.log(3.0), math.log(3.0), 0.0, 0.0]) == pytest.approx(expected, rel=1e-5)
    # The same logits read with the adjacent pairing, i.e. channels reordered to [0, 2, 1, 3].
    assert rpn_kd([math.log(3.0), 0.0, math.log(3.0), 0.0]) == pytest.approx(0.0, abs=1e-7)


def test_empty_rois_give_zero_rfcn_terms():
    student = replace(_outputs(11), rois=torch.zeros(0, 5), cls_logits=torch.zeros(0, 5), box_deltas=torch.zeros(0, 8))
    teacher = replace(_outputs(12), rois=torch.zeros(0, 5), cls_logits=torch.zeros(0, 5), box_deltas=torch.zeros(0, 8))
    loss = semantic_loss(student, teacher)
    assert loss.rfcn_cls.item() == 0.0 and loss.rfcn_box.item() == 0.0
    assert math.isfinite(loss.total.item()) and loss.total.item() > 0.0


def test_gradients_reach_student_only():
    student, teacher = _outputs(9), _outputs(10)
    for name in ("rpn_cls_logits", "rpn_deltas", "cls_logits", "box_deltas"):
        getattr(student, name).requires_grad_()
        getattr(teacher, name).requires_grad_()
    semantic_loss(student, teacher).total.backward()
    for name in ("rpn_cls_logits", "rpn_deltas", "cls_logits", "box_deltas"):
        assert getattr(student, name).grad.abs().sum().item() > 0.0
        assert getattr(teacher, name).grad is None


def test_joint_loss_is_the_weighted_sum():
    assert joint_loss(torch.tensor(2.0), torch.tensor(3.0), 0.5, 4.0).item() == pytest.approx(13.0)
