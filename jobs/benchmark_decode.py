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

import json
import os
import platform
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import typer

from jobs.cli_common import CONFIG_OPTION, OVERRIDES_ARGUMENT, command_line, echo_progress, exit_on, resolve_config, run_module, write_json_result
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
        return statistics.median(self.runs_s)

    @property
    def cpu_seconds(self) -> float:
        return statistics.median(self.cpu_runs_s) if self.cpu_runs_s else float("nan")

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
        return statistics.median(self.peak_mb_runs)

    @property
    def above_idle_mb(self) -> float:
        return statistics.median(p - i for p, i in zip(self.peak_mb_runs, self.idle_mb_runs))


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
# Videos


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
                start = time.thread_time()
                frames = stream.codec_context.decode(packet)
                costs["keyframe" if packet.is_keyframe else "other"].append(time.thread_time() - start)
                for frame in frames:
                    if len(costs["rgb"]) < sample:
                        start = time.thread_time()
                        rgb = frame.to_ndarray(format="rgb24")
                        costs["rgb"].append(time.thread_time() - start)
                        start = time.thread_time()
                        resize_frames(rgb[None], short_side, max_long_side)
                        costs["resize"].append(time.thread_time() - start)
    finally:
        torch.set_num_threads(threads)
    return {name: 1000 * float(np.mean(values)) if values else 0.0 for name, values in costs.items()}


# ---------------------------------------------------------------------------------------------
# Measuring


class ProcessTreeMonitor:
    """Samples the RSS of this process and all its descendants (a local Ray's GCS, raylet and
    workers) every ``interval_s`` (None: only at the start and the end, so that the sampling costs
    no CPU during a timed run); keeps the peak of the sum and the CPU seconds they used."""

    def __init__(self, interval_s: Optional[float] = 0.02):
        import psutil  # shipped with ray (ray/thirdparty_files, on sys.path once ray is imported)

        self._psutil, self.interval_s = psutil, interval_s
        self.root = psutil.Process()
        self.peak_bytes = self.idle_bytes = 0
        self._cpu_start: dict[int, float] = {}  # pid -> CPU seconds when the measure started
        self._cpu_last: dict[int, float] = {}  # pid -> CPU seconds at the last sample
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _processes(self):
        try:
            return [self.root, *self.root.children(recursive=True)]
        except self._psutil.Error:
            return [self.root]

    def sample(self) -> int:
        total = 0
        for process in self._processes():
            try:
                with process.oneshot():
                    total += process.memory_info().rss
                    times = process.cpu_times()
            except self._psutil.Error:  # exited between listing and reading
                continue
            self._cpu_last[process.pid] = times.user + times.system
        self.peak_bytes = max(self.peak_bytes, total)
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> "ProcessTreeMonitor":
        self.idle_bytes = self.sample()
        self._cpu_start = dict(self._cpu_last)  # processes alive now count from here, later ones from 0
        if self.interval_s is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.sample()

    @property
    def cpu_seconds(self) -> float:
        return sum(cpu - self._cpu_start.get(pid, 0.0) for pid, cpu in self._cpu_last.items())


def _count_clip_rows(batch) -> dict:
    """In the clip task: a block of clip rows -> its counts (the frames stay in the task)."""
    status = batch.column("status").to_pylist()
    return {
        "clips": [len(status)],
        "ok": [status.count("ok")],
        "frames_decoded": [sum(batch.column("frames_decoded").to_pylist())],
        "frames_delivered": [sum(1 + len(c) for c, s in zip(batch.column("current_indices").to_pylist(), status) if s == "ok")],
    }


def _count_frames(batch) -> dict:
    return {"frames": [batch.num_rows]}


def _time_ours(rows: list[dict], cfg: Config) -> tuple[float, float, dict]:
    """(wall s, CPU s, counts) of the clip stage over ``rows``, every clip decoded and resized."""
    from pipelines.clips import clip_dataset_from_config

    counts = dict(clips=0, ok=0, frames_decoded=0, frames_delivered=0)
    with ProcessTreeMonitor(interval_s=None) as monitor:  # CPU seconds only
        start = time.perf_counter()
        dataset = clip_dataset_from_config(rows, cfg).map_batches(
            _count_clip_rows, batch_size=None, batch_format="pyarrow", num_cpus=cfg.clips.num_cpus
        )
        for row in dataset.iter_rows():
            for name in counts:
                counts[name] += int(row[name])
        seconds = time.perf_counter() - start
    return seconds, monitor.cpu_seconds, counts


def _time_read_videos(paths: Sequence[Path]) -> tuple[float, float, int]:
    """(wall s, CPU s, frames) of ray.data.read_videos over ``paths`` (every frame decoded)."""
    import ray

    frames = 0
    with ProcessTreeMonitor(interval_s=None) as monitor:  # CPU seconds only
        start = time.perf_counter()
        dataset = ray.data.read_videos([str(p) for p in paths]).map_batches(_count_frames, batch_size=None, batch_format="pyarrow")
        for row in dataset.iter_rows():
            frames += int(row["frames"])
        seconds = time.perf_counter() - start
    return seconds, monitor.cpu_seconds, frames


