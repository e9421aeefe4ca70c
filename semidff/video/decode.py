"""Decode planned clips: each video opened once, only the frames the clips need, and of the frames
before them only those the codec cannot do without.

    for result in decode_clips(uri, plan_clips(info)):
        if isinstance(result, ClipFrames):
            result.key_frame, result.current_frames      # (h, w, 3) and (m, h, w, 3) uint8 RGB, resized
        else:                                             # ClipFailure
            result.reason, result.error

    with open_video(uri, num_frames=info.num_frames) as video:   # keyframes and decoding from one open
        clips = plan_clips(info, codec_keyframes=video.keyframe_indices(), align_to_codec_keyframes=True)
        results = list(video.decode_clips(clips))

Two decoders give the same frames (frame ``i`` is the ``i``-th in presentation order, RGB):

* ``pyav`` (the fast path): one demux pass (no decoding) lists the stream's packets, their
  presentation order and the codec keyframes. Then, for each wanted frame, the packets from the
  keyframe before it up to its own packet are sent to the decoder, and of those only the wanted
  ones and the reference frames are decoded: the decoder skips the non-reference frames
  (``skip_frame=NONREF``, set packet by packet), and packets of GOPs without a wanted frame are
  never sent. Only wanted frames are converted to RGB. ``semidff benchmark decode`` (BENCHMARKS.md,
  60-s 720p H.264 files, 1 clip per second, one process, CPU seconds per file, resize included):
  GOP 250, 1.94 s against 3.10 s with decord and 2.03 s for the ffmpeg CLI decoding every frame;
  GOP 30, 0.92 s against 2.28 s. Reading every frame (:meth:`OpenedVideo.iter_frames`, measured
  once on a GOP-30 file): 1.1 s against 2.7 s with decord.
* ``decord`` (the reference, as in the manifest's probe): ``get_batch`` of the wanted frames in
  ascending chunks; decord seeks only when the next frame lies past a codec keyframe, otherwise it
  decodes forward. decord seeks by timestamp, so a file whose frames lack timestamps (MPEG-4 Part
  2 in AVI with B-frames) is read forward only, from frame 0 (a seek there lands frames early).

``decoder="auto"`` (the default) takes PyAV when its index is trustworthy: every packet has a
distinct timestamp and, when the caller gives the frame count its plan assumed (the manifest's),
the counts agree, or PyAV lists more and exactly those extra frames at the end do not decode (a
file whose last packets are cut: the manifest counts only what decodes). Otherwise, and when a
PyAV decode fails part way (an error, a corrupt or missing frame), decord takes over from the
first frame not yet delivered: frame indices and failure reasons stay decord's.
``OpenedVideo.decoder`` says which one is reading. Frames past the plan's count are never read,
so a decoder that would repeat the last good frame for them (decord does) never gets the chance.

Both decoders' frames are turned as the container's display matrix says, in one place
(``OpenedVideo._displayed``, with :func:`semidff.video.pyav_reader.orient`): PyAV returns them as
coded, decord turns MP4/MOV frames itself and leaves Matroska/WebM ones; either way a 90° phone
video comes out as it is shown, at the size the manifest lists.

Frames are resized in uint8 (short side 600, long side at most 1000 by default,
``semidff.preprocess.resized_shape``), ``chunk_frames`` full-size frames at a time, and kept until
the last clip that needs them is out. Normalisation is left to the teacher stage.

Damage, the one policy of every stage (:meth:`OpenedVideo.read_frames`): the frames from the
first one that did not decode up to the next codec keyframe are lost (:class:`LostFrames`, one
message for the range), decoding starts again at that keyframe (the frames after it do not depend
on the damaged ones), and without a later keyframe the rest of the video is lost. The clips that
need a lost frame come back as :class:`ClipFailure` with that message, the clips on either side
keep their frames; ``semidff detect`` writes the lost frames as marked placeholders. A frame that
did not decode never reaches a ClipFrames. decord decodes on a thread that works ahead, so a damaged
packet's error can surface from an earlier read: on a file whose last frame is broken, the read
of frames 0-31 failed in 3 of 60 tries. A failed decord read is therefore tried twice more, each
time on a freshly opened reader, before the clips fail (on a machine busy with other work, full
reads of a 30-frame file whose last packet is broken still lost frames before it in 4 of 60 tries:
use ``decoder="auto"`` or ``"pyav"``, which do not guess). A video that cannot be opened fails all its clips
the same way. Nothing here raises for a bad file.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import pyarrow.fs as pafs

from semidff.preprocess import resize_frames as resize_uint8_frames
from semidff.rows import ClipFailure, ClipFrames, ClipResult  # the decoded clip's in-memory forms
from semidff.video.clip_plan import ClipSpec
from semidff.video.pyav_reader import PyAVReader, PyAVUnusable, orient, rotation_still_to_apply, stream_facts
from semidff.video.probe import (
    NO_TIMESTAMP_S,
    REASON_CANNOT_OPEN,
    REASON_NO_FRAMES,
    REASON_READ_ERROR,
    UnusableVideo,
    decord_detail,
    filesystem_for,
    is_local,
    local_copy,
    normalize_uri,
    open_failure,
)

REASON_DECODE_FAILED = "decode failed"  # a frame the clip needs (or one before it in the same read) did not decode
REASON_FRAME_OUT_OF_RANGE = "frame out of range"  # the file has fewer frames than the plan assumed (changed since the manifest?)
DECODER_AUTO, DECODER_PYAV, DECODER_DECORD = "auto", "pyav", "decord"
DECODERS = (DECODER_AUTO, DECODER_PYAV, DECODER_DECORD)


class VideoOpenError(Exception):
    """The video cannot be opened for decoding; ``reason`` is a probe REASON_* category."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


