"""Probe one video file with decord and PyAV: frames, rate, size and duration, or why it cannot be used.

    info = probe_video("/data/clip.mp4")      # also "file:///data/clip.mp4", "s3://bucket/clip.mp4"
    info.status, info.num_frames, info.fps, info.width, info.height, info.duration_s, info.error
    info.declared_frames, info.truncated, info.fps_source, info.note

A bad file never raises: it comes back with ``status="error"``, a short ``reason`` (one of the
``REASON_*`` constants, for grouping) and an ``error`` message that names the file and says what
to do. What decord 0.6 does on broken input (measured on files made by ``tests/video_fixtures.py``),
and so what the probe checks itself:

* zero bytes, a text file, an MP4 cut before its index (moov at the end, the default when muxing):
  the container does not open.
* audio only: it opens, but there is no video stream (FFmpeg's AVERROR_STREAM_NOT_FOUND).
* an MP4 with its index first ("faststart", as web video is) cut mid-stream: decord reads every
  packet while opening and fails there ("av_read_frame failed"), unless the cut falls inside the
  last packets: then it promises every frame of the index, the last one never decodes, and the
  damaged packet's error can surface from *any* read (frame 0 failed in 5-40 % of tries), because
  decord's decoder thread works ahead.
* MKV, WebM or AVI cut mid-stream: decord indexes the packets that are there and reports fewer
  frames; the last one may be a partial packet that decodes without an error into a damaged
  picture (measured on MPEG-4 AVI). MPEG-TS cut mid-stream: fewer frames, all intact in our tests.
* Matroska/WebM written live (no duration, "unknown size" elements): decord refuses to open it.

So before decord, the probe compares the file size with what the container's own top-level size
fields declare (:func:`declared_size`: MP4/MOV boxes, AVI RIFF chunks, Matroska/WebM elements): a
file shorter than that is ``truncated``, whatever decord would make of it (formats without such
fields, MPEG-TS and FLV, and live Matroska are not checked); no shorter prefix is
salvaged, since decord cannot be trusted near the cut. Damage in the middle of a complete file is
not detected (that needs a full decode); the clip decoder has to treat a decode error as data too.

Then the frames are counted and checked. Where PyAV indexes the same frames as decord (the
common case), PyAV decodes the end of the stream (about one GOP,
:meth:`semidff.video.pyav_reader.PyAVReader.decodable_frames`) and ``num_frames`` is what really
decodes: a broken last packet, or an AVI whose header declares 444 frames of which 68 are there,
gives an ``ok`` row of the frames that decode, with ``declared_frames`` (the larger count) and a
note saying it is truncated; decord would repeat the last good frame for the missing ones.
decord must decode the first frame too, or the note says that only PyAV can (decord cannot convert
frames 16 pixels wide or narrower, nor some rotated sizes). Otherwise decord alone decodes the last
frame (a count the frames do not back is ``damaged stream``) and the first.

The rate comes from the frames' timestamps (``fps_source="timestamps"``: frames over the span),
unless some frame has none (decord returns FFmpeg's "no timestamp", about -3.7e17 or 9.2e15 s, for
1 frame in 3 of MPEG-4 Part 2 in AVI with B-frames: taking their minimum gave fps 0) or the video
is truncated (its container's duration counts missing frames): then it is the stream's declared
rate (``fps_source="container"``, said in the note). Width and height are as displayed: a 90°
display matrix swaps them (:mod:`semidff.video.pyav_reader`).

A file that cannot be read says why: missing, ``permission denied``, a read error. A bug in the
probe itself becomes a row with reason ``probe error`` rather than an exception.

The video id is the first 16 hex digits of the SHA-1 of the normalised URI (:func:`normalize_uri`):
stable across reruns and machines that see the same paths, cheap for object stores (no read of the
content), and 64 bits make a collision unlikely below ~10^8 videos. Moving the files changes it.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import tempfile
from typing import Iterator, Optional

import numpy as np
import pyarrow.fs as pafs

from semidff.rows import STATUS_ERROR, STATUS_OK, ManifestRow  # noqa: F401 - STATUS_ERROR: also imported from here
from semidff.video.pyav_reader import PyAVReader, PyAVUnusable, display_size, rotation_still_to_apply, stream_facts

REASON_MISSING = "missing file"
REASON_READ_ERROR = "read error"
REASON_EMPTY = "zero-byte file"
REASON_CANNOT_OPEN = "cannot open"
REASON_NO_VIDEO = "no video stream"
REASON_UNDECODABLE = "undecodable video stream"
REASON_DAMAGED = "damaged stream"
REASON_NO_FRAMES = "no decodable frames"
REASON_TRUNCATED = "truncated"  # shorter than its container's own size fields say
REASON_NO_PERMISSION = "permission denied"  # the file (or a folder on its path) may not be read by this user
REASON_PROBE_ERROR = "probe error"  # the probe itself raised: a bug, the message says what
REASON_CRASHED = "probe crashed"  # set by the pipeline when the probing process dies
REASON_TIMEOUT = "timeout"  # set by the pipeline when a probe runs past its time limit (a hung decoder)


def _ffmpeg_error_tag(a: int, b: str, c: str, d: str) -> int:
    """FFmpeg's FFERRTAG: the negative error code decord prints in its check messages."""
    return -(a | ord(b) << 8 | ord(c) << 16 | ord(d) << 24)


