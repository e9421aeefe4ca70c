"""Stage 1: train the R-FCN teacher on labeled frames (Eq. 2-3) with Ray Train (DDP).

    python -m jobs.train_teacher -c jobs/configs/tiny.yaml -o runs/teacher \\
        teacher_training.data.path=runs/synthetic/dataset.json teacher_training.epochs=8
    semidff train-teacher -c jobs/configs/tiny.yaml -o runs/teacher teacher_training.data.path=...   # the same command

What lands in the output folder:

* ``teacher.pt``: the trained R-FCN (``save_model_checkpoint(kind="teacher")``, meta: epochs, steps,
  the last epoch's mean losses, the dataset digest, class names); ``config.yaml``: the resolved config;
* ``ray_results/<run name>/``: Ray Train's checkpoints (model, optimiser, epoch, step). Running
  the same command again resumes from the latest one: more epochs continue the schedule, the same
  epochs only rewrite ``teacher.pt``. A run with another model or preprocessing is refused;
* ``mlflow.db`` (unless ``mlflow.tracking_uri`` is set) and ``_semidff_run.json``.

Workers (``teacher_training.num_workers``, each ``cpus_per_worker`` CPUs, a GPU each when
``use_gpu``, default: when the cluster has GPUs) each decode their own shard of the labeled frames
(``semidff/training/teacher_data.py`` says why) and run ``teacher_step.train_step``; DDP averages
the gradients (gloo on CPU, NCCL on GPU; the step runs in fp32 on both, no autocast). The MLflow run is started here, on the driver; rank 0
logs per-step loss terms, lr and images/s into it. Metrics are sent once the checkpoint holding
their steps is committed (every ``checkpoint_every_steps`` and at each epoch end;
``pipelines/train_reporting.py``), so a worker failure (``teacher_training.max_failures``
restarts within the run) or a rerun that resumes from a checkpoint never logs a step twice: the
steps after the last checkpoint are done again and logged once. A rerun gets its own MLflow run,
tagged with the step it resumed at and the run it continued.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional

import numpy as np
import torch
import typer

from jobs.cli_common import CONFIG_OPTION, OVERRIDES_ARGUMENT, echo_progress, exit_on, resolve_config, run_module
from pipelines.train_reporting import (
    ProgressPump,
    ProgressReporter,
    StepMetricLog,
    load_checkpoint_state,
    report_checkpoint,
)
from semidff.atomic import write_text_atomically
from semidff.checkpoint import ModelCheckpoint, check_same_model, save_model_checkpoint
from semidff.config import Config, ConfigError, load_config
from semidff.data.labeled import LabeledDataError, dataset_digest, load_labeled_dataset
from semidff.training.teacher_data import LabeledFrames, labeled_frames

STAGE = "train-teacher"
CHECKPOINT_NAME = "teacher.pt"
LOSS_TERMS = ("total", "rpn_cls", "rpn_box", "rfcn_cls", "rfcn_box")


class TeacherTrainingError(RuntimeError):
    """Training itself failed (after ``max_failures`` restarts); the message holds the worker's error."""


@dataclass
class TeacherTrainingResult:
    """What a stage-1 run produced.

    checkpoint: <output_dir>/teacher.pt; sha256: its checksum (what later stages record).
    epochs / steps: epochs completed and optimiser steps taken in total (over all resumed runs).
    final_losses: mean of each loss term over the last epoch (rank 0's batches).
    dataset_digest: SHA-256 of the annotation file (:func:`semidff.data.labeled.dataset_digest`).
    wall_s: seconds of this call.
    """

    checkpoint: Path
    sha256: str
    run_id: str
    tracking_uri: str
    epochs: int
    steps: int
    final_losses: dict[str, float]
    dataset_digest: str
    num_samples: int
    wall_s: float


