"""Run a video detector over a labeled dataset in each (mode, key interval) and score every run.

    dataset = load_labeled_dataset(cfg.evaluation.data, key="evaluation.data")   # semidff.data.labeled
    runs = plan_runs(["frame", "copy", "flow"], [1, 10])   # frame/dt1, copy/dt1, copy/dt10, flow/dt1, flow/dt10
    results = evaluate_runs(dataset, runs, teacher_rfcn, student_rfcn, propagator, short_side=600, max_long_side=1000)
    results[-1].map, results[-1].fps, results[-1].result.format_table()

``frame`` mode runs the R-FCN on every frame, so the key interval does not change it: it is run
once and recorded as ΔT = 1 (every frame is a key frame). ``copy``, ``oracle`` and ``flow`` are run
once per ΔT. ``oracle`` runs the teacher with its key-frame features warped by the true motion of
each video (``semidff.data.true_motion``; only generated corpora have it, :func:`true_motions_for`
says how to get one), the ceiling of what any learned flow can recover on that data. Each run
decodes every video once, in order (encoded files with decord through
:meth:`semidff.video.decode.OpenedVideo.iter_frames`, frame-image folders with Pillow), from frame
0 to the video's last annotated frame: key frames fall on 0, ΔT, 2ΔT, ... as in DFF, and frames
after the last annotation cannot change any score. Detections of annotated frames are kept, in
original-frame pixels, as :class:`FramePrediction` records; the frame rate comes from
:class:`VideoTiming` summed over the videos (networks and post-processing only, as DFF reports
speed; decoding and resizing are counted apart). Scores are ImageNet VID mAP@0.5 with the
slow / medium / fast motion buckets from the ground-truth tracks (:mod:`semidff.evaluation.vid_map`).

No Ray here: one process, one device; the job (``jobs/evaluate.py``) adds checkpoints, MLflow
and the output files.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

from semidff.config import TeacherDataConfig
from semidff.data.records import LabeledDataset, LabeledVideo
from semidff.data.true_motion import TrueMotion, TrueMotionError, load_true_motion, motion_path_for, true_feature_flow
from semidff.evaluation.vid_map import (
    FramePrediction,
    GroundTruth,
    VIDEvalResult,
    evaluate_vid,
    motion_iou_from_tracks,
)
from semidff.models.rfcn import RFCN
from semidff.models.video_detector import MODES, TrueFlow, VideoDetector, VideoTiming

Progress = Callable[[str], None]

WARM_UP_FRAMES = 2
"""Blank frames run through each detector before timing: first calls allocate memory (and on CUDA
pick kernels), which would otherwise be charged to the first video."""


class EvaluationError(ValueError):
    """The evaluation cannot run as asked: the message names the input and what to do."""


# ---------------------------------------------------------------------------------------------
# Which runs


@dataclass(frozen=True)
class RunSpec:
    """One detector run over the dataset: a mode and a key interval ΔT (frames)."""

    mode: str
    key_interval: int

    @property
    def name(self) -> str:
        """``"flow/dt10"``: the run's part of metric and file names."""
        return f"{self.mode}/dt{self.key_interval}"


def plan_runs(modes: Sequence[str], key_intervals: Sequence[int]) -> list[RunSpec]:
    """The runs for ``modes`` × ``key_intervals``: ``frame`` once (as ΔT = 1), the other modes
    once per distinct ΔT in ascending order; modes keep their given order, repeats are dropped."""
    if not modes:
        raise EvaluationError("no modes to evaluate; pass some of: " + ", ".join(MODES))
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise EvaluationError(f"unknown mode(s) {', '.join(map(repr, unknown))}; expected some of: {', '.join(MODES)}")
    bad = [k for k in key_intervals if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1]
    if bad or not key_intervals:
        raise EvaluationError(f"key intervals must be integers >= 1 (frames between key frames), got {list(key_intervals)}")
    intervals = sorted({int(k) for k in key_intervals})
    runs: list[RunSpec] = []
    for mode in dict.fromkeys(modes):
        runs += [RunSpec("frame", 1)] if mode == "frame" else [RunSpec(mode, k) for k in intervals]
    return runs


