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
    frames: Iterable[np.ndarray],
    timing: VideoTiming,
    score_threshold: float = 0.5,
) -> Iterator[tuple[FrameResult, np.ndarray]]:
    """(result, annotated copy) of each decoded (H, W, 3) uint8 RGB frame, in order: boxes, class
    names and scores, the frame's kind (key / flow / copied) and the detector's frames/s so far
    in the banner, key frames in green and propagated ones in orange (:func:`draw_detections`)."""
    from semidff.visualize import draw_detections

    detector = loaded.detector
    for frame, result in detector.stream(frames, timing, loaded.short_side, loaded.max_long_side):
        kind = "key" if result.is_key else ("copied" if detector.mode == "copy" else "flow")
        banner = f"{kind} | {detector.mode} dT={detector.key_interval} | {timing.compute_fps:.1f} fps"
        yield result, draw_detections(frame, result.detections, loaded.class_names, banner, result.is_key, score_threshold)
