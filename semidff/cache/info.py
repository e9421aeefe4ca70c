"""What a teacher cache holds, written next to its data (``cache_info.json``) and into every
Parquet file's metadata, and what a training run expects of it.

    info = read_cache_info("runs/cache")                        # CacheInfo
    expected = CacheExpectation.for_training(cfg, teacher_sha256, offset_range=(1, 9))
    expected.check(info, "runs/cache")                          # CacheMismatchError naming each field

A cache is only valid for the teacher whose outputs it stores (its checkpoint's SHA-256), the
frame size it was computed at (``preprocess``), the offsets it sampled, and the format version.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import posixpath
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pyarrow.fs as pafs

import semidff
from semidff.atomic import write_to_filesystem_atomically
from semidff.cache.jpeg import JPEG_SUBSAMPLING
from semidff.cache.quantize import check_precision

CACHE_FORMAT = "semidff-teacher-cache"
SCHEMA_VERSION = 1
INFO_FILE = "cache_info.json"
PARQUET_METADATA_KEY = b"semidff.cache_info"
CLIP_SAMPLING_KEYS = ("key_frames_per_second", "key_frames_per_video", "currents_per_key", "offset_range", "seed", "align_to_codec_keyframes")
# Fields that describe one run rather than the cache's content; a resumed run may differ in them.
RUN_FIELDS = frozenset({"code_version", "created", "teacher_path", "compression_level"})


class CacheError(ValueError):
    """A teacher cache cannot be used; the message names the file or field and what to do."""


class CacheMismatchError(CacheError):
    """The cache was built with other settings than the ones a run expects."""


class CacheFileError(CacheError):
    """A file of the cache is missing, truncated or not a cache file."""


def soft_target_precision(feature_precision: str) -> str:
    """Soft targets (RPN maps, R-FCN logits and deltas) are fp32 in an fp32 cache (a lossless
    reference), fp16 otherwise: ~5 % of a frame's bytes in fp16, and fp16 rounding (2**-11
    relative) is far below what distillation can resolve. RoIs are always fp32."""
    return "fp32" if check_precision(feature_precision) == "fp32" else "fp16"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """semidff's version, plus ``git describe`` of the source tree when it is a git checkout."""
    version = semidff.__version__
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=Path(semidff.__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+git.{described.stdout.strip()}" if described.returncode == 0 and described.stdout.strip() else version


@dataclass(frozen=True)
class CacheInfo:
    """The self-description of a teacher cache.

    teacher_sha256: the teacher checkpoint's file checksum; teacher_model: its ``model`` config.
    feature_channels C, num_anchors A, num_classes K: the stored shapes are features (C, h, w),
    RPN logits (2A, h, w), RPN deltas (4A, h, w), R-FCN logits (R, K + 1), box deltas (R, 8).
    feature_precision: fp32 | fp16 | int8 (per-channel scales); soft_target_precision: fp32 | fp16.
    preprocess: {short_side, max_long_side} of the stored frames; clips: the clip sampling settings.
    """

    teacher_sha256: str
    teacher_model: dict[str, Any]
    feature_channels: int
    num_anchors: int
    num_classes: int
    feature_precision: str
    soft_target_precision: str
    jpeg_quality: int
    preprocess: dict[str, int]
    clips: dict[str, Any]
    jpeg_subsampling: str = JPEG_SUBSAMPLING
    compression: str = "zstd"
    compression_level: int = 3
    schema_version: int = SCHEMA_VERSION
    format: str = CACHE_FORMAT
    code_version: str = field(default_factory=code_version)
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    teacher_path: str = ""

    @classmethod
    def create(cls, cfg, checkpoint, teacher_path: str = "") -> "CacheInfo":
        """The record of a cache built with ``cfg`` (cache, clips, preprocess sections) from the
        teacher ``checkpoint`` (a semidff.checkpoint.ModelCheckpoint)."""
        model = checkpoint.config.model
        clips = cfg.clips.model_dump(mode="json")
        return cls(
            teacher_sha256=checkpoint.sha256,
            teacher_model=model.model_dump(mode="json"),
            feature_channels=model.feature_channels,
            num_anchors=len(model.rpn.anchor_ratios) * len(model.rpn.anchor_scales),
            num_classes=model.num_classes,
            feature_precision=cfg.cache.feature_precision,
            soft_target_precision=soft_target_precision(cfg.cache.feature_precision),
            jpeg_quality=cfg.cache.jpeg_quality,
            compression_level=cfg.cache.compression_level,
            preprocess={"short_side": cfg.preprocess.short_side, "max_long_side": cfg.preprocess.max_long_side},
            clips={key: clips[key] for key in CLIP_SAMPLING_KEYS},
            teacher_path=str(teacher_path),
        )

    @property
    def offset_range(self) -> tuple[int, int]:
        low, high = self.clips["offset_range"]
        return int(low), int(high)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples → lists, as read back

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, source: str) -> "CacheInfo":
        """Parse a record; ``source`` (a file name) goes into the error of a malformed one."""
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise CacheFileError(f"{source}: not a semidff teacher cache record (format {found!r}, expected {CACHE_FORMAT!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise CacheFileError(
                f"{source}: cache record of schema version {data.get('schema_version')!r} lacks {', '.join(missing)}; "
                f"this semidff reads version {SCHEMA_VERSION} (rebuild the cache with this version)"
            )
        return cls(**{key: value for key, value in data.items() if key in names})

    def identity(self) -> dict[str, Any]:
        """The fields that define the cache's content (all but RUN_FIELDS)."""
        return {key: value for key, value in self.to_dict().items() if key not in RUN_FIELDS}

    def differences(self, other: "CacheInfo") -> list[tuple[str, Any, Any]]:
        """(field, this value, other value) for every content field that differs."""
        mine, theirs = self.identity(), other.identity()
        return [(key, mine.get(key), theirs.get(key)) for key in sorted(set(mine) | set(theirs)) if mine.get(key) != theirs.get(key)]


