"""Which frames to take from a video: a seeded, deterministic plan of clips (no decoding here).

    clips = plan_clips(info, key_frames_per_second=1.0, currents_per_key=2, offset_range=(1, 9), seed=0)
    clips[0].key_index, clips[0].current_indices     # e.g. 0, (3, 7)

A clip is one key frame ``k`` and ``m`` current frames ``k + d`` with ``d`` drawn from
``offset_range``. The official Semi-DFF code draws key = cur + offset with offset in [-9, -1] for the
feature-regression step and [-9, 0] for the semantic step (dff-facts §3.2): seen from the key, the
current frames lie ``d`` in [1, 9] (regression) or [0, 9] (semantic, d = 0 is the key itself) frames
after it. Key frames are spread evenly over the part of the video where a current frame still
fits, at a rate per second or a count per video; a short video gets fewer clips and never an index
past its last frame.

Decoding cost is set by the codec's keyframe spacing (GOP), not by how few frames are kept: a frame
decodes only from the codec keyframe before it. ``align_to_codec_keyframes`` moves every key frame
to a codec keyframe (positions from the container's index, see
``semidff.video.decode.codec_keyframe_indices``), and each clip records ``frames_decoded``, the
frames it makes the decoder touch (:func:`frames_decoded_for`). Measured on 500-frame H.264 files
at 25 fps, 1 key per second, one current frame: GOP 30, 16.1 frames per clip (20 clips) against
5.9 aligned (17 clips); GOP 250, 23.3 against 3.0 aligned (2 clips, one per GOP).

The plan depends only on (seed, video_id, the arguments, the video's frame count and rate), never
on which other videos are planned or in what order: each video has its own random generator,
seeded from a hash of (seed, video_id).
"""
from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import math
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

DEFAULT_KEY_FRAMES_PER_SECOND = 1.0
REGRESSION_OFFSETS = (1, 9)  # step A of stage 2: key = cur + offset, offset in [-9, -1] (official semi-DFF)
SEMANTIC_OFFSETS = (0, 9)  # step B of stage 2: offset in [-9, 0]; d = 0 pairs the key with itself
WHOLE_VIDEO = -1  # key_index of the one row that stands for a video without clips (cannot be opened or planned, or too short)
REASON_CANNOT_PLAN = "cannot plan"  # e.g. no frame rate for key_frames_per_second
REASON_TOO_SHORT = "too short"  # fewer frames than the smallest offset needs: the plan has no clip for it


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """One planned clip: a key frame and the current frames after it, as frame indices of the video."""

    clip_id: str  # f"{video_id}:{key_index}": stable across runs and machines for the same plan
    video_id: str
    uri: str
    key_index: int
    current_indices: tuple[int, ...]  # key_index + offsets, ascending; repeats only when fewer offsets fit than were asked for
    offsets: tuple[int, ...]  # d = current - key, ascending
    # Frames this clip adds to one ascending read of its video's plan (the decoder goes on from the
    # previous clip's frames; the plan's clips sum to frames_decoded_for(all their frames)).
    # None when the codec keyframes are unknown.
    frames_decoded: Optional[int] = None

    @property
    def frame_indices(self) -> tuple[int, ...]:
        """Every frame the clip needs (key and currents), ascending, without repeats."""
        return tuple(sorted({self.key_index, *self.current_indices}))


