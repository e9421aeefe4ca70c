"""The rows that flow between the pipeline's stages, each with its Arrow schema, in one place.

    videos ──▶ manifest ──ManifestRow──▶ clips ──ClipRow──▶ prepare ──PreparedClipRow──▶ teacher actors ──CacheRow──▶ part-*.parquet
              (pipelines/manifest.py)   (pipelines/clips.py)  (pipelines/teacher_cache.py)                  (semidff/cache/)

    rows = ManifestRow.from_arrow(pq.read_table("runs/manifest/manifest.parquet"))
    table = ClipRow.to_arrow([ClipRow.from_result(result)])     # a decoded clip -> one Arrow row
    frames = ClipRow.from_arrow(table)[0].frames()              # ClipFrames: numpy views of the row's bytes

| type | one row per | stored in | schema |
|---|---|---|---|
| :class:`ManifestRow` | input video, probed once | ``manifest.parquet`` (:data:`MANIFEST_FILE`) | :data:`MANIFEST_SCHEMA` |
| :class:`ClipRow` | planned clip, decoded and resized | Ray Data blocks (never on disk) | :data:`CLIP_SCHEMA` |
| :class:`PreparedClipRow` | clip row after the cache's JPEG round trip | Ray Data blocks | :data:`PREPARED_SCHEMA` |
| :class:`CacheRow` | clip with the teacher's outputs | teacher cache ``part-*.parquet`` | :data:`CACHE_SCHEMA` |

Every type converts from and to Arrow here and nowhere else: ``Row.to_arrow(rows)`` gives a
``pyarrow.Table`` of the type's schema, ``Row.from_arrow(table)`` the rows of a table that holds
(at least) those columns, ``row.to_dict()`` / ``Row.from_dict(mapping)`` the plain dict Ray Data
hands to a ``map``/``flat_map`` function. ``row["name"]`` reads a column by name, as on those
dicts. A clip's identity (id, video, frame indices) is :class:`ClipIds`; the in-memory forms of a
decoded clip are :class:`ClipFrames` (numpy frames) and :class:`ClipFailure` (why it has none).
Frame indices count frames of the video from 0; frames are RGB uint8, C order.

Nothing here needs Ray, torch or a video decoder.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping, Optional, Sequence, TypeVar, Union

import numpy as np
import pyarrow as pa

from semidff.video.clip_plan import WHOLE_VIDEO, ClipSpec

MANIFEST_FILE = "manifest.parquet"  # the manifest stage's output, in its output directory
STATUS_OK = "ok"
STATUS_ERROR = "error"

_R = TypeVar("_R", bound="_Row")


@functools.lru_cache(maxsize=None)
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


class _Row:
    """Mixin of the row dataclasses: dict conversion and read access by column name."""

    def __getitem__(self, name: str) -> Any:
        """``row["clip_id"]``: a field by name, as on the row dicts Ray Data and pyarrow give."""
        if name not in _field_names(type(self)):
            raise KeyError(name)
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        """{field: value} in field order (no copy of the values)."""
        return {name: getattr(self, name) for name in _field_names(type(self))}

    @classmethod
    def from_dict(cls: type[_R], values: Mapping[str, Any]) -> _R:
        """The row of a mapping with (at least) this type's fields; other keys are ignored, so a
        PreparedClipRow's dict reads as a ClipRow. A missing field without a default raises TypeError."""
        return cls(**{name: values[name] for name in _field_names(cls) if name in values})


class _ArrowRow(_Row):
    """Mixin of the rows with an Arrow schema (``SCHEMA``: one column per field, same order)."""

    SCHEMA: ClassVar[pa.Schema]

    @classmethod
    def to_arrow(cls, rows: Iterable[Any], schema: Optional[pa.Schema] = None) -> pa.Table:
        """A table of ``rows`` with this type's schema (or ``schema``: the same columns, e.g. with metadata)."""
        return pa.Table.from_pylist([row.to_dict() for row in rows], schema=cls.SCHEMA if schema is None else schema)

    @classmethod
    def from_arrow(cls: type[_R], table: pa.Table) -> list[_R]:
        """The rows of ``table``: its columns of this type's schema (others are ignored), cast to
        the schema's types. Raises KeyError for a missing column, pyarrow.ArrowInvalid /
        ArrowNotImplementedError for a column that does not cast."""
        table = table.select(cls.SCHEMA.names).cast(cls.SCHEMA)
        return [cls.from_dict(values) for values in table.to_pylist()]


# ---------------------------------------------------------------------------------------------
# The manifest stage (semidff manifest)

