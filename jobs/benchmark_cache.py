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

import tempfile
from pathlib import Path
from typing import Callable, List, Optional

import torch
import typer

from jobs.cli_common import OVERRIDES_ARGUMENT, echo_progress, resolve_config, run_module, write_json_result
from semidff.benchmarks.cache import (
    CacheBenchmark, PrecisionResult, bare_loop_clips_per_s, bytes_per_part, cache_rows, format_report, precision_effects,
)
from semidff.benchmarks.machine import machine_description

TINY_CONFIG = Path(__file__).resolve().parent / "configs" / "tiny.yaml"  # the default model of this benchmark


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
    from semidff.cache.info import read_cache_info
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
                    ok_rows = [row for row in cache_rows(cache_dir).values() if row["status"] == "ok"]
                    bare.append(bare_loop_clips_per_s(teacher_path, ok_rows, cfg.cache.batch_size, max(1, int(cfg.cache.num_cpus_per_actor))))
                    line += f"; bare loop {bare[-1]:.2f} clips/s"
                progress(line)
        rows = {p: cache_rows(_cache_dir(root, p, 0)) for p in precisions}
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
        info = read_cache_info(_cache_dir(root, "fp32", 0))
        bench.feature_shape = (info.feature_channels, bench.feature_shape[1], bench.feature_shape[2])
        jpeg_bytes = sum(len(row["key_jpeg"]) + sum(len(j) for j in row["current_jpegs"]) for row in clips)
        bench.jpeg_bytes_per_pixel = jpeg_bytes / sum((1 + len(row["current_jpegs"])) * row["height"] * row["width"] for row in clips)
        for precision in precisions:
            report = inspect_cache(_cache_dir(root, precision, 0))
            per_column = report.bytes_per_clip()
            results[precision].bytes_per_clip = sum(per_column.values())
            results[precision].bytes_by_part = bytes_per_part(per_column)
        precision_effects(rows, info, results)
    return bench


def _cache_dir(root: str, precision: str, repeat: int) -> str:
    return str(Path(root) / f"cache-{precision}-{repeat}")


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
