"""The clip plan of a manifest, before anything is decoded (``clips.*`` keys).

    semidff clips runs/manifest -c jobs/configs/tiny.yaml clips.offset_range=[1,9]
    python -m jobs.clips runs/manifest clips.key_frames_per_second=2     # the same command

``run`` is :func:`pipelines.clips.report_clip_plan`: clips, frames decoded per clip and in all,
with keys as planned and on codec keyframes, and the videos too short for any clip. The clips
themselves are decoded by the stages that read them (``pipelines.clips.clip_dataset_from_config``,
used by ``semidff cache`` and ``training.teacher_source=on_the_fly``).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from jobs.cli_common import CONFIG_OPTION, OVERRIDES_ARGUMENT, exit_on, resolve_config, run_module
from pipelines.clips import ClipPlanReport, report_clip_plan
from semidff.config import Config


def run(manifest_dir: str, cfg: Config, *, examples: int = 5) -> ClipPlanReport:
    """Plan the clips of every usable video of the manifest in ``manifest_dir`` as ``cfg`` says and
    count them and their decoding cost (Ray tasks read each container's keyframe index; nothing is
    decoded). Raises ValueError when there is no manifest there."""
    return report_clip_plan(manifest_dir, cfg, examples=examples)


# ---------------------------------------------------------------------------------------------
# Command line (`semidff clips`, `python -m jobs.clips`)


def clips_command(
    manifest_dir: str = typer.Argument(..., help="the manifest stage's output directory (or its manifest.parquet)"),
    config: Optional[Path] = CONFIG_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    examples: int = typer.Option(5, min=0, help="short videos without clips to name"),
) -> None:
    """Report the clip plan of a manifest (clips.* keys): clips, frames decoded per clip and in all, with
    keys as planned and on codec keyframes, and videos too short for any clip. Nothing is decoded."""
    cfg = resolve_config(config, overrides)
    with exit_on(ValueError):  # no manifest there, or a plan argument the config schema let through
        report = run(manifest_dir, cfg, examples=examples)
    typer.echo(report.format())


if __name__ == "__main__":  # pragma: no cover
    run_module(clips_command)
