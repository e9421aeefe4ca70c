"""The bad-input corpus: every kind of real-world file the pipeline must take without losing a good
clip, generated with PyAV in the test run (tiny sizes: the whole corpus takes a few seconds), each
with the manifest row and the clips (default plan) it must give.

    cases = write_corpus(tmp_path / "corpus")       # writes the files, returns the Case of each
    for case in cases: case.path, case.status, case.reason, case.clips_ok, case.clips_failed

The plan is the config's default: 1 key frame per second, 1 current frame per key at d in [0, 9].
README.md ("Bad input") has the table of these cases; tests/video/test_bad_inputs.py checks each
row and its clips, tests/pipelines/test_bad_input_corpus.py builds a manifest and a teacher cache
from the whole corpus and checks that no good clip is lost.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from tests.video_fixtures import (  # PyAV before decord
    avi_keep_frames,
    break_last_packet,
    damage_packets,
    encoder_available,
    truncate_file,
    write_audio_only,
    write_video,
)

PLAN = dict(key_frames_per_second=1.0, currents_per_key=1, offset_range=(0, 9), seed=0)  # the config's defaults
W, H = 64, 48
VFR_TIMES = [0.0, 0.04, 0.08, 0.3, 0.34, 0.9, 0.94, 0.98, 1.5, 1.52]
HAS_VP9 = encoder_available("libvpx-vp9")


@dataclass
class Case:
    """One file of the corpus and what the pipeline must make of it."""

    name: str  # file name in the corpus folder
    kind: str  # what it stands for (the README table's first column)
    make: Callable[[Path], Any]  # writes the file at the given path
    status: str = "ok"
    reason: str = ""  # the manifest row's reason (error rows)
    fields: dict = field(default_factory=dict)  # manifest row field -> expected value
    note: str = ""  # the start of the row's note ("" : no note)
    clips_ok: int = 0  # clips of the default plan that decode
    clips_failed: dict = field(default_factory=dict)  # reason -> clips of the plan that fail
    error_has: str = ""  # in the row's error (error rows)
    path: Optional[Path] = None

    @property
    def clips(self) -> int:
        return self.clips_ok + sum(self.clips_failed.values())


def _video(num_frames: int, width: int = W, height: int = H, **kwargs) -> Callable[[Path], Any]:
    return lambda path: write_video(path, num_frames, width, height, **kwargs)


def _from(source: Callable[[Path], Any], then: Callable[[Path, Path], Any]) -> Callable[[Path], Any]:
    """Write ``source`` beside ``path`` (a hidden name: the manifest skips it), then derive ``path`` from it."""

    def make(path: Path) -> None:
        original = path.with_name(f".source-{path.name}")
        source(original)
        then(original, path)

    return make


def _symlink_loop(path: Path) -> None:
    os.symlink(path.name, path)  # a link to itself


def _broken_link(path: Path) -> None:
    os.symlink(path.with_name("gone-away.mp4"), path)


def _unreadable(path: Path) -> None:
    write_video(path, 10, W, H)
    path.chmod(0)


def _tiny_ffv1(path: Path) -> None:
    write_video(path, 5, 2, 2, codec="ffv1")


def cases() -> list[Case]:
    """Every case, in README order: codecs and containers, then odd files that are fine, then
    files whose header lies or whose end does not decode, then damage, then files that cannot be used."""
    ok_fields = dict(num_frames=50, fps=25.0, width=W, height=H, fps_source="timestamps", variable_frame_rate=False)
    corpus = [
        Case("h264.mp4", "H.264 in MP4, index (moov) at the end", _video(50, gop=10), fields=ok_fields, clips_ok=2),
        Case("h264 faststart.mp4", "H.264 in MP4, index first (faststart)", _video(50, gop=10, faststart=True), fields=ok_fields, clips_ok=2),
        Case(
            "mpeg4 bframes.avi", "MPEG-4 Part 2 in AVI with B-frames (DivX/Xvid kind; decord has no timestamp for 1 frame in 3)",
            _video(50, codec="mpeg4", gop=12, bframes=True),
            fields=dict(ok_fields, fps_source="container"), note="frame rate 25 fps is the stream's declared rate", clips_ok=2,
        ),
        Case("mpeg4.avi", "MPEG-4 Part 2 in AVI", _video(50, codec="mpeg4", gop=10), fields=ok_fields, clips_ok=2),
        Case("ffv1.mkv", "FFV1 in Matroska", _video(50, codec="ffv1"), fields=ok_fields, clips_ok=2),
        Case("h264.ts", "H.264 in MPEG-TS", _video(50, gop=10), fields=ok_fields, clips_ok=2),
    ]
    if HAS_VP9:
        corpus.append(Case("vp9.webm", "VP9 in WebM", _video(50, codec="libvpx-vp9", gop=10), fields=ok_fields, clips_ok=2))
    corpus += [
        Case("one frame.mp4", "1 frame", _video(1), fields=dict(num_frames=1, fps=25.0), clips_ok=1),
        Case("odd 97x61.mp4", "odd frame size (97x61)", _video(12, 97, 61), fields=dict(num_frames=12, width=97, height=61), clips_ok=1),
        Case("tiny 2x2.mkv", "2x2 pixels (FFV1 in Matroska; decord cannot convert frames this small)", _tiny_ffv1,
             fields=dict(num_frames=5, width=2, height=2), note="decord cannot decode its frames", clips_ok=1),
        Case("rotated 90.mp4", "rotated 90° (display matrix, MP4)", _video(6, 320, 240, rotation=90),
             fields=dict(num_frames=6, width=240, height=320), clips_ok=1),
        Case("rotated 90.mkv", "rotated 90° (display matrix, Matroska; decord gives its frames no timestamp)", _video(6, 320, 240, rotation=90),
             fields=dict(num_frames=6, width=240, height=320, fps=25.0, fps_source="container"),
             note="frame rate 25 fps is the stream's declared rate", clips_ok=1),
        Case("vfr.mkv", "variable frame rate", _video(len(VFR_TIMES), timestamps_s=VFR_TIMES),
             fields=dict(num_frames=10, variable_frame_rate=True, fps_source="timestamps"), clips_ok=2),
        Case("huge 3840x2160.mp4", "huge resolution (3840x2160), 2 frames", _video(2, 3840, 2160),
             fields=dict(num_frames=2, width=3840, height=2160), clips_ok=1),
        Case("vidéo ünïcode 日本.mp4", "unicode in the name", _video(50, gop=10), fields=ok_fields, clips_ok=2),
        Case("with  two spaces .mp4", "spaces in the name", _video(50, gop=10), fields=ok_fields, clips_ok=2),
        Case(
            "header says 50 holds 30.avi", "AVI header declares 50 frames, the file holds 30 (Cinepak-like)",
            _from(_video(50, codec="mpeg4", gop=10), lambda src, dst: avi_keep_frames(src, 30, dst)),
            fields=dict(num_frames=30, declared_frames=50, fps=25.0, fps_source="container", duration_s=1.2),
            note="truncated: the container declares 50 frames but only the first 30 decode", clips_ok=2,
        ),
        Case(
            "last frame broken.mp4", "MP4 lists 30 frames, the last does not decode (decord repeats frame 28)",
            _from(_video(30, gop=10, faststart=True), break_last_packet),
            fields=dict(num_frames=29, declared_frames=30, fps=25.0, fps_source="container"),
            note="truncated: the container declares 30 frames but only the first 29 decode", clips_ok=2,
        ),
        Case(
            "damaged middle.mp4", "damaged middle (packets of frames 25-26 overwritten, sizes intact)",
            _from(_video(50, gop=10), lambda src, dst: damage_packets(src, [25, 26], dst)),
            fields=ok_fields, clips_ok=1, clips_failed={"decode failed": 1},
        ),
        Case("zero.mp4", "zero-byte file", lambda path: path.write_bytes(b""), status="error", reason="zero-byte file"),
    ]
    for percent in (10, 50, 90):
        corpus.append(
            Case(f"cut {percent}.mp4", f"truncated at {percent} %", _from(_video(50, gop=10), lambda src, dst, p=percent: truncate_file(src, p / 100, dst)),
                 status="error", reason="truncated", error_has="cut short")
        )
    corpus += [
        Case("header only.mp4", "header only (the first 48 bytes)", _from(_video(50, gop=10), lambda src, dst: dst.write_bytes(src.read_bytes()[:48])),
             status="error", reason="truncated"),
        Case("random.mp4", "random bytes", lambda path: path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
             status="error", reason="cannot open"),
        Case("notes.avi", "text renamed to video", lambda path: path.write_text("these are notes, not a video\n" * 40),
             status="error", reason="cannot open"),
        Case("audio only.mp4", "audio only", write_audio_only, status="error", reason="no video stream"),
        Case("live.mkv", "Matroska written live (no duration)", _video(30, gop=10, live=True), status="error", reason="cannot open",
             error_has="declares no duration"),
        Case("loop.mp4", "symlink loop", _symlink_loop, status="error", reason="missing file", error_has="Too many levels of symbolic links"),
        Case("broken link.mp4", "broken symlink", _broken_link, status="error", reason="missing file"),
    ]
    if os.geteuid() != 0:  # root reads any file
        corpus.append(Case("unreadable.mp4", "unreadable file (mode 000)", _unreadable, status="error", reason="permission denied",
                           error_has="may not read the file"))
    return corpus


def write_corpus(root: Path) -> list[Case]:
    """Write every case's file under ``root`` (created) and return the cases with their paths."""
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for case in cases():
        case.path = root / case.name
        case.make(case.path)
        written.append(case)
    return written
