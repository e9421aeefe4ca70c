"""The stage 2 step: Eq. 1 propagation, Eq. 4 / L1 / steady regression, Eq. 5-9 distillation, which
parameters train in step A and step B, the epoch plan, and the regression-error-vs-copy metric."""
import pytest
import torch

from semidff.config import ConfigError, load_config
from semidff.losses.regression import steady_feature_loss
from semidff.losses.semantic import semantic_loss
from semidff.models.build import build_rfcn
from semidff.teacher_targets import pair_batch_on_the_fly
from semidff.training.flow_step import (
    FlowObjective,
    build_optimizer,
    epoch_plan,
    flow_losses,
    propagate_key_features,
    regression_error_vs_copy,
    step_offsets,
    train_step,
)
from semidff.training.flow_step import build_student


def _config(*overrides):
    return load_config("jobs/configs/tiny.yaml", list(overrides))


def _teacher(cfg):
    torch.manual_seed(0)
    return build_rfcn(cfg.model).eval()


def _frames(n, height=64, width=96, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, height, width, generator=generator) * 40


def _batch(teacher, offsets, key=None, cur=None):
    n = len(offsets)
    key = _frames(n, seed=1) if key is None else key
    cur = _frames(n, seed=2) if cur is None else cur
    return pair_batch_on_the_fly(teacher, key, cur, torch.tensor(offsets))


def _zero_flow(student):
    """Every FlowNetS weight 0: flow 0 and scale field exactly 1 (its bias buffer)."""
    with torch.no_grad():
        for parameter in student.propagator.parameters():
            parameter.zero_()


def test_zero_flow_and_unit_scale_reproduce_the_key_features():
    cfg = _config()
    teacher = _teacher(cfg)
    student = build_student(teacher, cfg.model)
    _zero_flow(student)
    batch = _batch(teacher, [3, 5])
    key_features, propagated = propagate_key_features(student, batch, own_key_features=False)
    assert torch.allclose(propagated, batch.key_features, atol=1e-5)
    losses = flow_losses(student, batch, FlowObjective.from_config(cfg, "regression"))
    expected = (batch.key_features - batch.teacher.features).pow(2).mean()  # Eq. 4 with f̂ = f_key
    assert losses.regression.item() == pytest.approx(expected.item(), rel=1e-4)
    assert losses.total.item() == losses.regression.item()
    assert losses.semantic.item() == 0.0 and losses.rpn_cls.item() == 0.0
    assert regression_error_vs_copy(student, [batch]) == pytest.approx(1.0, abs=1e-4)


def test_l1_kind_is_the_mean_absolute_difference():
    cfg = _config("loss.regression.kind=l1")
    teacher = _teacher(cfg)
    student = build_student(teacher, cfg.model)
    _zero_flow(student)
    batch = _batch(teacher, [2])
    losses = flow_losses(student, batch, FlowObjective.from_config(cfg, "regression"))
    expected = (batch.key_features - batch.teacher.features).abs().mean()
    assert losses.regression.item() == pytest.approx(expected.item(), rel=1e-4)


def test_key_frame_pairs_keep_the_unwarped_key_features():
    cfg = _config()
    teacher = _teacher(cfg)
    student = build_student(teacher, cfg.model)  # random flow: warping would change the features
    batch = _batch(teacher, [0, 4])
    key_features, propagated = propagate_key_features(student, batch, own_key_features=False)
    assert torch.equal(propagated[0], key_features[0])
    assert not torch.allclose(propagated[1], key_features[1])


def test_semantic_loss_of_the_student_on_the_teachers_own_frame_is_zero():
    """d = 0, key = current frame: f̂ = f_key = the teacher's features and the heads are copies."""
    cfg = _config()
    teacher = _teacher(cfg)
    student = build_student(teacher, cfg.model)
    frames = _frames(2)
    batch = _batch(teacher, [0, 0], key=frames, cur=frames)
    losses = flow_losses(student, batch, FlowObjective.from_config(cfg, "semantic"))
    for term in ("rpn_cls", "rpn_box", "rfcn_cls", "rfcn_box", "total"):
        assert abs(getattr(losses, term).item()) < 1e-6, term
    assert losses.regression.item() == 0.0


