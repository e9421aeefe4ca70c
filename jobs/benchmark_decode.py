"""``semidff benchmark decode``: the clip stage's decoding against ``ray.data.read_videos``, the ffmpeg
CLI and the decoding the codec forces; and its peak memory on a small and a large corpus.

    semidff benchmark decode --videos 8 --seconds 60 --repeats 3 -o decode.json  # [-c cfg.yaml key=value ...]
    python -m jobs.benchmark_decode --videos 8 --seconds 60 --repeats 3          # the same command

What one run does (all on one local Ray of ``num_cpus`` CPUs, started once):

1. Videos, generated once with PyAV into ``cache_dir`` and reused: for each keyframe interval in
   ``gops`` (250: typical of web video; 30), ``videos`` files of ``seconds`` s, 1280x720 at 30 fps,
   H.264 (x264 veryfast, crf 23, its default B-frames, a keyframe exactly every GOP frames), showing
   the synthetic scene of :mod:`semidff.data.synthetic` (textured objects over a panning background).
   Default 8 files of 60 s per GOP (about 10 minutes to generate, once): large enough that the
   fixed start of a Ray Data run (about 1 s with one task, before its CPU budget is known; see
   BENCHMARKS.md) is a small part of each timed run, as it is of a corpus-sized one.
2. For each GOP, ``repeats`` rounds (after one untimed round that starts the Ray workers); each
   round times, one after the other on the same files:
   * ours: :func:`pipelines.clips.clip_dataset_from_config` with the config's plan (default: 1 key
     frame per second, 1 current frame at d in [0, 9]) and resize (600x1000), run to the end; each
     task reduces its clip rows to counts, so the frames are decoded and resized but not shipped.
     Also with ``clips.decoder=decord`` (the decoder before the PyAV path) and with the keys on
     codec keyframes (``clips.align_to_codec_keyframes=true``) when that changes the plan.
   * (a) ``ray.data.read_videos`` of the same files (it decodes every frame), reduced the same way.
   * (b) the ffmpeg CLI, ``ffmpeg -v error -threads 1 -i FILE -f null -``, as many files at once as
     Ray has CPUs (one thread per process, as one decode task has). Skipped when ffmpeg is missing.
   * (c) the lower bound: ffmpeg's time x (frames the codec forces for the plan / all frames); the
     forced frames are :func:`semidff.video.clip_plan.frames_decoded_for`, from each GOP's keyframe
     to the frames kept. It weighs every frame alike, while a keyframe costs several times a P- or
     B-frame; (c, weighted) weighs them by their decode cost, measured per frame type with PyAV
     on the first file of each GOP (thread CPU time, one thread).
   clips/s counts the plan's clips (read_videos and ffmpeg would have to deliver the same ones);
   decoded frames/s counts the frames the decoder touches: the forced frames for ours (an
   estimate: ours also skips the non-reference frames it does not need), every frame for (a), (b).
   And, without Ray, the CPU seconds of one file in one process: the plan's clips decoded with
   each decoder (:func:`semidff.video.decode.decode_clips`) and ffmpeg decoding every frame.
3. Peak memory (measured first, on fresh workers): the clip pipeline over ``memory_counts`` small
   videos (320x240, 2 s), its rows (frames included) pulled to the driver in batches; the resident
   memory (RSS) of the driver and every Ray process (its whole process tree) is sampled every 20 ms,
   and the peak is reported with the idle level before the run. Shared pages (the object store)
   count once per process mapping them.

Medians over the rounds are reported, with every run, the load average, and CPU seconds of the
process tree (less sensitive than wall time to other jobs on a shared machine). A local Ray started
here runs its workers at the driver's priority (``RAY_worker_niceness=0``; Ray's default is +15),
like the ffmpeg processes.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import List, Optional, Sequence

import typer

from jobs.cli_common import CONFIG_OPTION, OVERRIDES_ARGUMENT, command_line, echo_progress, exit_on, resolve_config, run_module, write_json_result
from semidff.benchmarks.decode import (
    DEFAULT_CACHE_DIR, DecodeBenchmarkResult, GopResult, MethodTiming, Progress, ensure_videos, format_report, frame_costs, load_average,
    load_result, machine, parse_ints, plan_stats, single_file_cpu, time_ffmpeg,
)
from semidff.config import Config


def _with(cfg: Config, **clips) -> Config:
    return cfg.model_copy(update={"clips": cfg.clips.model_copy(update=clips)})


def _plan_args(cfg: Config) -> dict:
    from pipelines.clips import PLAN_KEYS

    return {name: getattr(cfg.clips, name) for name in PLAN_KEYS}


# ---------------------------------------------------------------------------------------------
# The benchmark


def run(
    cfg: Config,
    *,
    videos: int = 8,
    seconds: float = 60.0,
    fps: int = 30,
    width: int = 1280,
    height: int = 720,
    gops: Sequence[int] = (250, 30),
    repeats: int = 3,
    memory_counts: Sequence[int] = (10, 200),
    memory_size: tuple[int, int] = (320, 240),
    memory_seconds: float = 2.0,
    cache_dir: Optional[Path] = None,
    num_cpus: Optional[int] = None,
    progress: Progress = lambda line: None,
    command: str = "",
) -> DecodeBenchmarkResult:
    """Measure what the module docstring says; ``cfg`` gives the plan and the resize (``clips``,
    ``preprocess``) and the Ray (``ray``; ``num_cpus`` overrides ``ray.num_cpus``)."""
    import ray

    from pipelines.benchmarks import measure_memory
    from pipelines.ray_session import ray_session

    if videos < 1 or repeats < 1 or seconds <= 0 or fps < 1 or any(g < 1 for g in gops) or any(c < 1 for c in memory_counts):
        raise ValueError("videos, repeats, seconds, fps, every GOP and every memory count must be positive")
    cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR)
    if not ray.is_initialized() and not (cfg.ray.address or os.environ.get("RAY_ADDRESS")):
        # Ray runs its workers at nice +15 by default: on a shared machine they would lose CPU to
        # the ffmpeg processes they are compared with. Read by the raylet this run starts.
        os.environ.setdefault("RAY_worker_niceness", "0")
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        progress("ffmpeg not found on PATH: the ffmpeg column and the lower bound (c) are skipped (install ffmpeg to get them)")
    files = {}
    for gop in gops:
        progress(f"videos: {videos} x {seconds:g} s, {width}x{height} at {fps} fps, GOP {gop} (cached in {cache_dir})")
        files[gop] = ensure_videos(cache_dir, count=videos, seconds=seconds, fps=fps, width=width, height=height, gop=gop, progress=progress)
    memory_width, memory_height = memory_size
    memory_files = []
    if memory_counts:
        progress(f"memory videos: {max(memory_counts)} x {memory_seconds:g} s, {memory_width}x{memory_height}")
        memory_files = ensure_videos(
            cache_dir, count=max(memory_counts), seconds=memory_seconds, fps=25, width=memory_width, height=memory_height, gop=25, progress=progress
        )

    lo, hi = cfg.clips.offset_range
    rate = f"{cfg.clips.key_frames_per_video} keys per video" if cfg.clips.key_frames_per_video else f"{cfg.clips.key_frames_per_second:g} key/s"
    result = DecodeBenchmarkResult(
        machine=machine(),
        num_cpus=0,
        command=command,
        video=f"{videos} x {seconds:g} s H.264 {width}x{height} at {fps} fps (x264 veryfast crf 23, B-frames) per GOP",
        plan=f"{rate}, {cfg.clips.currents_per_key} current(s) at d in [{lo}, {hi}], resize to {cfg.preprocess.short_side}/{cfg.preprocess.max_long_side}",
        repeats=repeats,
    )
    with ray_session(num_cpus or cfg.ray.num_cpus, cfg.ray.address):
        result.num_cpus = int(ray.cluster_resources().get("CPU", 1))
        if memory_counts:  # first: later read_videos tasks leave GBs resident in the workers they ran in
            result.memory = measure_memory(_probed(memory_files), memory_counts, cfg, repeats, progress)
        for gop in gops:
            result.gops.append(_measure_gop(cfg, gop, files[gop], ffmpeg, result, warm_up=gop == gops[0], progress=progress))
    return result


def _probed(paths: Sequence[Path]) -> list[dict]:
    from semidff.video.probe import probe_video

    return [probe_video(str(p)).to_row() for p in paths]


def _measure_gop(cfg: Config, gop: int, files: list[Path], ffmpeg: Optional[str], result: DecodeBenchmarkResult, *, warm_up: bool, progress: Progress) -> GopResult:
    """``result.repeats`` rounds over the files of one GOP: each round times every method in turn
    (and appends the load average to ``result``)."""
    from pipelines.benchmarks import time_clip_stage, time_read_videos

    rows = _probed(files)
    bad = [r["error"] for r in rows if r["status"] != "ok"]
    if bad:
        raise RuntimeError(f"benchmark video unusable: {bad[0]} (delete {files[0].parent} to regenerate)")
    total_frames = sum(r["num_frames"] for r in rows)
    as_planned, on_keyframes = _with(cfg, align_to_codec_keyframes=False), _with(cfg, align_to_codec_keyframes=True)
    variants = {"ours": as_planned, "ours, decord": _with(as_planned, decoder="decord")}
    plain, keyframes = plan_stats(rows, _plan_args(as_planned))
    aligned, _ = plan_stats(rows, _plan_args(on_keyframes))
    if aligned != plain:
        variants["ours, keys on keyframes"] = on_keyframes
    costs = frame_costs(files[0], cfg.preprocess.short_side, cfg.preprocess.max_long_side)
    one_file, one_file_keyframes = plan_stats(rows[:1], _plan_args(as_planned))
    single_file: dict[str, list[float]] = {}
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in [*variants, "read_videos", "ffmpeg"]}
    if warm_up:  # untimed: start a worker per CPU and import the decoders in each
        for variant in variants.values():
            time_clip_stage([rows[i % len(rows)] for i in range(result.num_cpus)], variant)
        time_read_videos([files[i % len(rows)] for i in range(result.num_cpus)])
    counts: dict[str, dict] = {}
    for round_number in range(1, result.repeats + 1):
        result.load_average.append(round(load_average(), 2))
        for name, variant in variants.items():
            wall, cpu, counted = time_clip_stage(rows, variant)
            expected = aligned if variant.clips.align_to_codec_keyframes else plain
            if counted["clips"] != expected.clips or counted["ok"] != expected.clips:
                raise RuntimeError(f"{name}: {counted} from a plan of {expected.clips} clips: some clips failed")
            timings[name].append((wall, cpu))
            counts[name] = counted
        wall, cpu, frames = time_read_videos(files)
        if frames != total_frames:
            raise RuntimeError(f"read_videos gave {frames} frames, the files have {total_frames}")
        timings["read_videos"].append((wall, cpu))
        if ffmpeg:
            timings["ffmpeg"].append(time_ffmpeg(ffmpeg, files, result.num_cpus))
        for name, cpu in single_file_cpu(ffmpeg, rows[0], as_planned, _plan_args(as_planned)).items():
            single_file.setdefault(name, []).append(cpu)
        summary = ", ".join(f"{name} {runs[-1][0]:.2f} s" for name, runs in timings.items() if runs)
        progress(f"GOP {gop}, round {round_number}/{result.repeats}: {summary}")
    methods = []
    for name, runs in timings.items():
        if runs:
            walls, cpus = [w for w, _ in runs], [c for _, c in runs]
            counted = counts.get(name, dict(clips=plain.clips, frames_decoded=total_frames, frames_delivered=total_frames))
            methods.append(MethodTiming(name, walls, cpus, counted["clips"], counted["frames_decoded"], counted["frames_delivered"]))
    return GopResult(
        gop=gop, files=len(rows), frames=total_frames, keyframes=keyframes, keyframe_ms=costs["keyframe"],
        other_frame_ms=costs["other"], rgb_ms=costs["rgb"], resize_ms=costs["resize"],
        plans={"as planned": plain, "on keyframes": aligned}, methods=methods, ffmpeg_missing=ffmpeg is None,
        single_file_cpu_s=single_file, single_file_plan=one_file, single_file_frames=rows[0]["num_frames"],
        single_file_keyframes=one_file_keyframes,
    )


# ---------------------------------------------------------------------------------------------
# Command line (`semidff benchmark decode`, `python -m jobs.benchmark_decode`)


def benchmark_decode_command(
    ctx: typer.Context,
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    config: Optional[Path] = CONFIG_OPTION,
    videos: int = typer.Option(8, min=1, help="generated 1280x720 H.264 files per keyframe interval"),
    seconds: float = typer.Option(60.0, min=1.0, help="length of each file, in seconds (30 fps)"),
    gops: str = typer.Option("250,30", help="comma-separated keyframe intervals of the files"),
    repeats: int = typer.Option(3, min=1, help="timed rounds; medians are reported"),
    memory_videos: str = typer.Option("10,200", help="comma-separated corpus sizes for the peak-memory measure ('' to skip)"),
    cache_dir: Optional[Path] = typer.Option(None, help="where the generated videos are kept (default: ~/.cache/semidff/benchmark_decode)"),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1, help="CPUs of the local Ray (default: ray.num_cpus, else all)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="also write the result as JSON here"),
    report: Optional[Path] = typer.Option(None, "--report", metavar="JSON", help="only print the report of a result written earlier with -o"),
) -> None:
    """Clips/s and decoded frames/s of the clip stage vs ray.data.read_videos, the ffmpeg CLI and the
    decoding the codec forces (GOP 250 and 30), and peak memory on a small vs a large corpus."""
    if report is not None:
        typer.echo(format_report(load_result(report)))
        return
    cfg = resolve_config(config, overrides)
    with exit_on(ValueError):
        gop_list, memory_list = parse_ints(gops), parse_ints(memory_videos)
    result = run(
        cfg, videos=videos, seconds=seconds, gops=gop_list, repeats=repeats, memory_counts=memory_list,
        cache_dir=cache_dir, num_cpus=num_cpus, progress=echo_progress, command=command_line(ctx),
    )
    typer.echo(format_report(result))
    write_json_result(output, result.to_json())


if __name__ == "__main__":  # pragma: no cover
    run_module(benchmark_decode_command)