class _ReadFailed(Exception):
    """Frames from ``first`` on could not be decoded (``last``: the end of the failed read)."""

    def __init__(self, first: int, last: int, detail: str):
        super().__init__(detail)
        self.first, self.last, self.detail = first, last, detail


@dataclass(frozen=True)
class LostFrames:
    """Frames ``first`` .. ``last`` (inclusive) of ``uri`` are lost: the first did not decode
    (``detail``: the decoder's words) and the others depend on it; decoding went on from the codec
    keyframe ``resumed_at`` = last + 1, or nothing after them decodes (``resumed_at`` None, ``last``
    the video's last frame). Every stage reports damage with :attr:`message`: the clip and cache
    stages as the reason of the clips that needed those frames, ``semidff detect`` in its summary,
    its predictions and its annotated video."""

    uri: str
    first: int
    last: int
    resumed_at: Optional[int]
    detail: str

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    @property
    def indices(self) -> range:
        return range(self.first, self.last + 1)

    @property
    def message(self) -> str:
        where = (
            f"the file is damaged there (decoding went on from the codec keyframe at frame {self.resumed_at})"
            if self.resumed_at is not None
            else "the file is damaged from about there on"
        )
        return f"{self.uri}: frames {self.first}-{self.last} did not decode ({self.detail}); {where}, fetch it again"


def resize_frames(frames: np.ndarray, short_side: int = 600, max_long_side: int = 1000) -> tuple[np.ndarray, float]:
    """(N, H, W, 3) uint8 -> ((N, h, w, 3) uint8 numpy, scale): :func:`semidff.preprocess.resize_frames`."""
    resized, scale = resize_uint8_frames(frames, short_side, max_long_side)
    return resized.numpy(), scale


# ---------------------------------------------------------------------------------------------
# The two decoders (PyAV's: semidff.video.pyav_reader)

_DECORD_RETRIES = 2  # a failed decord read is tried this many more times, each on a fresh reader