@dataclass(frozen=True)
class CacheExpectation:
    """What a consumer (the flow trainer, a Tune trial) needs of a cache; None: not checked.

    offset_range: the (lo, hi) offsets the consumer trains on; they must lie inside the range the
    cache sampled (a cache sampled at [0, 9] serves key intervals up to 10, not 20).
    """

    teacher_sha256: Optional[str] = None
    short_side: Optional[int] = None
    max_long_side: Optional[int] = None
    offset_range: Optional[tuple[int, int]] = None
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def for_training(cls, cfg, teacher_sha256: str, offset_range: tuple[int, int]) -> "CacheExpectation":
        """The expectation of a flow training run with ``cfg`` distilling the teacher ``teacher_sha256``."""
        return cls(
            teacher_sha256=teacher_sha256,
            short_side=cfg.preprocess.short_side,
            max_long_side=cfg.preprocess.max_long_side,
            offset_range=(int(offset_range[0]), int(offset_range[1])),
        )

    def mismatches(self, info: CacheInfo) -> list[str]:
        """One line per field where ``info`` does not meet this expectation."""
        found: list[str] = []

        def compare(name: str, cache_value: Any, expected: Any) -> None:
            if expected is not None and cache_value != expected:
                found.append(f"{name}: the cache has {cache_value!r}, expected {expected!r}")

        compare("schema_version", info.schema_version, self.schema_version)
        compare("teacher_sha256", info.teacher_sha256, self.teacher_sha256)
        compare("preprocess.short_side", info.preprocess.get("short_side"), self.short_side)
        compare("preprocess.max_long_side", info.preprocess.get("max_long_side"), self.max_long_side)
        if self.offset_range is not None:
            low, high = info.offset_range
            if not low <= self.offset_range[0] <= self.offset_range[1] <= high:
                found.append(
                    f"clips.offset_range: the cache has offsets [{low}, {high}], expected to cover "
                    f"[{self.offset_range[0]}, {self.offset_range[1]}]"
                )
        return found

    def check(self, info: CacheInfo, cache_dir: str) -> None:
        """Raise CacheMismatchError listing every mismatch, or return."""
        found = self.mismatches(info)
        if found:
            raise CacheMismatchError(
                f"{cache_dir}: the teacher cache does not match this run:\n  "
                + "\n  ".join(found)
                + "\nBuild a cache with this teacher and config (semidff cache MANIFEST_DIR --teacher T.pt -o NEW_DIR -c CFG), "
                "or point the run at a matching cache (semidff cache inspect DIR shows what a cache holds)."
            )


# ---------------------------------------------------------------------------------------------
# Where a cache lives


def cache_location(cache_dir: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, base path) of a local directory or a URI (s3://, gs://, file://)."""
    scheme, sep, _ = cache_dir.partition("://")
    if not sep or scheme.lower() == "file":
        path = pafs.FileSystem.from_uri(cache_dir)[1] if sep else str(Path(cache_dir).expanduser().resolve())
        return pafs.LocalFileSystem(), path.rstrip("/") or "/"
    try:
        filesystem, path = pafs.FileSystem.from_uri(cache_dir)
    except Exception as exc:  # unknown scheme, malformed URI
        raise CacheError(f"{cache_dir}: pyarrow cannot open this location ({exc})") from None
    return filesystem, path.rstrip("/")


def write_cache_info(info: CacheInfo, cache_dir: str) -> None:
    """Write ``cache_info.json`` (temporary name, then rename)."""
    filesystem, base = cache_location(cache_dir)
    filesystem.create_dir(base, recursive=True)
    write_to_filesystem_atomically(filesystem, posixpath.join(base, INFO_FILE), info.to_json().encode("utf-8"))


def read_cache_info(cache_dir: str) -> CacheInfo:
    """The record in ``<cache_dir>/cache_info.json``; CacheFileError when there is none."""
    filesystem, base = cache_location(cache_dir)
    path = posixpath.join(base, INFO_FILE)
    try:
        with filesystem.open_input_stream(path) as stream:
            text = stream.read().decode("utf-8")
    except FileNotFoundError:
        raise CacheFileError(
            f"{cache_dir}: no {INFO_FILE} there, so it is not a teacher cache (build one with semidff cache MANIFEST_DIR --teacher T.pt -o {cache_dir})"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CacheFileError(f"{path}: not valid JSON ({exc}); the cache's record is damaged") from None
    return CacheInfo.from_dict(data, path)