_AVERROR_STREAM_NOT_FOUND = _ffmpeg_error_tag(0xF8, "S", "T", "R")
_AVERROR_DECODER_NOT_FOUND = _ffmpeg_error_tag(0xF8, "D", "E", "C")


VideoInfo = ManifestRow  # what probe_video returns: one manifest row (semidff.rows.ManifestRow: fields, units, schema)


class UnusableVideo(Exception):
    """The file cannot be used: the reason category and the message for the user (probe and decode share it)."""

    def __init__(self, reason: str, message: str, size_bytes: Optional[int] = None):
        super().__init__(message)
        self.reason, self.message, self.size_bytes = reason, message, size_bytes


def normalize_uri(uri: str) -> str:
    """Canonical form of a path or URI: local files (``file://`` URIs too) as absolute, normalised
    paths without resolving symlinks; other URIs as given, with a lower-case scheme."""
    uri = uri.strip()
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return os.path.normpath(os.path.abspath(os.path.expanduser(uri)))
    if scheme.lower() == "file":
        try:
            _, path = pafs.FileSystem.from_uri(uri)  # also decodes %20 and friends
        except Exception as exc:
            raise ValueError(f"{uri}: not a valid file:// URI (expected file:///absolute/path): {exc}") from None
        return os.path.normpath(path)
    return f"{scheme.lower()}://{rest}"


def video_id_for(uri: str) -> str:
    """The stable id of a video: 16 hex digits of the SHA-1 of its normalised URI."""
    return _stable_id(normalize_uri(uri))


def _stable_id(canonical_uri: str) -> str:
    return hashlib.sha1(canonical_uri.encode("utf-8")).hexdigest()[:16]


def is_local(uri: str) -> bool:
    """True for plain paths and file:// URIs."""
    scheme, sep, _ = uri.partition("://")
    return not sep or scheme.lower() == "file"


def probe_video(uri: str, filesystem: Optional[pafs.FileSystem] = None) -> ManifestRow:
    """Open ``uri`` with decord and PyAV and describe it; never raises.

    filesystem: a pyarrow filesystem to read ``uri`` from (its path in that filesystem, or a
    ``scheme://`` URI whose scheme is dropped); ``uri`` is then recorded as given. Default: local
    paths are read directly, other URIs through ``pyarrow.fs.FileSystem.from_uri``.

    It decodes the first frame and the end of the stream (up to one GOP): the end is what catches
    a file that promises frames it does not hold.
    """
    path = uri = uri.strip()
    size: Optional[int] = None
    try:
        if filesystem is None:
            try:
                path = uri = normalize_uri(uri)
            except ValueError as exc:  # a malformed file:// URI
                raise UnusableVideo(REASON_READ_ERROR, str(exc)) from None
            if not is_local(uri):
                filesystem, path = filesystem_for(uri)
        else:
            path = uri.partition("://")[2] or uri
        with local_copy(uri, path, filesystem) as (local_path, size):
            try:
                _require_complete(uri, local_path, size)
                fields = _inspect(uri, local_path)
            except PermissionError as exc:
                raise _permission_denied(uri, exc) from None
            except OSError as exc:  # the disk or the network filesystem under it failed while reading
                raise UnusableVideo(REASON_READ_ERROR, f"{uri}: reading the file failed ({exc.strerror or exc}); check the disk or share and retry with --retry-failed") from None
    except UnusableVideo as bad:
        return VideoInfo.failed(_stable_id(uri), uri, bad.reason, bad.message, size if size is not None else bad.size_bytes)
    except Exception as exc:  # never raise for a file: a bug here becomes a row that says so
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        message = f"{uri}: the probe failed with {type(exc).__name__}: {detail}; this is a bug in semidff, please report it with the file"
        return VideoInfo.failed(_stable_id(uri), uri, REASON_PROBE_ERROR, message, size)
    return VideoInfo(video_id=_stable_id(uri), uri=uri, size_bytes=size, **fields)