def test_semantic_step_matches_semantic_loss_on_propagated_features():
    cfg = _config("loss.semantic.temperature=2", "loss.semantic.box_weight=0.5")
    teacher = _teacher(cfg)
    student = build_student(teacher, cfg.model)
    batch = _batch(teacher, [1, 7])
    losses = flow_losses(student, batch, FlowObjective.from_config(cfg, "semantic"))
    _, propagated = propagate_key_features(student, batch, own_key_features=False)
    out = student.rfcn.forward_heads(propagated, batch.image_size, rois=batch.teacher.rois)
    expected = semantic_loss(out, batch.teacher, temperature=2.0, box_weight=0.5)
    assert losses.total.item() == pytest.approx(expected.total.item(), rel=1e-5)
    assert losses.rfcn_box.item() == pytest.approx(expected.rfcn_box.item(), rel=1e-5)
    assert losses.total.item() > 0


def test_joint_weights_combine_both_losses():
    cfg = _config("training.schedule=joint", "training.joint_weights.regression=2", "training.joint_weights.semantic=0.25")
    teacher = _teacher(cfg)
    student = build_student(teacher, cfg.model)
    batch = _batch(teacher, [1, 2])
    losses = flow_losses(student, batch, FlowObjective.from_config(cfg, "joint"))
    assert losses.regression.item() > 0 and losses.semantic.item() > 0
    assert losses.total.item() == pytest.approx(2 * losses.regression.item() + 0.25 * losses.semantic.item(), rel=1e-5)


def test_steady_kind_routes_to_the_steady_feature_loss_on_triplets():
    cfg = _config("loss.regression.kind=steady")
    teacher = _teacher(cfg)
    student = build_student(teacher, cfg.model)
    key = _frames(1).expand(3, -1, -1, -1).clone()  # three pairs of one clip: d = 2, 4 and 3
    batch = _batch(teacher, [2, 4, 3], key=key)
    losses = flow_losses(student, batch, FlowObjective.from_config(cfg, "regression"))
    assert losses.steady_triplets == 1
    key_features, propagated = propagate_key_features(student, batch, own_key_features=False)
    expected = steady_feature_loss(key_features[[0]], propagated[[0]], propagated[[1]])
    assert losses.regression.item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses.regression.item() > 0

    # Different key frames: no triplet, a zero that still reaches the propagator (DDP needs a graph).
    lone = _batch(teacher, [2, 4])
    losses = flow_losses(student, lone, FlowObjective.from_config(cfg, "regression"))
    assert losses.steady_triplets == 0 and losses.total.item() == 0.0 and losses.total.requires_grad


