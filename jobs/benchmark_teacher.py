"""Benchmark: train the tiny teacher on the synthetic set on this machine, then
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

import shutil
from pathlib import Path
from typing import Callable, List, Optional

import typer

from jobs.cli_common import OVERRIDES_ARGUMENT, echo_progress, exit_on, resolve_config, run_module
from semidff.benchmarks.teacher import TeacherBenchmarkReport, format_report, machine
from semidff.benchmarks.timing import Stopwatch
from semidff.config import Config, ConfigError

TINY_CONFIG = Path(__file__).resolve().parent / "configs" / "tiny.yaml"
KEY_INTERVAL = 10
TRAIN_SEED, VAL_SEED = 0, 1


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

    with Stopwatch() as generating:
        for name, count, seed in (("train", train_videos, TRAIN_SEED), ("val", val_videos, VAL_SEED)):
            generate_synthetic_dataset(out / "data" / name, num_videos=count, num_frames=num_frames,
                                       num_classes=cfg.model.num_classes, seed=seed)
    say(f"benchmark teacher: {train_videos} train and {val_videos} val synthetic videos of {num_frames} frames in {out / 'data'}")

    cfg = cfg.model_copy(deep=True)
    cfg.teacher_training.data.format = cfg.evaluation.data.format = "custom"
    cfg.teacher_training.data.path = str(out / "data" / "train" / DATASET_FILE)
    cfg.evaluation.data.path = str(out / "data" / "val" / DATASET_FILE)

    with Stopwatch() as training:
        trained = train_teacher(cfg, out / "teacher", progress=say)
    with Stopwatch() as evaluating:
        evaluation = evaluate(cfg, str(out / "teacher" / CHECKPOINT_NAME), None, str(out / "evaluation"),
                              modes=["frame", "copy"], key_intervals=[KEY_INTERVAL], progress=say)

    frame, copy = evaluation.result("frame"), evaluation.result("copy", KEY_INTERVAL)
    tcfg = cfg.teacher_training
    report = TeacherBenchmarkReport(
        train_minutes=training.seconds / 60,
        evaluate_minutes=evaluating.seconds / 60,
        generate_minutes=generating.seconds / 60,
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
        machine=machine(),
        teacher_checkpoint=str(trained.checkpoint),
        evaluation_table=evaluation.table,
    )
    (out / "report.json").write_text(report.to_json())
    return report


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
