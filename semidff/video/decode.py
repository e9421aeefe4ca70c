"""Decode planned clips with decord: each video opened once, only the frames the clips need.

    for result in decode_clips(uri, plan_clips(info)):
        if isinstance(result, ClipFrames):
            result.key_frame, result.current_frames      # (h, w, 3) and (m, h, w, 3) uint8 RGB, resized
        else:                                             # ClipFailure
            result.reason, result.error

    with open_video(uri) as video:                        # keyframes and decoding from one open
        clips = plan_clips(info, codec_keyframes=video.keyframe_indices(), align_to_codec_keyframes=True)
        results = list(video.decode_clips(clips))

The frames a video's clips need are read in ascending order with decord's ``get_batch``, in chunks
of ``chunk_frames`` to bound memory: decord seeks only when the next frame lies past a codec
keyframe, otherwise it decodes forward (what ``frames_decoded_for`` counts). Frames are resized in
uint8 (short side 600, long side at most 1000 by default, ``semidff.preprocess.resized_shape``) and
kept until the last clip that needs them is out. Normalisation is left to the teacher stage.

A read that fails stops the video: every clip not yet yielded comes back as a
:class:`ClipFailure` with the reason, the clips yielded before it stay good, and a frame that did
not decode never reaches a ClipFrames. decord decodes on a thread that works ahead, so a damaged
packet's error can surface from an earlier read: on a file whose last frame is broken, the read
of frames 0-31 failed in 3 of 60 tries. A failed read is therefore tried once more on a freshly
opened reader before the clips fail. A video that cannot be opened fails all its clips the same
way. Nothing here raises for a bad file.

Keyframe positions come from the container's index, which decord reads when it opens the file
(``get_key_indices``): no frame is decoded. Measured on 500-frame 640x360 H.264 files, opening and
listing took 2-3 ms with decord and the same with PyAV's packet flags; decord is used because the
clip decoder opens the file with it anyway.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import pyarrow.fs as pafs

from semidff.preprocess import resize_frames as resize_uint8_frames
from semidff.video.clip_plan import ClipSpec
from semidff.video.probe import (
    REASON_NO_FRAMES,
    REASON_READ_ERROR,
    decord_detail,
    filesystem_for,
    local_copy,
    open_failure,
    UnusableVideo,
    is_local,
    normalize_uri,
)

REASON_DECODE_FAILED = "decode failed"  # a frame the clip needs (or one before it in the same read) did not decode
REASON_FRAME_OUT_OF_RANGE = "frame out of range"  # the file has fewer frames than the plan assumed (changed since the manifest?)


@dataclass(frozen=True)
class ClipFrames:
    """The decoded frames of one clip, resized; ``clip`` says which frames they are."""

    clip: ClipSpec
    key_frame: np.ndarray  # (h, w, 3) uint8 RGB
    current_frames: np.ndarray  # (m, h, w, 3) uint8 RGB, in the order of clip.current_indices
    scale: float  # resized / original pixels (semidff.preprocess.resized_shape)

    @property
    def clip_id(self) -> str:
        return self.clip.clip_id


@dataclass(frozen=True)
class ClipFailure:
    """A clip that could not be decoded: a short reason (for grouping) and a message naming the file."""

    clip: ClipSpec
    reason: str
    error: str

    @property
    def clip_id(self) -> str:
        return self.clip.clip_id


ClipResult = Union[ClipFrames, ClipFailure]


class VideoOpenError(Exception):
    """The video cannot be opened for decoding; ``reason`` is a probe REASON_* category."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


def resize_frames(frames: np.ndarray, short_side: int = 600, max_long_side: int = 1000) -> tuple[np.ndarray, float]:
    """(N, H, W, 3) uint8 -> ((N, h, w, 3) uint8 numpy, scale): :func:`semidff.preprocess.resize_frames`."""
    resized, scale = resize_uint8_frames(frames, short_side, max_long_side)
    return resized.numpy(), scale