def _grads_after_one_step(cfg, step):
    teacher = _teacher(cfg)
    student = build_student(teacher, cfg.model, cfg.training.finetune)
    params = student.set_step(step)
    student.train()
    batch = _batch(teacher, [1, 3])
    train_step(student, build_optimizer(params, "rmsprop", 1e-5), [batch], FlowObjective.from_config(cfg, step))
    with_grad = {name.split(".")[0] if name.startswith("propagator") else ".".join(name.split(".")[:2])
                 for name, p in student.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    return student, teacher, with_grad


@pytest.mark.parametrize(
    "finetune, step_b_modules",
    [
        ("flow", {"propagator"}),
        ("flow_heads", {"propagator", "rfcn.rpn_head", "rfcn.ps_roi_head"}),
        ("flow_spatial", {"propagator", "rfcn.rpn_head", "rfcn.ps_roi_head", "rfcn.feature_extractor"}),
    ],
)
def test_step_a_trains_the_propagator_only_and_step_b_what_finetune_says(finetune, step_b_modules):
    cfg = _config(f"training.finetune={finetune}", "model.backbone.frozen_stages=2")
    student, teacher, step_a = _grads_after_one_step(cfg, "regression")
    assert step_a == {"propagator"}
    student, teacher, step_b = _grads_after_one_step(cfg, "semantic")
    assert step_b == step_b_modules
    assert all(p.grad is None for p in teacher.parameters() if p not in set(student.parameters()))
    if finetune == "flow_spatial":
        backbone = student.rfcn.feature_extractor.backbone
        assert student.rfcn.feature_extractor is not teacher.feature_extractor
        assert backbone.conv1.weight.grad is None and all(p.grad is None for p in backbone.layer1.parameters())
        assert backbone.layer4[0].conv1.weight.grad is not None
        assert student.rfcn.feature_extractor.training  # its BatchNorms train with it
    else:
        assert student.rfcn.feature_extractor is teacher.feature_extractor
        assert not student.rfcn.feature_extractor.training  # shared and frozen: eval mode


@pytest.mark.parametrize("step, lr, factor", [("regression", 3e-4, 0.93), ("semantic", 1e-4, 0.8)])
def test_the_loss_decreases_on_a_fixed_batch(step, lr, factor):
    cfg = _config()
    teacher = _teacher(cfg)
    student = build_student(teacher, cfg.model)
    params = student.set_step(step)
    student.train()
    optimizer = build_optimizer(params, "rmsprop", lr)
    objective = FlowObjective.from_config(cfg, step)
    key = _frames(2, seed=5)
    cur = torch.roll(key, shifts=(8, 16), dims=(2, 3))  # the scene moved by half / one feature cell
    batch = _batch(teacher, [2, 5], key=key, cur=cur)
    losses = [train_step(student, optimizer, [batch], objective)["total"] for _ in range(12)]
    assert losses[-1] < factor * losses[0] and losses[-1] == min(losses), losses


def test_micro_batches_accumulate_the_pair_weighted_mean():
    cfg = _config()
    teacher = _teacher(cfg)
    objective = FlowObjective.from_config(cfg, "regression")
    small = _batch(teacher, [1])
    large = pair_batch_on_the_fly(teacher, _frames(2, 80, 96, seed=3), _frames(2, 80, 96, seed=4), torch.tensor([2, 3]))
    student = build_student(teacher, cfg.model)
    params = student.set_step("regression")
    result = train_step(student, torch.optim.SGD(params, lr=0.0), [small, large], objective)
    expected = (flow_losses(student, small, objective).total + 2 * flow_losses(student, large, objective).total) / 3
    assert result["total"] == pytest.approx(expected.item(), rel=1e-5) and result["pairs"] == 3


def test_epoch_plan_and_offsets():
    assert epoch_plan(_config("training.regression_epochs=2", "training.semantic_epochs=1").training) == [
        "regression", "regression", "semantic"]
    assert epoch_plan(_config("training.schedule=joint", "training.regression_epochs=1", "training.semantic_epochs=2").training) == ["joint"] * 3
    assert epoch_plan(_config("training.schedule=regression", "training.semantic_epochs=0").training) == ["regression"] * 2
    with pytest.raises(ConfigError, match="semantic_epochs=0"):
        epoch_plan(_config("training.schedule=semantic", "training.semantic_epochs=0").training)
    with pytest.raises(ConfigError, match="two_step"):
        epoch_plan(_config("training.regression_epochs=0").training)
    assert step_offsets("regression", 10) == (1, 9)
    assert step_offsets("semantic", 10) == (0, 9) and step_offsets("joint", 5) == (0, 4)
    with pytest.raises(ConfigError, match="key_interval=1"):
        step_offsets("semantic", 1)


def test_a_bf16_autocast_step_gives_close_finite_losses():
    """The GPU path runs the step under bf16 autocast; on CPU the same code checks the dtypes."""
    cfg = _config()
    teacher = _teacher(cfg)
    batch = _batch(teacher, [0, 3])
    results = {}
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(3)
        student = build_student(teacher, cfg.model)
        params = student.set_step("semantic")
        results[dtype] = train_step(student, torch.optim.SGD(params, lr=0.0), [batch], FlowObjective.from_config(cfg, "semantic"), dtype)
    for term in ("total", "rpn_cls", "rfcn_cls", "rfcn_box"):
        assert results[torch.bfloat16][term] == pytest.approx(results[None][term], rel=0.1, abs=1e-3), term