# ---------------------------------------------------------------------------------------------
# Datasets


def category_ids(data: TeacherDataConfig, dataset: LabeledDataset) -> list[int]:
    """The ``category_id`` of each label 1..K in prediction files: a custom file's own category
    ids (its categories sorted by id are the labels 1..K), else the labels themselves."""
    if data.format == "custom" and data.path:
        categories = json.loads(Path(data.path).expanduser().read_text(encoding="utf-8"))["categories"]
        return sorted(int(c["id"]) for c in categories)
    return list(range(1, dataset.num_classes() + 1))


# ---------------------------------------------------------------------------------------------
# Ground truth and frames


def frame_id(video_id: str, frame_index: int) -> str:
    """``"<video_id>/<frame_index>"``: a frame's id in predictions, ground truth and JSON files.
    Video ids may hold "/" themselves (ImageNet VID's do), so split it at the last "/"."""
    return f"{video_id}/{frame_index}"


def ground_truths_for(dataset: LabeledDataset) -> list[GroundTruth]:
    """One GroundTruth per annotated frame (empty frames included), in video then frame order,
    with each object's motion IoU from its track (NaN without a track id or a neighbour within
    ±10 frames, which keeps it out of every motion bucket)."""
    truths = []
    for video in dataset.videos:
        motion = motion_iou_from_tracks(video.tracks())
        for frame in video.frames:
            motion_iou = [
                motion[o.track_id][frame.frame_index] if o.track_id >= 0 else math.nan for o in frame.objects
            ]
            truths.append(GroundTruth(frame_id(video.video_id, frame.frame_index), frame.boxes(), frame.labels(), motion_iou))
    return truths


def video_frames(video: LabeledVideo, num_frames: int, chunk_frames: int = 16) -> Iterator[np.ndarray]:
    """Frames 0 .. num_frames - 1 of ``video`` in order, (H, W, 3) uint8 RGB at full size.

    An encoded video is read sequentially with decord (each frame decoded once), a frame folder
    one image at a time. Raises EvaluationError when the source cannot be read, has fewer frames,
    or its frames are not the ``width`` x ``height`` the annotations were made for (boxes would
    land in the wrong place).
    """
    from semidff.video.decode import VideoOpenError, open_video

    def checked(index: int, frame: np.ndarray, where: str) -> np.ndarray:
        if frame.shape[:2] != (video.height, video.width):
            raise EvaluationError(
                f"video {video.video_id}: {where} is {frame.shape[1]}x{frame.shape[0]} but the annotations "
                f"say {video.width}x{video.height}; fix the dataset's width/height (semidff data check --probe)"
            )
        return frame

    produced = 0
    if video.frame_paths is not None:
        from PIL import Image

        for index, path in enumerate(video.frame_paths[:num_frames]):
            try:
                with Image.open(path) as image:
                    frame = np.array(image.convert("RGB"))  # a writable copy (torch warns on read-only arrays)
            except OSError as exc:
                raise EvaluationError(f"video {video.video_id}: frame {index} ({path}) cannot be read: {exc}") from None
            yield checked(index, frame, path)
            produced += 1
    else:
        try:
            with open_video(video.source) as opened:
                for index, frame in enumerate(opened.iter_frames(chunk_frames)):
                    if index >= num_frames:
                        break
                    yield checked(index, frame, f"frame {index} of {video.source}")
                    produced += 1
        except VideoOpenError as exc:
            raise EvaluationError(f"video {video.video_id}: {exc.message}") from None
    if produced < num_frames:
        raise EvaluationError(
            f"video {video.video_id}: {video.source} has {produced} frames, but frame {num_frames - 1} is annotated; "
            "fix num_frames / the annotations, or the file"
        )


# ---------------------------------------------------------------------------------------------
# True motion (oracle mode)