def plan_clips(
    video: Any,
    *,
    key_frames_per_second: Optional[float] = None,
    key_frames_per_video: Optional[int] = None,
    currents_per_key: int = 1,
    offset_range: tuple[int, int] = REGRESSION_OFFSETS,
    seed: int = 0,
    codec_keyframes: Optional[Sequence[int]] = None,
    align_to_codec_keyframes: bool = False,
) -> list[ClipSpec]:
    """Plan the clips of one video, in key-frame order.

    video: a manifest row (dict) or anything with attributes video_id, uri, num_frames and fps
        (e.g. ``semidff.video.probe.VideoInfo``); fps is needed only for a rate per second.
    key_frames_per_second / key_frames_per_video: how many key frames, one or the other (when
        neither is given: DEFAULT_KEY_FRAMES_PER_SECOND). Keys are evenly spaced from frame 0 over
        the frames that can still have a current frame (0 .. num_frames - 1 - offset_range[0]);
        rounding can merge two keys (a rate above the frame rate, more keys than frames).
    currents_per_key: m, the current frames per key. Offsets are drawn without replacement from
        the ones that fit before the video ends; a key near the end with fewer than m offsets
        that fit uses each of them, repeated as evenly as possible, so every clip has m.
    offset_range: (lo, hi), inclusive, 0 <= lo <= hi; current = key + d.
    codec_keyframes: frame indices of the codec's keyframes. When given, every clip gets
        ``frames_decoded``: what it adds to one ascending read of the plan's frames (the way
        ``semidff.video.decode`` reads them), so the plan's clips sum to the video's decode cost.
    align_to_codec_keyframes: move each key, in order, to the nearest codec keyframe after the
        one the previous key took (ties: the earlier). Where keyframes are at least as frequent as
        keys, each key moves by about half a GOP at most and the count stays; where the GOP is
        longer than the key spacing, every usable keyframe gets one key: fewer clips, each far
        cheaper to decode (no keyframe at or before the last usable key: no clips).
    Raises ValueError naming the argument (or the video) and what is allowed.
    """
    video_id, uri, num_frames, fps = _video_fields(video)
    lo, hi = _check_offsets(offset_range)
    if isinstance(currents_per_key, bool) or not isinstance(currents_per_key, (int, np.integer)) or currents_per_key < 1:
        raise ValueError(f"currents_per_key={currents_per_key!r}: must be an integer >= 1")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r}: must be an integer >= 0")
    if align_to_codec_keyframes and codec_keyframes is None:
        raise ValueError(
            "align_to_codec_keyframes=True needs codec_keyframes, the keyframe positions from the container's index "
            "(semidff.video.decode.codec_keyframe_indices)"
        )
    keyframes = _check_keyframes(codec_keyframes, video_id) if codec_keyframes is not None else None
    per_second = _check_rate(key_frames_per_second, key_frames_per_video)

    last_key = num_frames - 1 - lo  # the last frame that still has a current frame at offset lo
    if last_key < 0:
        return []
    if key_frames_per_video is not None:
        count, spacing = key_frames_per_video, (last_key + 1) / key_frames_per_video
    else:
        if fps is None or not math.isfinite(fps) or fps <= 0:
            raise ValueError(
                f"video {video_id} ({uri}): its frame rate is unknown (fps={fps!r}), so key_frames_per_second cannot "
                "place keys; use key_frames_per_video"
            )
        spacing = fps / per_second  # frames between keys, before rounding
        count = math.floor(last_key / spacing) + 1
    keys = sorted({min(last_key, _round_half_up(j * spacing)) for j in range(count)})
    if align_to_codec_keyframes:
        keys = _snap_to_keyframes(keys, [k for k in keyframes if k <= last_key])

    rng = np.random.default_rng([seed, _video_seed(video_id)])
    clips = []
    for key in keys:
        fitting = np.arange(lo, min(hi, num_frames - 1 - key) + 1)
        offsets = tuple(sorted(int(d) for d in _draw_offsets(rng, fitting, currents_per_key)))
        current = tuple(key + d for d in offsets)
        clips.append(ClipSpec(f"{video_id}:{key}", video_id, uri, key, current, offsets))
    return with_decoding_cost(clips, keyframes, video_id) if keyframes is not None else clips


def with_decoding_cost(clips: Sequence[ClipSpec], codec_keyframes: Sequence[int], video_id: str = "") -> list[ClipSpec]:
    """The clips (one video's plan, in key-frame order) with ``frames_decoded`` set from the
    video's codec keyframes, as :func:`plan_clips` sets it when it gets them: what each clip adds
    to one ascending read of all the clips' frames. Raises ValueError for a negative keyframe."""
    costs = _decoding_per_clip(clips, _check_keyframes(codec_keyframes, video_id))
    return [dataclasses.replace(clip, frames_decoded=cost) for clip, cost in zip(clips, costs)]


