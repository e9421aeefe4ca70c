"""PyAV's view of one video file, shared by the probe and the clip decoder: the stream's declared
facts (rate, frame count, display rotation), a packet index with selective decoding, the frames that
really decode at the end of the stream, and the one function that turns a decoded frame to the way
it is meant to be shown (:func:`orient`).

    facts = stream_facts("/data/clip.mp4")            # None when PyAV cannot open it
    facts.declared_rate, facts.declared_frames, facts.rotation
    reader = PyAVReader(uri, "/data/clip.mp4")        # raises PyAVUnusable when its index cannot be trusted
    reader.num_frames, reader.keyframe_indices(), reader.decodable_frames()
    for index, frame in reader.frames([0, 5, 9]): ... # (H, W, 3) uint8 RGB as coded (not yet oriented)

Display rotation: a container may carry a display matrix ("rotate 90°": phone video shot upright).
FFmpeg hands it on as frame side data; PyAV returns the coded pixels and says the angle
(``VideoFrame.rotation``, counter-clockwise degrees), while decord 0.6 turns MP4/MOV frames itself
and leaves those of other containers (Matroska, WebM) as coded (measured). ``semidff.video.decode``
brings both decoders' frames to the display orientation with :func:`orient`, and the probe reports
the display size, so a manifest row, a clip row and ``semidff detect`` agree. Flips in the matrix
are not applied (only its rotation, in steps of 90°).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np

DECORD_ROTATES = frozenset({"mov,mp4,m4a,3gp,3g2,mj2"})  # FFmpeg demuxers whose display matrix decord 0.6 applies itself


class PyAVUnusable(Exception):
    """PyAV cannot index or decode this file the way decord would; decord takes over."""


def orient(frame: np.ndarray, rotation: int) -> np.ndarray:
    """``frame`` ((H, W, 3) as coded) turned ``rotation`` degrees counter-clockwise (a multiple of
    90, as :attr:`StreamFacts.rotation`): the picture as it is meant to be shown. C-contiguous."""
    turns = (int(rotation) // 90) % 4
    return frame if turns == 0 else np.ascontiguousarray(np.rot90(frame, turns))


def display_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    """(width, height) of frames shown with ``rotation``: swapped for a quarter turn."""
    return (height, width) if (int(rotation) // 90) % 2 else (width, height)


def rotation_still_to_apply(rotation: int, container: str, frame_shape: Sequence[int], coded_size: tuple[int, int]) -> int:
    """What is left of ``rotation`` for a frame decord returned (shape (H, W, ...)): none where
    decord turned it already (a quarter turn shows in the shape; a half turn is known from the
    container, :data:`DECORD_ROTATES`), else all of it."""
    turns = (int(rotation) // 90) % 4
    if turns == 0:
        return 0
    if turns % 2:
        coded_width, coded_height = coded_size
        turned = (int(frame_shape[0]), int(frame_shape[1])) == (coded_width, coded_height) and coded_width != coded_height
        if turned or (coded_width == coded_height and container in DECORD_ROTATES):
            return 0
        return rotation
    return 0 if container in DECORD_ROTATES else rotation


@dataclass(frozen=True)
class StreamFacts:
    """What the container says about its first video stream (no more than one frame decoded).

    container: FFmpeg's name of the demuxer (e.g. "avi", "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm").
    declared_rate: frames per second the stream declares (its average rate, else the rate FFmpeg
        guesses from the container's time base); None when it declares none.
    declared_frames: the frame count of the header (AVI dwLength, MP4 sample count); None when the
        container has none (Matroska, MPEG-TS).
    coded_width, coded_height: the frames as coded, before rotation.
    rotation: the display matrix's rotation, counter-clockwise degrees, a multiple of 90 (0: none,
        or the first frame does not decode).
    """

    container: str
    declared_rate: Optional[float]
    declared_frames: Optional[int]
    coded_width: int
    coded_height: int
    rotation: int = 0

    @property
    def display_size(self) -> tuple[int, int]:
        return display_size(self.coded_width, self.coded_height, self.rotation)


def _quarter_turns(rotation: Optional[float]) -> int:
    """A display matrix's rotation in degrees, to the nearest multiple of 90."""
    return int(round((rotation or 0) / 90.0)) * 90


