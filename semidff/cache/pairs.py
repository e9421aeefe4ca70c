"""The (key, current) training pairs of a teacher cache, read with pyarrow alone (no Ray).

    pairs = check_pair_request("runs/cache", offset_range=(1, 9))            # checks every file's footer
    for batch in local_pair_batches("runs/cache", offset_range=(1, 9), batch_size=8, split="train",
                                    validation_fraction=0.1):
        batch["cur_features"]      # (8, C, h, w) float32 when the rows share a size, else an object array

One pair per (key frame, current frame) of every ok clip whose offset ``d = cur - key`` lies in
``offset_range`` (inclusive), so one cache sampled at d in [0, 9] serves step A (d in [1, 9]) and
step B (d in [0, 9]) of key interval 10, and any shorter interval. A pair is a dict with the
columns of :data:`PAIR_COLUMNS` (:func:`pair_row` builds it, for cached and decoded clips alike):

| column | type |
|---|---|
| clip_id, video_id | str |
| key_index, cur_index, offset | int (frame indices in the video; offset = cur_index - key_index) |
| key_frame, cur_frame | uint8 (H, W, 3) RGB at network-input size, decoded from the stored JPEG |
| key_features, cur_features | float32 (C, h, w), dequantised |
| rpn_cls_logits, rpn_deltas | float32 (2A, h, w), (4A, h, w): the teacher's RPN outputs on the current frame |
| rois | float32 (R, 4) x1, y1, x2, y2 in network-input pixels: the teacher's proposals on the current frame |
| cls_logits, box_deltas | float32 (R, K + 1), (R, 8): the teacher's R-FCN outputs on those RoIs |

``pipelines.cache_dataset.pair_dataset`` reads the same pairs as a Ray Dataset, one read task per
file; :func:`local_pair_batches` reads them in this process, in file and row order, for a
notebook or a test of stage 2 without Ray. Any file that cannot be read raises CacheFileError
naming it; nothing is skipped silently.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import numpy as np

from semidff.cache.files import FIX_HINT, check_file_matches, list_cache_files, open_cache_file, read_columns
from semidff.cache.format import SOFT_TARGETS, STATUS_OK, BlobLayout, current_features_of, key_features_of, soft_target_of
from semidff.cache.info import CacheError, CacheExpectation, CacheFileError, CacheInfo, cache_location, read_cache_info
from semidff.cache.jpeg import decode_jpeg
from semidff.cache.split import check_split, is_validation_video

ID_COLUMNS = ("clip_id", "video_id", "key_index", "cur_index", "offset")
TARGET_COLUMNS = SOFT_TARGETS
TENSOR_COLUMNS = ("key_frame", "cur_frame", "key_features", "cur_features") + TARGET_COLUMNS
PAIR_COLUMNS = ID_COLUMNS + TENSOR_COLUMNS
_SELECT_COLUMNS = ["clip_id", "video_id", "key_index", "current_indices", "offsets", "status"]
# Stored columns each output column needs (besides the selection columns).
_STORED_FOR = {
    "key_frame": ["key_jpeg"],
    "cur_frame": ["current_jpegs"],
    "key_features": ["feature_height", "feature_width", "key_from_current", "key_features", "key_feature_scales", "current_features", "current_feature_scales"],
    "cur_features": ["feature_height", "feature_width", "current_features", "current_feature_scales"],
    **{name: ["feature_height", "feature_width", "num_rois", name] for name in TARGET_COLUMNS},
}


def pair_row(clip_id: str, video_id: str, key_index: int, cur_index: int, **tensors: Any) -> dict[str, Any]:
    """One pair's row: its ids (offset = cur_index - key_index) and the given tensor columns.

    The one place a pair row is made, for cached clips (here) and for clips decoded on the fly
    (``pipelines.cache_dataset.clip_pairs``).
    """
    unknown = sorted(set(tensors) - set(TENSOR_COLUMNS))
    if unknown:
        raise ValueError(f"pair_row: unknown columns {unknown}; choose from {', '.join(TENSOR_COLUMNS)}")
    key_index, cur_index = int(key_index), int(cur_index)
    return dict(clip_id=str(clip_id), video_id=str(video_id), key_index=key_index, cur_index=cur_index,
                offset=cur_index - key_index, **tensors)


def check_offsets(offset_range: Sequence[int]) -> tuple[int, int]:
    """(lo, hi) as two ints with 0 <= lo <= hi (ValueError otherwise)."""
    try:
        low, high = (int(d) for d in offset_range)
    except (TypeError, ValueError):
        raise ValueError(f"offset_range={offset_range!r}: expected (lo, hi), two integers") from None
    if low < 0 or high < low:
        raise ValueError(f"offset_range={offset_range!r}: must be (lo, hi) with 0 <= lo <= hi")
    return low, high


def check_columns(columns: Optional[Sequence[str]]) -> list[str]:
    """The requested pair columns in :data:`PAIR_COLUMNS` order (all when None)."""
    if columns is None:
        return list(PAIR_COLUMNS)
    unknown = [name for name in columns if name not in PAIR_COLUMNS]
    if unknown or not columns:
        raise ValueError(f"columns={list(columns)!r}: {'unknown ' + ', '.join(unknown) if unknown else 'empty'}; choose from {', '.join(PAIR_COLUMNS)}")
    return [name for name in PAIR_COLUMNS if name in set(columns)]


def check_pair_request(
    cache_dir: str,
    offset_range: Sequence[int],
    expected: Optional[CacheExpectation] = None,
    split: str = "all",
    validation_fraction: float = 0.0,
) -> tuple[CacheInfo, list[str], tuple[int, int]]:
    """Check a request for pairs before reading any: (the cache's record, its files, (lo, hi)).

    Every file's footer and metadata are read (a truncated or foreign file stops here, by name).
    Raises CacheError (CacheFileError, CacheMismatchError) or ValueError naming what is wrong.
    """
    low, high = check_offsets(offset_range)
    check_split(split, validation_fraction)
    info = read_cache_info(cache_dir)
    if expected is not None:
        expected.check(info, cache_dir)
    cache_low, cache_high = info.offset_range
    if high < cache_low or low > cache_high:
        raise CacheError(f"{cache_dir}: offset_range [{low}, {high}] selects no pair: the cache sampled offsets [{cache_low}, {cache_high}]")
    filesystem, _ = cache_location(cache_dir)
    files = list_cache_files(cache_dir)
    if not files:
        raise CacheError(f"{cache_dir}: the cache holds no part-*.parquet file yet (build it with semidff cache)")
    for path in files:
        check_file_matches(open_cache_file(filesystem, path), path, info)
    return info, files, (low, high)


def in_split(video_id: str, split: str, fraction: float) -> bool:
    """Whether a video belongs to ``split`` ("all", "train", "val"), as every reader splits."""
    if split == "all":
        return True
    return is_validation_video(video_id, fraction) == (split == "val")


def read_file_pairs(
    cache_dir: str,
    path: str,
    info: CacheInfo,
    *,
    offset_range: tuple[int, int],
    split: str,
    validation_fraction: float,
    columns: Sequence[str],
) -> Iterator[list[dict[str, Any]]]:
    """The pair rows (only ``columns``) of one cache file, one list per row group (8 clips)."""
    layout = BlobLayout.of(info)
    filesystem, _ = cache_location(cache_dir)
    stored = sorted({name for column in columns for name in _STORED_FOR.get(column, [])})
    num_row_groups = open_cache_file(filesystem, path).metadata.num_row_groups
    for group in range(num_row_groups):
        selection = read_columns(filesystem, path, _SELECT_COLUMNS, [group]).to_pylist()
        chosen = [
            (i, j)
            for i, row in enumerate(selection)
            if row["status"] == STATUS_OK and in_split(row["video_id"], split, validation_fraction)
            for j, d in enumerate(row["offsets"])
            if offset_range[0] <= d <= offset_range[1]
        ]
        if not chosen:
            continue
        blobs = read_columns(filesystem, path, stored, [group]).to_pylist() if stored else [{} for _ in selection]
        try:
            yield _pairs_of(selection, blobs, chosen, columns, layout, path)
        except CacheFileError:
            raise
        except CacheError as exc:  # a blob of the wrong size: the file is damaged or foreign
            raise CacheFileError(f"{path}: {exc}; {FIX_HINT}") from None


def _pairs_of(selection: list[dict], blobs: list[dict], chosen: list[tuple[int, int]], columns: Sequence[str],
              layout: BlobLayout, path: str) -> list[dict[str, Any]]:
    """The chosen (row, current frame) pairs of one row group; a clip's key frame and key
    features are decoded once for all its pairs."""
    wanted = set(columns)
    shared: dict[int, dict[str, np.ndarray]] = {}
    pairs = []
    for i, j in chosen:
        ids, row = selection[i], dict(blobs[i], **selection[i])
        clip = shared.setdefault(i, {})
        tensors: dict[str, Any] = {}
        if "key_frame" in wanted:
            if "key_frame" not in clip:
                clip["key_frame"] = _decode(row["key_jpeg"], path, ids["clip_id"])
            tensors["key_frame"] = clip["key_frame"]
        if "cur_frame" in wanted:
            tensors["cur_frame"] = _decode(row["current_jpegs"][j], path, ids["clip_id"])
        if "key_features" in wanted:
            if "key_features" not in clip:
                clip["key_features"] = key_features_of(row, layout)
            tensors["key_features"] = clip["key_features"]
        if "cur_features" in wanted:
            tensors["cur_features"] = current_features_of(row, j, layout)
        for name in TARGET_COLUMNS:
            if name in wanted:
                tensors[name] = soft_target_of(row, j, layout, name)
        full = pair_row(ids["clip_id"], ids["video_id"], ids["key_index"], ids["current_indices"][j], **tensors)
        pairs.append({name: full[name] for name in columns})
    return pairs


def _decode(data: bytes, path: str, clip_id: str) -> np.ndarray:
    try:
        return decode_jpeg(data)
    except ValueError as exc:
        raise CacheFileError(f"{path}: clip {clip_id}: {exc}; {FIX_HINT}") from None


def numpy_batches(pairs: Iterator[dict[str, Any]], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Pair rows -> dicts of columns of ``batch_size`` rows (the last may be smaller), as Ray's
    ``iter_batches(batch_format="numpy")`` hands them: a column whose rows share one shape is
    stacked (N, ...), a ragged one is an object array of per-row arrays."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    rows: list[dict[str, Any]] = []
    for pair in pairs:
        rows.append(pair)
        if len(rows) == batch_size:
            yield _columns(rows)
            rows = []
    if rows:
        yield _columns(rows)


def _columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    out = {}
    for name in rows[0]:
        values = [row[name] for row in rows]
        if name in TENSOR_COLUMNS and len({np.shape(v) for v in values}) > 1:
            column = np.empty(len(values), dtype=object)
            column[:] = values
            out[name] = column
        else:
            out[name] = np.stack(values) if name in TENSOR_COLUMNS else np.asarray(values)
    return out


def local_pair_batches(
    cache_dir: str,
    offset_range: Sequence[int],
    batch_size: int,
    *,
    expected: Optional[CacheExpectation] = None,
    split: str = "all",
    validation_fraction: float = 0.0,
    columns: Optional[Sequence[str]] = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Every pair of the cache in ``split`` with d in ``offset_range``, as numpy batches, read in
    this process (files in name order, rows in file order). Checks as :func:`check_pair_request`."""
    info, files, offsets = check_pair_request(cache_dir, offset_range, expected, split, validation_fraction)
    output = check_columns(columns)

    def pairs() -> Iterator[dict[str, Any]]:
        for path in files:
            for group in read_file_pairs(cache_dir, path, info, offset_range=offsets, split=split,
                                         validation_fraction=validation_fraction, columns=output):
                yield from group

    return numpy_batches(pairs(), batch_size)