MANIFEST_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("size_bytes", pa.int64()),
        ("num_frames", pa.int64()),
        ("fps", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("duration_s", pa.float64()),
        ("variable_frame_rate", pa.bool_()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("error", pa.string()),
        ("declared_frames", pa.int64()),
        ("fps_source", pa.string()),
        ("note", pa.string()),
    ]
)
_MANIFEST_ADDED = ("declared_frames", "fps_source", "note")  # columns a manifest of an earlier version lacks: read as their defaults

_TERMINAL_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_text(text: Optional[str]) -> str:
    """``text`` fit to be stored and shown anywhere: terminal escapes (the colours of Ray's and
    decord's error texts) and other control characters removed, tabs and newlines kept."""
    if not text:
        return ""
    return _CONTROL.sub("", _TERMINAL_ESCAPE.sub("", str(text)))


@dataclass(frozen=True)
class ManifestRow(_ArrowRow):
    """One input video as the probe saw it (``semidff.video.probe.probe_video``; also named
    ``VideoInfo`` there). One row per video in ``manifest.parquet``. Numbers are None when the
    file could not be read far enough to know them.

    video_id: 16 hex digits of the SHA-1 of the normalised URI (``semidff.video.probe.video_id_for``).
    uri: the normalised path or URI (local paths absolute).
    size_bytes: the file's size in bytes.
    num_frames: frames of the video stream that decode; frame indices elsewhere are 0 .. num_frames - 1.
    fps: frames per second: num_frames / duration_s from the frames' timestamps (the mean rate, also
        for variable frame rate), or the stream's declared rate (see fps_source).
    width, height: of the frames as displayed (the container's display rotation applied), pixels.
    duration_s: end of the last frame minus start of the first, seconds (container timestamps);
        num_frames / fps where the rate is the declared one.
    variable_frame_rate: frame intervals differ by more than 10 % (None: not known).
    status: "ok" (usable: its first and last frames decode) or "error" (see reason and error).
    reason: short category of the problem, a ``semidff.video.probe.REASON_*`` ("" when ok).
    error: the message naming the file and the fix ("" when ok).
    declared_frames: the frames the container declares (its header or its index, the larger);
        more than num_frames when the video is truncated (:attr:`truncated`). None when unknown.
    fps_source: "timestamps" or "container" (the stream's declared rate: some frames have no
        timestamp, or the video is truncated); "" when the row has no fps.
    note: what an "ok" row's numbers rest on when it is not the plain case, in words: truncated,
        rate inferred, a decoder that cannot read it ("" otherwise).

    Texts are stored clean (:func:`clean_text`: no terminal escapes or control characters).
    """

    SCHEMA = MANIFEST_SCHEMA  # a class attribute (not a field)

    video_id: str
    uri: str
    size_bytes: Optional[int]
    num_frames: Optional[int]
    fps: Optional[float]
    width: Optional[int]
    height: Optional[int]
    duration_s: Optional[float]
    variable_frame_rate: Optional[bool]
    status: str
    reason: str = ""
    error: str = ""
    declared_frames: Optional[int] = None
    fps_source: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        for name in ("reason", "error", "note", "fps_source"):
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, clean_text(getattr(self, name)))

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def truncated(self) -> bool:
        """The container declares more frames than decode (num_frames counts those that do)."""
        return self.declared_frames is not None and self.num_frames is not None and self.num_frames < self.declared_frames

    @classmethod
    def from_arrow(cls, table: pa.Table) -> list["ManifestRow"]:
        """As :meth:`_ArrowRow.from_arrow`; a manifest written before the columns
        ``declared_frames``, ``fps_source`` and ``note`` existed reads with their defaults."""
        for name in _MANIFEST_ADDED:
            if name not in table.column_names:
                field = MANIFEST_SCHEMA.field(name)
                default = None if field.type == pa.int64() else ""
                table = table.append_column(field, pa.array([default] * table.num_rows, field.type))
        return super().from_arrow(table)

    def to_row(self) -> dict:
        """The row as a plain dict (the same as :meth:`to_dict`)."""
        return self.to_dict()

    @classmethod
    def failed(cls, video_id: str, uri: str, reason: str, message: str, size_bytes: Optional[int] = None) -> "ManifestRow":
        """The row of an unusable file: only what is known, the rest None."""
        return cls(video_id, uri, size_bytes, None, None, None, None, None, None, STATUS_ERROR, reason, message)


# ---------------------------------------------------------------------------------------------
# The clip stage (semidff clips), and its rows on the way to the teacher cache


def _int_list(values: Optional[Iterable[Any]]) -> list[int]:
    return [int(v) for v in values] if values is not None else []


