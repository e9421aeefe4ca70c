"""The tiny-teacher benchmark's record and report (``semidff benchmark teacher``,
:mod:`jobs.benchmark_teacher` says what it runs)."""
from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass


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


def machine() -> str:
    """The machine line of this report: architecture, cores, OS."""
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


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
