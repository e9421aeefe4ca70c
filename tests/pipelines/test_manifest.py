"""The manifest stage: inputs (directory, glob, list file, file:// URI), every bad input recorded
as a row on a local Ray, no valid video lost, reruns and crashed runs probe only what is missing."""
import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.video_fixtures import encoder_available, truncate_file, write_audio_only, write_video  # PyAV before decord

import ray
from pipelines import manifest as manifest_module
from pipelines.manifest import (
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
    PARTS_DIR,
    ManifestError,
    build_manifest,
    list_video_uris,
    read_manifest_rows,
)
from semidff.video.probe import VideoInfo, video_id_for

HAS_VP9 = encoder_available("libvpx-vp9")

# file -> (status, reason, num_frames) that the manifest must record
EXPECTED = {
    "good/h264.mp4": ("ok", "", 20),
    "good/mpeg4.avi": ("ok", "", 20),
    "good/nested/deep/h264.mkv": ("ok", "", 20),
    "good/odd_97x61.mp4": ("ok", "", 8),
    "good/three_frames.mp4": ("ok", "", 3),
    "good/vfr.mp4": ("ok", "", 6),
    "bad/zero.mp4": ("error", "zero-byte file", None),
    "bad/text.mp4": ("error", "cannot open", None),
    "bad/audio_only.mp4": ("error", "no video stream", None),
    "bad/truncated.mp4": ("error", "truncated", None),
    "bad/truncated.mkv": ("error", "truncated", None),
}
if HAS_VP9:
    EXPECTED["good/vp9.webm"] = ("ok", "", 20)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for sub in ("good/nested/deep", "bad"):
        (root / sub).mkdir(parents=True)
    write_video(root / "good/h264.mp4", 20, 64, 48, gop=10)
    write_video(root / "good/mpeg4.avi", 20, 64, 48, codec="mpeg4", gop=10)
    write_video(root / "good/nested/deep/h264.mkv", 20, 64, 48, gop=10)
    write_video(root / "good/odd_97x61.mp4", 8, 97, 61)
    write_video(root / "good/three_frames.mp4", 3, 64, 48)
    write_video(root / "good/vfr.mp4", 6, 64, 48, timestamps_s=[0, 0.04, 0.3, 0.34, 1.0, 1.04])
    if HAS_VP9:
        write_video(root / "good/vp9.webm", 20, 64, 48, codec="libvpx-vp9", gop=10)
    (root / "bad/zero.mp4").write_bytes(b"")
    (root / "bad/text.mp4").write_text("not a video\n" * 30)
    write_audio_only(root / "bad/audio_only.mp4")
    truncate_file(write_video(root / "bad/truncated.mp4", 20, 64, 48), 0.5)
    truncate_file(write_video(root / "bad/truncated.mkv", 20, 64, 48), 0.5)
    (root / "notes.md").write_text("not listed: no video extension")
    write_video(root / "good/.hidden.mp4", 5, 64, 48)  # not listed: hidden
    return root


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray for the module; build_manifest uses it and leaves it running."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _manifest_table(output: Path) -> pa.Table:
    return pq.read_table(output / MANIFEST_FILE)


# ---------------------------------------------------------------------------------------------
# Inputs (no Ray)


def test_directory_is_walked_recursively_for_video_extensions(corpus):
    assert list_video_uris([str(corpus)]) == sorted(str(corpus / name) for name in EXPECTED)


def test_globs_match_within_one_level_or_across_with_double_star(corpus):
    assert list_video_uris([f"{corpus}/good/*.mp4"]) == [str(corpus / f"good/{n}") for n in ("h264.mp4", "odd_97x61.mp4", "three_frames.mp4", "vfr.mp4")]
    deep = list_video_uris([f"{corpus}/**/*.mkv"])
    assert deep == [str(corpus / "bad/truncated.mkv"), str(corpus / "good/nested/deep/h264.mkv")]


