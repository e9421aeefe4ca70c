"""The decode benchmark without Ray (``semidff benchmark decode``, :mod:`jobs.benchmark_decode`
says what it measures): its result records and their JSON, the lower-bound cost model, the
generated benchmark videos, the measures taken in one process (per-frame decode costs, the ffmpeg
CLI, one file's CPU seconds, the plan's counts) and the report BENCHMARKS.md records.

The timed Ray Data runs are :mod:`pipelines.benchmarks`.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from semidff.benchmarks.machine import cpu_model
from semidff.benchmarks.timing import Stopwatch, format_runs, median
from semidff.config import Config

Progress = Callable[[str], None]
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "semidff" / "benchmark_decode"
FFMPEG_COMMAND = ("ffmpeg", "-v", "error", "-threads", "1", "-i", "{file}", "-f", "null", "-")


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class MethodTiming:
    """One way of getting the plan's clips from the same files: every timed run and their median."""

    name: str
    runs_s: list[float]
    cpu_runs_s: list[float]  # CPU seconds of the process tree (ffmpeg: of its processes)
    clips: int  # clips the plan has (rows ours produced, checked)
    frames_decoded: int  # frames the decoder touches: forced by the plan (ours) or all (read_videos, ffmpeg)
    frames_delivered: int  # frames handed to the consumer

    @property
    def seconds(self) -> float:
        return median(self.runs_s)

    @property
    def cpu_seconds(self) -> float:
        return median(self.cpu_runs_s)  # nan without CPU runs

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds

    @property
    def decoded_fps(self) -> float:
        return self.frames_decoded / self.seconds


@dataclass
class PlanStats:
    """A plan over the files of one GOP setting."""

    clips: int
    frames_kept: int  # distinct frames the clips need
    frames_forced: int  # frames_decoded_for: from each entered GOP's keyframe to the frames kept
    keyframes_forced: int  # GOPs entered (each costs its keyframe)


@dataclass
class GopResult:
    gop: int
    files: int
    frames: int  # all frames of the files
    keyframes: int
    keyframe_ms: float  # mean decode cost of a keyframe, PyAV, one thread (CPU time)
    other_frame_ms: float  # mean decode cost of the other frames
    rgb_ms: float  # mean cost of converting a decoded frame to RGB (PyAV)
    resize_ms: float  # mean cost of resizing an RGB frame as the clip stage does (one torch thread)
    plans: dict[str, PlanStats]  # "as planned", "on keyframes"
    methods: list[MethodTiming]
    ffmpeg_missing: bool = False
    # One file, one process, CPU seconds per run (no Ray, hardly affected by other jobs): "ffmpeg"
    # (every frame), "pyav" / "decord" (decode_clips of the plan as planned: decode, RGB, resize)
    single_file_cpu_s: dict[str, list[float]] = field(default_factory=dict)
    single_file_plan: Optional[PlanStats] = None  # the plan as planned, of that file
    single_file_frames: int = 0
    single_file_keyframes: int = 0

    def method(self, name: str) -> Optional[MethodTiming]:
        return next((m for m in self.methods if m.name == name), None)

    def lower_bound_s(self, plan: str, kind: str = "c", cpu: bool = False, num_cpus: int = 1) -> Optional[float]:
        """A lower bound for the plan over all files, from ffmpeg's median time (cpu: its CPU
        seconds); see :func:`lower_bound`. None without ffmpeg."""
        ffmpeg = self.method("ffmpeg")
        if ffmpeg is None:
            return None
        base = ffmpeg.cpu_seconds if cpu else ffmpeg.seconds
        return lower_bound(base, kind, self.plans[plan], self.frames, self.keyframes, self, 1 if cpu else num_cpus)


BOUNDS = {
    "c": "(c) ffmpeg x share of frames forced",
    "weighted": "(c) weighted by decode cost",
    "weighted+rgb": "(c) weighted + RGB and resize of the kept frames",
}


def lower_bound(base_s: float, kind: str, stats: PlanStats, frames: int, keyframes: int, costs: "GopResult", parallel: int = 1) -> float:
    """``base_s`` (ffmpeg decoding every one of ``frames``) scaled to what the plan needs.

    "c": x the share of frames the plan forces (the issue's bound); "weighted": the same share
    with each frame weighted by its decode cost (a keyframe costs several other frames, and a
    plan that enters many GOPs decodes many keyframes); "weighted+rgb": plus converting the kept
    frames to RGB and resizing them, which any pipeline delivering resized frames pays (spread
    over ``parallel`` processes)."""
    if kind == "c":
        share = stats.frames_forced / frames
    else:
        forced = stats.keyframes_forced * costs.keyframe_ms + (stats.frames_forced - stats.keyframes_forced) * costs.other_frame_ms
        share = forced / (keyframes * costs.keyframe_ms + (frames - keyframes) * costs.other_frame_ms)
    bound = base_s * share
    if kind == "weighted+rgb":
        bound += stats.frames_kept * (costs.rgb_ms + costs.resize_ms) / 1000 / parallel
    return bound


