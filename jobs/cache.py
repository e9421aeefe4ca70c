"""Stage 3 entry point: compute the frozen teacher's outputs on every planned clip, once, into a cache.

    semidff cache runs/manifest --teacher teacher.pt -o runs/cache -c jobs/configs/tiny.yaml cache.feature_precision=int8
    semidff cache inspect runs/cache
    python -m jobs.cache runs/manifest --teacher teacher.pt -o runs/cache     # the same commands
    python -m jobs.cache inspect runs/cache

``run`` starts (or joins) Ray, logs an MLflow run "cache" (the config, the manifest and the teacher
checkpoint as inputs by digest, the counts as metrics, cache_info.json as an artifact) and marks
the cache folder with it. Rerunning on the same output skips the clips already written.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, List, Optional

import pyarrow.fs as pafs
import typer

from jobs.cli_common import CONFIG_OPTION, OVERRIDES_ARGUMENT, DefaultCommandGroup, echo_progress, exit_on, group_app, resolve_config, run_module
from pipelines.ray_session import is_local, ray_session
from pipelines.manifest import read_manifest_rows
from pipelines.teacher_cache import CacheSummary, build_teacher_cache, check_cache_matches, check_cpu_headroom
from semidff.cache.files import inspect_cache
from semidff.atomic import write_to_filesystem_atomically
from semidff.cache.info import INFO_FILE, CacheError, CacheInfo, cache_location, read_cache_info
from semidff.checkpoint import ModelCheckpointError, load_model_checkpoint
from semidff.rows import usable_videos
from semidff.config import Config
from semidff.tracking import log_input_dataset, producing_run, record_output, stage_run, tracking_uri_for

__all__ = ["CacheSummary", "run", "inspect", "cache_build_command", "cache_inspect_command"]


def run(cfg: Config, manifest_dir: str, teacher_checkpoint: str, output_dir: str, progress: Optional[Callable[[str], None]] = None) -> CacheSummary:
    """Build (or extend) the teacher cache ``output_dir`` from the manifest in ``manifest_dir``.

    progress: called with progress lines (default: printed to stderr).
    Raises CacheError (e.g. CacheMismatchError for a cache of other settings in ``output_dir``),
    ModelCheckpointError for an unusable teacher, ValueError for an unusable manifest.
    """
    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    # Everything knowable is checked before Ray starts or anything is written.
    manifest_digest = _manifest_digest(manifest_dir)
    if not Path(teacher_checkpoint).is_file():
        raise ModelCheckpointError(f"teacher checkpoint {teacher_checkpoint} does not exist (semidff train-teacher writes one)")
    teacher = load_model_checkpoint(teacher_checkpoint, "teacher")  # a flow checkpoint or another file is refused here
    teacher_sha256 = teacher.sha256
    usable_videos(read_manifest_rows(manifest_dir).values(), manifest_dir)
    check_cache_matches(output_dir, CacheInfo.create(cfg, teacher, teacher_path=os.path.abspath(teacher_checkpoint)))
    local_ray = is_local(cfg.ray.address)
    with ray_session(cfg.ray.num_cpus, cfg.ray.address):
        check_cpu_headroom(cfg, local_ray, progress)  # needs the cluster's CPUs; before any output
        with stage_run(cfg, "cache", output_dir) as active:
            summary = _build(cfg, manifest_dir, teacher_checkpoint, output_dir, manifest_digest, teacher_sha256, progress, local_ray, active)
    return summary


def _build(cfg: Config, manifest_dir: str, teacher_checkpoint: str, output_dir: str, manifest_digest: str, teacher_sha256: str,
           progress: Callable[[str], None], local_ray: bool, active) -> CacheSummary:
    """The cache stage's work inside its Ray session and MLflow run."""
    import mlflow

    producer = producing_run(manifest_dir)
    log_input_dataset(
        "manifest", source=manifest_dir, digest=manifest_digest, context="videos", producer_run_id=producer["run_id"] if producer else None
    )
    log_input_dataset("teacher", source=teacher_checkpoint, digest=teacher_sha256, context="teacher")
    summary = build_teacher_cache(cfg, manifest_dir, teacher_checkpoint, output_dir, progress=progress, local_ray=local_ray)
    mlflow.log_metrics(
        {
            "clips_written": summary.written,
            "clips_ok": summary.written_ok,
            "clips_failed": summary.written_failed,
            "clips_skipped": summary.skipped,
            "clips_in_cache": summary.clips_in_cache,
            "pairs_written": summary.pairs_written,
            "files_written": summary.files_written,
            "clips_per_s": summary.clips_per_s,
            "seconds": summary.seconds,
        }
    )
    mlflow.log_text(read_cache_info(output_dir).to_json(), INFO_FILE)
    mlflow.log_text(summary.format(), "cache_summary.txt")
    _write_config(cfg, output_dir)
    record_output(output_dir, active.info.run_id, stage="cache", tracking_uri=tracking_uri_for(cfg, output_dir))
    return summary


def _manifest_digest(manifest_dir: str) -> str:
    """SHA-256 of the manifest file (what identifies the stage's input)."""
    from semidff.rows import MANIFEST_FILE

    filesystem, base = cache_location(manifest_dir)
    path = f"{base}/{MANIFEST_FILE}"
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        raise ValueError(f"{manifest_dir}: no {MANIFEST_FILE} there; build it first (semidff manifest VIDEOS -o {manifest_dir})")
    import hashlib

    digest = hashlib.sha256()
    with filesystem.open_input_stream(path) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_config(cfg: Config, output_dir: str) -> None:
    """The resolved config of the latest run, next to the cache."""
    filesystem, base = cache_location(output_dir)
    write_to_filesystem_atomically(filesystem, f"{base}/config.yaml", cfg.to_yaml().encode("utf-8"))


def inspect(cache_dir: str, as_json: bool = False) -> int:
    """Print ``semidff cache inspect``; returns the exit status (1 when a file is corrupt or ids repeat)."""
    report = inspect_cache(cache_dir)
    if as_json:
        import json

        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        print(report.format())
    return 0 if report.healthy else 1


# ---------------------------------------------------------------------------------------------
# Command line (`semidff cache [build] ...`, `semidff cache inspect ...`, `python -m jobs.cache ...`)

def cache_build_command(
    manifest_dir: str = typer.Argument(..., help="the manifest stage's output folder (semidff manifest)"),
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    teacher: Path = typer.Option(..., "--teacher", help="teacher checkpoint (semidff train-teacher writes teacher.pt)"),
    output: str = typer.Option(..., "--output", "-o", help="cache folder or URI; a rerun skips the clips already written"),
    config: Optional[Path] = CONFIG_OPTION,
) -> None:
    """Run the frozen teacher on every planned clip (cache.*, clips.*, preprocess.* keys) into Parquet; resumable, exactly once per clip."""
    cfg = resolve_config(config, overrides)
    with exit_on(CacheError, ModelCheckpointError, ValueError):
        summary = run(cfg, manifest_dir, str(teacher), output, progress=echo_progress)
    typer.echo(summary.format())


def cache_inspect_command(
    cache_dir: str = typer.Argument(..., help="a teacher cache folder or URI"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Counts (clips, pairs, videos, failures by reason), bytes per clip per column, metadata; exit 1 if a file is corrupt."""
    raise typer.Exit(inspect(cache_dir, as_json))


if __name__ == "__main__":  # pragma: no cover
    run_module(group_app({"build": cache_build_command, "inspect": cache_inspect_command}, cls=DefaultCommandGroup, help=__doc__.split("\n")[0]))
