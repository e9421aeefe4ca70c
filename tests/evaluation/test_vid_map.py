"""ImageNet VID mAP on hand-made cases; every expected number is worked out in the comments.

Boxes are (x1, y1, x2, y2) with inclusive corners, so [0, 0, 9, 9] is 10×10 = 100 pixels.
"""
import math

import numpy as np
import pytest
import torch

from semidff.evaluation.vid_map import (
    FramePrediction,
    GroundTruth,
    evaluate_vid,
    in_motion_bucket,
    match_detections,
    motion_iou_from_tracks,
    per_gt_iou_threshold,
    voc_average_precision,
)
from semidff.models.rfcn import Detections

BIG = [0, 0, 99, 99]  # 100×100: threshold min(0.5, 10000/12100) = 0.5


def gt(frame_id, boxes, labels, motion_iou=None):
    return GroundTruth(frame_id, np.array(boxes, dtype=float).reshape(-1, 4), labels, motion_iou)


def pred(frame_id, boxes, scores, labels):
    return FramePrediction(frame_id, np.array(boxes, dtype=float).reshape(-1, 4), scores, labels)


# --- thresholds and IoU convention ------------------------------------------------------------


def test_per_gt_threshold_relaxes_only_small_objects():
    boxes = [[0, 0, 7, 7], [0, 0, 9, 9], [0, 0, 19, 19], [0, 0, 29, 29], [0, 0, 99, 49]]
    # 8×8: 64/(18·18); 10×10: 100/400; 20×20: 400/900; 30×30: 900/1600 = 0.5625 → 0.5;
    # 100×50: 5000/(110·60) ≈ 0.76 → 0.5.
    expected = [64 / 324, 0.25, 400 / 900, 0.5, 0.5]
    np.testing.assert_allclose(per_gt_iou_threshold(boxes), expected)
    np.testing.assert_allclose(per_gt_iou_threshold(boxes, relaxed_small_objects=False), [0.5] * 5)


def test_small_object_matches_under_relaxed_threshold_only():
    # GT 8×8 = 64 px; detection [4, 0, 11, 7] is 8×8 shifted by 4: overlap 4×8 = 32,
    # union 64 + 64 - 32 = 96, IoU 1/3: above 64/324 ≈ 0.198, below 0.5.
    truths = [gt("f0", [[0, 0, 7, 7]], [1])]
    predictions = [pred("f0", [[4, 0, 11, 7]], [0.9], [1])]
    relaxed = evaluate_vid(predictions, truths, num_classes=1, buckets=False)
    plain = evaluate_vid(predictions, truths, num_classes=1, relaxed_small_objects=False, buckets=False)
    assert relaxed.map == pytest.approx(1.0)
    assert plain.map == pytest.approx(0.0)


def test_iou_counts_both_end_pixels():
    # GT 10×10 = 100 px; detection its top half [0, 0, 9, 4] = 10×5 = 50 px, all inside:
    # IoU 50/100 = 0.5 exactly → TP at threshold 0.5. Without the +1 the areas would be 81 and 36,
    # IoU 0.44 → FP.
    tp, fp = match_detections([[0, 0, 9, 4]], [0.9], [[0, 0, 9, 9]], [0.5])
    assert tp.tolist() == [1.0] and fp.tolist() == [0.0]
    result = evaluate_vid([pred("f0", [[0, 0, 9, 4]], [0.9], [1])], [gt("f0", [[0, 0, 9, 9]], [1])],
                          num_classes=1, relaxed_small_objects=False, buckets=False)
    assert result.map == pytest.approx(1.0)


# --- matching -------------------------------------------------------------------------------


def test_higher_score_takes_the_gt_first_whatever_the_input_order():
    # A = [0, 0, 99, 59]: IoU 6000/10000 = 0.6, score 0.9. B = [0, 0, 99, 94]: IoU 0.95, score 0.8.
    # A goes first and takes the GT although B overlaps it more; B is then a FP.
    tp, fp = match_detections([[0, 0, 99, 94], [0, 0, 99, 59]], [0.8, 0.9], [BIG], [0.5])
    assert tp.tolist() == [0.0, 1.0]
    assert fp.tolist() == [1.0, 0.0]


