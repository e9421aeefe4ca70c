"""Stage 1 as plain PyTorch: the epochs of the supervised teacher (Eq. 2-3), in one process or one
DDP rank of many.

    torch.manual_seed(cfg.seed)
    rfcn = build_rfcn(cfg.model)
    frames = labeled_frames(load_labeled_dataset(cfg.teacher_training.data, num_classes=cfg.model.num_classes))
    batches = ShardBatches(frames, cfg)                  # this rank's batches, epoch by epoch
    state = train_teacher_epochs(rfcn, cfg, batches, batches.steps_per_epoch)
    state.last_epoch_losses["total"], state.global_step

Each epoch is ``steps_per_epoch`` optimiser steps over ``batches_of(epoch, start_batch)``; the
optimiser and the lr schedule (warm-up, x0.1 after each of ``lr_decay_epochs``, linear scaling with
the effective batch) are :mod:`semidff.training.teacher_step`'s. What differs between a notebook and
a Ray Train worker is passed in, nothing here knows Ray: ``model`` (the bare R-FCN or its DDP
wrapper; the step's forward goes through it), the rank and the world size (lr scaling, the anchor
sampling seed, the images/s of all workers), ``batches_of`` (the worker's shard), and the hooks
``on_step`` (per-step logging), ``on_epoch_end`` and ``on_checkpoint`` (save
:class:`TeacherLoopState` with the model's weights; called every ``checkpoint_every_steps`` steps
and at each epoch end). A resumed run passes the state it saved, with the weights already loaded
into ``model``: finished epochs are skipped, and so are the batches of the cut epoch that the state
holds (counted in images, so a resume with another worker count or batch size skips as many).

Randomness: the model's initial weights come from the caller's seed; the epoch's order and flips
from (seed, epoch) (:mod:`semidff.training.teacher_data`); the RPN's anchor sampling from torch's
global generator, seeded here from (seed, rank, global step) when the loop starts. The same seed
gives the same run; a run resumed at step k reseeds the anchor sampling at k, so it continues with
the uncut run's batches and lr but other anchor samples.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import numpy as np
import torch
from torch import nn

from semidff.config import Config
from semidff.training.teacher_data import (
    LabeledFrames,
    TeacherBatch,
    batches_per_epoch,
    epoch_flips,
    epoch_order,
    iterate_batches,
    shard_for_rank,
)
from semidff.training.teacher_step import (
    LearningRateSchedule,
    TeacherStepLosses,
    build_optimizer,
    set_learning_rate,
    train_step,
    unwrap,
)

LOSS_TERMS = ("total", "rpn_cls", "rpn_box", "rfcn_cls", "rfcn_box")


@dataclass
class TeacherLoopState:
    """Where a stage-1 run stands; what a checkpoint must hold (with the model's weights).

    next_epoch: epochs completed (the 0-based epoch to train next); samples_done_in_epoch: images
    of that epoch already trained, over all workers (a resume skips their batches);
    global_step: optimiser steps over the whole run. loss_sums / loss_count: this rank's running
    sums of the loss terms over the current epoch and their number of steps;
    last_epoch_losses: the last finished epoch's mean loss terms (this rank's batches).
    optimizer: the optimiser's state as of the last checkpoint (None: a fresh optimiser).

    The field names are the keys of the checkpoints ``semidff train-teacher`` writes, so an older
    run's checkpoint resumes too.
    """

    next_epoch: int = 0
    samples_done_in_epoch: int = 0
    global_step: int = 0
    loss_sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LOSS_TERMS, 0.0))
    loss_count: int = 0
    last_epoch_losses: dict[str, float] = field(default_factory=dict)
    optimizer: Optional[dict[str, Any]] = None

    def to_dict(self) -> dict[str, Any]:
        """Plain containers of numbers and tensors (``torch.load(weights_only=True)`` reads them);
        the optimiser's state is not copied."""
        return {
            "next_epoch": int(self.next_epoch),
            "samples_done_in_epoch": int(self.samples_done_in_epoch),
            "global_step": int(self.global_step),
            "loss_sums": dict(self.loss_sums),
            "loss_count": int(self.loss_count),
            "last_epoch_losses": dict(self.last_epoch_losses),
            "optimizer": self.optimizer,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TeacherLoopState":
        """The state in ``data`` (a :meth:`to_dict`, or a checkpoint's whole saved dict: other keys are ignored)."""
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})

    def start_batch(self, world_size: int, batch_size: int) -> int:
        """The batch of epoch ``next_epoch`` to train next, in batches of ``world_size`` x ``batch_size`` images."""
        return int(self.samples_done_in_epoch) // (world_size * batch_size)


@dataclass(frozen=True)
class TeacherStepRecord:
    """One optimiser step as the ``on_step`` hook sees it.

    epoch / batch_index: 0-based; losses: this rank's batch's loss terms and the step's lr;
    images_per_s: all workers' images per second (world size x this rank's), data wait included.
    """

    epoch: int
    batch_index: int
    steps_per_epoch: int
    global_step: int
    losses: TeacherStepLosses
    images_per_s: float

    @property
    def end_of_epoch(self) -> bool:
        return self.batch_index + 1 == self.steps_per_epoch

    @property
    def epoch_progress(self) -> float:
        """Epochs done after this step, as a fraction (1.5: halfway through the second epoch)."""
        return self.epoch + (self.batch_index + 1) / self.steps_per_epoch


@dataclass(frozen=True)
class TeacherEpochRecord:
    """A finished epoch as the ``on_epoch_end`` hook sees it: its mean loss terms (this rank's batches)."""

    epoch: int
    global_step: int
    losses: dict[str, float]