@dataclasses.dataclass(frozen=True)
class VideoPlan:
    """One video's planned clips, or why it has none: what the clip stage decodes for it.

    clips: in key-frame order (``frames_decoded`` set only when the codec keyframes were known).
    reason, error: when there is no clip, REASON_CANNOT_PLAN or REASON_TOO_SHORT and a message
        naming the file and the fix; "" otherwise. Such a video gives one row, ``f"{video_id}:-1"``.
    """

    video_id: str
    uri: str
    num_frames: Optional[int]
    clips: tuple[ClipSpec, ...]
    reason: str = ""
    error: str = ""

    @property
    def clip_ids(self) -> list[str]:
        """The ids of the rows the video gives: its clips', or the one whole-video row."""
        return [clip.clip_id for clip in self.clips] or [f"{self.video_id}:{WHOLE_VIDEO}"]

    def with_codec_keyframes(self, codec_keyframes: Sequence[int]) -> "VideoPlan":
        """The same clips with their decoding cost (:func:`with_decoding_cost`); a plan without
        clips as it is; a negative keyframe: no clips, reason REASON_CANNOT_PLAN."""
        if not self.clips:
            return self
        try:
            return dataclasses.replace(self, clips=tuple(with_decoding_cost(self.clips, codec_keyframes, self.video_id)))
        except ValueError as exc:
            return dataclasses.replace(self, clips=(), reason=REASON_CANNOT_PLAN, error=f"{self.uri}: {exc}")

    def to_json(self) -> str:
        """The plan as compact JSON text (how it travels to a decode task, as one string column):
        the video's fields once, then [clip_id, key_index, current_indices, offsets, frames_decoded]
        per clip (a clip's video_id and uri are the plan's)."""
        clips = [[c.clip_id, c.key_index, list(c.current_indices), list(c.offsets), c.frames_decoded] for c in self.clips]
        fields = dict(video_id=self.video_id, uri=self.uri, num_frames=self.num_frames, reason=self.reason, error=self.error, clips=clips)
        return json.dumps(fields, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "VideoPlan":
        data = json.loads(text)
        video_id, uri = data["video_id"], data["uri"]
        clips = tuple(ClipSpec(clip_id, video_id, uri, key, tuple(current), tuple(offsets), cost) for clip_id, key, current, offsets, cost in data.pop("clips"))
        return cls(clips=clips, **data)


def plan_video(video: Any, *, codec_keyframes: Optional[Sequence[int]] = None, **plan_args: Any) -> VideoPlan:
    """The :class:`VideoPlan` of one video (a manifest row or dict): :func:`plan_clips` with
    ``plan_args``, and when it gives no clip or raises ValueError, why (REASON_TOO_SHORT when the
    video has fewer frames than the smallest offset needs, REASON_CANNOT_PLAN otherwise)."""
    get = video.get if isinstance(video, dict) else lambda name: getattr(video, name, None)
    video_id, uri, num_frames = get("video_id"), get("uri"), get("num_frames")
    try:
        clips = plan_clips(video, codec_keyframes=codec_keyframes, **plan_args)
    except ValueError as exc:
        return VideoPlan(video_id, uri, num_frames, (), REASON_CANNOT_PLAN, f"{uri}: {exc}")
    if clips:
        return VideoPlan(video_id, uri, num_frames, tuple(clips))
    lo, hi = plan_args.get("offset_range", REGRESSION_OFFSETS)
    if num_frames - 1 - lo < 0:
        return VideoPlan(
            video_id,
            uri,
            num_frames,
            (),
            REASON_TOO_SHORT,
            f"{uri}: {num_frames} frame(s), too few for a current frame at offset d >= {lo} "
            f"(clips.offset_range=[{lo}, {hi}]), so it gives no clip; nothing is wrong with the file",
        )
    return VideoPlan(
        video_id,
        uri,
        num_frames,
        (),
        REASON_CANNOT_PLAN,
        f"{uri}: no codec keyframe leaves room for a current frame at offset d >= {lo} "
        "(clips.align_to_codec_keyframes=true), so it gives no clip; set it to false to plan keys anywhere",
    )


def frames_decoded_for(frames: Union[ClipSpec, Iterable[int]], codec_keyframes: Sequence[int]) -> int:
    """Frames a decoder touches to output ``frames`` (a clip, or frame indices) in ascending order.

    The model is that of a forward decoder that seeks only when the next frame lies past a codec
    keyframe: a frame in the GOP the decoder is already in costs the frames from its last output
    up to it, any other frame costs the frames from its GOP's keyframe up to it. That is what
    decord's ``get_batch`` does with sorted indices. It is an estimate in display order: it
    ignores B-frame reordering (a B-frame also needs the reference frame after it, +1 or 2) and
    decoders that skip non-reference frames they do not output (fewer; perf-anchors: ~15 instead
    of ~27 per pair at GOP 250). Frames before the first listed keyframe count from frame 0.

    For a video's whole plan pass the union of its clips' frames: that total equals the sum of the
    plan's ``frames_decoded`` and is below the sum over the clips decoded one by one, since clips
    in the same GOP share the decoding (GOP 250, 1 key/s at 25 fps: 23 frames per clip against 119).
    """
    indices = frames.frame_indices if isinstance(frames, ClipSpec) else sorted({int(i) for i in frames})
    return sum(cost for _, cost in _forward_decoding(indices, sorted(codec_keyframes)))


def _forward_decoding(indices: Sequence[int], keyframes: Sequence[int]) -> Iterable[tuple[int, int]]:
    """(frame, frames decoded to output it after the previous one) along ascending unique ``indices``."""
    if indices and indices[0] < 0:
        raise ValueError(f"frame indices must be >= 0, got {indices[0]}")
    position = -1  # the last frame the decoder output (-1: nothing yet)
    for index in indices:
        at = bisect.bisect_right(keyframes, index) - 1
        gop_start = keyframes[at] if at >= 0 else 0
        yield index, (index - position if position >= gop_start else index - gop_start + 1)
        position = index


def _decoding_per_clip(clips: Sequence[ClipSpec], keyframes: Sequence[int]) -> list[int]:
    """What each clip adds to one ascending read of all the clips' frames: every step of the read
    is charged to the first clip that needs its frame, so the costs sum to the read's total."""
    owner: dict[int, int] = {}
    for number, clip in enumerate(clips):
        for index in clip.frame_indices:
            owner.setdefault(index, number)
    costs = [0] * len(clips)
    for index, cost in _forward_decoding(sorted(owner), keyframes):
        costs[owner[index]] += cost
    return costs


def _video_fields(video: Any) -> tuple[str, str, int, Optional[float]]:
    get = video.get if isinstance(video, dict) else lambda name: getattr(video, name, None)
    video_id, uri, num_frames, fps = get("video_id"), get("uri"), get("num_frames"), get("fps")
    if not video_id:
        raise ValueError(f"cannot plan clips for {video!r}: it has no video_id (pass a manifest row or a VideoInfo)")
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 0:
        raise ValueError(f"video {video_id} ({uri}): num_frames={num_frames!r} is not a frame count; is it a failed manifest row?")
    return str(video_id), str(uri or ""), int(num_frames), (None if fps is None else float(fps))


def _check_offsets(offset_range: tuple[int, int]) -> tuple[int, int]:
    try:
        lo, hi = (int(d) for d in offset_range)
    except (TypeError, ValueError):
        raise ValueError(f"offset_range={offset_range!r}: must be two integers (lo, hi), e.g. (1, 9)") from None
    if lo < 0:
        raise ValueError(
            f"offset_range={offset_range!r}: offsets count frames after the key and must be >= 0 "
            "(the official key = cur - d with d in [1, 9] is offset_range=(1, 9))"
        )
    if lo > hi:
        raise ValueError(f"offset_range={offset_range!r}: lo must be <= hi")
    return lo, hi


def _check_keyframes(codec_keyframes: Sequence[int], video_id: str) -> list[int]:
    keyframes = sorted({int(k) for k in codec_keyframes})
    if keyframes and keyframes[0] < 0:
        raise ValueError(f"video {video_id}: codec_keyframes holds a negative index ({keyframes[0]})")
    return keyframes


def _check_rate(per_second: Optional[float], per_video: Optional[int]) -> Optional[float]:
    """The key frames per second to use (None: a count per video is given)."""
    if per_second is not None and per_video is not None:
        raise ValueError(
            f"key_frames_per_second={per_second!r} and key_frames_per_video={per_video!r}: give one of them, not both"
        )
    if per_video is not None:
        if isinstance(per_video, bool) or not isinstance(per_video, (int, np.integer)) or per_video < 1:
            raise ValueError(f"key_frames_per_video={per_video!r}: must be an integer >= 1")
        return None
    per_second = DEFAULT_KEY_FRAMES_PER_SECOND if per_second is None else per_second
    if isinstance(per_second, bool) or not isinstance(per_second, (int, float, np.number)) or not (0 < per_second < math.inf):
        raise ValueError(f"key_frames_per_second={per_second!r}: must be a finite number > 0")
    return float(per_second)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _snap_to_keyframes(keys: list[int], keyframes: list[int]) -> list[int]:
    """Each key, in order, moved to the nearest of ``keyframes`` after the one the previous key took
    (ties: the earlier); keys left when the keyframes run out are dropped."""
    snapped: list[int] = []
    for key in keys:
        first_free = bisect.bisect_right(keyframes, snapped[-1]) if snapped else 0
        if first_free == len(keyframes):
            break
        at = bisect.bisect_left(keyframes, key, lo=first_free)
        candidates = keyframes[max(first_free, at - 1) : at + 1]
        snapped.append(min(candidates, key=lambda k: (abs(k - key), k)))
    return snapped


def _video_seed(video_id: str) -> int:
    """64 bits of SHA-256 of the video id: a stable seed on every machine (``hash()`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(video_id.encode("utf-8")).digest()[:8], "big")


def _draw_offsets(rng: np.random.Generator, fitting: np.ndarray, count: int) -> np.ndarray:
    """``count`` offsets from ``fitting``: without replacement when there are enough, otherwise
    every one of them in turn (whole permutations) until there are ``count``."""
    if count <= len(fitting):
        return rng.choice(fitting, size=count, replace=False)
    rounds = math.ceil(count / len(fitting))
    return np.concatenate([rng.permutation(fitting) for _ in range(rounds)])[:count]
