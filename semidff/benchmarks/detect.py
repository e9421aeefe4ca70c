"""``semidff benchmark detect``: frames/s of the `frame` and `flow` modes at the configured ΔT.

The paper's speed claim (Table 1 and 3g: ~4x at ΔT = 10 on a 2015 GPU) rests on the flow step
being much cheaper than a backbone pass. This script measures both modes on the same synthetic
moving frames with the same randomly initialised networks (speed does not depend on the weights,
only the post-processing sees score values), reports the median of several timed runs, the key
and propagated frame costs separately, and the speed-up ratio flow / frame.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from semidff.benchmarks.machine import cpu_model
from semidff.benchmarks.timing import format_runs, median, time_calls
from semidff.config import Config
from semidff.models.build import build_propagator, build_rfcn
from semidff.models.video_detector import VideoDetector
from semidff.preprocess import resized_shape, resolve_device


@dataclass
class ModeTiming:
    """Median timings of one mode over the timed runs."""

    mode: str
    fps: float
    runs_fps: list[float]
    key_frame_ms: float
    propagated_frame_ms: float | None


@dataclass
class DetectBenchmarkResult:
    machine: str
    device: str
    torch_version: str
    threads: int
    backbone: str
    input_size: tuple[int, int]
    network_size: tuple[int, int]
    key_interval: int
    frames_per_run: int
    repeats: int
    frame: ModeTiming
    flow: ModeTiming

    @property
    def speedup(self) -> float:
        return self.flow.fps / self.frame.fps

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "speedup": self.speedup}, indent=2)


def synthetic_video(num_frames: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """(H, W, 3) uint8 frames of a smooth random texture panning 3 px right and 1 px down per frame."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 8 + num_frames, width // 8 + num_frames, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)
    return [np.ascontiguousarray(texture[i : i + height, 3 * i : 3 * i + width]) for i in range(num_frames)]


def _machine() -> str:
    return f"{cpu_model()}, {torch.get_num_threads()} torch threads"


def _time_mode(detector: VideoDetector, frames, cfg: Config, repeats: int) -> ModeTiming:
    # warm-up: one key frame and (in flow mode) one propagated frame
    detector.run(frames[:2], cfg.preprocess.short_side, cfg.preprocess.max_long_side)
    def timed_run():  # the detector's own timing of its compute (not the call's wall time)
        return detector.run(frames, cfg.preprocess.short_side, cfg.preprocess.max_long_side)[1]

    timings = time_calls(timed_run, repeats).results
    runs = [timing.compute_fps for timing in timings]
    key_ms = [1000 * s for timing in timings for s in timing.key_compute_seconds]
    other_ms = [1000 * s for timing in timings for s in timing.other_compute_seconds]
    return ModeTiming(
        mode=detector.mode,
        fps=median(runs),
        runs_fps=runs,
        key_frame_ms=median(key_ms),
        propagated_frame_ms=median(other_ms) if other_ms else None,
    )


def run_detect_benchmark(
    cfg: Config,
    num_frames: int = 20,
    repeats: int = 3,
    frame_size: tuple[int, int] = (600, 1000),
    progress: Callable[[str], None] = lambda line: None,
) -> DetectBenchmarkResult:
    """Time `frame` and `flow` mode on the same frames; see the module docstring."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rfcn = build_rfcn(cfg.model).to(device).eval()
    propagator = build_propagator(cfg.model).to(device).eval()
    frames = synthetic_video(num_frames, *frame_size, seed=cfg.seed)
    timings = {}
    for mode in ("frame", "flow"):
        progress(f"benchmark detect: timing mode={mode}, {repeats} runs of {num_frames} frames on {device} ...")
        detector = VideoDetector(rfcn, propagator, key_interval=cfg.video.key_interval, mode=mode)
        timings[mode] = _time_mode(detector, frames, cfg, repeats)
        progress(f"  {mode}: {timings[mode].fps:.3f} frames/s (runs: {format_runs(timings[mode].runs_fps, 3)})")
    net_h, net_w, _ = resized_shape(*frame_size, cfg.preprocess.short_side, cfg.preprocess.max_long_side)
    return DetectBenchmarkResult(
        machine=_machine() if device.type == "cpu" else torch.cuda.get_device_name(device),
        device=str(device),
        torch_version=torch.__version__,
        threads=torch.get_num_threads(),
        backbone=f"ResNet-{cfg.model.backbone.depth} x{cfg.model.backbone.width_multiplier}, "
        f"{cfg.model.feature_channels} feature channels, FlowNetS x{cfg.model.flownet.width_multiplier}",
        input_size=frame_size,
        network_size=(net_h, net_w),
        key_interval=cfg.video.key_interval,
        frames_per_run=num_frames,
        repeats=repeats,
        frame=timings["frame"],
        flow=timings["flow"],
    )


def format_report(result: DetectBenchmarkResult) -> str:
    """A Markdown table for BENCHMARKS.md."""
    prop = result.flow.propagated_frame_ms
    lines = [
        f"machine: {result.machine} ({result.device}, torch {result.torch_version})",
        f"model: {result.backbone}; input {result.input_size[0]}x{result.input_size[1]} -> network "
        f"{result.network_size[0]}x{result.network_size[1]}; key interval {result.key_interval}; "
        f"median of {result.repeats} runs of {result.frames_per_run} frames",
        "",
        "| mode | frames/s (median) | runs | key frame ms | propagated frame ms |",
        "|---|---|---|---|---|",
    ]
    for timing in (result.frame, result.flow):
        lines.append(
            f"| {timing.mode} | {timing.fps:.3f} | {format_runs(timing.runs_fps, 3)} | "
            f"{timing.key_frame_ms:.1f} | {'' if timing.propagated_frame_ms is None else f'{timing.propagated_frame_ms:.1f}'} |"
        )
    lines.append("")
    lines.append(f"speed-up flow / frame at key interval {result.key_interval}: **{result.speedup:.2f}x**")
    if prop is not None:
        lines.append(f"propagated frame / key frame cost: {prop / result.flow.key_frame_ms:.3f}")
    return "\n".join(lines)