def test_list_file_entries_are_taken_as_written(corpus, tmp_path):
    listing = tmp_path / "videos.txt"
    listing.write_text(
        "# one video per line\n"
        f"{corpus}/good/h264.mp4\n"
        "\n"
        f"file://{corpus}/good/mpeg4.avi\n"
        "relative/clip.mp4\n"  # relative to the list file; missing: becomes an error row later
    )
    assert list_video_uris([str(listing)]) == sorted(
        [str(corpus / "good/h264.mp4"), str(corpus / "good/mpeg4.avi"), str(tmp_path / "relative/clip.mp4")]
    )


def test_file_uri_and_duplicates_normalise_to_one_uri(corpus, monkeypatch):
    monkeypatch.chdir(corpus)
    same = ["good/h264.mp4", str(corpus / "good/h264.mp4"), f"file://{corpus}/good/h264.mp4", f"{corpus}/good/../good/h264.mp4"]
    assert list_video_uris(same) == [str(corpus / "good/h264.mp4")]
    assert list_video_uris([f"file://{corpus}"]) == list_video_uris([str(corpus)])


def test_inputs_that_match_nothing_are_named_with_the_reason(corpus, tmp_path):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ManifestError) as error:
        list_video_uris([str(corpus), str(tmp_path / "nope"), f"{corpus}/*.xyz", str(tmp_path / "empty_dir"), str(tmp_path / "empty.txt")])
    message = str(error.value)
    assert f"{tmp_path / 'nope'}: no such file" in message
    assert f"{corpus}/*.xyz: the glob matches no file" in message
    assert f"{tmp_path / 'empty_dir'}: the directory holds no file ending in" in message
    assert f"{tmp_path / 'empty.txt'}: the list file names no video" in message
    assert str(corpus) + ":" not in message


