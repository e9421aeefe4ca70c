"""The frozen teacher on a group of clips: batched, same-size frames together, fp16 autocast on CUDA.

    results = run_teacher_on_clips(teacher, prepared_clips, batch_size=4, device=torch.device("cpu"))
    for clip, result in zip(prepared_clips, results):
        ...  # a TeacherClip (ready for pack_clip_row) or a ClipError (reason, message)

The frames are the JPEG-decoded ones the cache stores (the targets must come from exactly the
pixels a trainer will read). Current frames get the full forward (features, proposals, head
outputs); a key frame gets only the feature extractor, unless one of its current frames is the key
frame itself (offset 0), whose outputs then serve for both. A batch that raises (e.g. out of
memory) is retried clip by clip, so one bad clip fails alone.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from semidff.cache.format import REASON_TEACHER_FAILED, TeacherClip, key_from_current
from semidff.models.rfcn import RFCN, RFCNOutput
from semidff.preprocess import normalize_frames
from semidff.rows import ClipIds, PreparedClipRow
from semidff.teacher_targets import split_targets


@dataclass
class PreparedClip:
    """A decoded clip ready for the teacher (:meth:`from_row`: of an ok PreparedClipRow).

    ids: which clip (clip_id, video_id, uri, key_index, current_indices, offsets).
    key_frame: (H, W, 3) uint8 and current_frames: (m, H, W, 3) uint8, the *decoded JPEG* frames.
    key_jpeg, current_jpegs: the JPEG bytes they were decoded from. scale: stored / original pixels.
    """

    ids: ClipIds
    key_frame: np.ndarray
    current_frames: np.ndarray
    key_jpeg: bytes
    current_jpegs: list[bytes]
    scale: float

    @classmethod
    def from_row(cls, row: PreparedClipRow) -> "PreparedClip":
        """The clip of an "ok" prepared row (frames: views of the row's bytes, :meth:`ClipRow.frames`)."""
        frames = row.frames()
        return cls(row.ids, frames.key_frame, frames.current_frames, row.key_jpeg, list(row.current_jpegs), frames.scale)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.key_frame.shape[0]), int(self.key_frame.shape[1])


@dataclass
class ClipError:
    """A clip the teacher could not process: a short reason and a message naming the clip."""

    reason: str
    message: str


def run_teacher_on_clips(
    teacher: RFCN, clips: list[PreparedClip], *, batch_size: int, device: torch.device, autocast: bool = True
) -> list[Union[TeacherClip, ClipError]]:
    """Teacher outputs for every clip, in input order.

    batch_size: clips per forward pass (frames of one pass share their size: clips are grouped
    by frame size first). autocast: fp16 autocast when ``device`` is CUDA (ignored on CPU, where
    the teacher runs in fp32).
    """
    results: list[Union[TeacherClip, ClipError, None]] = [None] * len(clips)
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, clip in enumerate(clips):
        by_size.setdefault(clip.size, []).append(index)
    for indices in by_size.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            try:
                outputs = _forward([clips[i] for i in chunk], teacher, device, autocast)
            except Exception:  # noqa: BLE001 - retried one by one below, where the error is kept
                outputs = []
                for i in chunk:
                    try:
                        outputs += _forward([clips[i]], teacher, device, autocast)
                    except Exception as exc:  # noqa: BLE001 - any failure of one clip is recorded, the run goes on
                        _release_cuda_memory(device)
                        outputs.append(ClipError(REASON_TEACHER_FAILED, f"clip {clips[i].ids.clip_id}: teacher forward failed: {type(exc).__name__}: {exc}"))
            for i, output in zip(chunk, outputs):
                results[i] = output
    return results  # type: ignore[return-value]


def _forward(clips: list[PreparedClip], teacher: RFCN, device: torch.device, autocast: bool) -> list[TeacherClip]:
    """One forward pass over the clips' distinct current frames, one over the keys that need it."""
    current_slots: list[list[int]] = []  # per clip, per current frame: its row in the batch
    current_frames: list[np.ndarray] = []
    for clip in clips:
        slots, seen = [], {}
        for j, index in enumerate(clip.ids.current_indices):
            if int(index) not in seen:  # a clip repeats a frame when fewer offsets fit than it asked for
                seen[int(index)] = len(current_frames)
                current_frames.append(clip.current_frames[j])
            slots.append(seen[int(index)])
        current_slots.append(slots)
    key_rows = [i for i, clip in enumerate(clips) if key_from_current(clip.ids.offsets) < 0]
    amp = torch.autocast("cuda", dtype=torch.float16) if autocast and device.type == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), amp:
        output = teacher(normalize_frames(np.stack(current_frames), device))
        key_features = teacher.extract_features(normalize_frames(np.stack([clips[i].key_frame for i in key_rows]), device)) if key_rows else None
    # One copy to the host per tensor of the batch (not one per frame and output), in the dtype
    # computed (fp16 under autocast: half the transfer); packing converts to the stored precision.
    output = RFCNOutput(**{name: value.cpu() if isinstance(value, torch.Tensor) else value for name, value in vars(output).items()})
    targets = split_targets(output)
    key_features = key_features.cpu() if key_features is not None else None
    key_of = {row: key_features[n] for n, row in enumerate(key_rows)}
    height_width = [clip.size for clip in clips]
    return [
        TeacherClip(
            ids=clip.ids,
            height=height_width[i][0],
            width=height_width[i][1],
            scale=clip.scale,
            key_jpeg=clip.key_jpeg,
            current_jpegs=list(clip.current_jpegs),
            key_features=key_of.get(i),
            current_targets=[targets[slot] for slot in current_slots[i]],
        )
        for i, clip in enumerate(clips)
    ]


def _release_cuda_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
