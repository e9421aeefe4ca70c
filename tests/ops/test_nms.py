
import pytest
import torch

from semidff.ops import nms as nms_module
from semidff.ops.nms import batched_nms, nms

HAS_TORCHVISION = nms_module._torchvision_nms is not None


def reference_iou(a, b):
    """+1-pixel IoU of two (x1, y1, x2, y2) tuples, plain Python floats."""
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1.0)
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1.0)
    inter = inter_w * inter_h
    union = (a[2] - a[0] + 1.0) * (a[3] - a[1] + 1.0) + (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0) - inter
    return inter / union if union > 0 else 0.0


def reference_greedy_nms(boxes, scores, threshold):
    """The classic greedy loop, one box at a time; ties visited in index order."""
    boxes, scores = boxes.tolist(), scores.tolist()
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if all(reference_iou(boxes[i], boxes[j]) <= threshold for j in kept):
            kept.append(i)
    return kept


def random_boxes(num_boxes, seed, spread=200.0, max_side=120.0):
    """Clustered float64 boxes so that many pairs overlap."""
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(num_boxes, 2, generator=generator, dtype=torch.float64) * spread
    sides = torch.rand(num_boxes, 2, generator=generator, dtype=torch.float64) * max_side
    scores = torch.rand(num_boxes, generator=generator, dtype=torch.float64)
    return torch.cat([corners, corners + sides], dim=1), scores


@pytest.mark.parametrize("threshold", [0.3, 0.7])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_nms_matches_reference_greedy(seed, threshold):
    boxes, scores = random_boxes(300, seed)
    expected = reference_greedy_nms(boxes, scores, threshold)
    assert nms(boxes, scores, threshold).tolist() == expected
    assert nms_module._greedy_nms(boxes, scores, threshold, None).tolist() == expected


@pytest.mark.parametrize("block_size", [1, 7, 64])
def test_nms_block_boundaries_do_not_change_the_result(monkeypatch, block_size):
    # The pure path decides sorted boxes block by block; small blocks put many decisions across boundaries.
    monkeypatch.setattr(nms_module, "_BLOCK_SIZE", block_size)
    for seed, threshold in ((4, 0.3), (5, 0.7)):
        boxes, scores = random_boxes(200, seed)
        assert nms_module._greedy_nms(boxes, scores, threshold, None).tolist() == reference_greedy_nms(boxes, scores, threshold)


@pytest.mark.parametrize("block_size", [7, 512])
def test_nms_max_kept_is_the_prefix_of_the_full_result(monkeypatch, block_size):
    monkeypatch.setattr(nms_module, "_BLOCK_SIZE", block_size)
    boxes, scores = random_boxes(400, seed=6, spread=1000.0, max_side=60.0)
    full = reference_greedy_nms(boxes, scores, 0.5)
    assert len(full) > 40
    assert nms(boxes, scores, 0.5, max_kept=40).tolist() == full[:40]
    assert nms(boxes, scores, 0.5, max_kept=10_000).tolist() == full


def test_nms_long_suppression_chain_matches_reference():
    # Sliding boxes visited left to right: each decision depends on the previous ones.
    x = torch.arange(400, dtype=torch.float64)
    boxes = torch.stack([x, torch.zeros_like(x), x + 20, torch.full_like(x, 10.0)], dim=1)
    scores = -x
    expected = reference_greedy_nms(boxes, scores, 0.7)
    # 21-px-wide boxes: 3 px apart IoU 18/24 = 0.75 (suppressed), 4 px apart 17/25 = 0.68 (kept).
    assert expected == list(range(0, 400, 4))
    assert nms(boxes, scores, 0.7).tolist() == expected


