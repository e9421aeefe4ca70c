"""The teacher-cache benchmark without Ray (``semidff benchmark cache``, :mod:`jobs.benchmark_cache`
says what it measures): its result records, reading back a cache it built, the bare torch loop it
compares the actor pool with, the precision effects (regression loss, int8 error against its
bound), and the report with the 10-million-clip sizing BENCHMARKS.md records.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
import pyarrow.parquet as pq
import torch

from semidff.benchmarks.timing import Stopwatch, format_runs, median

CORPUS_CLIPS = 10_000_000
# ResNet-101 R-FCN at 600x1000 on this machine's CPU (BENCHMARKS.md, `semidff benchmark detect`,
# 2 threads): one key frame (backbone + heads) took 1419.8 ms.
RESNET101_FRAME_S_CPU = 1.4198
RESNET101_FEATURE_SHAPE = (1024, 38, 63)  # C, h, w at 600x1000, stride 16
# perf-anchors (Parquet feature storage, ResNet-50 C4 maps of real frames, zstd level 1): bytes per map.
MEASURED_MAP_BYTES = {"fp32": 8.05e6, "fp16": 3.75e6, "int8": 1.54e6}


@dataclass
class PrecisionResult:
    precision: str
    pipeline_clips_per_s: list[float] = field(default_factory=list)  # end to end, one per repeat
    pipeline_steady_clips_per_s: list[float] = field(default_factory=list)
    startup_s: list[float] = field(default_factory=list)  # until the first file
    actor_overhead: list[float] = field(default_factory=list)  # (actor call time - teacher forward time) / teacher forward time
    bytes_per_clip: float = 0.0
    bytes_by_part: dict[str, float] = field(default_factory=dict)  # frames / features / soft targets / ids
    regression_loss: float = 0.0
    regression_loss_change: float = 0.0  # relative to fp32
    feature_relative_rmse: float = 0.0  # vs the fp32 cache
    int8_max_error_over_bound: Optional[float] = None


@dataclass
class CacheBenchmark:
    machine: str
    torch_threads: int
    clips: int
    pairs: int
    frame_size: tuple[int, int]
    feature_shape: tuple[int, int, int]
    currents_per_key: int
    timed_precision: str
    bare_clips_per_s: list[float] = field(default_factory=list)
    precisions: dict[str, PrecisionResult] = field(default_factory=dict)
    jpeg_bytes_per_pixel: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def cache_rows(cache_dir: str) -> dict[str, dict[str, Any]]:
    """Every row of the cache in ``cache_dir``, by clip id."""
    from semidff.cache.files import list_cache_files

    rows: dict[str, dict[str, Any]] = {}
    for path in list_cache_files(cache_dir):
        for row in pq.read_table(path).to_pylist():
            rows[row["clip_id"]] = row
    return rows


def bytes_per_part(per_column: dict[str, float]) -> dict[str, float]:
    """Bytes per clip grouped: frames (JPEG), features (+ scales), soft targets (+ RoIs), ids."""
    groups = {
        "frames": ("key_jpeg", "current_jpegs"),
        "features": ("key_features", "key_feature_scales", "current_features", "current_feature_scales"),
        "soft targets": ("rpn_cls_logits", "rpn_deltas", "rois", "cls_logits", "box_deltas", "num_rois"),
    }
    parts = {name: sum(per_column.get(c, 0.0) for c in columns) for name, columns in groups.items()}
    parts["ids and indices"] = sum(per_column.values()) - sum(parts.values())
    return parts


def bare_loop_clips_per_s(teacher_path: str, clips: list[dict[str, Any]], batch_size: int, threads: int) -> float:
    """Clips/s of the plain model on the clips' decoded frames in this process (decoding not timed)."""
    from semidff.cache.format import key_from_current
    from semidff.cache.jpeg import decode_jpeg
    from semidff.checkpoint import build_teacher, load_model_checkpoint
    from semidff.preprocess import normalize_frames

    teacher = build_teacher(load_model_checkpoint(teacher_path, "teacher"))
    by_size: dict[tuple[int, int], list[tuple[np.ndarray, list[np.ndarray]]]] = {}
    for row in clips:
        key = None if key_from_current(row["offsets"]) >= 0 else decode_jpeg(row["key_jpeg"])
        currents = [decode_jpeg(data) for data in dict.fromkeys(row["current_jpegs"])]  # distinct frames, as the actor
        by_size.setdefault((row["height"], row["width"]), []).append((key, currents))

    def forward(chunk: list[tuple[Optional[np.ndarray], list[np.ndarray]]]) -> None:
        teacher(normalize_frames(np.stack([frame for _, currents in chunk for frame in currents])))
        keys = [key for key, _ in chunk if key is not None]
        if keys:
            teacher.extract_features(normalize_frames(np.stack(keys)))

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            forward(next(iter(by_size.values()))[:batch_size])  # warm-up, as the pipeline's first file
            with Stopwatch() as watch:
                for group in by_size.values():
                    for first in range(0, len(group), batch_size):
                        forward(group[first : first + batch_size])
    finally:
        torch.set_num_threads(previous)
    return len(clips) / watch.seconds


