"""Stage 1 on Ray Train (DDP): each worker runs ``semidff.training.teacher_loop.train_teacher_epochs`` on its shard.

    trainer = TorchTrainer(train_loop_per_worker, train_loop_config=TeacherWorkerSetup(...).to_dict(), ...)
    saved = state_of_checkpoint(trainer.fit().checkpoint)      # {"model": ..., next_epoch, global_step, ...}

What the plain loop leaves open, this module fills in for a Ray Train worker group: the labeled
frames' annotation table (once, through the object store; each worker decodes its own shard), the
DDP wrapper (``ray.train.torch.prepare_model``; gloo on CPU, NCCL on GPU), per-step MLflow metrics
from rank 0 logged exactly once (``pipelines.train_reporting``), progress lines, and checkpoints
that a restart (``FailureConfig``) or a rerun resumes from. A checkpoint's saved dict holds the
model's weights (``model``), the loop's :class:`TeacherLoopState` (its fields as keys), the metric
rows not yet sent, the MLflow run it logged to and the world size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

from pipelines.train_reporting import ProgressReporter, StepMetricLog, load_checkpoint_state, report_checkpoint
from semidff.config import Config
from semidff.models.build import build_rfcn
from semidff.training.teacher_data import LabeledFrames
from semidff.training.teacher_loop import (
    ShardBatches,
    TeacherEpochRecord,
    TeacherLoopState,
    TeacherStepRecord,
    train_teacher_epochs,
)
from semidff.training.teacher_step import unwrap


@dataclass
class TeacherWorkerSetup:
    """What every worker needs (it travels as Ray Train's ``train_loop_config``).

    cfg: the resolved config as a dict; frames: an object ref of the :class:`LabeledFrames`;
    run_id / tracking_uri: the MLflow run rank 0 logs to; progress: the driver's progress queue.
    """

    cfg: dict[str, Any]
    frames: Any
    run_id: str
    tracking_uri: str
    progress: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}  # no deep copy of the refs


def state_of_checkpoint(checkpoint: Any) -> dict[str, Any]:
    """The saved dict of a Ray Train checkpoint of this stage (weights_only: plain tensors and numbers)."""
    return load_checkpoint_state(checkpoint)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One worker of the Ray Train run (V2): restore, train the epochs left (the plain loop),
    checkpoint. Rank 0 logs to MLflow and sends progress lines; every rank reports (Ray Train's barrier)."""
    setup = TeacherWorkerSetup(**config)
    cfg = Config.model_validate(setup.cfg)
    tcfg = cfg.teacher_training
    frames: LabeledFrames = ray.get(setup.frames)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(tcfg.cpus_per_worker)))

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = ray.train.torch.prepare_model(build_rfcn(cfg.model))
    rfcn = unwrap(model)

    state = TeacherLoopState()
    checkpoint = ray.train.get_checkpoint()
    saved: dict[str, Any] = {}
    if checkpoint is not None:
        saved = state_of_checkpoint(checkpoint)
        rfcn.load_state_dict(saved["model"])
        state = TeacherLoopState.from_dict(saved)
    log = StepMetricLog(setup.tracking_uri, setup.run_id) if rank == 0 else None
    report = ProgressReporter(setup.progress if rank == 0 else None)
    if checkpoint is not None:
        previous_run_id = saved.get("mlflow_run_id")
        if log is not None:
            # A worker restart within this fit continues this MLflow run: send the steps the cut worker
            # had checkpointed but maybe not logged. (A rerun opens a new run, which starts here.)
            log.restore(saved.get("pending_metrics", []), written_for_run_id=previous_run_id)
            log.tag("semidff.train_teacher.resumed_at_step", str(state.global_step))
            if previous_run_id and previous_run_id != setup.run_id:
                log.tag("semidff.train_teacher.resumed_from_run", previous_run_id)
        report.line(f"resumed at epoch {state.next_epoch + 1}, batch {state.start_batch(world, tcfg.batch_size)}, "
                    f"step {state.global_step}")

    def save(loop_state: TeacherLoopState, reason: str) -> None:
        metrics = {"epoch": loop_state.next_epoch, "step": loop_state.global_step}
        if reason == "epoch_end":
            metrics |= {f"epoch_{k}": v for k, v in loop_state.last_epoch_losses.items()}
        snapshot = {
            "model": rfcn.state_dict(),
            **loop_state.to_dict(),
            "pending_metrics": log.rows() if log is not None else [],
            "mlflow_run_id": setup.run_id,
            "world_size": world,
        } if rank == 0 else {}
        report_checkpoint(rank, snapshot, metrics)  # returns once the checkpoint is committed
        if log is not None:
            log.flush()  # only after a committed checkpoint holds these steps: never logged twice

    if state.next_epoch >= tcfg.epochs:  # nothing left to train: hand the restored state back as the result
        state.samples_done_in_epoch = 0
        save(state, "final")
        return

    def on_step(step: TeacherStepRecord) -> None:
        losses = step.losses
        if log is not None:
            log.add(step.global_step, {**{f"train/{k}": v for k, v in losses.loss_terms().items()},
                                       "train/lr": losses.lr, "train/images_per_s": step.images_per_s,
                                       "train/epoch": step.epoch_progress})
        report.maybe_line(
            f"epoch {step.epoch + 1}/{tcfg.epochs} batch {step.batch_index + 1}/{step.steps_per_epoch} step {step.global_step} "
            f"loss {losses.total:.4f} (rpn {losses.rpn_cls:.3f}/{losses.rpn_box:.3f} "
            f"rfcn {losses.rfcn_cls:.3f}/{losses.rfcn_box:.3f}) lr {losses.lr:.2e} {step.images_per_s:.1f} images/s",
            force=step.end_of_epoch,
        )

    def on_epoch_end(epoch: TeacherEpochRecord) -> None:
        if log is not None:  # before the checkpoint: its state holds these rows too
            log.add(epoch.global_step, {f"epoch/{k}": v for k, v in epoch.losses.items()})

    batches = ShardBatches(frames, cfg, rank, world)
    train_teacher_epochs(
        model, cfg, batches, batches.steps_per_epoch, state=state, rank=rank, world_size=world, device=device,
        on_step=on_step, on_epoch_end=on_epoch_end, on_checkpoint=save,
    )
