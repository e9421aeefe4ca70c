"""`semidff submit` and `semidff job ...` as a user runs them.

Fast tests: stage parsing with the config relocated into the upload, an unreachable address
failing in seconds (the client's address, token, excludes and runtime env:
tests/pipelines/test_job_submission.py). Slow tests (one real head node, `ray start --head` on 127.0.0.1 with token
auth, for the module): the manifest -> cache -> train chain (:data:`CHAIN`, two real videos and a
random tiny teacher) submitted stage by stage and awaited, each stage's logs read back and its
outputs checked, a config from outside the working directory reaching the job, a failing stage
exiting 1, a long job stopped, a client without the token refused with the fix.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pyarrow.parquet as pq
import pytest
import typer
import yaml

from tests.video_fixtures import write_video  # PyAV before decord
from tests.teacher_checkpoints import save_random_teacher

from jobs.cli import app
from jobs.submit import parse_stage_command
from pipelines.job_submission import STAGING_DIR, SubmitError
from semidff.cache.files import inspect_cache
from semidff.checkpoint import file_sha256, load_model_checkpoint
from semidff.config import load_config
from semidff.tracking import ARTIFACTS_DIR, OUTPUT_RUN_FILE

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SEMIDFF = [str(BIN / "semidff")] if (BIN / "semidff").exists() else [sys.executable, "-m", "jobs.cli"]
CLI = typer.main.get_command(app)  # the semidff app, which `semidff submit` checks a stage against
AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def semidff(*args: str, env: dict, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*SEMIDFF, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Fast: no cluster


def test_stage_command_keeps_a_config_inside_the_working_dir_relative(tmp_path):
    (tmp_path / "experiments").mkdir()
    config = tmp_path / "experiments" / "small.yaml"
    config.write_text("video: {key_interval: 5}\n")
    command = parse_stage_command(["config", "show", "-c", str(config), "video.mode=copy"], tmp_path, "job-1", CLI)
    assert command.stage == "config show"
    assert command.argv == ["config", "show", "-c", "experiments/small.yaml", "video.mode=copy"]
    assert command.staged_config is None
    assert command.entrypoint == "python -m jobs.cli config show -c experiments/small.yaml video.mode=copy"


@pytest.mark.parametrize("spelling", [["-c", "{}"], ["--config", "{}"], ["--config={}"], ["-c{}"]])
def test_stage_command_stages_a_config_from_outside(tmp_path, spelling):
    working_dir, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    working_dir.mkdir(), elsewhere.mkdir()
    config = elsewhere / "gpu.yaml"
    config.write_text("device: cpu\n")
    args = [word.format(config) for word in spelling]
    command = parse_stage_command(["config", "show", *args], working_dir, "job-2", CLI)
    assert command.staged_config.startswith(f"{STAGING_DIR}/job-2-") and command.staged_config.endswith("-gpu.yaml")
    assert command.config_file == config
    assert command.staged_config in " ".join(command.argv) and str(config) not in " ".join(command.argv)


def test_stage_command_stages_a_config_under_an_excluded_folder(tmp_path):
    (tmp_path / "outputs").mkdir()
    config = tmp_path / "outputs" / "resolved.yaml"
    config.write_text("{}\n")
    command = parse_stage_command(["config", "show", "-c", str(config)], tmp_path, "job-3", CLI)
    assert command.staged_config is not None  # /outputs is not uploaded, so the file travels by copy


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "name the stage to run after --"),
        (["nosuch"], "unknown stage 'nosuch'"),
        (["submit", "manifest"], "unknown stage 'submit'"),
        (["benchmark"], "name the stage to run after `benchmark`"),
        (["benchmark", "nosuch"], "No such command 'nosuch'"),
        (["benchmark", "detect", "--frames", "0"], "--frames"),
        (["manifest", "/data/videos"], "Missing option '--output'"),
        (["config", "show", "video.key_interval=0"], "video.key_interval=0"),
        (["config", "show", "-c", "/nonexistent/cfg.yaml"], "does not exist"),
    ],
)
def test_stage_command_is_checked_before_submitting(tmp_path, args, message):
    with pytest.raises(SubmitError, match=message):
        parse_stage_command(args, tmp_path, "job-4", CLI)


def test_stage_command_resolves_nested_commands_as_the_cli_does(tmp_path):
    command = parse_stage_command(["cache", "/data/manifest", "--teacher", "/data/t.pt", "-o", "/data/cache"], tmp_path, "job-7", CLI)
    assert command.stage == "cache build"  # the cache group reads `cache DIR` as `cache build DIR`
    assert command.entrypoint == "python -m jobs.cli cache /data/manifest --teacher /data/t.pt -o /data/cache"
    assert parse_stage_command(["benchmark", "detect", "--frames", "4"], tmp_path, "job-8", CLI).stage == "benchmark detect"


def test_stage_command_warns_about_relative_outputs(tmp_path):
    command = parse_stage_command(["manifest", "/data/videos", "-o", "runs/manifest"], tmp_path, "job-5", CLI)
    assert len(command.warnings) == 1 and "runs/manifest is a relative path" in command.warnings[0]
    assert not parse_stage_command(["manifest", "/data/videos", "-o", "s3://bucket/manifest"], tmp_path, "job-6", CLI).warnings


def test_unreachable_address_fails_within_seconds(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARIABLES}
    start = time.monotonic()
    result = semidff("submit", "--address", f"http://127.0.0.1:{free_port()}", "--", "manifest", "/data", "-o", "/out", env=env, cwd=REPO)
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    assert "cannot reach the Ray job server" in result.stderr and "connection refused" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s"


# ---------------------------------------------------------------------------------------------
# Slow: a real head node


@dataclass
class HeadNode:
    address: str
    env: dict  # the client's environment: HOME holds the cluster's token in .ray/auth_token
    root: Path  # scratch folder: the project copy (working dir), videos, outputs


def _start_head(root: Path, env: dict) -> subprocess.Popen:
    ports = {name: free_port() for name in ("port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                             "ray-client-server-port", "metrics-export-port", "runtime-env-agent-port",
                                             "node-manager-port", "object-manager-port")}
    command = [str(BIN / "ray"), "start", "--head", "--block", "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1",
               "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={root / 'ray'}",
               *(f"--{name}={port}" for name, port in ports.items())]
    log = open(root / "head.log", "w")
    env = dict(env, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="2")  # on SIGTERM the node drains up to 30 s by default
    process = subprocess.Popen(command, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    process.dashboard_port = ports["dashboard-port"]
    return process


def _stop_head(process: subprocess.Popen, root: Path) -> None:
    """SIGTERM `ray start --block` (it shuts its node down), then SIGKILL whatever of this node is left:
    its process group and any process whose command line names this node's temp folder."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    with_marker = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            pgid = os.getpgid(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
        if pgid == process.pid or str(root) in cmdline:
            with_marker.append(int(entry.name))
    for pid in with_marker:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def head_node() -> Iterator[HeadNode]:
    root = Path(tempfile.mkdtemp(prefix="sdff-head-", dir="/tmp"))  # short: Ray's socket paths must stay under 108 bytes
    home = root / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))  # ray start turns token auth on when one exists
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARIABLES}
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")  # `python` in the job = this venv
    project = root / "project"
    for name in ("semidff", "pipelines", "jobs"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")
    process = _start_head(root, env)
    try:
        address = f"http://127.0.0.1:{process.dashboard_port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(address + "/api/version", timeout=2)
                break
            except urllib.error.HTTPError as exc:
                assert exc.code == 401, exc  # token auth is on, as on a real 2.60 cluster
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("the head node did not start:\n" + (root / "head.log").read_text()[-3000:])
                time.sleep(0.5)
        yield HeadNode(address, env, root)
        if process.poll() is not None:  # died under the tests: show why (pytest prints it with the last test)
            sys.stderr.write(f"the head node exited with {process.returncode}:\n" + (root / "head.log").read_text()[-4000:])
    finally:
        _stop_head(process, root)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Stage:
    """One stage of the chain, submitted after the previous one succeeded, through `semidff submit`."""

    name: str
    args: Callable[[Path], list[str]]  # root -> the stage's arguments (absolute paths: the job runs elsewhere)
    check: Callable[[Path], None]  # root -> asserts on what the stage wrote
    log_line: Callable[[Path], str]  # root -> a line the stage prints when it succeeds, read back with `semidff job logs`


# The chain's settings. CLIP_SETTINGS are recorded by the cache, and training refuses a cache made with others:
# cache gets them as overrides of the in-tree tiny.yaml, train as a config file outside the working dir (copied
# into the upload by `semidff submit`) plus TRAIN_SETTINGS as overrides. The head has 2 CPUs: the teacher actor,
# the decode tasks and the Train worker take half a CPU each, so Ray Data's readers (a full CPU for the Parquet
# file listing) still get a slot (ray-facts §0 #3-#5). 2 videos x 2 key frames x 1 current frame = 4 clips.
CLIP_SETTINGS = [
    "preprocess.short_side=48", "preprocess.max_long_side=64", "video.key_interval=4",  # training propagates d <= 3
    "clips.key_frames_per_video=2", "clips.currents_per_key=1", "clips.offset_range=[1,3]", "clips.num_cpus=0.5",
    "cache.num_actors=1", "cache.num_cpus_per_actor=0.5", "cache.num_gpus_per_actor=0", "cache.clips_per_file=2", "cache.batch_size=2",
]
TRAIN_SETTINGS = [
    "training.schedule=regression", "training.regression_epochs=1", "training.semantic_epochs=0", "training.num_workers=1",
    "training.cpus_per_worker=0.5", "training.batch_size=2", "training.validation_fraction=0", "training.use_gpu=false",
]
TINY_IN_PROJECT = "jobs/configs/tiny.yaml"  # relative to the project copy: the client's cwd and the uploaded working dir
CHAIN_CLIPS = 4


def _make_inputs(root: Path) -> None:
    """Two real H.264 videos, a random tiny teacher (the chain tests the plumbing, not the weights) and the
    config file of the train stage, outside the project."""
    (root / "videos").mkdir(exist_ok=True)
    write_video(root / "videos" / "a.mp4", 10, 64, 48)
    write_video(root / "videos" / "b.mp4", 12, 64, 48)
    cfg = load_config(REPO / TINY_IN_PROJECT, CLIP_SETTINGS)
    save_random_teacher(root / "teacher.pt", cfg)
    (root / "elsewhere").mkdir(exist_ok=True)
    (root / "elsewhere" / "chain.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))


def _check_manifest(root: Path) -> None:
    table = pq.read_table(root / "out" / "manifest" / "manifest.parquet").to_pylist()
    assert sorted((Path(row["uri"]).name, row["status"], row["num_frames"]) for row in table) == [("a.mp4", "ok", 10), ("b.mp4", "ok", 12)]


def _check_cache(root: Path) -> None:
    report = inspect_cache(str(root / "out" / "cache"))
    assert report.healthy and (report.files, report.clips_ok, report.clips_failed, report.videos) == (CHAIN_CLIPS // 2, CHAIN_CLIPS, 0, 2)
    assert report.info.teacher_sha256 == file_sha256(root / "teacher.pt")
    assert json.loads((root / "out" / "cache" / OUTPUT_RUN_FILE).read_text())["stage"] == "cache"
    assert list((root / "out" / "cache" / ARTIFACTS_DIR).rglob("config.yaml"))  # MLflow artifacts beside its store


def _check_train(root: Path) -> None:
    flow = load_model_checkpoint(root / "out" / "train" / "flow.pt", "flow")
    assert set(flow.state_dicts) >= {"rfcn", "propagator"}
    assert flow.meta["teacher_sha256"] == file_sha256(root / "teacher.pt")
    trained = load_config(root / "out" / "train" / "config.yaml")  # the config the job resolved: the file + the overrides
    assert (trained.video.key_interval, trained.clips.offset_range, trained.training.regression_epochs) == (4, (1, 3), 1)
    assert not (root / "project" / STAGING_DIR).exists()  # the staged copy of chain.yaml is gone once uploaded
    assert list((root / "out" / "train" / ARTIFACTS_DIR).rglob("config.yaml"))


# The chain the issue asks for: manifest -> cache -> train, each submitted once the previous one SUCCEEDED.
# Every path is absolute and outside the uploaded project copy: the job runs in a temporary unpacked copy.
CHAIN = [
    Stage("manifest", lambda root: ["manifest", str(root / "videos"), "-o", str(root / "out" / "manifest")], _check_manifest,
          lambda root: "2 videos: 2 ok, 0 failed"),
    Stage("cache", lambda root: ["cache", str(root / "out" / "manifest"), "--teacher", str(root / "teacher.pt"),
                                 "-o", str(root / "out" / "cache"), "-c", TINY_IN_PROJECT, *CLIP_SETTINGS], _check_cache,
          lambda root: f"this run: {CHAIN_CLIPS} clips written ({CHAIN_CLIPS} ok, 0 failed"),
    Stage("train", lambda root: ["train", "--teacher", str(root / "teacher.pt"), "--cache", str(root / "out" / "cache"),
                                 "-o", str(root / "out" / "train"), "-c", str(root / "elsewhere" / "chain.yaml"), *TRAIN_SETTINGS],
          _check_train,
          lambda root: f"{root / 'out' / 'train' / 'flow.pt'}: 1 epochs"),
]


@pytest.mark.slow
def test_chain_of_stages_submitted_and_awaited(head_node):
    _make_inputs(head_node.root)
    project = head_node.root / "project"
    for stage in CHAIN:
        job_id = f"chain-{stage.name}"
        result = semidff("submit", "--address", head_node.address, "--submission-id", job_id, "--", *stage.args(head_node.root),
                         env=head_node.env, cwd=project)
        assert result.returncode == 0, f"{stage.name}:\n{result.stdout}\n{result.stderr}"
        assert f"job {job_id} SUCCEEDED" in result.stderr
        assert f"Running entrypoint for job {job_id}: python -m jobs.cli {stage.name}" in result.stdout  # the streamed logs
        stage.check(head_node.root)

        status = semidff("job", "status", job_id, "--address", head_node.address, env=head_node.env, cwd=project)
        assert status.returncode == 0 and f"{job_id}: SUCCEEDED" in status.stdout and f"stage:       {stage.name}" in status.stdout
        assert "exit code:   0" in status.stdout
        logs = semidff("job", "logs", job_id, "--address", head_node.address, env=head_node.env, cwd=project)
        assert logs.returncode == 0 and stage.log_line(head_node.root) in logs.stdout, logs.stdout[-3000:]
    assert not list(project.rglob("*.parquet")) and not list(project.rglob("*.db"))  # nothing written into the project
    # nor into the job's unpacked copy of it (<temp dir>/session_*/runtime_resources/working_dir_files/...), which Ray deletes
    uploaded = {"semidff", "pipelines", "jobs", "pyproject.toml", STAGING_DIR}  # the project copy and the staged chain.yaml
    assert not [p for p in (head_node.root / "ray").rglob("working_dir_files/*/*") if p.name not in uploaded]
    listing = semidff("job", "list", "--address", head_node.address, env=head_node.env, cwd=project)
    finished = {line.split()[0]: line.split()[1] for line in listing.stdout.splitlines() if line.startswith("chain-")}
    assert finished == {f"chain-{stage.name}": "SUCCEEDED" for stage in CHAIN}


@pytest.mark.slow
def test_failing_stage_exits_1(head_node):
    result = semidff("submit", "--address", head_node.address, "--", "manifest", str(head_node.root / "no-such-videos"),
                     "-o", str(head_node.root / "out" / "none"), env=head_node.env, cwd=head_node.root / "project")
    assert result.returncode == 1, result.stderr
    assert "FAILED" in result.stderr and "match no video file" in result.stdout


@pytest.mark.slow
def test_long_job_is_stopped(head_node):
    """A manifest whose list file is a FIFO nobody writes to waits on its input for ever: stop it."""
    project = head_node.root / "project"
    fifo = head_node.root / "endless.txt"
    os.mkfifo(fifo)
    submitted = semidff("submit", "--address", head_node.address, "--no-wait", "--submission-id", "long-1", "--",
                        "manifest", str(fifo), "-o", str(head_node.root / "out" / "never"), env=head_node.env, cwd=project)
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.strip() == "long-1"
    deadline = time.monotonic() + 60
    while "RUNNING" not in (status := semidff("job", "status", "long-1", "-a", head_node.address, env=head_node.env, cwd=project)).stdout:
        assert time.monotonic() < deadline, status.stdout + status.stderr
        time.sleep(1)
    time.sleep(2)  # let the driver reach the blocking open()

    stopped = semidff("job", "stop", "long-1", "-a", head_node.address, env=head_node.env, cwd=project)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == "long-1: STOPPED"
    status = semidff("job", "status", "long-1", "-a", head_node.address, env=head_node.env, cwd=project)
    assert "long-1: STOPPED" in status.stdout
    follow = semidff("job", "logs", "long-1", "--follow", "-a", head_node.address, env=head_node.env, cwd=project)
    assert follow.returncode == 1 and "job long-1 STOPPED" in follow.stderr
    with pytest.raises(OSError) as no_reader:  # the stage's process is gone: nobody has the FIFO open for reading
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert no_reader.value.errno == errno.ENXIO


@pytest.mark.slow
def test_client_without_the_token_is_told_where_it_is(head_node, tmp_path):
    env = dict(head_node.env, HOME=str(tmp_path))  # no ~/.ray/auth_token here
    start = time.monotonic()
    result = semidff("job", "list", "--address", head_node.address, env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "requires an auth token and no token was found here" in result.stderr
    assert "~/.ray/auth_token" in result.stderr and "RAY_AUTH_MODE=token" in result.stderr
    assert time.monotonic() - start < 15
    unknown = semidff("job", "status", "no-such-job", "-a", head_node.address, env=head_node.env, cwd=tmp_path)
    assert unknown.returncode == 2 and "no job 'no-such-job'" in unknown.stderr
