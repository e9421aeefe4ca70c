"""Walk a video's frames with a key-frame interval ΔT and detect objects in every frame.

Modes (paper §4.1 baselines):
- ``frame``: the R-FCN on every frame (the accuracy upper bound).
- ``copy``: the R-FCN on key frames only; the other frames reuse the key frame's detections.
- ``flow``: semi-DFF. Key frames run the backbone and cache their image and features; every other
  frame predicts ``warp(f_key, flow) * scale`` (Eq. 1) and runs only the RPN and R-FCN heads on it.
- ``oracle``: like ``flow``, with the *true* motion of a generated video as the flow and no scale
  field: ``warp(f_key, true flow)``, the ceiling of any learned flow on that video. The true flow
  comes from a :data:`TrueFlow` callable given to :meth:`VideoDetector.stream` per video
  (``semidff.data.true_motion``); looking it up is not timed.

A frame is a key frame when its index since :meth:`VideoDetector.reset` is a multiple of ΔT
(DFF and mmtracking: frames 0, ΔT, 2ΔT, ... of each video). A frame that did not decode (``None``
in the frames given to :meth:`VideoDetector.stream`) gets a result marked ``lost``, without
detections, and the next decoded frame is a key frame: nothing is propagated across damage. Time spent waiting for the next
frame (decoding), preprocessing and the networks' compute are measured separately, the way DFF
reports detector speed without data loading.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Literal, Optional

import numpy as np
import torch
from torch import nn

from semidff.models.rfcn import RFCN, Detections
from semidff.ops.warp import warp_features
from semidff.preprocess import preprocess_frames

Mode = Literal["frame", "copy", "flow", "oracle"]
MODES: tuple[str, ...] = ("frame", "copy", "flow", "oracle")

TrueFlow = Callable[[int, int, tuple[int, int], tuple[int, int]], torch.Tensor]
"""``true_flow(frame_index, key_frame_index, image_hw, feature_hw)`` → (1, 2, h, w) float backward
flow in feature cells from the frame to its key frame (channel 0 = x; ``semidff.ops.warp``): the
true motion that ``oracle`` mode warps the key frame's features by. image_hw: the network input's
size (the resized frame), feature_hw: the feature map's."""


@dataclass
class FrameResult:
    """Detections of one frame, in the original frame's pixel coordinates."""

    frame_index: int
    is_key: bool
    detections: Detections
    compute_seconds: float
    lost: bool = False  # the frame did not decode: no detections (see VideoDetector.stream)


def no_detections() -> Detections:
    """The detections of a frame without any."""
    return Detections(torch.zeros((0, 4)), torch.zeros((0,)), torch.zeros((0,), dtype=torch.int64))


@dataclass
class VideoTiming:
    """Where the time of a run went (seconds)."""

    frames: int = 0  # frames detected (lost ones not counted)
    key_frames: int = 0
    lost_frames: int = 0  # frames that did not decode
    decode_seconds: float = 0.0
    preprocess_seconds: float = 0.0
    compute_seconds: float = 0.0
    key_compute_seconds: list[float] = field(default_factory=list)
    other_compute_seconds: list[float] = field(default_factory=list)

    @property
    def compute_fps(self) -> float:
        """Frames per second of the detector alone (networks and post-processing)."""
        return self.frames / self.compute_seconds if self.compute_seconds > 0 else float("nan")

    @property
    def end_to_end_fps(self) -> float:
        """Frames per second including decoding and preprocessing."""
        total = self.decode_seconds + self.preprocess_seconds + self.compute_seconds
        return self.frames / total if total > 0 else float("nan")


