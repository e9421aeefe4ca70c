"""The ``semidff`` command line: one subcommand per stage, each the Typer command of its stage module.

    semidff --help | semidff -h | semidff --version
    semidff config show -c jobs/configs/tiny.yaml video.key_interval=5
    semidff benchmark detect --frames 20 --repeats 3

Every command takes ``-c/--config FILE.yaml`` where it reads a config (optional: the embedded
defaults are complete) and any number of dotted ``key=value`` overrides, and writes its outputs to
``-o/--output``. A command is defined next to the recipe it wraps (``jobs/<stage>.py``: ``run`` and
``<stage>_command``) and runs the same as ``python -m jobs.<stage>``; this module only assembles
them. A stage module is imported when its command runs (:class:`jobs.cli_common.LazyCommand`), so
``semidff --help`` does not import torch or Ray.
"""
from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version as package_version
from typing import Optional

import typer

from jobs.cli_common import DefaultCommandGroup, lazy_group, typer_app


def _version() -> str:
    try:
        return package_version("semidff")
    except PackageNotFoundError:  # running from a source tree that was never installed (e.g. a submitted job)
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"semidff {_version()}")
        raise typer.Exit()


app = typer_app(
    cls=lazy_group(
        {
            "manifest": "jobs.manifest:manifest_command",
            "clips": "jobs.clips:clips_command",
            "train-teacher": "jobs.train_teacher:train_teacher_command",
            "train": "jobs.train_flow:train_command",
            "tune": "jobs.tune:tune_command",
            "evaluate": "jobs.evaluate:evaluate_command",
            "detect": "jobs.detect:detect_command",
            "demo": "jobs.demo:demo_command",
            "lineage": "jobs.lineage:lineage_command",
            "submit": "jobs.submit:submit_command",
        },
        order=("manifest", "clips", "train-teacher", "cache", "train", "tune", "evaluate", "detect", "demo", "lineage", "submit", "job"),
    ),
    help="Semi-Supervised DFF: fast video object detection with feature flow learned from unlabeled video.",
    no_args_is_help=True,
)


@app.callback()
def semidff(
    version: Optional[bool] = typer.Option(None, "--version", is_eager=True, callback=_print_version, help="Print the version and exit."),
) -> None:
    """Semi-Supervised DFF: fast video object detection with feature flow learned from unlabeled video."""


app.add_typer(
    typer_app(
        cls=lazy_group({"build": "jobs.cache:cache_build_command", "inspect": "jobs.cache:cache_inspect_command"}, base=DefaultCommandGroup),
        no_args_is_help=True,
        help="The teacher cache: `semidff cache MANIFEST_DIR --teacher T.pt -o CACHE_DIR` computes the teacher's outputs on every "
        "planned clip once (resumable); `semidff cache inspect CACHE_DIR` reports what a cache holds.",
    ),
    name="cache",
)
app.add_typer(
    typer_app(
        cls=lazy_group({
            "status": "jobs.submit:job_status_command",
            "logs": "jobs.submit:job_logs_command",
            "stop": "jobs.submit:job_stop_command",
            "list": "jobs.submit:job_list_command",
        }),
        no_args_is_help=True,
        help="Jobs submitted with `semidff submit`: status, logs, stop, list.",
    ),
    name="job",
)
app.add_typer(
    typer_app(cls=lazy_group({"show": "jobs.config_show:config_show_command"}), no_args_is_help=True,
              help="Inspect the configuration schema and resolved configs."),
    name="config",
)
app.add_typer(
    typer_app(cls=lazy_group({"check": "jobs.data_check:data_check_command"}), no_args_is_help=True,
              help="Labeled video datasets: check a custom (semidff-video/1) dataset file."),
    name="data",
)
app.add_typer(
    typer_app(
        cls=lazy_group({
            "detect": "jobs.benchmark_detect:benchmark_detect_command",
            "decode": "jobs.benchmark_decode:benchmark_decode_command",
            "cache": "jobs.benchmark_cache:benchmark_cache_command",
            "teacher": "jobs.benchmark_teacher:benchmark_teacher_command",
            "train": "jobs.benchmark_train:benchmark_train_command",
        }),
        no_args_is_help=True,
        help="Measured performance scripts (results go to BENCHMARKS.md).",
    ),
    name="benchmark",
)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="semidff")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
