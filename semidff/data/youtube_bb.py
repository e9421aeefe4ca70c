"""YouTube-BoundingBoxes (YT-BB) detection annotations as :class:`LabeledDataset` records.

YT-BB ships only CSVs and YouTube ids (dff-facts §5): users download and cut the videos
themselves. The detection CSV (``yt_bb_detection_{train,validation}.csv[.gz]``) has no header and
10 columns: ``youtube_id, timestamp_ms, class_id, class_name, object_id, object_presence, xmin,
xmax, ymin, ymax``. **The box order is xmin, xmax, ymin, ymax**, fractions of the frame width and
height. Boxes are annotated once per second. A segment, one tracked object, is identified by
(youtube_id, class_id, object_id), since one YouTube video can hold several segments; it runs from
the first to the last annotated timestamp of that triple.

Usage::

    from semidff.data.youtube_bb import load_youtube_bb
    dataset = load_youtube_bb("yt_bb_detection_validation.csv.gz", "/data/ytbb/clips")

Conventions:

* **Video files.** By default (``video_files="segment"``) each segment is its own clip,
  ``<video_dir>/<youtube_id>+<class_id>+<object_id>.mp4`` (the naming of the ``mbuckler/youtube-bb``
  downloader), cut to start at the segment's first annotated timestamp. With ``video_files="full"``
  every segment reads the whole download ``<video_dir>/<youtube_id>.mp4``, timed from its start.
  Either way each segment becomes one :class:`LabeledVideo` with id ``<youtube_id>+<class_id>+<object_id>``.
* **Timestamps to frames.** frame index = round((timestamp_ms - start_ms) / 1000 * fps), halves
  up, where start_ms is the segment's first timestamp for clips and 0 for full videos, and fps is
  the probed mean rate. An index one past the last frame (a clip cut exactly at the last
  annotation) becomes the last frame; later ones are skipped and counted.
* **Boxes.** A fraction box covers the continuous span [xmin·W, xmax·W); as inclusive pixel
  corners that is x1 = xmin·W, x2 = xmax·W − 1 (likewise y with H), so the width x2 − x1 + 1 is
  (xmax − xmin)·W. Corners are clipped to [0, W−1] × [0, H−1], and a box narrower than a pixel
  gets x2 = x1.
* **Frames.** Each annotated timestamp gives a :class:`FrameAnnotation`; an ``absent`` row gives
  one with no objects. Only the segment's one object is annotated: other objects in the frame
  are not, so these frames are not exhaustively labeled the way VID's are.
* **Labels.** By default YT-BB's own 23 classes: label = class_id + 1 for class ids 0-21 and 23
  for ``car`` (class_id 23), since class 22 ``none`` is not a class (its rows are skipped). With
  ``classes="vid"`` the 15 classes that ImageNet VID shares get VID's labels
  (:data:`YTBB_TO_VID`) and the other segments are skipped.
"""
from __future__ import annotations

import csv
import gzip
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Literal, Optional, Union

from semidff.data.imagenet_vid import VID_CLASS_NAMES
from semidff.data.records import FrameAnnotation, LabeledDataset, LabeledVideo, ObjectAnnotation

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# Lower confidence (dff-facts §5): this class_id order comes from a public parser whose repository
# was not identified. Every CSV row repeats its class name, and read_ytbb_detection_csv checks it
# against this table, so a wrong entry shows up as an error on the first row of that class.
YTBB_CLASSES: dict[int, str] = {
    0: "person",
    1: "bird",
    2: "bicycle",
    3: "boat",
    4: "bus",
    5: "bear",
    6: "cow",
    7: "cat",
    8: "giraffe",
    9: "potted plant",
    10: "horse",
    11: "motorcycle",
    12: "knife",
    13: "airplane",
    14: "skateboard",
    15: "train",
    16: "truck",
    17: "zebra",
    18: "toilet",
    19: "dog",
    20: "elephant",
    21: "umbrella",
    22: "none",
    23: "car",
}
"""YT-BB class_id -> class name, as the CSV spells it."""

YTBB_NONE_CLASS_ID = 22

