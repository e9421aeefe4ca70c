"""Benchmark (issue 5 evidence): (key, current) pairs/s per worker of the Ray Train flow loop against
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

import json
import os
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import typer

from jobs.cli_common import OVERRIDES_ARGUMENT, echo_progress, resolve_config, run_module
from semidff.config import Config
from semidff.benchmarks.machine import machine_description

TINY_CONFIG = Path(__file__).resolve().parent / "configs" / "tiny.yaml"
# Enough pairs per video for steady-state rates (the default plan takes 1 key per second, 1 current).
PLAN_OVERRIDES = ["clips.key_frames_per_video=10", "clips.currents_per_key=4"]
Progress = Callable[[str], None]


@dataclass
class RayTrainRate:
    """One Ray Train run: ``workers`` workers; pairs/s per worker."""

    workers: int
    cpus_per_worker: float
    steps: int
    median_step_rate: float  # median over the steps after each epoch's first
    step_rates: list[float]
    epoch_rates: list[float]  # per epoch, startup of the epoch's data included
    data_wait_fractions: list[float]  # per epoch: share of the step time spent waiting for the next batch
    median_step_data_wait_ms: float  # the same steps as median_step_rate
    wall_s: float


@dataclass
class TrainBenchmarkReport:
    """Pairs/s of the bare loop and of each Ray Train run, and their ratios (Ray / bare)."""

    machine: str
    torch_threads: int
    batch_size: int
    train_pairs: int
    image_size: tuple[int, int]
    bare_step_rate: float  # median per-step pairs/s of the bare loop
    bare_pass_rates: list[float]  # pairs/s of each whole pass
    ray: list[RayTrainRate] = field(default_factory=list)
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def ratios(self) -> dict[int, float]:
        return {r.workers: r.median_step_rate / self.bare_step_rate for r in self.ray}

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"ratios": {str(k): v for k, v in self.ratios().items()}}, indent=2)


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


def bare_loop(cfg: Config, cache_dir: str, teacher_checkpoint: str, repeats: int, say: Progress) -> tuple[float, list[float], int, tuple[int, int]]:
    """(median per-step pairs/s, pairs/s per pass, pairs, image size) of the single-process loop."""
    import torch

    from semidff.training.flow_inputs import check_inputs
    from pipelines.cache_dataset import pair_dataset
    from semidff.checkpoint import build_teacher
    from semidff.training.flow_batch import pair_batches_from_cache
    from semidff.training.flow_step import FlowObjective, build_optimizer, train_step
    from semidff.training.flow_step import build_student

    teacher, _, source = check_inputs(cfg, cache_dir, teacher_checkpoint, None)
    offsets = source.offsets["regression"]
    dataset = pair_dataset(cache_dir, offset_range=offsets)
    batches = list(dataset.iter_batches(batch_size=cfg.training.batch_size, batch_format="numpy"))  # in memory, not timed
    pairs = sum(len(b["offset"]) for b in batches)
    image_size = tuple(int(s) for s in batches[0]["key_frame"][0].shape[:2])
    torch.set_num_threads(max(1, int(cfg.training.cpus_per_worker)))
    torch.manual_seed(cfg.seed)
    student = build_student(build_teacher(teacher), cfg.model, cfg.training.finetune)
    optimizer = build_optimizer(student.set_step("regression"), cfg.training.optimizer, cfg.training.lr)
    student.train()
    objective = FlowObjective.from_config(cfg, "regression")
    step_rates, pass_rates = [], []
    for repeat in range(repeats):
        started = last = time.perf_counter()
        for numpy_batch in batches:
            terms = train_step(student, optimizer, pair_batches_from_cache(numpy_batch), objective)
            now = time.perf_counter()
            step_rates.append(terms["pairs"] / (now - last))
            last = now
        pass_rates.append(pairs / (time.perf_counter() - started))
        say(f"benchmark: bare loop pass {repeat + 1}/{repeats}: {pass_rates[-1]:.2f} pairs/s")
    return statistics.median(step_rates), pass_rates, pairs, image_size


def ray_train_rate(cfg: Config, cache_dir: str, teacher_checkpoint: str, out: Path, workers: int, epochs: int, say: Progress) -> RayTrainRate:
    """One jobs.train_flow run with ``workers`` workers; its rates from its MLflow run."""
    from mlflow import MlflowClient

    from jobs.train_flow import run as train_flow

    folder = out / f"ray_train_{workers}w"
    shutil.rmtree(folder, ignore_errors=True)  # a benchmark must not resume an earlier run
    import ray

    run_cfg = cfg.model_copy(deep=True)
    run_cfg.training.num_workers = workers
    # Leave half a CPU of the cluster to the cache readers (jobs.train_flow.data_cpus refuses less).
    spare = (ray.cluster_resources().get("CPU", 1.0) - 0.5) / workers
    run_cfg.training.cpus_per_worker = min(cfg.training.cpus_per_worker, spare)
    run_cfg.training.schedule = "regression"
    run_cfg.training.regression_epochs = epochs
    run_cfg.training.checkpoint_every_steps = 10_000
    run_cfg.mlflow.registered_model = None
    started = time.perf_counter()
    result = train_flow(run_cfg, cache_dir, teacher_checkpoint, str(folder), progress=say)
    wall_s = time.perf_counter() - started
    client = MlflowClient(result.tracking_uri)
    per_step = {m.step: m.value for m in client.get_metric_history(result.run_id, "train/pairs_per_s_per_worker")}
    epoch_of = {m.step: m.value for m in client.get_metric_history(result.run_id, "train/epoch")}
    first_of_epoch = {min(s for s, e in epoch_of.items() if e == epoch) for epoch in set(epoch_of.values())}
    steady = [rate for step, rate in sorted(per_step.items()) if step not in first_of_epoch]
    waits = {m.step: m.value for m in client.get_metric_history(result.run_id, "train/data_wait_s")}
    steady_waits = [1000 * wait for step, wait in waits.items() if step not in first_of_epoch] or [0.0]

    def per_epoch(key: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(result.run_id, key), key=lambda m: m.step)]

    return RayTrainRate(
        workers=workers,
        cpus_per_worker=run_cfg.training.cpus_per_worker,
        steps=result.global_step,
        median_step_rate=statistics.median(steady or list(per_step.values())),
        step_rates=[per_step[s] for s in sorted(per_step)],
        epoch_rates=per_epoch("epoch/pairs_per_s_per_worker"),
        data_wait_fractions=per_epoch("epoch/data_wait_fraction"),
        median_step_data_wait_ms=statistics.median(steady_waits),
        wall_s=wall_s,
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
        bare_rate, pass_rates, pairs, image_size = bare_loop(cfg, cache_dir, teacher, repeats, say)
        report = TrainBenchmarkReport(
            machine=machine_description(), torch_threads=max(1, int(cfg.training.cpus_per_worker)), batch_size=cfg.training.batch_size,
            train_pairs=pairs, image_size=image_size, bare_step_rate=bare_rate, bare_pass_rates=pass_rates,
        )
        for count in workers:
            report.ray.append(ray_train_rate(cfg, cache_dir, teacher, out, count, epochs, say))
    report.load_average = os.getloadavg()
    (out / "report.json").write_text(report.to_json())
    return report


def format_report(report: TrainBenchmarkReport) -> str:
    """The Markdown table that goes into BENCHMARKS.md."""
    lines = [
        f"machine: {report.machine}; load average at the end {', '.join(f'{v:.1f}' for v in report.load_average)}",
        f"{report.train_pairs} training pairs of {report.image_size[0]}x{report.image_size[1]} frames, batch {report.batch_size} per worker, "
        f"{report.torch_threads} torch thread(s) per worker, step A (regression loss)",
        "",
        "| loop | workers | pairs/s per worker (median step) | ratio to bare | data wait of the median step | "
        "pairs/s per worker per epoch (startup included) | waiting for data, per epoch |",
        "|---|---|---|---|---|---|---|",
        f"| bare torch, one process | 1 | {report.bare_step_rate:.2f} | 1.00 | (in memory) | "
        f"{', '.join(f'{r:.2f}' for r in report.bare_pass_rates)} (per pass) | (in memory) |",
    ]
    for rate in report.ray:
        lines.append(
            f"| Ray Train (DDP, {rate.cpus_per_worker:g} CPU each) | {rate.workers} | {rate.median_step_rate:.2f} | "
            f"{rate.median_step_rate / report.bare_step_rate:.2f} | {rate.median_step_data_wait_ms:.1f} ms | "
            f"{', '.join(f'{r:.2f}' for r in rate.epoch_rates)} | "
            f"{', '.join(f'{100 * w:.0f} %' for w in rate.data_wait_fractions)} |"
        )
    return "\n".join(lines)


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
