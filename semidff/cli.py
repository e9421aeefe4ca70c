"""The ``semidff`` command line: one subcommand per stage, each a thin wrapper over a function.

Every command takes ``-c/--config FILE.yaml`` (optional: the embedded defaults are complete) and
any number of dotted ``key=value`` overrides, e.g.::

    semidff config show -c jobs/configs/tiny.yaml video.key_interval=5
    semidff benchmark detect --frames 20 --repeats 3
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from semidff.config import Config, ConfigError, load_config

app = typer.Typer(
    help="Semi-Supervised DFF: fast video object detection with feature flow learned from unlabeled video.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the configuration schema and resolved configs.", no_args_is_help=True)
benchmark_app = typer.Typer(help="Measured performance scripts (results go to BENCHMARKS.md).", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(benchmark_app, name="benchmark")

CONFIG_OPTION = typer.Option(None, "--config", "-c", help="YAML config file; omitted keys take the embedded defaults.")
OVERRIDES_ARGUMENT = typer.Argument(None, help="Dotted overrides, e.g. model.backbone.depth=50 video.key_interval=5.")


def resolve_config(config: Optional[Path], overrides: Optional[List[str]]) -> Config:
    """Load the config or exit with status 2 and a message naming every bad key."""
    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@config_app.command("show")
def config_show(config: Optional[Path] = CONFIG_OPTION, overrides: Optional[List[str]] = OVERRIDES_ARGUMENT) -> None:
    """Print the resolved configuration (file + overrides + defaults) as YAML."""
    typer.echo(resolve_config(config, overrides).to_yaml(), nl=False)


@benchmark_app.command("detect")
def benchmark_detect(
    config: Optional[Path] = CONFIG_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    frames: int = typer.Option(20, min=2, help="frames per timed run (use a multiple of video.key_interval)"),
    repeats: int = typer.Option(3, min=1, help="timed runs per mode; the median is reported"),
    height: int = typer.Option(600, min=32, help="input frame height in pixels (before the config's resize)"),
    width: int = typer.Option(1000, min=32, help="input frame width in pixels"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="also write the result as JSON here"),
) -> None:
    """Frames/s of `frame` vs `flow` mode at the configured key interval (default ResNet-101 at 600x1000)."""
    from semidff.benchmarks.detect import format_report, run_detect_benchmark

    cfg = resolve_config(config, overrides)
    result = run_detect_benchmark(
        cfg, num_frames=frames, repeats=repeats, frame_size=(height, width), progress=lambda line: typer.echo(line, err=True)
    )
    typer.echo(format_report(result))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(result.to_json())


@app.command("manifest")
def manifest(
    inputs: List[str] = typer.Argument(
        ..., help="video files, directories (recursive), globs ('raw/**/*.mp4'), .txt lists of paths/URIs, or file:// s3:// gs:// URIs"
    ),
    output: str = typer.Option(..., "--output", "-o", help="output directory or URI; manifest.parquet is written (and extended on rerun) there"),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1, help="CPUs of the local Ray started when no cluster is given (default: all)"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray)"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="probe again the videos recorded as failed"),
    progress_every: int = typer.Option(100, min=1, help="print a progress line every this many probed videos"),
) -> None:
    """Probe every video once (frames, fps, size, duration) into manifest.parquet; bad files become rows, not crashes."""
    from pipelines.manifest import ManifestError, build_manifest

    try:
        summary = build_manifest(
            inputs, output, num_cpus=num_cpus, address=address, retry_failed=retry_failed,
            progress_every=progress_every, progress=lambda line: typer.echo(line, err=True),
        )
    except ManifestError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(summary.format())


data_app = typer.Typer(help="Labeled video datasets: check a custom (semidff-video/1) dataset file.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("check")
def data_check(
    path: Path = typer.Argument(..., help="a semidff-video/1 JSON file (format: README, 'Custom labeled video format')"),
    no_files: bool = typer.Option(False, "--no-files", help="do not check that the video files and frame folders exist"),
    probe: bool = typer.Option(False, "--probe", help="also open every video with decord and compare its size and frame count"),
) -> None:
    """Report every problem of a custom dataset file, one 'location: message' line each (exit 1), or 'ok: ...' (exit 0)."""
    from semidff.data.custom_format import CustomFormatError, load_custom_dataset

    try:
        dataset = load_custom_dataset(path, check_files=not no_files, probe=probe)
    except CustomFormatError as exc:
        for problem in exc.problems:
            typer.echo(str(problem))
        typer.echo(f"{path}: {len(exc.problems)} problem(s)", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"ok: {len(dataset.videos)} videos, {dataset.num_objects()} annotations, {dataset.num_classes()} classes")


@app.command("detect")
def detect(
    video: str = typer.Argument(..., help="a video file (any container decord reads: mp4, mkv, webm, avi, ...)"),
    teacher: Path = typer.Option(..., "--teacher", help="teacher checkpoint (semidff train-teacher writes teacher.pt)"),
    out: Path = typer.Option(..., "--out", "-o", help="annotated video to write (.mp4, .mkv, .webm or .avi)"),
    flow: Optional[Path] = typer.Option(None, "--flow", help="flow checkpoint (semidff train writes flow.pt); needed for mode flow"),
    mode: Optional[str] = typer.Option(None, "--mode", help="frame | copy | flow (default: flow with --flow, else frame)"),
    key_interval: int = typer.Option(10, "--key-interval", min=1, help="ΔT: the teacher runs on every ΔT-th frame"),
    score_threshold: float = typer.Option(0.5, "--score-threshold", min=0.0, max=1.0, help="draw detections scoring at least this"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
) -> None:
    """Detect objects in VIDEO and write it with boxes, class names, scores, key/propagated frames marked and frames/s."""
    from jobs.detect import run as run_detect
    from semidff.checkpoint import ModelCheckpointError
    from semidff.video.decode import VideoOpenError

    try:
        summary = run_detect(
            video, str(teacher), str(out), str(flow) if flow else None, mode, key_interval, score_threshold, device,
            progress=lambda line: typer.echo(line, err=True),
        )
    except (ModelCheckpointError, ConfigError, VideoOpenError, ValueError, RuntimeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(summary.format())


def main() -> None:
    """Console-script entry point."""
    app(prog_name="semidff")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
