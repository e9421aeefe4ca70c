"""The train/validation split of a teacher cache: whole videos, by a stable hash of their id."""
from __future__ import annotations

import hashlib

SPLITS = ("all", "train", "val")


def video_hash_fraction(video_id: str) -> float:
    """A number in [0, 1) fixed by ``video_id`` alone (the first 8 bytes of a SHA-256)."""
    digest = hashlib.sha256(f"semidff-split:{video_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_validation_video(video_id: str, fraction: float) -> bool:
    """Whether a video belongs to the validation share ``fraction`` (0 <= fraction < 1).

    Deterministic and independent of which other videos exist: the same video is held out by the
    cache reader, the trainer and every Tune trial, and adding videos never moves an old one
    across the split. About ``fraction`` of many videos are held out.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction {fraction}: must be in [0, 1)")
    return video_hash_fraction(video_id) < fraction


def check_split(split: str, validation_fraction: float) -> None:
    """Refuse a split name that does not exist, or a "val" split that can hold nothing."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction}: must be in [0, 1)")
    if split == "val" and validation_fraction == 0.0:
        raise ValueError("split='val' with validation_fraction=0 selects no video; give the fraction held out (e.g. 0.1)")