@dataclass
class MemoryResult:
    videos: int
    clips: int
    peak_mb_runs: list[float]  # peak RSS sum (driver + Ray process tree) during each run
    idle_mb_runs: list[float]  # the same sum just before each run

    @property
    def peak_mb(self) -> float:
        return median(self.peak_mb_runs)

    @property
    def above_idle_mb(self) -> float:
        return median(p - i for p, i in zip(self.peak_mb_runs, self.idle_mb_runs))


@dataclass
class DecodeBenchmarkResult:
    machine: str
    num_cpus: int
    command: str
    video: str  # what the files are
    plan: str
    repeats: int
    load_average: list[float] = field(default_factory=list)  # 1-min load average at the start of each round
    gops: list[GopResult] = field(default_factory=list)
    memory: list[MemoryResult] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


# ---------------------------------------------------------------------------------------------
# Videos and what one process measures


def write_benchmark_video(path: Path, *, seconds: float, fps: int, width: int, height: int, gop: int, seed: int) -> Path:
    """Encode the synthetic scene ``seed`` to ``path`` as H.264 with a keyframe exactly every ``gop``
    frames (x264 veryfast, crf 23, default B-frames; temp file + rename)."""
    from semidff.data.synthetic import encode_video, synthetic_scene

    num_frames = max(1, round(seconds * fps))
    scene = synthetic_scene(seed, 0, num_frames=num_frames, width=width, height=height)
    frames = (scene.render(t)[0] for t in range(num_frames))
    return encode_video(frames, path, fps=fps, gop=gop, crf=23, exact_gop=True)


def ensure_videos(
    cache_dir: Path, *, count: int, seconds: float, fps: int, width: int, height: int, gop: int, progress: Progress = lambda line: None
) -> list[Path]:
    """``count`` benchmark videos with these settings under ``cache_dir``, generated when missing."""
    folder = Path(cache_dir) / f"h264_{width}x{height}_{fps}fps_{seconds:g}s_gop{gop}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"video_{i:04d}.mp4" for i in range(count)]
    missing = [p for p in paths if not p.exists()]
    for done, path in enumerate(missing, start=1):
        write_benchmark_video(path, seconds=seconds, fps=fps, width=width, height=height, gop=gop, seed=int(path.stem.split("_")[1]))
        if done % 10 == 0 or done == len(missing):
            progress(f"  generated {done}/{len(missing)} videos in {folder}")
    return paths


def frame_costs(path: Path, short_side: int, max_long_side: int, sample: int = 32) -> dict[str, float]:
    """Mean thread CPU ms, one thread: decoding a keyframe ("keyframe") and another frame ("other")
    with PyAV, converting a decoded frame to RGB ("rgb") and resizing it in uint8 as the clip stage
    does ("resize", :func:`semidff.preprocess.resize_frames`; the first ``sample`` frames)."""
    import av
    import torch

    from semidff.preprocess import resize_frames

    costs: dict[str, list[float]] = {"keyframe": [], "other": [], "rgb": [], "resize": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray task of 1 CPU
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                with Stopwatch(time.thread_time) as watch:
                    frames = stream.codec_context.decode(packet)
                costs["keyframe" if packet.is_keyframe else "other"].append(watch.seconds)
                for frame in frames:
                    if len(costs["rgb"]) < sample:
                        with Stopwatch(time.thread_time) as watch:
                            rgb = frame.to_ndarray(format="rgb24")
                        costs["rgb"].append(watch.seconds)
                        with Stopwatch(time.thread_time) as watch:
                            resize_frames(rgb[None], short_side, max_long_side)
                        costs["resize"].append(watch.seconds)
    finally:
        torch.set_num_threads(threads)
    return {name: 1000 * float(np.mean(values)) if values else 0.0 for name, values in costs.items()}


def time_ffmpeg(ffmpeg: str, paths: Sequence[Path], parallel: int) -> tuple[float, float]:
    """(wall s, CPU s) of the ffmpeg CLI decoding every frame of ``paths``, ``parallel`` processes at once."""
    queue = list(paths)
    running: dict[int, Path] = {}
    cpu = 0.0
    watch = Stopwatch()
    while queue or running:
        while queue and len(running) < parallel:
            path = queue.pop(0)
            command = [ffmpeg if part == "ffmpeg" else part.replace("{file}", str(path)) for part in FFMPEG_COMMAND]
            running[subprocess.Popen(command, stdin=subprocess.DEVNULL).pid] = path
        pid, status, usage = os.wait4(-1, 0)
        path = running.pop(pid, None)
        if path is None:
            continue
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"ffmpeg failed on {path} (exit status {os.waitstatus_to_exitcode(status)})")
        cpu += usage.ru_utime + usage.ru_stime
    return watch.seconds, cpu