def precision_effects(rows: dict[str, dict[str, dict]], info, results: dict[str, PrecisionResult]) -> None:
    """Regression loss (L2, Eq. 4) of the copied fp32 key features against each precision's targets."""
    from semidff.cache.format import BlobLayout, current_features_of, decode_blob, key_features_of
    from semidff.cache.info import soft_target_precision
    from semidff.cache.quantize import int8_error_bound

    def layout(precision: str) -> BlobLayout:
        return BlobLayout(precision, soft_target_precision(precision), info.feature_channels, info.num_anchors, info.num_classes)

    reference = rows["fp32"]
    for precision, result in results.items():
        squared = count = diff_squared = ref_squared = 0.0
        worst = 0.0
        for clip_id, row32 in reference.items():
            if row32["status"] != "ok":
                continue
            row = rows[precision][clip_id]
            prediction = key_features_of(row32, layout("fp32"))
            for j in range(len(row32["offsets"])):
                target = current_features_of(row, j, layout(precision))
                target32 = current_features_of(row32, j, layout("fp32"))
                squared += float(((prediction - target) ** 2).sum())
                count += target.size
                diff_squared += float(((target - target32) ** 2).sum())
                ref_squared += float((target32**2).sum())
                if precision == "int8":
                    scales = decode_blob(row["current_feature_scales"][j], np.float32, (info.feature_channels,))
                    bound = int8_error_bound(scales)[:, None, None] + 1e-6 * np.abs(target32).max()  # runs differ by ~1e-7 relative
                    worst = max(worst, float((np.abs(target - target32) / bound).max()))
        result.regression_loss = squared / count
        result.feature_relative_rmse = (diff_squared / ref_squared) ** 0.5 if ref_squared else 0.0
        if precision == "int8":
            result.int8_max_error_over_bound = worst
    base = results["fp32"].regression_loss
    for result in results.values():
        result.regression_loss_change = (result.regression_loss - base) / base if base else 0.0


# ---------------------------------------------------------------------------------------------
# Report


def _resnet101_bytes_per_clip(precision: str, bench: CacheBenchmark) -> float:
    """Bytes per clip of a ResNet-101 teacher at 600x1000 (30 classes, 9 anchors, 300 RoIs): the
    measured per-map feature sizes of perf-anchors, exact sizes for the soft targets, and this
    run's JPEG bytes per pixel for the frames."""
    frames = 1 + bench.currents_per_key
    c, h, w = RESNET101_FEATURE_SHAPE
    soft_bytes = 4 if precision == "fp32" else 2
    soft = bench.currents_per_key * ((18 + 36) * h * w * soft_bytes + 300 * (31 + 8) * soft_bytes + 300 * 4 * 4)
    jpeg = frames * 600 * 1000 * bench.jpeg_bytes_per_pixel
    return frames * MEASURED_MAP_BYTES[precision] + soft + jpeg