class OpenedVideo:
    """A video opened with decord (one thread): its codec keyframes and its clips' frames."""

    def __init__(self, uri: str, reader, reopen: Optional[Callable[[], Any]] = None):
        self.uri = uri
        self._reader = reader
        self._reopen = reopen  # a fresh reader of the same file, for the one retry of a failed read

    @property
    def num_frames(self) -> int:
        return len(self._reader)

    def keyframe_indices(self) -> list[int]:
        """Frame indices (display order) of the codec's keyframes, from the container's index."""
        return sorted(int(i) for i in self._reader.get_key_indices())

    def decode_clips(
        self, clips: Sequence[ClipSpec], *, short_side: int = 600, max_long_side: int = 1000, chunk_frames: int = 16
    ) -> Iterator[ClipResult]:
        """One result per clip, each as soon as its last frame is decoded (clips ordered by their
        last frame). At most ``chunk_frames`` full-size frames are decoded per read."""
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames={chunk_frames}: must be >= 1")
        num_frames = self.num_frames
        pending = []
        for clip in clips:
            if clip.frame_indices and clip.frame_indices[-1] >= num_frames:
                yield ClipFailure(
                    clip,
                    REASON_FRAME_OUT_OF_RANGE,
                    f"{self.uri}: the clip needs frame {clip.frame_indices[-1]} but the file has {num_frames} frames; "
                    "it changed since the manifest was built, rebuild the manifest",
                )
            else:
                pending.append(clip)
        pending.sort(key=lambda c: (c.frame_indices[-1], c.key_index))
        # first_needed[i]: the lowest frame any of pending[i:] still needs; frames below it are dropped
        first_needed = np.minimum.accumulate([c.frame_indices[0] for c in pending][::-1])[::-1].tolist() + [num_frames]
        wanted = sorted({i for clip in pending for i in clip.frame_indices})
        frames: dict[int, np.ndarray] = {}
        scale = 1.0
        done = 0
        for start in range(0, len(wanted), chunk_frames):
            chunk = wanted[start : start + chunk_frames]
            try:
                decoded, scale = resize_frames(self._read(chunk), short_side, max_long_side)
            except Exception as exc:  # decord raises DECORDError/RuntimeError with FFmpeg's code in the text
                error = (
                    f"{self.uri}: frames {chunk[0]}-{chunk[-1]} did not decode ({decord_detail(exc)}); "
                    "the file is damaged from about there on, fetch it again"
                )
                for clip in pending[done:]:
                    yield ClipFailure(clip, REASON_DECODE_FAILED, error)
                return
            frames.update(zip(chunk, decoded))
            while done < len(pending) and pending[done].frame_indices[-1] <= chunk[-1]:
                clip = pending[done]
                current = np.stack([frames[i] for i in clip.current_indices])
                yield ClipFrames(clip, frames[clip.key_index].copy(), current, scale)
                done += 1
            for index in [i for i in frames if i < first_needed[done]]:
                del frames[index]

    def iter_frames(self, chunk_frames: int = 16) -> Iterator[np.ndarray]:
        """Every frame in display order, (H, W, 3) uint8 RGB at full size, read ``chunk_frames`` at a
        time (sequential reads: each codec frame is decoded once)."""
        for start in range(0, self.num_frames, chunk_frames):
            chunk = list(range(start, min(start + chunk_frames, self.num_frames)))
            try:
                batch = self._read(chunk)
            except Exception as exc:
                raise VideoOpenError(
                    REASON_DECODE_FAILED,
                    f"{self.uri}: frames {chunk[0]}-{chunk[-1]} did not decode ({decord_detail(exc)}); the file is damaged from about there on",
                ) from None
            yield from batch

    def _read(self, indices: list[int]) -> np.ndarray:
        """(N, H, W, 3) uint8 frames; a failed read is tried once more on a freshly opened reader,
        because decord's decoder thread works ahead and may report a later packet's error early."""
        try:
            return self._reader.get_batch(indices).asnumpy()
        except Exception:
            if self._reopen is None:
                raise
        self._reader = self._reopen()
        return self._reader.get_batch(indices).asnumpy()


@contextlib.contextmanager
def open_video(uri: str, filesystem: Optional[pafs.FileSystem] = None) -> Iterator[OpenedVideo]:
    """Open ``uri`` (a local path, file://, s3://, gs:// or any pyarrow URI) with decord.

    filesystem: as in ``probe_video``: a pyarrow filesystem holding ``uri`` (its path there, or a
    ``scheme://`` URI whose scheme is dropped). Files on other filesystems than the local one are
    streamed to a temporary local file first (decord would read a file object whole into memory),
    as the probe does. Raises VideoOpenError with the reason.
    """
    with contextlib.ExitStack() as stack:
        try:
            if filesystem is not None:
                path = uri.partition("://")[2] or uri
            else:
                try:
                    uri = normalize_uri(uri)
                except ValueError as exc:  # a malformed file:// URI
                    raise UnusableVideo(REASON_READ_ERROR, str(exc)) from None
                filesystem, path = (None, uri) if is_local(uri) else filesystem_for(uri)
            local_path, _ = stack.enter_context(local_copy(uri, path, filesystem))
            reader = _decord_reader(uri, local_path)
        except UnusableVideo as bad:
            raise VideoOpenError(bad.reason, bad.message) from None
        yield OpenedVideo(uri, reader, reopen=lambda: _decord_reader(uri, local_path))


def _decord_reader(uri: str, local_path: str):
    import decord  # here, so that importing this module stays cheap (and PyAV can be loaded first in tests)

    try:
        return decord.VideoReader(local_path, ctx=decord.cpu(0), num_threads=1)
    except AssertionError:  # decord asserts a positive frame count
        raise UnusableVideo(REASON_NO_FRAMES, f"{uri}: the video stream has 0 frames") from None
    except Exception as exc:
        raise open_failure(uri, exc) from None


def codec_keyframe_indices(uri: str) -> list[int]:
    """Frame indices of the codec keyframes of ``uri``, from the container's index (no decoding).
    Raises VideoOpenError when the file cannot be opened."""
    with open_video(uri) as video:
        return video.keyframe_indices()


def decode_clips(
    uri: str,
    clips: Sequence[ClipSpec],
    *,
    short_side: int = 600,
    max_long_side: int = 1000,
    chunk_frames: int = 16,
    filesystem: Optional[pafs.FileSystem] = None,
) -> Iterator[ClipResult]:
    """Open ``uri`` once (see open_video) and yield one ClipFrames or ClipFailure per clip (see
    OpenedVideo.decode_clips); a file that cannot be opened yields a ClipFailure for every clip."""
    try:
        with open_video(uri, filesystem) as video:
            yield from video.decode_clips(clips, short_side=short_side, max_long_side=max_long_side, chunk_frames=chunk_frames)
    except VideoOpenError as exc:
        for clip in clips:
            yield ClipFailure(clip, exc.reason, exc.message)