@dataclass(frozen=True)
class ShardBatches:
    """One rank's batches of the labeled frames, epoch by epoch (:mod:`semidff.training.teacher_data`):
    the epoch's order and flips drawn from (seed, epoch), the rank's shard of it, decoded a few
    batches ahead on a background thread, from batch ``start_batch`` on."""

    frames: LabeledFrames
    cfg: Config
    rank: int = 0
    world_size: int = 1

    @property
    def steps_per_epoch(self) -> int:
        return batches_per_epoch(len(self.frames), self.world_size, self.cfg.teacher_training.batch_size)

    def __call__(self, epoch: int, start_batch: int = 0) -> Iterator[TeacherBatch]:
        cfg, tcfg = self.cfg, self.cfg.teacher_training
        shard = shard_for_rank(epoch_order(len(self.frames), cfg.seed, epoch), self.rank, self.world_size)
        flips = epoch_flips(len(self.frames), cfg.seed, epoch) if tcfg.horizontal_flip else None
        return iterate_batches(
            self.frames, shard, tcfg.batch_size, cfg.preprocess.short_side, cfg.preprocess.max_long_side, flips,
            start_batch=start_batch,
        )


def anchor_sampling_seed(seed: int, rank: int, global_step: int) -> int:
    """The seed of torch's generator when a rank starts (or resumes) at ``global_step``."""
    return int(np.random.SeedSequence([seed, rank, global_step]).generate_state(1)[0])


def train_teacher_epochs(
    model: nn.Module,
    cfg: Config,
    batches_of: Callable[[int, int], Iterable[TeacherBatch]],
    steps_per_epoch: int,
    *,
    state: Optional[TeacherLoopState] = None,
    rank: int = 0,
    world_size: int = 1,
    device: Optional[torch.device | str] = None,
    on_step: Optional[Callable[[TeacherStepRecord], None]] = None,
    on_epoch_end: Optional[Callable[[TeacherEpochRecord], None]] = None,
    on_checkpoint: Optional[Callable[[TeacherLoopState, str], None]] = None,
) -> TeacherLoopState:
    """Train ``model`` through the epochs of ``cfg.teacher_training.epochs`` not yet done in
    ``state``; returns the final state (its ``optimizer`` set).

    batches_of(epoch, start_batch): this rank's batches of that epoch from batch ``start_batch``
        on (e.g. :class:`ShardBatches`); an epoch is ``steps_per_epoch`` batches, the same on
        every rank (DDP needs that).
    device: where the batches go (default: the model's parameters' device).
    on_checkpoint(state, reason): reason "mid" every ``checkpoint_every_steps`` steps within an
        epoch, "epoch_end" after each epoch; the state's ``optimizer`` is current then.
    Raises RuntimeError when an epoch's batches are more or fewer than ``steps_per_epoch``, and
    FloatingPointError from the step when a loss is not finite.
    """
    tcfg = cfg.teacher_training
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch}: must be >= 1")
    state = state or TeacherLoopState()
    rfcn = unwrap(model)
    device = device if device is not None else next(rfcn.parameters()).device
    optimizer = build_optimizer(rfcn, tcfg, world_size)
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
    schedule = LearningRateSchedule.from_config(tcfg, world_size, steps_per_epoch)
    images_per_batch = world_size * tcfg.batch_size
    start_batch = state.start_batch(world_size, tcfg.batch_size)
    torch.manual_seed(anchor_sampling_seed(cfg.seed, rank, state.global_step))

    def checkpoint(reason: str) -> None:
        if on_checkpoint is not None:
            state.optimizer = optimizer.state_dict()
            on_checkpoint(state, reason)

    model.train()
    last_time = time.perf_counter()
    while state.next_epoch < tcfg.epochs:
        epoch = state.next_epoch
        for batch_index, batch in enumerate(batches_of(epoch, start_batch), start=start_batch):
            if batch_index >= steps_per_epoch:
                raise RuntimeError(f"epoch {epoch + 1}: more batches than steps_per_epoch={steps_per_epoch} on rank {rank}")
            set_learning_rate(optimizer, schedule(state.global_step))
            losses = train_step(model, optimizer, batch.to(device), cfg.loss.supervised)
            state.global_step += 1
            now = time.perf_counter()
            images_per_s = world_size * losses.num_images / max(now - last_time, 1e-9)  # data wait included
            last_time = now
            for term, value in losses.loss_terms().items():
                state.loss_sums[term] += value
            state.loss_count += 1
            state.samples_done_in_epoch = (batch_index + 1) * images_per_batch
            step = TeacherStepRecord(epoch, batch_index, steps_per_epoch, state.global_step, losses, images_per_s)
            if on_step is not None:
                on_step(step)
            if step.end_of_epoch:
                state.last_epoch_losses = {k: v / max(state.loss_count, 1) for k, v in state.loss_sums.items()}
                state.loss_sums, state.loss_count = dict.fromkeys(LOSS_TERMS, 0.0), 0
                state.next_epoch, state.samples_done_in_epoch = epoch + 1, 0
                if on_epoch_end is not None:  # before the checkpoint: what it logs travels in the checkpoint
                    on_epoch_end(TeacherEpochRecord(epoch, state.global_step, dict(state.last_epoch_losses)))
                checkpoint("epoch_end")
            elif state.global_step % tcfg.checkpoint_every_steps == 0:
                checkpoint("mid")
        if state.next_epoch == epoch:
            raise RuntimeError(
                f"epoch {epoch + 1}: rank {rank} got {state.samples_done_in_epoch // images_per_batch} of "
                f"{steps_per_epoch} batches"
            )
        start_batch = 0
    state.optimizer = optimizer.state_dict()
    return state