YTBB_LABELS: dict[int, int] = {
    class_id: label
    for label, class_id in enumerate((c for c in sorted(YTBB_CLASSES) if c != YTBB_NONE_CLASS_ID), start=1)
}
"""class_id -> label in YT-BB's own class space (1..23, ``none`` left out)."""

YTBB_CLASS_NAMES: list[str] = [YTBB_CLASSES[class_id] for class_id in YTBB_LABELS]
"""Class names in label order (index 0 = label 1)."""

YTBB_TO_VID: dict[int, str] = {
    13: "airplane",
    2: "bicycle",
    1: "bird",
    4: "bus",
    23: "car",
    6: "cattle",
    19: "dog",
    7: "domestic_cat",
    20: "elephant",
    10: "horse",
    11: "motorcycle",
    5: "bear",
    15: "train",
    3: "watercraft",
    17: "zebra",
}
"""YT-BB class_id -> the ImageNet VID class it overlaps (dff-facts §5, derived)."""

COLUMNS = ("youtube_id", "timestamp_ms", "class_id", "class_name", "object_id", "object_presence", "xmin", "xmax", "ymin", "ymax")

SegmentKey = tuple[str, int, int]  # (youtube_id, class_id, object_id)
Probe = Callable[[str], tuple[int, int, int, float]]  # path -> (width, height, num_frames, fps)


@dataclass(frozen=True)
class YtbbRow:
    """One row of a YT-BB detection CSV. The box is in fractions of the frame size, in the CSV's
    own order; an ``absent`` row's box is whatever the CSV holds (-1 in the released files)."""

    youtube_id: str
    timestamp_ms: int
    class_id: int
    class_name: str
    object_id: int
    present: bool
    xmin: float
    xmax: float
    ymin: float
    ymax: float
    line: int  # 1-based line in the CSV, for messages

    @property
    def segment(self) -> SegmentKey:
        return (self.youtube_id, self.class_id, self.object_id)


# ---------------------------------------------------------------------------------------------
# CSV


def read_ytbb_detection_csv(path: PathLike) -> list[YtbbRow]:
    """Parse and validate a detection CSV (``.gz`` is read as gzip). Blank lines are ignored.

    Raises ``ValueError`` naming the line and column of the first bad value.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; pass a YT-BB detection CSV such as yt_bb_detection_validation.csv(.gz)")
    opener = gzip.open if path.endswith(".gz") else open
    rows = []
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        for line_number, fields in enumerate(csv.reader(f), start=1):
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            rows.append(_parse_row(path, line_number, fields))
    return rows


def _parse_row(path: str, line: int, fields: list[str]) -> YtbbRow:
    def fail(column: int, expected: str) -> ValueError:
        return ValueError(f"{path}: line {line}, column {column} ({COLUMNS[column - 1]}): expected {expected}, got {fields[column - 1]!r}")

    def integer(column: int, minimum: int = 0) -> int:
        try:
            value = int(fields[column - 1])
        except ValueError:
            raise fail(column, "an integer") from None
        if value < minimum:
            raise fail(column, f"an integer >= {minimum}")
        return value

    def fraction(column: int) -> float:
        try:
            return float(fields[column - 1])
        except ValueError:
            raise fail(column, "a number") from None

    if len(fields) != len(COLUMNS):
        raise ValueError(f"{path}: line {line}: expected {len(COLUMNS)} columns ({', '.join(COLUMNS)}), got {len(fields)}")
    fields = [field.strip() for field in fields]
    youtube_id = fields[0]
    if not youtube_id:
        raise fail(1, "a YouTube id")
    timestamp_ms = integer(2)
    class_id = integer(3)
    if class_id not in YTBB_CLASSES:
        raise fail(3, f"a YT-BB class id 0..{max(YTBB_CLASSES)}")
    class_name = fields[3]
    if class_name != YTBB_CLASSES[class_id]:
        raise fail(4, f"{YTBB_CLASSES[class_id]!r} for class id {class_id} (if the CSV is right, YTBB_CLASSES is wrong: fix the table)")
    object_id = integer(5)
    presence = fields[5]
    if presence not in ("present", "absent"):
        raise fail(6, "'present' or 'absent'")
    xmin, xmax, ymin, ymax = (fraction(column) for column in (7, 8, 9, 10))
    if presence == "present":
        for column, value in zip((7, 8, 9, 10), (xmin, xmax, ymin, ymax)):
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise fail(column, "a fraction in [0, 1] (the order is xmin, xmax, ymin, ymax)")
        if xmax < xmin:
            raise fail(8, f"xmax >= xmin = {xmin} (the order is xmin, xmax, ymin, ymax)")
        if ymax < ymin:
            raise fail(10, f"ymax >= ymin = {ymin} (the order is xmin, xmax, ymin, ymax)")
    return YtbbRow(youtube_id, timestamp_ms, class_id, class_name, object_id, presence == "present", xmin, xmax, ymin, ymax, line)


def ytbb_segments(rows: Iterable[YtbbRow]) -> dict[SegmentKey, list[YtbbRow]]:
    """Group rows by (youtube_id, class_id, object_id), in order of first appearance; each
    segment's rows sorted by timestamp (ties keep CSV order)."""
    segments: dict[SegmentKey, list[YtbbRow]] = {}
    for row in rows:
        segments.setdefault(row.segment, []).append(row)
    for segment_rows in segments.values():
        segment_rows.sort(key=lambda row: row.timestamp_ms)
    return segments


