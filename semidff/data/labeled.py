"""A labeled dataset named by a config data section (``teacher_training.data``, ``evaluation.data``):
read it with the right reader, and identify it by digest for MLflow lineage.

    dataset = load_labeled_dataset(cfg.teacher_training.data, num_classes=cfg.model.num_classes)
    digest = dataset_digest(cfg.teacher_training.data, dataset)   # what stage 1 and the evaluation log
    scored = annotations_digest(dataset)                          # what was read (any subset of it)

Stage 1 (``jobs/train_teacher.py``) and the evaluation (``jobs/evaluate.py``) read their data here,
so the same data section gives the same dataset and the same digest in both runs.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from semidff.config import TeacherDataConfig
from semidff.data.records import LabeledDataset

logger = logging.getLogger(__name__)


class LabeledDataError(ValueError):
    """The labeled dataset named by the config is missing or unreadable; the message says which key and what to do."""


def load_labeled_dataset(
    data: TeacherDataConfig, num_classes: Optional[int] = None, key: str = "teacher_training.data"
) -> LabeledDataset:
    """Read the labeled dataset a :class:`~semidff.config.TeacherDataConfig` names, with any reader.

    num_classes: the model's foreground classes; YouTube-BB is read with the 30 VID classes when it
    is 30, else with its own 23. key: the config key for messages (``evaluation.data`` ...).
    Raises :class:`LabeledDataError` naming the key, the value and the fix.
    """
    if data.path is None:
        what, example = {
            "custom": ("the semidff-video/1 JSON file", "runs/synthetic/dataset.json"),
            "imagenet_vid": ("the ILSVRC2015 folder", "/data/ILSVRC2015"),
            "imagenet_det": ("the ILSVRC2015 folder", "/data/ILSVRC2015"),
            "youtube_bb": ("the YT-BB detection CSV", "/data/yt_bb_detection_train.csv"),
        }[data.format]
        raise LabeledDataError(f"{key}.path is not set: give {what}, e.g. {key}.path={example}")
    path = Path(data.path).expanduser()
    if "://" not in data.path and not path.exists():
        raise LabeledDataError(f"{key}.path={data.path}: no such file or folder")
    try:
        if data.format == "custom":
            from semidff.data.custom_format import load_custom_dataset

            return load_custom_dataset(path)
        if data.format == "imagenet_vid":
            from semidff.data.imagenet_vid import load_imagenet_vid, read_vid_train_samples

            if data.split not in ("train", "val"):
                raise LabeledDataError(f"{key}.split={data.split!r}: ImageNet VID has the splits 'train' and 'val'")
            dataset = load_imagenet_vid(path, split=data.split)
            if data.split == "train":  # DFF's VID_train_15frames: 15 frames per snippet
                wanted = collections.defaultdict(set)
                for video_id, frame_index in read_vid_train_samples(path):
                    wanted[video_id].add(frame_index)
                for video in dataset.videos:
                    video.frames = [f for f in video.frames if f.frame_index in wanted[video.video_id]]
            return dataset
        if data.format == "imagenet_det":
            from semidff.data.imagenet_vid import load_imagenet_det

            return load_imagenet_det(path, image_set="DET_train_30classes" if data.split == "train" else data.split)
        from semidff.data.imagenet_vid import VID_CLASS_NAMES
        from semidff.data.youtube_bb import YTBB_CLASS_NAMES, load_youtube_bb

        if data.video_dir is None:
            raise LabeledDataError(f"{key}.video_dir is not set: YouTube-BB needs the folder of the downloaded videos")
        if num_classes not in (None, len(VID_CLASS_NAMES), len(YTBB_CLASS_NAMES)):
            raise LabeledDataError(
                f"model.num_classes={num_classes}: YouTube-BB is read with its {len(YTBB_CLASS_NAMES)} classes or "
                f"the {len(VID_CLASS_NAMES)} ImageNet VID classes; set one of these"
            )
        skipped: collections.Counter = collections.Counter()
        classes = "vid" if num_classes == len(VID_CLASS_NAMES) else "ytbb"
        dataset = load_youtube_bb(path, data.video_dir, classes=classes, skip_unavailable=True, skipped=skipped)
        if skipped:
            logger.warning("YouTube-BB %s: skipped %s", path, ", ".join(f"{n} x {r}" for r, n in sorted(skipped.items())))
        return dataset
    except LabeledDataError:
        raise
    except (OSError, ValueError) as exc:  # the readers name the file and the row/element
        raise LabeledDataError(f"{key} ({data.format} at {data.path}): {exc}") from None


def dataset_digest(data: TeacherDataConfig, dataset: LabeledDataset) -> str:
    """SHA-256 of the annotation file (custom JSON, YT-BB CSV); for ImageNet VID/DET, whose
    annotations are one XML per frame, :func:`annotations_digest` of the annotations read (the
    same digest the evaluation logs for what it scored)."""
    if data.format in ("custom", "youtube_bb") and data.path and "://" not in data.path:
        from semidff.checkpoint import file_sha256

        return file_sha256(Path(data.path).expanduser())
    return annotations_digest(dataset)


def annotations_digest(dataset: LabeledDataset) -> str:
    """SHA-256 of what is scored: class names and, per video, its id, size and every annotated
    frame's boxes, labels and tracks. Stable for the same annotations whatever file they came from."""
    digest = hashlib.sha256(json.dumps(dataset.class_names).encode())
    for video in dataset.videos:
        digest.update(json.dumps([video.video_id, video.width, video.height, video.num_frames]).encode())
        for frame in video.frames:
            digest.update(np.int64(frame.frame_index).tobytes())
            digest.update(np.ascontiguousarray(frame.boxes(), dtype=np.float64).tobytes())
            digest.update(frame.labels().tobytes())
            digest.update(frame.track_ids().tobytes())
    return digest.hexdigest()
