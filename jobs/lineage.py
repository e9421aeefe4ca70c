"""Print the chain of runs and inputs behind a model or run, back to the manifest and the teacher.

    semidff lineage models:/semidff-flow/3                 # a registered model version
    python -m jobs.lineage runs/flow                       # an output folder; the same command

``run`` is :func:`semidff.lineage.trace_lineage` (how the chain is followed across MLflow stores:
its module docstring); the command prints it with :func:`semidff.lineage.format_lineage`.
"""
from __future__ import annotations

from typing import Optional

import typer

from jobs.cli_common import exit_on, run_module
from semidff.lineage import Lineage, LineageError, format_lineage, trace_lineage


def run(target: str, tracking_uri: Optional[str] = None) -> Lineage:
    """The runs and inputs behind ``target`` (a run id, a registered model, or an output folder).
    Raises LineageError when the target or a store cannot be found."""
    return trace_lineage(target, tracking_uri)


# ---------------------------------------------------------------------------------------------
# Command line (`semidff lineage`, `python -m jobs.lineage`)


def lineage_command(
    target: str = typer.Argument(..., help="an MLflow run id, a registered model (models:/name/1, name/1, name@alias, name), or an output folder"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow store (default: the folder's recorded store, else $MLFLOW_TRACKING_URI)"),
) -> None:
    """Print the chain of runs and inputs behind a model or run, back to the manifest and the teacher checkpoint."""
    with exit_on(LineageError):
        chain = run(target, tracking_uri)
    typer.echo(format_lineage(chain))


if __name__ == "__main__":  # pragma: no cover
    run_module(lineage_command)