def single_file_cpu(ffmpeg: Optional[str], row: dict, cfg: Config, plan_args: dict[str, Any]) -> dict[str, float]:
    """CPU seconds of one file in this process: decode_clips of the plan (``plan_args`` of
    :func:`semidff.video.clip_plan.plan_clips`) with each decoder (all threads of the process), and
    the ffmpeg CLI decoding every frame (its rusage)."""
    from semidff.video.clip_plan import plan_clips
    from semidff.video.decode import decode_clips, open_video

    with open_video(row["uri"], num_frames=row["num_frames"]) as opened:
        clips = plan_clips(row, codec_keyframes=opened.keyframe_indices(), **plan_args)
    seconds = {}
    for decoder in ("pyav", "decord"):
        with Stopwatch(time.process_time) as watch:
            results = list(
                decode_clips(
                    row["uri"], clips, short_side=cfg.preprocess.short_side, max_long_side=cfg.preprocess.max_long_side,
                    chunk_frames=cfg.clips.chunk_frames, decoder=decoder, num_frames=row["num_frames"],
                )
            )
        seconds[decoder] = watch.seconds
        if len(results) != len(clips):
            raise RuntimeError(f"{decoder}: {len(results)} results for {len(clips)} clips")
    if ffmpeg:
        seconds["ffmpeg"] = time_ffmpeg(ffmpeg, [Path(row["uri"])], 1)[1]
    return seconds


def plan_stats(rows: list[dict], plan_args: dict[str, Any]) -> tuple[PlanStats, int]:
    """The plan of ``plan_args`` (of :func:`semidff.video.clip_plan.plan_clips`) over ``rows``
    (keyframes from each file's index) and the files' keyframe count."""
    import bisect

    from semidff.video.clip_plan import plan_clips
    from semidff.video.decode import open_video

    stats = PlanStats(0, 0, 0, 0)
    keyframe_count = 0
    for row in rows:
        with open_video(row["uri"], num_frames=row["num_frames"]) as opened:
            keyframes = opened.keyframe_indices()
        clips = plan_clips(row, codec_keyframes=keyframes, **plan_args)
        kept = sorted({i for clip in clips for i in clip.frame_indices})
        stats.clips += len(clips)
        stats.frames_kept += len(kept)
        stats.frames_forced += sum(clip.frames_decoded for clip in clips)
        stats.keyframes_forced += len({bisect.bisect_right(keyframes, i) for i in kept})  # each GOP entered is decoded from its keyframe
        keyframe_count += len(keyframes)
    return stats, keyframe_count


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, nice {os.nice(0)}"


# ---------------------------------------------------------------------------------------------
# Report


