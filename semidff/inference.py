"""A ready detector from checkpoints, and its frames with the detections drawn.

    loaded = load_detector("teacher.pt", "flow.pt", mode="flow", key_interval=10)
    timing = VideoTiming()
    for result, image in annotated_frames(loaded, frames, timing):   # frames: (H, W, 3) uint8 RGB
        ...

Used by ``semidff detect`` (an annotated video) and ``semidff demo`` (annotated example frames).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import numpy as np

from semidff.checkpoint import PROPAGATOR_KEYS, ModelCheckpoint, build_teacher, check_same_model, load_model_checkpoint
from semidff.models.video_detector import MODES, FrameResult, VideoDetector, VideoTiming


def _class_names(checkpoint: ModelCheckpoint) -> list[str]:
    names = checkpoint.meta.get("class_names")
    if isinstance(names, list) and len(names) == checkpoint.config.model.num_classes:
        return [str(name) for name in names]
    return [f"class {i}" for i in range(1, checkpoint.config.model.num_classes + 1)]


@dataclass
class LoadedDetector:
    """A ready :class:`VideoDetector` with what drawing and preprocessing its frames need."""

    detector: VideoDetector
    short_side: int
    max_long_side: int
    class_names: list[str]

    @property
    def mode(self) -> str:
        return self.detector.mode


def load_detector(
    teacher_checkpoint: str,
    flow_checkpoint: Optional[str] = None,
    mode: Optional[str] = None,
    key_interval: int = 10,
    device: str = "auto",
) -> LoadedDetector:
    """The detector of ``mode`` (default: flow when a flow checkpoint is given, else frame).

    Frame and copy modes run the teacher; flow mode runs the flow checkpoint's student R-FCN heads
    on features propagated from key frames by its flow network. Raises ValueError for a mode or
    ΔT that cannot run, ModelCheckpointError for an unusable checkpoint.
    """
    from semidff.models.build import build_propagator
    from semidff.preprocess import resolve_device

    mode = mode or ("flow" if flow_checkpoint else "frame")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "oracle":
        raise ValueError("mode=oracle warps by the true motion of a generated video and runs only in `semidff evaluate`; "
                         "use frame, copy or flow")
    if key_interval < 1:
        raise ValueError(f"key_interval={key_interval}: must be >= 1")
    if mode == "flow" and not flow_checkpoint:
        raise ValueError("mode=flow needs --flow FLOW.pt (a checkpoint written by `semidff train`)")
    torch_device = resolve_device(device)
    teacher = load_model_checkpoint(teacher_checkpoint, expected_kind="teacher")
    spatial, propagator = teacher, None
    if mode == "flow":
        flow = load_model_checkpoint(flow_checkpoint, expected_kind="flow")
        check_same_model(flow, teacher.config, keys=("model",), ignore=PROPAGATOR_KEYS)
        spatial = flow
        propagator = build_propagator(flow.config.model)
        propagator.load_state_dict(flow.state_dicts["propagator"])
        propagator = propagator.to(torch_device).eval()
    detector = VideoDetector(build_teacher(spatial, torch_device), propagator, key_interval=key_interval, mode=mode)
    preprocess = spatial.config.preprocess
    return LoadedDetector(detector, preprocess.short_side, preprocess.max_long_side, _class_names(teacher))


def annotated_frames(
    loaded: LoadedDetector,
    frames: Iterable[Optional[np.ndarray]],
    timing: VideoTiming,
    score_threshold: float = 0.5,
    frame_shape: Optional[tuple[int, int]] = None,
) -> Iterator[tuple[FrameResult, np.ndarray]]:
    """(result, annotated copy) of each decoded (H, W, 3) uint8 RGB frame, in order: boxes, class
    names and scores, the frame's kind (key / flow / copied) and the detector's frames/s so far
    in the banner, key frames in green and propagated ones in orange (:func:`draw_detections`).

    A ``None`` among the frames is a frame that did not decode: its result is marked ``lost`` and
    its image is a grey placeholder saying so (:func:`lost_frame_image`), of ``frame_shape``
    (height, width; default: the size of the frames around it), so the output keeps every frame
    of the source at its time."""
    from semidff.visualize import draw_detections

    detector = loaded.detector
    shape = frame_shape
    for frame, result in detector.stream(frames, timing, loaded.short_side, loaded.max_long_side):
        if result.lost:
            yield result, lost_frame_image(result.frame_index, shape or (64, 64))
            continue
        shape = shape or tuple(np.asarray(frame).shape[:2])
        kind = "key" if result.is_key else ("copied" if detector.mode == "copy" else "flow")
        banner = f"{kind} | {detector.mode} dT={detector.key_interval} | {timing.compute_fps:.1f} fps"
        yield result, draw_detections(frame, result.detections, loaded.class_names, banner, result.is_key, score_threshold)


LOST_COLOR = (128, 128, 128)  # the placeholder of a frame that did not decode


def lost_frame_image(frame_index: int, shape: tuple[int, int]) -> np.ndarray:
    """A (height, width, 3) uint8 grey frame with a red border and "frame N did not decode": what
    an annotated video shows in place of a frame of the source that did not decode."""
    from PIL import Image, ImageDraw

    height, width = int(shape[0]), int(shape[1])
    image = Image.new("RGB", (width, height), LOST_COLOR)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, width - 1, height - 1], outline=(220, 0, 0), width=3)
    draw.text((4, 4), f"lost | frame {frame_index} did not decode", fill=(255, 255, 255))
    return np.asarray(image)


def prediction_record(result: FrameResult, class_names: list[str], score_threshold: float = 0.5, fps: Optional[float] = None) -> dict:
    """One frame's predictions as plain data (a line of ``semidff detect``'s predictions file):
    frame index, time in seconds (when ``fps`` is known), kind ("key", "propagated" or "lost": the
    frame did not decode and has no detections) and the detections scoring at least
    ``score_threshold``: box (x1, y1, x2, y2, original pixels), class name, score."""
    detections = result.detections
    boxes = detections.boxes.detach().cpu().float().tolist()
    scores = detections.scores.detach().cpu().float().tolist()
    labels = detections.labels.detach().cpu().tolist()
    found = [
        dict(box=[round(v, 2) for v in box], label=int(label), name=class_names[int(label) - 1] if 1 <= int(label) <= len(class_names) else f"class {int(label)}", score=round(score, 4))
        for box, score, label in zip(boxes, scores, labels)
        if score >= score_threshold
    ]
    kind = "lost" if result.lost else ("key" if result.is_key else "propagated")
    record = dict(frame=result.frame_index, kind=kind, detections=found)
    if fps:
        record["time_s"] = round(result.frame_index / fps, 4)
    return record
