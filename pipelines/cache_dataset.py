"""Training pairs as Ray Datasets: from a teacher cache, or decoded from the manifest's videos on the fly.

    from pipelines.cache_dataset import pair_dataset, pair_datasets
    expected = CacheExpectation.for_training(cfg, teacher_sha256, offset_range=(1, 9))
    ds = pair_dataset("runs/cache", offset_range=(1, 9), expected=expected, split="train", validation_fraction=0.1)
    for batch in ds.iter_batches(batch_size=8, batch_format="numpy"):
        batch["cur_features"]      # object array of 8 (C, h, w) float32 arrays (sizes may differ between rows)
    datasets = pair_datasets(cfg, source, plan, read_cpus=0.5)   # {"train_regression", "train_semantic", "val"}

The pairs, their columns and their order are :mod:`semidff.cache.pairs`'s (which reads them in one
process); here each cache file is one read task. Tensor columns are Ray variable-shaped tensor
columns (R, H, W may differ between rows): with ``iter_batches(batch_format="numpy")`` each is an
object array of per-row arrays; stack rows of the same size to build a batch
(``semidff.training.flow_batch`` does).

The driver checks every file's footer and metadata first (same cache as ``cache_info.json``), then
one read task per file streams it a row group (8 clips) at a time: only the requested columns are
read, JPEG decoding and dequantisation happen in those tasks. Any file that cannot be read raises
CacheFileError naming it; nothing is skipped silently. The reader uses plain tasks from a list
of files (no ``read_parquet``, whose ListFiles step always asks for a whole CPU, which would starve
the reads beside training workers on a small machine); ``num_cpus`` per read task can be a
fraction so that training workers leave room for it.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Iterator, Optional

import pyarrow as pa
import ray
from ray.data.extensions import ArrowVariableShapedTensorArray

from semidff.cache.info import CacheExpectation, CacheInfo
from semidff.cache.pairs import PAIR_COLUMNS, TENSOR_COLUMNS, check_columns, check_pair_request, in_split, pair_row, read_file_pairs
from semidff.config import Config
from semidff.rows import STATUS_OK, ClipRow
from semidff.training.flow_inputs import VALIDATION_SPLIT, PairSource

__all__ = ["PAIR_COLUMNS", "pair_dataset", "pair_datasets", "clip_pairs"]


def pair_dataset(
    cache_dir: str,
    *,
    offset_range: tuple[int, int],
    expected: Optional[CacheExpectation] = None,
    split: str = "all",
    validation_fraction: float = 0.0,
    columns: Optional[list[str]] = None,
    num_cpus: float = 1.0,
) -> "ray.data.Dataset":
    """A lazy dataset with one row per (key, current) pair of the cache at ``cache_dir``.

    offset_range: (lo, hi), inclusive: the pairs with lo <= cur - key <= hi.
    expected: what the caller needs of the cache (CacheMismatchError naming each field otherwise).
    split: "all", "train" (videos not held out) or "val" (videos held out), by
        ``semidff.cache.is_validation_video(video_id, validation_fraction)``.
    columns: the output columns (a subset of PAIR_COLUMNS, in that order); None: all of them.
    num_cpus: per read task.
    Raises CacheError (CacheFileError, CacheMismatchError) before any task runs when the cache,
    one of its files, or the arguments are not usable.
    """
    info, files, offsets = check_pair_request(cache_dir, offset_range, expected, split, validation_fraction)
    output = check_columns(columns)
    return ray.data.from_items([{"path": path} for path in files], override_num_blocks=len(files)).map_batches(
        _read_pairs,
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=num_cpus,
        fn_kwargs=dict(
            cache_dir=cache_dir,
            info_json=info.to_json(),
            offset_range=offsets,
            split=split,
            validation_fraction=validation_fraction,
            columns=output,
        ),
    )


def _read_pairs(batch: pa.Table, *, cache_dir: str, info_json: str, offset_range: tuple[int, int], split: str,
                validation_fraction: float, columns: list[str]) -> Iterator[pa.Table]:
    """Runs in a read task: the pair rows of one cache file, a row group at a time."""
    import json

    info = CacheInfo.from_dict(json.loads(info_json), "the driver's cache record")
    for path in batch.column("path").to_pylist():
        for pairs in read_file_pairs(cache_dir, path, info, offset_range=offset_range, split=split,
                                     validation_fraction=validation_fraction, columns=columns):
            yield pairs_table(pairs, columns)


def pairs_table(pairs: list[dict[str, Any]], columns: list[str]) -> pa.Table:
    """Pair rows as one Arrow table: tensor columns variable-shaped, ids strings and int64."""
    arrays = {}
    for name in columns:
        values = [pair[name] for pair in pairs]
        if name in TENSOR_COLUMNS:
            arrays[name] = ArrowVariableShapedTensorArray.from_numpy(values)
        else:
            arrays[name] = pa.array(values, type=pa.string() if name in ("clip_id", "video_id") else pa.int64())
    return pa.table(arrays)


def clip_pairs(row: dict[str, Any], *, offset_range: tuple[int, int], split: str, validation_fraction: float) -> list[dict[str, Any]]:
    """On the fly: the (key, current) pair rows of one decoded clip row, with d in ``offset_range``
    and the video in ``split`` (as the cache reader splits). Columns as the cache reader's, without
    the teacher's outputs."""
    if row["status"] != STATUS_OK or not in_split(row["video_id"], split, validation_fraction):
        return []
    frames = ClipRow.from_dict(row).frames()
    low, high = offset_range
    return [
        pair_row(row["clip_id"], row["video_id"], row["key_index"], index, key_frame=frames.key_frame, cur_frame=frame)
        for index, offset, frame in zip(frames.clip.current_indices, frames.clip.offsets, frames.current_frames)
        if low <= offset <= high
    ]