def true_motions_for(dataset: LabeledDataset) -> dict[str, TrueMotion]:
    """The true motion of every video with annotated frames (video id → TrueMotion), read from the
    sidecar beside its source (``semidff.data.true_motion.motion_path_for``). Raises
    EvaluationError naming the videos without one, or whose motion does not fit the video."""
    motions: dict[str, TrueMotion] = {}
    missing: list[str] = []
    for video in dataset.videos:
        if not video.frames:
            continue
        path = motion_path_for(video.source)
        if "://" in path and not path.startswith("file://"):
            missing.append(f"{video.video_id} ({path}: only local files are read)")
            continue
        try:
            motion = load_true_motion(path)
        except TrueMotionError as exc:
            if not Path(path).exists():
                missing.append(f"{video.video_id} ({path})")
                continue
            raise EvaluationError(f"video {video.video_id}: {exc}") from None
        last = video.frames[-1].frame_index
        if (motion.width, motion.height) != (video.width, video.height) or motion.num_frames <= last:
            raise EvaluationError(
                f"video {video.video_id}: its true motion {path} is for {motion.width}x{motion.height}, "
                f"{motion.num_frames} frames, but the video is {video.width}x{video.height} with frame {last} annotated; "
                "regenerate the corpus (semidff.data.synthetic_motion.generate_motion_dataset)")
        motions[video.video_id] = motion
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise EvaluationError(
            f"oracle mode warps the teacher's key-frame features by each video's true motion, read from "
            f"<video>.motion.npz beside the video; {len(missing)} of {len(dataset.videos)} videos have none: {shown}. "
            "Evaluate on a corpus generated with its true motion (semidff.data.synthetic_motion.generate_motion_dataset), "
            "or leave oracle out of --modes / evaluation.modes")
    return motions


def oracle_flow(motion: TrueMotion) -> TrueFlow:
    """The :data:`~semidff.models.video_detector.TrueFlow` of one video for ``oracle`` mode: the
    true backward flow on the network input's feature grid, in cells (``true_feature_flow``)."""

    def true_flow(frame_index: int, key_index: int, image_hw: tuple[int, int], feature_hw: tuple[int, int]) -> torch.Tensor:
        cells = true_feature_flow(motion, frame_index, key_index, image_hw[0], image_hw[1], feature_shape=feature_hw)
        return torch.from_numpy(np.ascontiguousarray(cells.flow.transpose(2, 0, 1)))[None]

    return true_flow


# ---------------------------------------------------------------------------------------------
# Runs


@dataclass
class ModeResult:
    """The outcome of one run: scores, timing, and the scored frames' predictions.

    result: mAP, per-class AP and motion-bucket mAPs (fractions in [0, 1]). timing: summed over
    the videos (seconds). predictions: one per annotated frame, boxes in original pixels.
    """

    run: RunSpec
    result: VIDEvalResult
    timing: VideoTiming
    num_videos: int
    predictions: list[FramePrediction] = field(default_factory=list, repr=False)

    @property
    def mode(self) -> str:
        return self.run.mode

    @property
    def key_interval(self) -> int:
        return self.run.key_interval

    @property
    def map(self) -> float:
        return self.result.map

    @property
    def fps(self) -> float:
        """Frames per second of the detector alone (networks and post-processing), as DFF reports it."""
        return self.timing.compute_fps

    @property
    def end_to_end_fps(self) -> float:
        """Frames per second including decoding and resizing."""
        return self.timing.end_to_end_fps


