"""Atomic writes: the new content or the old one, never half of one, and no temporary left behind."""
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from semidff.atomic import (
    TEMPORARY_PREFIX,
    atomic_path,
    write_bytes_atomically,
    write_parquet_atomically,
    write_text_atomically,
    write_to_filesystem_atomically,
)


def test_a_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "run" / "config.yaml"  # the folder is made
    write_text_atomically(target, "a: 1\n")
    write_text_atomically(target, "a: 2\n")
    write_bytes_atomically(tmp_path / "run" / "blob.bin", b"\x00\x01")
    assert target.read_text() == "a: 2\n" and (tmp_path / "run" / "blob.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["blob.bin", "config.yaml"]


def test_a_writer_that_fails_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as temporary:
            temporary.write_text("half of the new")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_pyarrow_filesystem_writes_go_through_a_skipped_temporary_name(tmp_path):
    filesystem = pafs.LocalFileSystem()
    write_to_filesystem_atomically(filesystem, f"{tmp_path}/cache_info.json", b'{"a": 1}')
    table = pa.table({"x": [1, 2, 3]})
    write_parquet_atomically(table, filesystem, f"{tmp_path}/part-1.parquet", compression="zstd")
    assert (tmp_path / "cache_info.json").read_bytes() == b'{"a": 1}'
    assert pq.read_table(tmp_path / "part-1.parquet").equals(table)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache_info.json", "part-1.parquet"]
    assert TEMPORARY_PREFIX.startswith("_")  # Parquet dataset readers skip names starting with "_"
