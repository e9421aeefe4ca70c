"""Stage 1: train the R-FCN teacher on labeled frames (Eq. 2-3) with Ray Train (DDP).

    python -m jobs.train_teacher -c jobs/configs/tiny.yaml -o runs/teacher \\
        teacher_training.data.path=runs/synthetic/dataset.json teacher_training.epochs=8
    semidff train-teacher -c jobs/configs/tiny.yaml -o runs/teacher teacher_training.data.path=...   # the same command

The recipe: config -> inputs checked (the labeled dataset, its classes, a rerun's model) -> Ray: a
worker group running the plain stage-1 loop (``pipelines.teacher_trainer`` ->
``semidff.training.teacher_loop``) -> ``teacher.pt``, MLflow, lineage.

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
from typing import Callable, List, Optional

import typer

from jobs.cli_common import CONFIG_OPTION, OVERRIDES_ARGUMENT, echo_progress, exit_on, resolve_config, run_module
from semidff.atomic import write_text_atomically
from semidff.checkpoint import ModelCheckpoint, check_same_model, save_model_checkpoint
from semidff.config import Config, ConfigError, load_config
from semidff.data.labeled import LabeledDataError, dataset_digest, load_labeled_dataset
from semidff.training.teacher_data import labeled_frames
from semidff.training.teacher_loop import TeacherLoopState

STAGE = "train-teacher"
CHECKPOINT_NAME = "teacher.pt"


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

    from pipelines.ray_session import ray_session, use_gpus
    from pipelines.teacher_trainer import TeacherWorkerSetup, state_of_checkpoint, train_loop_per_worker
    from pipelines.train_reporting import ProgressPump
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
        use_gpu = use_gpus(tcfg.use_gpu)
        tracking_uri = tracking_uri_for(cfg, output_dir)
        with stage_run(cfg, STAGE, output_dir, run_name=name) as active:
            run_id = active.info.run_id
            log_input_dataset("labeled_frames", source=tcfg.data.path, digest=digest, context="training")
            mlflow.set_tags({"semidff.train_teacher.num_samples": str(len(frames)), "semidff.train_teacher.use_gpu": str(use_gpu)})
            lines = ProgressPump(say)
            trainer = TorchTrainer(
                train_loop_per_worker,
                train_loop_config=TeacherWorkerSetup(
                    cfg=cfg.model_dump(mode="json"), frames=ray.put(frames), run_id=run_id, tracking_uri=tracking_uri,
                    progress=lines.queue,
                ).to_dict(),
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
            if result.checkpoint is None:
                raise TeacherTrainingError("teacher training ended without a checkpoint; see the Ray Train log above")
            saved = state_of_checkpoint(result.checkpoint)
            state = TeacherLoopState.from_dict(saved)
            meta = {
                "epochs": int(state.next_epoch),
                "steps": int(state.global_step),
                "final_losses": dict(state.last_epoch_losses),
                "dataset_digest": digest,
                "num_samples": len(frames),
                "class_names": list(dataset.class_names),
                "mlflow_run_id": run_id,
            }
            sha256 = save_model_checkpoint(output_dir / CHECKPOINT_NAME, "teacher", cfg, {"rfcn": saved["model"]}, meta=meta)
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
