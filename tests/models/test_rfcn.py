"""R-FCN heads, proposals and post-processing (semidff/models/rfcn.py) on a tiny stand-in extractor."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from semidff.models.rfcn import RFCN, Detections, ProposalGenerator, PSRoIHead, RFCNOutput, RPNHead
from semidff.ops.anchors import base_anchors
from semidff.ops.boxes import box_iou


class StandInExtractor(nn.Sequential):
    """Four stride-2 convs (stride 16 like the ResNet features) and a dilated 3×3, with out_channels."""

    def __init__(self, out_channels: int = 16, width: int = 16):
        super().__init__(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, out_channels, 3, padding=2, dilation=2),
            nn.ReLU(),
        )
        self.out_channels = out_channels


def tiny_rfcn(**overrides) -> RFCN:
    args = dict(
        num_classes=3,
        anchor_scales=(2, 4),
        group_size=3,
        pre_nms_top_n=100,
        post_nms_top_n=20,
    )
    args.update(overrides)
    return RFCN(StandInExtractor(), **args)


def logits_of(probs: list[float]) -> list[float]:
    """Logits whose softmax is exactly ``probs``."""
    return [math.log(p) for p in probs]


# --------------------------------------------------------------------------------------------
# construction and record shapes


def test_heads_are_initialised_like_dff():
    torch.manual_seed(0)
    rpn = RPNHead(256, num_anchors=9)
    ps = PSRoIHead(256, num_classes=30, group_size=7)
    assert rpn.rpn_cls_score.out_channels == 18 and rpn.rpn_bbox_pred.out_channels == 36
    assert ps.rfcn_cls.out_channels == 7 * 7 * 31 and ps.rfcn_bbox.out_channels == 7 * 7 * 8
    for conv in (rpn.rpn_cls_score, rpn.rpn_bbox_pred, ps.rfcn_cls, ps.rfcn_bbox):
        assert conv.kernel_size == (1, 1)
        assert torch.all(conv.bias == 0)
        assert conv.weight.std().item() == pytest.approx(0.01, rel=0.1)


def test_rejects_odd_feature_channels():
    extractor = StandInExtractor(out_channels=15)
    with pytest.raises(ValueError, match="out_channels"):
        RFCN(extractor, num_classes=3)


def test_output_record_shapes_and_proposals():
    torch.manual_seed(0)
    model = tiny_rfcn().eval()
    images = torch.randn(2, 3, 64, 96) * 50
    output = model(images)

    assert isinstance(output, RFCNOutput)
    assert output.image_size == (64, 96)
    num_anchors = 3 * 2
    assert output.features.shape == (2, 16, 4, 6)
    assert torch.equal(output.features, model.extract_features(images))
    assert output.rpn_cls_logits.shape == (2, 2 * num_anchors, 4, 6)
    assert output.rpn_deltas.shape == (2, 4 * num_anchors, 4, 6)
    # Exactly post_nms_top_n RoIs per image, image by image, inside the image, no gradient.
    assert output.rois.shape == (40, 5)
    assert torch.equal(output.rois[:, 0], torch.tensor([0.0] * 20 + [1.0] * 20))
    x1, y1, x2, y2 = output.rois[:, 1:].unbind(dim=1)
    assert torch.all((x1 >= 0) & (x2 <= 95) & (y1 >= 0) & (y2 <= 63))
    assert torch.all((x2 >= x1) & (y2 >= y1))
    assert not output.rois.requires_grad
    assert output.cls_logits.shape == (40, 4)
    assert output.box_deltas.shape == (40, 8)


def test_rpn_reads_first_feature_half_and_ps_heads_the_second():
    torch.manual_seed(0)
    model = tiny_rfcn()
    features = torch.rand(1, 16, 4, 6)
    rois = torch.tensor([[0.0, 0, 0, 47, 47], [0.0, 16, 8, 80, 60]])
    base = model.forward_heads(features, (64, 96), rois=rois)
    changed_rpn_half = features.clone()
    changed_rpn_half[:, :8] += 1.0
    out = model.forward_heads(changed_rpn_half, (64, 96), rois=rois)
    assert not torch.allclose(out.rpn_cls_logits, base.rpn_cls_logits)
    assert torch.equal(out.cls_logits, base.cls_logits) and torch.equal(out.box_deltas, base.box_deltas)
    changed_ps_half = features.clone()
    changed_ps_half[:, 8:] += 1.0
    out = model.forward_heads(changed_ps_half, (64, 96), rois=rois)
    assert torch.equal(out.rpn_cls_logits, base.rpn_cls_logits)
    assert not torch.allclose(out.cls_logits, base.cls_logits)


def test_forward_heads_uses_given_rois_and_appends_extra_rois():
    torch.manual_seed(0)
    model = tiny_rfcn()
    features = torch.rand(2, 16, 4, 6)
    rois = torch.tensor([[0.0, 0, 0, 31, 31], [1.0, 10, 20, 60, 50], [1.0, 40, 0, 95, 63]])
    extra = torch.tensor([[0.0, 5, 5, 40, 30]])

    given = model.forward_heads(features, (64, 96), rois=rois)
    assert torch.equal(given.rois, rois)
    cls_logits, box_deltas = model.ps_roi_head(features[:, 8:], rois)
    assert torch.equal(given.cls_logits, cls_logits) and torch.equal(given.box_deltas, box_deltas)

    with_extra = model.forward_heads(features, (64, 96), rois=rois, extra_rois=extra)
    assert torch.equal(with_extra.rois, torch.cat([rois, extra]))
    assert torch.allclose(with_extra.cls_logits[:3], given.cls_logits)
    assert with_extra.cls_logits.shape == (4, 4)

    proposals_and_extra = model.forward_heads(features, (64, 96), extra_rois=extra)
    assert proposals_and_extra.rois.shape == (2 * 20 + 1, 5)
    assert torch.equal(proposals_and_extra.rois[-1], extra[0])


def test_gradients_reach_extractor_and_heads():
    torch.manual_seed(0)
    model = tiny_rfcn()
    output = model(torch.randn(1, 3, 64, 64) * 50)
    (output.cls_logits.sum() + output.box_deltas.sum() + output.rpn_cls_logits.sum()).backward()
    assert model.ps_roi_head.rfcn_cls.weight.grad.abs().sum() > 0
    assert model.rpn_head.rpn_cls_score.weight.grad.abs().sum() > 0
    assert model.feature_extractor[0].weight.grad.abs().sum() > 0


def test_anchors_follow_the_grid():
    model = tiny_rfcn(anchor_scales=(8, 16, 32))
    anchors = model.anchors(2, 3)
    base = base_anchors(16, (0.5, 1.0, 2.0), (8, 16, 32))
    assert anchors.shape == (2 * 3 * 9, 4)
    assert torch.allclose(anchors[:9], base)
    assert torch.allclose(anchors[9:18], base + torch.tensor([16.0, 0, 16, 0]))  # next column
    assert torch.allclose(anchors[27:36], base + torch.tensor([0.0, 16, 0, 16]))  # next row


# --------------------------------------------------------------------------------------------
# proposals


def rpn_maps(fg_logits: list[float], deltas: list[list[float]], height: int, width: int, num_anchors: int):
    """(1, 2A, h, w) logits and (1, 4A, h, w) deltas from per-anchor values in (h, w, a) order."""
    fg = torch.tensor(fg_logits).reshape(height, width, num_anchors).permute(2, 0, 1)
    logits = torch.cat([torch.zeros_like(fg), fg])[None]  # background logit 0 for every anchor
    d = torch.tensor(deltas).reshape(height, width, num_anchors, 4).permute(2, 3, 0, 1)
    return logits, d.reshape(1, 4 * num_anchors, height, width)


def test_proposals_sort_decode_nms_and_pad_by_cycling():
    # 1 x 2 grid, 2 anchors per cell → anchors in (h, w, a) order.
    anchors = torch.tensor(
        [
            [0.0, 0, 19, 19],  # cell 0, a 0
            [2.0, 2, 21, 21],  # cell 0, a 1: overlaps anchor 0 (IoU ~0.67 after its shift below)
            [40.0, 0, 59, 19],  # cell 1, a 0
            [60.0, 20, 79, 39],  # cell 1, a 1
        ]
    )
    fg_logits = [3.0, 2.0, 1.0, 0.5]
    deltas = [[0, 0, 0, 0], [0, 0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 0]]  # dx 1 → 0.1·20 = 2 px right
    logits, rpn_deltas = rpn_maps(fg_logits, deltas, height=1, width=2, num_anchors=2)

    generator = ProposalGenerator(pre_nms_top_n=10, post_nms_top_n=6, nms_threshold=0.5)
    rois = generator(logits, rpn_deltas, anchors, image_size=(40, 70))
    expected = torch.tensor(
        [
            [0.0, 0, 0, 19, 19],
            [0.0, 42, 0, 61, 19],  # shifted by the delta
            [0.0, 60, 20, 69, 39],  # clipped to x ≤ W - 1 = 69
        ]
    )
    # Anchor 1 is suppressed by anchor 0; the 3 survivors are cycled in score order up to 6.
    assert torch.allclose(rois, torch.cat([expected, expected]))

    # pre_nms_top_n keeps only the best boxes before NMS.
    rois = ProposalGenerator(pre_nms_top_n=2, post_nms_top_n=3, nms_threshold=0.5)(
        logits, rpn_deltas, anchors, image_size=(40, 70)
    )
    assert torch.allclose(rois, expected[[0, 0, 0]])

    # Without suppression, post_nms_top_n truncates in score order.
    rois = ProposalGenerator(pre_nms_top_n=10, post_nms_top_n=2, nms_threshold=0.9)(
        logits, rpn_deltas, anchors, image_size=(40, 70)
    )
    assert torch.allclose(rois[:, 1:], torch.tensor([[0.0, 0, 19, 19], [2.0, 2, 21, 21]]))


def test_proposals_of_a_batch_carry_their_image_index():
    anchors = torch.tensor([[0.0, 0, 9, 9], [20.0, 0, 29, 9]])
    logits_a, deltas = rpn_maps([1.0, 2.0], [[0, 0, 0, 0]] * 2, height=1, width=2, num_anchors=1)
    logits_b, _ = rpn_maps([2.0, 1.0], [[0, 0, 0, 0]] * 2, height=1, width=2, num_anchors=1)
    generator = ProposalGenerator(post_nms_top_n=3)
    rois = generator(torch.cat([logits_a, logits_b]), torch.cat([deltas, deltas]), anchors, image_size=(10, 30))
    assert torch.equal(
        rois,
        torch.tensor(
            [
                [0.0, 20, 0, 29, 9],
                [0.0, 0, 0, 9, 9],
                [0.0, 20, 0, 29, 9],
                [1.0, 0, 0, 9, 9],
                [1.0, 20, 0, 29, 9],
                [1.0, 0, 0, 9, 9],
            ]
        ),
    )


def test_proposals_min_size_drops_small_boxes():
    anchors = torch.tensor([[0.0, 0, 3, 3], [20.0, 0, 39, 19]])
    logits, deltas = rpn_maps([5.0, 1.0], [[0, 0, 0, 0]] * 2, height=1, width=2, num_anchors=1)
    rois = ProposalGenerator(post_nms_top_n=2, min_size=8)(logits, deltas, anchors, image_size=(20, 40))
    assert torch.equal(rois[:, 1:], torch.tensor([[20.0, 0, 39, 19]] * 2))


def test_proposals_reject_mismatched_anchors():
    logits, deltas = rpn_maps([1.0, 2.0], [[0, 0, 0, 0]] * 2, height=1, width=2, num_anchors=1)
    with pytest.raises(ValueError, match="anchors"):
        ProposalGenerator()(logits, deltas, torch.zeros(3, 4), image_size=(10, 30))


# --------------------------------------------------------------------------------------------
# detect()


def hand_made_output(rois, class_probs, fg_deltas, image_size, num_images) -> RFCNOutput:
    rois = torch.tensor(rois)
    garbage_bg_deltas = torch.full((len(rois), 4), 5.0)  # columns 0:4 must be ignored
    return RFCNOutput(
        features=None,
        rpn_cls_logits=torch.zeros(num_images, 2, 1, 1),
        rpn_deltas=torch.zeros(num_images, 4, 1, 1),
        rois=rois,
        cls_logits=torch.tensor([logits_of(p) for p in class_probs]),
        box_deltas=torch.cat([garbage_bg_deltas, torch.tensor(fg_deltas)], dim=1),
        image_size=image_size,
    )


@pytest.fixture
def detect_case():
    output = hand_made_output(
        rois=[
            [0.0, 10, 10, 49, 49],
            [0.0, 12, 12, 51, 51],  # IoU ≈ 0.82 with the first
            [0.0, 60, 60, 89, 89],
            [1.0, 100, 80, 119, 99],
        ],
        class_probs=[
            [0.10, 0.80, 0.05, 0.05],  # class 1 kept; classes 2, 3 under the threshold
            [0.05, 0.30, 0.60, 0.05],  # class 1 suppressed by the first RoI; class 2 kept (other class)
            [0.50, 0.05, 0.05, 0.40],  # class 3 kept
            [0.05, 0.02, 0.90, 0.03],  # image 1, class 2
        ],
        fg_deltas=[
            [0.0, 0, 0, 0],
            [0.0, 0, 0, 0],
            [1.0, 0, 0, 0],  # dx = 1 · 0.1 · width 30 = 3 px right
            [0.0, 0, math.log(2) / 0.2, 0],  # width 20 → 40 around centre 109.5, then clipped
        ],
        image_size=(100, 120),
        num_images=2,
    )
    expected_image0 = Detections(
        boxes=torch.tensor([[10.0, 10, 49, 49], [12.0, 12, 51, 51], [63.0, 60, 92, 89]]),
        scores=torch.tensor([0.8, 0.6, 0.4]),
        labels=torch.tensor([1, 2, 3]),
    )
    expected_image1 = Detections(
        boxes=torch.tensor([[90.0, 80, 119, 99]]), scores=torch.tensor([0.9]), labels=torch.tensor([2])
    )
    return output, expected_image0, expected_image1


def assert_detections_equal(actual: Detections, expected: Detections, scale: float = 1.0):
    assert torch.allclose(actual.boxes, expected.boxes / scale, atol=1e-4)
    assert torch.allclose(actual.scores, expected.scores, atol=1e-5)
    assert torch.equal(actual.labels, expected.labels)
    assert actual.labels.dtype == torch.int64


def test_detect_decodes_thresholds_and_runs_per_class_nms(detect_case):
    output, expected_image0, expected_image1 = detect_case
    model = tiny_rfcn(test_score_threshold=0.1)
    detections = model.detect(output)
    assert len(detections) == 2
    assert_detections_equal(detections[0], expected_image0)
    assert_detections_equal(detections[1], expected_image1)


def test_detect_divides_by_scale_and_caps_the_count(detect_case):
    output, expected_image0, expected_image1 = detect_case
    model = tiny_rfcn(test_score_threshold=0.1, max_detections=2)
    detections = model.detect(output, scale=2.0)
    top_two = Detections(expected_image0.boxes[:2], expected_image0.scores[:2], expected_image0.labels[:2])
    assert_detections_equal(detections[0], top_two, scale=2.0)
    assert_detections_equal(detections[1], expected_image1, scale=2.0)


def test_detect_with_a_low_threshold_keeps_every_class_of_a_lone_roi():
    output = hand_made_output(
        rois=[[0.0, 5, 5, 24, 24]],
        class_probs=[[0.1, 0.5, 0.3, 0.1]],
        fg_deltas=[[0.0, 0, 0, 0]],
        image_size=(30, 30),
        num_images=1,
    )
    (detections,) = tiny_rfcn(test_score_threshold=1e-4).detect(output)
    assert torch.equal(detections.labels, torch.tensor([1, 2, 3]))
    assert torch.allclose(detections.scores, torch.tensor([0.5, 0.3, 0.1]))
    assert torch.allclose(detections.boxes, torch.tensor([[5.0, 5, 24, 24]] * 3))


def test_detect_on_an_image_without_rois_is_empty():
    output = hand_made_output(
        rois=[[1.0, 5, 5, 24, 24]],
        class_probs=[[0.1, 0.5, 0.3, 0.1]],
        fg_deltas=[[0.0, 0, 0, 0]],
        image_size=(30, 30),
        num_images=2,
    )
    detections = tiny_rfcn().detect(output)
    assert detections[0].boxes.shape == (0, 4) and detections[0].labels.shape == (0,)
    assert len(detections[1].labels) == 3


# --------------------------------------------------------------------------------------------
# end to end: a tiny R-FCN overfits one synthetic image


def synthetic_scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 128 x 160 image with three flat-coloured rectangles, one per class; returns (image, boxes, labels)."""
    generator = torch.Generator().manual_seed(0)
    rgb = torch.full((3, 128, 160), 90.0) + 10.0 * torch.randn(3, 128, 160, generator=generator)
    boxes = torch.tensor([[16.0, 16, 63, 55], [88.0, 20, 143, 67], [40.0, 72, 103, 115]])
    labels = torch.tensor([1, 2, 3])
    colours = torch.tensor([[230.0, 30, 30], [30, 220, 40], [40, 60, 240]])
    for (x1, y1, x2, y2), colour in zip(boxes.long().tolist(), colours):
        rgb[:, y1 : y2 + 1, x1 : x2 + 1] = colour[:, None, None]
    pixel_means = torch.tensor([123.15, 115.90, 103.06])[:, None, None]
    # Mean-subtracted like the real input; the /64 only keeps the untrained stand-in's activations small.
    return ((rgb - pixel_means) / 64.0)[None], boxes, labels


