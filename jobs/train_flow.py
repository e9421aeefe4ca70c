"""Stage 2: learn the feature flow from the frozen teacher on unlabeled video, with Ray Train (DDP).

    semidff train --cache runs/cache --teacher runs/teacher/teacher.pt -o runs/flow [-c cfg] [key=value ...]
    semidff train --manifest runs/manifest --teacher T.pt -o runs/flow training.teacher_source=on_the_fly
    python -m jobs.train_flow ...                                   # the same command

The recipe: config -> inputs checked (``semidff.training.flow_inputs``) -> Ray: pair datasets
(``pipelines.cache_dataset.pair_datasets``) and a worker group running the plain stage-2 loop
(``pipelines.flow_trainer`` -> ``semidff.training.flow_loop``) -> ``flow.pt``, MLflow, lineage.

The paper's two-step optimisation (§3.4) runs as consecutive epochs of one Ray Train run, so a
checkpoint and a resume work across both steps: epochs 0 .. A-1 are step A (the regression loss,
Eq. 4, trains the propagator only) and epochs A .. A+B-1 step B (the semantic loss, Eq. 5-9,
trains the propagator and what ``training.finetune`` names), A = ``training.regression_epochs``,
B = ``training.semantic_epochs`` (``semidff.training.flow_step.epoch_plan`` for the other
schedules). Step A trains on pairs at offsets d = current - key in [1, ΔT - 1] and step B on
[0, ΔT - 1], ΔT = ``video.key_interval``; a d = 0 pair keeps its key features unwarped.

Data. ``training.teacher_source=cache`` (default) reads the teacher cache of ``semidff cache``;
``on_the_fly`` decodes the manifest's clips, gives the frames the cache's JPEG round trip and runs
the frozen teacher inside the workers. Each worker gets its own shard, and a held-out share of the
videos (``training.validation_fraction``) is the validation set.

What lands in the output folder:

* ``flow.pt``: the trained model (state_dicts "rfcn" = the student R-FCN (teacher extractor +
  fine-tuned heads) and "propagator"; meta: teacher checksum, the data source and digest, steps,
  epochs, final losses, validation), also an MLflow artifact and a registered model version;
  ``config.yaml``: the resolved config;
* ``ray_results/<run name>/``: Ray Train's checkpoints every ``training.checkpoint_every_steps``
  and at each epoch end. Running the same command again resumes from the latest one (the default
  run name is derived from the config, teacher and data, so a changed config starts a new run),
  and ``training.max_failures`` worker failures restart from it within one call;
* ``mlflow.db`` (unless ``mlflow.tracking_uri`` is set), ``_semidff_run.json``; with
  ``evaluation.data.path`` set, ``validation/epoch_<n>/``: the per-epoch mAP evaluation.

MLflow: one run per training run (a rerun that resumes reopens it, so its loss curve continues),
with the config as params, the cache (or manifest) and the teacher as input datasets by digest.
Rank 0 logs each loss term of its batch, pairs/s, the wait for data and the epoch per step, and
each epoch the loss means over all workers, ``val/regression_error_vs_copy`` and, with
``evaluation.data.path``, ``val/mAP`` at ΔT; each step is logged exactly once however the run is cut.

Ray Tune (``jobs/tune.py``) calls :func:`run` from a trial with ``callbacks=[TuneReportCallback()]``
and ``parent_run_id``: Tune then sees one result per epoch (``training_iteration`` = epochs done).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import typer

from jobs.cli_common import CONFIG_OPTION, OVERRIDES_ARGUMENT, echo_progress, exit_on, resolve_config, run_module
from semidff.atomic import write_text_atomically
from semidff.cache.info import CacheError
from semidff.checkpoint import ModelCheckpoint, ModelCheckpointError, load_model_checkpoint, save_model_checkpoint
from semidff.config import Config, ConfigError
from semidff.mlflow_model import log_detector_model
from semidff.tracking import RUN_RECORD_FILE
from semidff.training.flow_inputs import FlowTrainingError, PairSource, check_inputs, default_run_name, refuse_changed_config
from semidff.training.flow_loop import FlowLoopState
from semidff.training.flow_step import Student

STAGE = "train"
FLOW_FILE = "flow.pt"
MLFLOW_RUN_FILE = RUN_RECORD_FILE  # in the Ray run folder: the MLflow run a rerun reopens
Progress = Callable[[str], None]


@dataclass
class FlowTrainingResult:
    """What a stage-2 run produced.

    flow_checkpoint: <output_dir>/flow.pt; sha256: its checksum. run_id: the MLflow run.
    epochs / global_step: epochs completed and optimiser steps taken (over all resumed runs).
    final_losses: each loss term's mean over the last epoch (all workers); validation: the last
    epoch's validation metrics. model_version: the registered version, when registered.
    pairs_per_s_per_worker: the last epoch's (key, current) pairs per second per worker, data
    wait included.
    """

    flow_checkpoint: Path
    sha256: str
    run_id: str
    tracking_uri: str
    run_name: str
    epochs: int
    global_step: int
    final_losses: dict[str, float]
    validation: dict[str, float]
    model_version: Optional[str]
    resumed: bool
    wall_s: float
    pairs_per_s_per_worker: float = 0.0
    ray_run_dir: Path = field(default_factory=Path)


def run(
    cfg: Config,
    cache_dir: Optional[str],
    teacher_checkpoint: str,
    output_dir: str,
    manifest_dir: Optional[str] = None,
    run_name: Optional[str] = None,
    parent_run_id: Optional[str] = None,
    callbacks: Optional[list] = None,
    progress: Optional[Progress] = None,
) -> FlowTrainingResult:
    """Train (or resume training) the flow network; see the module docstring for what is written.

    cache_dir: the teacher cache (``training.teacher_source=cache``); manifest_dir: the manifest
        folder (``training.teacher_source=on_the_fly``).
    run_name: the Ray Train run (default ``default_run_name``); the same name resumes.
    parent_run_id: nest the MLflow run under this one (a Tune sweep's run).
    callbacks: Ray Train ``UserCallback``s (e.g. Tune's ``TuneReportCallback``); they receive the
        epoch-end reports only.
    progress: receives progress lines (start, resume, per-step losses every ~10 s, epoch ends).
    Raises ConfigError / ModelCheckpointError / CacheError / FlowTrainingError before Ray starts
    when an input is unusable; RuntimeError when training itself fails.
    """
    import mlflow
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipelines.cache_dataset import pair_datasets
    from pipelines.flow_trainer import EpochEndReports, FlowWorkerSetup, state_of_checkpoint, train_loop_per_worker, trained_student
    from pipelines.ray_session import data_cpus, ray_session, use_gpus
    from pipelines.train_reporting import ProgressPump
    from semidff.tracking import log_input_dataset, producer_run_id, record_output, resumable_stage_run, tracking_uri_for

    say = progress or (lambda line: None)
    started = time.perf_counter()
    tcfg = cfg.training
    teacher, plan, source = check_inputs(cfg, cache_dir, teacher_checkpoint, manifest_dir)
    output = Path(output_dir).expanduser().resolve()
    name = run_name or default_run_name(cfg, teacher.sha256, source)
    run_dir = output / "ray_results" / name
    refuse_changed_config(cfg, run_dir)
    counts = {step: plan.count(step) for step in dict.fromkeys(plan)}
    say(
        f"train: {' then '.join(f'{n} epoch(s) {step} (d in {list(source.offsets[step])})' for step, n in counts.items())}; "
        f"finetune {tcfg.finetune}, {cfg.model.predictor} predictor, {tcfg.num_workers} worker(s) x {tcfg.batch_size} pairs, "
        f"{tcfg.optimizer} lr {tcfg.lr:g}; teacher {teacher.sha256[:12]}; {source.kind} {source.location}; run {name}"
    )

    with ray_session(cfg.ray.num_cpus, cfg.ray.address):
        use_gpu = use_gpus(tcfg.use_gpu)
        reader_cpus = cfg.clips.num_cpus if source.kind == "on_the_fly" else 0.25
        read_cpus = data_cpus(cfg, reader_cpus, tcfg.num_workers * tcfg.cpus_per_worker,  # refuses a run that would hang
                              "training.cpus_per_worker or training.num_workers" + (", or clips.num_cpus" if source.kind == "on_the_fly" else ""), say)
        write_text_atomically(run_dir / "config.yaml", cfg.to_yaml())  # the first output: every input is known to be good
        write_text_atomically(output / "config.yaml", cfg.to_yaml())
        datasets = pair_datasets(cfg, source, plan, read_cpus=read_cpus)
        tracking_uri = tracking_uri_for(cfg, output)
        tags = {"semidff.train.schedule": tcfg.schedule, "semidff.train.teacher_source": source.kind, "semidff.train.ray_run": str(run_dir)}
        has_checkpoint = (run_dir / "checkpoint_manager_snapshot.json").is_file()  # else cut before its first checkpoint
        with resumable_stage_run(cfg, STAGE, output, run_dir, can_resume=has_checkpoint, run_name=name,
                                 parent_run_id=parent_run_id, tags=tags) as (active, resumed):
            run_id = active.info.run_id
            if resumed:
                say(f"train: resuming Ray run {name} and MLflow run {run_id}")
            else:
                data_name = "teacher_cache" if source.kind == "cache" else "manifest"
                log_input_dataset(data_name, source.location, source.digest, context="training", producer_run_id=source.producer_run_id)
                log_input_dataset("teacher", teacher.path, teacher.sha256, context="model", producer_run_id=producer_run_id(teacher.path))
            say(f"train: MLflow run {run_id} ({tracking_uri}); starting {tcfg.num_workers} Ray Train worker(s)")
            pump = ProgressPump(say) if progress is not None else None
            setup = FlowWorkerSetup(
                cfg=cfg.model_dump(mode="json"), plan=plan, teacher_checkpoint=str(Path(teacher.path).resolve()),
                teacher_source=source.kind, has_validation="val" in datasets, output_dir=str(output), run_id=run_id,
                tracking_uri=tracking_uri, progress=pump.queue if pump else None,
            )
            trainer = TorchTrainer(
                train_loop_per_worker,
                train_loop_config=setup.to_dict(),
                scaling_config=ray.train.ScalingConfig(
                    num_workers=tcfg.num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": tcfg.cpus_per_worker}
                ),
                torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
                datasets=datasets,
                run_config=ray.train.RunConfig(
                    name=name,
                    storage_path=str(output / "ray_results"),
                    checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                    failure_config=ray.train.FailureConfig(max_failures=tcfg.max_failures),
                    callbacks=[EpochEndReports(callback) for callback in callbacks or []],
                ),
            )
            try:
                with pump or contextlib.nullcontext():
                    result = trainer.fit()
            except ray.train.TrainingFailedError as exc:
                raise RuntimeError(f"flow training failed: {exc}") from exc
            student, state = trained_student(cfg, teacher, state_of_checkpoint(result.checkpoint))
            sha256, meta = write_flow_checkpoint(cfg, teacher, source, student, state, output / FLOW_FILE, run_id)
            mlflow.log_metrics({f"final/{k}": v for k, v in meta["final_losses"].items()} | {f"final/{k}": v for k, v in meta["validation"].items()})
            mlflow.set_tags({"semidff.flow.sha256": sha256, "semidff.flow.path": str(output / FLOW_FILE)})
            mlflow.log_artifact(str(output / FLOW_FILE), artifact_path="flow_checkpoint")
            model_uri = log_detector_model(teacher.path, output / FLOW_FILE).model_uri  # loads with mlflow.pyfunc
            mlflow.set_tag("semidff.flow.model_uri", model_uri)
            version = register_flow_model(cfg.mlflow.registered_model, model_uri, run_id, sha256, teacher.sha256, cfg.training.schedule)
            record_output(output, run_id, STAGE, tracking_uri)
    wall_s = time.perf_counter() - started
    losses = meta["final_losses"]
    say(
        f"train: wrote {output / FLOW_FILE} after {meta['epochs']} epochs, {meta['steps']} steps, last-epoch loss "
        f"{losses.get('total', float('nan')):.4f}"
        + "".join(f", {k} {v:.4f}" for k, v in meta["validation"].items())
        + (f"; registered {cfg.mlflow.registered_model} version {version}" if version else "")
        + f" ({wall_s / 60:.1f} min)"
    )
    return FlowTrainingResult(
        flow_checkpoint=output / FLOW_FILE, sha256=sha256, run_id=run_id, tracking_uri=tracking_uri, run_name=name,
        epochs=meta["epochs"], global_step=meta["steps"], final_losses=dict(losses), validation=dict(meta["validation"]),
        model_version=version, resumed=resumed, wall_s=wall_s, pairs_per_s_per_worker=meta["pairs_per_s_per_worker"],
        ray_run_dir=run_dir,
    )


def write_flow_checkpoint(cfg: Config, teacher: ModelCheckpoint, source: PairSource, student: Student, state: FlowLoopState,
                          path: Path, run_id: str) -> tuple[str, dict]:
    """Write ``flow.pt`` of a trained student; returns (sha256, meta). A rerun with nothing left
    to train keeps the same file (and so its sha256 and model version)."""
    meta = {
        "teacher_sha256": teacher.sha256,
        "teacher_path": str(teacher.path),
        "data": {"kind": source.kind, "location": source.location, "digest": source.digest},
        "epochs": int(state.epoch),
        "steps": int(state.global_step),
        "schedule": cfg.training.schedule,
        "key_interval": cfg.video.key_interval,
        "final_losses": {k: float(v) for k, v in state.last_epoch_losses.items()},
        "validation": {k: float(v) for k, v in state.validation.items()},
        "pairs_per_s_per_worker": float(state.last_epoch_rate),
        "mlflow_run_id": run_id,
    }
    state_dicts = {"rfcn": student.rfcn.state_dict(), "propagator": student.propagator.state_dict()}
    if path.is_file():
        try:
            earlier = load_model_checkpoint(path, expected_kind="flow")
        except ModelCheckpointError:
            earlier = None
        if earlier is not None and earlier.meta == meta and _same_weights(earlier.state_dicts, state_dicts):
            return earlier.sha256, meta
    return save_model_checkpoint(path, "flow", cfg, state_dicts, meta=meta), meta


def _same_weights(first: dict[str, dict[str, torch.Tensor]], second: dict[str, dict[str, torch.Tensor]]) -> bool:
    if first.keys() != second.keys():
        return False
    return all(
        first[name].keys() == second[name].keys() and all(torch.equal(first[name][k], second[name][k].cpu()) for k in first[name])
        for name in first
    )


def register_flow_model(name: Optional[str], model_uri: str, run_id: str, sha256: str, teacher_sha256: str,
                        schedule: str) -> Optional[str]:
    """Register the detector model at ``model_uri`` (``semidff.mlflow_model``: teacher.pt + flow.pt)
    as a version of the model ``name`` (None: not registered), tagged with both checksums and the
    schedule, and point the alias of its schedule (``@two-step``, ``@regression``, ...) at it."""
    from semidff.tracking import register_model_version

    return register_model_version(
        name, model_uri, run_id,
        tags={"semidff.flow.sha256": sha256, "semidff.teacher.sha256": teacher_sha256, "semidff.file": FLOW_FILE,
              "semidff.train.schedule": schedule},
        identity_tag="semidff.flow.sha256",
        description=f"{FLOW_FILE} (sha256 {sha256[:12]}, {schedule}) distilled from teacher {teacher_sha256[:12]}",
        aliases=(schedule.replace("_", "-"),),  # "latest" is MLflow's own: models:/NAME/latest
    )


# ---------------------------------------------------------------------------------------------
# Command line


def train_command(
    overrides: Optional[list[str]] = OVERRIDES_ARGUMENT,
    teacher: Path = typer.Option(..., "--teacher", help="teacher checkpoint (semidff train-teacher writes teacher.pt)"),
    output: Path = typer.Option(..., "--output", "-o", help="output folder: flow.pt, config.yaml, ray_results/ (rerun the same command to resume)"),
    cache: Optional[str] = typer.Option(None, "--cache", help="teacher cache folder or URI (semidff cache); training.teacher_source=cache"),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="manifest folder (semidff manifest), with training.teacher_source=on_the_fly"),
    config: Optional[Path] = CONFIG_OPTION,
    run_name: Optional[str] = typer.Option(None, "--run-name", help="Ray Train run name (default: derived from config, teacher and data)"),
) -> None:
    """Stage 2: learn the feature flow from the teacher (step A regression, step B semantic) with Ray Train; resumes."""
    cfg = resolve_config(config, overrides)
    with exit_on(RuntimeError, code=1), exit_on(ConfigError, ModelCheckpointError, CacheError, FlowTrainingError):
        result = run(
            cfg, cache, str(teacher), str(output), manifest_dir=str(manifest) if manifest else None, run_name=run_name,
            progress=echo_progress,
        )
    losses = ", ".join(f"{k} {v:.4f}" for k, v in result.final_losses.items() if v)
    validation = "".join(f", {k} {v:.4f}" for k, v in result.validation.items())
    typer.echo(f"{result.flow_checkpoint}: {result.epochs} epochs, {result.global_step} steps, last epoch {losses}{validation}; sha256 {result.sha256}")


if __name__ == "__main__":  # pragma: no cover
    run_module(train_command)
