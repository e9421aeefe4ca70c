"""Stage 2 as plain PyTorch, in this process and without Ray: step A then step B over a small
teacher cache read with pyarrow (semidff.cache.pairs), what trains in each step, the epoch means,
the checkpoint hook, and a run cut mid-epoch and resumed from its saved state ending with exactly
the weights of the uncut run."""
import sys

import pytest
import torch

from semidff.cache.pairs import local_pair_batches
from semidff.config import load_config
from semidff.models.build import build_rfcn
from semidff.training.flow_batch import pair_batches_from_cache
from semidff.training.flow_loop import FlowLoopState, WorkerGroup, train_flow_epochs
from semidff.training.flow_step import epoch_plan, step_offsets
from semidff.training.flow_validation import regression_error_sums
from semidff.training.flow_step import build_student
from tests.cache.synthetic_cache import TINY, cache_info, teacher_clip, write_cache

KEY_INTERVAL = 5
# 2 videos x 2 clips x 3 pairs at d in [0, 4]; step A (d in [1, 4]) sees 8 pairs, step B (d in [0, 4]) 12
CLIPS = [teacher_clip(video, key, offsets, num_rois=[5, 6, 4], seed=seed) for seed, (video, key, offsets) in enumerate([
    ("v0", 0, [0, 2, 4]), ("v0", 10, [1, 3, 0]), ("v1", 0, [1, 2, 0]), ("v1", 20, [0, 3, 4]),
])]
BATCH = 2


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    directory = tmp_path_factory.mktemp("flow_loop") / "cache"
    write_cache(directory, cache_info("fp32", offset_range=(0, 4)), CLIPS, clips_per_file=3)
    return str(directory)


def _config():
    return load_config(TINY, [f"video.key_interval={KEY_INTERVAL}", "training.regression_epochs=1", "training.semantic_epochs=1",
                              "training.lr=0.001", f"training.batch_size={BATCH}", "training.checkpoint_every_steps=3"])


def _student(cfg):
    torch.manual_seed(0)
    teacher = build_rfcn(cfg.model)
    torch.manual_seed(1)
    return build_student(teacher, cfg.model, cfg.training.finetune)


def _batches(cache):
    return lambda step: local_pair_batches(cache, step_offsets(step, KEY_INTERVAL), BATCH)


def _weights(module):
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def _heads(student):
    """The RPN and PS heads' weights (the synthetic RoIs lie outside the frames, so only the RPN
    head gets a gradient from them; both must stay unchanged in step A)."""
    return {f"rpn.{k}": v for k, v in _weights(student.rfcn.rpn_head).items()} | {
        f"ps.{k}": v for k, v in _weights(student.rfcn.ps_roi_head).items()}


def test_step_a_then_step_b_train_in_one_process_without_ray(cache):
    cfg = _config()
    student = _student(cfg)
    plan = epoch_plan(cfg.training)
    assert plan == ["regression", "semantic"]
    heads_before, flow_before = _heads(student), _weights(student.propagator)
    after_epoch, reasons = {}, []

    def on_checkpoint(state, reason):
        reasons.append((state.global_step, reason))
        if reason == "epoch_end":
            after_epoch[state.epoch] = (_heads(student), _weights(student.propagator), dict(state.last_epoch_losses))

    state = train_flow_epochs(student, cfg, plan, _batches(cache), pair_batches_from_cache, on_checkpoint=on_checkpoint)

    assert (state.epoch, state.batches_done, state.global_step) == (2, 0, 4 + 6)  # 8 pairs then 12, 2 per step
    assert reasons == [(3, "mid"), (4, "epoch_end"), (6, "mid"), (9, "mid"), (10, "epoch_end")]
    heads_a, flow_a, losses_a = after_epoch[1]
    heads_b, flow_b, losses_b = after_epoch[2]
    # Step A trains the propagator only, with the regression loss; step B also the heads, with the semantic loss.
    assert all(torch.equal(heads_before[k], heads_a[k]) for k in heads_before)
    assert any(not torch.equal(flow_before[k], flow_a[k]) for k in flow_before)
    assert any(not torch.equal(heads_a[k], heads_b[k]) for k in heads_a)
    assert losses_a["regression"] > 0 and losses_a["semantic"] == 0 and losses_a["total"] == pytest.approx(losses_a["regression"])
    assert losses_b["semantic"] > 0 and losses_b["regression"] == 0
    assert state.last_epoch_losses == losses_b and state.last_epoch_rate > 0
    assert state.optimizer_step == "semantic" and state.optimizer_state is not None
    # The loop needed no Ray: none was started (the cache writer's module may import it, nothing more).
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_a_run_cut_mid_epoch_resumes_from_its_state_to_the_same_weights(cache):
    cfg = _config()
    plan = epoch_plan(cfg.training)
    uncut = _student(cfg)
    train_flow_epochs(uncut, cfg, plan, _batches(cache), pair_batches_from_cache)

    saved = {}

    class Cut(Exception):
        pass

    def cut_after_step_six(state, reason):
        if state.global_step == 6:  # a "mid" checkpoint in step B's epoch, batch 2 of 6
            saved["state"] = FlowLoopState.from_dict(torch.load(_roundtrip(state.to_dict()), weights_only=True))
            saved["student"] = {k: v.clone() for k, v in first.trained_state_dict().items()}
            raise Cut

    first = _student(cfg)
    with pytest.raises(Cut):
        train_flow_epochs(first, cfg, plan, _batches(cache), pair_batches_from_cache,
                          on_checkpoint=cut_after_step_six)
    assert (saved["state"].epoch, saved["state"].batches_done) == (1, 2)

    resumed = _student(cfg)
    resumed.load_trained_state_dict(saved["student"])
    state = train_flow_epochs(resumed, cfg, plan, _batches(cache), pair_batches_from_cache, state=saved["state"])
    assert state.global_step == 10
    expected, actual = uncut.trained_state_dict(), resumed.trained_state_dict()
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_validation_and_the_worker_group_hooks(cache):
    cfg = _config()
    student = _student(cfg)
    # A new propagator (small random weights) starts near zero flow and unit scale: propagating is about copying.
    propagated, copied = regression_error_sums(student, local_pair_batches(cache, (1, 4), BATCH), pair_batches_from_cache)
    assert copied > 0 and propagated == pytest.approx(copied, rel=0.05)
    assert student.training

    wrapped, summed = [], []
    workers = WorkerGroup(rank=0, world_size=2, prepare_model=lambda s, objective: wrapped.append(objective.step) or s,
                          sum_over_workers=lambda values: summed.append(len(values)) or [2 * v for v in values])
    state = train_flow_epochs(student, cfg, epoch_plan(cfg.training), _batches(cache), pair_batches_from_cache, workers=workers,
                              validate=lambda s, epoch: {"val/epoch": float(epoch)})
    assert wrapped == ["regression", "semantic"]  # one wrapper per step
    assert summed == [9, 9]  # 7 loss terms + pairs/s + wait share, once per epoch
    assert state.validation == {"val/epoch": 1.0}
    # A "sum" over 2 workers that doubles every value: the means divide by the world size again.
    assert state.last_epoch_losses["semantic"] > 0


def _roundtrip(data):
    import io

    buffer = io.BytesIO()
    torch.save(data, buffer)
    buffer.seek(0)
    return buffer
