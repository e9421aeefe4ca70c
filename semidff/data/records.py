"""Typed records that every dataset reader returns (ImageNet VID, YouTube-BB, custom, synthetic).

A :class:`LabeledDataset` holds class names and :class:`LabeledVideo` s; a video holds the
:class:`FrameAnnotation` of each annotated frame, which holds its :class:`ObjectAnnotation` s.

Conventions (the same as ``semidff.ops.boxes`` and ``semidff.evaluation.vid_map``):

* boxes are ``(x1, y1, x2, y2)`` in pixels of the original frame with *inclusive* corners, so a
  box's width is ``x2 - x1 + 1`` and a one-pixel object has ``x1 == x2``;
* labels are ``1..num_classes``; 0 is the background and is never stored;
* frame indices are 0-based positions in the decoded video (or in the sorted listing of a frame
  folder). A frame missing from ``LabeledVideo.frames`` is *unannotated*, which is not the same as
  an annotated frame with no objects (``FrameAnnotation(i, [])``): detections in the latter are
  false positives, in the former they are not scored.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class ObjectAnnotation:
    """One object in one frame."""

    track_id: int  # instance id within the video, the same in every frame (-1 if unknown)
    label: int  # 1..num_classes (0 is background, never stored)
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 inclusive pixel corners of the ORIGINAL frame
    occluded: bool = False

    def __post_init__(self) -> None:
        box = tuple(float(v) for v in self.box)
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise ValueError(f"ObjectAnnotation box must be 4 finite numbers (x1, y1, x2, y2), got {self.box!r}")
        if box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"ObjectAnnotation box {box} needs x2 >= x1 and y2 >= y1 (inclusive corners)")
        if self.label < 1:
            raise ValueError(f"ObjectAnnotation label must be >= 1 (0 is the background), got {self.label}")
        object.__setattr__(self, "box", box)  # store plain floats whatever sequence was given


@dataclass
class FrameAnnotation:
    """The objects of one annotated frame (an empty list: annotated, and nothing is there)."""

    frame_index: int  # 0-based index in the video (or in the frame folder's sorted listing)
    objects: list[ObjectAnnotation] = field(default_factory=list)

    def boxes(self) -> np.ndarray:
        """(N, 4) float32 inclusive (x1, y1, x2, y2) boxes, in object order."""
        return np.array([o.box for o in self.objects], dtype=np.float32).reshape(-1, 4)

    def labels(self) -> np.ndarray:
        """(N,) int64 labels in 1..num_classes, in object order."""
        return np.array([o.label for o in self.objects], dtype=np.int64)

    def track_ids(self) -> np.ndarray:
        """(N,) int64 track ids (-1 where unknown), in object order."""
        return np.array([o.track_id for o in self.objects], dtype=np.int64)


@dataclass
class LabeledVideo:
    """One video (an encoded file or a folder of frame images) and its annotated frames."""

    video_id: str
    source: str  # path/URI of an encoded video file, or of a folder of frame images
    width: int
    height: int
    num_frames: int
    fps: Optional[float]
    frames: list[FrameAnnotation]  # annotated frames only, sorted by frame_index
    frame_paths: Optional[list[str]] = None  # for image-folder sources: path of every frame, index order

    def num_objects(self) -> int:
        """Object annotations over all frames."""
        return sum(len(f.objects) for f in self.frames)

    def frame(self, frame_index: int) -> Optional[FrameAnnotation]:
        """The annotation of ``frame_index``, or None when that frame is not annotated."""
        position = bisect.bisect_left(self.frames, frame_index, key=lambda f: f.frame_index)  # frames are sorted
        if position < len(self.frames) and self.frames[position].frame_index == frame_index:
            return self.frames[position]
        return None

    def tracks(self) -> dict[int, dict[int, tuple[float, float, float, float]]]:
        """track id → {frame index → box}, for every object with a known track id (>= 0).

        The shape ``semidff.evaluation.vid_map.motion_iou_from_tracks`` takes.
        """
        tracks: dict[int, dict[int, tuple[float, float, float, float]]] = {}
        for frame in self.frames:
            for obj in frame.objects:
                if obj.track_id >= 0:
                    tracks.setdefault(obj.track_id, {})[frame.frame_index] = obj.box
        return tracks


@dataclass
class LabeledDataset:
    """Class names and videos; label ``i`` is named ``class_names[i - 1]``."""

    class_names: list[str]  # index 0 = class 1
    videos: list[LabeledVideo]

    def num_classes(self) -> int:
        """Foreground classes (the background is not counted)."""
        return len(self.class_names)

    def num_objects(self) -> int:
        """Object annotations over all videos and frames."""
        return sum(v.num_objects() for v in self.videos)

    def class_name(self, label: int) -> str:
        """The name of label ``label`` (1..num_classes)."""
        if not 1 <= label <= len(self.class_names):
            raise ValueError(f"label {label} is outside 1..{len(self.class_names)}")
        return self.class_names[label - 1]
