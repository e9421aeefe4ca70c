"""Writes a reader can always trust: every file semidff writes goes through a temporary name and a rename.

    with atomic_path(out / "report.json") as temporary:     # any writer that takes a path
        temporary.write_text(json.dumps(report))
    write_text_atomically(out / "config.yaml", cfg.to_yaml())
    write_parquet_atomically(table, filesystem, "bucket/cache/part-00001.parquet")   # local or object store

A process killed mid-write leaves the old file or the new one, never half of one; the temporary
name (``.<name>.<pid>.<random>.tmp`` locally, ``_tmp-<random>-<name>`` on a pyarrow filesystem,
which Parquet dataset readers skip) lives in the same folder, so the rename never crosses a device.
"""
from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from pathlib import Path
from typing import Iterator

TEMPORARY_PREFIX = "_tmp-"  # temporary names on pyarrow filesystems (cache files among them)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it replaces
    ``path`` (creating the parent folder first), otherwise it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding=encoding)


def write_bytes_atomically(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_to_filesystem_atomically(filesystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` on a pyarrow ``filesystem`` (local, S3, GCS) through a temporary
    name in the same folder, then move it into place (small records such as ``cache_info.json``)."""
    directory, name = posixpath.split(path)
    temporary = f"{directory}/{TEMPORARY_PREFIX}{uuid.uuid4().hex[:12]}-{name}"
    with filesystem.open_output_stream(temporary) as stream:
        stream.write(data)
    filesystem.move(temporary, path)


def write_parquet_atomically(table, filesystem, path: str, **write_options) -> None:
    """Write a pyarrow ``table`` to ``path`` on a pyarrow ``filesystem`` (local, S3, GCS) through a
    temporary name in the same folder, then move it into place.

    On object stores the final object appears whole on upload. write_options: passed to
    ``pyarrow.parquet.write_table`` (compression, row_group_size, ...).
    """
    import pyarrow.parquet as pq

    directory, name = posixpath.split(path)
    temporary = f"{directory}/{TEMPORARY_PREFIX}{uuid.uuid4().hex[:12]}-{name}"
    pq.write_table(table, temporary, filesystem=filesystem, **write_options)
    filesystem.move(temporary, path)
