"""The files of a teacher cache: listing, checking, reading ids, and the ``inspect`` report.

A cache directory holds ``cache_info.json`` and ``part-*.parquet`` files (one per group of clips,
each written under a ``_tmp-`` name and renamed when complete). Files are checked when opened: a
truncated or foreign file raises CacheFileError naming it, never is skipped.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from semidff.atomic import TEMPORARY_PREFIX  # the temporary names of semidff.atomic.write_parquet_atomically
from semidff.cache.format import CACHE_SCHEMA, FILE_PREFIX, FILE_SUFFIX, STATUS_OK
from semidff.cache.info import INFO_FILE, PARQUET_METADATA_KEY, CacheError, CacheFileError, CacheInfo, cache_location, read_cache_info

FIX_HINT = "delete it and rerun semidff cache on this directory: its clips are computed again"


def _names(filesystem: pafs.FileSystem, base: str) -> list[pafs.FileInfo]:
    entries = filesystem.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    return [e for e in entries if e.type == pafs.FileType.File]


def list_cache_files(cache_dir: str) -> list[str]:
    """Paths (in the cache's filesystem) of the complete ``part-*.parquet`` files, sorted."""
    filesystem, base = cache_location(cache_dir)
    return sorted(e.path for e in _names(filesystem, base) if e.base_name.startswith(FILE_PREFIX) and e.base_name.endswith(FILE_SUFFIX))


def temporary_files(cache_dir: str) -> list[str]:
    """Files a killed writer left under a temporary name (never read; safe to delete when no run
    is writing to the cache)."""
    filesystem, base = cache_location(cache_dir)
    return sorted(e.path for e in _names(filesystem, base) if e.base_name.startswith(TEMPORARY_PREFIX))


def open_cache_file(filesystem: pafs.FileSystem, path: str) -> pq.ParquetFile:
    """The ParquetFile at ``path`` (footer read); CacheFileError naming it if it cannot be read."""
    try:
        return pq.ParquetFile(filesystem.open_input_file(path))
    except (OSError, pa.ArrowException) as exc:
        raise CacheFileError(f"{path}: corrupt or truncated Parquet file ({exc}); {FIX_HINT}") from None


def file_cache_info(parquet: pq.ParquetFile, path: str) -> CacheInfo:
    """The CacheInfo stored in a cache file's metadata (CacheFileError when absent or malformed)."""
    metadata = parquet.schema_arrow.metadata or {}
    if PARQUET_METADATA_KEY not in metadata:
        raise CacheFileError(f"{path}: no {PARQUET_METADATA_KEY.decode()} metadata, so not a teacher cache file; move it out of the cache directory")
    try:
        data = json.loads(metadata[PARQUET_METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise CacheFileError(f"{path}: its cache metadata is not valid JSON ({exc}); {FIX_HINT}") from None
    return CacheInfo.from_dict(data, path)


def check_file_matches(parquet: pq.ParquetFile, path: str, info: CacheInfo) -> None:
    """A file must describe the same cache as the directory's record (same teacher, format, ...)."""
    differences = file_cache_info(parquet, path).differences(info)
    if differences:
        listed = "; ".join(f"{name}: file {theirs!r}, cache {mine!r}" for name, theirs, mine in differences[:5])
        raise CacheFileError(f"{path}: written for another cache ({listed}); move it out of the cache directory")
    missing = [name for name in CACHE_SCHEMA.names if name not in parquet.schema_arrow.names]
    if missing:
        raise CacheFileError(f"{path}: lacks the columns {', '.join(missing)}; {FIX_HINT}")


def read_columns(filesystem: pafs.FileSystem, path: str, columns: Sequence[str], row_groups: Optional[Sequence[int]] = None) -> pa.Table:
    """Some columns of a cache file (all row groups, or the given ones); CacheFileError naming the
    file when its pages cannot be read (damage past the footer)."""
    try:
        parquet = open_cache_file(filesystem, path)
        if row_groups is None:
            return parquet.read(columns=list(columns))
        return parquet.read_row_groups(list(row_groups), columns=list(columns))
    except CacheFileError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise CacheFileError(f"{path}: corrupt Parquet file, its data cannot be read ({exc}); {FIX_HINT}") from None


def written_clip_ids(cache_dir: str) -> set[str]:
    """clip_id of every row already in the cache (ok or failed): what a rerun skips."""
    filesystem, _ = cache_location(cache_dir)
    done: set[str] = set()
    for path in list_cache_files(cache_dir):
        done.update(read_columns(filesystem, path, ["clip_id"]).column("clip_id").to_pylist())
    return done


# ---------------------------------------------------------------------------------------------
# semidff cache inspect


@dataclass
class CacheReport:
    """What ``semidff cache inspect`` prints."""

    cache_dir: str
    info: Optional[CacheInfo]
    files: int = 0
    clips_ok: int = 0
    clips_failed: int = 0
    pairs: int = 0
    videos: int = 0
    offsets: Counter = field(default_factory=Counter)  # d -> pairs
    failures: Counter = field(default_factory=Counter)  # reason -> clips
    examples: dict[str, str] = field(default_factory=dict)  # reason -> one message
    column_bytes: dict[str, int] = field(default_factory=dict)  # compressed bytes on disk per column
    total_bytes: int = 0  # file sizes
    corrupt_files: list[str] = field(default_factory=list)  # "path: message"
    duplicate_clip_ids: list[str] = field(default_factory=list)
    temporary_files: list[str] = field(default_factory=list)
    record_error: str = ""  # why cache_info.json could not be read (info is None then)

    @property
    def healthy(self) -> bool:
        return self.info is not None and not self.corrupt_files and not self.duplicate_clip_ids

    def bytes_per_clip(self) -> dict[str, float]:
        """Compressed bytes per ok clip of each column (failed rows hold no blobs)."""
        return {name: size / max(self.clips_ok, 1) for name, size in self.column_bytes.items()}

    def to_dict(self) -> dict[str, Any]:
        return dict(
            cache_dir=self.cache_dir,
            files=self.files,
            clips_ok=self.clips_ok,
            clips_failed=self.clips_failed,
            pairs=self.pairs,
            videos=self.videos,
            pairs_by_offset={str(k): v for k, v in sorted(self.offsets.items())},
            failures=dict(self.failures.most_common()),
            bytes_total=self.total_bytes,
            bytes_per_clip=self.bytes_per_clip(),
            corrupt_files=self.corrupt_files,
            record_error=self.record_error,
            duplicate_clip_ids=self.duplicate_clip_ids,
            temporary_files=self.temporary_files,
            info=self.info.to_dict() if self.info else None,
        )

    def format(self) -> str:
        lines = [f"teacher cache: {self.cache_dir}"]
        if self.info is None:
            lines.append(f"  NO RECORD: {self.record_error or f'no readable {INFO_FILE}'}")
        else:
            info = self.info
            lines += [
                f"  schema version {info.schema_version}, written by semidff {info.code_version} (created {info.created})",
                f"  teacher sha256 {info.teacher_sha256} ({info.teacher_path or 'path not recorded'})",
                f"  features {info.feature_precision} (C={info.feature_channels}), soft targets {info.soft_target_precision}, RoIs fp32; "
                f"A={info.num_anchors} anchors, K={info.num_classes} classes",
                f"  frames JPEG quality {info.jpeg_quality} ({info.jpeg_subsampling}) at short side {info.preprocess['short_side']}, "
                f"long side <= {info.preprocess['max_long_side']}; {info.compression} level {info.compression_level}",
                "  clips: " + ", ".join(f"{k}={v}" for k, v in info.clips.items()),
            ]
        mib = self.total_bytes / 2**20
        lines.append(
            f"  {self.files} files, {mib:.1f} MiB: {self.clips_ok} clips ok, {self.clips_failed} failed, {self.pairs} (key, current) pairs, {self.videos} videos"
        )
        if self.offsets:
            lines.append("  pairs by offset d: " + ", ".join(f"{d}: {n}" for d, n in sorted(self.offsets.items())))
        if self.clips_ok:
            per_clip = self.bytes_per_clip()
            total = sum(per_clip.values())
            lines.append(f"  bytes per ok clip: {total:,.0f} in all")
            lines += [f"    {name:<24} {size:>12,.0f}  {100 * size / max(total, 1):5.1f} %" for name, size in sorted(per_clip.items(), key=lambda kv: -kv[1])]
        if self.failures:
            lines.append("  failed clips, by reason:")
            lines += [f"    {count:>7}  {reason}  (e.g. {self.examples[reason]})" for reason, count in self.failures.most_common()]
        for path in self.corrupt_files:
            lines.append(f"  CORRUPT: {path}")
        if self.duplicate_clip_ids:
            lines.append(f"  DUPLICATE clip ids ({len(self.duplicate_clip_ids)}): {', '.join(self.duplicate_clip_ids[:5])}")
        if self.temporary_files:
            lines.append(f"  {len(self.temporary_files)} temporary files of an interrupted write (ignored; the next run removes them)")
        return "\n".join(lines)


def inspect_cache(cache_dir: str) -> CacheReport:
    """Count and check everything in a cache; corrupt files are listed by name, not skipped silently."""
    filesystem, _ = cache_location(cache_dir)
    try:
        info: Optional[CacheInfo] = read_cache_info(cache_dir)
    except CacheFileError as exc:
        info, record_error = None, str(exc)
    else:
        record_error = ""
    report = CacheReport(cache_dir=cache_dir, info=info, temporary_files=temporary_files(cache_dir), record_error=record_error)
    seen: Counter = Counter()
    videos: set[str] = set()
    column_bytes: dict[str, int] = defaultdict(int)
    for path in list_cache_files(cache_dir):
        report.files += 1
        try:
            parquet = open_cache_file(filesystem, path)
            if info is not None:
                check_file_matches(parquet, path, info)
            table = read_columns(filesystem, path, ["clip_id", "video_id", "status", "reason", "error", "offsets"])
        except CacheFileError as exc:
            report.corrupt_files.append(str(exc))
            continue
        report.total_bytes += filesystem.get_file_info(path).size
        metadata = parquet.metadata
        for group in range(metadata.num_row_groups):
            row_group = metadata.row_group(group)
            for column in range(row_group.num_columns):
                chunk = row_group.column(column)
                column_bytes[chunk.path_in_schema.split(".")[0]] += chunk.total_compressed_size
        for row in table.to_pylist():
            seen[row["clip_id"]] += 1
            videos.add(row["video_id"])
            if row["status"] == STATUS_OK:
                report.clips_ok += 1
                report.pairs += len(row["offsets"])
                report.offsets.update(int(d) for d in row["offsets"])
            else:
                report.clips_failed += 1
                report.failures[row["reason"]] += 1
                report.examples.setdefault(row["reason"], row["error"])
    report.videos = len(videos)
    report.column_bytes = dict(column_bytes)
    report.duplicate_clip_ids = sorted(clip for clip, count in seen.items() if count > 1)
    return report


def cache_digest(cache_dir: str) -> str:
    """SHA-256 of a cache's content record and of its files' names and sizes: the cache's identity
    for MLflow and for run names.

    Cache files are written once (temporary name, then rename) and never changed, so the list
    identifies the pairs; a cache that grew (a rerun of semidff cache) gets a new digest. Raises
    CacheError when the cache holds no file yet.
    """
    filesystem, _ = cache_location(cache_dir)
    digest = hashlib.sha256(json.dumps(read_cache_info(cache_dir).identity(), sort_keys=True).encode("utf-8"))
    files = list_cache_files(cache_dir)
    if not files:
        raise CacheError(f"{cache_dir}: the teacher cache holds no clip files yet (run semidff cache to fill it)")
    for info in sorted(filesystem.get_file_info(files), key=lambda item: item.base_name):
        digest.update(f"{info.base_name}:{info.size}\n".encode("utf-8"))
    return digest.hexdigest()
