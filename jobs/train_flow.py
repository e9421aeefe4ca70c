"""Stage 2: learn the feature flow from the frozen teacher on unlabeled video, with Ray Train (DDP).

    python -m jobs.train_flow -c jobs/configs/tiny.yaml --cache runs/cache --teacher runs/teacher/teacher.pt -o runs/flow
    python -m jobs.train_flow -c ... --manifest runs/manifest --teacher T.pt -o runs/flow training.teacher_source=on_the_fly
    semidff train --cache runs/cache --teacher T.pt -o runs/flow [-c cfg] [key=value ...]    # the same function

The paper's two-step optimisation (§3.4) runs as consecutive epochs of one Ray Train run, so a
checkpoint and a resume work across both steps: epochs 0 .. A-1 are step A (the regression loss,
Eq. 4, trains the propagator only) and epochs A .. A+B-1 step B (the semantic loss, Eq. 5-9,
trains the propagator and what ``training.finetune`` names), A = ``training.regression_epochs``,
B = ``training.semantic_epochs`` (``semidff.training.flow_step.epoch_plan`` for the other
schedules). Step A trains on pairs at offsets d = current - key in [1, ΔT - 1] and step B on
[0, ΔT - 1], ΔT = ``video.key_interval`` (the official code's key = cur + offset, offset in
[-9, -1] and [-9, 0]; ``step_offsets``); a d = 0 pair keeps its key features unwarped (eq_flag).

Data. ``training.teacher_source=cache`` (default) reads the teacher cache of ``semidff cache``
through ``pipelines.cache_dataset.pair_dataset``, checked against this run (teacher checksum,
preprocessing, offsets); ``on_the_fly`` decodes the manifest's clips (``clips`` section), gives
the frames the cache's JPEG round trip (``cache.jpeg_quality``, so both modes train on the same
pixels) and runs the frozen teacher inside the workers. Either way each worker gets its own shard
(Ray Data ``streaming_split``), and a held-out share of the videos (``training.validation_fraction``,
the same videos the cache reader holds out) is the validation set.

What lands in the output folder:

* ``flow.pt``: the trained model (``save_model_checkpoint(kind="flow")``: state_dicts "rfcn" = the
  student R-FCN (teacher extractor + fine-tuned heads) and "propagator"; meta: teacher checksum,
  the data source and digest, steps, epochs, final losses, validation), also an MLflow artifact and
  a registered model version (``mlflow.registered_model``); ``config.yaml``: the resolved config;
* ``ray_results/<run name>/``: Ray Train's checkpoints every ``training.checkpoint_every_steps``
  and at each epoch end (propagator, heads, optimiser, epoch, batch and global step). Running the
  same command again resumes from the latest one (the default run name is derived from the
  config, teacher and data, so a changed config starts a new run), and ``training.max_failures``
  worker failures restart from it within one call;
* ``mlflow.db`` (unless ``mlflow.tracking_uri`` is set), ``_semidff_run.json``; with
  ``evaluation.data.path`` set, ``validation/epoch_<n>/``: the per-epoch mAP evaluation.

MLflow: one run per training run (a rerun that resumes reopens it, so its loss curve continues),
with the config as params, the cache (or manifest) and the teacher as input datasets by digest.
Rank 0 logs each loss term of its batch, pairs/s, the wait for data and the epoch per step, and
each epoch the loss means over all workers; these are sent once the checkpoint holding their
steps is recorded and are stored in it until then, so a step is logged exactly once however the
run is cut.
Each epoch ends with ``val/regression_error_vs_copy`` (propagated vs. copied key features on the
held-out videos, < 1: propagation helps) and, with ``evaluation.data.path``, ``val/mAP`` at ΔT.

Ray Tune (``jobs/tune.py``) calls :func:`run` from a trial with ``callbacks=[TuneReportCallback()]``
and ``parent_run_id``: Tune then sees one result per epoch (``training_iteration`` = epochs done),
carrying the metrics above, ``epoch`` and ``global_step``.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from ray.train import UserCallback

from pipelines.train_reporting import (
    ProgressPump,
    ProgressReporter,
    StepMetricLog,
    load_checkpoint_state,
    report_checkpoint,
    write_text_atomically,
)
from semidff.checkpoint import (
    PROPAGATOR_KEYS,
    ModelCheckpoint,
    ModelCheckpointError,
    check_same_model,
    load_model_checkpoint,
    save_model_checkpoint,
)
from semidff.config import Config, ConfigError, load_config
from semidff.training.flow_step import epoch_plan, step_offsets

STAGE = "train"
FLOW_FILE = "flow.pt"
MLFLOW_RUN_FILE = "semidff_mlflow_run.json"  # in the Ray run folder: the MLflow run a rerun reopens
VALIDATION_SPLIT = "val"
Progress = Callable[[str], None]


class FlowTrainingError(ValueError):
    """An input of the flow training is missing or unusable; the message names it and the fix."""


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


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass
class PairSource:
    """Where the training pairs come from (checked before Ray starts).

    kind: "cache" or "on_the_fly"; location: the cache or manifest folder; digest: its identity for
    MLflow (:func:`cache_digest`, or the manifest file's SHA-256); offsets: the (lo, hi) range of d
    each step kind trains on, and "val" the validation range [1, ΔT - 1].
    """

    kind: str
    location: str
    digest: str
    producer_run_id: Optional[str]
    offsets: dict[str, tuple[int, int]]


def check_inputs(
    cfg: Config, cache_dir: Optional[str], teacher_checkpoint: str, manifest_dir: Optional[str]
) -> tuple[ModelCheckpoint, list[str], PairSource]:
    """Load the teacher and check the schedule and the data source against the config.

    Returns (teacher checkpoint, the step kind of every epoch, the pair source). Raises
    ConfigError (schedule, key interval, model), ModelCheckpointError (teacher), CacheError
    (cache mismatch) or FlowTrainingError (missing inputs), each naming the input and the fix.
    """
    from semidff.tracking import producing_run

    plan = epoch_plan(cfg.training)
    teacher_path = Path(teacher_checkpoint).expanduser()
    if not teacher_path.is_file():
        raise FlowTrainingError(f"teacher checkpoint {teacher_checkpoint} does not exist (semidff train-teacher writes teacher.pt)")
    teacher = load_model_checkpoint(teacher_path, expected_kind="teacher")
    check_same_model(teacher, cfg, keys=("model",), ignore=PROPAGATOR_KEYS)  # the flow net is this run's to choose
    offsets = {step: step_offsets(step, cfg.video.key_interval) for step in dict.fromkeys(plan)}
    offsets[VALIDATION_SPLIT] = step_offsets("regression", cfg.video.key_interval)

    if cfg.training.teacher_source == "cache":
        if not cache_dir:
            raise FlowTrainingError(
                "training.teacher_source=cache needs --cache DIR (built by semidff cache); without a cache, "
                "pass --manifest DIR and training.teacher_source=on_the_fly"
            )
        from semidff.cache.info import CacheExpectation, read_cache_info

        info = read_cache_info(cache_dir)
        low, high = info.offset_range
        key_interval = cfg.video.key_interval
        if key_interval - 1 > high:
            raise ConfigError(
                f"video.key_interval={key_interval} propagates up to d = {key_interval - 1} frames, but the cache {cache_dir} "
                f"sampled d in [{low}, {high}]: use video.key_interval <= {high + 1}, or build a cache with "
                f"clips.offset_range=[0, {key_interval - 1}]"
            )
        if low == 1:  # a cache without d = 0 pairs serves step B from d = 1 (d = 0 only trains the heads)
            offsets = {step: (max(lo, 1), hi) for step, (lo, hi) in offsets.items()}
        for step_range in offsets.values():
            CacheExpectation.for_training(cfg, teacher.sha256, step_range).check(info, cache_dir)
        produced = producing_run(cache_dir) if "://" not in cache_dir else None
        return teacher, plan, PairSource(
            kind="cache",
            location=cache_dir,
            digest=cache_digest(cache_dir),
            producer_run_id=produced.get("run_id") if produced else None,
            offsets=offsets,
        )

    if not manifest_dir:
        raise FlowTrainingError(
            "training.teacher_source=on_the_fly needs --manifest DIR (built by semidff manifest): the clips are decoded from its videos"
        )
    from pipelines.manifest import MANIFEST_FILE
    from semidff.checkpoint import file_sha256

    manifest = Path(manifest_dir).expanduser() / MANIFEST_FILE
    if not manifest.is_file():
        raise FlowTrainingError(f"{manifest_dir}: no {MANIFEST_FILE} there (build it with semidff manifest VIDEOS -o {manifest_dir})")
    low, high = cfg.clips.offset_range
    needed = max(hi for _, hi in offsets.values())
    if high < needed or low > 1:
        raise ConfigError(
            f"video.key_interval={cfg.video.key_interval} trains on d = current - key in [1, {needed}] (step B also d = 0), "
            f"but clips.offset_range=[{low}, {high}] samples other pairs: set clips.offset_range=[0, {needed}] "
            f"(or a key interval <= {high + 1})"
        )
    offsets = {step: (max(lo, low), hi) for step, (lo, hi) in offsets.items()}
    produced = producing_run(manifest_dir)
    return teacher, plan, PairSource(
        kind="on_the_fly",
        location=str(Path(manifest_dir).expanduser().resolve()),
        digest=file_sha256(manifest),
        producer_run_id=produced.get("run_id") if produced else None,
        offsets=offsets,
    )


def cache_digest(cache_dir: str) -> str:
    """SHA-256 of a cache's content record and of its files' names and sizes.

    Cache files are written once (temporary name, then rename) and never changed, so the list
    identifies the pairs; a cache that grew (a rerun of semidff cache) gets a new digest.
    """
    from semidff.cache.files import list_cache_files
    from semidff.cache.info import cache_location, read_cache_info

    filesystem, _ = cache_location(cache_dir)
    digest = hashlib.sha256(json.dumps(read_cache_info(cache_dir).identity(), sort_keys=True).encode("utf-8"))
    files = list_cache_files(cache_dir)
    if not files:
        raise FlowTrainingError(f"{cache_dir}: the teacher cache holds no clip files yet (run semidff cache to fill it)")
    for info in sorted(filesystem.get_file_info(files), key=lambda item: item.base_name):
        digest.update(f"{info.base_name}:{info.size}\n".encode("utf-8"))
    return digest.hexdigest()


def default_run_name(cfg: Config, teacher_sha256: str, source: PairSource) -> str:
    """``flow-<schedule>-<10 hex>``, fixed by the config (less ray, mlflow, training.max_failures),
    teacher and data: the
    same command gets the same name (so it resumes), a changed one starts a new run."""
    settings = cfg.model_dump(mode="json")
    for section in ("ray", "mlflow"):
        settings.pop(section, None)
    settings["training"].pop("max_failures")  # as _refuse_changed_config: may change between reruns
    identity = json.dumps([settings, teacher_sha256, source.kind, source.digest], sort_keys=True)
    return f"flow-{cfg.training.schedule}-{hashlib.sha256(identity.encode('utf-8')).hexdigest()[:10]}"


# ---------------------------------------------------------------------------------------------
# Ray Data: one dataset per step kind, and the validation set


def data_cpus(cfg: Config, local: bool, say: Progress) -> float:
    """CPUs per data task (cache reads): what the training workers leave free, at most 1.

    Workers holding every CPU starve Ray Data's tasks and the run hangs (ray-facts §0 #3-#5), so
    a local Ray without room for one data task (0.25 CPU for cache reads, ``clips.num_cpus`` for
    decoding on the fly) is refused; on a cluster it is a warning (an autoscaler may add nodes).
    """
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    free = total - cfg.training.num_workers * cfg.training.cpus_per_worker
    needed = cfg.clips.num_cpus if cfg.training.teacher_source == "on_the_fly" else 0.25
    if free >= needed - 1e-9:
        return max(needed, min(1.0, free))
    message = (
        f"the {cfg.training.num_workers} training worker(s) x {cfg.training.cpus_per_worker:g} CPUs leave {max(free, 0):g} of the "
        f"cluster's {total:g} CPUs for the data tasks, which need {needed:g} each: the run would hang. Lower "
        "training.cpus_per_worker (fractions are fine) or training.num_workers"
        + (", or clips.num_cpus" if cfg.training.teacher_source == "on_the_fly" else "")
        + ", or give Ray more CPUs (ray.num_cpus)"
    )
    if local:
        raise ConfigError(message)
    say(f"warning: {message} (waiting for the cluster to add nodes)")
    return needed


def clip_pairs(row: dict[str, Any], *, offset_range: tuple[int, int], split: str, validation_fraction: float) -> list[dict[str, Any]]:
    """On the fly: the (key, current) pair rows of one decoded clip row, with d in ``offset_range``
    and the video in ``split`` ("train" / "val" by :func:`semidff.cache.split.is_validation_video`,
    as the cache reader splits). Columns as the cache reader's, without the teacher's outputs."""
    from pipelines.clips import clip_frames_from_row
    from semidff.cache.split import is_validation_video

    if row["status"] != "ok":
        return []
    if split != "all" and is_validation_video(row["video_id"], validation_fraction) != (split == VALIDATION_SPLIT):
        return []
    frames = clip_frames_from_row(row)
    low, high = offset_range
    return [
        dict(clip_id=row["clip_id"], video_id=row["video_id"], key_index=int(row["key_index"]), cur_index=int(index),
             offset=int(offset), key_frame=frames.key_frame, cur_frame=frame)
        for index, offset, frame in zip(frames.clip.current_indices, frames.clip.offsets, frames.current_frames)
        if low <= offset <= high
    ]


def pair_datasets(cfg: Config, source: PairSource, plan: list[str], read_cpus: float = 1.0) -> dict[str, Any]:
    """{"train_<step kind>": pairs of that step's offsets, "val": held-out pairs} as Ray datasets.

    read_cpus: CPUs per cache read task (the training workers' CPUs are not available to them).
    """
    import ray

    fraction = cfg.training.validation_fraction
    wanted = [(f"train_{step}", "train", source.offsets[step]) for step in dict.fromkeys(plan)]
    if fraction > 0:
        wanted.append((VALIDATION_SPLIT, VALIDATION_SPLIT, source.offsets[VALIDATION_SPLIT]))
    if source.kind == "cache":
        from pipelines.cache_dataset import pair_dataset

        return {
            name: pair_dataset(source.location, offset_range=offsets, split=split, validation_fraction=fraction, num_cpus=read_cpus)
            for name, split, offsets in wanted
        }

    from pipelines.clips import clip_dataset_from_config
    from pipelines.teacher_cache import prepare_clips

    compute = ray.data.TaskPoolStrategy(size=cfg.clips.max_concurrent_tasks) if cfg.clips.max_concurrent_tasks else None
    datasets = {}
    for name, split, offsets in wanted:
        # The cache's JPEG round trip, fused into the decode tasks: both modes train on the same pixels.
        frames = clip_dataset_from_config(source.location, cfg).map_batches(
            prepare_clips, batch_size=None, batch_format="pyarrow", num_cpus=cfg.clips.num_cpus, compute=compute,
            fn_kwargs=dict(done=None, jpeg_quality=cfg.cache.jpeg_quality),
        )
        datasets[name] = frames.flat_map(
            partial(clip_pairs, offset_range=offsets, split=split, validation_fraction=fraction),
            num_cpus=cfg.clips.num_cpus, compute=compute,
        )
    return datasets


# ---------------------------------------------------------------------------------------------
# The stage


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
    run_name: the Ray Train run (default :func:`default_run_name`); the same name resumes.
    parent_run_id: nest the MLflow run under this one (a Tune sweep's run).
    callbacks: Ray Train ``UserCallback``s (e.g. Tune's ``TuneReportCallback``); they receive the
        epoch-end reports only.
    progress: receives progress lines (start, resume, per-step losses every ~10 s, epoch ends).
    Raises ConfigError / ModelCheckpointError / CacheError / FlowTrainingError before Ray starts
    when an input is unusable; RuntimeError when training itself fails.
    """
    import mlflow
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipelines.ray_session import cluster_has_gpus, ray_session
    from semidff.tracking import log_input_dataset, producer_run_id, record_output, tracking_uri_for

    say = progress or (lambda line: None)
    started = time.perf_counter()
    tcfg = cfg.training
    teacher, plan, source = check_inputs(cfg, cache_dir, teacher_checkpoint, manifest_dir)
    output = Path(output_dir).expanduser().resolve()
    name = run_name or default_run_name(cfg, teacher.sha256, source)
    run_dir = output / "ray_results" / name
    _refuse_changed_config(cfg, run_dir)
    write_text_atomically(run_dir / "config.yaml", cfg.to_yaml())
    write_text_atomically(output / "config.yaml", cfg.to_yaml())
    counts = {step: plan.count(step) for step in dict.fromkeys(plan)}
    say(
        f"train: {' then '.join(f'{n} epoch(s) {step} (d in {list(source.offsets[step])})' for step, n in counts.items())}; "
        f"finetune {tcfg.finetune}, {cfg.model.predictor} predictor, {tcfg.num_workers} worker(s) x {tcfg.batch_size} pairs, "
        f"{tcfg.optimizer} lr {tcfg.lr:g}; teacher {teacher.sha256[:12]}; {source.kind} {source.location}; run {name}"
    )

    with ray_session(cfg.ray.num_cpus, cfg.ray.address):
        use_gpu = tcfg.use_gpu if tcfg.use_gpu is not None else cluster_has_gpus()
        datasets = pair_datasets(cfg, source, plan, read_cpus=data_cpus(cfg, local=not (cfg.ray.address or os.environ.get("RAY_ADDRESS")), say=say))
        tracking_uri = tracking_uri_for(cfg, output)
        tags = {"semidff.train.schedule": tcfg.schedule, "semidff.train.teacher_source": source.kind, "semidff.train.ray_run": str(run_dir)}
        with _mlflow_run(cfg, output, run_dir, name, parent_run_id, tags) as (active, resumed):
            run_id = active.info.run_id
            if resumed:
                say(f"train: resuming Ray run {name} and MLflow run {run_id}")
            else:
                data_name = "teacher_cache" if source.kind == "cache" else "manifest"
                log_input_dataset(data_name, source.location, source.digest, context="training", producer_run_id=source.producer_run_id)
                log_input_dataset("teacher", teacher.path, teacher.sha256, context="model", producer_run_id=producer_run_id(teacher.path))
            say(f"train: MLflow run {run_id} ({tracking_uri}); starting {tcfg.num_workers} Ray Train worker(s)")
            pump = ProgressPump(say) if progress is not None else None
            trainer = TorchTrainer(
                train_loop_per_worker,
                train_loop_config={
                    "cfg": cfg.model_dump(mode="json"),
                    "plan": plan,
                    "teacher_checkpoint": str(Path(teacher.path).resolve()),
                    "teacher_source": source.kind,
                    "has_validation": "val" in datasets,
                    "output_dir": str(output),
                    "run_id": run_id,
                    "tracking_uri": tracking_uri,
                    "progress": pump.queue if pump else None,
                },
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
            state = _load_state(result.checkpoint)
            sha256, meta = _write_flow_checkpoint(cfg, teacher, source, state, output / FLOW_FILE, run_id)
            mlflow.log_metrics({f"final/{k}": v for k, v in meta["final_losses"].items()} | {f"final/{k}": v for k, v in meta["validation"].items()})
            mlflow.set_tags({"semidff.flow.sha256": sha256, "semidff.flow.path": str(output / FLOW_FILE)})
            mlflow.log_artifact(str(output / FLOW_FILE), artifact_path="flow_checkpoint")
            version = register_flow_model(cfg.mlflow.registered_model, run_id, "flow_checkpoint", sha256, teacher.sha256)
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
        flow_checkpoint=output / FLOW_FILE,
        sha256=sha256,
        run_id=run_id,
        tracking_uri=tracking_uri,
        run_name=name,
        epochs=meta["epochs"],
        global_step=meta["steps"],
        final_losses=dict(losses),
        validation=dict(meta["validation"]),
        model_version=version,
        resumed=resumed,
        wall_s=wall_s,
        pairs_per_s_per_worker=meta["pairs_per_s_per_worker"],
        ray_run_dir=run_dir,
    )


def _write_flow_checkpoint(
    cfg: Config, teacher: ModelCheckpoint, source: PairSource, state: dict[str, Any], path: Path, run_id: str
) -> tuple[str, dict[str, Any]]:
    """Rebuild the student from the teacher and the trained weights; write ``flow.pt``."""
    from semidff.checkpoint import build_teacher
    from semidff.training.student import build_student

    student = build_student(build_teacher(teacher), cfg.model, cfg.training.finetune)
    student.load_trained_state_dict(state["student"])
    meta = {
        "teacher_sha256": teacher.sha256,
        "teacher_path": str(teacher.path),
        "data": {"kind": source.kind, "location": source.location, "digest": source.digest},
        "epochs": int(state["progress"]["epoch"]),
        "steps": int(state["progress"]["global_step"]),
        "schedule": cfg.training.schedule,
        "key_interval": cfg.video.key_interval,
        "final_losses": {k: float(v) for k, v in state["last_epoch_losses"].items()},
        "validation": {k: float(v) for k, v in state["validation"].items()},
        "pairs_per_s_per_worker": float(state["last_epoch_rate"]),
        "mlflow_run_id": run_id,
    }
    state_dicts = {"rfcn": student.rfcn.state_dict(), "propagator": student.propagator.state_dict()}
    if path.is_file():  # a rerun with nothing left to train keeps the same file (and so its sha256 and model version)
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


def register_flow_model(name: Optional[str], run_id: str, artifact_path: str, sha256: str, teacher_sha256: str) -> Optional[str]:
    """Register the logged ``flow.pt`` (a plain artifact folder of the active run) as a version of
    the model ``name``; None when ``name`` is None. A rerun that ends with the same file reuses
    its version. The version's source is the artifact folder; tags hold both checksums."""
    if not name:
        return None
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.create_registered_model(name, description="Semi-DFF flow models (semidff train): load flow.pt with semidff.checkpoint.load_model_checkpoint")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    for version in client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
        if version.tags.get("semidff.flow.sha256") == sha256:
            return str(version.version)
    version = client.create_model_version(
        name,
        source=mlflow.get_artifact_uri(artifact_path),
        run_id=run_id,
        tags={"semidff.flow.sha256": sha256, "semidff.teacher.sha256": teacher_sha256, "semidff.file": FLOW_FILE},
        description=f"{FLOW_FILE} (sha256 {sha256[:12]}) distilled from teacher {teacher_sha256[:12]}",
    )
    return str(version.version)


@contextlib.contextmanager
def _mlflow_run(cfg: Config, output: Path, run_dir: Path, name: str, parent_run_id: Optional[str], tags: dict[str, str]) -> Iterator[tuple[Any, bool]]:
    """The stage's MLflow run: the one this Ray run started earlier (a rerun resumes its loss
    curve), else a new one. Yields (active run, resumed)."""
    import mlflow
    from mlflow import MlflowClient

    from semidff.tracking import stage_run, tracking_uri_for

    record = run_dir / MLFLOW_RUN_FILE
    tracking_uri = tracking_uri_for(cfg, output)
    earlier = json.loads(record.read_text()).get("run_id") if record.is_file() else None
    if earlier:
        client = MlflowClient(tracking_uri)
        try:
            status = client.get_run(earlier).info.status
        except Exception:  # noqa: BLE001 - another store, or the run was deleted: start a new one
            earlier = None
        else:
            if not (run_dir / "checkpoint_manager_snapshot.json").is_file():  # cut before its first checkpoint
                if status == "RUNNING":
                    client.set_terminated(earlier, "KILLED")
                earlier = None
    if earlier:
        mlflow.set_tracking_uri(tracking_uri)
        with mlflow.start_run(run_id=earlier) as active:
            yield active, True
        return
    with stage_run(cfg, STAGE, output, run_name=name, parent_run_id=parent_run_id, tags=tags) as active:
        write_text_atomically(record, json.dumps({"run_id": active.info.run_id, "tracking_uri": tracking_uri}))
        yield active, False


def _refuse_changed_config(cfg: Config, run_dir: Path) -> None:
    """A rerun with the same run name continues its checkpoints: the training-relevant config must
    be the one it started with (ray, mlflow and training.max_failures may change)."""
    from semidff.tracking import flatten

    earlier = run_dir / "config.yaml"
    if not earlier.is_file():
        return
    before, now = load_config(earlier).model_dump(mode="json"), cfg.model_dump(mode="json")
    for settings in (before, now):
        settings.pop("ray"), settings.pop("mlflow"), settings["training"].pop("max_failures")
    old, new = flatten(before), flatten(now)
    changed = [f"{key}: {old.get(key)} -> {new.get(key)}" for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    if changed:
        raise ConfigError(
            f"the run {run_dir.name} in {run_dir.parent} was started with another config, so it cannot be resumed:\n  "
            + "\n  ".join(changed[:12])
            + "\nUse its config again, or another run name (--run-name) or output folder for a new run."
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


# ---------------------------------------------------------------------------------------------
# On each Ray Train worker


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The DDP loop of one worker (Ray Train V2): restore, train the epochs of the plan, validate,
    checkpoint. Rank 0 logs to MLflow; every rank reports (Ray Train's barrier)."""
    import ray.train
    import ray.train.torch

    from semidff.checkpoint import build_teacher
    from semidff.training.flow_batch import pair_batches_from_cache, pair_batches_on_the_fly
    from semidff.training.flow_step import LOSS_TERMS, FlowObjective, build_optimizer, train_step
    from semidff.training.student import build_student

    cfg = Config.model_validate(config["cfg"])
    tcfg = cfg.training
    plan: list[str] = list(config["plan"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(tcfg.cpus_per_worker)))
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None

    torch.manual_seed(cfg.seed)  # the same new propagator on every rank (DDP also broadcasts rank 0's)
    teacher = build_teacher(load_model_checkpoint(config["teacher_checkpoint"], expected_kind="teacher"), device)
    student = build_student(teacher, cfg.model, tcfg.finetune)
    if config["teacher_source"] == "on_the_fly":
        to_batches = partial(pair_batches_on_the_fly, teacher=teacher, device=device)
    else:
        to_batches = partial(pair_batches_from_cache, device=device)

    state: dict[str, Any] = {
        "progress": {"epoch": 0, "batches_done": 0, "global_step": 0},
        "epoch_sums": dict.fromkeys(LOSS_TERMS, 0.0) | {"pairs": 0.0, "seconds": 0.0, "data_wait": 0.0, "steps": 0.0},
        "last_epoch_losses": {},
        "last_epoch_rate": 0.0,
        "validation": {},
        "optimizer": None,
        "optimizer_step": None,
        "pending_metrics": [],
    }
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state = _load_state(checkpoint)
        student.load_trained_state_dict(state["student"])
    progress = state["progress"]
    log = StepMetricLog(config["tracking_uri"], config["run_id"]) if rank == 0 else None
    report = ProgressReporter(config["progress"] if rank == 0 else None)
    if checkpoint is not None:
        if log is not None:  # steps the cut run had checkpointed but maybe not logged
            log.restore(state["pending_metrics"], written_for_run_id=state.get("mlflow_run_id"))
            log.tag("semidff.train.resumed_at_step", str(progress["global_step"]))
        report.line(f"resumed at epoch {progress['epoch'] + 1}, batch {progress['batches_done']}, step {progress['global_step']}")

    model, model_step, optimizer = student, None, None
    report.line(f"worker group of {world} ready on {device}; reading the first batch")

    def snapshot() -> dict[str, Any]:
        return {
            "student": student.trained_state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "optimizer_step": model_step,
            "progress": dict(progress),
            "epoch_sums": dict(state["epoch_sums"]),
            "last_epoch_losses": dict(state["last_epoch_losses"]),
            "last_epoch_rate": float(state["last_epoch_rate"]),
            "validation": dict(state["validation"]),
            "pending_metrics": log.rows() if log is not None else [],
            "mlflow_run_id": config["run_id"],
            "world_size": world,
        }

    def epoch_metrics() -> dict[str, Any]:
        return {
            "epoch": progress["epoch"],
            "global_step": progress["global_step"],
            "epoch_end": True,
            **{f"train/{k}": v for k, v in state["last_epoch_losses"].items()},
            "train/pairs_per_s_per_worker": state["last_epoch_rate"],
            **state["validation"],
        }

    if progress["epoch"] >= len(plan):  # nothing left to train: hand the restored state back as the result
        report_checkpoint(rank, snapshot() if rank == 0 else {}, epoch_metrics(),
                          _checkpoint_name(progress["global_step"], f"final_{int(time.time())}"))
        return

    while progress["epoch"] < len(plan):
        epoch = progress["epoch"]
        step_kind = plan[epoch]
        objective = FlowObjective.from_config(cfg, step_kind)
        if model_step != step_kind:  # a new step: its parameters, its DDP wrapper, a fresh optimiser
            if hasattr(model, "_remove_autograd_hooks"):  # the previous step's DDP wrapper: its hooks would all-reduce too
                model._remove_autograd_hooks()
            parameters = student.set_step(step_kind)
            model = ray.train.torch.prepare_model(
                student, parallel_strategy_kwargs={"find_unused_parameters": objective.leaves_head_parameters_unused}
            )
            optimizer = build_optimizer(parameters, tcfg.optimizer, tcfg.lr)
            if state["optimizer"] is not None and state["optimizer_step"] == step_kind:
                optimizer.load_state_dict(state["optimizer"])
            state["optimizer"] = None
            model_step = step_kind
        student.train()
        skip = progress["batches_done"]
        sums = state["epoch_sums"]
        shard = ray.train.get_dataset_shard(f"train_{step_kind}")
        last = time.perf_counter()
        for batch_index, numpy_batch in enumerate(shard.iter_batches(batch_size=tcfg.batch_size, batch_format="numpy", prefetch_batches=2)):
            if batch_index < skip:  # done before the cut: the checkpoint holds their effect
                last = time.perf_counter()
                continue
            fetched = time.perf_counter()
            terms = train_step(model, optimizer, to_batches(numpy_batch), objective, autocast_dtype)
            now = time.perf_counter()
            seconds, data_wait, last = now - last, fetched - last, now  # a step's time includes its wait for data
            progress["global_step"] += 1
            progress["batches_done"] = batch_index + 1
            for key in LOSS_TERMS:
                sums[key] += terms[key]
            sums["pairs"] += terms["pairs"]
            sums["seconds"] += seconds
            sums["data_wait"] += data_wait
            sums["steps"] += 1
            pairs_per_s = terms["pairs"] / max(seconds, 1e-9)
            if log is not None:  # rank 0's own batch: no collective per step beyond DDP's gradients
                log.add(progress["global_step"], {**{f"train/{k}": terms[k] for k in LOSS_TERMS},
                                                  "train/pairs_per_s_per_worker": pairs_per_s,
                                                  "train/data_wait_s": data_wait,
                                                  "train/epoch": epoch + 1})
            report.maybe_line(
                f"epoch {epoch + 1}/{len(plan)} ({step_kind}) batch {batch_index + 1} step {progress['global_step']} loss "
                f"{terms['total']:.4f} (reg {terms['regression']:.4f}, sem {terms['semantic']:.4f}) {pairs_per_s:.1f} pairs/s per worker"
            )
            if progress["global_step"] % tcfg.checkpoint_every_steps == 0:
                report_checkpoint(rank, snapshot() if rank == 0 else {},
                                  {"epoch": epoch, "global_step": progress["global_step"], "epoch_end": False},
                                  _checkpoint_name(progress["global_step"], "mid"))
                if log is not None:
                    log.flush()  # only after the checkpoint holds these steps: never logged twice
        if sums["steps"] == 0:
            raise RuntimeError(
                f"epoch {epoch + 1} ({step_kind}): no training pair reached worker {rank}; the training split is empty "
                f"(check the data's offsets and training.validation_fraction={tcfg.validation_fraction})"
            )

        # Epoch end: mean losses over every worker's steps, rates, validation on the held-out videos, checkpoint.
        summed = _sum_over_workers(
            [sums[k] / sums["steps"] for k in LOSS_TERMS]
            + [sums["pairs"] / max(sums["seconds"], 1e-9), sums["data_wait"] / max(sums["seconds"], 1e-9)], world, device
        )
        state["last_epoch_losses"] = {k: v / world for k, v in zip(LOSS_TERMS, summed)}
        epoch_rate, wait_share = summed[-2], summed[-1] / world
        state["last_epoch_rate"] = epoch_rate / world
        state["epoch_sums"] = dict.fromkeys(sums, 0.0)
        state["validation"] = _validate(cfg, config, student, to_batches, epoch, world, device, rank)
        progress["epoch"], progress["batches_done"] = epoch + 1, 0
        if log is not None:
            log.add(progress["global_step"], {f"epoch/{k}": v for k, v in state["last_epoch_losses"].items()}
                    | {"epoch/pairs_per_s": epoch_rate, "epoch/pairs_per_s_per_worker": state["last_epoch_rate"],
                       "epoch/data_wait_fraction": wait_share} | state["validation"])
        report.line(
            f"epoch {epoch + 1}/{len(plan)} ({step_kind}) done at step {progress['global_step']}: loss "
            f"{state['last_epoch_losses']['total']:.4f}, {epoch_rate / world:.1f} pairs/s per worker "
            f"({100 * wait_share:.0f} % waiting for data)"
            + "".join(f", {k} {v:.4f}" for k, v in state["validation"].items())
        )
        report_checkpoint(rank, snapshot() if rank == 0 else {}, epoch_metrics(), _checkpoint_name(progress["global_step"], "epoch_end"))
        if log is not None:
            log.flush()


def _validate(cfg: Config, config: dict[str, Any], student: Any, to_batches: Callable, epoch: int, world: int,
              device: torch.device, rank: int) -> dict[str, float]:
    """The epoch's validation metrics: ``val/regression_error_vs_copy`` over every worker's share
    of the held-out pairs and, when ``evaluation.data.path`` is set, rank 0's ``val/mAP`` at ΔT."""
    import ray.train

    from semidff.training.flow_step import regression_error_terms

    metrics: dict[str, float] = {}
    if config["has_validation"]:
        student.eval()
        sums = [0.0, 0.0]
        with torch.no_grad():
            shard = ray.train.get_dataset_shard(VALIDATION_SPLIT)
            for numpy_batch in shard.iter_batches(batch_size=cfg.training.batch_size, batch_format="numpy"):
                for batch in to_batches(numpy_batch):
                    propagated_error, copy_error = regression_error_terms(student, batch)
                    sums[0] += propagated_error
                    sums[1] += copy_error
        student.train()
        propagated_error, copy_error = _sum_over_workers(sums, world, device)
        if copy_error > 0:
            metrics["val/regression_error_vs_copy"] = propagated_error / copy_error
    if cfg.evaluation.data.path and rank == 0:
        value = _validation_map(cfg, config, student, epoch)
        if not math.isnan(value):
            metrics["val/mAP"] = value
    return metrics


def _validation_map(cfg: Config, config: dict[str, Any], student: Any, epoch: int) -> float:
    """mAP@0.5 in ``flow`` mode at ΔT = video.key_interval on ``evaluation.data`` (jobs.evaluate),
    for this epoch's weights, into ``<output>/validation/epoch_<n>/`` and its own MLflow run."""
    from jobs.evaluate import run as evaluate

    folder = Path(config["output_dir"]) / "validation" / f"epoch_{epoch + 1:03d}"
    flow_path = folder / FLOW_FILE
    teacher_sha256 = load_model_checkpoint(config["teacher_checkpoint"], expected_kind="teacher").sha256
    save_model_checkpoint(
        flow_path, "flow", cfg, {"rfcn": student.rfcn.state_dict(), "propagator": student.propagator.state_dict()},
        meta={"teacher_sha256": teacher_sha256, "epochs": epoch + 1, "mlflow_run_id": config["run_id"]},
    )
    evaluation_cfg = cfg.model_copy(deep=True)
    evaluation_cfg.mlflow.tracking_uri = config["tracking_uri"]  # the training run's store
    report = evaluate(
        evaluation_cfg, config["teacher_checkpoint"], str(flow_path), str(folder), modes=["flow"],
        key_intervals=[cfg.video.key_interval], max_videos=cfg.training.validation_max_videos,
    )
    return float(report.result("flow", cfg.video.key_interval).map)


def _sum_over_workers(values: list[float], world: int, device: torch.device) -> list[float]:
    """Element-wise sum over the DDP ranks (the values themselves when training alone)."""
    import torch.distributed as dist

    if world == 1 or not dist.is_initialized():
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _checkpoint_name(global_step: int, kind: str) -> str:
    """A checkpoint's folder in the Ray run: the step it holds and why it was taken."""
    return f"checkpoint_step{global_step:08d}_{kind}"


def _load_state(checkpoint: Any) -> dict[str, Any]:
    """The training state in a Ray Train checkpoint (weights_only: tensors, numbers, strings)."""
    if checkpoint is None:
        raise RuntimeError("flow training ended without a checkpoint; see the Ray Train log above")
    return load_checkpoint_state(checkpoint)


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m jobs.train_flow -c cfg.yaml --cache DIR --teacher T.pt -o OUT key=value ...``"""
    from semidff.cache.info import CacheError

    parser = argparse.ArgumentParser(prog="python -m jobs.train_flow", description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", default=None, help="YAML config (omitted keys: embedded defaults)")
    parser.add_argument("--cache", default=None, help="teacher cache folder (semidff cache); training.teacher_source=cache")
    parser.add_argument("--manifest", default=None, help="manifest folder (semidff manifest); training.teacher_source=on_the_fly")
    parser.add_argument("--teacher", required=True, help="teacher checkpoint (semidff train-teacher's teacher.pt)")
    parser.add_argument("-o", "--output", required=True, help="output folder (rerun the same command to resume)")
    parser.add_argument("--run-name", default=None, help="Ray Train run name (default: derived from config, teacher and data)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        result = run(cfg, args.cache, args.teacher, args.output, manifest_dir=args.manifest, run_name=args.run_name,
                     progress=lambda line: print(line, file=sys.stderr, flush=True))
    except (ConfigError, ModelCheckpointError, CacheError, FlowTrainingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{result.flow_checkpoint} sha256 {result.sha256} ({result.epochs} epochs, {result.global_step} steps, "
          f"loss {result.final_losses.get('total', float('nan')):.4f})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