def run(
    cfg: Config,
    output_dir: str | Path,
    run_name: Optional[str] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> TeacherTrainingResult:
    """Train (or resume training) the teacher; see the module docstring for what is written.

    run_name: the Ray Train run (and MLflow run) name; default ``teacher-<output folder name>``.
    progress: called with one line per progress report (epoch, step, loss, images/s).
    Raises LabeledDataError / ConfigError before Ray starts when the data or config is unusable.
    """
    import mlflow
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipelines.ray_session import cluster_has_gpus, ray_session
    from semidff.tracking import log_input_dataset, record_output, stage_run, tracking_uri_for

    say = progress or (lambda line: None)
    started = time.perf_counter()
    output_dir = Path(output_dir).expanduser().resolve()
    tcfg = cfg.teacher_training
    name = run_name or f"teacher-{output_dir.name}"

    dataset = load_labeled_dataset(tcfg.data, num_classes=cfg.model.num_classes)
    if dataset.num_classes() != cfg.model.num_classes:
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes} but the dataset {tcfg.data.path} has {dataset.num_classes()} "
            f"classes ({', '.join(dataset.class_names[:8])}{', ...' if dataset.num_classes() > 8 else ''}); "
            f"set model.num_classes={dataset.num_classes()}"
        )
    frames = labeled_frames(dataset)
    if len(frames) == 0:
        raise LabeledDataError(
            f"teacher_training.data ({tcfg.data.path}): no annotated frame shows an object, so there is nothing to train on"
        )
    digest = dataset_digest(tcfg.data, dataset)
    _refuse_other_architecture(cfg, output_dir, name)
    write_text_atomically(output_dir / "config.yaml", cfg.to_yaml())
    say(
        f"train-teacher: {len(frames)} labeled frames from {len(dataset.videos)} videos "
        f"({frames.skipped_empty} frames without objects skipped), {tcfg.epochs} epochs, "
        f"{tcfg.num_workers} workers x {tcfg.batch_size} images"
    )

    with ray_session(cfg.ray.num_cpus, cfg.ray.address):
        use_gpu = tcfg.use_gpu if tcfg.use_gpu is not None else cluster_has_gpus()
        tracking_uri = tracking_uri_for(cfg, output_dir)
        with stage_run(cfg, STAGE, output_dir, run_name=name) as active:
            run_id = active.info.run_id
            log_input_dataset("labeled_frames", source=tcfg.data.path, digest=digest, context="training")
            mlflow.set_tags({"semidff.train_teacher.num_samples": str(len(frames)), "semidff.train_teacher.use_gpu": str(use_gpu)})
            lines = ProgressPump(say)
            trainer = TorchTrainer(
                train_loop_per_worker,
                train_loop_config={
                    "cfg": cfg.model_dump(mode="json"),
                    "frames": ray.put(frames),
                    "run_id": run_id,
                    "tracking_uri": tracking_uri,
                    "progress": lines.queue,
                },
                scaling_config=ray.train.ScalingConfig(
                    num_workers=tcfg.num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": tcfg.cpus_per_worker}
                ),
                torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
                run_config=ray.train.RunConfig(
                    name=name,
                    storage_path=str(output_dir / "ray_results"),
                    checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                    failure_config=ray.train.FailureConfig(max_failures=tcfg.max_failures),
                ),
            )
            try:
                with lines:
                    result = trainer.fit()
            except ray.train.TrainingFailedError as exc:
                raise TeacherTrainingError(f"teacher training failed: {exc}") from exc
            state = _load_state(result.checkpoint)
            meta = {
                "epochs": int(state["next_epoch"]),
                "steps": int(state["global_step"]),
                "final_losses": dict(state["last_epoch_losses"]),
                "dataset_digest": digest,
                "num_samples": len(frames),
                "class_names": list(dataset.class_names),
                "mlflow_run_id": run_id,
            }
            sha256 = save_model_checkpoint(output_dir / CHECKPOINT_NAME, "teacher", cfg, {"rfcn": state["model"]}, meta=meta)
            mlflow.log_metrics({f"final/{k}": v for k, v in meta["final_losses"].items()})
            mlflow.set_tags({"semidff.teacher.sha256": sha256, "semidff.teacher.path": str(output_dir / CHECKPOINT_NAME)})
            record_output(output_dir, run_id, STAGE, tracking_uri)
    wall_s = time.perf_counter() - started
    say(f"train-teacher: wrote {output_dir / CHECKPOINT_NAME} after {meta['epochs']} epochs, {meta['steps']} steps, "
        f"loss {meta['final_losses'].get('total', float('nan')):.4f} ({wall_s / 60:.1f} min)")
    return TeacherTrainingResult(
        checkpoint=output_dir / CHECKPOINT_NAME,
        sha256=sha256,
        run_id=run_id,
        tracking_uri=tracking_uri,
        epochs=meta["epochs"],
        steps=meta["steps"],
        final_losses=meta["final_losses"],
        dataset_digest=digest,
        num_samples=len(frames),
        wall_s=wall_s,
    )


