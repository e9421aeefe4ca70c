"""The teacher cache's Parquet rows: packing a clip's teacher outputs into blobs and reading them back.

A row is a :class:`semidff.rows.CacheRow` (:data:`CACHE_SCHEMA`; its docstring lists every
column with its shape and dtype): a clip's ids and frame indices, its frames as JPEG, the key
frame's features, and for every current frame its features and soft targets. Tensors are binary
blobs (little-endian, C order) of known shapes, not Arrow tensor or list columns: a blob reads
zero-copy and fast, and a list of int8/fp16 values would be stored as INT32 by Parquet
(perf-anchors: Parquet feature storage).

:func:`pack_clip_row` turns a :class:`TeacherClip` into a CacheRow, :func:`failed_clip_row` makes
the row of a clip without outputs, :func:`cache_table` the Arrow table of a file; the ``*_of``
readers turn a row (a CacheRow or the dict pyarrow gives) back into float32 arrays.

RoIs stay fp32 because fp16 has a 0.5 px step above 512 px and 1 px above 1024.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import torch

from semidff.cache.info import PARQUET_METADATA_KEY, CacheFileError, CacheInfo
from semidff.cache.quantize import STORAGE_DTYPES, dequantize_features, quantize_features
from semidff.rows import CACHE_SCHEMA, STATUS_ERROR, STATUS_OK, CacheRow, ClipIds  # noqa: F401 - CACHE_SCHEMA, STATUS_*: also imported from here
from semidff.teacher_targets import ImageTargets

REASON_TEACHER_FAILED = "teacher failed"  # the forward pass raised (e.g. out of memory)
REASON_NON_FINITE = "non-finite teacher output"  # NaN/inf in an output, or beyond fp16's range
FILE_PREFIX = "part-"
FILE_SUFFIX = ".parquet"
StoredRow = Union[CacheRow, Mapping[str, Any]]  # what the readers take: a CacheRow, or the row dict pyarrow gives

# ---------------------------------------------------------------------------------------------
# Blobs


def encode_blob(array: np.ndarray) -> bytes:
    """An array's bytes, little-endian, C order.

    (Storing floats byte-plane by byte-plane, which helps zstd on some activations, gained
    nothing on measured teacher outputs here: -2.4 % to +0.3 %; so blobs stay plain.)"""
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def decode_blob(data: bytes, dtype: np.dtype, shape: Sequence[int], name: str = "blob") -> np.ndarray:
    """The (shape) array of ``dtype`` that :func:`encode_blob` stored (a read-only view of
    ``data``); raises CacheFileError on a size that does not fit the shape (a damaged or foreign file)."""
    dtype = np.dtype(dtype).newbyteorder("<")
    shape = tuple(int(s) for s in shape)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise CacheFileError(f"{name}: {len(data)} bytes, expected {expected} for shape {shape} of {dtype.name}")
    return np.frombuffer(data, dtype).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Writing


@dataclass
class TeacherClip:
    """A clip and the teacher's outputs on it, before packing (what the cache actors produce).

    ids: which clip (its clip row's ids).
    height, width: H, W of the frames, pixels; scale: stored frame pixels / original video pixels.
    key_jpeg, current_jpegs: the stored frames; the outputs were computed on their decoded pixels.
    key_features: (C, h, w) the key frame's features, or None when a current frame is the key
        frame (offset 0): then that frame's features serve.
    current_targets: one ImageTargets per current frame, in ``current_indices`` order.
    """

    ids: ClipIds
    height: int
    width: int
    scale: float
    key_jpeg: bytes
    current_jpegs: list[bytes]
    key_features: Optional[torch.Tensor]
    current_targets: list[ImageTargets]


def key_from_current(offsets: Sequence[int]) -> int:
    """Index of the first current frame at offset 0 (the key frame itself), or -1."""
    return next((j for j, d in enumerate(offsets) if int(d) == 0), -1)


def _soft(values: torch.Tensor, precision: str, name: str) -> np.ndarray:
    array = values.detach().to("cpu", torch.float32).numpy()
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds non-finite values (NaN or inf)")
    if precision == "fp16":
        if np.abs(array).max(initial=0.0) > np.finfo(np.float16).max:
            raise ValueError(f"{name} exceeds fp16's range")
        return array.astype(np.float16)
    return array


def pack_clip_row(clip: TeacherClip, info: CacheInfo) -> CacheRow:
    """The cache row of a clip with its teacher outputs, stored as ``info`` says.

    Raises ValueError when an output is non-finite or does not fit the storage precision (the
    caller records the clip as failed with REASON_NON_FINITE).
    """
    precision, soft = info.feature_precision, info.soft_target_precision
    ids = clip.ids
    source = key_from_current(ids.offsets)
    features_of = [quantize_features(t.features, precision) for t in clip.current_targets]
    if source >= 0:
        key_values, key_scales = None, None
    elif clip.key_features is None:
        raise ValueError(f"clip {ids.clip_id}: no key features and no current frame at offset 0")
    else:
        key_values, key_scales = quantize_features(clip.key_features, precision)
    height_width = (clip.current_targets[0].features if clip.current_targets else clip.key_features).shape[-2:]

    def scales_blob(scales: Optional[np.ndarray]) -> bytes:
        return b"" if scales is None else encode_blob(scales)

    targets = clip.current_targets
    return CacheRow(
        clip_id=ids.clip_id,
        video_id=ids.video_id,
        uri=ids.uri,
        key_index=ids.key_index,
        current_indices=[int(i) for i in ids.current_indices],
        offsets=[int(d) for d in ids.offsets],
        status=STATUS_OK,
        reason="",
        error="",
        height=int(clip.height),
        width=int(clip.width),
        scale=float(clip.scale),
        feature_height=int(height_width[0]),
        feature_width=int(height_width[1]),
        key_from_current=source,
        key_jpeg=clip.key_jpeg,
        current_jpegs=list(clip.current_jpegs),
        key_features=b"" if key_values is None else encode_blob(key_values),
        key_feature_scales=scales_blob(key_scales),
        current_features=[encode_blob(values) for values, _ in features_of],
        current_feature_scales=[scales_blob(scales) for _, scales in features_of],
        rpn_cls_logits=[encode_blob(_soft(t.rpn_cls_logits, soft, "rpn_cls_logits")) for t in targets],
        rpn_deltas=[encode_blob(_soft(t.rpn_deltas, soft, "rpn_deltas")) for t in targets],
        num_rois=[int(t.rois.shape[0]) for t in targets],
        rois=[encode_blob(_soft(t.rois, "fp32", "rois")) for t in targets],
        cls_logits=[encode_blob(_soft(t.cls_logits, soft, "cls_logits")) for t in targets],
        box_deltas=[encode_blob(_soft(t.box_deltas, soft, "box_deltas")) for t in targets],
    )


def failed_clip_row(ids: Union[ClipIds, Mapping[str, Any]], reason: str, error: str) -> CacheRow:
    """The row of a clip that has no teacher outputs (decode or teacher failure): ``ids`` are
    ClipIds or a row dict holding them (a name it lacks is stored as null; lists as empty)."""
    return CacheRow.failed(ClipIds.of(ids), reason, error)


def cache_table(rows: Sequence[CacheRow], info: CacheInfo) -> pa.Table:
    """Rows → a :data:`CACHE_SCHEMA` table whose schema metadata holds ``info`` (self-describing)."""
    schema = CACHE_SCHEMA.with_metadata({PARQUET_METADATA_KEY: info.to_json().encode("utf-8")})
    return CacheRow.to_arrow(rows, schema=schema)


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class BlobLayout:
    """How to turn a row's blobs back into arrays (from the cache's CacheInfo)."""

    feature_precision: str
    soft_target_precision: str
    feature_channels: int
    num_anchors: int
    num_classes: int

    @classmethod
    def of(cls, info: CacheInfo) -> "BlobLayout":
        return cls(info.feature_precision, info.soft_target_precision, info.feature_channels, info.num_anchors, info.num_classes)

    def features(self, values: bytes, scales: bytes, height: int, width: int, name: str) -> np.ndarray:
        """(C, h, w) float32 features from a features blob and its scales blob."""
        stored = decode_blob(values, STORAGE_DTYPES[self.feature_precision], (self.feature_channels, height, width), name)
        scale_values = decode_blob(scales, np.float32, (self.feature_channels,), name + " scales") if self.feature_precision == "int8" else None
        return dequantize_features(stored, scale_values)

    def soft(self, data: bytes, shape: Sequence[int], name: str) -> np.ndarray:
        return decode_blob(data, STORAGE_DTYPES[self.soft_target_precision], shape, name).astype(np.float32)


def key_features_of(row: StoredRow, layout: BlobLayout) -> np.ndarray:
    """(C, h, w) float32 features of an "ok" row's key frame."""
    source = int(row["key_from_current"])
    if source >= 0:
        return current_features_of(row, source, layout)
    return layout.features(row["key_features"], row["key_feature_scales"], row["feature_height"], row["feature_width"], f"clip {row['clip_id']} key_features")