# ---------------------------------------------------------------------------------------------
# Frames and boxes


def timestamp_to_frame_index(timestamp_ms: int, fps: float, start_ms: int = 0) -> int:
    """The frame showing ``timestamp_ms`` in a video whose frame 0 is at ``start_ms``: the nearest
    frame start, halves rounded up (1000 ms at 30 fps -> 30; 1050 ms at 30 fps -> 32)."""
    return math.floor((timestamp_ms - start_ms) * fps / 1000.0 + 0.5)


def fraction_box_to_pixels(row: YtbbRow, width: int, height: int) -> tuple[float, float, float, float]:
    """Inclusive (x1, y1, x2, y2) pixels of a present row's fraction box, clipped to the frame."""
    x1 = min(max(row.xmin * width, 0.0), width - 1.0)
    y1 = min(max(row.ymin * height, 0.0), height - 1.0)
    x2 = min(max(row.xmax * width - 1.0, x1), width - 1.0)
    y2 = min(max(row.ymax * height - 1.0, y1), height - 1.0)
    return (x1, y1, x2, y2)


# ---------------------------------------------------------------------------------------------
# Dataset


def probe_with_decord(path: str) -> tuple[int, int, int, float]:
    """(width, height, num_frames, fps) from :func:`semidff.video.probe.probe_video`; raises
    ``ValueError`` with the probe's message when the file is unusable."""
    from semidff.video.probe import probe_video  # imported here: pyarrow and decord are slow to import

    info = probe_video(path)
    if not info.ok:
        raise ValueError(info.error)
    if info.fps is None or not info.fps > 0:
        raise ValueError(f"{path}: the container gives no frame rate, so annotation timestamps cannot be placed; remux it with ffmpeg -i IN -c copy OUT.mp4")
    return info.width, info.height, info.num_frames, info.fps