def pair_datasets(cfg: Config, source: PairSource, plan: list[str], read_cpus: float = 1.0) -> dict[str, "ray.data.Dataset"]:
    """{"train_<step kind>": pairs of that step's offsets, "val": held-out pairs} as Ray datasets,
    from the teacher cache or (``source.kind == "on_the_fly"``) decoded from the manifest's clips.

    read_cpus: CPUs per cache read task (the training workers' CPUs are not available to them).
    """
    fraction = cfg.training.validation_fraction
    wanted = [(f"train_{step}", "train", source.offsets[step]) for step in dict.fromkeys(plan)]
    if fraction > 0:
        wanted.append((VALIDATION_SPLIT, VALIDATION_SPLIT, source.offsets[VALIDATION_SPLIT]))
    if source.kind == "cache":
        return {
            name: pair_dataset(source.location, offset_range=offsets, split=split, validation_fraction=fraction, num_cpus=read_cpus)
            for name, split, offsets in wanted
        }

    from pipelines.clips import clip_dataset_from_config
    from pipelines.teacher_cache import prepare_clips

    compute = ray.data.TaskPoolStrategy(size=cfg.clips.max_concurrent_tasks) if cfg.clips.max_concurrent_tasks else None
    datasets = {}
    for name, split, offsets in wanted:
        # The cache's JPEG round trip, fused into the decode tasks: both modes train on the same pixels.
        frames = clip_dataset_from_config(source.location, cfg).map_batches(
            prepare_clips, batch_size=None, batch_format="pyarrow", num_cpus=cfg.clips.num_cpus, compute=compute,
            fn_kwargs=dict(done=None, jpeg_quality=cfg.cache.jpeg_quality),
        )
        datasets[name] = frames.flat_map(
            partial(clip_pairs, offset_range=offsets, split=split, validation_fraction=fraction),
            num_cpus=cfg.clips.num_cpus, compute=compute,
        )
    return datasets
