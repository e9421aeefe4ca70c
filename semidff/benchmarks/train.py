"""The flow-training benchmark without Ray (``semidff benchmark train``, :mod:`jobs.benchmark_train`
says what it measures): its result records, the bare single-process torch loop, the per-step
rates of a Ray Train run read back from its MLflow run, and the report BENCHMARKS.md records.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from semidff.benchmarks.timing import Stopwatch, median
from semidff.checkpoint import ModelCheckpoint
from semidff.config import Config

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


def bare_loop(cfg: Config, teacher: ModelCheckpoint, batches: Sequence[dict], repeats: int, say: Progress) -> tuple[float, list[float], int, tuple[int, int]]:
    """(median per-step pairs/s, pairs/s per pass, pairs, image size) of a plain loop on one process
    over ``batches`` (numpy pair batches already in memory): ``flow_batch.pair_batches_from_cache``
    then ``flow_step.train_step`` with ``int(training.cpus_per_worker)`` torch threads, as one Ray
    Train worker gets; ``repeats`` passes."""
    import torch

    from semidff.checkpoint import build_teacher
    from semidff.training.flow_batch import pair_batches_from_cache
    from semidff.training.flow_step import FlowObjective, build_optimizer, build_student, train_step

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
        watch = Stopwatch()
        for numpy_batch in batches:
            terms = train_step(student, optimizer, pair_batches_from_cache(numpy_batch), objective)
            step_rates.append(terms["pairs"] / watch.lap())
        pass_rates.append(pairs / watch.seconds)
        say(f"benchmark: bare loop pass {repeat + 1}/{repeats}: {pass_rates[-1]:.2f} pairs/s")
    return median(step_rates), pass_rates, pairs, image_size


def ray_train_rate(tracking_uri: str, run_id: str, *, workers: int, cpus_per_worker: float, steps: int, wall_s: float) -> RayTrainRate:
    """The rates of a Ray Train flow run from its MLflow run: per step (the first step of every
    epoch, which waits for the data pipeline to start, left out of the median) and per epoch."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    per_step = {m.step: m.value for m in client.get_metric_history(run_id, "train/pairs_per_s_per_worker")}
    epoch_of = {m.step: m.value for m in client.get_metric_history(run_id, "train/epoch")}
    first_of_epoch = {min(s for s, e in epoch_of.items() if e == epoch) for epoch in set(epoch_of.values())}
    steady = [rate for step, rate in sorted(per_step.items()) if step not in first_of_epoch]
    waits = {m.step: m.value for m in client.get_metric_history(run_id, "train/data_wait_s")}
    steady_waits = [1000 * wait for step, wait in waits.items() if step not in first_of_epoch] or [0.0]

    def per_epoch(key: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]

    return RayTrainRate(
        workers=workers,
        cpus_per_worker=cpus_per_worker,
        steps=steps,
        median_step_rate=median(steady or list(per_step.values())),
        step_rates=[per_step[s] for s in sorted(per_step)],
        epoch_rates=per_epoch("epoch/pairs_per_s_per_worker"),
        data_wait_fractions=per_epoch("epoch/data_wait_fraction"),
        median_step_data_wait_ms=median(steady_waits),
        wall_s=wall_s,
    )


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