def test_symlinked_folders_are_followed_once_and_loops_cut(corpus, tmp_path):
    """A link loop used to list every file again under loop/loop/... until ELOOP (40 duplicates
    each), and a second link into a folder listed its files twice. Linked files keep their own path;
    a broken link is listed, to become a "missing file" row."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    for name in ("root/a.mp4", "root/sub/b.mp4", "outside/c.avi"):
        shutil.copy(corpus / "good/h264.mp4", tmp_path / name)
    (root / "loop").symlink_to(root)
    (root / "alias").symlink_to(root / "sub")
    (root / "ext").symlink_to(outside)
    (root / "link.mp4").symlink_to(root / "sub/b.mp4")
    (root / "broken.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (root / "self.mp4").symlink_to(root / "self.mp4")  # a link to itself: listed (a "missing file" row), not a refused input
    os.mkfifo(root / "fifo.mp4")  # not a file: opening it to probe would block
    expected = [str(root / name) for name in ("a.mp4", "broken.mp4", "ext/c.avi", "link.mp4", "self.mp4", "sub/b.mp4")]
    assert list_video_uris([str(root)]) == expected
    assert list_video_uris([f"{root}/**/*.*"]) == expected
    assert list_video_uris([f"{root}/*.mp4"]) == [str(root / name) for name in ("a.mp4", "broken.mp4", "link.mp4", "self.mp4")]


def test_a_list_file_may_start_with_a_byte_order_mark_but_must_be_text(corpus, tmp_path):
    listing = tmp_path / "bom.txt"
    listing.write_bytes(b"\xef\xbb\xbf" + f"{corpus}/good/h264.mp4\r\n".encode())  # as Windows Notepad saves it
    assert list_video_uris([str(listing)]) == [str(corpus / "good/h264.mp4")]
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ManifestError, match=r"binary.txt: not a UTF-8 text list of paths \(byte 0 is b'\\xff'\); .* save it as UTF-8"):
        list_video_uris([str(tmp_path / "binary.txt")])


def test_an_output_that_is_a_file_is_refused_naming_it(corpus, tmp_path):
    (tmp_path / "out").write_text("a file, not a folder")
    with pytest.raises(ManifestError, match=f"{tmp_path / 'out'}: cannot use it as the output directory \\(Not a directory\\); pass a directory"):
        build_manifest([str(corpus / "good/h264.mp4")], str(tmp_path / "out"))


def test_object_store_uris_map_back_from_their_filesystem_paths():
    # the listing code is shared with local paths; this is the one step that differs (no network: mock://)
    filesystem, path, to_uri = manifest_module._resolve("mock:///bucket/raw/")
    assert (type(filesystem).__name__, path, to_uri(path + "/a.mp4")) == ("_MockFileSystem", "bucket/raw", "mock:///bucket/raw/a.mp4")


def test_schema_has_a_column_per_videoinfo_field():
    assert MANIFEST_SCHEMA.names == list(VideoInfo.__dataclass_fields__)


def test_an_incompatible_manifest_is_refused_before_any_probe(corpus, tmp_path):
    pq.write_table(pa.table({"path": ["a.mp4"]}), tmp_path / MANIFEST_FILE)
    with pytest.raises(ManifestError, match="not a manifest this version can extend"):
        build_manifest([str(corpus / "good/h264.mp4")], str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Probing on Ray


def test_every_file_gets_its_recorded_outcome_and_no_valid_video_is_lost(corpus, tmp_path, local_ray):
    lines = []
    summary = build_manifest([str(corpus)], str(tmp_path), progress_every=4, progress=lines.append)

    table = _manifest_table(tmp_path)
    assert table.schema.names == MANIFEST_SCHEMA.names
    rows = {Path(r["uri"]).relative_to(corpus).as_posix(): r for r in table.to_pylist()}
    assert {name: (r["status"], r["reason"], r["num_frames"]) for name, r in rows.items()} == EXPECTED
    for name, row in rows.items():
        assert row["video_id"] == video_id_for(str(corpus / name))
        assert row["size_bytes"] == (corpus / name).stat().st_size
        assert (row["error"] == "") == (row["status"] == "ok")
        if row["status"] == "error":
            assert row["error"].startswith(str(corpus / name))
    assert (rows["good/odd_97x61.mp4"]["width"], rows["good/odd_97x61.mp4"]["height"]) == (97, 61)
    assert rows["good/vfr.mp4"]["variable_frame_rate"] is True and rows["good/h264.mp4"]["variable_frame_rate"] is False
    assert (rows["good/h264.mp4"]["fps"], rows["good/h264.mp4"]["duration_s"]) == (25.0, 0.8)

    good = sum(1 for status, _, _ in EXPECTED.values() if status == "ok")
    assert (summary.total, summary.ok, summary.failed, summary.probed, summary.skipped) == (len(EXPECTED), good, 5, len(EXPECTED), 0)
    assert summary.failures == {"truncated": 2, "zero-byte file": 1, "cannot open": 1, "no video stream": 1}
    assert "truncated" in summary.format() and f"{len(EXPECTED)} videos: {good} ok, 5 failed" in summary.format()
    assert any(line.startswith(f"  probed {len(EXPECTED)}/{len(EXPECTED)}") for line in lines)
    assert not list((tmp_path / PARTS_DIR).iterdir())  # merged into the manifest


def test_rerun_probes_only_new_videos_and_retry_failed_only_failed_ones(corpus, tmp_path, local_ray):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(corpus / "good/h264.mp4", videos / "a.mp4")
    shutil.copy(corpus / "good/mpeg4.avi", videos / "b.avi")
    (videos / "c.mp4").write_bytes(b"")
    output = str(tmp_path / "out")
    first = build_manifest([str(videos)], output)
    assert (first.probed, first.ok, first.failed) == (3, 2, 1)

    # a.mp4 turns into garbage: were it probed again its row would turn into an error
    (videos / "a.mp4").write_bytes(b"")
    shutil.copy(corpus / "good/three_frames.mp4", videos / "d.mp4")
    second = build_manifest([str(videos)], output)
    assert (second.probed, second.skipped, second.total, second.ok, second.failed) == (1, 3, 4, 3, 1)
    rows = {Path(r["uri"]).name: r for r in _manifest_table(Path(output)).to_pylist()}
    assert rows["a.mp4"]["status"] == "ok" and rows["d.mp4"]["num_frames"] == 3

    # fix c.mp4; only the failed row is probed again
    shutil.copy(corpus / "good/h264.mp4", videos / "c.mp4")
    third = build_manifest([str(videos)], output, retry_failed=True)
    assert (third.probed, third.total, third.ok, third.failed) == (1, 4, 4, 0)

    # rows of earlier inputs stay when a rerun names other inputs only
    fourth = build_manifest([str(corpus / "good/vfr.mp4")], output)
    assert (fourth.probed, fourth.total) == (1, 5)


def test_awkward_names_links_and_list_entries_get_their_rows(corpus, tmp_path, local_ray):
    """Spaces and non-ASCII names (also as a %-encoded file:// URI in a list file with a BOM), a
    symlinked file, a broken link and a listed missing file: each gets its own, right row."""
    videos = tmp_path / "vidéos en vrac"
    videos.mkdir()
    odd = videos / "clip ünï 1.mp4"
    shutil.copy(corpus / "good/h264.mp4", odd)
    (videos / "link.mp4").symlink_to(odd)
    (videos / "broken.mp4").symlink_to(tmp_path / "gone.mp4")
    listing = tmp_path / "list.txt"
    uri = "file://" + urllib.parse.quote(str(odd))
    listing.write_bytes(b"\xef\xbb\xbf" + f"{uri}\nmissing.mp4\n".encode())
    summary = build_manifest([str(videos), str(listing)], str(tmp_path / "out"))
    rows = {Path(r["uri"]).name: r for r in _manifest_table(tmp_path / "out").to_pylist()}
    assert {name: (r["status"], r["reason"], r["num_frames"]) for name, r in rows.items()} == {
        odd.name: ("ok", "", 20), "link.mp4": ("ok", "", 20), "broken.mp4": ("error", "missing file", None),
        "missing.mp4": ("error", "missing file", None),
    }
    assert rows[odd.name]["uri"] == str(odd) and rows[odd.name]["video_id"] == video_id_for(uri)
    assert rows["missing.mp4"]["error"].startswith(f"{tmp_path / 'missing.mp4'}: cannot read the file (No such file or directory)")
    assert (summary.total, summary.ok) == (4, 2)


def test_a_crashed_run_keeps_what_it_probed_and_the_rerun_does_the_rest(corpus, tmp_path, local_ray):
    output = tmp_path / "out"

    def crash_after_two(line: str) -> None:
        if line.startswith("  probed 2/"):
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        build_manifest([str(corpus / "good")], str(output), flush_every=1, progress_every=1, progress=crash_after_two)
    assert not (output / MANIFEST_FILE).exists()
    assert len(read_manifest_rows(str(output))) == 2  # flushed to part files before the crash

    rerun = build_manifest([str(corpus / "good")], str(output))
    expected_good = sum(1 for name in EXPECTED if name.startswith("good/"))
    assert (rerun.probed, rerun.skipped, rerun.total, rerun.ok) == (expected_good - 2, 2, expected_good, expected_good)
    assert not list((output / PARTS_DIR).iterdir())


def test_a_probe_that_kills_its_worker_becomes_a_row(corpus, tmp_path, local_ray, monkeypatch):
    @ray.remote(max_retries=0, num_returns="streaming")
    def probe_or_die(uri: str):  # defined here so that Ray ships it by value; yields as _probe_task does
        yield "started"
        if uri.endswith("mpeg4.avi"):
            os._exit(1)  # what a segfault in the decoder looks like to Ray
        from semidff.video.probe import probe_video

        yield probe_video(uri).to_row()

    monkeypatch.setattr(manifest_module, "_probe_task", probe_or_die)
    summary = build_manifest([str(corpus / "good/h264.mp4"), str(corpus / "good/mpeg4.avi")], str(tmp_path))
    rows = {Path(r["uri"]).name: r for r in _manifest_table(tmp_path).to_pylist()}
    assert rows["h264.mp4"]["status"] == "ok"
    assert (rows["mpeg4.avi"]["status"], rows["mpeg4.avi"]["reason"]) == ("error", "probe crashed")
    assert "retry-failed" in rows["mpeg4.avi"]["error"] and summary.failures == {"probe crashed": 1}


def test_a_probe_past_its_time_limit_is_killed_and_recorded_as_timeout(tmp_path, local_ray):
    """A real probe that takes longer than the limit: a 150-frame GOP decoded to reach the last
    frame (~0.1 s here) against a 5 ms limit. The row says so; the worker is killed, Ray goes on."""
    (tmp_path / "videos").mkdir()
    slow = write_video(tmp_path / "videos/long_gop.mp4", 150, 640, 360, gop=150)
    quick = write_video(tmp_path / "videos/small.mp4", 5, 64, 48)
    output = tmp_path / "out"
    summary = build_manifest([str(slow)], str(output), probe_timeout_s=0.005)
    (row,) = _manifest_table(output).to_pylist()
    assert (row["status"], row["reason"], row["num_frames"]) == ("error", "timeout", None)
    assert row["error"] == (
        f"{slow}: probing took longer than 0.005 s and was stopped (the decoder may hang on this file); "
        "rerun with --retry-failed and a larger --probe-timeout, or leave it out"
    )
    assert row["size_bytes"] == slow.stat().st_size and summary.failures == {"timeout": 1}

    rerun = build_manifest([str(tmp_path / "videos")], str(output), retry_failed=True)  # default limit: 120 s
    rows = {Path(r["uri"]).name: r for r in _manifest_table(output).to_pylist()}
    assert (rerun.probed, rerun.ok, rerun.failed) == (2, 2, 0)
    assert (rows["long_gop.mp4"]["num_frames"], rows[quick.name]["num_frames"]) == (150, 5)
    with pytest.raises(ManifestError, match="must be > 0"):
        build_manifest([str(quick)], str(output), probe_timeout_s=0)


# ---------------------------------------------------------------------------------------------
# The command line (starts and stops its own Ray)


def run_cli(*args):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, timeout=240, env=env)


@pytest.mark.slow  # starts and stops a Ray of its own: ~9 s here
def test_cli_manifest_prints_the_summary_and_exits_0_with_failures(corpus, tmp_path):
    result = run_cli(  # --probe-timeout 0: no limit (build_manifest itself refuses 0)
        "manifest", str(corpus / "good/h264.mp4"), str(corpus / "bad/zero.mp4"), "-o", str(tmp_path), "--num-cpus", "1", "--probe-timeout", "0"
    )
    assert result.returncode == 0, result.stderr
    assert "2 videos: 1 ok, 1 failed" in result.stdout and "zero-byte file" in result.stdout
    assert pq.read_table(tmp_path / MANIFEST_FILE).num_rows == 2


def test_cli_manifest_without_matching_inputs_exits_2_naming_them(tmp_path):
    result = run_cli("manifest", str(tmp_path / "nothing_here"), "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    assert f"{tmp_path / 'nothing_here'}: no such file" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_unreadable_subfolder_becomes_a_row_and_the_rest_is_listed(tmp_path, monkeypatch):
    """The tests may run as root, for whom every folder is readable: the permission error is made
    where the listing meets it (os.scandir), and the probe, which sees a folder, says why."""
    from semidff.video.probe import REASON_NO_PERMISSION, probe_video

    root = tmp_path / "videos"
    (root / "locked").mkdir(parents=True)
    (root / "open").mkdir()
    write_video(root / "open" / "a.mp4", num_frames=4, width=32, height=24)
    (root / "locked" / "hidden.mp4").write_bytes(b"")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # the listing's and the probe's
    assert list_video_uris([str(root)]) == [str(root / "locked"), str(root / "open" / "a.mp4")]
    row = probe_video(str(root / "locked"))
    assert row.status == "error" and row.reason == REASON_NO_PERMISSION and "may not list" in row.error
