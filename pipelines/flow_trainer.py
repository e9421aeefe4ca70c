"""Stage 2 on Ray Train (DDP): each worker runs ``semidff.training.flow_loop.train_flow_epochs`` on its shard.

    trainer = TorchTrainer(train_loop_per_worker, train_loop_config=FlowWorkerSetup(...).to_dict(),
                           datasets=pair_datasets(cfg, source, plan), ...)

What the plain loop leaves open, this module fills in for a Ray Train worker group: the data shard
of each step (``ray.train.get_dataset_shard("train_<step>")``), the DDP wrapper
(``ray.train.torch.prepare_model``), the sum over workers (an all-reduce), per-step MLflow metrics
from rank 0 logged exactly once (``pipelines.train_reporting``), progress lines, checkpoints that a
restart (``FailureConfig``) or a rerun resumes from, and the per-epoch validation.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Optional

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import UserCallback

from pipelines.train_reporting import ProgressReporter, StepMetricLog, load_checkpoint_state, report_checkpoint
from semidff.checkpoint import build_teacher, load_model_checkpoint
from semidff.config import Config
from semidff.training.flow_batch import pair_batches_from_cache, pair_batches_on_the_fly
from semidff.training.flow_inputs import VALIDATION_SPLIT
from semidff.training.flow_loop import EpochRecord, FlowLoopState, StepRecord, WorkerGroup, train_flow_epochs
from semidff.training.flow_step import LOSS_TERMS, FlowObjective, Student, build_student
from semidff.training.flow_validation import flow_map, regression_error_sums


@dataclass
class FlowWorkerSetup:
    """What every worker needs (plain values: it travels as Ray Train's ``train_loop_config``).

    cfg: the resolved config as a dict; plan: the step kind of every epoch; teacher_checkpoint: its
    absolute path; teacher_source: "cache" or "on_the_fly"; has_validation: a "val" dataset exists;
    output_dir: the stage's folder (per-epoch validation goes to ``validation/epoch_<n>/``);
    run_id / tracking_uri: the MLflow run rank 0 logs to; progress: the driver's progress queue.
    """

    cfg: dict[str, Any]
    plan: list[str]
    teacher_checkpoint: str
    teacher_source: str
    has_validation: bool
    output_dir: str
    run_id: str
    tracking_uri: str
    progress: Any = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def checkpoint_name(global_step: int, reason: str) -> str:
    """A checkpoint's folder in the Ray run: the step it holds and why it was taken."""
    return f"checkpoint_step{global_step:08d}_{reason}"


def state_of_checkpoint(checkpoint: Any) -> dict[str, Any]:
    """The saved dict (``student``, ``loop``, ``pending_metrics``, ...) of a Ray Train checkpoint."""
    if checkpoint is None:
        raise RuntimeError("flow training ended without a checkpoint; see the Ray Train log above")
    return load_checkpoint_state(checkpoint)


def sum_over_workers(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over the DDP ranks (the values themselves when training alone)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _prepare_model(student: Student, objective: FlowObjective) -> torch.nn.Module:
    # A switched-off Eq. 5 term leaves head parameters without gradient: DDP must be told.
    return ray.train.torch.prepare_model(
        student, parallel_strategy_kwargs={"find_unused_parameters": objective.leaves_head_parameters_unused}
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One worker of the Ray Train run: restore, train the epochs left (the plain loop), validate,
    checkpoint. Rank 0 logs to MLflow and sends progress lines; every rank reports (Ray Train's
    barrier)."""
    setup = FlowWorkerSetup(**config)
    cfg = Config.model_validate(setup.cfg)
    tcfg = cfg.training
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(tcfg.cpus_per_worker)))

    torch.manual_seed(cfg.seed)  # the same new propagator on every rank (DDP also broadcasts rank 0's)
    teacher = build_teacher(load_model_checkpoint(setup.teacher_checkpoint, expected_kind="teacher"), device)
    student = build_student(teacher, cfg.model, tcfg.finetune)
    if setup.teacher_source == "on_the_fly":
        to_batches = partial(pair_batches_on_the_fly, teacher=teacher, device=device)
    else:
        to_batches = partial(pair_batches_from_cache, device=device)

    state = FlowLoopState()
    checkpoint = ray.train.get_checkpoint()
    saved: dict[str, Any] = {}
    if checkpoint is not None:
        saved = state_of_checkpoint(checkpoint)
        state = FlowLoopState.from_dict(saved["loop"])
        student.load_trained_state_dict(saved["student"])
    log = StepMetricLog(setup.tracking_uri, setup.run_id) if rank == 0 else None
    report = ProgressReporter(setup.progress if rank == 0 else None)
    if checkpoint is not None:
        if log is not None:  # steps the cut run had checkpointed but maybe not logged
            log.restore(saved["pending_metrics"], written_for_run_id=saved.get("mlflow_run_id"))
            log.tag("semidff.train.resumed_at_step", str(state.global_step))
        report.line(f"resumed at epoch {state.epoch + 1}, batch {state.batches_done}, step {state.global_step}")
    report.line(f"worker group of {world} ready on {device}; reading the first batch")
    plan = setup.plan

    def save(loop_state: FlowLoopState, reason: str) -> None:
        epoch_end = reason == "epoch_end" or reason.startswith("final")  # Tune sees each finished epoch
        metrics = {"epoch": loop_state.epoch, "global_step": loop_state.global_step, "epoch_end": epoch_end}
        if epoch_end:
            metrics |= loop_state.epoch_metrics()
        snapshot = {
            "student": student.trained_state_dict(),
            "loop": loop_state.to_dict(),
            "pending_metrics": log.rows() if log is not None else [],
            "mlflow_run_id": setup.run_id,
            "world_size": world,
        } if rank == 0 else {}
        report_checkpoint(rank, snapshot, metrics, checkpoint_name(loop_state.global_step, reason))
        if log is not None:
            log.flush()  # only after the checkpoint holds these steps: never logged twice

    if state.epoch >= len(plan):  # nothing left to train: hand the restored state back as the result
        save(state, f"final_{int(time.time())}")
        return

    def on_step(step: StepRecord) -> None:
        terms = step.terms
        if log is not None:  # rank 0's own batch: no collective per step beyond DDP's gradients
            log.add(step.global_step, {**{f"train/{k}": terms[k] for k in LOSS_TERMS},
                                       "train/pairs_per_s_per_worker": step.pairs_per_s,
                                       "train/data_wait_s": step.data_wait,
                                       "train/epoch": step.epoch + 1})
        report.maybe_line(
            f"epoch {step.epoch + 1}/{len(plan)} ({step.step_kind}) batch {step.batch_index + 1} step {step.global_step} loss "
            f"{terms['total']:.4f} (reg {terms['regression']:.4f}, sem {terms['semantic']:.4f}) {step.pairs_per_s:.1f} pairs/s per worker"
        )

    def on_epoch_end(epoch: EpochRecord) -> None:
        if log is not None:
            log.add(epoch.global_step, {f"epoch/{k}": v for k, v in epoch.losses.items()}
                    | {"epoch/pairs_per_s": epoch.pairs_per_s, "epoch/pairs_per_s_per_worker": epoch.pairs_per_s_per_worker,
                       "epoch/data_wait_fraction": epoch.data_wait_fraction} | epoch.validation)
        report.line(
            f"epoch {epoch.epoch + 1}/{len(plan)} ({epoch.step_kind}) done at step {epoch.global_step}: loss "
            f"{epoch.losses['total']:.4f}, {epoch.pairs_per_s_per_worker:.1f} pairs/s per worker "
            f"({100 * epoch.data_wait_fraction:.0f} % waiting for data)"
            + "".join(f", {k} {v:.4f}" for k, v in epoch.validation.items())
        )

    def validate(trained: Student, epoch: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if setup.has_validation:
            shard = ray.train.get_dataset_shard(VALIDATION_SPLIT).iter_batches(batch_size=tcfg.batch_size, batch_format="numpy")
            propagated_error, copy_error = sum_over_workers(list(regression_error_sums(trained, shard, to_batches)), device)
            if copy_error > 0:
                metrics["val/regression_error_vs_copy"] = propagated_error / copy_error
        if cfg.evaluation.data.path and rank == 0:
            value = flow_map(cfg, trained, Path(setup.output_dir) / "validation" / f"epoch_{epoch + 1:03d}")
            if value == value:  # not NaN (no ground truth at all)
                metrics["val/mAP"] = value
        return metrics

    def batches_of(step_kind: str):
        shard = ray.train.get_dataset_shard(f"train_{step_kind}")
        return shard.iter_batches(batch_size=tcfg.batch_size, batch_format="numpy", prefetch_batches=2)

    train_flow_epochs(
        student, cfg, plan, batches_of, to_batches,
        state=state,
        workers=WorkerGroup(rank, world, _prepare_model, partial(sum_over_workers, device=device)),
        autocast_dtype=torch.bfloat16 if device.type == "cuda" else None,
        on_step=on_step, validate=validate, on_epoch_end=on_epoch_end, on_checkpoint=save,
    )


class EpochEndReports(UserCallback):
    """Hands a Ray Train callback only the epoch-end reports (not the mid-epoch checkpoints), so a
    Tune trial gets one result per epoch, each with the validation metrics."""

    def __init__(self, callback: Any):
        self.callback = callback

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if metrics and metrics[0].get("epoch_end"):
            self.callback.after_report(run_context, metrics, checkpoint)

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        self.callback.after_exception(run_context, worker_exceptions)


def trained_student(cfg: Config, teacher_checkpoint: Any, saved: dict[str, Any]) -> tuple[Student, Optional[FlowLoopState]]:
    """The student of a finished run rebuilt on the CPU from its teacher and a checkpoint's saved
    dict, and the loop state saved with it."""
    student = build_student(build_teacher(teacher_checkpoint), cfg.model, cfg.training.finetune)
    student.load_trained_state_dict(saved["student"])
    return student, FlowLoopState.from_dict(saved["loop"])
