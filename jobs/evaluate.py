"""Evaluate a teacher (``frame``, ``copy`` mode) and a flow model (``flow`` mode) on labeled video:
ImageNet VID mAP@0.5, per-class AP, motion-bucket mAPs and frames/s for every mode and key interval.
``oracle`` mode runs the teacher with its key-frame features warped by the true motion, on a
generated corpus that stores it (``semidff.data.synthetic_motion``): the ceiling of any learned flow.

    python -m jobs.evaluate -c jobs/configs/tiny.yaml --teacher out/teacher/teacher.pt --flow out/flow/flow.pt \\
        -o out/eval evaluation.data.path=data/synthetic/dataset.json --modes frame,copy,flow --key-intervals 1,5,10
    semidff evaluate --teacher ... --flow ... -o out/eval -c ...            # the same command
    semidff evaluate --teacher ... -o out/eval -c ... evaluation.data.path=runs/motion_val/dataset.json \
        --modes frame,copy,oracle --key-intervals 1,5,10,20                    # + the true-motion ceiling

The config must describe the checkpoints' models (pass the config they were trained with): a
checkpoint whose ``model`` section differs is refused with the differing keys. The dataset is
``evaluation.data`` (format custom | imagenet_vid | imagenet_det | youtube_bb, path, split). Outputs
(``semidff.evaluation.report``) and the resolved ``config.yaml`` go to the output folder, and all of
it to one MLflow run (stage ``evaluate``) with the dataset and both checkpoints as inputs.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import typer

from jobs.cli_common import CONFIG_OPTION, OVERRIDES_ARGUMENT, echo_progress, exit_on, resolve_config, run_module
from semidff.checkpoint import PROPAGATOR_KEYS, ModelCheckpoint, ModelCheckpointError, check_same_model, load_model_checkpoint
from semidff.config import Config, ConfigError
from semidff.data.labeled import LabeledDataError, annotations_digest, dataset_digest, load_labeled_dataset
from semidff.data.records import LabeledDataset
from semidff.evaluation.report import EvaluationReport, format_report, metrics_for, write_outputs
from semidff.evaluation.run import EvaluationError, category_ids, evaluate_runs, plan_runs, true_motions_for

Progress = Callable[[str], None]
STAGE = "evaluate"
CONFIG_FILE = "config.yaml"


def _load_flow(path: str, teacher: ModelCheckpoint, cfg: Config, say: Progress) -> ModelCheckpoint:
    flow = load_model_checkpoint(path, expected_kind="flow")
    missing = [name for name in ("rfcn", "propagator") if name not in flow.state_dicts]
    if missing:
        raise ModelCheckpointError(f"checkpoint {path} has no {' / '.join(missing)} weights (has: {sorted(flow.state_dicts)}); "
                                   "a flow checkpoint (semidff train) holds 'rfcn' and 'propagator'")
    check_same_model(flow, cfg)
    distilled_from = flow.meta.get("teacher_sha256")
    if distilled_from and distilled_from != teacher.sha256:
        say(f"note: {path} was distilled from teacher {str(distilled_from)[:12]}, not from {teacher.path} "
            f"({teacher.sha256[:12]}); frame/copy and flow rows compare different teachers")
    return flow


def run(
    cfg: Config,
    teacher_checkpoint: str,
    flow_checkpoint: str | None,
    output_dir: str,
    modes: Optional[Sequence[str]] = None,
    key_intervals: Optional[Sequence[int]] = None,
    max_videos: Optional[int] = None,
    progress: Optional[Progress] = None,
) -> EvaluationReport:
    """Evaluate every (mode, ΔT) and write the report, predictions, plot and config to ``output_dir``.

    modes / key_intervals: default ``cfg.evaluation.modes`` / ``.key_intervals``. ``flow`` mode
    needs ``flow_checkpoint``. max_videos: only the dataset's first N videos. progress: receives
    one line per video and per run. Raises EvaluationError, LabeledDataError (the dataset),
    ModelCheckpointError or ConfigError, naming the input, before any compute when an input is unusable.
    """
    import mlflow
    import torch

    from semidff.checkpoint import build_teacher
    from semidff.models.build import build_propagator
    from semidff.preprocess import resolve_device
    from semidff.tracking import log_input_dataset, producer_run_id, record_output, stage_run, tracking_uri_for

    say = progress or (lambda line: None)
    modes = list(modes or cfg.evaluation.modes)
    key_intervals = list(key_intervals or cfg.evaluation.key_intervals)
    runs = plan_runs(modes, key_intervals)  # checks both lists
    if max_videos is not None and max_videos < 1:
        raise EvaluationError(f"max_videos={max_videos}: must be >= 1 (or None for every video)")
    cfg = cfg.model_copy(deep=True)
    cfg.evaluation.modes = list(dict.fromkeys(modes))
    cfg.evaluation.key_intervals = sorted({int(k) for k in key_intervals})

    # Inputs, all checked before any compute.
    teacher = load_model_checkpoint(teacher_checkpoint, expected_kind="teacher")
    check_same_model(teacher, cfg, ignore=PROPAGATOR_KEYS)  # cfg may describe the flow model's propagator
    needs_flow = any(r.mode == "flow" for r in runs)
    if needs_flow and not flow_checkpoint:
        raise EvaluationError("mode 'flow' needs a flow checkpoint (--flow FLOW.pt, written by `semidff train`); "
                              "or leave flow out of --modes / evaluation.modes")
    flow = _load_flow(flow_checkpoint, teacher, cfg, say) if flow_checkpoint else None
    if flow is not None and not needs_flow:
        say(f"note: {flow_checkpoint} is not used: no flow mode among {', '.join(r.name for r in runs)}")
        flow = None
    data = cfg.evaluation.data
    dataset = load_labeled_dataset(data, cfg.model.num_classes, key="evaluation.data")
    if max_videos is not None:
        dataset = LabeledDataset(dataset.class_names, dataset.videos[:max_videos])
    if not dataset.videos:
        raise EvaluationError(f"evaluation.data ({data.format} at {data.path}) holds no videos to evaluate")
    if dataset.num_classes() != cfg.model.num_classes:
        raise EvaluationError(
            f"evaluation.data ({data.path}) has {dataset.num_classes()} classes but the model predicts "
            f"{cfg.model.num_classes} (model.num_classes); evaluate on the classes the model was trained for"
        )
    trained_names = teacher.meta.get("class_names")
    if isinstance(trained_names, list) and [str(n) for n in trained_names] != dataset.class_names:
        say(f"note: the teacher was trained on classes {trained_names}, the dataset names {dataset.class_names}; "
            "labels are matched by position")
    motions = true_motions_for(dataset) if any(r.mode == "oracle" for r in runs) else None
    ids = category_ids(data, dataset)
    data_path = Path(data.path).expanduser()
    scored_digest = annotations_digest(dataset)  # what was scored (max_videos included)
    data_digest = dataset_digest(data, dataset)  # the annotation file: the digest stage 1 logs for the same data

    try:
        device = resolve_device(cfg.device)
    except RuntimeError as exc:  # device=cuda on a machine without one
        raise EvaluationError(str(exc)) from None
    teacher_rfcn = build_teacher(teacher, device)
    student_rfcn = propagator = None
    if needs_flow:
        student_rfcn = build_teacher(flow, device)
        propagator = build_propagator(flow.config.model)
        try:
            propagator.load_state_dict(flow.state_dicts["propagator"])
        except RuntimeError as exc:
            raise ModelCheckpointError(f"checkpoint {flow.path}: propagator weights do not fit its config: {exc}") from None
        propagator = propagator.to(device).eval()

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    config_path = output / CONFIG_FILE
    config_path.write_text(cfg.to_yaml(), encoding="utf-8")
    annotated = sum(len(v.frames) for v in dataset.videos)
    header = [
        f"dataset: {data.format} {data.path}{f' (split {data.split})' if data.format.startswith('imagenet') else ''}: "
        f"{len(dataset.videos)} videos, {annotated} annotated frames, "
        f"{dataset.num_classes()} classes" + (f" (first {max_videos} videos)" if max_videos else ""),
        f"teacher: {teacher.path} (sha256 {teacher.sha256[:12]})",
        *([f"flow: {flow.path} (sha256 {flow.sha256[:12]})"] if flow else []),
        f"device: {device}, torch threads: {torch.get_num_threads()}",
    ]
    say(f"evaluating {len(runs)} runs ({', '.join(r.name for r in runs)}) on {len(dataset.videos)} videos, "
        f"{annotated} annotated frames, device {device}")

    tracking_uri = tracking_uri_for(cfg, output)
    tags = {"semidff.evaluation.runs": ",".join(r.name for r in runs),
            "semidff.evaluation.annotations_digest": scored_digest,
            "semidff.evaluation.max_videos": str(max_videos)}
    with stage_run(cfg, STAGE, output, tags=tags) as active:
        log_input_dataset("evaluation_data", data_path, data_digest, context="evaluation", producer_run_id=producer_run_id(data_path))
        for name, checkpoint in (("teacher", teacher), ("flow", flow)):
            if checkpoint is not None:
                log_input_dataset(name, checkpoint.path, checkpoint.sha256, context="model",
                                  producer_run_id=producer_run_id(Path(checkpoint.path)))
        results = evaluate_runs(
            dataset, runs, teacher_rfcn, student_rfcn, propagator,
            short_side=cfg.preprocess.short_side, max_long_side=cfg.preprocess.max_long_side,
            relaxed_small_objects=cfg.evaluation.relaxed_small_objects, progress=say, motions=motions,
        )
        files = write_outputs(results, output, ids, header)
        files["config"] = config_path
        mlflow.log_metrics(metrics_for(results))
        for result in results:  # the same numbers with ΔT as the step: MLflow draws them against ΔT
            for name, value in ((f"mAP/{result.mode}", result.map), (f"fps/{result.mode}", result.fps)):
                if not math.isnan(value):
                    mlflow.log_metric(name, value, step=result.key_interval)
        for key, path in files.items():
            if key != "config":  # stage_run logged the config already
                mlflow.log_artifact(str(path), artifact_path="predictions" if key.startswith("predictions/") else None)
        run_id = active.info.run_id
        record_output(output, run_id, STAGE, tracking_uri)
    say(f"wrote {files['table']}, {files['plot']} and {len(results)} prediction files to {output} (MLflow run {run_id})")
    return EvaluationReport(results=results, output_dir=output, table=format_report(results, header), files=files,
                            run_id=run_id, tracking_uri=tracking_uri)


def _comma_list(text: str, kind: type, what: str) -> list:
    try:
        values = [kind(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise EvaluationError(f"{what}={text!r}: expected a comma-separated list of {kind.__name__}s, e.g. "
                              + ("frame,copy,flow" if kind is str else "1,5,10")) from None
    if not values:
        raise EvaluationError(f"{what}={text!r}: the list is empty")
    return values


def parse_modes(text: Optional[str]) -> Optional[list[str]]:
    """``"frame,copy"`` → ["frame", "copy"]; None stays None (the config's modes)."""
    return None if text is None else _comma_list(text, str, "--modes")


def parse_key_intervals(text: Optional[str]) -> Optional[list[int]]:
    """``"1,5,10"`` → [1, 5, 10]; None stays None (the config's key intervals)."""
    return None if text is None else _comma_list(text, int, "--key-intervals")


# ---------------------------------------------------------------------------------------------
# Command line (`semidff evaluate`, `python -m jobs.evaluate`)


def evaluate_command(
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    teacher: Path = typer.Option(..., "--teacher", help="teacher checkpoint (semidff train-teacher): runs frame and copy mode"),
    flow: Optional[Path] = typer.Option(None, "--flow", help="flow checkpoint (semidff train): its student R-FCN and flow net run flow mode"),
    output: Path = typer.Option(..., "--output", "-o", help="output folder: evaluation.md, results.json, evaluation.png, predictions/, config.yaml"),
    config: Optional[Path] = CONFIG_OPTION,
    modes: Optional[str] = typer.Option(None, "--modes", help="comma-separated modes of frame, copy, flow, oracle (the true motion; generated corpora), e.g. frame,copy,flow (default: evaluation.modes)"),
    key_intervals: Optional[str] = typer.Option(None, "--key-intervals", help="comma-separated ΔTs, e.g. 1,5,10 (default: evaluation.key_intervals)"),
    max_videos: Optional[int] = typer.Option(None, "--max-videos", min=1, help="evaluate only the dataset's first N videos"),
) -> None:
    """ImageNet VID mAP@0.5 (per class, per motion bucket) and frames/s of every mode and key interval on evaluation.data."""
    cfg = resolve_config(config, overrides)
    with exit_on(EvaluationError, LabeledDataError, ModelCheckpointError, ConfigError):
        report = run(
            cfg, str(teacher), str(flow) if flow else None, str(output), parse_modes(modes), parse_key_intervals(key_intervals),
            max_videos, progress=echo_progress,
        )
    typer.echo(report.table)


if __name__ == "__main__":  # pragma: no cover
    run_module(evaluate_command)