def test_equal_scores_in_a_frame_match_in_input_order():
    tp, _ = match_detections([[0, 0, 99, 59], [0, 0, 99, 94]], [0.5, 0.5], [BIG], [0.5])
    assert tp.tolist() == [1.0, 0.0]
    tp, _ = match_detections([[0, 0, 99, 94], [0, 0, 99, 59]], [0.5, 0.5], [BIG], [0.5])
    assert tp.tolist() == [1.0, 0.0]


def test_detection_takes_the_gt_it_overlaps_most():
    # g1 = [0, 0, 99, 99], g2 = [20, 0, 119, 99]. d1 = [15, 0, 114, 99] (score 0.9):
    # IoU(g1) = 85·100 / 11500 ≈ 0.74, IoU(g2) = 95·100 / 10500 ≈ 0.90 → takes g2.
    # d2 = [40, 0, 139, 99] (score 0.8): IoU(g2) = 8000/12000 ≈ 0.67, IoU(g1) = 6000/14000 ≈ 0.43,
    # so only g2 is eligible and it is taken → FP. (Had d1 taken g1, d2 would be a TP.)
    gts = [[0, 0, 99, 99], [20, 0, 119, 99]]
    tp, fp = match_detections([[15, 0, 114, 99], [40, 0, 139, 99]], [0.9, 0.8], gts, [0.5, 0.5])
    assert tp.tolist() == [1.0, 0.0]
    assert fp.tolist() == [0.0, 1.0]


def test_wrong_class_never_matches():
    # A perfect box with the wrong label: class 1 has a GT and no correct detection → AP 0;
    # class 2 has no GT → AP undefined, left out of the mean → mAP 0.
    predictions, truths = [pred("f0", [BIG], [0.9], [2])], [gt("f0", [BIG], [1])]
    result = evaluate_vid(predictions, truths, num_classes=2, buckets=False)
    assert result.per_class_ap["class_1"] == 0.0
    assert math.isnan(result.per_class_ap["class_2"])
    assert result.map == 0.0
    assert result.num_detections == {"class_1": 0, "class_2": 1}


# --- AP -------------------------------------------------------------------------------------


def test_voc_interpolation_fills_a_precision_dip():
    recall = [0.25, 0.25, 0.5, 0.5, 0.75]
    precision = [1.0, 0.5, 2 / 3, 0.5, 0.6]
    # Envelope (max precision at this or any later point): 1, 2/3, 2/3, 0.6, 0.6.
    # Recall steps: 0→0.25 at 1, 0.25→0.5 at 2/3 (not the dip's 0.5), 0.5→0.75 at 0.6,
    # 0.75→1 never reached (0). AP = 0.25 + 1/6 + 0.15 = 17/30.
    assert voc_average_precision(recall, precision) == pytest.approx(17 / 30)
    assert voc_average_precision([], []) == 0.0


def test_perfect_detector_scores_one():
    truths = [
        gt("f0", [BIG, [200, 200, 249, 259]], [1, 2]),
        gt("f1", [[10, 10, 59, 59]], [3]),
        gt("f2", [], []),
    ]
    predictions = [
        pred("f0", [BIG, [200, 200, 249, 259]], [0.3, 0.8], [1, 2]),
        pred("f1", [[10, 10, 59, 59]], [0.6], [3]),
    ]
    result = evaluate_vid(predictions, truths, num_classes=3, buckets=False)
    assert result.map == pytest.approx(1.0)
    assert result.per_class_ap == pytest.approx({"class_1": 1.0, "class_2": 1.0, "class_3": 1.0})
    assert result.num_gt == {"class_1": 1, "class_2": 1, "class_3": 1}
    assert result.num_frames == 3


