"""The timed Ray Data runs of ``semidff benchmark decode`` (:mod:`jobs.benchmark_decode`): the clip
stage and ``ray.data.read_videos`` over the same files, each reduced to counts inside its tasks, and
the clip stage's peak memory with its rows pulled to the driver. Records and report:
:mod:`semidff.benchmarks.decode`."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import ray

from pipelines.clips import clip_dataset_from_config
from semidff.benchmarks.decode import MemoryResult
from semidff.benchmarks.process_monitor import ProcessTreeMonitor
from semidff.benchmarks.timing import Stopwatch
from semidff.config import Config


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


def time_clip_stage(rows: list[dict], cfg: Config) -> tuple[float, float, dict]:
    """(wall s, CPU s, counts) of the clip stage over ``rows``, every clip decoded and resized."""
    counts = dict(clips=0, ok=0, frames_decoded=0, frames_delivered=0)
    with ProcessTreeMonitor(interval_s=None) as monitor, Stopwatch() as watch:  # CPU seconds only
        dataset = clip_dataset_from_config(rows, cfg).map_batches(
            _count_clip_rows, batch_size=None, batch_format="pyarrow", num_cpus=cfg.clips.num_cpus
        )
        for row in dataset.iter_rows():
            for name in counts:
                counts[name] += int(row[name])
    return watch.seconds, monitor.cpu_seconds, counts


def time_read_videos(paths: Sequence[Path]) -> tuple[float, float, int]:
    """(wall s, CPU s, frames) of ray.data.read_videos over ``paths`` (every frame decoded)."""
    frames = 0
    with ProcessTreeMonitor(interval_s=None) as monitor, Stopwatch() as watch:  # CPU seconds only
        dataset = ray.data.read_videos([str(p) for p in paths]).map_batches(_count_frames, batch_size=None, batch_format="pyarrow")
        for row in dataset.iter_rows():
            frames += int(row["frames"])
    return watch.seconds, monitor.cpu_seconds, frames


def measure_memory(rows: list[dict], counts: Sequence[int], cfg: Config, repeats: int, progress: Callable[[str], None]) -> list[MemoryResult]:
    """Peak RSS (driver + Ray process tree, sampled every 20 ms) of the clip pipeline over the first
    ``count`` of ``rows`` (manifest rows), its rows pulled to the driver; ``repeats`` rounds."""
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
