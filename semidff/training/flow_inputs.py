"""Stage 2's inputs, checked before any Ray work: the teacher, the schedule, and where the pairs come from.

    teacher, plan, source = check_inputs(cfg, cache_dir="runs/cache", teacher_checkpoint="teacher.pt")
    source.offsets["regression"]   # (1, ΔT - 1): the d = current - key range step A trains on
    name = default_run_name(cfg, teacher.sha256, source)      # the same command resumes the same run

``training.teacher_source=cache`` reads the teacher cache of ``semidff cache``, checked against this
run (teacher checksum, preprocessing, offsets); ``on_the_fly`` decodes the manifest's clips and runs
the frozen teacher inside the training workers.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from semidff.checkpoint import PROPAGATOR_KEYS, ModelCheckpoint, check_same_model, file_sha256, load_model_checkpoint
from semidff.config import Config, ConfigError, load_config
from semidff.training.flow_step import StepKind, epoch_plan, step_offsets

VALIDATION_SPLIT = "val"
# What may change between a run and its resume (and so is left out of a run's identity).
RESUMABLE_CHANGES = ("ray", "mlflow", "training.max_failures")


class FlowTrainingError(ValueError):
    """An input of the flow training is missing or unusable; the message names it and the fix."""


@dataclass
class PairSource:
    """Where the training pairs come from.

    kind: "cache" or "on_the_fly"; location: the cache or manifest folder; digest: its identity for
    MLflow (``semidff.cache.files.cache_digest``, or the manifest file's SHA-256); offsets: the
    (lo, hi) range of d each step kind trains on, and "val" the validation range [1, ΔT - 1].
    """

    kind: str
    location: str
    digest: str
    producer_run_id: Optional[str]
    offsets: dict[str, tuple[int, int]]


def check_inputs(
    cfg: Config, cache_dir: Optional[str], teacher_checkpoint: str, manifest_dir: Optional[str] = None
) -> tuple[ModelCheckpoint, list[StepKind], PairSource]:
    """Load the teacher and check the schedule and the data source against the config.

    Returns (teacher checkpoint, the step kind of every epoch, the pair source). Raises
    ConfigError (schedule, key interval, model), ModelCheckpointError (teacher), CacheError
    (cache mismatch) or FlowTrainingError (missing inputs), each naming the input and the fix.
    """
    from semidff.cache.files import cache_digest
    from semidff.cache.info import CacheExpectation, read_cache_info
    import pyarrow.parquet as pq

    from semidff.rows import MANIFEST_FILE, ManifestRow, NoUsableVideoError, usable_videos
    from semidff.tracking import producing_run

    plan = epoch_plan(cfg.training)
    teacher_path = Path(teacher_checkpoint).expanduser()
    if not teacher_path.is_file():
        raise FlowTrainingError(f"teacher checkpoint {teacher_checkpoint} does not exist (semidff train-teacher writes teacher.pt)")
    teacher = load_model_checkpoint(teacher_path, expected_kind="teacher")
    check_same_model(teacher, cfg, keys=("model",), ignore=PROPAGATOR_KEYS)  # the flow net is this run's to choose
    offsets = {step: step_offsets(step, cfg.video.key_interval) for step in dict.fromkeys(plan)}
    offsets[VALIDATION_SPLIT] = step_offsets("regression", cfg.video.key_interval)

    if cfg.training.teacher_source == "cache":
        if not cache_dir:
            raise FlowTrainingError(
                "training.teacher_source=cache needs --cache DIR (built by semidff cache); without a cache, "
                "pass --manifest DIR and training.teacher_source=on_the_fly"
            )
        info = read_cache_info(cache_dir)
        low, high = info.offset_range
        key_interval = cfg.video.key_interval
        if key_interval - 1 > high:
            raise ConfigError(
                f"video.key_interval={key_interval} propagates up to d = {key_interval - 1} frames, but the cache {cache_dir} "
                f"sampled d in [{low}, {high}]: use video.key_interval <= {high + 1}, or build a cache with "
                f"clips.offset_range=[0, {key_interval - 1}]"
            )
        if low == 1:  # a cache without d = 0 pairs serves step B from d = 1 (d = 0 only trains the heads)
            offsets = {step: (max(lo, 1), hi) for step, (lo, hi) in offsets.items()}
        for step_range in offsets.values():
            CacheExpectation.for_training(cfg, teacher.sha256, step_range).check(info, cache_dir)
        digest = cache_digest(cache_dir)
        produced = producing_run(cache_dir) if "://" not in cache_dir else None
        return teacher, plan, PairSource(
            kind="cache",
            location=cache_dir,
            digest=digest,
            producer_run_id=produced.get("run_id") if produced else None,
            offsets=offsets,
        )

    if not manifest_dir:
        raise FlowTrainingError(
            "training.teacher_source=on_the_fly needs --manifest DIR (built by semidff manifest): the clips are decoded from its videos"
        )
    manifest = Path(manifest_dir).expanduser() / MANIFEST_FILE
    if not manifest.is_file():
        raise FlowTrainingError(f"{manifest_dir}: no {MANIFEST_FILE} there (build it with semidff manifest VIDEOS -o {manifest_dir})")
    try:
        usable_videos(ManifestRow.from_arrow(pq.read_table(manifest)), manifest_dir)
    except NoUsableVideoError as exc:
        raise FlowTrainingError(f"{exc}; nothing to train on") from None
    low, high = cfg.clips.offset_range
    needed = max(hi for _, hi in offsets.values())
    if high < needed or low > 1:
        raise ConfigError(
            f"video.key_interval={cfg.video.key_interval} trains on d = current - key in [1, {needed}] (step B also d = 0), "
            f"but clips.offset_range=[{low}, {high}] samples other pairs: set clips.offset_range=[0, {needed}] "
            f"(or a key interval <= {high + 1})"
        )
    offsets = {step: (max(lo, low), hi) for step, (lo, hi) in offsets.items()}
    produced = producing_run(manifest_dir)
    return teacher, plan, PairSource(
        kind="on_the_fly",
        location=str(Path(manifest_dir).expanduser().resolve()),
        digest=file_sha256(manifest),
        producer_run_id=produced.get("run_id") if produced else None,
        offsets=offsets,
    )


def _run_settings(cfg: Config) -> dict:
    """The config as a dict, without what may change between a run and its resume."""
    settings = cfg.model_dump(mode="json")
    for section in ("ray", "mlflow"):
        settings.pop(section, None)
    settings["training"].pop("max_failures")
    return settings


def default_run_name(cfg: Config, teacher_sha256: str, source: PairSource) -> str:
    """``flow-<schedule>-<10 hex>``, fixed by the config (less :data:`RESUMABLE_CHANGES`), the
    teacher and the data: the same command gets the same name (so it resumes), a changed one
    starts a new run."""
    identity = json.dumps([_run_settings(cfg), teacher_sha256, source.kind, source.digest], sort_keys=True)
    return f"flow-{cfg.training.schedule}-{hashlib.sha256(identity.encode('utf-8')).hexdigest()[:10]}"


def refuse_changed_config(cfg: Config, run_dir: Path) -> None:
    """A rerun with the same run name continues its checkpoints: the config must be the one the run
    started with (written to ``<run_dir>/config.yaml``), but for :data:`RESUMABLE_CHANGES`."""
    from semidff.tracking import flatten

    earlier = run_dir / "config.yaml"
    if not earlier.is_file():
        return
    old, new = flatten(_run_settings(load_config(earlier))), flatten(_run_settings(cfg))
    changed = [f"{key}: {old.get(key)} -> {new.get(key)}" for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    if changed:
        raise ConfigError(
            f"the run {run_dir.name} in {run_dir.parent} was started with another config, so it cannot be resumed:\n  "
            + "\n  ".join(changed[:12])
            + "\nUse its config again, or another run name (--run-name) or output folder for a new run."
        )