def test_no_detections_scores_zero():
    truths = [gt("f0", [BIG], [1]), gt("f1", [BIG], [2])]
    result = evaluate_vid([], truths, num_classes=3, buckets=False)
    assert result.per_class_ap["class_1"] == 0.0 and result.per_class_ap["class_2"] == 0.0
    assert math.isnan(result.per_class_ap["class_3"])
    assert result.map == 0.0


def test_class_without_gt_is_left_out_of_the_mean():
    # Class 1 perfect (AP 1). Class 2 has only false positives but no GT: undefined, not 0,
    # so mAP = 1, not 0.5.
    truths = [gt("f0", [BIG], [1])]
    predictions = [pred("f0", [BIG, [300, 300, 349, 349]], [0.9, 0.95], [1, 2])]
    result = evaluate_vid(predictions, truths, num_classes=2, class_names=["cat", "dog"], buckets=False)
    assert result.per_class_ap["cat"] == 1.0
    assert math.isnan(result.per_class_ap["dog"])
    assert result.map == 1.0
    table = result.format_table().splitlines()
    assert table[0] == "| class | AP | GT | detections |"
    assert table[2:] == [
        "| cat | 100.0 | 1 | 1 |",
        "| dog | – | 0 | 1 |",
        "| **mAP** | **100.0** | 1 | 2 |",
    ]


def test_duplicate_detection_is_one_tp_and_one_fp():
    # f0: GT g1 with two detections (0.9 exact, 0.8 shifted by 5 px → IoU 0.9): the first is the
    # TP, the second finds g1 taken → FP. f1: GT g2 detected at 0.7 → TP. npos = 2.
    # Ranked TP, FP, TP: precision 1, 1/2, 2/3; recall 1/2, 1/2, 1.
    # AP = 1/2 · 1 + 1/2 · 2/3 = 5/6.
    truths = [gt("f0", [BIG], [1]), gt("f1", [BIG], [1])]
    predictions = [
        pred("f0", [BIG, [5, 0, 104, 99]], [0.9, 0.8], [1, 1]),
        pred("f1", [BIG], [0.7], [1]),
    ]
    result = evaluate_vid(predictions, truths, num_classes=1, buckets=False)
    assert result.map == pytest.approx(5 / 6)


def test_score_ties_across_frames_follow_frame_order():
    # Both detections score 0.5: one FP (far from the GT) in "fp", one TP in "tp"; npos = 2.
    # Frame order fp, tp → ranked FP, TP: precision 0, 1/2 at recall 0, 1/2 → AP = 1/2 · 1/2 = 1/4.
    # Frame order tp, fp → ranked TP, FP: precision 1 at recall 1/2 → AP = 1/2.
    predictions = [pred("fp", [[300, 300, 349, 349]], [0.5], [1]), pred("tp", [BIG], [0.5], [1])]
    frame_fp, frame_tp = gt("fp", [BIG], [1]), gt("tp", [BIG], [1])
    assert evaluate_vid(predictions, [frame_fp, frame_tp], 1, buckets=False).map == pytest.approx(0.25)
    assert evaluate_vid(predictions, [frame_tp, frame_fp], 1, buckets=False).map == pytest.approx(0.5)


# --- motion buckets -------------------------------------------------------------------------


def test_unmatched_detection_weights_follow_its_best_overlap():
    # g_in = BIG (in the bucket), g_ig = [200, 0, 299, 99] (ignored).
    # e1 top 30 rows of g_in: IoU 0.3 < 0.5, best overlap in-bucket → FP 1.
    # e2 top 30 rows of g_ig: best overlap ignored → FP 0.
    # e3 exactly g_ig: matched to an ignored GT → neither TP nor FP.
    # e4 far from both: overlaps tie at 0 → FP = share of ignored GTs in the frame = 1/2.
    # e5 exactly g_in → TP.
    dets = [[0, 0, 99, 29], [200, 0, 299, 29], [200, 0, 299, 99], [500, 500, 549, 549], BIG]
    tp, fp = match_detections(dets, [0.9, 0.8, 0.7, 0.6, 0.5], [BIG, [200, 0, 299, 99]], [0.5, 0.5],
                              gt_ignored=[False, True])
    assert tp.tolist() == [0, 0, 0, 0, 1]
    assert fp.tolist() == [1, 0, 0, 0.5, 0]
    # No GT of the class in the frame: the caller's weight.
    _, fp = match_detections([BIG], [0.9], np.zeros((0, 4)), [], empty_frame_fp_weight=0.25)
    assert fp.tolist() == [0.25]
    # Equal IoU with an in-bucket and an ignored GT: the in-bucket one is taken.
    tp, fp = match_detections([BIG], [0.9], [BIG, BIG], [0.5, 0.5], gt_ignored=[True, False])
    assert tp.tolist() == [1.0] and fp.tolist() == [0.0]