def _time_ffmpeg(ffmpeg: str, paths: Sequence[Path], parallel: int) -> tuple[float, float]:
    """(wall s, CPU s) of the ffmpeg CLI decoding every frame of ``paths``, ``parallel`` processes at once."""
    queue = list(paths)
    running: dict[int, Path] = {}
    cpu = 0.0
    start = time.perf_counter()
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
    return time.perf_counter() - start, cpu


def _single_file_cpu(ffmpeg: Optional[str], row: dict, cfg: Config) -> dict[str, float]:
    """CPU seconds of one file in this process: decode_clips of the plan with each decoder (all
    threads of the process), and the ffmpeg CLI decoding every frame (its rusage)."""
    from pipelines.clips import PLAN_KEYS
    from semidff.video.clip_plan import plan_clips
    from semidff.video.decode import decode_clips, open_video

    with open_video(row["uri"], num_frames=row["num_frames"]) as opened:
        clips = plan_clips(row, codec_keyframes=opened.keyframe_indices(), **{name: getattr(cfg.clips, name) for name in PLAN_KEYS})
    seconds = {}
    for decoder in ("pyav", "decord"):
        start = time.process_time()
        results = list(
            decode_clips(
                row["uri"], clips, short_side=cfg.preprocess.short_side, max_long_side=cfg.preprocess.max_long_side,
                chunk_frames=cfg.clips.chunk_frames, decoder=decoder, num_frames=row["num_frames"],
            )
        )
        seconds[decoder] = time.process_time() - start
        if len(results) != len(clips):
            raise RuntimeError(f"{decoder}: {len(results)} results for {len(clips)} clips")
    if ffmpeg:
        seconds["ffmpeg"] = _time_ffmpeg(ffmpeg, [Path(row["uri"])], 1)[1]
    return seconds


def _plan_stats(rows: list[dict], cfg: Config) -> tuple[PlanStats, int]:
    """The plan of ``cfg`` over ``rows`` (keyframes from each file's index) and the files' keyframe count."""
    import bisect

    from pipelines.clips import PLAN_KEYS
    from semidff.video.clip_plan import plan_clips
    from semidff.video.decode import open_video

    stats = PlanStats(0, 0, 0, 0)
    keyframe_count = 0
    plan_args = {name: getattr(cfg.clips, name) for name in PLAN_KEYS}
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


def _load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _machine() -> str:
    from semidff.benchmarks.machine import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, nice {os.nice(0)}"


