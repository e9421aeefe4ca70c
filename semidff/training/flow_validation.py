"""Stage 2's per-epoch validation, as plain PyTorch: how much propagation beats copying, and the mAP.

    sums = regression_error_sums(student, batches, to_pair_batches)      # (Σ ||f̂ - f||², Σ ||f_k - f||²)
    metrics = {"val/regression_error_vs_copy": sums[0] / sums[1]}          # < 1: propagation helps
    metrics["val/mAP"] = flow_map(cfg, student, "runs/flow/validation/epoch_001")

Both run on the held-out videos (``training.validation_fraction`` of the pairs; ``evaluation.data``
for the mAP, flow mode at ΔT = ``video.key_interval`` on its first ``training.validation_max_videos``
videos). A worker group sums the error sums over its ranks before dividing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from semidff.config import Config
from semidff.teacher_targets import PairBatch
from semidff.training.flow_step import regression_error_terms
from semidff.training.flow_step import Student


@torch.no_grad()
def regression_error_sums(
    student: Student, batches: Iterable[Mapping[str, Any]], to_pair_batches: Callable[[Mapping[str, Any]], list[PairBatch]]
) -> tuple[float, float]:
    """(Σ ||f̂_p - f_p||², Σ ||f_k - f_p||²) over every pair of ``batches`` (propagated error, copy
    error); the student is in eval mode meanwhile and back in train mode after."""
    student.eval()
    propagated_error = copy_error = 0.0
    try:
        for numpy_batch in batches:
            for batch in to_pair_batches(numpy_batch):
                numerator, denominator = regression_error_terms(student, batch)
                propagated_error += numerator
                copy_error += denominator
    finally:
        student.train()
    return propagated_error, copy_error


def flow_map(cfg: Config, student: Student, output_dir: str | Path) -> float:
    """mAP@0.5 (0-1) of the student in ``flow`` mode at ΔT = ``video.key_interval`` on
    ``evaluation.data`` (its first ``training.validation_max_videos`` videos); the evaluation's
    table, results and predictions go to ``output_dir``."""
    from semidff.data.labeled import load_labeled_dataset
    from semidff.data.records import LabeledDataset
    from semidff.evaluation.report import write_outputs
    from semidff.evaluation.run import category_ids, evaluate_runs, plan_runs

    data = cfg.evaluation.data
    dataset = load_labeled_dataset(data, cfg.model.num_classes, key="evaluation.data")
    if cfg.training.validation_max_videos is not None:
        dataset = LabeledDataset(dataset.class_names, dataset.videos[: cfg.training.validation_max_videos])
    runs = plan_runs(["flow"], [cfg.video.key_interval])
    student.eval()
    try:
        results = evaluate_runs(
            dataset, runs, student.rfcn, student.rfcn, student.propagator,
            short_side=cfg.preprocess.short_side, max_long_side=cfg.preprocess.max_long_side,
            relaxed_small_objects=cfg.evaluation.relaxed_small_objects,
        )
    finally:
        student.train()
    write_outputs(results, output_dir, category_ids(data, dataset), [f"validation: flow mode at ΔT {cfg.video.key_interval}"])
    return float(results[0].map)