def test_motion_buckets_are_disjoint_and_skip_nan():
    motion = [0.5, 0.7, 0.8, 0.9, 0.95, math.nan]
    assert in_motion_bucket(motion, "fast").tolist() == [True, False, False, False, False, False]
    assert in_motion_bucket(motion, "medium").tolist() == [False, True, True, True, False, False]
    assert in_motion_bucket(motion, "slow").tolist() == [False, False, False, False, True, False]


def test_bucket_maps_by_hand():
    # Frame A: class 1 GTs a1 = BIG (motion 0.95, slow), a2 = [200, 0, 299, 99] (0.5, fast).
    # Frame B: class 1 GT b1 = BIG (0.8, medium); class 2 GT c2 (0.95, slow).
    # Frame C: no GT.
    # Objects per bucket over the set: slow 2/4, medium 1/4, fast 1/4 = FP weight in frame C.
    truths = [
        gt("A", [BIG, [200, 0, 299, 99]], [1, 1], [0.95, 0.5]),
        gt("B", [BIG, [300, 300, 349, 349]], [1, 2], [0.8, 0.95]),
        gt("C", [], [], []),
    ]
    predictions = [
        # d1 exact a1 (0.9), d2 exact a2 (0.8), d3 overlapping nothing (0.95).
        pred("A", [BIG, [200, 0, 299, 99], [400, 400, 449, 449]], [0.9, 0.8, 0.95], [1, 1, 1]),
        # d4 exact b1 (0.6), d6 exact c2 (0.99).
        pred("B", [BIG, [300, 300, 349, 349]], [0.6, 0.99], [1, 2]),
        # d5 in the empty frame (0.92).
        pred("C", [[0, 0, 49, 49]], [0.92], [1]),
    ]
    result = evaluate_vid(predictions, truths, num_classes=2)

    # All GTs, class 1 (npos 3), ranked d3 FP, d5 FP, d1 TP, d2 TP, d4 TP:
    # precision 1/3, 2/4, 3/5 at recall 1/3, 2/3, 1; envelope 3/5 throughout → AP 0.6.
    # Class 2: d6 TP → AP 1. mAP 0.8.
    assert result.per_class_ap == pytest.approx({"class_1": 0.6, "class_2": 1.0})
    assert result.map == pytest.approx(0.8)

    # Slow, class 1: only a1 counts (npos 1). d3 ties at 0 between a1 and ignored a2 → FP 1/2
    # (half of frame A's class-1 GTs are ignored); d5 (frame C) FP 2/4; d1 TP; d2 and d4 hit
    # ignored GTs → nothing. At d1: precision 1 / (1 + 1) = 1/2, recall 1 → AP 0.5.
    # Class 2: d6 TP → AP 1. Slow mAP = 0.75.
    assert result.bucket_per_class_ap["slow"] == pytest.approx({"class_1": 0.5, "class_2": 1.0})
    # Medium, class 1: only b1 counts. d3: every class-1 GT of frame A is ignored, so its best
    # overlap is with an ignored GT → FP 0; d5 FP 1/4; d1, d2 nothing; d4 TP → precision 1/1.25
    # = 0.8 → AP 0.8. Class 2 has no medium GT → undefined, left out. Medium mAP 0.8.
    assert result.bucket_per_class_ap["medium"]["class_1"] == pytest.approx(0.8)
    assert math.isnan(result.bucket_per_class_ap["medium"]["class_2"])
    # Fast, class 1: only a2 counts. d3 FP 1/2 (tie, a1 ignored), d5 FP 1/4, d1 nothing (a1),
    # d2 TP → precision 1/1.75 = 4/7 → AP 4/7. Class 2 undefined.
    assert result.bucket_per_class_ap["fast"]["class_1"] == pytest.approx(4 / 7)
    assert result.bucket_map == pytest.approx({"slow": 0.75, "medium": 0.8, "fast": 4 / 7})
    assert result.bucket_num_gt == {
        "slow": {"class_1": 1, "class_2": 1},
        "medium": {"class_1": 1, "class_2": 0},
        "fast": {"class_1": 1, "class_2": 0},
    }
    table = result.format_table().splitlines()
    assert table[0] == "| class | AP | GT | detections | slow | medium | fast |"
    assert table[-1] == "| **mAP** | **80.0** | 4 | 6 | **75.0** | **80.0** | **57.1** |"


