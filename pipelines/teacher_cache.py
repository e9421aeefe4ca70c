"""Stage 3: a pool of frozen-teacher actors turns the clip stream into the teacher cache (Parquet).

    from pipelines.teacher_cache import build_teacher_cache
    summary = build_teacher_cache(cfg, "runs/manifest", "teacher.pt", "runs/cache", progress=print)
    print(summary.format())                       # jobs/cache.py wraps this with Ray and MLflow

The Ray Data plan (one dataset, streamed):

1. the clip stage (``pipelines.clips``): decode tasks, one row per clip;
2. :func:`prepare_clips`, fused into those same tasks: drop the clips already in the cache,
   encode every frame as JPEG (``cache.jpeg_quality``) and decode it back, because the teacher
   must see exactly the pixels the cache stores (ClipRow -> PreparedClipRow, :mod:`semidff.rows`);
3. :class:`TeacherCacheActor`, an ``ActorPoolStrategy(size=cache.num_actors)`` pool: each actor
   loads the checkpoint once (``weights_only``), receives ``cache.clips_per_file`` clips per call,
   runs the teacher on them ``cache.batch_size`` clips per forward pass (fp16 autocast on a GPU,
   fp32 on CPU), packs the outputs (:mod:`semidff.cache.format`: one ``semidff.rows.CacheRow``
   per clip) and writes them as one Parquet file, under a temporary name then renamed. Only one
   small row per clip (id, status, file) goes back to the driver: features never travel through
   the object store.

Exactly once: a clip is in the cache when a complete ``part-*.parquet`` file holds its row (ok or
failed), and a rerun reads the ``clip_id`` column of those files and skips them. A killed run
loses at most the files being written (temporary names, removed by the next run). Run one build
per cache directory at a time. The driver makes the plan from the manifest (:func:`plan_cache_work`),
so a rerun decodes only the videos with clips missing, and a complete cache returns at once; the
decode tasks get that plan (``semidff.video.clip_plan.VideoPlan``) and do not plan again
(with ``clips.align_to_codec_keyframes`` the plan needs the files: the decode tasks make it, all
videos are decoded again and the clips already written dropped before the teacher).

CPUs (ray-facts §0 #3): the actors hold ``num_actors x num_cpus_per_actor`` CPUs for the whole
run; the decode tasks need ``clips.num_cpus`` more, or the pipeline deadlocks. A local Ray without
that headroom is refused before anything starts.
"""
from __future__ import annotations

import math
import os
import posixpath
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
import torch

from pipelines.clips import PLAN_KEYS, clip_dataset_arguments, clip_dataset_from_config
from pipelines.manifest import read_manifest_rows
from semidff.atomic import write_parquet_atomically
from pipelines.ray_session import cluster_has_gpus
from semidff.cache.files import file_cache_info, list_cache_files, open_cache_file, temporary_files, written_clip_ids
from semidff.cache.format import FILE_PREFIX, FILE_SUFFIX, REASON_NON_FINITE, cache_table, pack_clip_row
from semidff.cache.info import INFO_FILE, CacheError, CacheInfo, CacheMismatchError, cache_location, read_cache_info, write_cache_info
from semidff.cache.jpeg import decode_jpeg, encode_jpeg
from semidff.cache.teacher import ClipError, PreparedClip, run_teacher_on_clips
from semidff.checkpoint import build_teacher, load_model_checkpoint
from semidff.rows import PREPARED_SCHEMA, STATUS_OK, CacheRow, ClipRow, ManifestRow, PreparedClipRow  # noqa: F401 - PREPARED_SCHEMA: also imported from here
from semidff.video.clip_plan import WHOLE_VIDEO, VideoPlan, plan_video