def _can_list(folder: str) -> bool:
    try:
        with os.scandir(folder):
            return True
    except PermissionError:
        return False


def _permission_denied(uri: str, exc: OSError) -> UnusableVideo:
    return UnusableVideo(
        REASON_NO_PERMISSION,
        f"{uri}: this user may not read the file ({exc.strerror or 'permission denied'}); fix its permissions (e.g. chmod a+r) and rerun with --retry-failed",
    )


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # unknown scheme, malformed URI, filesystem not built into pyarrow
        raise UnusableVideo(REASON_READ_ERROR, f"{uri}: pyarrow cannot open this URI ({exc}); check the scheme and spelling") from None


@contextlib.contextmanager
def local_copy(uri: str, path: str, filesystem: Optional[pafs.FileSystem]) -> Iterator[tuple[str, int]]:
    """Yield (a local path decord can open, the size in bytes). Files on other filesystems are
    streamed to a temporary file first: decord reads file objects whole into memory, a temporary
    file keeps memory flat for multi-GB videos."""
    if filesystem is None or isinstance(filesystem, pafs.LocalFileSystem):
        try:
            st = os.stat(path)
        except OSError as exc:
            raise UnusableVideo(REASON_MISSING, f"{uri}: cannot read the file ({exc.strerror}); check the path and permissions") from None
        if stat.S_ISDIR(st.st_mode) and not _can_list(path):  # the manifest's listing keeps such a folder as a row
            raise UnusableVideo(
                REASON_NO_PERMISSION,
                f"{uri}: a folder this user may not list, so its videos are not in the manifest; fix its permissions "
                "(e.g. chmod a+rx) and rerun the same command: the rest is kept",
            )
        if not stat.S_ISREG(st.st_mode):
            raise UnusableVideo(REASON_MISSING, f"{uri}: not a regular file; list video files, not directories or devices")
        _require_bytes(uri, st.st_size)
        try:
            with open(path, "rb"):
                pass
        except PermissionError as exc:
            raise _permission_denied(uri, exc) from None
        except OSError as exc:
            raise UnusableVideo(REASON_READ_ERROR, f"{uri}: cannot open the file ({exc.strerror or exc}); check the disk or share and retry with --retry-failed") from None
        yield path, st.st_size
        return
    try:
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise UnusableVideo(REASON_MISSING, f"{uri}: no such object; check the URI")
        if info.type != pafs.FileType.File:
            raise UnusableVideo(REASON_MISSING, f"{uri}: not a file (a prefix or directory?); list video objects")
        _require_bytes(uri, info.size)
        suffix = os.path.splitext(path)[1]
        with tempfile.NamedTemporaryFile(suffix=suffix, prefix="semidff-probe-") as local:
            with filesystem.open_input_stream(path) as source:
                shutil.copyfileobj(source, local, length=8 << 20)
            local.flush()
            yield local.name, info.size
    except OSError as exc:  # pyarrow raises OSError for network, permission and credential failures
        raise UnusableVideo(REASON_READ_ERROR, f"{uri}: could not read it from storage ({exc}); check credentials and retry with --retry-failed") from None


def _require_bytes(uri: str, size: int) -> None:
    if size == 0:
        raise UnusableVideo(REASON_EMPTY, f"{uri}: zero-byte file; the copy or download did not finish, fetch it again", size_bytes=0)


def _require_complete(uri: str, local_path: str, size: int) -> None:
    declared = declared_size(local_path)
    if declared is not None and declared > size:
        raise UnusableVideo(
            REASON_TRUNCATED,
            f"{uri}: the file has {size} bytes but its container says {declared}: it was cut short while copying or downloading, fetch it again",
        )


