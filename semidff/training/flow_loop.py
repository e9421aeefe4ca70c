"""Stage 2 as plain PyTorch: the epochs of step A then step B (paper §3.4), in one process or one
worker of many.

    student = build_student(teacher, cfg.model, cfg.training.finetune)
    batches = lambda step: local_pair_batches("runs/cache", offsets[step], batch_size=2)   # semidff.cache.pairs
    state = train_flow_epochs(student, cfg, epoch_plan(cfg.training), batches, pair_batches_from_cache)
    state.last_epoch_losses["total"], state.global_step

The schedule runs as consecutive epochs, so one checkpoint format and one resume cover both steps:
each epoch trains ``plan[epoch]`` ("regression" = step A, Eq. 4, the propagator only; "semantic" =
step B, Eq. 5-9, the propagator and what ``training.finetune`` names; "joint" = Table 3f). A new
step gets its own parameters (:meth:`Student.set_step`), its own model wrapper and a fresh
optimiser (the official code restarts the optimiser between the two steps).

What differs between a notebook and a Ray Train worker is passed in, nothing here knows Ray:
``WorkerGroup`` (rank, world size, the DDP wrapper, the sum over workers), ``batches_of`` (the
worker's data shard of each step), and the hooks ``on_step`` (per-step logging), ``validate``
(per-epoch metrics) and ``on_checkpoint`` (save :class:`FlowLoopState` plus the student's trained
weights; called every ``checkpoint_every_steps`` steps and at each epoch end). A resumed run passes
the state it saved: finished epochs are skipped and so are the batches of the cut epoch that the
state already holds.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional

import torch
from torch import nn

from semidff.config import Config
from semidff.teacher_targets import PairBatch
from semidff.training.flow_step import LOSS_TERMS, FlowObjective, StepKind, Student, build_optimizer, train_step

NumpyBatch = Mapping[str, Any]  # a dict of columns, as semidff.training.flow_batch documents
SUM_KEYS = LOSS_TERMS + ("pairs", "seconds", "data_wait", "steps")


def _no_wrapper(student: Student, objective: FlowObjective) -> nn.Module:
    return student


def _alone(values: list[float]) -> list[float]:
    return [float(v) for v in values]


@dataclass
class WorkerGroup:
    """How this process takes part in training: alone (the defaults) or as one DDP rank.

    prepare_model(student, objective): the module the step calls (e.g. a DDP wrapper; the
        objective says whether some head parameters stay unused). Called once per step kind,
        after the student switched to it; the loop keeps only the newest wrapper.
    sum_over_workers(values): element-wise sum over all ranks (an all-reduce).
    """

    rank: int = 0
    world_size: int = 1
    prepare_model: Callable[[Student, FlowObjective], nn.Module] = _no_wrapper
    sum_over_workers: Callable[[list[float]], list[float]] = _alone


@dataclass
class FlowLoopState:
    """Where a stage-2 run stands; what a checkpoint must hold (with the student's trained weights).

    epoch: epochs completed; batches_done: batches of epoch ``epoch`` already trained (a resume
    skips them); global_step: optimiser steps over the whole run.
    epoch_sums: this rank's running sums over the current epoch (loss terms x steps, pairs,
    seconds, data wait seconds, steps).
    last_epoch_losses / last_epoch_rate: the last finished epoch's mean loss terms over all workers
    and pairs/s per worker; validation: its validation metrics.
    optimizer_state / optimizer_step: the optimiser's state and the step kind it belongs to, as of
    the last checkpoint (a resume in another step kind starts a fresh optimiser).
    """

    epoch: int = 0
    batches_done: int = 0
    global_step: int = 0
    epoch_sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SUM_KEYS, 0.0))
    last_epoch_losses: dict[str, float] = field(default_factory=dict)
    last_epoch_rate: float = 0.0
    validation: dict[str, float] = field(default_factory=dict)
    optimizer_state: Optional[dict[str, Any]] = None
    optimizer_step: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        """Plain containers of numbers, strings and tensors (``torch.load(weights_only=True)`` reads them)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FlowLoopState":
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})

    def epoch_metrics(self) -> dict[str, float]:
        """The last finished epoch as metrics: ``train/<term>``, pairs/s per worker, validation."""
        return (
            {f"train/{k}": v for k, v in self.last_epoch_losses.items()}
            | {"train/pairs_per_s_per_worker": self.last_epoch_rate}
            | dict(self.validation)
        )


@dataclass(frozen=True)
class StepRecord:
    """One optimiser step as the ``on_step`` hook sees it.

    epoch: 0-based epoch; step_kind: its kind; batch_index: 0-based batch in the epoch; terms: the
    loss terms of this rank's batch (and "pairs"); seconds: the step's time, data_wait included.
    """

    epoch: int
    step_kind: str
    batch_index: int
    global_step: int
    terms: dict[str, float]
    seconds: float
    data_wait: float

    @property
    def pairs_per_s(self) -> float:
        return self.terms["pairs"] / max(self.seconds, 1e-9)


@dataclass(frozen=True)
class EpochRecord:
    """A finished epoch as the ``on_epoch_end`` hook sees it (means over all workers)."""

    epoch: int
    step_kind: str
    global_step: int
    losses: dict[str, float]
    pairs_per_s: float  # all workers together
    pairs_per_s_per_worker: float
    data_wait_fraction: float
    validation: dict[str, float]