def stream_facts(local_path: str) -> Optional[StreamFacts]:
    """The :class:`StreamFacts` of ``local_path``; None when PyAV cannot open it or it has no video stream."""
    import av

    try:
        with av.open(local_path) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            rate = next((float(r) for r in (stream.average_rate, stream.guessed_rate) if r and float(r) > 0), None)
            declared = int(stream.frames) if stream.frames and stream.frames > 0 else None
            width, height = stream.codec_context.width, stream.codec_context.height
            rotation = 0
            try:
                for frame in container.decode(stream):
                    rotation = _quarter_turns(frame.rotation)
                    width, height = frame.width, frame.height
                    break
            except (av.FFmpegError, ValueError):  # no decodable frame: the angle stays unknown (0)
                pass
            return StreamFacts(container.format.name, rate, declared, int(width), int(height), rotation)
    except (av.FFmpegError, ValueError, OSError):
        return None


class PyAVReader:
    """PyAV (one thread): a packet index from one demux pass, then selective decoding (see the
    module docstring). Raises PyAVUnusable when the index cannot be trusted or decoding goes wrong."""

    def __init__(self, uri: str, local_path: str):
        import av

        self.uri, self.local_path = uri, local_path
        self.rotation = 0  # the display matrix's rotation, as the frames decoded so far carry it (see stream_facts)
        try:
            with av.open(local_path) as container:
                if not container.streams.video:
                    raise PyAVUnusable("no video stream")
                stream = container.streams.video[0]
                # size 0: the demuxer's end-of-stream marker, not a frame
                packets = [(packet.pts, packet.is_keyframe) for packet in container.demux(stream) if packet.size]
                self.time_base = float(stream.time_base) if stream.time_base else None
        except av.FFmpegError as exc:
            raise PyAVUnusable(f"cannot index it ({exc})") from None
        pts = [p for p, _ in packets]
        if not pts:
            raise PyAVUnusable("no video packets")
        if any(p is None for p in pts) or len(set(pts)) != len(pts):
            raise PyAVUnusable("packets without distinct timestamps")
        self.index_of_pts = {p: i for i, p in enumerate(sorted(pts))}
        self.display = [self.index_of_pts[p] for p in pts]  # decode position -> frame index (presentation order)
        self.position_of = {index: position for position, index in enumerate(self.display)}
        self.keyframe_positions = [position for position, (_, key) in enumerate(packets) if key]  # decode positions
        if not self.keyframe_positions or self.keyframe_positions[0] != 0:
            raise PyAVUnusable("the stream does not start with a keyframe")

    @property
    def num_frames(self) -> int:
        return len(self.display)

    def presentation_times(self) -> Optional[np.ndarray]:
        """Each frame's start time in seconds, in presentation order (the packets' timestamps;
        no decoding); None when the stream has no time base."""
        if not self.time_base:
            return None
        return np.asarray(sorted(self.index_of_pts), dtype=np.float64) * self.time_base

    def keyframe_indices(self) -> list[int]:
        return sorted(self.display[position] for position in self.keyframe_positions)

    def _decode_plan(self, wanted: Sequence[int]) -> tuple[bytearray, set[int]]:
        """(send[position]: the packet goes to the decoder, positions where the decoder is drained).

        Each wanted frame needs the packets from the last keyframe at or before its own packet (and
        shown at or before it) up to it; overlapping or touching runs are merged, so the decoder is only drained (its
        delayed frames pushed out) and reset before a jump over packets it never sees."""
        keyframes = self.keyframe_positions
        runs = []
        for index in wanted:
            position = self.position_of[index]
            at = bisect.bisect_right(keyframes, position) - 1
            # An open GOP's leading B-frames (after its keyframe in decoding order, shown before it:
            # MPEG-4 Part 2 does this) also need the GOP before: start at a keyframe shown before the frame.
            while at > 0 and self.display[keyframes[at]] > index:
                at -= 1
            runs.append((keyframes[at], position))
        runs.sort()
        merged: list[list[int]] = []
        for start, end in runs:
            if merged and start <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        send = bytearray(len(self.display))
        for start, end in merged:
            send[start : end + 1] = b"\x01" * (end + 1 - start)
        return send, {end for _, end in merged}

    def frames(self, wanted: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        """(index, (H, W, 3) uint8 RGB) for each of the ascending, distinct ``wanted``, in order."""
        import av

        if not wanted:
            return
        targets = set(wanted)
        send, drain_after = self._decode_plan(wanted)
        last_position = max(drain_after)
        decoded: dict[int, np.ndarray] = {}  # wanted frames out of the decoder, not yet yielded
        next_wanted = 0
        try:
            with av.open(self.local_path) as container:
                stream = container.streams.video[0]
                context = stream.codec_context
                context.thread_count = 1  # one task per core: threads barely help a decoder (perf-anchors), processes do
                position = -1
                for packet in container.demux(stream):
                    if not packet.size:
                        continue
                    position += 1
                    if position > last_position:
                        break
                    if not send[position]:
                        continue
                    # Non-reference frames that are not wanted are skipped (parsed, not decoded); the
                    # decoder reads skip_frame for each frame when it runs on one thread.
                    context.skip_frame = "DEFAULT" if self.display[position] in targets else "NONREF"
                    out = list(context.decode(packet))
                    if position in drain_after:  # push out the frames the decoder holds back for reordering
                        out += context.decode(None)
                        context.flush_buffers()
                    for frame in out:
                        index = self.index_of_pts.get(frame.pts)
                        if index is None:
                            raise PyAVUnusable(f"the decoder returned a frame with an unknown timestamp ({frame.pts})")
                        if index in targets:
                            if frame.is_corrupt:
                                raise PyAVUnusable(f"frame {index} decoded with errors")
                            decoded[index] = frame.to_ndarray(format="rgb24")
                            self.rotation = _quarter_turns(frame.rotation)
                    while next_wanted < len(wanted) and wanted[next_wanted] in decoded:
                        yield wanted[next_wanted], decoded.pop(wanted[next_wanted])
                        next_wanted += 1
                    if position in drain_after and (decoded or (next_wanted < len(wanted) and self.position_of[wanted[next_wanted]] <= position)):
                        missing = wanted[next_wanted] if next_wanted < len(wanted) else min(decoded)
                        raise PyAVUnusable(f"the decoder did not return frame {missing}")
        except (av.FFmpegError, ValueError) as exc:  # a damaged packet, a pixel format without RGB conversion
            first = wanted[next_wanted] if next_wanted < len(wanted) else wanted[-1]
            raise PyAVUnusable(f"decoding stopped before frame {first} ({exc})") from None
        if next_wanted < len(wanted):
            raise PyAVUnusable(f"the stream ended before frame {wanted[next_wanted]}")


    def decodable_frames(self) -> int:
        """How many frames, from frame 0 in presentation order, really decode: the frames of the
        last GOP are decoded (and of the GOPs before it while none of a GOP's frames comes out),
        and the count ends at the first frame the decoder does not return. A file whose last
        packets are cut or broken lists frames it cannot show; decord would repeat the last good
        frame for them. Costs about one GOP of decoding."""
        keyframes = self.keyframe_indices()
        end = self.num_frames
        for start in reversed(keyframes):
            delivered = 0
            try:
                for _ in self.frames(range(start, end)):
                    delivered += 1
            except PyAVUnusable:
                pass
            if delivered:
                return start + delivered
            end = start  # not even this GOP's keyframe decodes: look before it
        return 0
