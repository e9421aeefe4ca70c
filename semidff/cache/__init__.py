"""The teacher cache's format, without Ray: schema, precisions, JPEG frames, metadata, split.

    from semidff.cache import CacheExpectation, read_cache_info, is_validation_video

The Ray stages that write and read a cache are ``pipelines/teacher_cache.py`` and
``pipelines/cache_dataset.py``; ``semidff cache inspect DIR`` prints :func:`inspect_cache`.
"""
from semidff.cache.files import CacheReport, inspect_cache, list_cache_files, written_clip_ids
from semidff.cache.format import (
    CACHE_SCHEMA,
    BlobLayout,
    TeacherClip,
    current_features_of,
    failed_clip_row,
    image_targets_of,
    key_features_of,
    pack_clip_row,
    soft_target_of,
    soft_targets_of,
)
from semidff.cache.info import (
    INFO_FILE,
    SCHEMA_VERSION,
    CacheError,
    CacheExpectation,
    CacheFileError,
    CacheInfo,
    CacheMismatchError,
    read_cache_info,
    soft_target_precision,
    write_cache_info,
)
from semidff.cache.jpeg import decode_jpeg, encode_jpeg, jpeg_round_trip
from semidff.cache.quantize import PRECISIONS, dequantize_features, int8_error_bound, quantize_features
from semidff.cache.split import is_validation_video

__all__ = [
    "CACHE_SCHEMA",
    "INFO_FILE",
    "PRECISIONS",
    "SCHEMA_VERSION",
    "BlobLayout",
    "CacheError",
    "CacheExpectation",
    "CacheFileError",
    "CacheInfo",
    "CacheMismatchError",
    "CacheReport",
    "TeacherClip",
    "current_features_of",
    "decode_jpeg",
    "dequantize_features",
    "encode_jpeg",
    "failed_clip_row",
    "image_targets_of",
    "inspect_cache",
    "int8_error_bound",
    "is_validation_video",
    "jpeg_round_trip",
    "key_features_of",
    "list_cache_files",
    "pack_clip_row",
    "quantize_features",
    "read_cache_info",
    "soft_target_of",
    "soft_target_precision",
    "soft_targets_of",
    "write_cache_info",
    "written_clip_ids",
]