def test_motion_iou_of_static_and_moving_tracks():
    static = {f: [10, 10, 59, 59] for f in range(5)}
    # 10×10 box moving right by 5 px (half its width) per frame: frames 1 apart overlap 5×10 = 50,
    # union 150 → IoU 1/3; 2 or more apart → 0.
    # Frame 0: neighbours 1, 2 → (1/3 + 0)/2 = 1/6; frame 1: neighbours 0, 2 → 1/3; frame 2:
    # neighbours 0, 1, and 12 (10 frames away still counts, IoU 0) → (0 + 1/3 + 0)/3 = 1/9;
    # frame 12: only frame 2 → 0.
    moving = {f: [5 * f, 0, 5 * f + 9, 9] for f in (0, 1, 2, 12)}
    # 11 frames apart: outside the window, so no motion estimate.
    lonely = {0: [0, 0, 9, 9], 11: [0, 0, 9, 9]}
    motion = motion_iou_from_tracks({"static": static, 7: moving, "lonely": lonely})
    assert motion["static"] == pytest.approx({f: 1.0 for f in range(5)})
    assert motion[7] == pytest.approx({0: 1 / 6, 1: 1 / 3, 2: 1 / 9, 12: 0.0})
    assert all(math.isnan(v) for v in motion["lonely"].values())
    assert motion_iou_from_tracks({"lonely": lonely}, isolated_value=1.0)["lonely"] == {0: 1.0, 11: 1.0}


# --- inputs ---------------------------------------------------------------------------------


def test_frame_prediction_from_rfcn_detections():
    detections = Detections(
        boxes=torch.tensor([[0.0, 0.0, 99.0, 99.0]]), scores=torch.tensor([0.9]), labels=torch.tensor([1])
    )
    prediction = FramePrediction.from_detections("f0", detections)
    assert prediction.boxes.tolist() == [[0.0, 0.0, 99.0, 99.0]]
    assert evaluate_vid([prediction], [gt("f0", [BIG], [1])], num_classes=1, buckets=False).map == 1.0


def test_inputs_are_checked():
    truths = [gt("f0", [BIG], [1])]
    with pytest.raises(ValueError, match="motion_iou is missing"):
        evaluate_vid([], truths, num_classes=1)
    with pytest.raises(ValueError, match="no GroundTruth for this frame"):
        evaluate_vid([pred("f9", [BIG], [0.9], [1])], truths, num_classes=1, buckets=False)
    with pytest.raises(ValueError, match=r"labels must lie in 1\.\.1"):
        evaluate_vid([pred("f0", [BIG], [0.9], [0])], truths, num_classes=1, buckets=False)
    with pytest.raises(ValueError, match="appears twice"):
        evaluate_vid([], truths + truths, num_classes=1, buckets=False)
    with pytest.raises(ValueError, match=r"x2 >= x1"):
        gt("f1", [[10, 0, 5, 5]], [1])
