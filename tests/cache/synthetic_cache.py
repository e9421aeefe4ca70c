"""Hand-made teacher-cache contents with known values, for the format and reader tests.

    info = cache_info(tmp_path, "int8")
    clip = teacher_clip("v0", key_index=10, offsets=[0, 3], size=(48, 64), num_rois=[5, 7], seed=1)
    path = write_cache(tmp_path / "cache", info, [clip, ...], failed=[("v1:-1", "v1", "missing file")])

The outputs are random tensors of the shapes the tiny teacher gives (C = 64 features, A = 9
anchors, K = 3 classes, stride 16), the frames a textured pattern encoded as JPEG: the tests check
what the format stores and gives back, not what a teacher computes (tests/pipelines/test_teacher_cache.py
does that with a real teacher).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from semidff.cache.format import TeacherClip, failed_clip_row, pack_clip_row
from semidff.cache.info import CacheInfo, write_cache_info
from semidff.cache.jpeg import encode_jpeg
from semidff.checkpoint import ModelCheckpoint
from semidff.config import load_config
from semidff.rows import ClipIds
from semidff.teacher_targets import ImageTargets

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "jobs" / "configs" / "tiny.yaml"
TEACHER_SHA = "ab" * 32


def tiny_config(precision: str = "fp16", offset_range: Sequence[int] = (0, 9)):
    return load_config(TINY, [f"cache.feature_precision={precision}", f"clips.offset_range=[{offset_range[0]},{offset_range[1]}]"])


def cache_info(precision: str = "fp16", offset_range: Sequence[int] = (0, 9), teacher_sha256: str = TEACHER_SHA) -> CacheInfo:
    """The record of a cache of the tiny teacher (its architecture from tiny.yaml; no weights needed)."""
    cfg = tiny_config(precision, offset_range)
    checkpoint = ModelCheckpoint(kind="teacher", config=cfg, state_dicts={}, sha256=teacher_sha256)
    return CacheInfo.create(cfg, checkpoint, teacher_path="teacher.pt")


def frame(index: int, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8: a smooth gradient that moves with ``index`` (JPEG-friendly)."""
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    out = np.empty((*size, 3), np.uint8)
    out[..., 0] = (2 * x + 3 * index) % 256
    out[..., 1] = (3 * y + index) % 256
    out[..., 2] = (x + y) % 256
    return out


def image_targets(generator: torch.Generator, feature_size: tuple[int, int], num_rois: int, image_size: tuple[int, int]) -> ImageTargets:
    """Random outputs of the tiny teacher's shapes; RoIs in pixels, with sub-pixel parts fp16 would lose above 512 px."""
    h, w = feature_size
    boxes = torch.rand(num_rois, 4, generator=generator) * torch.tensor([image_size[1], image_size[0]] * 2) + 600.25
    return ImageTargets(
        features=torch.relu(torch.randn(64, h, w, generator=generator)) * torch.logspace(-2, 1, 64).view(64, 1, 1),
        rpn_cls_logits=torch.randn(18, h, w, generator=generator) * 3,
        rpn_deltas=torch.randn(36, h, w, generator=generator),
        rois=boxes,
        cls_logits=torch.randn(num_rois, 4, generator=generator) * 2,
        box_deltas=torch.randn(num_rois, 8, generator=generator),
    )


def teacher_clip(
    video_id: str, key_index: int, offsets: Sequence[int], size: tuple[int, int] = (48, 64), num_rois: Optional[Sequence[int]] = None, seed: int = 0
) -> TeacherClip:
    """A clip with random teacher outputs; frames of ``size`` (H, W), features at stride 16."""
    generator = torch.Generator().manual_seed(seed)
    feature_size = (-(-size[0] // 16), -(-size[1] // 16))
    num_rois = list(num_rois) if num_rois is not None else [6] * len(offsets)
    current = [key_index + int(d) for d in offsets]
    return TeacherClip(
        ids=ClipIds(clip_id=f"{video_id}:{key_index}", video_id=video_id, uri=f"/videos/{video_id}.mp4", key_index=key_index, current_indices=current, offsets=list(offsets)),
        height=size[0],
        width=size[1],
        scale=0.5,
        key_jpeg=encode_jpeg(frame(key_index, size), 90),
        current_jpegs=[encode_jpeg(frame(i, size), 90) for i in current],
        key_features=None if 0 in offsets else image_targets(generator, feature_size, 1, size).features,
        current_targets=[image_targets(generator, feature_size, r, size) for r in num_rois],
    )


def write_cache(directory: Path, info: CacheInfo, clips: Sequence[TeacherClip], failed: Sequence[tuple[str, str, str]] = (), clips_per_file: int = 3) -> list[str]:
    """A cache folder: cache_info.json and part files of ``clips_per_file`` rows (the failed rows,
    (clip_id, video_id, reason), in the last file); returns the file paths."""
    from pipelines.teacher_cache import write_cache_file

    write_cache_info(info, str(directory))
    rows = [pack_clip_row(clip, info) for clip in clips]
    rows += [failed_clip_row(dict(clip_id=c, video_id=v, uri=f"/videos/{v}.mp4", key_index=-1), reason, f"{v}: {reason}") for c, v, reason in failed]
    return [write_cache_file(rows[i : i + clips_per_file], info, str(directory)) for i in range(0, len(rows), clips_per_file)]
