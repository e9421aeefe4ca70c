"""Benchmark (issue 3 evidence): train the tiny teacher on the synthetic set on this machine, then
its val mAP@0.5 in ``frame`` and ``copy`` mode at key interval 10.

    python -m jobs.benchmark_teacher -o runs/benchmark_teacher              # jobs/configs/tiny.yaml
    semidff benchmark teacher -o runs/benchmark_teacher teacher_training.epochs=4

Steps, all with the project's own stages:

1. ``generate_synthetic_dataset``: ``train_videos`` videos (seed 0) and ``val_videos`` others (seed 1),
   ``num_frames`` frames each at 256x160, as H.264 files plus semidff-video/1 JSON, in ``<out>/data``;
2. ``jobs.train_teacher.run`` on the train set (``teacher_training`` of the config) into ``<out>/teacher``;
3. ``jobs.evaluate.run`` of that teacher on the val set, modes frame and copy at ΔT = 10, into
   ``<out>/evaluation``.

``<out>/report.json`` holds the minutes each part took and both mAPs. The teacher and evaluation
folders are replaced on every run (a benchmark must not resume an earlier training).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Optional

import typer

from jobs.cli_common import OVERRIDES_ARGUMENT, echo_progress, exit_on, resolve_config, run_module
from semidff.config import Config, ConfigError

TINY_CONFIG = Path(__file__).resolve().parent / "configs" / "tiny.yaml"
KEY_INTERVAL = 10
TRAIN_SEED, VAL_SEED = 0, 1


@dataclass
class TeacherBenchmarkReport:
    """Minutes and mAPs of one benchmark run (mAP as a fraction, 0..1)."""

    train_minutes: float
    evaluate_minutes: float
    generate_minutes: float
    epochs: int
    steps: int
    train_frames: int
    train_videos: int
    val_videos: int
    frames_per_video: int
    final_losses: dict[str, float]
    frame_map: float
    copy_map: float
    frame_fps: float
    copy_fps: float
    key_interval: int
    workers: str
    machine: str
    teacher_checkpoint: str
    evaluation_table: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def run(
    cfg: Config,
    output_dir: str | Path,
    train_videos: int = 12,
    val_videos: int = 4,
    num_frames: int = 60,
    progress: Optional[Callable[[str], None]] = None,
) -> TeacherBenchmarkReport:
    """Generate the data, train, evaluate; write and return the report (see the module docstring)."""
    from jobs.evaluate import run as evaluate
    from jobs.train_teacher import CHECKPOINT_NAME, run as train_teacher
    from semidff.data.synthetic import DATASET_FILE, generate_synthetic_dataset

    say = progress or (lambda line: None)
    out = Path(output_dir).expanduser().resolve()
    for folder in ("teacher", "evaluation"):
        shutil.rmtree(out / folder, ignore_errors=True)

    started = time.perf_counter()
    for name, count, seed in (("train", train_videos, TRAIN_SEED), ("val", val_videos, VAL_SEED)):
        generate_synthetic_dataset(out / "data" / name, num_videos=count, num_frames=num_frames,
                                   num_classes=cfg.model.num_classes, seed=seed)
    generate_minutes = (time.perf_counter() - started) / 60
    say(f"benchmark teacher: {train_videos} train and {val_videos} val synthetic videos of {num_frames} frames in {out / 'data'}")

    cfg = cfg.model_copy(deep=True)
    cfg.teacher_training.data.format = cfg.evaluation.data.format = "custom"
    cfg.teacher_training.data.path = str(out / "data" / "train" / DATASET_FILE)
    cfg.evaluation.data.path = str(out / "data" / "val" / DATASET_FILE)

    started = time.perf_counter()
    trained = train_teacher(cfg, out / "teacher", progress=say)
    train_minutes = (time.perf_counter() - started) / 60

    started = time.perf_counter()
    evaluation = evaluate(cfg, str(out / "teacher" / CHECKPOINT_NAME), None, str(out / "evaluation"),
                          modes=["frame", "copy"], key_intervals=[KEY_INTERVAL], progress=say)
    evaluate_minutes = (time.perf_counter() - started) / 60

    frame, copy = evaluation.result("frame"), evaluation.result("copy", KEY_INTERVAL)
    tcfg = cfg.teacher_training
    report = TeacherBenchmarkReport(
        train_minutes=train_minutes,
        evaluate_minutes=evaluate_minutes,
        generate_minutes=generate_minutes,
        epochs=trained.epochs,
        steps=trained.steps,
        train_frames=trained.num_samples,
        train_videos=train_videos,
        val_videos=val_videos,
        frames_per_video=num_frames,
        final_losses=trained.final_losses,
        frame_map=frame.map,
        copy_map=copy.map,
        frame_fps=frame.fps,
        copy_fps=copy.fps,
        key_interval=KEY_INTERVAL,
        workers=f"{tcfg.num_workers} x {tcfg.cpus_per_worker:g} CPU, batch {tcfg.batch_size} per worker",
        machine=f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        teacher_checkpoint=str(trained.checkpoint),
        evaluation_table=evaluation.table,
    )
    (out / "report.json").write_text(report.to_json())
    return report


def format_report(report: TeacherBenchmarkReport) -> str:
    """A few lines for the terminal and BENCHMARKS.md."""
    losses = ", ".join(f"{k} {v:.3f}" for k, v in report.final_losses.items())
    return "\n".join([
        f"tiny teacher on {report.train_frames} synthetic frames ({report.train_videos} videos x {report.frames_per_video}), "
        f"{report.workers}: {report.epochs} epochs, {report.steps} steps in {report.train_minutes:.1f} min",
        f"last epoch losses: {losses}",
        f"val ({report.val_videos} videos) mAP@0.5: frame {100 * report.frame_map:.1f}, "
        f"copy at ΔT={report.key_interval} {100 * report.copy_map:.1f} "
        f"(evaluation {report.evaluate_minutes:.1f} min; frame {report.frame_fps:.1f} frames/s, copy {report.copy_fps:.1f} frames/s)",
        f"machine: {report.machine}",
    ])


# ---------------------------------------------------------------------------------------------
# Command line (`semidff benchmark teacher`, `python -m jobs.benchmark_teacher`)


def benchmark_teacher_command(
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    output: Path = typer.Option(Path("runs/benchmark_teacher"), "--output", "-o", help="work folder: synthetic data, teacher/, evaluation/, report.json"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: jobs/configs/tiny.yaml)"),
    train_videos: int = typer.Option(12, min=1, help="synthetic training videos"),
    val_videos: int = typer.Option(4, min=1, help="synthetic validation videos (another seed)"),
    frames: int = typer.Option(60, min=12, help="frames per synthetic video"),
) -> None:
    """Train the tiny teacher on the synthetic set on this machine, then its val mAP in frame and copy mode at ΔT=10."""
    from jobs.train_teacher import TeacherTrainingError
    from semidff.data.labeled import LabeledDataError

    cfg = resolve_config(config or TINY_CONFIG, overrides)
    with exit_on(TeacherTrainingError, code=1), exit_on(ConfigError, LabeledDataError):
        report = run(cfg, output, train_videos=train_videos, val_videos=val_videos, num_frames=frames, progress=echo_progress)
    typer.echo(format_report(report))


if __name__ == "__main__":  # pragma: no cover
    run_module(benchmark_teacher_command)