@dataclass(frozen=True)
class ClipIds(_Row):
    """Which clip: the identity fields shared by ClipRow, PreparedClipRow and CacheRow, and what
    ``semidff.cache.teacher.PreparedClip`` / ``semidff.cache.format.TeacherClip`` carry.

    clip_id: f"{video_id}:{key_index}", unique per video and plan (key_index -1: the row that
        stands for a whole video without clips, see WHOLE_VIDEO).
    video_id, uri: the video's, as in its ManifestRow.
    key_index: the key frame's index in the video.
    current_indices: the current frames' indices, ascending (lists, as Arrow gives them back).
    offsets: d = current - key for each current frame, aligned with current_indices.
    """

    clip_id: str
    video_id: str
    uri: str
    key_index: int
    current_indices: list[int]
    offsets: list[int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "current_indices", _int_list(self.current_indices))
        object.__setattr__(self, "offsets", _int_list(self.offsets))

    @classmethod
    def of(cls, ids: Union["ClipIds", Mapping[str, Any]]) -> "ClipIds":
        """ClipIds as they are, or those of a row dict; a name the dict lacks is None (lists: empty)."""
        if isinstance(ids, ClipIds):
            return ids
        return cls(**{name: ids.get(name) for name in _field_names(cls)})


@dataclass(frozen=True)
class ClipFrames:
    """The decoded frames of one clip, resized; ``clip`` says which frames they are (what
    ``semidff.video.decode`` yields and :meth:`ClipRow.frames` gives back)."""

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

    def __post_init__(self) -> None:
        for name in ("reason", "error"):
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, clean_text(getattr(self, name)))

    @property
    def clip_id(self) -> str:
        return self.clip.clip_id


ClipResult = Union[ClipFrames, ClipFailure]

# A clip's identity columns (ClipIds), first in every clip-level schema.
_CLIP_ID_COLUMNS = [
    ("clip_id", pa.string()),
    ("video_id", pa.string()),
    ("uri", pa.string()),
    ("key_index", pa.int64()),
    ("current_indices", pa.list_(pa.int64())),
    ("offsets", pa.list_(pa.int64())),
]

