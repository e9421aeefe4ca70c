"""Feature storage precisions of the teacher cache: fp32 (exact), fp16, or int8 with one scale per channel.

    values, scales = quantize_features(features, "int8")    # (C, h, w) int8, (C,) float32
    restored = dequantize_features(values, scales)           # (C, h, w) float32
    assert (abs(restored - features) <= int8_error_bound(scales)[:, None, None]).all()

int8 is symmetric per channel: ``scale_c = max |x_c| / 127`` and ``q = round(x / scale_c)`` in
[-127, 127], so every element comes back within ``scale_c / 2`` of its value (half a
quantisation step; a zero channel has scale 0 and comes back exactly). Per channel because
channel magnitudes of a ResNet feature map differ by orders of magnitude: one scale for the whole
map would spend most codes of the quiet channels on nothing. The relative RMSE on ReLU feature
maps is about 1 % (perf-anchors: Parquet feature storage). fp16 keeps 11 significant bits (a
relative error below 2**-11 = 0.05 %) for |x| up to 65504; larger values are refused.
"""
from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
STORAGE_DTYPES = {"fp32": np.dtype("<f4"), "fp16": np.dtype("<f2"), "int8": np.dtype("i1")}
INT8_LEVELS = 127  # symmetric: -127..127 (-128 unused, so the range is the same on both sides)
FP16_MAX = float(np.finfo(np.float16).max)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"feature precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision


def quantize_features(features: torch.Tensor | np.ndarray, precision: Precision) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Features (C, ...) of any float dtype → (stored values, per-channel scales or None).

    The stored values have dtype STORAGE_DTYPES[precision] and the input's shape; scales are
    (C,) float32 for int8 (max |x| of each channel / 127, 0 for an all-zero channel), else None.
    Raises ValueError for non-finite values, and for fp16 values beyond its range (65504).
    """
    check_precision(precision)
    values = features.detach().to("cpu", torch.float32).numpy() if isinstance(features, torch.Tensor) else np.asarray(features, np.float32)
    if values.ndim < 1:
        raise ValueError(f"features must have a channel axis first, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"features hold {int((~np.isfinite(values)).sum())} non-finite values (NaN or inf)")
    if precision == "fp32":
        return np.ascontiguousarray(values, STORAGE_DTYPES["fp32"]), None
    if precision == "fp16":
        peak = float(np.abs(values).max(initial=0.0))
        if peak > FP16_MAX:
            raise ValueError(f"features reach |x| = {peak:.4g}, beyond fp16's range ({FP16_MAX:g}); store them as fp32 or int8")
        return values.astype(STORAGE_DTYPES["fp16"]), None
    channels = values.reshape(values.shape[0], -1)
    scales = (np.abs(channels).max(axis=1, initial=0.0) / INT8_LEVELS).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
    quantized = np.clip(np.rint(channels / safe[:, None]), -INT8_LEVELS, INT8_LEVELS).astype(STORAGE_DTYPES["int8"])
    return quantized.reshape(values.shape), scales


def dequantize_features(values: np.ndarray, scales: Optional[np.ndarray] = None) -> np.ndarray:
    """Stored values (C, ...) (+ (C,) scales for int8) → float32 features of the same shape."""
    if values.dtype == np.int8:
        if scales is None or scales.shape != (values.shape[0],):
            raise ValueError(f"int8 features of shape {values.shape} need one scale per channel, got {None if scales is None else scales.shape}")
        shape = (values.shape[0],) + (1,) * (values.ndim - 1)
        return values.astype(np.float32) * scales.astype(np.float32).reshape(shape)
    return values.astype(np.float32)  # a fresh, writable array (blobs decode to read-only views)


def int8_error_bound(scales: np.ndarray) -> np.ndarray:
    """(C,) the largest |dequantised - original| an int8-stored channel can have: half a step,
    plus the float32 rounding of the product (a few ulps of max |x|)."""
    scales = np.asarray(scales, np.float32)
    return scales / 2 + scales * INT8_LEVELS * 4 * np.finfo(np.float32).eps
