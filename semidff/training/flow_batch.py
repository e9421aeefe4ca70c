"""Stage 2 input: rows of (key, current) frame pairs → same-size :class:`PairBatch` micro-batches.

The teacher cache's reader (``pipelines.cache_dataset.pair_dataset``) yields one row per pair with
the columns below; ``iter_batches(batch_format="numpy")`` hands a dict of columns to the trainer.
Frame sizes (and so feature and RoI shapes) can differ from row to row, and a PairBatch holds
frames of one size, so a batch becomes one micro-batch per image size (in order of first
appearance); the trainer accumulates their gradients into one optimiser step.

    batches = pair_batches_from_cache(numpy_batch, device)            # cached teacher targets
    batches = pair_batches_on_the_fly(numpy_batch, teacher, device)   # frames only: run the teacher

Columns (per row): ``key_frame``, ``cur_frame`` uint8 (H, W, 3) already resized to the network
input; ``offset`` int64 d = cur - key; with cached targets also ``key_features``, ``cur_features``
float (C, h, w), ``rpn_cls_logits`` (2A, h, w), ``rpn_deltas`` (4A, h, w), ``rois`` (R, 4) x1, y1,
x2, y2 in input pixels, ``cls_logits`` (R, K+1), ``box_deltas`` (R, 8). A column whose rows all
have one shape arrives stacked (N, ...); a ragged one as an object array of per-row arrays.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from semidff.models.rfcn import FEATURE_STRIDE, RFCN
from semidff.preprocess import normalize_frames
from semidff.teacher_targets import ImageTargets, PairBatch, pair_batch_on_the_fly, stack_targets

FRAME_COLUMNS = ("key_frame", "cur_frame", "offset")
TARGET_COLUMNS = ("key_features", "cur_features", "rpn_cls_logits", "rpn_deltas", "rois", "cls_logits", "box_deltas")


def batch_size_of(batch: Mapping[str, Any]) -> int:
    """Rows (pairs) in a numpy batch dict."""
    return len(batch["offset"])


def rows_by_image_size(batch: Mapping[str, Any]) -> list[np.ndarray]:
    """Row indices grouped by the key frame's (H, W), groups in order of first appearance.

    Raises ValueError when a row's current frame differs in size from its key frame.
    """
    _require_columns(batch, FRAME_COLUMNS)
    groups: dict[tuple[int, int], list[int]] = {}
    for row in range(batch_size_of(batch)):
        key_shape = np.shape(batch["key_frame"][row])
        cur_shape = np.shape(batch["cur_frame"][row])
        if key_shape != cur_shape or len(key_shape) != 3 or key_shape[2] != 3:
            raise ValueError(
                f"pair row {row}: key_frame {key_shape} and cur_frame {cur_shape} must both be (H, W, 3) of one size"
            )
        groups.setdefault((int(key_shape[0]), int(key_shape[1])), []).append(row)
    return [np.asarray(rows, dtype=np.int64) for rows in groups.values()]


def frame_pairs(
    batch: Mapping[str, Any], rows: np.ndarray, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Network input of same-size rows: key_images, cur_images (n, 3, H, W) float32, offsets (n,) int64."""
    key_images = normalize_frames(_stack(batch["key_frame"], rows), device)
    cur_images = normalize_frames(_stack(batch["cur_frame"], rows), device)
    offsets = torch.as_tensor(np.asarray(batch["offset"])[rows].astype(np.int64), device=device)
    return key_images, cur_images, offsets


def pair_batches_from_cache(batch: Mapping[str, Any], device: torch.device | str | None = None) -> list[PairBatch]:
    """Cached pair rows → one PairBatch per image size, teacher targets stacked (RoIs re-indexed)."""
    _require_columns(batch, TARGET_COLUMNS)
    out = []
    for rows in rows_by_image_size(batch):
        key_images, cur_images, offsets = frame_pairs(batch, rows, device)
        image_size = (key_images.shape[2], key_images.shape[3])
        targets = [_image_targets(batch, int(row), image_size) for row in rows]
        key_features = torch.stack([_tensor(batch["key_features"][row]) for row in rows])
        _check_feature_size("key_features", key_features.shape[-2:], image_size, rows[0])
        out.append(
            PairBatch(
                key_images=key_images,
                cur_images=cur_images,
                key_features=key_features,
                teacher=stack_targets(targets, image_size),
                offsets=offsets,
            ).to(key_images.device)
        )
    return out


@torch.no_grad()
def pair_batches_on_the_fly(
    batch: Mapping[str, Any], teacher: RFCN, device: torch.device | str | None = None
) -> list[PairBatch]:
    """Frame-pair rows → one PairBatch per image size, the frozen teacher run here on both frames."""
    out = []
    for rows in rows_by_image_size(batch):
        key_images, cur_images, offsets = frame_pairs(batch, rows, device)
        out.append(pair_batch_on_the_fly(teacher, key_images, cur_images, offsets))
    return out


def _image_targets(batch: Mapping[str, Any], row: int, image_size: tuple[int, int]) -> ImageTargets:
    targets = ImageTargets(
        features=_tensor(batch["cur_features"][row]),
        rpn_cls_logits=_tensor(batch["rpn_cls_logits"][row]),
        rpn_deltas=_tensor(batch["rpn_deltas"][row]),
        rois=_tensor(batch["rois"][row]).reshape(-1, 4),
        cls_logits=_tensor(batch["cls_logits"][row]),
        box_deltas=_tensor(batch["box_deltas"][row]).reshape(-1, 8),
    )
    _check_feature_size("cur_features", targets.features.shape[-2:], image_size, row)
    if not targets.rois.shape[0] == targets.cls_logits.shape[0] == targets.box_deltas.shape[0]:
        raise ValueError(
            f"pair row {row}: rois {tuple(targets.rois.shape)}, cls_logits {tuple(targets.cls_logits.shape)} and "
            f"box_deltas {tuple(targets.box_deltas.shape)} must have one row per RoI"
        )
    return targets


def _check_feature_size(name: str, size: torch.Size, image_size: tuple[int, int], row: int) -> None:
    expected = tuple(-(-side // FEATURE_STRIDE) for side in image_size)  # ceil(H / 16), ceil(W / 16)
    if tuple(size) != expected:
        raise ValueError(
            f"pair row {row}: {name} are {tuple(size)} cells but frames of {image_size[0]}x{image_size[1]} give "
            f"{expected} at stride {FEATURE_STRIDE}; the cache was written with another preprocessing (rebuild it)"
        )


def _stack(column: Any, rows: np.ndarray) -> np.ndarray:
    """Rows of a column as one (n, ...) array (a stacked column is indexed, a ragged one stacked)."""
    if isinstance(column, np.ndarray) and column.dtype != object:
        return column[rows]
    return np.stack([np.asarray(column[row]) for row in rows])


def _tensor(value: Any) -> torch.Tensor:
    """A float32 tensor of one row's cell, copied (Ray's batches are read-only; fp16 is widened here)."""
    return torch.from_numpy(np.array(value, dtype=np.float32))


def _require_columns(batch: Mapping[str, Any], columns: tuple[str, ...]) -> None:
    missing = [name for name in columns if name not in batch]
    if missing:
        raise ValueError(f"pair batch lacks the columns {missing} (has {sorted(batch)}); read it with pipelines.cache_dataset.pair_dataset")