@pytest.mark.slow
def test_tiny_rfcn_overfits_a_synthetic_image():
    from semidff.losses.supervised import rfcn_supervised_loss

    torch.manual_seed(0)
    image, gt_boxes, gt_labels = synthetic_scene()
    image_size = (image.shape[2], image.shape[3])
    model = RFCN(
        StandInExtractor(out_channels=64, width=32),
        num_classes=3,
        anchor_scales=(2, 4),
        group_size=3,
        pre_nms_top_n=300,
        post_nms_top_n=64,
    )
    anchors = model.anchors(image_size[0] // 16, image_size[1] // 16)
    gt_rois = torch.cat([torch.zeros(3, 1), gt_boxes], dim=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampling = torch.Generator().manual_seed(0)

    model.train()
    losses = []
    for _ in range(300):
        output = model(image, extra_rois=gt_rois)
        loss = rfcn_supervised_loss(output, anchors, [gt_boxes], [gt_labels], image_size, generator=sampling).total
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.2 * sum(losses[:10]) / 10

    model.eval()
    (detections,) = model.detect(model(image), scale=1.0)
    top = slice(0, len(gt_labels))
    iou = box_iou(detections.boxes[top], gt_boxes)  # (3 top detections, 3 GT)
    matched = iou.argmax(dim=1)
    assert sorted(matched.tolist()) == [0, 1, 2]  # the three best detections are the three objects
    assert torch.all(iou.max(dim=1).values > 0.5)
    assert torch.equal(detections.labels[top], gt_labels[matched])
    assert torch.all(detections.scores[top] > 0.5)


def test_forward_heads_rejects_rois_of_images_not_in_the_batch():
    import torch
    from torch import nn

    from semidff.models.rfcn import RFCN

    extractor = nn.Conv2d(3, 8, 3, stride=16, padding=1)
    extractor.out_channels = 8
    model = RFCN(extractor, num_classes=2, group_size=3, post_nms_top_n=4)
    features = torch.randn(2, 8, 4, 5)
    good = torch.tensor([[0.0, 0, 0, 30, 30], [1.0, 10, 10, 40, 40]])
    assert model.forward_heads(features, (64, 80), rois=good).cls_logits.shape == (2, 3)
    for bad in ([2.0, 0, 0, 30, 30], [-1.0, 0, 0, 30, 30], [0.5, 0, 0, 30, 30]):
        with pytest.raises(ValueError, match=r"whole batch indices in \[0, 2\)"):
            model.forward_heads(features, (64, 80), rois=torch.tensor([bad]))