CLIP_SCHEMA = pa.schema(
    _CLIP_ID_COLUMNS + [
        ("frames_decoded", pa.int64()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("scale", pa.float64()),
        ("key_frame", pa.binary()),
        ("current_frames", pa.binary()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("error", pa.string()),
    ]
)


@dataclass(frozen=True)
class ClipRow(_ArrowRow):
    """One planned clip of one video, decoded and resized: a row of the clip stage's dataset.

    clip_id, video_id, uri, key_index, current_indices, offsets: see :class:`ClipIds` (m current
        frames; a current frame repeats when fewer offsets fit than were asked for).
    frames_decoded: frames this clip adds to its video's decoding (``ClipSpec.frames_decoded``; 0
        when unknown or failed).
    height, width: H, W of the resized frames, pixels (0 when failed).
    scale: resized / original pixels (0.0 when failed).
    key_frame: (H, W, 3) uint8 RGB, C order, as raw bytes (b"" when failed).
    current_frames: (m, H, W, 3) uint8 RGB, C order, in current_indices order (b"" when failed).
    status: "ok" or "error"; reason: short category ("" when ok), e.g. "decode failed", "too
        short", or a probe REASON_* for a video that cannot be opened; error: the message naming
        the file ("" when ok).

    A video that cannot be opened or planned, or has no clip (too short), is one failed row with
    key_index WHOLE_VIDEO (-1) and no frame indices. Frames are plain binary columns (a size per
    video, no tensor extension type): :meth:`frames` reads them back without a copy.
    """

    SCHEMA = CLIP_SCHEMA  # a class attribute (not a field)

    clip_id: str
    video_id: str
    uri: str
    key_index: int
    current_indices: list[int]
    offsets: list[int]
    frames_decoded: int
    height: int
    width: int
    scale: float
    key_frame: bytes
    current_frames: bytes
    status: str
    reason: str
    error: str

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def ids(self) -> ClipIds:
        return ClipIds(self.clip_id, self.video_id, self.uri, int(self.key_index), self.current_indices, self.offsets)

    @property
    def spec(self) -> ClipSpec:
        """The clip as planned (``semidff.video.clip_plan.ClipSpec``)."""
        return ClipSpec(
            self.clip_id,
            self.video_id,
            self.uri,
            int(self.key_index),
            tuple(int(i) for i in self.current_indices),
            tuple(int(d) for d in self.offsets),
            int(self.frames_decoded),
        )

    @classmethod
    def from_result(cls, result: ClipResult) -> "ClipRow":
        """The row of a decoded (ClipFrames) or failed (ClipFailure) clip."""
        clip = result.clip
        ids = dict(
            clip_id=clip.clip_id,
            video_id=clip.video_id,
            uri=clip.uri,
            key_index=clip.key_index,
            current_indices=list(clip.current_indices),
            offsets=list(clip.offsets),
            frames_decoded=clip.frames_decoded if clip.frames_decoded is not None else 0,
        )
        if isinstance(result, ClipFrames):
            height, width = result.key_frame.shape[:2]
            return cls(
                **ids,
                height=height,
                width=width,
                scale=result.scale,
                key_frame=result.key_frame.tobytes(),
                current_frames=result.current_frames.tobytes(),
                status=STATUS_OK,
                reason="",
                error="",
            )
        return cls(**ids, height=0, width=0, scale=0.0, key_frame=b"", current_frames=b"", status=STATUS_ERROR, reason=result.reason, error=result.error)

    @classmethod
    def whole_video(cls, video_id: str, uri: str, reason: str, error: str) -> "ClipRow":
        """The failed row that stands for a whole video (key_index WHOLE_VIDEO)."""
        spec = ClipSpec(f"{video_id}:{WHOLE_VIDEO}", video_id, uri, WHOLE_VIDEO, (), ())
        return cls.from_result(ClipFailure(spec, reason, error))

    def frames(self) -> ClipFrames:
        """The ClipFrames of an "ok" row: numpy views of the row's bytes, no copy (read-only).
        Raises ValueError for a failed row. The one decoder of clip-row bytes to frames."""
        if self.status != STATUS_OK:
            raise ValueError(f"clip {self.clip_id} has status {self.status!r} ({self.reason}): it has no frames")
        spec = self.spec
        shape = (int(self.height), int(self.width), 3)
        key_frame = np.frombuffer(self.key_frame, np.uint8).reshape(shape)
        current_frames = np.frombuffer(self.current_frames, np.uint8).reshape((len(spec.current_indices), *shape))
        return ClipFrames(spec, key_frame, current_frames, float(self.scale))


PREPARED_SCHEMA = pa.schema(list(CLIP_SCHEMA) + [("key_jpeg", pa.binary()), ("current_jpegs", pa.list_(pa.binary()))])


@dataclass(frozen=True)
class PreparedClipRow(ClipRow):
    """A ClipRow after the teacher cache's JPEG round trip (``pipelines.teacher_cache.prepare_clips``):
    what the teacher actors and the on-the-fly trainer read.

    key_frame, current_frames: the frames *decoded from the JPEGs* (same shapes as in ClipRow), so
        the teacher sees exactly the pixels the cache stores.
    key_jpeg: the key frame as JPEG (b"" when failed).
    current_jpegs: one JPEG per current frame, in current_indices order ([] when failed).
    """

    SCHEMA = PREPARED_SCHEMA  # a class attribute (not a field)

    key_jpeg: bytes
    current_jpegs: list[bytes]


# ---------------------------------------------------------------------------------------------
# The teacher cache (semidff cache)

_blob_list = pa.list_(pa.binary())
CACHE_SCHEMA = pa.schema(
    _CLIP_ID_COLUMNS + [
        ("status", pa.string()),
        ("reason", pa.string()),
        ("error", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("scale", pa.float64()),
        ("feature_height", pa.int32()),
        ("feature_width", pa.int32()),
        ("key_from_current", pa.int32()),
        ("key_jpeg", pa.binary()),
        ("current_jpegs", _blob_list),
        ("key_features", pa.binary()),
        ("key_feature_scales", pa.binary()),
        ("current_features", _blob_list),
        ("current_feature_scales", _blob_list),
        ("rpn_cls_logits", _blob_list),
        ("rpn_deltas", _blob_list),
        ("num_rois", pa.list_(pa.int32())),
        ("rois", _blob_list),
        ("cls_logits", _blob_list),
        ("box_deltas", _blob_list),
    ]
)
BLOB_COLUMNS = tuple(f.name for f in CACHE_SCHEMA if f.type in (pa.binary(), _blob_list))


@dataclass(frozen=True)
class CacheRow(_ArrowRow):
    """One clip and its frozen teacher's outputs: a row of a teacher cache file (one file holds
    many; the file's metadata holds its ``semidff.cache.info.CacheInfo``, which says C, A, K and
    the precisions). Written by ``semidff.cache.format.pack_clip_row`` / :meth:`failed`.

    clip_id (unique in a cache), video_id, uri, key_index, current_indices, offsets: see
        :class:`ClipIds`; the lists below have one entry per current frame j, aligned with them.
    status "ok" | "error"; reason: short category ("" when ok); error: message ("" when ok).
    height, width: H, W of the stored frames, pixels (= network input); scale: stored frame
        pixels / original video pixels.
    feature_height, feature_width: h, w of the feature maps.
    key_from_current: j of the current frame that is the key frame itself (offset 0), else -1;
        then key_features is empty and that frame's features are the key's.

    Tensors are blobs: little-endian, C order, of known shapes (``semidff.cache.format.decode_blob``):

    | field | blob of | dtype |
    |---|---|---|
    | key_jpeg / current_jpegs[j] | (H, W, 3) RGB frame at network-input size | JPEG |
    | key_features / current_features[j] | (C, h, w) features | fp32, fp16 or int8 |
    | key_feature_scales / current_feature_scales[j] | (C,) per-channel int8 scales (empty otherwise) | fp32 |
    | rpn_cls_logits[j] / rpn_deltas[j] | (2A, h, w) / (4A, h, w) | soft-target precision |
    | num_rois[j] | R, the RoIs of current frame j | int32 (a plain list) |
    | rois[j] | (R, 4) x1, y1, x2, y2 in network-input pixels | fp32 always |
    | cls_logits[j] / box_deltas[j] | (R, K + 1) / (R, 8) | soft-target precision |

    The key frame's RPN and R-FCN outputs are not stored (the student never needs them). A failed
    row has zeros for the sizes, -1 for key_from_current and empty blobs.
    """

    SCHEMA = CACHE_SCHEMA  # a class attribute (not a field)

    clip_id: str
    video_id: str
    uri: str
    key_index: int
    current_indices: list[int]
    offsets: list[int]
    status: str
    reason: str
    error: str
    height: int
    width: int
    scale: float
    feature_height: int
    feature_width: int
    key_from_current: int
    key_jpeg: bytes
    current_jpegs: list[bytes]
    key_features: bytes
    key_feature_scales: bytes
    current_features: list[bytes]
    current_feature_scales: list[bytes]
    rpn_cls_logits: list[bytes]
    rpn_deltas: list[bytes]
    num_rois: list[int]
    rois: list[bytes]
    cls_logits: list[bytes]
    box_deltas: list[bytes]

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def ids(self) -> ClipIds:
        return ClipIds(self.clip_id, self.video_id, self.uri, self.key_index, self.current_indices, self.offsets)

    @classmethod
    def failed(cls, ids: ClipIds, reason: str, error: str) -> "CacheRow":
        """The row of a clip that has no teacher outputs (decode or teacher failure)."""
        blobs = {name: [] if CACHE_SCHEMA.field(name).type == _blob_list else b"" for name in BLOB_COLUMNS}
        return cls(
            clip_id=ids.clip_id,
            video_id=ids.video_id,
            uri=ids.uri,
            key_index=ids.key_index,
            current_indices=list(ids.current_indices),
            offsets=list(ids.offsets),
            status=STATUS_ERROR,
            reason=reason,
            error=error,
            height=0,
            width=0,
            scale=0.0,
            feature_height=0,
            feature_width=0,
            key_from_current=-1,
            num_rois=[],
            **blobs,
        )


CLIP_ID_FIELDS: Sequence[str] = _field_names(ClipIds)  # a clip's identity, the same in ClipRow and CacheRow


class NoUsableVideoError(ValueError):
    """A manifest lists no video a stage could read; the message says why, by reason."""


def usable_videos(rows: Iterable[ManifestRow], manifest: str) -> list[ManifestRow]:
    """The rows of ``manifest`` whose video is usable (status ok); NoUsableVideoError naming how
    many failed and why when there is none, so that a stage never succeeds on nothing."""
    rows = list(rows)
    usable = [row for row in rows if row.status == STATUS_OK]
    if usable:
        return usable
    if not rows:
        raise NoUsableVideoError(f"{manifest}: the manifest lists no video; build it from your videos (semidff manifest VIDEOS -o {manifest})")
    reasons: dict[str, int] = {}
    for row in rows:
        reasons[row.reason or row.status] = reasons.get(row.reason or row.status, 0) + 1
    listed = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items(), key=lambda item: -item[1]))
    raise NoUsableVideoError(
        f"{manifest}: none of the manifest's {len(rows)} videos is usable ({listed}); each row's error column says what "
        f"is wrong: fix or replace the files and run semidff manifest again (semidff manifest ... -o {manifest} --retry-failed)"
    )
