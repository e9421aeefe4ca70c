"""Real, small encoded test videos (and broken ones) made with PyAV, for every video test.

    from tests.video_fixtures import encoder_available, write_video, write_audio_only, truncate_file, break_last_packet
    write_video(tmp_path / "a.mp4", num_frames=20, width=96, height=64)                # H.264 MP4
    write_video(tmp_path / "b.avi", 20, 97, 61, codec="mpeg4")                          # odd size
    write_video(tmp_path / "c.webm", 20, 64, 48, codec="libvpx-vp9")                    # needs the encoder
    write_video(tmp_path / "v.mkv", 20, 64, 48, timestamps_s=[0, .04, .2, ...])        # variable frame rate
    write_video(tmp_path / "l.mkv", 20, 64, 48, live=True)                              # no duration, unknown sizes
    break_last_packet(tmp_path / "a.mp4", tmp_path / "broken.mp4")                     # sizes right, last frame broken
    truncate_file(tmp_path / "a.mp4", 0.5)                                              # a download cut short
    write_video(tmp_path / "r.mp4", 6, 320, 240, rotation=90)                          # a display matrix: shown 240x320
    damage_packets(tmp_path / "a.mp4", [12, 13], tmp_path / "mid.mp4")                  # packets of frames 12-13 overwritten
    avi_keep_frames(tmp_path / "b.avi", 10, tmp_path / "short.avi")                    # the AVI header still declares 20
    decodable_frames(tmp_path / "mid.mp4")                                              # the frames a plain decode gets cleanly

Frame i shows a diagonal gradient plus a white square that moves 3 px right and 2 px down per frame
(:func:`pattern_frame`), so consecutive frames differ and a decoded frame can be checked against
the frame it should be. The container follows the file extension (.mp4, .avi, .webm, .mkv, .ts, ...).

Import this module (PyAV) before decord: decord's wheel bundles an older libvpx, and when it is
loaded first PyAV's VP9 encoder fails to open (``encoder_available`` then says False).
"""
from __future__ import annotations

import contextlib
import io
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import av
import numpy as np

SQUARE = 8  # side of the moving square, pixels


def encoder_available(codec: str) -> bool:
    """True when PyAV can open the ``codec`` encoder here (``libvpx-vp9`` may be missing, or broken
    when decord was imported first: its bundled libvpx shadows PyAV's)."""
    try:
        context = av.CodecContext.create(codec, "w")
        context.width, context.height, context.pix_fmt = 16, 16, "yuv420p"
        context.time_base = Fraction(1, 25)
        context.open()
    except Exception:  # unknown codec, or the encoder refuses to open
        return False
    return True


def square_position(index: int, width: int, height: int) -> tuple[int, int]:
    """(x, y) of the square's top-left corner in frame ``index``."""
    return (3 * index) % max(1, width - SQUARE), (2 * index) % max(1, height - SQUARE)


def pattern_frame(index: int, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8 RGB content of frame ``index``."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.empty((height, width, 3), np.uint8)
    frame[..., 0] = (x * 2 + index) % 256
    frame[..., 1] = (y * 3) % 256
    frame[..., 2] = 96
    left, top = square_position(index, width, height)
    frame[top : top + SQUARE, left : left + SQUARE] = 255
    return frame


_LIVE_FORMATS = {".mkv": "matroska", ".webm": "webm", ".ts": "mpegts"}


class _Unseekable(io.RawIOBase):
    """A write-only file object that refuses to seek."""

    def __init__(self, raw):
        self.raw = raw

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data) -> int:
        return self.raw.write(data)