class _DecordReader:
    """decord (one thread): ascending ``get_batch`` reads; a failed read is tried again on a
    freshly opened reader (twice), because decord's decoder thread works ahead and may report a
    later packet's error early.

    decord seeks by timestamp: where frames have none (MPEG-4 Part 2 in AVI with B-frames: decord
    reports FFmpeg's "no timestamp" for them), a seek lands on the wrong frame (frame 20 of such a
    file came back as frame 10, measured). Such a file is read forward only (``can_seek`` False):
    from frame 0, or from where the last read ended, never jumping."""

    def __init__(self, uri: str, local_path: str):
        self.uri, self.local_path = uri, local_path
        self.reader = self._open()
        self.can_seek = self._has_timestamps()
        self._next: Optional[int] = 0  # forward-only reading: the frame the reader gives next (None: unknown)

    def _open(self):
        import decord  # here, so that importing this module stays cheap (and PyAV can be loaded first in tests)

        try:
            return decord.VideoReader(self.local_path, ctx=decord.cpu(0), num_threads=1)
        except AssertionError:  # decord asserts a positive frame count
            raise UnusableVideo(REASON_NO_FRAMES, f"{self.uri}: the video stream has 0 frames") from None
        except Exception as exc:
            raise open_failure(self.uri, exc) from None

    def _has_timestamps(self) -> bool:
        try:
            stamps = np.asarray(self.reader.get_frame_timestamp(list(range(len(self.reader)))), dtype=np.float64)
        except Exception:
            return False
        return bool(np.isfinite(stamps).all() and (np.abs(stamps) < NO_TIMESTAMP_S).all())

    @property
    def num_frames(self) -> int:
        return len(self.reader)

    def keyframe_indices(self) -> list[int]:
        return sorted(int(i) for i in self.reader.get_key_indices())

    def read(self, indices: list[int]) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB frames of ascending ``indices`` (consecutive ones where it cannot seek)."""
        if not self.can_seek:
            return self._read_forward(indices)
        for _ in range(_DECORD_RETRIES):
            try:
                return self.reader.get_batch(indices).asnumpy()
            except Exception:
                self.reader = self._open()
        return self.reader.get_batch(indices).asnumpy()

    def _read_forward(self, indices: list[int]) -> np.ndarray:
        """Consecutive ``indices`` without a seek: from where the reader is, else from a fresh
        reader that decodes (and drops) every frame before them."""
        if self._next != indices[0]:
            self.reader, self._next = self._open(), 0
            for start in range(0, indices[0], 16):
                try:
                    self.reader.get_batch(list(range(start, min(indices[0], start + 16))))
                except Exception:  # a damaged frame before them: read on, the wanted ones may still decode
                    pass
            self._next = indices[0]
        self._next = None
        batch = self.reader.get_batch(indices).asnumpy()
        self._next = indices[-1] + 1
        return batch

    def frames(self, wanted: Sequence[int], chunk_frames: int) -> Iterator[tuple[int, np.ndarray]]:
        """(index, (H, W, 3) uint8 RGB) for each of the ascending ``wanted``; raises _ReadFailed."""
        if not self.can_seek:
            yield from self._frames_forward(wanted, chunk_frames)
            return
        for start in range(0, len(wanted), chunk_frames):
            chunk = list(wanted[start : start + chunk_frames])
            try:
                batch = self.read(chunk)
            except Exception:  # decord raises DECORDError/RuntimeError with FFmpeg's code in the text
                # The chunk failed as a whole: its frames before the damaged one are good, so read
                # them one by one (forward, no seek within a GOP) up to the first that fails.
                for index in chunk:
                    try:
                        (frame,) = self.read([index])
                    except Exception as exc:
                        raise _ReadFailed(index, chunk[-1], decord_detail(exc)) from None
                    yield index, frame
                continue
            yield from zip(chunk, batch)

    def _frames_forward(self, wanted: Sequence[int], chunk_frames: int) -> Iterator[tuple[int, np.ndarray]]:
        """Every frame from the first wanted to the last, in consecutive reads; the wanted ones yielded."""
        if not wanted:
            return
        targets = set(wanted)
        for start in range(wanted[0], wanted[-1] + 1, chunk_frames):
            chunk = list(range(start, min(wanted[-1] + 1, start + chunk_frames)))
            try:
                batch = self.read(chunk)
            except Exception:
                batch = None
                for index in chunk:  # one by one from the chunk's start, up to the first that fails
                    try:
                        (frame,) = self.read([index])
                    except Exception as exc:
                        first = min((i for i in wanted if i >= index), default=index)
                        raise _ReadFailed(first, chunk[-1], decord_detail(exc)) from None
                    if index in targets:
                        yield index, frame
            if batch is not None:
                yield from ((index, frame) for index, frame in zip(chunk, batch) if index in targets)


# ---------------------------------------------------------------------------------------------
# An opened video

ReadItem = Union[tuple[int, np.ndarray], LostFrames]  # what OpenedVideo.read_frames yields


class OpenedVideo:
    """A video opened for decoding: its frame count, codec keyframes, clips' frames and all frames.

    num_frames (the argument): the frame count the caller's plan assumed (the manifest's, which
    counts only frames that decode): frames from there on are never read, even where the container
    lists more (a file whose last packets are cut: decord would repeat the last good frame)."""

    def __init__(self, uri: str, local_path: str, decoder: str = DECODER_AUTO, num_frames: Optional[int] = None):
        self.uri, self._local_path, self._requested = uri, local_path, decoder
        self._limit = num_frames
        self._pyav: Optional[PyAVReader] = None
        self._decord: Optional[_DecordReader] = None
        self._facts = None
        if decoder != DECODER_DECORD:
            try:
                self._pyav = PyAVReader(uri, local_path)
                if num_frames is not None and self._pyav.num_frames != num_frames:
                    # More frames listed than the plan counted is fine when exactly those do not decode.
                    if not (self._pyav.num_frames > num_frames and self._pyav.decodable_frames() == num_frames):
                        raise PyAVUnusable(f"PyAV counts {self._pyav.num_frames} frames where the plan assumed {num_frames}")
            except PyAVUnusable as exc:
                self._pyav = None
                if decoder == DECODER_PYAV:
                    raise UnusableVideo(REASON_CANNOT_OPEN, f"{uri}: PyAV cannot decode it frame-exactly ({exc}); use decoder=auto") from None
        if self._pyav is None:
            self._decord = _DecordReader(uri, local_path)

    @property
    def decoder(self) -> str:
        """The decoder reading now: "pyav" or "decord" (after a fallback too)."""
        return DECODER_PYAV if self._pyav is not None else DECODER_DECORD

    @property
    def num_frames(self) -> int:
        """Frames the reader's index lists (see :attr:`readable_frames` for those that are read)."""
        return self._pyav.num_frames if self._pyav is not None else self._decord.num_frames

    @property
    def readable_frames(self) -> int:
        """Frames 0 .. readable_frames - 1 are read: the index's, cut to the plan's count when given."""
        return self.num_frames if self._limit is None else min(self.num_frames, self._limit)

    @property
    def rotation(self) -> int:
        """The display rotation every frame gets (counter-clockwise degrees; see semidff.video.pyav_reader)."""
        facts = self._stream_facts()
        return facts.rotation if facts is not None else 0

    def _stream_facts(self):
        if self._facts is None:
            self._facts = stream_facts(self._local_path) or False
        return self._facts or None

    def _displayed(self, frame: np.ndarray, pyav_rotation: Optional[int] = None) -> np.ndarray:
        """The one place where frames of either decoder are turned as the display matrix says:
        a PyAV frame as coded by the rotation it carries (``pyav_rotation``), a decord frame by
        what decord has not applied itself (:func:`rotation_still_to_apply`)."""
        if pyav_rotation is not None:
            return orient(frame, pyav_rotation)
        facts = self._stream_facts()
        if facts is None or not facts.rotation:
            return frame
        return orient(frame, rotation_still_to_apply(facts.rotation, facts.container, frame.shape, (facts.coded_width, facts.coded_height)))

    def keyframe_indices(self) -> list[int]:
        """Frame indices (display order) of the codec's keyframes, from the container's index."""
        return self._pyav.keyframe_indices() if self._pyav is not None else self._decord.keyframe_indices()

    def _frames(self, wanted: Sequence[int], chunk_frames: int) -> Iterator[tuple[int, np.ndarray]]:
        """(index, full-size RGB frame as displayed) for the ascending ``wanted``; PyAV first,
        decord from the first frame PyAV did not deliver. Raises _ReadFailed."""
        delivered = 0
        if self._pyav is not None:
            try:
                for index, frame in self._pyav.frames(wanted):
                    yield index, self._displayed(frame, pyav_rotation=self._pyav.rotation)
                    delivered += 1
                return
            except PyAVUnusable as exc:
                if delivered == len(wanted):  # e.g. a damaged packet after the last frame wanted
                    return
                if self._requested == DECODER_PYAV:
                    raise _ReadFailed(wanted[delivered], wanted[delivered], str(exc)) from None
                self._pyav = None
                try:
                    self._decord = _DecordReader(self.uri, self._local_path)
                except UnusableVideo as bad:
                    raise _ReadFailed(wanted[delivered], wanted[-1], bad.message) from None
        for index, frame in self._decord.frames(wanted[delivered:], chunk_frames):
            yield index, self._displayed(frame)

    def read_frames(self, wanted: Sequence[int], chunk_frames: int = 16, keyframes: Optional[Sequence[int]] = None) -> Iterator[ReadItem]:
        """(index, full-size (H, W, 3) uint8 RGB frame as displayed) for each of the ascending,
        distinct ``wanted`` that decodes, and a :class:`LostFrames` where frames do not: the one
        damage policy of every stage. The frames from the first that did not decode up to the
        next codec keyframe are lost, and decoding goes on from that keyframe (a fresh start, as
        after a seek: the frames after it do not depend on the damaged ones); without a later
        keyframe the rest of the video is lost. Nothing is repeated or padded."""
        keyframes = self.keyframe_indices() if keyframes is None else keyframes
        end = self.readable_frames
        to_read = [i for i in wanted if i < end]
        while to_read:
            delivered = 0
            try:
                for item in self._frames(to_read, chunk_frames):
                    delivered += 1
                    yield item
                if delivered == len(to_read):
                    return
                failure = _ReadFailed(to_read[delivered], end - 1, "the decoder stopped early")  # only a wrong reader gets here
            except _ReadFailed as exc:
                failure = exc
            resume = next((k for k in keyframes if k > failure.first), None) if self._can_read else None
            if resume is not None and resume >= end:
                resume = None
            yield LostFrames(self.uri, failure.first, end - 1 if resume is None else resume - 1, resume, failure.detail)
            to_read = [i for i in to_read if resume is not None and i >= resume]

    def decode_clips(
        self, clips: Sequence[ClipSpec], *, short_side: int = 600, max_long_side: int = 1000, chunk_frames: int = 16
    ) -> Iterator[ClipResult]:
        """One result per clip, each as soon as its last frame is decoded (clips ordered by their
        last frame). At most ``chunk_frames`` full-size frames are held before they are resized.

        Damage (:meth:`read_frames`): the clips that need a lost frame fail with the
        :class:`LostFrames` message, decoding goes on from the next codec keyframe and the clips
        after the damage keep their frames."""
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames={chunk_frames}: must be >= 1")
        listed, end = self.num_frames, self.readable_frames
        keyframes = self.keyframe_indices()  # before any decoding: the readers may change on a failure
        pending = []
        for clip in clips:
            needed = clip.frame_indices[-1] if clip.frame_indices else -1
            if needed >= listed:
                yield ClipFailure(
                    clip,
                    REASON_FRAME_OUT_OF_RANGE,
                    f"{self.uri}: the clip needs frame {needed} but the file has {listed} frames; "
                    "it changed since the manifest was built, rebuild the manifest",
                )
            elif needed >= end:
                yield ClipFailure(
                    clip,
                    REASON_FRAME_OUT_OF_RANGE,
                    f"{self.uri}: the clip needs frame {needed} but only the first {end} frames decode (the plan's count); "
                    "the plan was made for another manifest, rebuild it",
                )
            else:
                pending.append(clip)
        pending.sort(key=lambda c: (c.frame_indices[-1], c.key_index))
        to_read = sorted({i for clip in pending for i in clip.frame_indices})
        frames: dict[int, np.ndarray] = {}  # resized frames some pending clip still needs
        chunk: list[tuple[int, np.ndarray]] = []

        def flush() -> Iterator[ClipFrames]:
            if not chunk:
                return
            resized, scale = resize_frames(np.stack([frame for _, frame in chunk]), short_side, max_long_side)
            frames.update(zip((index for index, _ in chunk), resized))
            last = chunk[-1][0]
            chunk.clear()
            while pending and pending[0].frame_indices[-1] <= last:
                clip = pending.pop(0)
                current = np.stack([frames[i] for i in clip.current_indices])
                yield ClipFrames(clip, frames[clip.key_index].copy(), current, scale)
            first_needed = min((c.frame_indices[0] for c in pending), default=end)
            for index in [i for i in frames if i < first_needed]:
                del frames[index]

        for item in self.read_frames(to_read, chunk_frames, keyframes):
            if isinstance(item, LostFrames):
                yield from flush()
                damaged = {clip.clip_id for clip in pending if any(item.first <= i <= item.last for i in clip.frame_indices)}
                for clip in [c for c in pending if c.clip_id in damaged]:
                    yield ClipFailure(clip, REASON_DECODE_FAILED, item.message)
                pending[:] = [clip for clip in pending if clip.clip_id not in damaged]
                continue
            chunk.append(item)
            if len(chunk) == chunk_frames:
                yield from flush()
        yield from flush()
        for clip in pending:  # read_frames accounts for every frame asked for; this is a guard
            yield ClipFailure(clip, REASON_DECODE_FAILED, f"{self.uri}: the decoder did not return the frames of clip {clip.clip_id}")

    @property
    def _can_read(self) -> bool:
        """A reader is still open (a failed fallback to decord leaves none)."""
        return self._pyav is not None or self._decord is not None

    def iter_frames(self, chunk_frames: int = 16) -> Iterator[np.ndarray]:
        """Every frame in display order (:attr:`readable_frames` of them), (H, W, 3) uint8 RGB at
        full size, each codec frame decoded once (decord reads ``chunk_frames`` at a time).
        Raises VideoOpenError (reason "decode failed", the :class:`LostFrames` message) at the
        first frame that does not decode; :meth:`read_frames` goes on after the damage instead."""
        for item in self.read_frames(range(self.readable_frames), chunk_frames):
            if isinstance(item, LostFrames):
                raise VideoOpenError(REASON_DECODE_FAILED, item.message)
            yield item[1]