def load_youtube_bb(
    csv_path: PathLike,
    video_dir: PathLike,
    *,
    video_files: Literal["segment", "full"] = "segment",
    extension: str = ".mp4",
    probe: Optional[Probe] = None,
    classes: Literal["ytbb", "vid"] = "ytbb",
    max_videos: Optional[int] = None,
    skip_unavailable: bool = False,
    skipped: Optional[Counter] = None,
) -> LabeledDataset:
    """One :class:`LabeledVideo` per segment of the CSV, in order of first appearance.

    video_files: ``"segment"``: ``<video_dir>/<youtube_id>+<class_id>+<object_id><extension>``,
    a clip that starts at the segment's first timestamp; ``"full"``: ``<video_dir>/<youtube_id><extension>``.
    probe: path -> (width, height, num_frames, fps); default :func:`probe_with_decord`. Each file
    is probed once.
    classes: ``"ytbb"`` (23 classes, :data:`YTBB_CLASS_NAMES`) or ``"vid"`` (the 30 VID classes;
    segments of the other YT-BB classes are skipped).
    max_videos: consider only the first N segments of the CSV (before any is skipped).
    skip_unavailable: skip segments whose file is missing or fails the probe (many YouTube videos
    can no longer be downloaded) instead of raising.
    skipped: a Counter to which skipped segments and annotations are added, by reason.
    """
    if video_files not in ("segment", "full"):
        raise ValueError(f"video_files must be 'segment' or 'full', got {video_files!r}")
    if classes not in ("ytbb", "vid"):
        raise ValueError(f"classes must be 'ytbb' or 'vid', got {classes!r}")
    video_dir = Path(video_dir)
    if not video_dir.is_dir():
        raise FileNotFoundError(f"{video_dir}: no such folder; pass the folder holding the downloaded YT-BB videos")
    probe = probe or probe_with_decord
    if classes == "ytbb":
        class_names, label_of = list(YTBB_CLASS_NAMES), dict(YTBB_LABELS)
    else:
        vid_label = {name: label for label, name in enumerate(VID_CLASS_NAMES, start=1)}
        class_names, label_of = list(VID_CLASS_NAMES), {class_id: vid_label[name] for class_id, name in YTBB_TO_VID.items()}

    segments = list(ytbb_segments(read_ytbb_detection_csv(csv_path)).items())
    if max_videos is not None:
        segments = segments[:max_videos]
    counts: Counter = Counter()
    probed: dict[str, tuple[int, int, int, float]] = {}
    videos = []
    for (youtube_id, class_id, object_id), rows in segments:
        if class_id == YTBB_NONE_CLASS_ID:
            counts["segment of class none"] += 1
            continue
        if class_id not in label_of:
            counts["segment of a class outside the VID classes"] += 1
            continue
        name = f"{youtube_id}+{class_id}+{object_id}" if video_files == "segment" else youtube_id
        path = str(video_dir / f"{name}{extension}")
        if path not in probed:
            try:
                probed[path] = _probe_file(path, probe, video_files)
            except (OSError, ValueError):
                if not skip_unavailable:
                    raise
                counts["segment whose video is unavailable"] += 1
                continue
        width, height, num_frames, fps = probed[path]
        start_ms = rows[0].timestamp_ms if video_files == "segment" else 0
        frames: dict[int, FrameAnnotation] = {}
        for row in rows:
            index = timestamp_to_frame_index(row.timestamp_ms, fps, start_ms)
            if index == num_frames:  # a clip cut exactly at its last annotation
                index = num_frames - 1
            if index > num_frames:
                counts["annotation after the end of the video"] += 1
                continue
            if index in frames:
                counts["second annotation on one frame"] += 1
                continue
            objects = []
            if row.present:
                box = fraction_box_to_pixels(row, width, height)
                objects.append(ObjectAnnotation(track_id=object_id, label=label_of[class_id], box=box))
            frames[index] = FrameAnnotation(frame_index=index, objects=objects)
        videos.append(
            LabeledVideo(
                video_id=f"{youtube_id}+{class_id}+{object_id}",
                source=path,
                width=width,
                height=height,
                num_frames=num_frames,
                fps=fps,
                frames=[frames[index] for index in sorted(frames)],
            )
        )
    if skipped is not None:
        skipped.update(counts)
    if counts:
        logger.info("YouTube-BB %s: skipped %s", csv_path, ", ".join(f"{n} x {reason}" for reason, n in sorted(counts.items())))
    return LabeledDataset(class_names=class_names, videos=videos)


def _probe_file(path: str, probe: Probe, video_files: str) -> tuple[int, int, int, float]:
    if not os.path.isfile(path):
        expected = "<youtube_id>+<class_id>+<object_id>" if video_files == "segment" else "<youtube_id>"
        raise FileNotFoundError(
            f"{path}: video missing; expected one file per {'segment' if video_files == 'segment' else 'YouTube id'} named "
            f"{expected}{Path(path).suffix} (video_files={video_files!r}), or pass skip_unavailable=True"
        )
    width, height, num_frames, fps = probe(path)
    if not (width > 0 and height > 0 and num_frames > 0 and fps > 0):
        raise ValueError(f"{path}: probe gave width={width}, height={height}, num_frames={num_frames}, fps={fps}; all must be positive")
    return int(width), int(height), int(num_frames), float(fps)