def write_video(
    path: str | Path,
    num_frames: int,
    width: int,
    height: int,
    codec: str = "libx264",
    fps: int = 25,
    gop: Optional[int] = None,
    pix_fmt: Optional[str] = None,
    timestamps_s: Optional[Sequence[float]] = None,
    faststart: bool = False,
    bframes: bool = False,
    live: bool = False,
    rotation: int = 0,
) -> Path:
    """Encode ``num_frames`` pattern frames to ``path``; the container comes from the extension.

    gop: frames between keyframes (default: the encoder's). pix_fmt: default yuv420p, or yuv444p
    for libx264 at odd sizes (4:2:0 needs even sides there). timestamps_s: one presentation time
    per frame, for variable frame rate (stored in a 1/1000 s time base). faststart: MP4 only, put
    the index (moov) before the data, as web video does, so a truncated file still opens.
    bframes: up to 2 B-frames between references (decode order then differs from display order).
    live: write through a stream that cannot seek, as a live recorder does: the muxer cannot go
    back to fill in sizes, duration or index (Matroska then has "unknown size" elements).
    rotation: a display matrix turning the picture this many degrees counter-clockwise (PyAV's
    convention, as ``VideoFrame.rotation`` reads it back), as phones write upright video.
    """
    path = Path(path)
    if timestamps_s is not None and len(timestamps_s) != num_frames:
        raise ValueError(f"timestamps_s has {len(timestamps_s)} entries for {num_frames} frames")
    if pix_fmt is None:
        odd = width % 2 or height % 2
        pix_fmt = "yuv444p" if codec.startswith("libx264") and odd else "yuv420p"
    options = {"movflags": "faststart"} if faststart else {}
    with contextlib.ExitStack() as stack:
        if live:
            if path.suffix.lower() not in _LIVE_FORMATS:
                raise ValueError(f"{path}: live=True writes {', '.join(_LIVE_FORMATS)} files")
            target = _Unseekable(stack.enter_context(open(path, "wb")))
            container = stack.enter_context(av.open(target, mode="w", format=_LIVE_FORMATS[path.suffix.lower()]))
        else:
            container = stack.enter_context(av.open(str(path), mode="w", options=options))
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if rotation:
            stream.set_display_rotation(rotation)
        if gop is not None:
            stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = 2 if bframes else 0
        if codec.startswith("libx264"):  # scenecut=0: keyframes exactly every `gop` frames
            stream.codec_context.options = {"preset": "ultrafast", "x264-params": f"bframes={2 if bframes else 0}:scenecut=0"}
        if codec.startswith("libvpx"):
            stream.codec_context.options = {"deadline": "realtime", "cpu-used": "8"}
        if timestamps_s is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(pattern_frame(index, width, height), format="rgb24")
            if timestamps_s is not None:
                frame.pts, frame.time_base = round(timestamps_s[index] * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_audio_only(path: str | Path, seconds: float = 1.0, codec: str = "aac", sample_rate: int = 16000) -> Path:
    """A file with one audio stream (a 440 Hz tone) and no video stream."""
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=sample_rate)
        stream.layout = "mono"
        samples_per_frame = 1024
        total = int(seconds * sample_rate)
        for start in range(0, total, samples_per_frame):
            t = (np.arange(start, min(total, start + samples_per_frame)) / sample_rate).astype(np.float32)
            tone = (0.2 * np.sin(2 * np.pi * 440.0 * t))[None, :]
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def truncate_file(path: str | Path, fraction: float = 0.5, output: Optional[str | Path] = None) -> Path:
    """Keep the first ``fraction`` of the bytes (a download cut in the middle of the stream).

    Writes ``output`` (default: in place) and returns its path.
    """
    path = Path(path)
    data = path.read_bytes()
    output = Path(output) if output is not None else path
    output.write_bytes(data[: int(len(data) * fraction)])
    return output


def break_last_packet(path: str | Path, output: str | Path) -> Path:
    """Copy an H.264 MP4 with the NAL length of its last video packet (in file order) set to an
    impossible value: every size field stays right, but that frame can no longer be decoded."""
    with av.open(str(path)) as container:
        last = max((packet.pos for packet in container.demux(video=0) if packet.size), default=None)
    if last is None or last < 0:
        raise ValueError(f"{path}: no video packet with a known file position")
    data = bytearray(Path(path).read_bytes())
    data[last : last + 4] = b"\x7f\xff\xff\xff"  # MP4 stores H.264 NAL units behind 4-byte big-endian lengths
    output = Path(output)
    output.write_bytes(bytes(data))
    return output