ROW_GROUP_CLIPS = 8  # clips per Parquet row group: a reader streams a file 8 clips at a time
WRITTEN_SCHEMA = pa.schema(  # what an actor reports per clip (the driver counts, never sees tensors)
    [
        ("clip_id", pa.string()),
        ("video_id", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("error", pa.string()),
        ("pairs", pa.int64()),  # (key, current) pairs of an ok clip
        ("file", pa.string()),  # the cache file that holds the row
        ("file_done", pa.float64()),  # when that file was renamed into place (epoch seconds)
        ("file_teacher_s", pa.float64()),  # the file's forward passes, seconds
        ("file_call_s", pa.float64()),  # the whole actor call that wrote it, seconds
    ]
)


# ---------------------------------------------------------------------------------------------
# Files


def parquet_write_options(info: CacheInfo) -> dict[str, Any]:
    """How cache files are written: zstd at the configured level, no dictionary encoding (it
    makes blob columns slow and big, perf-anchors), statistics only on the small columns, small
    row groups so that readers stream a file."""
    return dict(
        compression="zstd",
        compression_level=info.compression_level,
        use_dictionary=False,
        write_statistics=["clip_id", "video_id", "key_index", "status"],
        row_group_size=ROW_GROUP_CLIPS,
    )


def write_cache_file(rows: Sequence[CacheRow], info: CacheInfo, cache_dir: str) -> str:
    """Write cache rows as one new ``part-*.parquet`` file (temporary name, then
    rename) with ``info`` in its metadata; returns the file's path in the cache's filesystem."""
    filesystem, base = cache_location(cache_dir)
    filesystem.create_dir(base, recursive=True)
    path = posixpath.join(base, f"{FILE_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}{FILE_SUFFIX}")
    write_parquet_atomically(cache_table(rows, info), filesystem, path, **parquet_write_options(info))
    return path


# ---------------------------------------------------------------------------------------------
# Step 2: in the decode tasks

_DONE_SETS: dict[str, frozenset] = {}  # per worker process: the ids to skip, fetched once per run


def prepare_clips(batch: pa.Table, *, done: Optional["ray.ObjectRef"], jpeg_quality: int) -> pa.Table:
    """Clip rows (ClipRow) → PreparedClipRow rows (:data:`PREPARED_SCHEMA`): clips in ``done`` (an
    object ref to a frozenset of clip ids) are dropped; the frames of ok clips are replaced by
    their JPEG round trip."""
    skip: frozenset = frozenset()
    if done is not None:
        key = done.hex()
        if key not in _DONE_SETS:
            _DONE_SETS.clear()
            _DONE_SETS[key] = ray.get(done)
        skip = _DONE_SETS[key]
    prepared = []
    for row in ClipRow.from_arrow(batch):
        if row.clip_id in skip:
            continue
        fields = row.to_dict()
        if row.status != STATUS_OK:
            prepared.append(PreparedClipRow(**fields, key_jpeg=b"", current_jpegs=[]))
            continue
        frames = row.frames()
        jpeg_of: dict[int, tuple[bytes, np.ndarray]] = {}  # frame index -> (JPEG, decoded): offset 0 and repeats encode once

        def round_trip(index: int, frame: np.ndarray) -> tuple[bytes, np.ndarray]:
            if index not in jpeg_of:
                data = encode_jpeg(frame, jpeg_quality)
                jpeg_of[index] = (data, decode_jpeg(data))
            return jpeg_of[index]

        key_jpeg, key_frame = round_trip(frames.clip.key_index, frames.key_frame)
        currents = [round_trip(index, frame) for index, frame in zip(frames.clip.current_indices, frames.current_frames)]
        prepared.append(
            PreparedClipRow(
                **dict(fields, key_frame=key_frame.tobytes(), current_frames=np.stack([decoded for _, decoded in currents]).tobytes()),
                key_jpeg=key_jpeg,
                current_jpegs=[data for data, _ in currents],
            )
        )
    return PreparedClipRow.to_arrow(prepared)


# ---------------------------------------------------------------------------------------------
# Step 3: the actor pool


class TeacherCacheActor:
    """One teacher per actor: each call gets up to ``clips_per_file`` prepared clips and writes
    them as one cache file. Returns one :data:`WRITTEN_SCHEMA` row per clip."""

    def __init__(self, *, checkpoint: bytes, info_json: str, cache_dir: str, batch_size: int, use_gpu: bool, num_threads: int):
        """checkpoint: the teacher checkpoint file's bytes (shipped through the object store, so
        the actors' nodes need no shared filesystem); loaded with ``weights_only`` and checked
        against the cache record's sha256. info_json: the CacheInfo the files are written with."""
        import json
        import tempfile

        self.info = CacheInfo.from_dict(json.loads(info_json), "the driver's cache record")
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.device = torch.device("cuda" if use_gpu else "cpu")
        if not use_gpu:
            torch.set_num_threads(max(1, num_threads))
        with tempfile.TemporaryDirectory(prefix="semidff-teacher-") as directory:
            path = os.path.join(directory, "teacher.pt")
            with open(path, "wb") as handle:
                handle.write(checkpoint)
            loaded = load_model_checkpoint(path, "teacher")  # weights_only=True inside
        if loaded.sha256 != self.info.teacher_sha256:
            raise CacheError(
                f"the teacher checkpoint the actor received has sha256 {loaded.sha256}, the cache record says "
                f"{self.info.teacher_sha256}: the file changed while the run started; keep the teacher checkpoint fixed during a run"
            )
        self.teacher = build_teacher(loaded, self.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        call_start = time.perf_counter()
        rows = PreparedClipRow.from_arrow(batch)
        out: list[Optional[CacheRow]] = [None] * len(rows)
        prepared: list[tuple[int, PreparedClip]] = []
        for i, row in enumerate(rows):
            if row.status != STATUS_OK:
                out[i] = CacheRow.failed(row.ids, row.reason, row.error)
                continue
            prepared.append((i, PreparedClip.from_row(row)))
        teacher_start = time.perf_counter()
        results = run_teacher_on_clips(self.teacher, [clip for _, clip in prepared], batch_size=self.batch_size, device=self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        teacher_s = time.perf_counter() - teacher_start
        for (i, clip), result in zip(prepared, results):
            if isinstance(result, ClipError):
                out[i] = CacheRow.failed(clip.ids, result.reason, result.message)
                continue
            try:
                out[i] = pack_clip_row(result, self.info)
            except ValueError as exc:
                out[i] = CacheRow.failed(clip.ids, REASON_NON_FINITE, f"clip {clip.ids.clip_id}: {exc}")
        path = write_cache_file(out, self.info, self.cache_dir) if out else ""
        done, call_s = time.time(), time.perf_counter() - call_start
        return pa.Table.from_pylist(
            [
                dict(
                    clip_id=r.clip_id, video_id=r.video_id, status=r.status, reason=r.reason, error=r.error,
                    pairs=len(r.offsets) if r.status == STATUS_OK else 0, file=path, file_done=done,
                    file_teacher_s=teacher_s, file_call_s=call_s,
                )
                for r in out
            ],
            schema=WRITTEN_SCHEMA,
        )


# ---------------------------------------------------------------------------------------------
# The stage


@dataclass
class CacheSummary:
    """What a cache build did and what the cache holds afterwards."""

    cache_dir: str
    teacher_sha256: str
    planned: Optional[int]  # clips the plan gives (None when unknown before decoding: align_to_codec_keyframes)
    skipped: int  # already in the cache before this run
    written_ok: int = 0
    written_failed: int = 0
    pairs_written: int = 0
    files_written: int = 0
    clips_in_cache: int = 0  # rows in the cache after the run, earlier runs' included
    failures: Counter = field(default_factory=Counter)  # reason -> clips, this run
    examples: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0  # the whole build, from loading the checkpoint to the last file
    first_file_s: Optional[float] = None  # when the first file was complete (start-up: Ray Data plan, decode, actor start, model load)
    first_file_clips: int = 0  # clips of that file
    last_file_s: Optional[float] = None  # when the last file was complete
    teacher_seconds: float = 0.0  # summed over the actor calls: the teacher's forward passes ...
    actor_seconds: float = 0.0  # ... and the whole calls (unpacking, forward, quantising, packing, writing the file)

    @property
    def written(self) -> int:
        return self.written_ok + self.written_failed

    @property
    def clips_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_clips_per_s(self) -> Optional[float]:
        """Clips/s from the first file to the last (the clips of the later files over the time
        between the first and the last file done): the rate without the start-up. None with one file."""
        if self.first_file_s is None or self.last_file_s is None or self.last_file_s <= self.first_file_s:
            return None
        return (self.written - self.first_file_clips) / (self.last_file_s - self.first_file_s)

    def format(self) -> str:
        lines = [
            f"teacher cache: {self.cache_dir}",
            f"  this run: {self.written} clips written ({self.written_ok} ok, {self.written_failed} failed, {self.pairs_written} pairs) "
            f"in {self.files_written} files, {self.skipped} already there; {self.seconds:.1f} s, {self.clips_per_s:.2f} clips/s",
            f"  the cache now holds {self.clips_in_cache} clips (semidff cache inspect {self.cache_dir})",
        ]
        if self.failures:
            lines.append("  failed this run, by reason:")
            lines += [f"    {count:>7}  {reason}  (e.g. {self.examples[reason]})" for reason, count in self.failures.most_common()]
        return "\n".join(lines)


def actor_resources(cfg) -> tuple[float, float]:
    """(num_gpus, num_cpus) per teacher actor: ``cache.num_gpus_per_actor`` or, when None, 1 GPU
    if the running cluster has GPUs, else 0 (CPU)."""
    gpus = cfg.cache.num_gpus_per_actor
    if gpus is None:
        gpus = 1.0 if cluster_has_gpus() else 0.0
    return float(gpus), float(cfg.cache.num_cpus_per_actor)


def check_cpu_headroom(cfg, local: bool, progress: Callable[[str], None]) -> None:
    """The actors must leave the decode tasks at least one slot (ray-facts §0 #3)."""
    cluster_cpus = ray.cluster_resources().get("CPU", 0.0)
    held = cfg.cache.num_actors * cfg.cache.num_cpus_per_actor
    if cluster_cpus - held >= cfg.clips.num_cpus - 1e-9:
        return
    message = (
        f"the teacher actors hold {cfg.cache.num_actors} x {cfg.cache.num_cpus_per_actor:g} CPUs of the cluster's {cluster_cpus:g}, "
        f"leaving {max(cluster_cpus - held, 0):g} for the decode tasks, which need {cfg.clips.num_cpus:g} each: the pipeline would stall. "
        "Lower cache.num_cpus_per_actor (fractions are fine, e.g. 0.5) or cache.num_actors, or give Ray more CPUs (ray.num_cpus)"
    )
    if local:
        raise CacheError(message)
    progress(f"warning: {message} (waiting for the cluster to add nodes)")


@dataclass
class CacheWork:
    """What a build still has to do, from the manifest, the plan and the clips already written."""

    videos: list[ManifestRow]  # the videos with clips missing (the ones to decode), by URI
    usable_videos: int  # status-"ok" videos in the manifest
    planned: Optional[int]  # clips the plan gives them all (None: known only after decoding, align_to_codec_keyframes)
    missing: Optional[int]  # planned clips not in the cache
    plans: Optional[list[VideoPlan]] = None  # the plans of ``videos``, for the decode tasks (None: they plan, align_to_codec_keyframes)

    @property
    def to_decode(self) -> Union[list[ManifestRow], list[VideoPlan]]:
        """What the clip stage gets: the plans, or the manifest rows when the tasks plan."""
        return self.videos if self.plans is None else self.plans


def plan_cache_work(manifest_dir: str, cfg, done: set[str]) -> CacheWork:
    """The videos that still have clips to compute, and their plans. The plan is made here, once,
    from the manifest (it depends only on the video's id, frame count and rate) and handed to the
    decode tasks, so a rerun decodes only the videos with missing clips; a video recorded as
    unusable (its ``"<video_id>:-1"`` row) is done. With ``align_to_codec_keyframes`` the plan
    needs each file's keyframes: the decode tasks make it, every video is decoded again and the
    clips already written are dropped after decoding."""
    usable = sorted((row for row in read_manifest_rows(manifest_dir).values() if row.status == STATUS_OK), key=lambda row: row.uri)
    if cfg.clips.align_to_codec_keyframes:
        return CacheWork(usable, len(usable), None, None)
    videos, plans, planned, missing = [], [], 0, 0
    plan_args = _plan_args(cfg)
    for video in usable:
        plan = plan_video(video, **plan_args)
        ids = plan.clip_ids  # cannot be planned, or too short for any clip: the decode task records it as one row
        planned += len(ids)
        whole_video = f"{video.video_id}:{WHOLE_VIDEO}"
        left = [] if whole_video in done else [clip_id for clip_id in ids if clip_id not in done]
        if left:
            videos.append(video)
            plans.append(plan)
            missing += len(left)
    return CacheWork(videos, len(usable), planned, missing, plans)


def _plan_args(cfg) -> dict[str, Any]:
    return {name: value for name, value in clip_dataset_arguments(cfg).items() if name in PLAN_KEYS}


def check_cache_matches(cache_dir: str, info: CacheInfo) -> Optional[CacheInfo]:
    """The record of the cache already in ``cache_dir`` (None when there is none), checked to hold
    the same kind of content as ``info`` (else CacheMismatchError). Reads only: a run checks this
    before it starts Ray or writes anything."""
    filesystem, base = cache_location(cache_dir)
    existing: Optional[CacheInfo] = None
    if filesystem.get_file_info(posixpath.join(base, INFO_FILE)).type != pafs.FileType.NotFound:
        existing = read_cache_info(cache_dir)
    elif filesystem.get_file_info(base).type == pafs.FileType.Directory and (files := list_cache_files(cache_dir)):
        existing = file_cache_info(open_cache_file(filesystem, files[0]), files[0])  # the record was lost: the files say
    differences = existing.differences(info) if existing is not None else []
    if differences:
        raise CacheMismatchError(
            f"{cache_dir} already holds a teacher cache built with other settings:\n  "
            + "\n  ".join(f"{name}: the cache has {mine!r}, this run {theirs!r}" for name, mine, theirs in differences)
            + "\nWrite to a new directory (-o), or run with the cache's settings (semidff cache inspect shows them)."
        )
    return existing


def open_cache_dir(cache_dir: str, info: CacheInfo) -> CacheInfo:
    """Create the cache directory's record, or check that an existing cache holds the same kind
    of content (else CacheMismatchError); remove what a killed writer left. Returns the record in
    force (an existing cache keeps its own, e.g. its creation time)."""
    existing = check_cache_matches(cache_dir, info)
    filesystem, base = cache_location(cache_dir)
    filesystem.create_dir(base, recursive=True)
    for path in temporary_files(cache_dir):
        filesystem.delete_file(path)
    record = existing or info
    if filesystem.get_file_info(posixpath.join(base, INFO_FILE)).type == pafs.FileType.NotFound:
        write_cache_info(record, cache_dir)
    return record


def build_teacher_cache(
    cfg,
    manifest_dir: str,
    teacher_checkpoint: str,
    cache_dir: str,
    *,
    progress: Callable[[str], None] = lambda line: None,
    progress_every_s: float = 10.0,
    local_ray: bool = True,
) -> CacheSummary:
    """Write the teacher's outputs for every planned clip of the manifest's videos that the cache
    does not hold yet. Runs on the Ray already initialised (jobs/cache.py starts one).

    local_ray: the Ray was started for this run (missing CPU headroom is an error, not a wait).
    Raises CacheMismatchError when ``cache_dir`` holds a cache of other settings, and
    ModelCheckpointError for a teacher checkpoint that cannot be loaded.
    """
    start = time.perf_counter()
    checkpoint = load_model_checkpoint(teacher_checkpoint, "teacher")
    info = open_cache_dir(cache_dir, CacheInfo.create(cfg, checkpoint, teacher_path=os.path.abspath(teacher_checkpoint)))
    num_gpus, num_cpus = actor_resources(cfg)
    check_cpu_headroom(cfg, local_ray, progress)
    done = written_clip_ids(cache_dir)
    work = plan_cache_work(manifest_dir, cfg, done)
    unknown = "?"
    progress(
        f"cache: {work.planned if work.planned is not None else unknown} clips planned from {work.usable_videos} videos, {len(done)} already in "
        f"{cache_dir}, {work.missing if work.missing is not None else unknown} to compute from {len(work.videos)} videos; "
        f"{cfg.cache.num_actors} teacher actor(s) with {num_gpus:g} GPU and {num_cpus:g} CPU each, "
        f"{cfg.cache.batch_size} clips per forward, {cfg.cache.clips_per_file} clips per file, features {info.feature_precision}"
    )
    summary = CacheSummary(cache_dir=cache_dir, teacher_sha256=info.teacher_sha256, planned=work.planned, skipped=len(done))
    if not work.videos:
        summary.clips_in_cache = len(done)
        summary.seconds = time.perf_counter() - start
        progress("  nothing to compute: every planned clip is in the cache")
        return summary
    todo = work.missing
    decode_compute = ray.data.TaskPoolStrategy(size=cfg.clips.max_concurrent_tasks) if cfg.clips.max_concurrent_tasks else None
    prepared = clip_dataset_from_config(work.to_decode, cfg).map_batches(
        prepare_clips,
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=cfg.clips.num_cpus,  # same as the decode tasks: Ray Data fuses the two steps into one task
        compute=decode_compute,
        fn_kwargs=dict(done=ray.put(frozenset(done)) if done else None, jpeg_quality=info.jpeg_quality),
    ).repartition(target_num_rows_per_block=cfg.cache.clips_per_file)  # also keeps the actors out of the decode tasks' fusion
    written = prepared.map_batches(
        TeacherCacheActor,
        batch_size=cfg.cache.clips_per_file,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=cfg.cache.num_actors),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        fn_constructor_kwargs=dict(
            checkpoint=Path(teacher_checkpoint).read_bytes(),
            info_json=info.to_json(),
            cache_dir=cache_dir,
            batch_size=cfg.cache.batch_size,
            use_gpu=num_gpus > 0,
            num_threads=max(1, math.floor(num_cpus)),
        ),
    )
    files: dict[str, tuple[float, int]] = {}  # path -> (when it was done, in seconds since the start; clips)
    actor_seconds: dict[str, tuple[float, float]] = {}  # path -> (teacher forward s, whole actor call s)
    wall_start = time.time() - (time.perf_counter() - start)
    last = time.perf_counter()
    for batch in written.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.to_pylist():
            if row["status"] == STATUS_OK:
                summary.written_ok += 1
                summary.pairs_written += row["pairs"]
            else:
                summary.written_failed += 1
                summary.failures[row["reason"]] += 1
                summary.examples.setdefault(row["reason"], row["error"])
            done_s, clips = files.get(row["file"], (row["file_done"] - wall_start, 0))
            files[row["file"]] = (done_s, clips + 1)
            actor_seconds[row["file"]] = (row["file_teacher_s"], row["file_call_s"])
        now = time.perf_counter()
        if now - last >= progress_every_s:
            last = now
            total = "" if todo is None else f"/{todo}"
            progress(f"  clips {summary.written}{total} ({summary.written_failed} failed), {summary.written / (now - start):.2f} clips/s, {len(files)} files")
    summary.files_written = len(files)
    summary.teacher_seconds = sum(teacher for teacher, _ in actor_seconds.values())
    summary.actor_seconds = sum(call for _, call in actor_seconds.values())
    if files:
        (summary.first_file_s, summary.first_file_clips), (summary.last_file_s, _) = min(files.values()), max(files.values())
    summary.clips_in_cache = len(written_clip_ids(cache_dir))
    summary.seconds = time.perf_counter() - start
    progress(f"  done: {summary.written} clips written ({summary.written_failed} failed) in {summary.seconds:.1f} s, {summary.clips_per_s:.2f} clips/s")
    return summary
