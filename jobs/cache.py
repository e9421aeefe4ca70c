"""Stage 3 entry point: compute the frozen teacher's outputs on every planned clip, once, into a cache.

    python -m jobs.cache runs/manifest --teacher teacher.pt -o runs/cache -c jobs/configs/tiny.yaml cache.feature_precision=int8
    python -m jobs.cache inspect runs/cache
    semidff cache runs/manifest --teacher teacher.pt -o runs/cache       # the same function
    semidff cache inspect runs/cache

``run`` starts (or joins) Ray, logs an MLflow run "cache" (the config, the manifest and the teacher
checkpoint as inputs by digest, the counts as metrics, cache_info.json as an artifact) and marks
the cache folder with it. Rerunning on the same output skips the clips already written.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import pyarrow.fs as pafs

from pipelines.ray_session import ray_session
from pipelines.teacher_cache import CacheSummary, build_teacher_cache
from semidff.cache.files import inspect_cache
from semidff.cache.info import INFO_FILE, CacheError, cache_location, read_cache_info
from semidff.checkpoint import ModelCheckpointError, file_sha256
from semidff.config import Config, ConfigError, load_config
from semidff.tracking import log_input_dataset, producing_run, record_output, stage_run, tracking_uri_for

__all__ = ["CacheSummary", "run", "main"]


def run(cfg: Config, manifest_dir: str, teacher_checkpoint: str, output_dir: str, progress: Optional[Callable[[str], None]] = None) -> CacheSummary:
    """Build (or extend) the teacher cache ``output_dir`` from the manifest in ``manifest_dir``.

    progress: called with progress lines (default: printed to stderr).
    Raises CacheError (e.g. CacheMismatchError for a cache of other settings in ``output_dir``),
    ModelCheckpointError for an unusable teacher, ValueError for an unusable manifest.
    """
    import mlflow

    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    manifest_digest = _manifest_digest(manifest_dir)
    teacher_sha256 = file_sha256(teacher_checkpoint) if Path(teacher_checkpoint).is_file() else None
    if teacher_sha256 is None:
        raise ModelCheckpointError(f"teacher checkpoint {teacher_checkpoint} does not exist (semidff train-teacher writes one)")
    local_ray = not (cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    with ray_session(cfg.ray.num_cpus, cfg.ray.address), stage_run(cfg, "cache", output_dir) as active:
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
    from pipelines.manifest import MANIFEST_FILE

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
    with filesystem.open_output_stream(f"{base}/config.yaml") as stream:
        stream.write(cfg.to_yaml().encode("utf-8"))


def inspect(cache_dir: str, as_json: bool = False) -> int:
    """Print ``semidff cache inspect``; returns the exit status (1 when a file is corrupt or ids repeat)."""
    report = inspect_cache(cache_dir)
    if as_json:
        import json

        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        print(report.format())
    return 0 if report.healthy else 1


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["inspect"]:
        parser = argparse.ArgumentParser(prog="python -m jobs.cache inspect", description="Counts, bytes per clip, metadata and failures of a teacher cache.")
        parser.add_argument("cache_dir")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
        args = parser.parse_args(argv[1:])
        return inspect(args.cache_dir, args.json)
    parser = argparse.ArgumentParser(prog="python -m jobs.cache", description=__doc__.splitlines()[0])
    parser.add_argument("manifest_dir", help="output folder of the manifest stage")
    parser.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    parser.add_argument("--teacher", required=True, help="teacher checkpoint (.pt, kind 'teacher')")
    parser.add_argument("-o", "--output", required=True, help="cache directory (created; a rerun resumes it)")
    parser.add_argument("-c", "--config", default=None, help="YAML config (default: embedded defaults)")
    args = parser.parse_intermixed_args(argv)  # overrides may come after the options
    try:
        cfg = load_config(args.config, args.overrides)
        summary = run(cfg, args.manifest_dir, args.teacher, args.output)
    except (ConfigError, CacheError, ModelCheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
