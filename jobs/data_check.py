"""``semidff data check``: every problem of a custom labeled video dataset file (semidff-video/1).

    semidff data check data/my_dataset.json --probe
    python -m jobs.data_check data/my_dataset.json --no-files          # the same command

The format and its checks: :mod:`semidff.data.custom_format` (README, "Custom labeled video format").
"""
from __future__ import annotations

from pathlib import Path

import typer

from jobs.cli_common import run_module


def data_check_command(
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


if __name__ == "__main__":  # pragma: no cover
    run_module(data_check_command)