# ---------------------------------------------------------------------------------------------
# On each Ray Train worker


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The DDP training loop of one worker (Ray Train V2): restore, train epochs, checkpoint."""
    import ray
    import ray.train
    import ray.train.torch

    from semidff.models.build import build_rfcn
    from semidff.training.teacher_data import batches_per_epoch, epoch_flips, epoch_order, iterate_batches, shard_for_rank
    from semidff.training.teacher_step import LearningRateSchedule, build_optimizer, set_learning_rate, train_step, unwrap

    cfg = Config.model_validate(config["cfg"])
    tcfg = cfg.teacher_training
    frames: LabeledFrames = ray.get(config["frames"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(tcfg.cpus_per_worker)))

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = ray.train.torch.prepare_model(build_rfcn(cfg.model))
    rfcn = unwrap(model)
    optimizer = build_optimizer(rfcn, tcfg, world)
    steps_per_epoch = batches_per_epoch(len(frames), world, tcfg.batch_size)
    schedule = LearningRateSchedule.from_config(tcfg, world, steps_per_epoch)

    epoch, start_batch, global_step = 0, 0, 0
    loss_sums, loss_count = dict.fromkeys(LOSS_TERMS, 0.0), 0
    last_epoch_losses: dict[str, float] = {}
    previous_run_id = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state = _load_state(checkpoint)
        rfcn.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, global_step = int(state["next_epoch"]), int(state["global_step"])
        # Batches of the interrupted epoch already done, in this run's batch size and worker count.
        start_batch = int(state["samples_done_in_epoch"]) // (world * tcfg.batch_size)
        loss_sums, loss_count = dict(state["loss_sums"]), int(state["loss_count"])
        last_epoch_losses = dict(state["last_epoch_losses"])
        previous_run_id = state.get("mlflow_run_id")
    torch.manual_seed(int(np.random.SeedSequence([cfg.seed, rank, global_step]).generate_state(1)[0]))  # anchor sampling

    metrics_log = StepMetricLog(config["tracking_uri"], config["run_id"]) if rank == 0 else None
    report = ProgressReporter(config["progress"] if rank == 0 else None)
    if metrics_log is not None and checkpoint is not None:
        # A worker restart within this fit continues this MLflow run: send the steps the cut worker
        # had checkpointed but maybe not logged. (A rerun opens a new run, which starts here.)
        metrics_log.restore(state.get("pending_metrics", []), written_for_run_id=previous_run_id)
        metrics_log.tag("semidff.train_teacher.resumed_at_step", str(global_step))
        if previous_run_id and previous_run_id != config["run_id"]:
            metrics_log.tag("semidff.train_teacher.resumed_from_run", previous_run_id)
        report.line(f"resumed at epoch {epoch + 1}, batch {start_batch}, step {global_step}")

    def state_dict(next_epoch: int, samples_done: int) -> dict[str, Any]:
        return {
            "model": rfcn.state_dict(),
            "optimizer": optimizer.state_dict(),
            "next_epoch": next_epoch,
            "samples_done_in_epoch": samples_done,
            "global_step": global_step,
            "loss_sums": dict(loss_sums),
            "loss_count": loss_count,
            "last_epoch_losses": dict(last_epoch_losses),
            "pending_metrics": metrics_log.rows() if metrics_log is not None else [],
            "mlflow_run_id": config["run_id"],
            "world_size": world,
        }

    if epoch >= tcfg.epochs:  # nothing left to train: hand the restored state back as the result
        report_checkpoint(rank, state_dict(epoch, 0), {"epoch": epoch, "step": global_step})
        return

    model.train()
    last_time = time.perf_counter()
    while epoch < tcfg.epochs:
        shard = shard_for_rank(epoch_order(len(frames), cfg.seed, epoch), rank, world)
        flips = epoch_flips(len(frames), cfg.seed, epoch) if tcfg.horizontal_flip else None
        batches = iterate_batches(
            frames, shard, tcfg.batch_size, cfg.preprocess.short_side, cfg.preprocess.max_long_side, flips, start_batch=start_batch
        )
        for batch_index, batch in enumerate(batches, start=start_batch):
            set_learning_rate(optimizer, schedule(global_step))
            losses = train_step(model, optimizer, batch.to(device), cfg.loss.supervised)
            global_step += 1
            now = time.perf_counter()
            images_per_s = world * losses.num_images / max(now - last_time, 1e-9)  # data wait included
            last_time = now
            for term, value in losses.loss_terms().items():
                loss_sums[term] += value
            loss_count += 1
            if metrics_log is not None:
                metrics_log.add(global_step, {**{f"train/{k}": v for k, v in losses.loss_terms().items()},
                                              "train/lr": losses.lr, "train/images_per_s": images_per_s,
                                              "train/epoch": epoch + (batch_index + 1) / steps_per_epoch})
            end_of_epoch = batch_index + 1 == steps_per_epoch
            report.maybe_line(
                f"epoch {epoch + 1}/{tcfg.epochs} batch {batch_index + 1}/{steps_per_epoch} step {global_step} "
                f"loss {losses.total:.4f} (rpn {losses.rpn_cls:.3f}/{losses.rpn_box:.3f} "
                f"rfcn {losses.rfcn_cls:.3f}/{losses.rfcn_box:.3f}) lr {losses.lr:.2e} {images_per_s:.1f} images/s",
                force=end_of_epoch,
            )
            if end_of_epoch:
                last_epoch_losses = {k: v / max(loss_count, 1) for k, v in loss_sums.items()}
                loss_sums, loss_count = dict.fromkeys(LOSS_TERMS, 0.0), 0
                if metrics_log is not None:  # before the checkpoint: its state holds these rows too
                    metrics_log.add(global_step, {f"epoch/{k}": v for k, v in last_epoch_losses.items()})
                state = state_dict(epoch + 1, 0)
                metrics = {"epoch": epoch + 1, "step": global_step, **{f"epoch_{k}": v for k, v in last_epoch_losses.items()}}
            elif global_step % tcfg.checkpoint_every_steps == 0:
                state = state_dict(epoch, (batch_index + 1) * world * tcfg.batch_size)
                metrics = {"epoch": epoch, "step": global_step}
            else:
                continue
            report_checkpoint(rank, state, metrics)  # returns once the checkpoint is committed
            if metrics_log is not None:
                metrics_log.flush()  # only after a committed checkpoint holds these steps: never logged twice
        epoch, start_batch = epoch + 1, 0


def _load_state(checkpoint: Any) -> dict[str, Any]:
    """The training state saved in a Ray Train checkpoint (weights_only: plain tensors and numbers)."""
    if checkpoint is None:
        raise TeacherTrainingError("teacher training ended without a checkpoint; see the Ray Train log above")
    return load_checkpoint_state(checkpoint)


# ---------------------------------------------------------------------------------------------
# Helpers


def _refuse_other_architecture(cfg: Config, output_dir: Path, name: str) -> None:
    """A rerun resumes the earlier run's checkpoint: its model and preprocessing must be the same."""
    earlier = output_dir / "config.yaml"
    if not (earlier.is_file() and (output_dir / "ray_results" / name).is_dir()):
        return
    try:
        check_same_model(
            ModelCheckpoint(kind="teacher", config=load_config(earlier), state_dicts={}, path=earlier), cfg,
            keys=("model", "preprocess"),
        )
    except ConfigError as exc:
        raise ConfigError(
            f"{output_dir} holds an earlier teacher run that a rerun would resume, with another model or "
            f"preprocessing; use a new --output folder (or the earlier config).\n{exc}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Command line (`semidff train-teacher`, `python -m jobs.train_teacher`)


def train_teacher_command(
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    output: Path = typer.Option(..., "--output", "-o", help="output folder: teacher.pt, config.yaml, ray_results/ (rerun the same command to resume)"),
    config: Optional[Path] = CONFIG_OPTION,
    run_name: Optional[str] = typer.Option(None, "--run-name", help="Ray Train / MLflow run name (default: teacher-<output folder name>)"),
) -> None:
    """Stage 1: train the R-FCN teacher on teacher_training.data (Eq. 2-3) with Ray Train; resumes from the latest checkpoint."""
    cfg = resolve_config(config, overrides)
    with exit_on(TeacherTrainingError, code=1), exit_on(ConfigError, LabeledDataError):
        result = run(cfg, output, run_name=run_name, progress=echo_progress)
    losses = ", ".join(f"{k} {v:.4f}" for k, v in result.final_losses.items())
    typer.echo(f"{result.checkpoint}: {result.epochs} epochs, {result.steps} steps, last epoch {losses}; sha256 {result.sha256}")


if __name__ == "__main__":  # pragma: no cover
    run_module(train_teacher_command)