def format_report(result: DecodeBenchmarkResult) -> str:
    """The result as Markdown tables (what BENCHMARKS.md records)."""
    lines = [
        f"machine: {result.machine}; Ray with {result.num_cpus} CPUs; load average (1 min) at the rounds: "
        + ", ".join(f"{x:g}" for x in result.load_average),
        f"videos: {result.video}; plan: {result.plan}; median of {result.repeats} runs",
    ]
    for gop in result.gops:
        lines += [
            "",
            f"#### GOP {gop.gop}: {gop.files} files, {gop.frames} frames, {gop.keyframes} keyframes",
            "",
            "| plan | clips | frames kept | frames the codec forces | per clip | of all frames |",
            "|---|---|---|---|---|---|",
        ]
        for name, stats in gop.plans.items():
            per_clip = stats.frames_forced / stats.clips if stats.clips else 0.0
            lines.append(f"| keys {name} | {stats.clips} | {stats.frames_kept} | {stats.frames_forced} | {per_clip:.1f} | {100 * stats.frames_forced / gop.frames:.1f} % |")
        lines += [
            "",
            "| method | s (median) | runs, s | CPU s | clips/s | decoded frames/s | delivered frames/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in gop.methods:
            lines.append(
                f"| {m.name} | {m.seconds:.2f} | {format_runs(m.runs_s)} | {m.cpu_seconds:.2f} | {m.clips_per_s:.1f} | {m.decoded_fps:.0f} | {m.frames_delivered / m.seconds:.0f} |"
            )
        if gop.ffmpeg_missing:
            lines.append("| ffmpeg | skipped: ffmpeg not found on PATH | | | | | |")
        read_videos = gop.method("read_videos")
        lines += ["", "| ours, keys | lower bound | bound, s | ours / bound | bound, CPU s | ours / bound, in CPU s |", "|---|---|---|---|---|---|"]
        for plan, name in (("as planned", "ours"), ("on keyframes", "ours, keys on keyframes")):
            ours = gop.method(name)
            if ours is None:
                continue
            if read_videos:  # it decodes the same files whatever the plan: its clips/s for this plan is clips / its time
                lines.append(f"| {plan} | ray.data.read_videos (a), for comparison | {read_videos.seconds:.2f} | {ours.seconds / read_videos.seconds:.2f}x | {read_videos.cpu_seconds:.2f} | {ours.cpu_seconds / read_videos.cpu_seconds:.2f}x |")
            if gop.method("ffmpeg") is None:
                lines.append(f"| {plan} | skipped: no ffmpeg | | | | |")
                continue
            for kind, label in BOUNDS.items():
                wall, cpu = gop.lower_bound_s(plan, kind, num_cpus=result.num_cpus), gop.lower_bound_s(plan, kind, cpu=True)
                lines.append(f"| {plan} | {label} | {wall:.2f} | {ours.seconds / wall:.2f}x | {cpu:.2f} | {ours.cpu_seconds / cpu:.2f}x |")
        lines.append(
            f"\nper-frame costs, PyAV 1 thread (CPU ms): decode a keyframe {gop.keyframe_ms:.2f}, another frame {gop.other_frame_ms:.2f}; "
            f"RGB conversion {gop.rgb_ms:.2f}; resize {gop.resize_ms:.2f}"
        )
        if gop.single_file_cpu_s and gop.single_file_plan is not None:
            cpu = {name: median(runs) for name, runs in gop.single_file_cpu_s.items()}
            stats = gop.single_file_plan
            lines += [
                "",
                f"one file ({stats.clips} clips, {stats.frames_forced} of {gop.single_file_frames} frames forced), one process, no Ray: CPU s, median",
                "",
                "| decoding | CPU s | " + " | ".join(f"/ {label}" for label in BOUNDS.values()) + " |",
                "|---|---|" + "---|" * len(BOUNDS),
            ]
            bounds = (
                {kind: lower_bound(cpu["ffmpeg"], kind, stats, gop.single_file_frames, gop.single_file_keyframes, gop) for kind in BOUNDS}
                if "ffmpeg" in cpu else {}
            )
            for name, label in (("pyav", "ours: decode_clips, PyAV"), ("decord", "ours: decode_clips, decord"), ("ffmpeg", "ffmpeg CLI, every frame")):
                if name in cpu:
                    ratios = " | ".join(f"{cpu[name] / bounds[kind]:.2f}x" if bounds and name != "ffmpeg" else "" for kind in BOUNDS)
                    lines.append(f"| {label} | {cpu[name]:.2f} | {ratios} |")
        decord, auto = gop.method("ours, decord"), gop.method("ours")
        if decord and auto:
            lines.append(
                f"\nours (PyAV path) against ours with decord, same plan: {decord.seconds / auto.seconds:.2f}x the speed "
                f"({decord.seconds:.2f} s -> {auto.seconds:.2f} s; CPU s {decord.cpu_seconds:.2f} -> {auto.cpu_seconds:.2f})"
            )
    if result.memory:
        lines += ["", "#### Peak memory (RSS of the driver + every Ray process, sampled every 20 ms)", "",
                  "| videos | clips | peak MB (median) | runs, MB | above idle, MB |", "|---|---|---|---|---|"]
        for m in result.memory:
            lines.append(f"| {m.videos} | {m.clips} | {m.peak_mb:.0f} | {format_runs(m.peak_mb_runs, 0)} | {m.above_idle_mb:.0f} |")
    return "\n".join(lines)


def load_result(path: str | Path) -> DecodeBenchmarkResult:
    """A result written with ``-o`` (to print its report again, e.g. after a change of format_report)."""
    data = json.loads(Path(path).read_text())
    gops = [
        GopResult(
            **{
                **g,
                "plans": {k: PlanStats(**v) for k, v in g["plans"].items()},
                "methods": [MethodTiming(**m) for m in g["methods"]],
                "single_file_plan": PlanStats(**g["single_file_plan"]) if g.get("single_file_plan") else None,
            }
        )
        for g in data.pop("gops")
    ]
    memory = [MemoryResult(**m) for m in data.pop("memory")]
    return DecodeBenchmarkResult(**data, gops=gops, memory=memory)


def parse_ints(text: str) -> list[int]:
    """'250,30' -> [250, 30]; '' -> []."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{text!r}: expected comma-separated integers, e.g. 250,30") from None
