"""Benchmark: (key, current) pairs/s per worker of the Ray Train flow loop against
a bare single-process torch loop over the same teacher cache.

    python -m jobs.benchmark_train -o runs/benchmark_train                     # jobs/configs/tiny.yaml
    semidff benchmark train -o runs/benchmark_train --workers 1,2 --epochs 3

Steps, all with the project's own stages (kept in ``<out>`` and reused by the next run):

1. ``generate_synthetic_dataset`` (``videos`` x ``frames`` at 256x160; the command line plans 10 key
   frames x 4 current frames per video, :data:`PLAN_OVERRIDES`), ``build_manifest``, a
   teacher with the config's model (random weights: speed does not depend on them) and
   ``jobs.cache.run`` into ``<out>/cache``;
2. bare loop: the cache's pairs (step A offsets) are read once into memory through the cache reader, in
   batches of ``training.batch_size`` (not timed), then a plain loop converts each batch
   (``flow_batch.pair_batches_from_cache``) and runs ``flow_step.train_step`` on one process with
   ``int(training.cpus_per_worker)`` torch threads, as one Ray Train worker gets; ``repeats``
   passes over the pairs;
3. Ray Train: ``jobs.train_flow.run`` (``training.schedule=regression``, ``epochs`` epochs, no
   validation) for each worker count, into a fresh folder; each worker gets
   ``training.cpus_per_worker`` CPUs, less when the workers would leave no half CPU to the
   readers. Its per-step rate is the pairs of a step over the time since the previous step
   ended, data wait included, read back from MLflow.
   Neither holds out validation videos (``training.validation_fraction=0``).

Both loops run step A (the regression loss). The report gives the median per-step pairs/s per
worker of each (the first step of every Ray epoch, which waits for the data pipeline to start,
shows in the epoch rate instead), their ratio and the data wait of those steps, and per epoch the
rate (pairs over wall time, startup included) and the share of the time spent waiting for data.
A ratio near 1 and a small wait mean the data path keeps up with the model.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import List, Optional

import typer

from jobs.cli_common import OVERRIDES_ARGUMENT, echo_progress, resolve_config, run_module
from semidff.benchmarks.machine import machine_description
from semidff.benchmarks.timing import Stopwatch
from semidff.benchmarks.train import Progress, RayTrainRate, TrainBenchmarkReport, bare_loop, format_report, ray_train_rate
from semidff.config import Config

TINY_CONFIG = Path(__file__).resolve().parent / "configs" / "tiny.yaml"
# Enough pairs per video for steady-state rates (the default plan takes 1 key per second, 1 current).
PLAN_OVERRIDES = ["clips.key_frames_per_video=10", "clips.currents_per_key=4"]


def prepare_cache(cfg: Config, out: Path, videos: int, frames: int, say: Progress) -> tuple[str, str]:
    """(cache_dir, teacher checkpoint) in ``out``, built once (a rerun reuses them)."""
    import torch

    from jobs.cache import run as build_cache
    from pipelines.manifest import build_manifest
    from semidff.checkpoint import save_model_checkpoint
    from semidff.data.synthetic import generate_synthetic_dataset
    from semidff.models.build import build_rfcn

    if not (out / "data" / "dataset.json").is_file():
        say(f"benchmark: {videos} synthetic videos x {frames} frames")
        generate_synthetic_dataset(out / "data", num_videos=videos, num_frames=frames, seed=0)
    if not (out / "manifest" / "manifest.parquet").is_file():
        build_manifest([str(out / "data" / "videos")], str(out / "manifest"))
    teacher = out / "teacher.pt"
    if not teacher.is_file():
        torch.manual_seed(cfg.seed)
        save_model_checkpoint(teacher, "teacher", cfg, {"rfcn": build_rfcn(cfg.model).state_dict()})
    if not list((out / "cache").glob("part-*.parquet")):
        say("benchmark: building the teacher cache")
        build_cache(cfg, str(out / "manifest"), str(teacher), str(out / "cache"), progress=say)
    return str(out / "cache"), str(teacher)


def time_bare_loop(cfg: Config, cache_dir: str, teacher_checkpoint: str, repeats: int, say: Progress) -> tuple[float, list[float], int, tuple[int, int]]:
    """(median per-step pairs/s, pairs/s per pass, pairs, image size) of the single-process loop
    (:func:`semidff.benchmarks.train.bare_loop`) over the cache's step A pairs, read into memory
    first (not timed)."""
    from pipelines.cache_dataset import pair_dataset
    from semidff.training.flow_inputs import check_inputs

    teacher, _, source = check_inputs(cfg, cache_dir, teacher_checkpoint, None)
    dataset = pair_dataset(cache_dir, offset_range=source.offsets["regression"])
    batches = list(dataset.iter_batches(batch_size=cfg.training.batch_size, batch_format="numpy"))
    return bare_loop(cfg, teacher, batches, repeats, say)


def time_ray_train(cfg: Config, cache_dir: str, teacher_checkpoint: str, out: Path, workers: int, epochs: int, say: Progress) -> RayTrainRate:
    """One jobs.train_flow run with ``workers`` workers; its rates from its MLflow run."""
    import ray

    from jobs.train_flow import run as train_flow

    folder = out / f"ray_train_{workers}w"
    shutil.rmtree(folder, ignore_errors=True)  # a benchmark must not resume an earlier run
    run_cfg = cfg.model_copy(deep=True)
    run_cfg.training.num_workers = workers
    # Leave half a CPU of the cluster to the cache readers (jobs.train_flow.data_cpus refuses less).
    spare = (ray.cluster_resources().get("CPU", 1.0) - 0.5) / workers
    run_cfg.training.cpus_per_worker = min(cfg.training.cpus_per_worker, spare)
    run_cfg.training.schedule = "regression"
    run_cfg.training.regression_epochs = epochs
    run_cfg.training.checkpoint_every_steps = 10_000
    run_cfg.mlflow.registered_model = None
    with Stopwatch() as watch:
        result = train_flow(run_cfg, cache_dir, teacher_checkpoint, str(folder), progress=say)
    return ray_train_rate(
        result.tracking_uri, result.run_id, workers=workers, cpus_per_worker=run_cfg.training.cpus_per_worker,
        steps=result.global_step, wall_s=watch.seconds,
    )


def run(
    cfg: Config,
    output_dir: str | Path,
    workers: tuple[int, ...] = (1, 2),
    epochs: int = 3,
    repeats: int = 3,
    videos: int = 4,
    frames: int = 60,
    progress: Optional[Progress] = None,
) -> TrainBenchmarkReport:
    """Build the data once, time the bare loop and the Ray Train runs; write ``<out>/report.json``."""
    from pipelines.ray_session import ray_session

    say = progress or (lambda line: None)
    out = Path(output_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfg.model_copy(deep=True)
    cfg.mlflow.tracking_uri = cfg.mlflow.tracking_uri or f"sqlite:///{out / 'mlflow.db'}"
    cfg.training.validation_fraction = 0.0  # both loops over every pair of the cache
    with ray_session(cfg.ray.num_cpus, cfg.ray.address):  # (a SQLite store keeps its artifacts beside it: semidff.tracking)
        cache_dir, teacher = prepare_cache(cfg, out, videos, frames, say)
        bare_rate, pass_rates, pairs, image_size = time_bare_loop(cfg, cache_dir, teacher, repeats, say)
        report = TrainBenchmarkReport(
            machine=machine_description(), torch_threads=max(1, int(cfg.training.cpus_per_worker)), batch_size=cfg.training.batch_size,
            train_pairs=pairs, image_size=image_size, bare_step_rate=bare_rate, bare_pass_rates=pass_rates,
        )
        for count in workers:
            report.ray.append(time_ray_train(cfg, cache_dir, teacher, out, count, epochs, say))
    report.load_average = os.getloadavg()
    (out / "report.json").write_text(report.to_json())
    return report


# ---------------------------------------------------------------------------------------------
# Command line (`semidff benchmark train`, `python -m jobs.benchmark_train`)


def benchmark_train_command(
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    output: Path = typer.Option(Path("runs/benchmark_train"), "--output", "-o", help="work folder: data, cache, Ray Train runs, report.json (data and cache reused)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: jobs/configs/tiny.yaml)"),
    workers: str = typer.Option("1,2", "--workers", help="comma-separated Ray Train worker counts"),
    epochs: int = typer.Option(3, min=1, help="epochs of each Ray Train run"),
    repeats: int = typer.Option(3, min=1, help="passes of the bare torch loop"),
    videos: int = typer.Option(4, min=1, help="synthetic videos"),
    frames: int = typer.Option(60, min=12, help="frames per synthetic video"),
) -> None:
    """Flow training pairs/s per worker: the Ray Train loop against a bare torch loop over the same cache."""
    cfg = resolve_config(config or TINY_CONFIG, PLAN_OVERRIDES + list(overrides or []))
    try:
        counts = tuple(int(count) for count in workers.split(","))
    except ValueError:
        typer.echo(f"error: --workers {workers!r}: expected comma-separated integers, e.g. 1,2", err=True)
        raise typer.Exit(2) from None
    report = run(cfg, output, counts, epochs, repeats, videos, frames, progress=echo_progress)
    typer.echo(format_report(report))


if __name__ == "__main__":  # pragma: no cover
    run_module(benchmark_train_command)