def train_flow_epochs(
    student: Student,
    cfg: Config,
    plan: list[StepKind],
    batches_of: Callable[[str], Iterable[NumpyBatch]],
    to_pair_batches: Callable[[NumpyBatch], list[PairBatch]],
    *,
    state: Optional[FlowLoopState] = None,
    workers: WorkerGroup = WorkerGroup(),
    autocast_dtype: Optional[torch.dtype] = None,
    on_step: Optional[Callable[[StepRecord], None]] = None,
    validate: Optional[Callable[[Student, int], dict[str, float]]] = None,
    on_epoch_end: Optional[Callable[[EpochRecord], None]] = None,
    on_checkpoint: Optional[Callable[[FlowLoopState, str], None]] = None,
) -> FlowLoopState:
    """Train ``student`` through the epochs of ``plan`` not yet done in ``state``; returns the final state.

    batches_of(step_kind): this worker's batches of one epoch of that step (a fresh iterable each
        call), in a fixed order if a cut epoch is to resume where it stopped.
    to_pair_batches: one batch -> its same-size PairBatch micro-batches on the training device
        (``semidff.training.flow_batch``); they make one optimiser step (``train_step``).
    validate(student, epoch): the epoch's validation metrics (every rank calls it; it must
        combine the ranks itself). on_checkpoint(state, reason): reason "mid" every
        ``training.checkpoint_every_steps`` steps, "epoch_end" after each epoch.
    Raises RuntimeError when an epoch gets no batch on this rank.
    """
    tcfg = cfg.training
    state = state or FlowLoopState()
    model: Optional[nn.Module] = None
    optimizer: Optional[torch.optim.Optimizer] = None
    model_step: Optional[str] = None

    def checkpoint(reason: str) -> None:
        if on_checkpoint is None:
            return
        state.optimizer_state = optimizer.state_dict() if optimizer is not None else state.optimizer_state
        state.optimizer_step = model_step if optimizer is not None else state.optimizer_step
        on_checkpoint(state, reason)

    while state.epoch < len(plan):
        epoch, step_kind = state.epoch, plan[state.epoch]
        objective = FlowObjective.from_config(cfg, step_kind)
        if model_step != step_kind:  # a new step: its parameters, its wrapper, a fresh optimiser
            parameters = student.set_step(step_kind)
            model = None  # drop the previous step's wrapper before wrapping again
            model = workers.prepare_model(student, objective)
            optimizer = build_optimizer(parameters, tcfg.optimizer, tcfg.lr)
            if state.optimizer_state is not None and state.optimizer_step == step_kind:
                optimizer.load_state_dict(state.optimizer_state)
            model_step = step_kind
        student.train()
        sums = state.epoch_sums
        skip = state.batches_done
        last = time.perf_counter()
        for batch_index, numpy_batch in enumerate(batches_of(step_kind)):
            if batch_index < skip:  # trained before the cut: the state holds their effect
                last = time.perf_counter()
                continue
            fetched = time.perf_counter()
            terms = train_step(model, optimizer, to_pair_batches(numpy_batch), objective, autocast_dtype)
            now = time.perf_counter()
            seconds, data_wait, last = now - last, fetched - last, now  # a step's time includes its wait for data
            state.global_step += 1
            state.batches_done = batch_index + 1
            for key in LOSS_TERMS:
                sums[key] += terms[key]
            sums["pairs"] += terms["pairs"]
            sums["seconds"] += seconds
            sums["data_wait"] += data_wait
            sums["steps"] += 1
            if on_step is not None:
                on_step(StepRecord(epoch, step_kind, batch_index, state.global_step, terms, seconds, data_wait))
            if tcfg.checkpoint_every_steps and state.global_step % tcfg.checkpoint_every_steps == 0:
                checkpoint("mid")
        if sums["steps"] == 0:
            raise RuntimeError(
                f"epoch {epoch + 1} ({step_kind}): no training pair reached worker {workers.rank}; the training split is empty "
                f"(check the data's offsets and training.validation_fraction={tcfg.validation_fraction})"
            )

        # Epoch end: mean losses over every worker's steps, rates, validation, checkpoint.
        world = workers.world_size
        summed = workers.sum_over_workers(
            [sums[k] / sums["steps"] for k in LOSS_TERMS]
            + [sums["pairs"] / max(sums["seconds"], 1e-9), sums["data_wait"] / max(sums["seconds"], 1e-9)]
        )
        state.last_epoch_losses = {k: v / world for k, v in zip(LOSS_TERMS, summed)}
        rate, wait_share = summed[-2], summed[-1] / world
        state.last_epoch_rate = rate / world
        state.epoch_sums = dict.fromkeys(SUM_KEYS, 0.0)
        state.validation = validate(student, epoch) if validate is not None else {}
        state.epoch, state.batches_done = epoch + 1, 0
        if on_epoch_end is not None:
            on_epoch_end(EpochRecord(epoch, step_kind, state.global_step, dict(state.last_epoch_losses), rate,
                                     state.last_epoch_rate, wait_share, dict(state.validation)))
        checkpoint("epoch_end")
    return state
