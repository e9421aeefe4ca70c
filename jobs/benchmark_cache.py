"""Benchmark of the teacher cache (``semidff benchmark cache``): throughput, size, precision.

    semidff benchmark cache -c jobs/configs/tiny.yaml --videos 6 --frames 100 --repeats 3 clips.key_frames_per_second=5 cache.clips_per_file=8
    python -m jobs.benchmark_cache -c jobs/configs/tiny.yaml --repeats 3 clips.key_frames_per_second=5

On synthetic videos (``semidff.data.synthetic``) and a randomly initialised teacher built from the
config (speed and size do not depend on the weights), it measures:

1. clips/s of the actor-pool pipeline (decode tasks → JPEG round trip → teacher actor → Parquet
   files) at the configured precision, ``repeats`` times, each run followed by a bare
   single-process torch loop that runs the same model, with the same threads and batch size, on
   the same decoded frames (read back from that run's cache): their ratio is the pipeline's
   overhead. The pipeline's rate is given end to end (with its start-up: Ray Data planning, actor
   start, checkpoint load) and in steady state (from the first file written to the last), and the
   share of the actor's time spent outside the forward pass;
2. bytes per clip of each precision (inspect's per-column sizes);
3. the relative change of the regression loss (Eq. 4, L2) between a fixed prediction, the key
   frame's fp32 features copied, and the current frame's features read from the fp16 or int8
   cache instead of the fp32 one; and the int8 error against its bound;
4. a sizing table for a corpus of 10 million clips.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

import numpy as np
import pyarrow.parquet as pq
import torch
import typer

from jobs.cli_common import OVERRIDES_ARGUMENT, echo_progress, resolve_config, run_module, write_json_result
from semidff.benchmarks.machine import machine_description

TINY_CONFIG = Path(__file__).resolve().parent / "configs" / "tiny.yaml"  # the default model of this benchmark
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


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _runs(values: list[float], unit: str = "") -> str:
    return ", ".join(f"{v:.2f}{unit}" for v in values)


def run(
    cfg,
    *,
    num_videos: int = 6,
    num_frames: int = 100,
    width: int = 256,
    height: int = 160,
    repeats: int = 3,
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8"),
    workdir: Optional[str] = None,
    progress: Callable[[str], None] = lambda line: None,
) -> CacheBenchmark:
    """Run the benchmark (see the module docstring) in a temporary folder under ``workdir``.

    cfg: the model, preprocess, clips and cache settings (``cache.feature_precision`` is set to
    each of ``precisions`` in turn). Uses the running Ray, or starts one (cfg.ray).
    """
    from pipelines.manifest import build_manifest
    from pipelines.ray_session import ray_session
    from pipelines.teacher_cache import build_teacher_cache
    from semidff.cache.files import inspect_cache
    from semidff.checkpoint import save_model_checkpoint
    from semidff.data.synthetic import generate_synthetic_dataset
    from semidff.models.build import build_rfcn

    if "fp32" not in precisions:
        raise ValueError("precisions must include fp32: the other precisions are compared with it")
    with tempfile.TemporaryDirectory(prefix="semidff-cache-bench-", dir=workdir) as root:
        progress(f"benchmark cache: {num_videos} synthetic videos of {num_frames} frames at {width}x{height} in {root}")
        generate_synthetic_dataset(Path(root) / "data", num_videos=num_videos, num_frames=num_frames, width=width, height=height, seed=cfg.seed)
        torch.manual_seed(cfg.seed)
        teacher_path = str(Path(root) / "teacher.pt")
        save_model_checkpoint(teacher_path, "teacher", cfg, {"rfcn": build_rfcn(cfg.model).state_dict()})
        results = {p: PrecisionResult(p) for p in precisions}
        bare: list[float] = []
        with ray_session(cfg.ray.num_cpus, cfg.ray.address):
            manifest_dir = str(Path(root) / "manifest")
            build_manifest([str(Path(root) / "data" / "videos")], manifest_dir)
            # Throughput: `repeats` runs at the configured precision, each followed by the bare loop
            # on the frames it stored (alternating, so that both see the same machine load); size
            # and precision effects: one run of each other precision.
            timed = cfg.cache.feature_precision if cfg.cache.feature_precision in precisions else "fp32"
            runs = [(timed, r) for r in range(repeats)] + [(p, 0) for p in precisions if p != timed]
            for precision, repeat in runs:
                run_cfg = cfg.model_copy(deep=True)
                run_cfg.cache.feature_precision = precision
                cache_dir = _cache_dir(root, precision, repeat)
                summary = build_teacher_cache(run_cfg, manifest_dir, teacher_path, cache_dir)
                if summary.written_failed:
                    raise RuntimeError(f"benchmark: {summary.written_failed} clips failed: {dict(summary.failures)}")
                result = results[precision]
                result.pipeline_clips_per_s.append(summary.clips_per_s)
                result.startup_s.append(summary.first_file_s or float("nan"))
                result.actor_overhead.append(summary.actor_seconds / summary.teacher_seconds - 1 if summary.teacher_seconds else float("nan"))
                if summary.steady_clips_per_s is not None:
                    result.pipeline_steady_clips_per_s.append(summary.steady_clips_per_s)
                line = (
                    f"  {precision} run {repeat + 1}: {summary.written} clips in {summary.files_written} files, {summary.clips_per_s:.2f} clips/s end to end, "
                    f"{summary.steady_clips_per_s or float('nan'):.2f} from the first file to the last ({summary.first_file_s or float('nan'):.1f} s to the first); "
                    f"actor calls {summary.actor_seconds:.2f} s of which teacher {summary.teacher_seconds:.2f} s"
                )
                if precision == timed:
                    ok_rows = [row for row in _cache_rows(cache_dir).values() if row["status"] == "ok"]
                    bare.append(_bare_loop(teacher_path, ok_rows, cfg.cache.batch_size, max(1, int(cfg.cache.num_cpus_per_actor))))
                    line += f"; bare loop {bare[-1]:.2f} clips/s"
                progress(line)
        rows = {p: _cache_rows(_cache_dir(root, p, 0)) for p in precisions}
        clips = [row for row in rows["fp32"].values() if row["status"] == "ok"]
        bench = CacheBenchmark(
            machine=machine_description(),
            torch_threads=max(1, int(cfg.cache.num_cpus_per_actor)),
            clips=len(clips),
            pairs=sum(len(row["offsets"]) for row in clips),
            frame_size=(int(clips[0]["height"]), int(clips[0]["width"])),
            feature_shape=(0, int(clips[0]["feature_height"]), int(clips[0]["feature_width"])),
            currents_per_key=cfg.clips.currents_per_key,
            timed_precision=timed,
            bare_clips_per_s=bare,
            precisions=results,
        )
        from semidff.cache.info import read_cache_info

        info = read_cache_info(_cache_dir(root, "fp32", 0))
        bench.feature_shape = (info.feature_channels, bench.feature_shape[1], bench.feature_shape[2])
        jpeg_bytes = sum(len(row["key_jpeg"]) + sum(len(j) for j in row["current_jpegs"]) for row in clips)
        bench.jpeg_bytes_per_pixel = jpeg_bytes / sum((1 + len(row["current_jpegs"])) * row["height"] * row["width"] for row in clips)
        for precision in precisions:
            report = inspect_cache(_cache_dir(root, precision, 0))
            per_column = report.bytes_per_clip()
            results[precision].bytes_per_clip = sum(per_column.values())
            results[precision].bytes_by_part = _parts(per_column)
        _precision_effects(rows, info, results)
    return bench


def _cache_dir(root: str, precision: str, repeat: int) -> str:
    return str(Path(root) / f"cache-{precision}-{repeat}")


def _cache_rows(cache_dir: str) -> dict[str, dict[str, Any]]:
    from semidff.cache.files import list_cache_files

    rows: dict[str, dict[str, Any]] = {}
    for path in list_cache_files(cache_dir):
        for row in pq.read_table(path).to_pylist():
            rows[row["clip_id"]] = row
    return rows


def _parts(per_column: dict[str, float]) -> dict[str, float]:
    """Bytes per clip grouped: frames (JPEG), features (+ scales), soft targets (+ RoIs), ids."""
    groups = {
        "frames": ("key_jpeg", "current_jpegs"),
        "features": ("key_features", "key_feature_scales", "current_features", "current_feature_scales"),
        "soft targets": ("rpn_cls_logits", "rpn_deltas", "rois", "cls_logits", "box_deltas", "num_rois"),
    }
    parts = {name: sum(per_column.get(c, 0.0) for c in columns) for name, columns in groups.items()}
    parts["ids and indices"] = sum(per_column.values()) - sum(parts.values())
    return parts


def _bare_loop(teacher_path: str, clips: list[dict[str, Any]], batch_size: int, threads: int) -> float:
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
            start = time.perf_counter()
            for group in by_size.values():
                for first in range(0, len(group), batch_size):
                    forward(group[first : first + batch_size])
            seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)
    return len(clips) / seconds


def _precision_effects(rows: dict[str, dict[str, dict]], info, results: dict[str, PrecisionResult]) -> None:
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
    bare = _median(bench.bare_clips_per_s)
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
    steady = _median(timed.pipeline_steady_clips_per_s)
    lines += [
        f"| actor pool, end to end (with start-up: {_median(timed.startup_s):.1f} s to the first file) | {_median(timed.pipeline_clips_per_s):.2f} | {_runs(timed.pipeline_clips_per_s)} |",
        f"| actor pool, steady state (first file to last) | {steady:.2f} | {_runs(timed.pipeline_steady_clips_per_s)} |",
        f"| bare torch loop, same model, frames, threads and batch, 1 process | {bare:.2f} | {_runs(bench.bare_clips_per_s)} |",
        "",
        f"**Pipeline / bare loop: {steady / bare:.2f} in steady state, {_median(timed.pipeline_clips_per_s) / bare:.2f} end to end.** "
        f"Inside the actor, everything but the forward pass (unpacking, quantising, packing, zstd, writing the file) "
        f"adds {100 * _median(timed.actor_overhead):.1f} % to the forward time (runs: {_runs([100 * v for v in timed.actor_overhead], '%')}).",
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
    steady_rate = _median(bench.precisions[bench.timed_precision].pipeline_steady_clips_per_s)
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


# ---------------------------------------------------------------------------------------------
# Command line (`semidff benchmark cache`, `python -m jobs.benchmark_cache`)


def benchmark_cache_command(
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: jobs/configs/tiny.yaml)"),
    videos: int = typer.Option(6, min=1, help="synthetic videos"),
    frames: int = typer.Option(100, min=10, help="frames per synthetic video"),
    repeats: int = typer.Option(3, min=1, help="timed pipeline runs (each followed by a bare-loop run); medians are reported"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="also write the result as JSON here"),
) -> None:
    """Teacher cache: clips/s of the actor pool vs a bare torch loop, bytes per clip per precision, int8/fp16 loss change, 10M-clip sizing."""
    cfg = resolve_config(config or TINY_CONFIG, overrides)
    result = run(cfg, num_videos=videos, num_frames=frames, repeats=repeats, progress=echo_progress)
    typer.echo(format_report(result))
    write_json_result(output, result.to_json())


if __name__ == "__main__":  # pragma: no cover
    run_module(benchmark_cache_command)