def current_features_of(row: StoredRow, j: int, layout: BlobLayout) -> np.ndarray:
    """(C, h, w) float32 features of current frame ``j`` of an "ok" row."""
    return layout.features(
        row["current_features"][j], row["current_feature_scales"][j], row["feature_height"], row["feature_width"], f"clip {row['clip_id']} current_features[{j}]"
    )


SOFT_TARGETS = ("rpn_cls_logits", "rpn_deltas", "rois", "cls_logits", "box_deltas")


def soft_target_of(row: StoredRow, j: int, layout: BlobLayout, name: str) -> np.ndarray:
    """One soft target (a name of SOFT_TARGETS) of current frame ``j`` of an "ok" row, float32:
    rpn_cls_logits (2A, h, w), rpn_deltas (4A, h, w), rois (R, 4), cls_logits (R, K + 1), box_deltas (R, 8)."""
    h, w, a, r = int(row["feature_height"]), int(row["feature_width"]), layout.num_anchors, int(row["num_rois"][j])
    shapes = {"rpn_cls_logits": (2 * a, h, w), "rpn_deltas": (4 * a, h, w), "rois": (r, 4), "cls_logits": (r, layout.num_classes + 1), "box_deltas": (r, 8)}
    where = f"clip {row['clip_id']} current frame {j} {name}"
    if name == "rois":
        return decode_blob(row["rois"][j], np.float32, shapes["rois"], where).copy()
    return layout.soft(row[name][j], shapes[name], where)


def soft_targets_of(row: StoredRow, j: int, layout: BlobLayout) -> dict[str, np.ndarray]:
    """Every soft target of current frame ``j`` (see :func:`soft_target_of`)."""
    return {name: soft_target_of(row, j, layout, name) for name in SOFT_TARGETS}


def image_targets_of(row: StoredRow, j: int, layout: BlobLayout) -> ImageTargets:
    """Current frame ``j``'s stored teacher outputs as an ImageTargets (float32 torch tensors)."""
    soft = soft_targets_of(row, j, layout)
    return ImageTargets(features=torch.from_numpy(current_features_of(row, j, layout)), **{k: torch.from_numpy(v) for k, v in soft.items()})
