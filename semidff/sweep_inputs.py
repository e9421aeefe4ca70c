"""A sweep's inputs, checked before any Ray work: the metric it optimises, every trial's config
against the cache and the teacher, and the sweep's identity for a resume (``jobs/tune.py`` uses them).

    check_metric(cfg)                                                  # ConfigError naming the fix
    space = parse_search_space(cfg, check=trial_checker("runs/cache", "teacher.pt"))
    config_digest(cfg) == earlier_digest                               # the same sweep, resumable
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

from semidff.config import Config, ConfigError


def known_metrics(cfg: Config) -> dict[str, str]:
    """{metric name: what reports it} for the metrics a trial reports each epoch."""
    from semidff.training.flow_step import LOSS_TERMS

    metrics = {f"train/{term}": "train_flow (mean over the epoch)" for term in LOSS_TERMS}
    metrics["train/pairs_per_s_per_worker"] = "train_flow"
    metrics["val/regression_error_vs_copy"] = "train_flow's validation (training.validation_fraction > 0)"
    metrics["val/mAP"] = "train_flow's validation mAP at ΔT (evaluation.data.path set)"
    return metrics


def check_metric(cfg: Config) -> None:
    """The sweep's metric must be one a trial reports with this config."""
    metric, known = cfg.tune.metric, known_metrics(cfg)
    if metric not in known:
        raise ConfigError(f"tune.metric={metric!r} is not reported by a trial; use one of: {', '.join(sorted(known))}")
    if metric == "val/regression_error_vs_copy" and cfg.training.validation_fraction <= 0:
        raise ConfigError(f"tune.metric={metric} needs held-out videos: set training.validation_fraction > 0 (e.g. 0.1)")
    if metric == "val/mAP" and not cfg.evaluation.data.path:
        raise ConfigError("tune.metric=val/mAP needs labeled validation videos: set evaluation.data.path (and evaluation.data.format)")
    if metric == "val/mAP" and cfg.tune.mode != "max":
        raise ConfigError("tune.metric=val/mAP is better when higher: set tune.mode=max")


def trial_checker(cache_dir: str, teacher_checkpoint: str) -> Callable[[Config], None]:
    """A check of one trial's config against the cache and teacher (train_flow's own input
    checks: schedule, key interval vs. the cache's offsets, teacher architecture), run once per
    distinct training-relevant setting."""
    from semidff.training.flow_inputs import check_inputs

    checked: set[str] = set()

    def check(trial_cfg: Config) -> None:
        relevant = trial_cfg.model_dump(mode="json")
        key = json.dumps({k: relevant[k] for k in ("model", "preprocess", "video", "training")}, sort_keys=True)
        if key not in checked:
            check_inputs(trial_cfg, cache_dir, teacher_checkpoint, None)
            checked.add(key)

    return check


def config_digest(cfg: Config) -> str:
    """The sweep's identity on resume: everything but where it runs and logs."""
    settings = cfg.model_dump(mode="json")
    settings.pop("ray", None)
    settings["mlflow"].pop("tracking_uri", None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()


def config_value(cfg: Config, key: str) -> Any:
    """The value of a dotted key in ``cfg``."""
    node: Any = cfg.model_dump(mode="json")
    for part in key.split("."):
        node = node[part]
    return node
