"""The manifest stage's recipe (``semidff manifest``): probe every input video once into ``<output>/manifest.parquet``.

    semidff manifest /data/videos 'more/**/*.mp4' lists/extra.txt s3://bucket/raw/ -o runs/manifest
    python -m jobs.manifest /data/videos -o runs/manifest            # the same command

``run`` is :func:`pipelines.manifest.build_manifest` (its docstring says which inputs are taken,
what a bad file becomes and what a rerun skips); the command prints its summary.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import typer

from jobs.cli_common import echo_progress, exit_on, run_module
from pipelines.manifest import DEFAULT_PROBE_TIMEOUT_S, ManifestError, ManifestSummary, build_manifest


def run(
    inputs: Sequence[str],
    output_dir: str,
    *,
    num_cpus: Optional[int] = None,
    address: Optional[str] = None,
    retry_failed: bool = False,
    progress_every: int = 100,
    probe_timeout_s: Optional[float] = DEFAULT_PROBE_TIMEOUT_S,
    progress: Optional[Callable[[str], None]] = None,
) -> ManifestSummary:
    """Probe every video of ``inputs`` not yet in ``output_dir``'s manifest and rewrite it (a Ray of
    ``num_cpus`` CPUs, or the cluster at ``address``). Raises ManifestError for inputs matching
    nothing or an incompatible manifest in ``output_dir``."""
    return build_manifest(
        inputs, output_dir, num_cpus=num_cpus, address=address, retry_failed=retry_failed, progress_every=progress_every,
        progress=progress or (lambda line: None), probe_timeout_s=probe_timeout_s,
    )


# ---------------------------------------------------------------------------------------------
# Command line (`semidff manifest`, `python -m jobs.manifest`)


def manifest_command(
    inputs: List[str] = typer.Argument(
        ..., help="video files, directories (recursive), globs ('raw/**/*.mp4'), .txt lists of paths/URIs, or file:// s3:// gs:// URIs"
    ),
    output: str = typer.Option(..., "--output", "-o", help="output directory or URI; manifest.parquet is written (and extended on rerun) there"),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1, help="CPUs of the local Ray started when no cluster is given (default: all)"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray)"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="probe again the videos recorded as failed"),
    progress_every: int = typer.Option(100, min=1, help="print a progress line every this many probed videos"),
    probe_timeout: float = typer.Option(
        DEFAULT_PROBE_TIMEOUT_S, "--probe-timeout", min=0.0, metavar="SECONDS",
        help="a probe running longer is killed and its video recorded with reason 'timeout' (a hung decoder); 0: no limit",
    ),
) -> None:
    """Probe every video once (frames, fps, size, duration) into manifest.parquet; bad files become rows, not crashes."""
    with exit_on(ManifestError):
        summary = run(
            inputs, output, num_cpus=num_cpus, address=address, retry_failed=retry_failed, progress_every=progress_every,
            probe_timeout_s=probe_timeout or None, progress=echo_progress,
        )
    typer.echo(summary.format())


if __name__ == "__main__":  # pragma: no cover
    run_module(manifest_command)
