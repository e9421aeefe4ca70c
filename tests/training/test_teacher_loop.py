"""Stage 1 as plain PyTorch, in this process and without Ray: the tiny R-FCN trained for two epochs
over real decoded synthetic frames (semidff.training.teacher_loop), the lr schedule and the hooks,
the same seed giving the same weights, and a run cut mid-epoch resuming from its saved state with
the uncut run's batches and lr."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import torch

from semidff.config import load_config
from semidff.data.synthetic import generate_synthetic_dataset
from semidff.models.build import build_rfcn
from semidff.training.teacher_data import labeled_frames
from semidff.training.teacher_loop import LOSS_TERMS, ShardBatches, TeacherLoopState, train_teacher_epochs
from semidff.training.teacher_step import LearningRateSchedule

TINY = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "tiny.yaml"

STEPS_PER_EPOCH = 4  # 8 frames, 1 worker x 2 images
EPOCHS = 2


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """8 annotated frames of one real synthetic H.264 video at 128x96."""
    folder = tmp_path_factory.mktemp("teacher_loop")
    return labeled_frames(generate_synthetic_dataset(folder, num_videos=1, num_frames=8, width=128, height=96, seed=0))


def _config(*overrides):
    return load_config(TINY, [
        "preprocess.short_side=96", "preprocess.max_long_side=128",
        f"teacher_training.epochs={EPOCHS}", "teacher_training.batch_size=2", "teacher_training.base_lr=0.005",
        "teacher_training.warmup_steps=2", "teacher_training.lr_decay_epochs=[1]", "teacher_training.checkpoint_every_steps=3",
        *overrides,
    ])


def _model(cfg):
    torch.manual_seed(cfg.seed)
    return build_rfcn(cfg.model)


def _weights(module):
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def _recording(batches, seen):
    """``batches`` that also note the samples of every batch they hand out, per epoch."""
    def batches_of(epoch, start_batch):
        for batch in batches(epoch, start_batch):
            seen.append((epoch, batch.samples))
            yield batch
    return batches_of


def _roundtrip(data):
    buffer = io.BytesIO()
    torch.save(data, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_two_epochs_train_in_one_process_without_ray(frames):
    cfg = _config()
    model = _model(cfg)
    before = _weights(model)
    batches = ShardBatches(frames, cfg)
    assert batches.steps_per_epoch == STEPS_PER_EPOCH
    steps, epochs, checkpoints = [], [], []

    def on_checkpoint(state, reason):
        checkpoints.append((state.global_step, reason, state.next_epoch, state.samples_done_in_epoch))
        assert state.optimizer is not None

    state = train_teacher_epochs(model, cfg, batches, batches.steps_per_epoch, on_step=steps.append,
                                 on_epoch_end=epochs.append, on_checkpoint=on_checkpoint)

    assert (state.next_epoch, state.samples_done_in_epoch, state.global_step) == (EPOCHS, 0, EPOCHS * STEPS_PER_EPOCH)
    # mid-epoch every 3 steps, and at each epoch end (which restarts the count of images done)
    assert checkpoints == [(3, "mid", 0, 6), (4, "epoch_end", 1, 0), (6, "mid", 1, 4), (8, "epoch_end", 2, 0)]
    assert [s.global_step for s in steps] == list(range(1, 9))
    assert [s.end_of_epoch for s in steps] == [False, False, False, True] * 2
    assert steps[-1].epoch_progress == 2.0 and all(s.images_per_s > 0 for s in steps)
    # lr: 0.005 x 2 images, warm-up over 2 steps, x0.1 after epoch 1
    schedule = LearningRateSchedule.from_config(cfg.teacher_training, 1, STEPS_PER_EPOCH)
    assert [s.losses.lr for s in steps] == pytest.approx([schedule(i) for i in range(8)])
    assert [s.losses.lr for s in steps][:5] == pytest.approx([0.005, 0.01, 0.01, 0.01, 0.001])
    # the epoch means are this rank's mean loss terms of the epoch's steps
    assert [e.epoch for e in epochs] == [0, 1]
    for epoch in epochs:
        own = [s.losses.loss_terms() for s in steps if s.epoch == epoch.epoch]
        assert set(epoch.losses) == set(LOSS_TERMS)
        assert epoch.losses["total"] == pytest.approx(sum(t["total"] for t in own) / len(own))
    assert state.last_epoch_losses == epochs[-1].losses and state.loss_count == 0
    assert state.optimizer is not None
    after = _weights(model)
    assert not torch.equal(before["ps_roi_head.rfcn_cls.weight"], after["ps_roi_head.rfcn_cls.weight"])
    # The loop needed no Ray: none was started.
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_the_same_seed_gives_the_same_weights(frames):
    cfg = _config("teacher_training.epochs=1")
    first, second = _model(cfg), _model(cfg)
    for model in (first, second):
        batches = ShardBatches(frames, cfg)
        train_teacher_epochs(model, cfg, batches, batches.steps_per_epoch)
    expected, actual = _weights(first), _weights(second)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_a_run_cut_mid_epoch_resumes_with_the_uncut_runs_batches_and_lr(frames):
    cfg = _config()
    uncut_seen, uncut_steps = [], []
    uncut = train_teacher_epochs(_model(cfg), cfg, _recording(ShardBatches(frames, cfg), uncut_seen), STEPS_PER_EPOCH,
                                 on_step=uncut_steps.append)

    class Cut(Exception):
        pass

    saved = {}
    first = _model(cfg)

    def cut_after_step_six(state, reason):
        if state.global_step == 6:  # a "mid" checkpoint in epoch 2, batch 2 of 4
            saved["state"] = TeacherLoopState.from_dict(_roundtrip(state.to_dict()))
            saved["model"] = _weights(first)
            raise Cut

    with pytest.raises(Cut):
        train_teacher_epochs(first, cfg, ShardBatches(frames, cfg), STEPS_PER_EPOCH, on_checkpoint=cut_after_step_six)
    cut = saved["state"]
    assert (cut.next_epoch, cut.samples_done_in_epoch, cut.global_step, cut.loss_count) == (1, 4, 6, 2)
    assert cut.start_batch(world_size=1, batch_size=2) == 2 and cut.start_batch(world_size=2, batch_size=1) == 2

    def resume():
        model = _model(cfg)
        model.load_state_dict(saved["model"])
        seen, steps = [], []
        state = train_teacher_epochs(model, cfg, _recording(ShardBatches(frames, cfg), seen), STEPS_PER_EPOCH,
                                     state=TeacherLoopState.from_dict(_roundtrip(cut.to_dict())), on_step=steps.append)
        return model, state, seen, steps

    model, state, seen, steps = resume()
    assert (state.next_epoch, state.global_step) == (uncut.next_epoch, uncut.global_step) == (2, 8)
    # the cut epoch's first two batches are skipped without being read; the rest are the uncut run's
    assert seen == uncut_seen[-2:]
    assert [s.global_step for s in steps] == [7, 8]
    assert [s.losses.lr for s in steps] == pytest.approx([s.losses.lr for s in uncut_steps[-2:]])
    assert set(state.last_epoch_losses) == set(LOSS_TERMS)
    # resuming is deterministic too: the same saved state gives the same weights
    again, _, _, _ = resume()
    expected, actual = _weights(model), _weights(again)
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_an_epoch_of_the_wrong_length_stops_the_loop(frames):
    cfg = _config("teacher_training.epochs=1")
    batches = ShardBatches(frames, cfg)
    one_batch = lambda epoch, start: [next(iter(batches(epoch, start)))]  # noqa: E731
    with pytest.raises(RuntimeError, match="got 1 of 2 batches"):
        train_teacher_epochs(_model(cfg), cfg, one_batch, steps_per_epoch=2)
    with pytest.raises(RuntimeError, match="more batches than steps_per_epoch=1"):
        train_teacher_epochs(_model(cfg), cfg, lambda epoch, start: [*batches(epoch, start)][:2], steps_per_epoch=1)