def format_report(bench: CacheBenchmark) -> str:
    bare = median(bench.bare_clips_per_s)
    lines = [
        f"machine: {bench.machine}; teacher threads: {bench.torch_threads}",
        f"corpus: {bench.clips} clips ({bench.pairs} pairs), frames {bench.frame_size[0]}x{bench.frame_size[1]}, "
        f"features {bench.feature_shape[0]}x{bench.feature_shape[1]}x{bench.feature_shape[2]}, {bench.currents_per_key} current frame(s) per clip",
        "",
        f"Throughput at {bench.timed_precision} (median of {len(bench.bare_clips_per_s)} alternating runs; every run listed)",
        "",
        "| | clips/s | runs |",
        "|---|---|---|",
    ]
    timed = bench.precisions[bench.timed_precision]
    steady = median(timed.pipeline_steady_clips_per_s)
    lines += [
        f"| actor pool, end to end (with start-up: {median(timed.startup_s):.1f} s to the first file) | {median(timed.pipeline_clips_per_s):.2f} | {format_runs(timed.pipeline_clips_per_s)} |",
        f"| actor pool, steady state (first file to last) | {steady:.2f} | {format_runs(timed.pipeline_steady_clips_per_s)} |",
        f"| bare torch loop, same model, frames, threads and batch, 1 process | {bare:.2f} | {format_runs(bench.bare_clips_per_s)} |",
        "",
        f"**Pipeline / bare loop: {steady / bare:.2f} in steady state, {median(timed.pipeline_clips_per_s) / bare:.2f} end to end.** "
        f"Inside the actor, everything but the forward pass (unpacking, quantising, packing, zstd, writing the file) "
        f"adds {100 * median(timed.actor_overhead):.1f} % to the forward time (runs: {format_runs([100 * v for v in timed.actor_overhead], unit='%')}).",
    ]
    lines += [
        "",
        "Size and precision (bytes per ok clip on disk, zstd; loss = mean L2 of the copied fp32 key features against the stored current features)",
        "",
        "| precision | bytes/clip | frames | features | soft targets | ids | feature rel. RMSE vs fp32 | L2 loss | change vs fp32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for precision, result in bench.precisions.items():
        parts = result.bytes_by_part
        lines.append(
            f"| {precision} | {result.bytes_per_clip:,.0f} | {parts['frames']:,.0f} | {parts['features']:,.0f} | {parts['soft targets']:,.0f} | "
            f"{parts['ids and indices']:,.0f} | {result.feature_relative_rmse:.2e} | {result.regression_loss:.6g} | {100 * result.regression_loss_change:+.4f} % |"
        )
    int8 = bench.precisions.get("int8")
    if int8 is not None and int8.int8_max_error_over_bound is not None:
        lines.append(f"\nint8: largest |error| / bound (scale/2 per channel) over every stored element: {int8.int8_max_error_over_bound:.3f} (<= 1 holds the bound)")
    steady_rate = median(bench.precisions[bench.timed_precision].pipeline_steady_clips_per_s)
    resnet_clip_s = (1 + bench.currents_per_key) * RESNET101_FRAME_S_CPU
    lines += [
        "",
        f"Sizing for {CORPUS_CLIPS / 1e6:.0f} million clips ({bench.currents_per_key} current frame(s) per clip)",
        "",
        "| precision | this tiny model: TB | ResNet-101 600x1000: bytes/clip | ResNet-101: TB |",
        "|---|---|---|---|",
    ]
    for precision, result in bench.precisions.items():
        resnet = _resnet101_bytes_per_clip(precision, bench)
        lines.append(f"| {precision} | {result.bytes_per_clip * CORPUS_CLIPS / 1e12:.2f} | {resnet / 1e6:.2f} MB | {resnet * CORPUS_CLIPS / 1e12:.1f} |")
    lines += [
        "",
        f"Teacher time: this tiny model on this CPU (1 actor, {bench.torch_threads} thread(s), steady state): {steady_rate:.2f} clips/s → "
        f"{CORPUS_CLIPS / steady_rate / 3600:,.0f} actor-hours. ResNet-101 at 600x1000 on this CPU (2 threads, "
        f"{RESNET101_FRAME_S_CPU * 1000:.0f} ms per frame from the detect benchmark, {1 + bench.currents_per_key} frames per clip): "
        f"{resnet_clip_s:.2f} s per clip → {CORPUS_CLIPS * resnet_clip_s / 3600:,.0f} CPU-hours.",
    ]
    return "\n".join(lines)