class VideoDetector:
    """A frame-by-frame detector with key-frame scheduling; see the module docstring.

    rfcn: the spatial module. propagator: a module with
    ``propagate(key_features, cur_images, key_images) -> features`` (FlowNetS or the residual
    predictor); needed only in ``flow`` mode. ``oracle`` mode needs a :data:`TrueFlow` for each
    video (:meth:`stream`, :meth:`run`). On CUDA the networks run under fp16 autocast
    unless ``autocast=False``.
    """

    def __init__(
        self,
        rfcn: RFCN,
        propagator: Optional[nn.Module] = None,
        key_interval: int = 10,
        mode: Mode = "flow",
        autocast: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
        if key_interval < 1:
            raise ValueError(f"key_interval={key_interval}: must be >= 1")
        if mode == "flow" and propagator is None:
            raise ValueError("mode='flow' needs a propagator (a FlowNetS or ResidualFeaturePredictor)")
        self.rfcn = rfcn
        self.propagator = propagator
        self.key_interval = key_interval
        self.mode = mode
        self.device = next(rfcn.parameters()).device
        self.autocast = autocast and self.device.type == "cuda"
        self.reset()

    def reset(self) -> None:
        """Start a new video: the next frame is a key frame."""
        self._frame_index = 0
        self._frames_since_key = 0
        self._key_index = 0
        self.true_flow: Optional[TrueFlow] = None
        self._key_images: Optional[torch.Tensor] = None
        self._key_features: Optional[torch.Tensor] = None
        self._key_detections: Optional[Detections] = None

    def lose_frame(self) -> FrameResult:
        """The result of a frame that did not decode: marked lost, no detections; the next
        decoded frame is a key frame (a fresh start after the damage)."""
        result = FrameResult(self._frame_index, False, no_detections(), 0.0, lost=True)
        self._frame_index += 1
        self._key_images = self._key_features = self._key_detections = None
        self._frames_since_key = 0
        return result

    def _is_key(self, images: torch.Tensor) -> bool:
        if self.mode == "frame" or self._key_images is None:
            return True
        # a size change (a new stream without reset) cannot reuse the cached key frame
        return self._frames_since_key >= self.key_interval or self._key_images.shape != images.shape

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def detect_frame(self, images: torch.Tensor, scale: float = 1.0) -> FrameResult:
        """Detect objects in one preprocessed frame.

        images: (1, 3, H, W) as :func:`semidff.preprocess.preprocess_frames` returns it;
        scale: the resize factor it returned (boxes are divided by it).
        """
        if images.ndim != 4 or images.shape[0] != 1:
            raise ValueError(f"detect_frame takes one frame (1, 3, H, W), got {tuple(images.shape)}")
        images = images.to(self.device, non_blocking=True)
        is_key = self._is_key(images)
        true_flow = None
        if self.mode == "oracle" and not is_key:  # an oracle's lookup, not the detector's work: before the clock starts
            if self.true_flow is None:
                raise ValueError("mode='oracle' needs the video's true motion: pass true_flow= to stream() / run()")
            true_flow = self.true_flow(self._frame_index, self._key_index, tuple(images.shape[-2:]),
                                       tuple(self._key_features.shape[-2:])).to(self.device)
        self._synchronize()
        start = time.perf_counter()
        amp = torch.autocast("cuda", dtype=torch.float16) if self.autocast else nullcontext()
        with amp:
            if is_key:
                features = self.rfcn.extract_features(images)
                detections = self.rfcn.detect(self.rfcn.forward_heads(features, images.shape[-2:]), scale)[0]
                if self.mode != "frame":
                    self._key_images, self._key_features, self._key_detections = images, features, detections
            elif self.mode == "copy":
                detections = self._key_detections
            elif self.mode == "oracle":
                features = warp_features(self._key_features, true_flow.to(self._key_features.dtype))
                detections = self.rfcn.detect(self.rfcn.forward_heads(features, images.shape[-2:]), scale)[0]
            else:
                features = self.propagator.propagate(self._key_features, images, self._key_images)
                detections = self.rfcn.detect(self.rfcn.forward_heads(features, images.shape[-2:]), scale)[0]
        self._synchronize()
        elapsed = time.perf_counter() - start
        result = FrameResult(self._frame_index, is_key, detections, elapsed)
        if is_key:
            self._key_index = self._frame_index
        self._frame_index += 1
        self._frames_since_key = 1 if is_key else self._frames_since_key + 1
        return result

    def run(
        self, frames: Iterable[np.ndarray | torch.Tensor], short_side: int = 600, max_long_side: int = 1000,
        true_flow: Optional[TrueFlow] = None,
    ) -> tuple[list[FrameResult], VideoTiming]:
        """Detect every frame of one video. frames: decoded (H, W, 3) uint8 RGB frames, in order;
        true_flow: the video's true motion (``oracle`` mode only)."""
        timing = VideoTiming()
        results = [result for _, result in self.stream(frames, timing, short_side, max_long_side, true_flow)]
        return results, timing

    def stream(
        self,
        frames: Iterable[Optional[np.ndarray | torch.Tensor]],
        timing: VideoTiming,
        short_side: int = 600,
        max_long_side: int = 1000,
        true_flow: Optional[TrueFlow] = None,
    ) -> Iterator[tuple[Optional[np.ndarray | torch.Tensor], FrameResult]]:
        """Like :meth:`run`, one (frame, result) at a time, so a long video never sits in memory;
        ``timing`` is updated as frames go by. A ``None`` among the frames stands for one that did
        not decode: (None, its :meth:`lose_frame` result)."""
        self.reset()
        self.true_flow = true_flow
        iterator: Iterator = iter(frames)
        while True:
            start = time.perf_counter()
            try:
                frame = next(iterator)
            except StopIteration:
                return
            decoded = time.perf_counter()
            if frame is None:
                timing.decode_seconds += decoded - start
                timing.lost_frames += 1
                yield None, self.lose_frame()
                continue
            images, scale = preprocess_frames(torch.as_tensor(frame)[None], short_side, max_long_side)
            timing.decode_seconds += decoded - start
            timing.preprocess_seconds += time.perf_counter() - decoded
            result = self.detect_frame(images, scale)
            timing.frames += 1
            timing.compute_seconds += result.compute_seconds
            if result.is_key:
                timing.key_frames += 1
                timing.key_compute_seconds.append(result.compute_seconds)
            else:
                timing.other_compute_seconds.append(result.compute_seconds)
            yield frame, result