_ISO_BMFF_TOP_LEVEL = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"styp", b"sidx", b"moof", b"uuid", b"pnot"}
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"


def declared_size(path: str, max_elements: int = 1_000_000) -> Optional[int]:
    """Bytes a file should have according to its container's top-level size fields: MP4/MOV boxes,
    AVI RIFF chunks, Matroska/WebM EBML elements. None for other formats, open-ended sizes
    (a live recording) or fields that make no sense; a truncated file declares more than it has."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(12)
        if head[4:8] in _ISO_BMFF_TOP_LEVEL:
            element = _iso_box_size
        elif head[:4] == b"RIFF":
            element = _riff_chunk_size
        elif head[:4] == _EBML_MAGIC:
            element = _ebml_element_size
        else:
            return None
        offset = 0
        for _ in range(max_elements):
            if offset >= size:
                return offset
            f.seek(offset)
            length = element(f.read(16), size - offset)
            if length is None:
                return None
            if length == 0:  # end of the structure (a non-RIFF chunk after the RIFF ones)
                return offset
            offset += length
    return None


def _iso_box_size(header: bytes, remaining: int) -> Optional[int]:
    if len(header) < 8:
        return 8  # the box header itself is cut
    size = int.from_bytes(header[:4], "big")
    if size == 1:  # 64-bit size follows the type
        return int.from_bytes(header[8:16], "big") if len(header) >= 16 else 16
    if size == 0:  # "to the end of the file"
        return remaining
    return size if size >= 8 else None


def _riff_chunk_size(header: bytes, remaining: int) -> Optional[int]:
    if len(header) < 8:
        return 8
    if header[:4] != b"RIFF":  # trailing data after the RIFF/AVIX chunks is not part of the file's structure
        return 0
    size = int.from_bytes(header[4:8], "little")
    return 8 + size + (size & 1) if size else None  # 0: written by a streaming muxer, never finalised


def _ebml_element_size(header: bytes, remaining: int) -> Optional[int]:
    """Length of one EBML element: variable-length ID (1-4 bytes) + size (1-8 bytes) + data."""
    if not header or header[0] == 0:
        return None
    id_length = 9 - header[0].bit_length()
    if id_length > 4 or len(header) <= id_length:
        return None
    first = header[id_length]
    if first == 0:
        return None
    size_length = 9 - first.bit_length()
    if len(header) < id_length + size_length:
        return None
    value = int.from_bytes(header[id_length : id_length + size_length], "big") & ((1 << (7 * size_length)) - 1)
    if value == (1 << (7 * size_length)) - 1:  # all ones: unknown size (a live stream)
        return None
    return id_length + size_length + value


def _inspect(uri: str, local_path: str) -> dict:
    """decord's and PyAV's view of a readable file: the VideoInfo fields after video_id, uri and size."""
    import decord  # imported here so that importing this module stays cheap

    try:
        reader = decord.VideoReader(local_path, ctx=decord.cpu(0), num_threads=1)
    except AssertionError:  # decord asserts a positive frame count after opening
        raise UnusableVideo(REASON_NO_FRAMES, f"{uri}: the video stream has 0 frames; the file holds no usable video") from None
    except Exception as exc:
        raise open_failure(uri, exc) from None
    listed = len(reader)
    facts = stream_facts(local_path)
    try:
        pyav = PyAVReader(uri, local_path)
    except PyAVUnusable:
        pyav = None
    notes: list[str] = []
    if pyav is not None and pyav.num_frames == listed:  # the same frames, numbered the same: count with PyAV
        usable, (width, height) = _pyav_frames(uri, pyav, facts)
        decord_failure = _decord_failure(reader, local_path)
        if decord_failure:
            notes.append(
                f"decord cannot decode its frames ({decord_failure}) but PyAV can: clips.decoder=auto or pyav reads it, "
                "clips.decoder=decord does not"
            )
    else:  # PyAV cannot index it, or counts otherwise: decord's frames are the reference
        usable, (width, height) = listed, _decord_frames(uri, reader, listed, facts)
    declared = max(n for n in (listed, facts.declared_frames if facts else None) if n)  # the index's count, or the header's
    truncated = usable < declared
    if truncated:
        notes.append(
            f"truncated: the container declares {declared} frames but only the first {usable} decode; "
            f"the row counts those {usable} (the rest is damaged or missing, fetch the file again for all of it)"
        )
    fps, duration_s, variable, fps_source, why = _timing(reader, usable, facts, pyav, truncated)
    if fps_source == FPS_FROM_CONTAINER:
        notes.append(f"frame rate {fps:g} fps is the stream's declared rate: {why}")
    return dict(
        num_frames=int(usable), fps=fps, width=int(width), height=int(height), duration_s=duration_s,
        variable_frame_rate=variable, status=STATUS_OK, declared_frames=int(declared), fps_source=fps_source,
        note="; ".join(notes),
    )


def _pyav_frames(uri: str, pyav: PyAVReader, facts) -> tuple[int, tuple[int, int]]:
    """(frames that decode from frame 0, (width, height) as displayed), by PyAV: the end of the
    stream is decoded (about one GOP) and the count stops where the decoder stops returning frames."""
    try:
        (_, first), = pyav.frames([0])
    except (PyAVUnusable, ValueError) as exc:
        raise UnusableVideo(REASON_NO_FRAMES, f"{uri}: the first frame does not decode ({exc}); the file is damaged, fetch it again") from None
    usable = max(1, pyav.decodable_frames())  # frame 0 decodes, so at least 1 (the count reaches it at the latest)
    height, width = first.shape[:2]
    return usable, display_size(width, height, facts.rotation if facts else 0)


def _decord_failure(reader, local_path: str) -> str:
    """"" when decord decodes the first frame, else its error. Tried twice, the second time on a
    fresh reader: decord's decoder thread works ahead and may report a later packet's damage from
    this read (the clip decoder retries the same way)."""
    import decord

    try:
        reader.get_batch([0])
        return ""
    except Exception:
        pass
    try:
        decord.VideoReader(local_path, ctx=decord.cpu(0), num_threads=1).get_batch([0])
    except Exception as exc:
        detail = decord_detail(exc)
        # A packet the decoder refused is damage somewhere in the file (decord's thread reads
        # ahead), not decord failing on frames PyAV decodes: the clips there will say so.
        return "" if "avcodec_send_packet" in detail else detail
    return ""


def _decord_frames(uri: str, reader, num_frames: int, facts) -> tuple[int, int]:
    """(width, height) as displayed, from decord decoding the last frame, then the first."""
    # The last frame first: on a file cut inside its last packets it always fails, while decord's
    # decoder thread may report that packet's error from any earlier read, frame 0 included.
    try:
        shape = reader.get_batch([num_frames - 1]).shape
    except Exception as exc:
        raise UnusableVideo(
            REASON_DAMAGED,
            f"{uri}: the container lists {num_frames} frames but the last one does not decode ({decord_detail(exc)}); "
            "the file is damaged, fetch it again",
        ) from None
    if num_frames > 1:
        try:
            reader.get_batch([0])
        except Exception as exc:
            raise UnusableVideo(
                REASON_NO_FRAMES, f"{uri}: the first frame does not decode ({decord_detail(exc)}); the file is damaged, fetch it again"
            ) from None
    height, width = int(shape[1]), int(shape[2])
    if facts is None:
        return width, height
    left = rotation_still_to_apply(facts.rotation, facts.container, (height, width), (facts.coded_width, facts.coded_height))
    return display_size(width, height, left)


FPS_FROM_TIMESTAMPS = "timestamps"  # the frames' own timestamps: frames / (end of the last - start of the first)
FPS_FROM_CONTAINER = "container"  # the stream's declared rate: the timestamps are missing or cannot be trusted
NO_TIMESTAMP_S = 1e9  # decord reports FFmpeg's "no timestamp" as about -3.7e17 s or 9.2e15 s; no real time is this far from 0


def _timing(reader, num_frames: int, facts, pyav, truncated: bool) -> tuple[Optional[float], Optional[float], Optional[bool], str, str]:
    """(fps, duration_s, variable_frame_rate, fps_source, why the declared rate was taken) of the
    first ``num_frames`` frames.

    From the frames' timestamps (decord's, no decoding) when every one of them has one; else (MPEG-4
    Part 2 in AVI with B-frames: decord gives FFmpeg's "no timestamp" for some) and for a truncated
    video (its container's duration counts frames that are not there) from the stream's declared
    rate, with the duration of ``num_frames`` frames at that rate and the frame-rate flag from the
    packets' timestamps (PyAV's, where it can index the file)."""
    why = "the video is truncated, its container's duration counts frames that are not there" if truncated else ""
    if not truncated:
        try:
            stamps = np.asarray(reader.get_frame_timestamp(list(range(num_frames))), dtype=np.float64)  # (n, 2) start, end in s
        except Exception:
            stamps = np.zeros((0, 2))
        valid = np.isfinite(stamps).all(axis=1) & (np.abs(stamps) < NO_TIMESTAMP_S).all(axis=1)
        if len(stamps) and valid.all():
            starts = np.sort(stamps[:, 0])
            duration = float(stamps[:, 1].max() - starts[0])
            if np.isfinite(duration) and duration > 0:
                return round(num_frames / duration, 3), round(duration, 3), _uneven(starts), FPS_FROM_TIMESTAMPS, ""
            why = "the frames' timestamps span no time"
        else:
            why = f"{int((~valid).sum())} of {num_frames} frames have no timestamp" if len(stamps) else "decord gives no timestamps"
    rate = facts.declared_rate if facts is not None and facts.declared_rate else None
    if rate is None:
        nominal = float(reader.get_avg_fps())
        rate = nominal if np.isfinite(nominal) and nominal > 0 else None
    if rate is None:
        return None, None, None, "", why
    times = pyav.presentation_times() if pyav is not None else None
    variable = _uneven(times[:num_frames]) if times is not None and len(times) >= num_frames else None
    return round(rate, 3), round(num_frames / rate, 3), variable, FPS_FROM_CONTAINER, why


def _uneven(starts: np.ndarray) -> bool:
    """Frame intervals differ by more than 10 % (sorted start times)."""
    if len(starts) < 3:
        return False
    steps = np.diff(starts)
    # 2 ms absorbs the rounding of 29.97 fps into a 1/1000 s time base (33/34 ms steps)
    return bool(steps.max() - steps.min() > max(0.002, 0.1 * float(np.median(steps))))


def decord_detail(exc: BaseException) -> str:
    """decord's message without its '[time] /path/to/file.cc:line:' prefix, on one line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^(\[[\d:]+\]\s+\S+?:\d+:\s*)+", "", text)  # nested when rethrown from decord's decoder thread
    return text[:200]


def open_failure(uri: str, exc: Exception) -> UnusableVideo:
    """Turn decord's exception when opening a file into a reason and a message."""
    detail = decord_detail(exc)
    code_match = re.search(r"\((-?\d+) vs\. 0\)", str(exc))
    code = int(code_match.group(1)) if code_match else None
    if code == _AVERROR_STREAM_NOT_FOUND:
        return UnusableVideo(REASON_NO_VIDEO, f"{uri}: no video stream (audio only?); leave it out of the inputs")
    if code == _AVERROR_DECODER_NOT_FOUND or "Cannot create buffer source" in detail:
        return UnusableVideo(
            REASON_UNDECODABLE,
            f"{uri}: the video stream cannot be decoded (unsupported codec, or a header damaged by truncation: {detail}); re-encode it to H.264 or fetch it again",
        )
    if "broken metadata" in detail:  # decord needs a duration or frame count from the container
        return UnusableVideo(
            REASON_CANNOT_OPEN,
            f"{uri}: decord cannot count its frames, the container declares no duration (a live recording?); remux it, e.g. ffmpeg -i IN -c copy OUT.mp4",
        )
    if "av_read_frame failed" in detail:
        return UnusableVideo(REASON_DAMAGED, f"{uri}: reading the packets failed part way ({detail}); the file is damaged or truncated, fetch it again")
    if isinstance(exc, RuntimeError) and detail.startswith("Error reading"):  # decord got no reader: FFmpeg could not open it
        return UnusableVideo(
            REASON_CANNOT_OPEN, f"{uri}: FFmpeg cannot open it as a media file (damaged, cut before its index, or not a video); fetch it again or leave it out"
        )
    return UnusableVideo(REASON_CANNOT_OPEN, f"{uri}: decord could not open it ({detail}); the file is damaged or in an unsupported container")
