"""Teacher targets: per-image split and batch re-stacking are exact inverses; on-the-fly = teacher."""
import torch

from semidff.config import load_config
from semidff.models.build import build_rfcn
from semidff.teacher_targets import pair_batch_on_the_fly, split_targets, stack_targets, teacher_outputs


def _teacher():
    torch.manual_seed(0)
    return build_rfcn(load_config("jobs/configs/tiny.yaml").model).eval()


def test_split_then_stack_gives_back_the_batch_output():
    teacher = _teacher()
    images = torch.randn(3, 3, 64, 96) * 50
    output = teacher_outputs(teacher, images)
    per_image = split_targets(output)
    assert [t.rois.shape[0] for t in per_image] == [int((output.rois[:, 0] == i).sum()) for i in range(3)]
    restacked = stack_targets(per_image, output.image_size)
    assert torch.equal(restacked.rois, output.rois)
    for name in ("features", "rpn_cls_logits", "rpn_deltas", "cls_logits", "box_deltas"):
        assert torch.equal(getattr(restacked, name), getattr(output, name)), name
    assert restacked.image_size == (64, 96)


def test_stack_refuses_frames_of_different_sizes():
    teacher = _teacher()
    small = split_targets(teacher_outputs(teacher, torch.randn(1, 3, 64, 96)))
    large = split_targets(teacher_outputs(teacher, torch.randn(1, 3, 96, 96)))
    try:
        stack_targets(small + large, (64, 96))
    except ValueError as exc:
        assert "different feature sizes" in str(exc)
    else:
        raise AssertionError("expected a ValueError")


def test_on_the_fly_batch_holds_the_teachers_outputs():
    teacher = _teacher()
    key, cur = torch.randn(2, 3, 64, 96) * 50, torch.randn(2, 3, 64, 96) * 50
    batch = pair_batch_on_the_fly(teacher, key, cur, torch.tensor([1, 5]))
    with torch.no_grad():
        assert torch.equal(batch.key_features, teacher.extract_features(key))
        assert torch.equal(batch.teacher.cls_logits, teacher(cur).cls_logits)
    assert batch.image_size == (64, 96) and batch.offsets.tolist() == [1, 5]