def test_nms_ties_visit_lower_index_first():
    boxes = torch.tensor(
        [[10.0, 10.0, 29.0, 29.0], [0.0, 0.0, 19.0, 19.0], [0.0, 0.0, 19.0, 19.0], [60.0, 60.0, 70.0, 70.0]]
    )
    scores = torch.tensor([0.5, 0.9, 0.9, 0.9])
    # Boxes 1 and 2 are identical with equal scores: 1 is visited first and suppresses 2.
    assert nms(boxes, scores, 0.5).tolist() == [1, 3, 0]
    # All scores equal: pure index order.
    flat = torch.ones(4)
    assert nms(boxes, flat, 0.5).tolist() == reference_greedy_nms(boxes, flat, 0.5) == [0, 1, 3]


def test_nms_many_ties_match_reference():
    boxes, _ = random_boxes(200, seed=7)
    scores = torch.randint(0, 5, (200,), generator=torch.Generator().manual_seed(7)).double()
    assert nms(boxes, scores, 0.5).tolist() == reference_greedy_nms(boxes, scores, 0.5)


def test_nms_threshold_is_strict():
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 4.0]])  # IoU exactly 0.5
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.49).tolist() == [0]


def test_nms_uses_plus_one_iou():
    # Without the +1 these boxes would share no area; with it they share a 1-pixel column (IoU 1/19).
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [9.0, 0.0, 18.0, 9.0]])
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.05).tolist() == [0]
    assert nms(boxes, scores, 0.06).tolist() == [0, 1]


def test_nms_empty_and_single():
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.7)
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    assert nms(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([0.3]), 0.7).tolist() == [0]


def test_nms_output_sorted_by_descending_score_and_int64():
    boxes, scores = random_boxes(100, seed=11, spread=1000.0, max_side=50.0)
    kept = nms(boxes.float(), scores.float(), 0.3)
    assert kept.dtype == torch.int64
    kept_scores = scores[kept]
    assert torch.all(kept_scores[:-1] >= kept_scores[1:])


def test_nms_rejects_bad_shapes():
    with pytest.raises(ValueError, match="boxes"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)


def test_batched_nms_only_suppresses_within_a_label():
    boxes = torch.tensor(
        [[-50.0, -50.0, 9.0, 9.0], [-50.0, -50.0, 9.0, 9.0], [-49.0, -50.0, 9.0, 9.0], [100.0, 0.0, 120.0, 20.0]]
    )
    scores = torch.tensor([0.6, 0.9, 0.8, 0.7])
    labels = torch.tensor([1, 2, 1, 2])
    # Label 1: box 2 (0.8) suppresses box 0 (0.6). Label 2: boxes 1 and 3 do not overlap.
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [1, 2, 3]


@pytest.mark.parametrize("seed", [0, 5])
def test_batched_nms_matches_per_label_reference(seed):
    boxes, scores = random_boxes(240, seed)
    labels = torch.randint(1, 5, (240,), generator=torch.Generator().manual_seed(seed))
    expected = []
    for label in range(1, 5):
        members = torch.nonzero(labels == label).squeeze(1)
        expected += members[reference_greedy_nms(boxes[members], scores[members], 0.3)].tolist()
    expected.sort(key=lambda i: -scores[i].item())
    assert batched_nms(boxes, scores, labels, 0.3).tolist() == expected


def test_batched_nms_empty_and_bad_labels():
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.3).shape == (0,)
    with pytest.raises(ValueError, match="labels"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2, dtype=torch.int64), 0.3)


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision not importable")
@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_torchvision_path_agrees_with_pure_torch(threshold):
    boxes, scores = random_boxes(1000, seed=3, spread=600.0)
    boxes, scores = boxes.float(), scores.float()
    assert nms(boxes, scores, threshold).tolist() == nms_module._greedy_nms(boxes, scores, threshold).tolist()


def test_nms_half_precision_boxes_give_the_fp32_result():
    # 600x1000-pixel areas overflow fp16 (max 65504); nms computes in fp32 whatever it is given.
    boxes = torch.tensor([[0.0, 0, 999, 599], [10, 10, 999, 599], [0, 0, 300, 200]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes.half(), scores.half(), 0.5).tolist() == nms(boxes, scores, 0.5).tolist() == [0, 2]