def _with(cfg: Config, **clips) -> Config:
    return cfg.model_copy(update={"clips": cfg.clips.model_copy(update=clips)})


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

    from pipelines.ray_session import ray_session
    from semidff.video.probe import probe_video

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
        machine=_machine(),
        num_cpus=0,
        command=command,
        video=f"{videos} x {seconds:g} s H.264 {width}x{height} at {fps} fps (x264 veryfast crf 23, B-frames) per GOP",
        plan=f"{rate}, {cfg.clips.currents_per_key} current(s) at d in [{lo}, {hi}], resize to {cfg.preprocess.short_side}/{cfg.preprocess.max_long_side}",
        repeats=repeats,
    )
    with ray_session(num_cpus or cfg.ray.num_cpus, cfg.ray.address):
        result.num_cpus = int(ray.cluster_resources().get("CPU", 1))
        if memory_counts:  # first: later read_videos tasks leave GBs resident in the workers they ran in
            result.memory = _measure_memory(memory_files, memory_counts, cfg, repeats, progress)
        for gop in gops:
            rows = [probe_video(str(p)).to_row() for p in files[gop]]
            bad = [r["error"] for r in rows if r["status"] != "ok"]
            if bad:
                raise RuntimeError(f"benchmark video unusable: {bad[0]} (delete {files[gop][0].parent} to regenerate)")
            total_frames = sum(r["num_frames"] for r in rows)
            as_planned = _with(cfg, align_to_codec_keyframes=False)
            variants = {"ours": as_planned, "ours, decord": _with(as_planned, decoder="decord")}
            plain, keyframes = _plan_stats(rows, as_planned)
            aligned, _ = _plan_stats(rows, _with(cfg, align_to_codec_keyframes=True))
            plans = {"as planned": plain, "on keyframes": aligned}
            if aligned != plain:
                variants["ours, keys on keyframes"] = _with(cfg, align_to_codec_keyframes=True)
            costs = frame_costs(files[gop][0], cfg.preprocess.short_side, cfg.preprocess.max_long_side)
            one_file, one_file_keyframes = _plan_stats(rows[:1], as_planned)
            single_file: dict[str, list[float]] = {}
            timings: dict[str, list[tuple[float, float]]] = {name: [] for name in [*variants, "read_videos", "ffmpeg"]}
            if gop == gops[0]:  # untimed: start a worker per CPU and import the decoders in each
                for variant in variants.values():
                    _time_ours([rows[i % len(rows)] for i in range(result.num_cpus)], variant)
                _time_read_videos([files[gop][i % len(rows)] for i in range(result.num_cpus)])
            counts: dict[str, dict] = {}
            for round_number in range(1, repeats + 1):
                result.load_average.append(round(_load_average(), 2))
                for name, variant in variants.items():
                    wall, cpu, counted = _time_ours(rows, variant)
                    expected = aligned if variant.clips.align_to_codec_keyframes else plain
                    if counted["clips"] != expected.clips or counted["ok"] != expected.clips:
                        raise RuntimeError(f"{name}: {counted} from a plan of {expected.clips} clips: some clips failed")
                    timings[name].append((wall, cpu))
                    counts[name] = counted
                wall, cpu, frames = _time_read_videos(files[gop])
                if frames != total_frames:
                    raise RuntimeError(f"read_videos gave {frames} frames, the files have {total_frames}")
                timings["read_videos"].append((wall, cpu))
                if ffmpeg:
                    timings["ffmpeg"].append(_time_ffmpeg(ffmpeg, files[gop], result.num_cpus))
                for name, cpu in _single_file_cpu(ffmpeg, rows[0], as_planned).items():
                    single_file.setdefault(name, []).append(cpu)
                summary = ", ".join(f"{name} {runs[-1][0]:.2f} s" for name, runs in timings.items() if runs)
                progress(f"GOP {gop}, round {round_number}/{repeats}: {summary}")
            methods = []
            for name, runs in timings.items():
                if not runs:
                    continue
                walls, cpus = [w for w, _ in runs], [c for _, c in runs]
                if name in variants:
                    counted = counts[name]
                    methods.append(MethodTiming(name, walls, cpus, counted["clips"], counted["frames_decoded"], counted["frames_delivered"]))
                else:
                    methods.append(MethodTiming(name, walls, cpus, plain.clips, total_frames, total_frames))
            result.gops.append(
                GopResult(
                    gop=gop, files=len(rows), frames=total_frames, keyframes=keyframes, keyframe_ms=costs["keyframe"],
                    other_frame_ms=costs["other"], rgb_ms=costs["rgb"], resize_ms=costs["resize"], plans=plans, methods=methods,
                    ffmpeg_missing=ffmpeg is None,
                    single_file_cpu_s=single_file, single_file_plan=one_file, single_file_frames=rows[0]["num_frames"],
                    single_file_keyframes=one_file_keyframes,
                )
            )
    return result


def _measure_memory(paths: Sequence[Path], counts: Sequence[int], cfg: Config, repeats: int, progress: Progress) -> list[MemoryResult]:
    """Peak RSS of the clip pipeline over the first ``count`` of ``paths``, rows pulled to the driver."""
    from pipelines.clips import clip_dataset_from_config
    from semidff.video.probe import probe_video

    rows = [probe_video(str(p)).to_row() for p in paths]
    results = {count: MemoryResult(count, 0, [], []) for count in counts}
    for _ in clip_dataset_from_config(rows[:1], cfg).iter_batches(batch_size=8):  # untimed: start the workers
        pass
    for round_number in range(1, repeats + 1):
        for count in counts:  # interleaved: the idle Ray is in the same state for both sizes
            clips = frame_bytes = 0
            with ProcessTreeMonitor(interval_s=0.02) as monitor:
                for batch in clip_dataset_from_config(rows[:count], cfg).iter_batches(batch_size=8, batch_format="pyarrow"):
                    clips += batch.num_rows
                    frame_bytes += batch.column("key_frame").nbytes + batch.column("current_frames").nbytes
            if not frame_bytes:
                raise RuntimeError(f"the clip pipeline delivered no frames for {count} memory videos")
            results[count].clips = clips
            results[count].peak_mb_runs.append(monitor.peak_bytes / 2**20)
            results[count].idle_mb_runs.append(monitor.idle_bytes / 2**20)
            progress(f"memory, round {round_number}/{repeats}: {count} videos, {clips} clips, peak {monitor.peak_bytes / 2**20:.0f} MB")
    return list(results.values())


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
            runs = ", ".join(f"{s:.2f}" for s in m.runs_s)
            lines.append(
                f"| {m.name} | {m.seconds:.2f} | {runs} | {m.cpu_seconds:.2f} | {m.clips_per_s:.1f} | {m.decoded_fps:.0f} | {m.frames_delivered / m.seconds:.0f} |"
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
            cpu = {name: statistics.median(runs) for name, runs in gop.single_file_cpu_s.items()}
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
            runs = ", ".join(f"{x:.0f}" for x in m.peak_mb_runs)
            lines.append(f"| {m.videos} | {m.clips} | {m.peak_mb:.0f} | {runs} | {m.above_idle_mb:.0f} |")
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
