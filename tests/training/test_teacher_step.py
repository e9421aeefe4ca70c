"""Stage 1 step (semidff/training/teacher_step.py): lr scaling and schedule, trainable parameters,
GT RoIs, and a tiny real R-FCN whose supervised loss falls on real synthetic frames."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from semidff.config import SupervisedLossConfig, TeacherTrainingConfig, load_config
from semidff.data.synthetic import generate_synthetic_dataset
from semidff.models.build import build_rfcn
from semidff.training.teacher_data import iterate_batches, labeled_frames
from semidff.training.teacher_step import (
    LearningRateSchedule,
    build_optimizer,
    gt_rois,
    scaled_learning_rate,
    set_learning_rate,
    train_step,
    trainable_parameters,
)

TINY = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "tiny.yaml"


def test_learning_rate_scales_with_the_effective_batch():
    # DFF: 2.5e-4 per image, 4 GPUs x 1 image -> 1e-3
    assert scaled_learning_rate(2.5e-4, world_size=4, batch_size=1, reference_batch_size=1) == pytest.approx(1e-3)
    assert scaled_learning_rate(0.02, world_size=2, batch_size=2, reference_batch_size=8) == pytest.approx(0.01)
    assert scaled_learning_rate(0.01, world_size=1, batch_size=1, reference_batch_size=1) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="world_size=0"):
        scaled_learning_rate(0.01, 0, 1, 1)


def test_schedule_warms_up_linearly_then_decays_tenfold_per_decay_epoch():
    tcfg = TeacherTrainingConfig(base_lr=0.01, batch_size=2, reference_batch_size=1, warmup_steps=4, lr_decay_epochs=[2, 3])
    schedule = LearningRateSchedule.from_config(tcfg, world_size=2, steps_per_epoch=10)  # peak 0.04
    assert schedule.decay_steps == (20, 30)
    expected = {0: 0.01, 1: 0.02, 3: 0.04, 4: 0.04, 19: 0.04, 20: 0.004, 29: 0.004, 30: 0.0004, 99: 0.0004}
    for step, lr in expected.items():
        assert schedule(step) == pytest.approx(lr), step
    assert LearningRateSchedule(0.5)(0) == 0.5  # no warm-up, no decay


def test_optimizer_holds_only_trainable_parameters_at_the_scaled_lr():
    cfg = load_config(TINY, ["model.backbone.frozen_stages=2", "model.backbone.frozen_batchnorm=true"])
    rfcn = build_rfcn(cfg.model)
    tcfg = TeacherTrainingConfig(base_lr=0.001, batch_size=2, momentum=0.8, weight_decay=1e-4)
    optimizer = build_optimizer(rfcn, tcfg, world_size=3)
    params = optimizer.param_groups[0]["params"]
    frozen = {id(p) for p in list(rfcn.feature_extractor.backbone.conv1.parameters()) + list(rfcn.feature_extractor.backbone.layer1.parameters())}
    assert frozen and not frozen & {id(p) for p in params}
    assert len(params) == len(trainable_parameters(rfcn)) < len(list(rfcn.parameters()))
    assert {id(p) for p in rfcn.ps_roi_head.parameters()} <= {id(p) for p in params}
    group = optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(0.006) and group["momentum"] == 0.8 and group["weight_decay"] == 1e-4
    set_learning_rate(optimizer, 0.5)
    assert group["lr"] == 0.5


def test_gt_rois_prefix_each_box_with_its_image_index():
    rois = gt_rois([torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.zeros((0, 4)), torch.tensor([[5.0, 6, 7, 8], [0, 0, 9, 9]])])
    torch.testing.assert_close(rois, torch.tensor([[0.0, 1, 2, 3, 4], [2, 5, 6, 7, 8], [2, 0, 0, 9, 9]]))


@pytest.fixture(scope="module")
def tiny_batch(tmp_path_factory):
    """One batch of 4 real decoded synthetic frames (2 videos x 12 frames at 128x96)."""
    folder = tmp_path_factory.mktemp("synthetic")
    frames = labeled_frames(generate_synthetic_dataset(folder, num_videos=2, num_frames=12, width=128, height=96, seed=0))
    return next(iterate_batches(frames, np.array([0, 7, 13, 20]), batch_size=4, short_side=96, max_long_side=128))


def test_tiny_rfcn_loss_falls_over_a_few_steps(tiny_batch):
    cfg = load_config(TINY)
    torch.manual_seed(0)
    rfcn = build_rfcn(cfg.model).train()
    optimizer = build_optimizer(rfcn, TeacherTrainingConfig(base_lr=0.02, warmup_steps=0), world_size=1)
    history = [train_step(rfcn, optimizer, tiny_batch, cfg.loss.supervised) for _ in range(30)]
    first, last = history[0], history[-1]
    assert first.num_images == 4 and first.lr == pytest.approx(0.02)
    assert first.total == pytest.approx(first.rpn_cls + first.rpn_box + first.rfcn_cls + first.rfcn_box)
    assert first.rpn_cls == pytest.approx(np.log(2), abs=0.05)  # untrained RPN: p = 1/2 for every anchor
    assert first.rfcn_cls == pytest.approx(np.log(cfg.model.num_classes + 1), abs=0.05)  # and 1/(C+1) per class
    assert last.total < 0.7 * first.total
    assert last.rpn_cls < 0.3 * first.rpn_cls and last.rfcn_cls < first.rfcn_cls


def test_a_non_finite_loss_stops_before_the_weights_change(tiny_batch):
    cfg = load_config(TINY)
    rfcn = build_rfcn(cfg.model).train()
    optimizer = build_optimizer(rfcn, TeacherTrainingConfig(base_lr=0.01), world_size=1)
    before = [p.detach().clone() for p in trainable_parameters(rfcn)]
    tiny_batch.images[0, 0, 0, 0] = float("nan")
    try:
        with pytest.raises(FloatingPointError, match="lower teacher_training.base_lr"):
            train_step(rfcn, optimizer, tiny_batch, SupervisedLossConfig())
    finally:
        tiny_batch.images[0, 0, 0, 0] = 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, trainable_parameters(rfcn)))
