"""Supervised R-FCN loss (semidff/losses/supervised.py): DFF anchor labelling, RoI targets, OHEM, normalisations."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from semidff.losses.supervised import label_anchors, rfcn_supervised_loss, sample_rois
from semidff.ops.boxes import RFCN_DELTA_STDS, RPN_DELTA_STDS, decode_boxes
from tests.rfcn_records import rfcn_output




# --------------------------------------------------------------------------- label_anchors


def test_label_anchors_hand_made_case():
    gt = torch.tensor([[10.0, 10, 49, 49], [60, 10, 89, 29]])
    anchors = torch.tensor(
        [
            [10.0, 10, 49, 49],  # IoU 1 with gt 0                          → positive
            [10, 10, 49, 53],  # IoU 40/44 = 0.91                          → positive
            [10, 10, 49, 69],  # IoU 2/3, not the best of any GT           → ignored
            [60, 60, 90, 90],  # IoU 0                                     → negative
            [-1, 10, 48, 49],  # IoU 0.76 but sticks out of the image      → ignored
            [60, 10, 89, 49],  # IoU 0.5, best anchor of gt 1              → positive
            [0, 0, 99, 99],  # IoU 0.16                                    → negative
            [0, 0, 99, 100],  # y2 = H: not fully inside                   → ignored
            [60, 10, 89, 49],  # ties with anchor 5 for gt 1               → positive
            [0, 0, 59, 59],  # IoU 1600/3600 = 0.44 in [0.3, 0.7)          → ignored
        ]
    )
    labels, targets = label_anchors(anchors, gt, image_size=(100, 100), generator=torch.Generator().manual_seed(0))
    assert labels.tolist() == [1, 1, -1, 0, -1, 1, 0, -1, 1, -1]
    positive = labels == 1
    decoded = decode_boxes(anchors[positive], targets[positive], RPN_DELTA_STDS)
    torch.testing.assert_close(decoded, gt[[0, 0, 1, 1]], atol=1e-4, rtol=0)
    assert targets[~positive].abs().sum().item() == 0.0


def test_label_anchors_thresholds_are_inclusive_for_positive_and_exclusive_for_negative():
    gt = torch.tensor([[0.0, 0, 99, 99]])
    # IoU 0.5 and 0.25 are exact in float, so they sit right on the thresholds below.
    anchors = torch.tensor([[0.0, 0, 99, 99], [0, 0, 99, 199], [0, 0, 99, 399]])  # IoU 1, 0.5, 0.25
    labels, _ = label_anchors(anchors, gt, image_size=(400, 100), positive_iou=0.5, negative_iou=0.25)
    assert labels.tolist() == [1, 1, -1]  # 0.5 ≥ 0.5 positive; 0.25 is not < 0.25, so ignored
    labels, _ = label_anchors(anchors, gt, image_size=(400, 100), positive_iou=0.7, negative_iou=0.3)
    assert labels.tolist() == [1, -1, 0]


def _jittered_copies(box, count, seed, amount=3.0):
    noise = (torch.rand(count, 4, generator=torch.Generator().manual_seed(seed)) - 0.5) * 2 * amount
    return box[None, :] + noise


def _far_negatives(count, seed):
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=g) * torch.tensor([150.0, 500.0]) + torch.tensor([400.0, 0.0])
    size = torch.rand(count, 2, generator=g) * 30 + 10
    return torch.cat([corner, corner + size], dim=1)


@pytest.mark.parametrize("num_close, expected_fg", [(300, 128), (10, 10)])
def test_label_anchors_subsamples_to_batch_size_with_at_most_half_foreground(num_close, expected_fg):
    gt = torch.tensor([[100.0, 100, 299, 299]])
    anchors = torch.cat([_jittered_copies(gt[0], num_close, seed=1), _far_negatives(2000, seed=2)])
    labels, targets = label_anchors(anchors, gt, image_size=(600, 600), generator=torch.Generator().manual_seed(3))
    assert (labels == 1).sum().item() == expected_fg
    assert (labels == 0).sum().item() == 256 - expected_fg
    assert (labels == 1)[num_close:].sum().item() == 0  # only the close copies can be positive
    assert (labels == 0)[:num_close].sum().item() == 0
    decoded = decode_boxes(anchors[labels == 1], targets[labels == 1], RPN_DELTA_STDS)
    torch.testing.assert_close(decoded, gt.expand(expected_fg, 4), atol=1e-3, rtol=0)


def test_label_anchors_subsampling_is_reproducible_with_a_generator():
    gt = torch.tensor([[100.0, 100, 299, 299]])
    anchors = torch.cat([_jittered_copies(gt[0], 300, seed=1), _far_negatives(2000, seed=2)])
    first, _ = label_anchors(anchors, gt, (600, 600), generator=torch.Generator().manual_seed(7))
    again, _ = label_anchors(anchors, gt, (600, 600), generator=torch.Generator().manual_seed(7))
    other, _ = label_anchors(anchors, gt, (600, 600), generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_label_anchors_without_gt_samples_only_negatives():
    anchors = _far_negatives(1000, seed=4)
    labels, targets = label_anchors(anchors, torch.zeros(0, 4), image_size=(600, 600))
    assert (labels == 0).sum().item() == 256 and (labels == 1).sum().item() == 0
    assert targets.abs().sum().item() == 0.0
    labels, _ = label_anchors(anchors[:10], torch.zeros(0, 4), image_size=(600, 600))
    assert labels.tolist() == [0] * 10


# --------------------------------------------------------------------------- sample_rois


def test_sample_rois_labels_and_targets():
    gt = torch.tensor([[0.0, 0, 99, 99], [200, 200, 299, 299]])
    gt_labels = torch.tensor([3, 7])
    boxes = torch.tensor(
        [
            [0.0, 0, 99, 99],  # IoU 1 → class 3
            [0, 0, 99, 149],  # IoU 2/3 → class 3
            [0, 0, 199, 99],  # IoU exactly 0.5 → class 3 (FG_THRESH is inclusive)
            [0, 0, 99, 249],  # IoU 0.4 → background
            [200, 200, 299, 299],  # → class 7
            [150, 150, 170, 170],  # no overlap → background
        ]
    )
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
    labels, targets = sample_rois(rois, gt, gt_labels)
    assert labels.tolist() == [3, 3, 3, 0, 7, 0]
    foreground = labels > 0
    decoded = decode_boxes(boxes[foreground], targets[foreground], RFCN_DELTA_STDS)
    torch.testing.assert_close(decoded, gt[[0, 0, 0, 1]], atol=1e-4, rtol=0)
    assert targets[~foreground].abs().sum().item() == 0.0
    labels, targets = sample_rois(rois, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert labels.tolist() == [0] * 6 and targets.abs().sum().item() == 0.0


# --------------------------------------------------------------------------- rfcn_supervised_loss

NUM_ANCHORS, FEAT_H, FEAT_W, IMAGE_SIZE, NUM_CLASSES = 3, 4, 5, (64, 80), 5


def _anchors():
    """Square anchors of side 16, 24, 32 centred on each stride-16 cell, order (h, w, a)."""
    base = torch.tensor([[0.0, 0, 15, 15], [-4, -4, 19, 19], [-8, -8, 23, 23]])
    ys, xs = torch.meshgrid(torch.arange(FEAT_H) * 16.0, torch.arange(FEAT_W) * 16.0, indexing="ij")
    shifts = torch.stack([xs, ys, xs, ys], dim=-1).reshape(-1, 1, 4)
    return (shifts + base[None]).reshape(-1, 4)


def _to_logit_maps(per_anchor):
    """(N, M, 2) [bg, fg] logits → (N, 2A, h, w) with channels [bg of all a, fg of all a]."""
    n = per_anchor.shape[0]
    return per_anchor.reshape(n, FEAT_H, FEAT_W, NUM_ANCHORS, 2).permute(0, 4, 3, 1, 2).reshape(n, -1, FEAT_H, FEAT_W)


def _to_delta_maps(per_anchor):
    """(N, M, 4) deltas → (N, 4A, h, w) with 4 consecutive channels per anchor."""
    n = per_anchor.shape[0]
    return per_anchor.reshape(n, FEAT_H, FEAT_W, NUM_ANCHORS, 4).permute(0, 3, 4, 1, 2).reshape(n, -1, FEAT_H, FEAT_W)


def _random_rois(num_images, per_image, seed):
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(num_images * per_image, 2, generator=g) * torch.tensor([60.0, 45.0])
    size = torch.rand(num_images * per_image, 2, generator=g) * 30 + 4
    batch_index = torch.arange(num_images).repeat_interleave(per_image).float()[:, None]
    return torch.cat([batch_index, corner, corner + size], dim=1)


def _outputs(num_images=1, rois_per_image=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    num = FEAT_H * FEAT_W * NUM_ANCHORS
    rois = _random_rois(num_images, rois_per_image, seed + 1)
    return rfcn_output(
        rpn_cls_logits=torch.randn(num_images, 2 * NUM_ANCHORS, FEAT_H, FEAT_W, generator=g),
        rpn_deltas=torch.randn(num_images, 4 * NUM_ANCHORS, FEAT_H, FEAT_W, generator=g),
        rois=rois,
        cls_logits=torch.randn(len(rois), NUM_CLASSES + 1, generator=g) * 2,
        box_deltas=torch.randn(len(rois), 8, generator=g),
    ), num


GT_BOXES = torch.tensor([[8.0, 8, 39, 39], [40, 20, 63, 43]])
GT_LABELS = torch.tensor([2, 5])


def test_rpn_terms_use_hwa_order_and_dff_normalisation():
    output, num = _outputs()
    anchors = _anchors()
    loss = rfcn_supervised_loss(
        output, anchors, [GT_BOXES], [GT_LABELS], IMAGE_SIZE, generator=torch.Generator().manual_seed(0)
    )
    labels, targets = label_anchors(anchors, GT_BOXES, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    assert (labels == 1).sum().item() > 0 and (labels == 0).sum().item() > 0
    # Per-anchor logits/deltas read from the maps with explicit (h, w, a) indexing.
    m = torch.arange(num)
    a, cell = m % NUM_ANCHORS, m // NUM_ANCHORS
    y, x = cell // FEAT_W, cell % FEAT_W
    logits = torch.stack([output.rpn_cls_logits[0, a, y, x], output.rpn_cls_logits[0, NUM_ANCHORS + a, y, x]], dim=1)
    deltas = torch.stack([output.rpn_deltas[0, 4 * a + k, y, x] for k in range(4)], dim=1)
    valid = labels >= 0
    torch.testing.assert_close(loss.rpn_cls, F.cross_entropy(logits[valid], labels[valid]))
    positive = labels == 1
    expected_box = F.smooth_l1_loss(deltas[positive], targets[positive], beta=1.0, reduction="sum") / 256
    torch.testing.assert_close(loss.rpn_box, expected_box)


def test_ohem_keeps_exactly_the_128_hardest_rois():
    output, _ = _outputs(rois_per_image=300)
    # The caller appends the GT boxes as RoIs (with some head outputs for them).
    output.rois = torch.cat([output.rois, torch.cat([torch.zeros(2, 1), GT_BOXES], dim=1)])
    output.cls_logits = torch.cat([output.cls_logits, torch.zeros(2, NUM_CLASSES + 1)]).requires_grad_()
    output.box_deltas = torch.cat([output.box_deltas, torch.zeros(2, 8)]).requires_grad_()
    loss = rfcn_supervised_loss(output, _anchors(), [GT_BOXES], [GT_LABELS], IMAGE_SIZE)

    labels, targets = sample_rois(output.rois, GT_BOXES, GT_LABELS)
    assert 0 < (labels > 0).sum().item() < len(labels)
    ce = F.cross_entropy(output.cls_logits, labels, reduction="none")
    box = F.smooth_l1_loss(output.box_deltas[:, 4:8], targets, beta=1.0, reduction="none").sum(1) * (labels > 0)
    hardest = torch.topk((ce + box).detach(), 128).indices
    torch.testing.assert_close(loss.rfcn_cls, ce[hardest].mean())
    torch.testing.assert_close(loss.rfcn_box, box[hardest].sum() / 128)
    loss.total.backward()
    rows_with_gradient = output.cls_logits.grad.abs().sum(1) > 0
    assert rows_with_gradient.sum().item() == 128
    assert rows_with_gradient[hardest].all()
    assert output.box_deltas.grad[:, :4].abs().sum().item() == 0.0  # background box columns are unused


def test_ohem_selects_per_image():
    output, _ = _outputs(num_images=2, rois_per_image=150, seed=5)
    output.cls_logits.requires_grad_()
    gt_boxes, gt_labels = [GT_BOXES, GT_BOXES[:1]], [GT_LABELS, GT_LABELS[:1]]
    loss = rfcn_supervised_loss(output, _anchors(), gt_boxes, gt_labels, IMAGE_SIZE)
    loss.rfcn_cls.backward()
    kept = output.cls_logits.grad.abs().sum(1) > 0
    assert kept[:150].sum().item() == 128 and kept[150:].sum().item() == 128


def test_without_ohem_cls_is_mean_over_rois_and_box_is_divided_by_roi_count():
    output, _ = _outputs(seed=2)
    loss = rfcn_supervised_loss(output, _anchors(), [GT_BOXES], [GT_LABELS], IMAGE_SIZE, ohem=False)
    labels, targets = sample_rois(output.rois, GT_BOXES, GT_LABELS)
    foreground = labels > 0
    torch.testing.assert_close(loss.rfcn_cls, F.cross_entropy(output.cls_logits, labels))
    expected_box = F.smooth_l1_loss(output.box_deltas[foreground, 4:8], targets[foreground], beta=1.0, reduction="sum")
    torch.testing.assert_close(loss.rfcn_box, expected_box / 300)
    torch.testing.assert_close(loss.total, loss.rpn_cls + loss.rpn_box + loss.rfcn_cls + loss.rfcn_box)


@pytest.mark.parametrize("gt_counts", [(0,), (0, 0), (2, 0)])
def test_images_without_gt_give_a_finite_positive_loss(gt_counts):
    output, _ = _outputs(num_images=len(gt_counts), rois_per_image=100, seed=3)
    for name in ("rpn_cls_logits", "rpn_deltas", "cls_logits", "box_deltas"):
        getattr(output, name).requires_grad_()
    gt_boxes = [GT_BOXES[:count] for count in gt_counts]
    gt_labels = [GT_LABELS[:count] for count in gt_counts]
    loss = rfcn_supervised_loss(output, _anchors(), gt_boxes, gt_labels, IMAGE_SIZE)
    assert math.isfinite(loss.total.item()) and loss.total.item() > 0
    if sum(gt_counts) == 0:
        assert loss.rpn_box.item() == 0.0 and loss.rfcn_box.item() == 0.0
    loss.total.backward()
    assert torch.isfinite(output.rpn_cls_logits.grad).all() and torch.isfinite(output.cls_logits.grad).all()


def test_loss_decreases_as_predictions_move_toward_targets():
    output, num = _outputs(seed=4)
    anchors = _anchors()
    anchor_labels, anchor_targets = label_anchors(
        anchors, GT_BOXES, IMAGE_SIZE, generator=torch.Generator().manual_seed(1)
    )
    roi_labels, roi_targets = sample_rois(output.rois, GT_BOXES, GT_LABELS)
    ideal_rpn_logits = torch.zeros(1, num, 2)
    ideal_rpn_logits[0, :, 1] = torch.where(anchor_labels == 1, 6.0, -6.0)
    ideal_box = output.box_deltas.clone()
    ideal_box[:, 4:8] = roi_targets
    ideal = rfcn_output(
        rpn_cls_logits=_to_logit_maps(ideal_rpn_logits),
        rpn_deltas=_to_delta_maps(anchor_targets[None]),
        rois=output.rois,
        cls_logits=6.0 * F.one_hot(roi_labels, NUM_CLASSES + 1).float(),
        box_deltas=ideal_box,
    )
    totals = []
    for alpha in (0.0, 0.5, 1.0):
        mixed = rfcn_output(
            **{
                name: (1 - alpha) * getattr(output, name) + alpha * getattr(ideal, name)
                for name in ("rpn_cls_logits", "rpn_deltas", "cls_logits", "box_deltas")
            },
            rois=output.rois,
        )
        totals.append(
            rfcn_supervised_loss(
                mixed, anchors, [GT_BOXES], [GT_LABELS], IMAGE_SIZE, generator=torch.Generator().manual_seed(1)
            )
        )
    assert totals[0].total > totals[1].total > totals[2].total
    assert totals[2].rpn_box.item() == pytest.approx(0.0, abs=1e-10)
    assert totals[2].rfcn_box.item() == pytest.approx(0.0, abs=1e-10)


def test_bad_inputs_raise_with_a_reason():
    output, _ = _outputs()
    with pytest.raises(ValueError, match="one \\(possibly empty\\) tensor per image"):
        rfcn_supervised_loss(output, _anchors(), [GT_BOXES, GT_BOXES], [GT_LABELS, GT_LABELS], IMAGE_SIZE)
    with pytest.raises(ValueError, match="anchors"):
        rfcn_supervised_loss(output, _anchors()[:-1], [GT_BOXES], [GT_LABELS], IMAGE_SIZE)
    with pytest.raises(ValueError, match="gt_boxes"):
        label_anchors(_anchors(), torch.zeros(2, 5), IMAGE_SIZE)