def damage_packets(path: str | Path, frames: Sequence[int], output: str | Path, seed: int = 0) -> Path:
    """Copy a video with the payload of the packets of ``frames`` (presentation order) overwritten
    by random bytes, every size field kept: a file damaged in the middle that the probe cannot see
    (its first and last frames decode)."""
    with av.open(str(path)) as container:
        packets = sorted((packet.pts, packet.pos, packet.size) for packet in container.demux(video=0) if packet.size)
    data = bytearray(Path(path).read_bytes())
    rng = np.random.default_rng(seed)
    for frame in frames:
        _, position, size = packets[frame]
        data[position + 4 : position + size] = rng.integers(0, 256, size - 4, dtype=np.uint8).tobytes()  # keep the NAL length
    output = Path(output)
    output.write_bytes(bytes(data))
    return output


def _riff_chunks(data: bytes, start: int, end: int):
    offset = start
    while offset + 8 <= end:
        size = int.from_bytes(data[offset + 4 : offset + 8], "little")
        yield offset, data[offset : offset + 4], size
        offset += 8 + size + (size & 1)


def avi_keep_frames(path: str | Path, keep: int, output: str | Path) -> Path:
    """Copy an AVI keeping only its first ``keep`` video chunks (and their index entries), every
    RIFF size made right again, while the header (avih dwTotalFrames, strh dwLength) still declares
    the original count: a recording whose header promises frames the file does not hold, as
    capture tools and repaired downloads leave (a Cinepak AVI declaring 444 frames with 68)."""
    data = Path(path).read_bytes()
    if data[:4] != b"RIFF" or data[8:12] != b"AVI ":
        raise ValueError(f"{path}: not an AVI file")
    out = bytearray(data[:12])
    for offset, fourcc, size in _riff_chunks(data, 12, len(data)):
        body = data[offset + 8 : offset + 8 + size]
        if fourcc == b"LIST" and body[:4] == b"movi":
            movi, kept = bytearray(b"movi"), 0
            for sub, sub_fourcc, sub_size in _riff_chunks(body, 4, len(body)):
                if sub_fourcc[2:] in (b"dc", b"db"):
                    if kept >= keep:
                        continue
                    kept += 1
                movi += body[sub : sub + 8 + sub_size + (sub_size & 1)]
            out += b"LIST" + len(movi).to_bytes(4, "little") + movi
        elif fourcc == b"idx1":
            index, kept = bytearray(), 0
            for entry in range(0, size, 16):
                if body[entry + 2 : entry + 4] in (b"dc", b"db"):
                    if kept >= keep:
                        continue
                    kept += 1
                index += body[entry : entry + 16]
            out += b"idx1" + len(index).to_bytes(4, "little") + index
        else:
            out += data[offset : offset + 8 + size + (size & 1)]
    out[4:8] = (len(out) - 8).to_bytes(4, "little")
    output = Path(output)
    output.write_bytes(bytes(out))
    return output


def decodable_frames(path: str | Path) -> set[int]:
    """The frames (presentation order, numbered as the container's packets sort) that a plain
    PyAV decode of the whole file returns cleanly: no error on a packet of their GOP before them
    in decoding order, not flagged corrupt. The reference the "no good clip is lost" test judges
    the pipeline by: a frame after damage in its GOP depends on the damaged one."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = sorted(packet.pts for packet in container.demux(stream) if packet.size and packet.pts is not None)
    index_of = {p: i for i, p in enumerate(pts)}
    good: set[int] = set()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        context = stream.codec_context
        context.thread_count = 1
        damaged = False
        for packet in [*(p for p in container.demux(stream) if p.size), None]:  # None: drain the decoder at the end
            if packet is not None and packet.is_keyframe:
                damaged = False
            try:
                frames = list(context.decode(packet))
            except (av.FFmpegError, ValueError):
                damaged = True
                continue
            for frame in frames:
                if frame.is_corrupt:
                    damaged = True
                elif not damaged and frame.pts in index_of:
                    good.add(index_of[frame.pts])
    return good