@contextlib.contextmanager
def open_video(
    uri: str, filesystem: Optional[pafs.FileSystem] = None, *, decoder: str = DECODER_AUTO, num_frames: Optional[int] = None
) -> Iterator[OpenedVideo]:
    """Open ``uri`` (a local path, file://, s3://, gs:// or any pyarrow URI) for decoding.

    filesystem: as in ``probe_video``: a pyarrow filesystem holding ``uri`` (its path there, or a
    ``scheme://`` URI whose scheme is dropped). Files on other filesystems than the local one are
    streamed to a temporary local file first (decord would read a file object whole into memory),
    as the probe does.
    decoder: "auto" (PyAV where its frame index can be trusted, else decord), "pyav" (no fallback;
        for tests and benchmarks) or "decord" (the reference).
    num_frames: the frame count the caller's plan assumed (the manifest's); "auto" uses PyAV only
        when it counts the same.
    Raises VideoOpenError with the reason.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder={decoder!r}: expected one of {', '.join(DECODERS)}")
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
            opened = OpenedVideo(uri, local_path, decoder, num_frames)
        except UnusableVideo as bad:
            raise VideoOpenError(bad.reason, bad.message) from None
        yield opened


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
    decoder: str = DECODER_AUTO,
    num_frames: Optional[int] = None,
) -> Iterator[ClipResult]:
    """Open ``uri`` once (see open_video) and yield one ClipFrames or ClipFailure per clip (see
    OpenedVideo.decode_clips); a file that cannot be opened yields a ClipFailure for every clip."""
    try:
        with open_video(uri, filesystem, decoder=decoder, num_frames=num_frames) as video:
            yield from video.decode_clips(clips, short_side=short_side, max_long_side=max_long_side, chunk_frames=chunk_frames)
    except VideoOpenError as exc:
        for clip in clips:
            yield ClipFailure(clip, exc.reason, exc.message)
