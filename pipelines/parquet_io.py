"""Parquet writes that a reader can always trust, shared by every pipeline stage."""
from __future__ import annotations

import posixpath
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def write_parquet_atomically(table: pa.Table, filesystem: pafs.FileSystem, path: str, **write_options) -> None:
    """Write ``table`` to ``path`` through a temporary name in the same directory, then rename.

    A reader never sees a half-written file (on object stores the final object appears whole on
    upload). The temporary name starts with "_", which Parquet dataset readers skip.
    write_options: passed to ``pyarrow.parquet.write_table`` (compression, row_group_size, ...).
    """
    directory, name = posixpath.split(path)
    temporary = f"{directory}/_tmp-{uuid.uuid4().hex[:12]}-{name}"
    pq.write_table(table, temporary, filesystem=filesystem, **write_options)
    filesystem.move(temporary, path)
