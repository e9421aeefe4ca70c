"""``semidff benchmark detect``: frames/s of the ``frame`` and ``flow`` modes at the configured ΔT.

    semidff benchmark detect --frames 20 --repeats 3 -o detect.json           # ResNet-101 at 600x1000
    python -m jobs.benchmark_detect -c jobs/configs/tiny.yaml --frames 6      # the same command

``run`` is :func:`semidff.benchmarks.detect.run_detect_benchmark` (what it measures and how: its
module docstring); results go to BENCHMARKS.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional

import typer

from jobs.cli_common import CONFIG_OPTION, OVERRIDES_ARGUMENT, echo_progress, resolve_config, run_module, write_json_result
from semidff.benchmarks.detect import DetectBenchmarkResult, format_report, run_detect_benchmark
from semidff.config import Config


def run(
    cfg: Config, num_frames: int = 20, repeats: int = 3, frame_size: tuple[int, int] = (600, 1000),
    progress: Optional[Callable[[str], None]] = None,
) -> DetectBenchmarkResult:
    """Time ``repeats`` runs of ``num_frames`` synthetic frames of ``frame_size`` in each mode."""
    return run_detect_benchmark(cfg, num_frames=num_frames, repeats=repeats, frame_size=frame_size, progress=progress or (lambda line: None))


# ---------------------------------------------------------------------------------------------
# Command line (`semidff benchmark detect`, `python -m jobs.benchmark_detect`)


def benchmark_detect_command(
    config: Optional[Path] = CONFIG_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    frames: int = typer.Option(20, min=2, help="frames per timed run (use a multiple of video.key_interval)"),
    repeats: int = typer.Option(3, min=1, help="timed runs per mode; the median is reported"),
    height: int = typer.Option(600, min=32, help="input frame height in pixels (before the config's resize)"),
    width: int = typer.Option(1000, min=32, help="input frame width in pixels"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="also write the result as JSON here"),
) -> None:
    """Frames/s of `frame` vs `flow` mode at the configured key interval (default ResNet-101 at 600x1000)."""
    cfg = resolve_config(config, overrides)
    result = run(cfg, num_frames=frames, repeats=repeats, frame_size=(height, width), progress=echo_progress)
    typer.echo(format_report(result))
    write_json_result(output, result.to_json())


if __name__ == "__main__":  # pragma: no cover
    run_module(benchmark_detect_command)
