"""The manifest stage (``semidff manifest``): probe every input video once and record it in ``<output>/manifest.parquet``.

    semidff manifest /data/videos 'more/**/*.mp4' lists/extra.txt s3://bucket/raw/ -o runs/manifest

    from pipelines.manifest import build_manifest
    summary = build_manifest(["/data/videos"], "runs/manifest")
    print(summary.format())

Inputs (:func:`list_video_uris`): video files; directories, walked recursively for files with a
video extension (``VIDEO_EXTENSIONS``), skipping names that start with '.'; glob patterns, matched
against file paths with ``*``/``?``/``[...]`` inside one path component and ``**`` across any
number of them (every matching file is taken, whatever its extension); ``.txt``/``.list`` files with
one path or URI per line (``#`` comments; relative paths are relative to the list file); and URIs:
``file://``, ``s3://``, ``gs://`` or any other scheme ``pyarrow.fs.FileSystem.from_uri`` knows. The
same code lists local and remote inputs, through pyarrow filesystems.

Each video becomes one :class:`semidff.rows.ManifestRow` (fields, units and schema there;
:func:`read_manifest_rows` reads them back), probed by one Ray task
(:func:`semidff.video.probe.probe_video`). A file that cannot
be used becomes a row with ``status="error"``, a ``reason`` and an ``error`` message, never a
crash; a probe that runs past ``probe_timeout_s`` (a decoder hung on its file) is killed and
recorded with reason ``timeout``, so one file cannot stall the run. Rows are flushed to ``_manifest_parts/`` as they arrive and merged into ``manifest.parquet``
at the end (temp file + rename), so a rerun on the same output, after a crash too, probes only the
videos not recorded yet (``retry_failed=True`` probes the failed ones again). Rows of earlier runs
stay in the manifest even when their files are not among the new inputs. Run one build per output
directory at a time.

Why this cannot starve on a small machine: plain tasks of ``cpus_per_task`` CPUs (1 by default:
decord decodes on one thread), at most a bounded number in flight, no actors, placement groups or
Ray Data operators holding resources. A task waits only for a free CPU, which every finishing
task returns (ray-facts §0 #3-#5 are all about pools holding every CPU). With no Ray running and no
address, a private local Ray is started (``address="local"``) and shut down at the end.
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence, Union

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from semidff.atomic import write_parquet_atomically
from pipelines.ray_session import ray_session
from semidff.rows import MANIFEST_FILE, MANIFEST_SCHEMA, STATUS_ERROR, STATUS_OK, ManifestRow  # noqa: F401 - MANIFEST_SCHEMA: also imported from here
from semidff.video.probe import REASON_CRASHED, REASON_TIMEOUT, is_local, normalize_uri, probe_video, video_id_for

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".flv", ".wmv", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".3gp", ".ogv"}
)
LIST_EXTENSIONS = frozenset({".txt", ".list"})
DEFAULT_PROBE_TIMEOUT_S = 120.0  # a probe decodes two frames: seconds even for long-GOP 4K files; minutes means a hang
PARTS_DIR = "_manifest_parts"
_GLOB_CHARS = re.compile(r"[*?\[]")


class ManifestError(ValueError):
    """The inputs or the output location cannot be used; the message names which and why."""


class _NoMatch(Exception):
    """Internal: one input matched no video; the message says why."""


@dataclass
class ManifestSummary:
    """What a :func:`build_manifest` run did and what the manifest now holds."""

    manifest_path: str
    matched: int  # videos the inputs expanded to
    probed: int  # probed by this run
    probed_failed: int  # of those, unusable
    skipped: int  # already in the manifest, not probed again
    total: int  # rows in the manifest, earlier runs' included
    ok: int
    failed: int
    failures: dict[str, int] = field(default_factory=dict)  # reason -> rows, most common first
    examples: dict[str, str] = field(default_factory=dict)  # reason -> one error message
    seconds: float = 0.0

    def format(self) -> str:
        lines = [
            f"manifest: {self.manifest_path}",
            f"  {self.total} videos: {self.ok} ok, {self.failed} failed",
            f"  this run: {self.matched} videos in the inputs, {self.probed} probed ({self.probed_failed} failed), "
            f"{self.skipped} already in the manifest; {self.seconds:.1f} s",
        ]
        if self.failures:
            lines.append("  failed, by reason:")
            lines += [f"    {count:>7}  {reason}  (e.g. {self.examples[reason]})" for reason, count in self.failures.items()]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Inputs


def list_video_uris(inputs: Sequence[str]) -> list[str]:
    """Expand files, directories, globs, list files and URIs into sorted, unique, normalised URIs.

    Raises ManifestError naming every input that matches no file, and why.
    """
    if not inputs:
        raise ManifestError("no inputs: pass video files, directories, globs, .txt lists of paths, or URIs")
    found: set[str] = set()
    problems = []
    for item in inputs:
        try:
            found.update(normalize_uri(uri) for uri in _expand(item))
        except (_NoMatch, ValueError) as exc:  # ValueError: a malformed file:// URI
            problems.append(f"  {item}: {str(exc).removeprefix(item + ': ')}")
    if problems:
        raise ManifestError("these inputs match no video file:\n" + "\n".join(problems))
    return sorted(found)


def _expand(item: str) -> list[str]:
    filesystem, path, to_uri = _resolve(item)
    try:
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            if not _GLOB_CHARS.search(path):
                raise _NoMatch("no such file, directory or object")
            matches = _glob(filesystem, path)
            if not matches:
                raise _NoMatch("the glob matches no file")
            return [to_uri(p) for p in matches]
        if info.type == pafs.FileType.Directory:
            videos = _walk(filesystem, path)
            if not videos:
                raise _NoMatch(f"the directory holds no file ending in {', '.join(sorted(VIDEO_EXTENSIONS))}")
            return [to_uri(p) for p in videos]
        if _extension(path) in LIST_EXTENSIONS:
            return _read_list(filesystem, path, to_uri)
        return [to_uri(path)]
    except OSError as exc:  # pyarrow: permissions, credentials, network
        raise _NoMatch(f"cannot list it ({exc})") from None


def _resolve(item: str) -> tuple[pafs.FileSystem, str, Callable[[str], str]]:
    """(filesystem, path in it, path -> URI) for a local path or any pyarrow URI."""
    item = item.strip()
    if is_local(item):
        return pafs.LocalFileSystem(), normalize_uri(item), lambda path: path
    try:
        filesystem, path = pafs.FileSystem.from_uri(item)
    except Exception as exc:
        raise _NoMatch(f"pyarrow cannot open this URI ({exc})") from None
    path = path.rstrip("/")
    prefix = item[: item.find(path)] if path and path in item else item.partition("://")[0] + "://"
    return filesystem, path, lambda p: prefix + p


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def _hidden(relative_path: str) -> bool:
    return any(part.startswith(".") for part in relative_path.split("/"))


def _walk(filesystem: pafs.FileSystem, directory: str) -> list[str]:
    """Files under ``directory`` (recursively) with a video extension, hidden names skipped."""
    if isinstance(filesystem, pafs.LocalFileSystem):
        # a folder in the tree is one that could not be listed: kept, it becomes a "permission denied" row
        return [path for path in _local_tree(directory, skip_hidden=True) if _extension(path) in VIDEO_EXTENSIONS or os.path.isdir(path)]
    entries = filesystem.get_file_info(pafs.FileSelector(directory, recursive=True))
    return sorted(
        e.path
        for e in entries
        if e.type == pafs.FileType.File
        and _extension(e.path) in VIDEO_EXTENSIONS
        and not _hidden(posixpath.relpath(e.path, directory))
    )


def _local_tree(directory: str, skip_hidden: bool) -> list[str]:
    """Every non-directory entry under a local ``directory``, sorted, each real directory listed once.

    Symlinked directories are followed, but only to directories not listed yet: a link loop
    (``a/loop -> a``) or a second way into the same folder would otherwise list its files again
    under ever longer paths (pyarrow follows a loop until ELOOP), each one a duplicate video. The
    real directories under ``directory`` come first, so their files keep their own paths. Symlinked
    files are kept as they are (their own path, their own video_id); a broken link is kept too,
    so that it becomes a "missing file" row instead of vanishing. A subfolder that cannot be listed
    is kept as an entry too (a "permission denied" row); the input folder itself raises OSError.
    Duplicates are cut within one listing: two inputs that reach the same folder list it twice.
    """
    listed: set[str] = set()
    found: list[str] = []
    links = [directory]
    while links:  # round 1: the real tree; then the directories its links lead to, and so on
        stack, links = sorted(links, reverse=True), []
        while stack:
            current = stack.pop()
            real = os.path.realpath(current)
            if real in listed:
                continue
            listed.add(real)
            try:
                with os.scandir(current) as scan:
                    entries = sorted(scan, key=lambda entry: entry.name, reverse=True)
            except PermissionError:
                if current == directory:
                    raise  # the input itself: the caller names it
                found.append(current)  # a subfolder that cannot be listed becomes a row (the probe says why); the rest goes on
                continue
            for entry in entries:
                if skip_hidden and entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                    continue
                kind = _followed_kind(entry)
                if kind == "dir":
                    links.append(entry.path)
                elif kind == "file":
                    found.append(entry.path)
    return sorted(found)


def _followed_kind(entry: os.DirEntry) -> Optional[str]:
    """What a directory entry leads to: "dir", "file" (a regular file, or a link that leads
    nowhere: a broken link or a link loop, listed so that it becomes a "missing file" row), or
    None for FIFOs, sockets and devices (a probe would block on opening a FIFO)."""
    try:
        if entry.is_dir():
            return "dir"
        if entry.is_file():
            return "file"
    except OSError:  # ELOOP: a link that leads to itself
        return "file"
    return "file" if entry.is_symlink() and not os.path.exists(entry.path) else None


def _glob(filesystem: pafs.FileSystem, pattern: str) -> list[str]:
    """Files whose path matches ``pattern``: one directory level per component, and a recursive
    listing only from a ``**`` on (so ``/data/*/*.mp4`` never lists all of ``/data``)."""
    parts = pattern.split("/")
    fixed = next(i for i, part in enumerate(parts) if _GLOB_CHARS.search(part))
    directories = ["/".join(parts[:fixed]) or "/"]
    for level in range(fixed, len(parts)):
        part, rest = parts[level], parts[level:]
        if part == "**":
            return sorted(
                path
                for directory in directories
                for path in _tree(filesystem, directory)
                if _glob_match(posixpath.relpath(path, directory).split("/"), rest)
            )
        entries = [
            (path, kind)
            for directory in directories
            for path, kind in _listing(filesystem, directory)
            if _component_match(posixpath.basename(path), part)
        ]
        if level == len(parts) - 1:
            return sorted(path for path, kind in entries if kind == "file")
        directories = [path for path, kind in entries if kind == "dir"]
    return []


def _listing(filesystem: pafs.FileSystem, directory: str) -> list[tuple[str, str]]:
    """(path, "file" | "dir") of the entries of one directory (not recursive; none if it does not
    exist). Local entries follow :func:`_followed_kind`, as the recursive walk does: a broken link
    is a "file" (a row later), a FIFO is left out."""
    if isinstance(filesystem, pafs.LocalFileSystem):
        if not os.path.isdir(directory):
            return []
        with os.scandir(directory) as scan:
            kinds = [(entry.path, _followed_kind(entry)) for entry in scan]
        return [(path, kind) for path, kind in kinds if kind is not None]
    types = {pafs.FileType.File: "file", pafs.FileType.Directory: "dir"}
    entries = filesystem.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    return [(entry.path, types[entry.type]) for entry in entries if entry.type in types]


def _tree(filesystem: pafs.FileSystem, directory: str) -> list[str]:
    """Every file under ``directory``, recursively (local: :func:`_local_tree`, symlink loops cut)."""
    if isinstance(filesystem, pafs.LocalFileSystem):
        return _local_tree(directory, skip_hidden=False) if os.path.isdir(directory) else []
    entries = filesystem.get_file_info(pafs.FileSelector(directory, recursive=True, allow_not_found=True))
    return [entry.path for entry in entries if entry.type == pafs.FileType.File]


def _glob_match(path_parts: list[str], pattern_parts: list[str]) -> bool:
    if not pattern_parts:
        return not path_parts
    head, rest = pattern_parts[0], pattern_parts[1:]
    if head == "**":
        return any(_glob_match(path_parts[i:], rest) for i in range(len(path_parts) + 1))
    return bool(path_parts) and _component_match(path_parts[0], head) and _glob_match(path_parts[1:], rest)


def _component_match(name: str, pattern: str) -> bool:
    """fnmatch of one path component; as in a shell, wildcards do not match a leading '.'."""
    if name.startswith(".") and not pattern.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, pattern)


def _read_list(filesystem: pafs.FileSystem, path: str, to_uri: Callable[[str], str]) -> list[str]:
    """Entries of a list file: one path or URI per line, taken as they are (not checked here:
    a missing one becomes an error row), relative paths relative to the list file."""
    with filesystem.open_input_stream(path) as stream:
        data = stream.read()
    try:
        text = data.decode("utf-8-sig")  # "-sig": a byte-order mark (Windows editors) is not part of the first path
    except UnicodeDecodeError as exc:
        raise _NoMatch(
            f"not a UTF-8 text list of paths (byte {exc.start} is {data[exc.start:exc.start + 1]!r}); a .txt/.list input "
            "is read as one path or URI per line: save it as UTF-8, or give a video by another name"
        ) from None
    entries = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if "://" in entry or os.path.isabs(os.path.expanduser(entry)):
            entries.append(entry)
        else:
            entries.append(to_uri(posixpath.join(posixpath.dirname(path), entry)))
    if not entries:
        raise _NoMatch("the list file names no video")
    return entries


# ---------------------------------------------------------------------------------------------
# Probing on Ray


_STARTED = "started"  # what a probe task yields first: its time limit counts from there, not from its submission


@ray.remote(num_cpus=1, max_retries=1, num_returns="streaming")  # a retry covers a lost node; a file that kills decord twice is a row
def _probe_task(uri: str) -> Iterator[Union[str, dict]]:
    """Yields _STARTED as soon as it runs (a queued task is not a slow one), then the manifest
    row as a dict (ManifestRow.to_dict: plain data crosses Ray)."""
    yield _STARTED
    import decord.logging

    decord.logging.set_level(decord.logging.QUIET)  # FFmpeg's own log lines; the outcome is in the row
    yield probe_video(uri).to_dict()


def _probe_on_ray(uris: Sequence[str], cpus_per_task: float, max_in_flight: int, timeout_s: Optional[float] = None) -> Iterator[ManifestRow]:
    """Yield one manifest row per URI, in completion order, with at most ``max_in_flight`` tasks submitted.

    A probe still running ``timeout_s`` seconds after it started (a decoder that hangs on its file)
    is cancelled with force (its worker process is killed: a thread stuck in C code cannot be
    interrupted otherwise) and becomes a row with reason "timeout"."""
    remaining = iter(uris)
    pending: dict[ray.ObjectRefGenerator, list] = {}  # task -> [uri, monotonic time it started or None while queued]

    def submit_next() -> None:
        uri = next(remaining, None)
        if uri is not None:
            pending[_probe_task.options(num_cpus=cpus_per_task).remote(uri)] = [uri, None]

    try:
        for _ in range(max_in_flight):
            submit_next()
        while pending:
            started = [since for _, since in pending.values() if since is not None]
            wait_s = max(0.0, min(started) + timeout_s - time.monotonic()) if timeout_s is not None and started else None
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=wait_s)
            for task in ready:
                uri = pending[task][0]
                try:
                    item = ray.get(next(task))
                except StopIteration:
                    item = _crashed_row(uri, RuntimeError("the probe task ended without a row"))
                except ray.exceptions.RayError as exc:  # the worker died (decoder crash) or the task raised
                    item = _crashed_row(uri, exc)
                if isinstance(item, str):  # _STARTED
                    pending[task][1] = time.monotonic()
                    continue
                del pending[task]
                submit_next()
                yield item if isinstance(item, ManifestRow) else ManifestRow.from_dict(item)
            if timeout_s is None:
                continue
            now = time.monotonic()
            for task, (uri, since) in list(pending.items()):
                if since is not None and now - since >= timeout_s:
                    ray.cancel(task, force=True)
                    del pending[task]
                    submit_next()
                    yield _timeout_row(uri, timeout_s)
    finally:
        for task in pending:  # interrupted: do not leave probes running on a shared cluster
            ray.cancel(task)


def _timeout_row(uri: str, timeout_s: float) -> ManifestRow:
    message = (
        f"{uri}: probing took longer than {timeout_s:g} s and was stopped (the decoder may hang on this file); "
        "rerun with --retry-failed and a larger --probe-timeout, or leave it out"
    )
    size = os.stat(uri).st_size if is_local(uri) and os.path.isfile(uri) else None
    return ManifestRow.failed(video_id_for(uri), uri, REASON_TIMEOUT, message, size)


def _crashed_row(uri: str, exc: Exception) -> ManifestRow:
    first_line = (str(exc).strip().splitlines() or [""])[0][:200]
    message = (
        f"{uri}: the probing process failed ({type(exc).__name__}: {first_line}); decord may have crashed on this file, "
        "rerun with --retry-failed or leave it out"
    )
    return ManifestRow.failed(video_id_for(uri), uri, REASON_CRASHED, message)


# ---------------------------------------------------------------------------------------------
# The manifest files


def _output_location(output_dir: str) -> tuple[pafs.FileSystem, str]:
    if is_local(output_dir):
        return pafs.LocalFileSystem(), normalize_uri(output_dir)
    filesystem, path = pafs.FileSystem.from_uri(output_dir)
    return filesystem, path.rstrip("/")


def _write_atomically(rows: Sequence[ManifestRow], filesystem: pafs.FileSystem, path: str) -> None:
    """Manifest rows to ``path``, atomically (:func:`semidff.atomic.write_parquet_atomically`)."""
    write_parquet_atomically(ManifestRow.to_arrow(rows), filesystem, path)


def _read_rows(filesystem: pafs.FileSystem, path: str) -> list[ManifestRow]:
    table = pq.read_table(path, filesystem=filesystem)
    try:
        return ManifestRow.from_arrow(table)
    except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ManifestError(f"{path}: not a manifest this version can extend ({exc}); write to a new output directory") from None


def _existing_parts(filesystem: pafs.FileSystem, base: str) -> list[str]:
    entries = filesystem.get_file_info(pafs.FileSelector(f"{base}/{PARTS_DIR}", allow_not_found=True))
    names = (e.path for e in entries if e.type == pafs.FileType.File)
    return sorted(p for p in names if posixpath.basename(p).startswith("part-") and p.endswith(".parquet"))


def has_manifest(output_dir: str) -> bool:
    """Whether ``output_dir`` holds a manifest file (perhaps with no row)."""
    filesystem, base = _output_location(output_dir)
    return filesystem.get_file_info(f"{base}/{MANIFEST_FILE}").type == pafs.FileType.File


def read_manifest_rows(output_dir: str) -> dict[str, ManifestRow]:
    """video_id -> row of everything recorded under ``output_dir``: the manifest plus the parts a
    crashed run left behind (newer rows win)."""
    filesystem, base = _output_location(output_dir)
    paths = [f"{base}/{MANIFEST_FILE}"] if filesystem.get_file_info(f"{base}/{MANIFEST_FILE}").type == pafs.FileType.File else []
    rows: dict[str, ManifestRow] = {}
    for path in paths + _existing_parts(filesystem, base):
        rows.update((row.video_id, row) for row in _read_rows(filesystem, path))
    return rows


# ---------------------------------------------------------------------------------------------
# The stage


def build_manifest(
    inputs: Sequence[str],
    output_dir: str,
    *,
    num_cpus: Optional[int] = None,
    address: Optional[str] = None,
    cpus_per_task: float = 1.0,
    retry_failed: bool = False,
    flush_every: int = 500,
    progress_every: int = 100,
    progress: Callable[[str], None] = lambda line: None,
    probe_timeout_s: Optional[float] = DEFAULT_PROBE_TIMEOUT_S,
) -> ManifestSummary:
    """Probe every input video not yet in ``<output_dir>/manifest.parquet`` and rewrite it.

    num_cpus: CPUs of the local Ray started when none is running (default: all cores).
    address: a Ray cluster to connect to instead (default: $RAY_ADDRESS, else local).
    retry_failed: probe again the videos recorded with status "error".
    flush_every: rows per part file written while probing (what a crash can lose at most).
    progress: called with a line every ``progress_every`` probed videos.
    probe_timeout_s: seconds one probe may run (counted from when it starts, not while it waits
        for a CPU) before it is killed and its video recorded with reason "timeout"; None: no limit.
    Raises ManifestError when an input matches nothing or the output holds an incompatible manifest.
    """
    if probe_timeout_s is not None and not probe_timeout_s > 0:
        raise ManifestError(f"probe timeout {probe_timeout_s!r} s: must be > 0 (or None for no limit)")
    start = time.perf_counter()
    uris = list_video_uris(inputs)
    filesystem, base = _output_location(output_dir)
    try:
        filesystem.create_dir(f"{base}/{PARTS_DIR}", recursive=True)
    except OSError as exc:  # the output is a file, or not writable
        detail = os.strerror(exc.errno) if exc.errno else str(exc)  # pyarrow's own text repeats the path
        raise ManifestError(f"{output_dir}: cannot use it as the output directory ({detail}); pass a directory to create or extend") from None
    old_parts = _existing_parts(filesystem, base)
    rows = read_manifest_rows(output_dir)
    _check_ids_unique(uris, rows)
    todo = [u for u in uris if (r := rows.get(video_id_for(u))) is None or (retry_failed and r.status == STATUS_ERROR)]
    manifest_path = posixpath.join(base if is_local(output_dir) else output_dir, MANIFEST_FILE)
    progress(f"manifest: {len(uris)} videos in the inputs, {len(uris) - len(todo)} already in {manifest_path}, {len(todo)} to probe")

    parts = _PartFiles(filesystem, f"{base}/{PARTS_DIR}", flush_every)
    probed_failed = 0
    if todo:
        with ray_session(num_cpus, address):
            probed_failed = _probe_and_record(todo, rows, parts, cpus_per_task, progress_every, progress, probe_timeout_s)

    _write_atomically(sorted(rows.values(), key=lambda r: r.uri), filesystem, f"{base}/{MANIFEST_FILE}")
    for part in old_parts + parts.written:
        filesystem.delete_file(part)
    return _summarise(rows, manifest_path, len(uris), len(todo), probed_failed, time.perf_counter() - start)


class _PartFiles:
    """This run's rows, written in batches under ``_manifest_parts/``: what a crash cannot take away."""

    def __init__(self, filesystem: pafs.FileSystem, directory: str, batch_size: int):
        self.filesystem, self.directory, self.batch_size = filesystem, directory, batch_size
        self.pending: list[ManifestRow] = []
        self.written: list[str] = []

    def add(self, row: ManifestRow) -> None:
        self.pending.append(row)
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            path = f"{self.directory}/part-{time.time_ns():020d}-{uuid.uuid4().hex[:6]}.parquet"  # names sort by time
            _write_atomically(self.pending, self.filesystem, path)
            self.written.append(path)
            self.pending = []


def _probe_and_record(
    todo: Sequence[str],
    rows: dict[str, ManifestRow],
    parts: _PartFiles,
    cpus_per_task: float,
    progress_every: int,
    progress: Callable[[str], None],
    probe_timeout_s: Optional[float] = DEFAULT_PROBE_TIMEOUT_S,
) -> int:
    """Probe ``todo`` on the running Ray into ``rows`` and ``parts``; returns how many failed."""
    cluster_cpus = ray.cluster_resources().get("CPU", 0.0)
    if cluster_cpus < cpus_per_task:
        progress(f"warning: the Ray cluster has {cluster_cpus:g} CPUs and each probe needs {cpus_per_task:g}; probes wait for nodes with CPUs")
    max_in_flight = int(min(10_000, max(4, 2 * cluster_cpus / cpus_per_task)))  # enough to keep every CPU busy
    failed = 0
    start = time.perf_counter()
    try:
        with contextlib.closing(_probe_on_ray(todo, cpus_per_task, max_in_flight, probe_timeout_s)) as results:  # closing cancels what is left
            for done, row in enumerate(results, start=1):
                rows[row.video_id] = row
                parts.add(row)
                failed += row.status != STATUS_OK
                if done % progress_every == 0 or done == len(todo):
                    rate = done / max(time.perf_counter() - start, 1e-9)
                    progress(f"  probed {done}/{len(todo)} ({done - failed} ok, {failed} failed), {rate:.1f} videos/s")
    finally:
        parts.flush()  # also on Ctrl-C or an error: what was probed is kept for the rerun
    return failed


def _check_ids_unique(uris: Sequence[str], rows: dict[str, ManifestRow]) -> None:
    seen = {vid: row.uri for vid, row in rows.items()}
    for uri in uris:
        other = seen.setdefault(video_id_for(uri), uri)
        if other != uri:
            raise ManifestError(f"{uri} and {other} have the same video_id {video_id_for(uri)} (a SHA-1 prefix collision); rename one of them")


def _summarise(rows: dict[str, ManifestRow], manifest_path: str, matched: int, probed: int, probed_failed: int, seconds: float) -> ManifestSummary:
    failed_rows = [r for r in rows.values() if r.status != STATUS_OK]
    reasons = Counter(r.reason or "unknown" for r in failed_rows)
    examples: dict[str, str] = {}
    for row in sorted(failed_rows, key=lambda r: r.uri):
        examples.setdefault(row.reason or "unknown", row.error)
    return ManifestSummary(
        manifest_path=manifest_path,
        matched=matched,
        probed=probed,
        probed_failed=probed_failed,
        skipped=matched - probed,
        total=len(rows),
        ok=len(rows) - len(failed_rows),
        failed=len(failed_rows),
        failures=dict(reasons.most_common()),
        examples=examples,
        seconds=seconds,
    )