def run_detector(
    detector: VideoDetector,
    dataset: LabeledDataset,
    short_side: int,
    max_long_side: int,
    progress: Optional[Progress] = None,
    label: str = "",
    motions: Optional[dict[str, TrueMotion]] = None,
) -> tuple[list[FramePrediction], VideoTiming]:
    """Detect every frame of every video up to its last annotated frame → (predictions of the
    annotated frames, timing summed over the videos). motions: each video's true motion, for
    ``oracle`` mode (:func:`true_motions_for`)."""
    say = progress or (lambda line: None)
    timing = VideoTiming()
    predictions: list[FramePrediction] = []
    warmed_up = False
    for position, video in enumerate(dataset.videos, start=1):
        if not video.frames:
            say(f"[{label}] video {position}/{len(dataset.videos)} {video.video_id}: no annotated frames, skipped")
            continue
        if not warmed_up:
            blank = np.zeros((video.height, video.width, 3), np.uint8)
            still = (lambda t, k, image_hw, feature_hw: torch.zeros(1, 2, *feature_hw)) if detector.mode == "oracle" else None
            detector.run([blank] * WARM_UP_FRAMES, short_side, max_long_side, true_flow=still)
            warmed_up = True
        annotated = {f.frame_index for f in video.frames}
        num_frames = video.frames[-1].frame_index + 1
        before = (timing.frames, timing.compute_seconds)
        frames = video_frames(video, num_frames)
        true_flow = None
        if detector.mode == "oracle":
            if motions is None or video.video_id not in motions:
                raise EvaluationError(f"video {video.video_id}: oracle mode needs its true motion (true_motions_for)")
            true_flow = oracle_flow(motions[video.video_id])
        for _, result in detector.stream(frames, timing, short_side, max_long_side, true_flow):
            if result.frame_index in annotated:
                predictions.append(FramePrediction.from_detections(frame_id(video.video_id, result.frame_index), result.detections))
        frames_done, seconds = timing.frames - before[0], timing.compute_seconds - before[1]
        say(f"[{label}] video {position}/{len(dataset.videos)} {video.video_id}: {frames_done} frames, "
            f"{len(annotated)} annotated, detector {frames_done / seconds if seconds > 0 else math.nan:.2f} frames/s")
    return predictions, timing


def evaluate_runs(
    dataset: LabeledDataset,
    runs: Sequence[RunSpec],
    teacher: RFCN,
    student: Optional[RFCN] = None,
    propagator: Optional[nn.Module] = None,
    *,
    short_side: int = 600,
    max_long_side: int = 1000,
    relaxed_small_objects: bool = True,
    progress: Optional[Progress] = None,
    motions: Optional[dict[str, TrueMotion]] = None,
) -> list[ModeResult]:
    """Run and score each of ``runs`` on ``dataset``.

    teacher: the R-FCN of ``frame``, ``copy`` and ``oracle`` mode. student and propagator: the flow
    model's R-FCN (teacher features, fine-tuned heads) and its FlowNetS / residual predictor, needed
    only for ``flow`` runs. Networks must already be on their device in eval mode.
    relaxed_small_objects: the VID per-object IoU thresholds (True) or plain IoU 0.5.
    motions: the videos' true motion for ``oracle`` runs (default: read by :func:`true_motions_for`).
    """
    say = progress or (lambda line: None)
    if any(run.mode == "flow" for run in runs) and (student is None or propagator is None):
        raise EvaluationError("flow mode needs the flow checkpoint's R-FCN and propagator (pass a flow checkpoint)")
    if any(run.mode == "oracle" for run in runs) and motions is None:
        motions = true_motions_for(dataset)
    for name, network in (("teacher", teacher), ("student", student)):
        if network is not None and network.num_classes != dataset.num_classes():
            raise EvaluationError(
                f"the {name} R-FCN predicts {network.num_classes} classes but the dataset has {dataset.num_classes()} "
                f"({', '.join(dataset.class_names[:5])}{', ...' if dataset.num_classes() > 5 else ''}); "
                "evaluate on the classes the model was trained for"
            )
    truths = ground_truths_for(dataset)
    results = []
    for run in runs:
        flow = run.mode == "flow"
        detector = VideoDetector(student if flow else teacher, propagator if flow else None, run.key_interval, run.mode)
        with torch.inference_mode():
            predictions, timing = run_detector(detector, dataset, short_side, max_long_side, say, run.name, motions)
        result = evaluate_vid(
            predictions, truths, dataset.num_classes(), dataset.class_names, relaxed_small_objects=relaxed_small_objects
        )
        say(f"[{run.name}] mAP {100 * result.map:.1f} over {result.num_frames} annotated frames, "
            f"detector {timing.compute_fps:.2f} frames/s ({timing.frames} frames, {timing.key_frames} key frames)")
        results.append(ModeResult(run, result, timing, len(dataset.videos), predictions))
    return results
