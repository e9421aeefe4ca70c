"""The ``semidff`` command line: one subcommand per stage, each a thin wrapper over a function.

Every command takes ``-c/--config FILE.yaml`` (optional: the embedded defaults are complete) and
any number of dotted ``key=value`` overrides, e.g.::

    semidff config show -c jobs/configs/tiny.yaml video.key_interval=5
    semidff benchmark detect --frames 20 --repeats 3
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator, List, Optional

import click
import typer

from semidff.config import Config, ConfigError, load_config

app = typer.Typer(
    help="Semi-Supervised DFF: fast video object detection with feature flow learned from unlabeled video.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the configuration schema and resolved configs.", no_args_is_help=True)
benchmark_app = typer.Typer(help="Measured performance scripts (results go to BENCHMARKS.md).", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(benchmark_app, name="benchmark")

CONFIG_OPTION = typer.Option(None, "--config", "-c", help="YAML config file; omitted keys take the embedded defaults.")
OVERRIDES_ARGUMENT = typer.Argument(None, help="Dotted overrides, e.g. model.backbone.depth=50 video.key_interval=5.")


@contextlib.contextmanager
def exit_on(*errors: type[Exception], code: int = 2) -> Iterator[None]:
    """Turn ``errors`` raised inside into one ``error: <message>`` line on stderr and exit status
    ``code`` (2: bad input, config or arguments; 1: the work itself failed). Anything else, and
    typer's and click's own exits (RuntimeErrors, which a nested ``exit_on(RuntimeError)`` would
    otherwise catch), pass through."""
    try:
        yield
    except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort):
        raise
    except errors as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code) from None


def resolve_config(config: Optional[Path], overrides: Optional[List[str]]) -> Config:
    """Load the config or exit with status 2 and a message naming every bad key."""
    with exit_on(ConfigError):
        return load_config(config, overrides or [])


@config_app.command("show")
def config_show(config: Optional[Path] = CONFIG_OPTION, overrides: Optional[List[str]] = OVERRIDES_ARGUMENT) -> None:
    """Print the resolved configuration (file + overrides + defaults) as YAML."""
    typer.echo(resolve_config(config, overrides).to_yaml(), nl=False)


@benchmark_app.command("detect")
def benchmark_detect(
    config: Optional[Path] = CONFIG_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    frames: int = typer.Option(20, min=2, help="frames per timed run (use a multiple of video.key_interval)"),
    repeats: int = typer.Option(3, min=1, help="timed runs per mode; the median is reported"),
    height: int = typer.Option(600, min=32, help="input frame height in pixels (before the config's resize)"),
    width: int = typer.Option(1000, min=32, help="input frame width in pixels"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="also write the result as JSON here"),
) -> None:
    """Frames/s of `frame` vs `flow` mode at the configured key interval (default ResNet-101 at 600x1000)."""
    from semidff.benchmarks.detect import format_report, run_detect_benchmark

    cfg = resolve_config(config, overrides)
    result = run_detect_benchmark(
        cfg, num_frames=frames, repeats=repeats, frame_size=(height, width), progress=lambda line: typer.echo(line, err=True)
    )
    typer.echo(format_report(result))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(result.to_json())


@app.command("manifest")
def manifest(
    inputs: List[str] = typer.Argument(
        ..., help="video files, directories (recursive), globs ('raw/**/*.mp4'), .txt lists of paths/URIs, or file:// s3:// gs:// URIs"
    ),
    output: str = typer.Option(..., "--output", "-o", help="output directory or URI; manifest.parquet is written (and extended on rerun) there"),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1, help="CPUs of the local Ray started when no cluster is given (default: all)"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray)"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="probe again the videos recorded as failed"),
    progress_every: int = typer.Option(100, min=1, help="print a progress line every this many probed videos"),
    probe_timeout: float = typer.Option(
        120.0, "--probe-timeout", min=0.0, metavar="SECONDS",
        help="a probe running longer is killed and its video recorded with reason 'timeout' (a hung decoder); 0: no limit",
    ),
) -> None:
    """Probe every video once (frames, fps, size, duration) into manifest.parquet; bad files become rows, not crashes."""
    from pipelines.manifest import ManifestError, build_manifest

    with exit_on(ManifestError):
        summary = build_manifest(
            inputs, output, num_cpus=num_cpus, address=address, retry_failed=retry_failed,
            progress_every=progress_every, progress=lambda line: typer.echo(line, err=True), probe_timeout_s=probe_timeout or None,
        )
    typer.echo(summary.format())


data_app = typer.Typer(help="Labeled video datasets: check a custom (semidff-video/1) dataset file.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("check")
def data_check(
    path: Path = typer.Argument(..., help="a semidff-video/1 JSON file (format: README, 'Custom labeled video format')"),
    no_files: bool = typer.Option(False, "--no-files", help="do not check that the video files and frame folders exist"),
    probe: bool = typer.Option(False, "--probe", help="also open every video with decord and compare its size and frame count"),
) -> None:
    """Report every problem of a custom dataset file, one 'location: message' line each (exit 1), or 'ok: ...' (exit 0)."""
    from semidff.data.custom_format import CustomFormatError, load_custom_dataset

    try:
        dataset = load_custom_dataset(path, check_files=not no_files, probe=probe)
    except CustomFormatError as exc:
        for problem in exc.problems:
            typer.echo(str(problem))
        typer.echo(f"{path}: {len(exc.problems)} problem(s)", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"ok: {len(dataset.videos)} videos, {dataset.num_objects()} annotations, {dataset.num_classes()} classes")


@app.command("detect")
def detect(
    video: str = typer.Argument(..., help="a video file (any container decord reads: mp4, mkv, webm, avi, ...)"),
    teacher: Path = typer.Option(..., "--teacher", help="teacher checkpoint (semidff train-teacher writes teacher.pt)"),
    out: Path = typer.Option(..., "--out", "-o", help="annotated video to write (.mp4, .mkv, .avi or .mov; encoded as H.264)"),
    flow: Optional[Path] = typer.Option(None, "--flow", help="flow checkpoint (semidff train writes flow.pt); needed for mode flow"),
    mode: Optional[str] = typer.Option(None, "--mode", help="frame | copy | flow (default: flow with --flow, else frame)"),
    key_interval: int = typer.Option(10, "--key-interval", min=1, help="ΔT: the teacher runs on every ΔT-th frame"),
    score_threshold: float = typer.Option(0.5, "--score-threshold", min=0.0, max=1.0, help="draw detections scoring at least this"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
) -> None:
    """Detect objects in VIDEO and write it with boxes, class names, scores, key/propagated frames marked and frames/s."""
    from jobs.detect import run as run_detect
    from semidff.checkpoint import ModelCheckpointError
    from semidff.video.decode import VideoOpenError

    with exit_on(ModelCheckpointError, ConfigError, VideoOpenError, ValueError, RuntimeError):
        summary = run_detect(
            video, str(teacher), str(out), str(flow) if flow else None, mode, key_interval, score_threshold, device,
            progress=lambda line: typer.echo(line, err=True),
        )
    typer.echo(summary.format())


@app.command("evaluate")
def evaluate(
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    teacher: Path = typer.Option(..., "--teacher", help="teacher checkpoint (semidff train-teacher): runs frame and copy mode"),
    flow: Optional[Path] = typer.Option(None, "--flow", help="flow checkpoint (semidff train): its student R-FCN and flow net run flow mode"),
    output: Path = typer.Option(..., "--output", "-o", help="output folder: evaluation.md, results.json, evaluation.png, predictions/, config.yaml"),
    config: Optional[Path] = CONFIG_OPTION,
    modes: Optional[str] = typer.Option(None, "--modes", help="comma-separated modes, e.g. frame,copy,flow (default: evaluation.modes)"),
    key_intervals: Optional[str] = typer.Option(None, "--key-intervals", help="comma-separated ΔTs, e.g. 1,5,10 (default: evaluation.key_intervals)"),
    max_videos: Optional[int] = typer.Option(None, "--max-videos", min=1, help="evaluate only the dataset's first N videos"),
) -> None:
    """ImageNet VID mAP@0.5 (per class, per motion bucket) and frames/s of every mode and key interval on evaluation.data."""
    from jobs.evaluate import parse_key_intervals, parse_modes, run as run_evaluate
    from semidff.checkpoint import ModelCheckpointError
    from semidff.evaluation.run import EvaluationError
    from semidff.data.labeled import LabeledDataError

    cfg = resolve_config(config, overrides)
    with exit_on(EvaluationError, LabeledDataError, ModelCheckpointError, ConfigError):
        report = run_evaluate(
            cfg, str(teacher), str(flow) if flow else None, str(output), parse_modes(modes), parse_key_intervals(key_intervals),
            max_videos, progress=lambda line: typer.echo(line, err=True),
        )
    typer.echo(report.table)


SUBMIT_EPILOG = "Put the stage and its arguments after --, e.g. semidff submit --address http://127.0.0.1:8265 -- manifest /shared/videos -o /shared/runs/manifest"
ADDRESS_OPTION = typer.Option(
    None, "--address", "-a", help="the cluster's Ray dashboard (job server), http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS)"
)


@app.command("submit", epilog=SUBMIT_EPILOG)
def submit(
    stage_args: Optional[List[str]] = typer.Argument(None, help="the stage and its arguments (-c, key=value overrides, ...), after --"),
    address: Optional[str] = ADDRESS_OPTION,
    working_dir: Path = typer.Option(Path("."), "--working-dir", "-w", help="folder uploaded as the job's working directory (must hold semidff/, pipelines/, jobs/)"),
    gpus: Optional[float] = typer.Option(None, "--gpus", min=0.0, help="GPUs reserved for the entry-point process (stages that compute in the driver: evaluate, detect, benchmark)"),
    cpus: Optional[float] = typer.Option(None, "--cpus", min=0.0, help="CPUs reserved for the entry-point process (default: 1 with --gpus, else none)"),
    env: Optional[List[str]] = typer.Option(None, "--env", "-e", help="KEY=VALUE environment variable for the job (repeatable), e.g. MLFLOW_TRACKING_URI=http://mlflow:5000"),
    runtime_env: Optional[Path] = typer.Option(None, "--runtime-env", help="YAML runtime env merged into the job's (env_vars, excludes, pip; see cluster/runtime_env.yaml)"),
    submission_id: Optional[str] = typer.Option(None, "--submission-id", help="job id to use (default: semidff-<stage>-<UTC time>-<4 hex>)"),
    no_wait: bool = typer.Option(False, "--no-wait", help="print the job id and return instead of streaming the logs"),
) -> None:
    """Run a semidff stage as a Ray job on a cluster: upload the working dir, stream the logs, exit 0 if it SUCCEEDED, 1 if it FAILED or was STOPPED."""
    from jobs import submit as jobs_submit

    jobs_submit.use_token_auth_if_available()  # before anything imports Ray (it reads RAY_AUTH_MODE once)
    if not stage_args:
        typer.echo(f"error: no stage to run. {SUBMIT_EPILOG}", err=True)
        raise typer.Exit(2)

    def warn(line: str) -> None:
        typer.echo(line, err=True)

    with exit_on(jobs_submit.SubmitError):
        job_id = submission_id or jobs_submit.default_submission_id(stage_args[0])
        jobs_submit.check_working_dir(working_dir)
        command = jobs_submit.parse_stage_command(stage_args, working_dir, job_id)
        job_env = jobs_submit.load_runtime_env(runtime_env, env or [])
        for line in command.warnings:
            warn(line)
        client = jobs_submit.connect(address, warn=warn)
        warn(f"submitting {command.entrypoint!r} with working dir {working_dir.resolve()} to {client.get_address()}")
        job_id = jobs_submit.submit_stage(client, command, working_dir, job_id, num_gpus=gpus, num_cpus=cpus, runtime_env=job_env)
    if no_wait:
        typer.echo(job_id)
        warn(f"submitted {job_id}: `semidff job logs {job_id} --follow`, `semidff job status {job_id}`, `semidff job stop {job_id}`")
        return
    warn(f"submitted {job_id}; streaming its logs (Ctrl-C stops following, not the job)")
    raise typer.Exit(_follow(jobs_submit, client, job_id))


def _follow(jobs_submit, client, job_id: str) -> int:
    """Stream a job's logs until it finishes; its exit code (Ctrl-C detaches with 130)."""
    try:
        status = jobs_submit.follow_job(client, job_id, write=lambda text: typer.echo(text, nl=False), warn=lambda line: typer.echo(line, err=True))
    except KeyboardInterrupt:
        typer.echo(f"\nstopped following {job_id}; it keeps running (`semidff job stop {job_id}` stops it)", err=True)
        return 130
    except jobs_submit.SubmitError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    typer.echo(f"job {job_id} {status}", err=True)
    return jobs_submit.exit_code_for(status)


job_app = typer.Typer(help="Jobs submitted with `semidff submit`: status, logs, stop, list.", no_args_is_help=True)
app.add_typer(job_app, name="job")
JOB_ID_ARGUMENT = typer.Argument(..., help="the submission id `semidff submit` printed")


def _job_client(address: Optional[str]):
    """(jobs.submit module, client) for the job commands, or exit 2 with the reason."""
    from jobs import submit as jobs_submit

    jobs_submit.use_token_auth_if_available()
    with exit_on(jobs_submit.SubmitError):
        return jobs_submit, jobs_submit.connect(address, warn=lambda line: typer.echo(line, err=True))


def _job_command(address: Optional[str], action) -> None:
    jobs_submit, client = _job_client(address)
    with exit_on(jobs_submit.SubmitError):
        output = action(jobs_submit, client)
    if output:
        typer.echo(output)


@job_app.command("status")
def job_status(job_id: str = JOB_ID_ARGUMENT, address: Optional[str] = ADDRESS_OPTION) -> None:
    """Status, message, stage, entry point, times and exit code of a job."""
    _job_command(address, lambda js, client: js.describe_job(client, job_id))


@job_app.command("logs")
def job_logs(
    job_id: str = JOB_ID_ARGUMENT,
    address: Optional[str] = ADDRESS_OPTION,
    follow: bool = typer.Option(False, "--follow", "-f", help="stream until the job finishes, then exit with its status (0 SUCCEEDED, 1 otherwise)"),
) -> None:
    """Print a job's logs (driver stdout and stderr)."""
    if follow:
        jobs_submit, client = _job_client(address)
        raise typer.Exit(_follow(jobs_submit, client, job_id))
    _job_command(address, lambda js, client: js.job_logs(client, job_id).rstrip("\n"))


@job_app.command("stop")
def job_stop(
    job_id: str = JOB_ID_ARGUMENT,
    address: Optional[str] = ADDRESS_OPTION,
    wait: float = typer.Option(60.0, "--wait", min=0.0, help="seconds to wait for the job to stop"),
) -> None:
    """Stop a running job (SIGTERM, then SIGKILL after a few seconds) and print its final status."""
    jobs_submit, client = _job_client(address)
    with exit_on(jobs_submit.SubmitError):
        status = jobs_submit.stop_job(client, job_id, wait_s=wait)
    typer.echo(f"{job_id}: {status}")
    if status not in jobs_submit.FINISHED_STATUSES:
        typer.echo(f"error: {job_id} is still {status} after {wait:g} s", err=True)
        raise typer.Exit(1)


@job_app.command("list")
def job_list(address: Optional[str] = ADDRESS_OPTION) -> None:
    """The jobs submitted to the cluster, oldest first: id, status, stage, start time (UTC)."""
    _job_command(address, lambda js, client: js.list_jobs(client))


@app.command("train-teacher")
def train_teacher(
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    output: Path = typer.Option(..., "--output", "-o", help="output folder: teacher.pt, config.yaml, ray_results/ (rerun the same command to resume)"),
    config: Optional[Path] = CONFIG_OPTION,
    run_name: Optional[str] = typer.Option(None, "--run-name", help="Ray Train / MLflow run name (default: teacher-<output folder name>)"),
) -> None:
    """Stage 1: train the R-FCN teacher on teacher_training.data (Eq. 2-3) with Ray Train; resumes from the latest checkpoint."""
    from jobs.train_teacher import TeacherTrainingError, run as run_train_teacher
    from semidff.data.labeled import LabeledDataError

    cfg = resolve_config(config, overrides)
    with exit_on(TeacherTrainingError, code=1), exit_on(ConfigError, LabeledDataError):
        result = run_train_teacher(cfg, output, run_name=run_name, progress=lambda line: typer.echo(line, err=True))
    losses = ", ".join(f"{k} {v:.4f}" for k, v in result.final_losses.items())
    typer.echo(f"{result.checkpoint}: {result.epochs} epochs, {result.steps} steps, last epoch {losses}; sha256 {result.sha256}")


@benchmark_app.command("teacher")
def benchmark_teacher(
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    output: Path = typer.Option(Path("runs/benchmark_teacher"), "--output", "-o", help="work folder: synthetic data, teacher/, evaluation/, report.json"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: jobs/configs/tiny.yaml)"),
    train_videos: int = typer.Option(12, min=1, help="synthetic training videos"),
    val_videos: int = typer.Option(4, min=1, help="synthetic validation videos (another seed)"),
    frames: int = typer.Option(60, min=12, help="frames per synthetic video"),
) -> None:
    """Train the tiny teacher on the synthetic set on this machine, then its val mAP in frame and copy mode at ΔT=10."""
    from jobs.benchmark_teacher import TINY_CONFIG, format_report, run as run_benchmark
    from jobs.train_teacher import TeacherTrainingError
    from semidff.data.labeled import LabeledDataError

    cfg = resolve_config(config or TINY_CONFIG, overrides)
    with exit_on(TeacherTrainingError, code=1), exit_on(ConfigError, LabeledDataError):
        report = run_benchmark(
            cfg, output, train_videos=train_videos, val_videos=val_videos, num_frames=frames,
            progress=lambda line: typer.echo(line, err=True),
        )
    typer.echo(format_report(report))


@app.command("train")
def train(
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    teacher: Path = typer.Option(..., "--teacher", help="teacher checkpoint (semidff train-teacher writes teacher.pt)"),
    output: Path = typer.Option(..., "--output", "-o", help="output folder: flow.pt, config.yaml, ray_results/ (rerun the same command to resume)"),
    cache: Optional[str] = typer.Option(None, "--cache", help="teacher cache folder or URI (semidff cache); training.teacher_source=cache"),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="manifest folder (semidff manifest), with training.teacher_source=on_the_fly"),
    config: Optional[Path] = CONFIG_OPTION,
    run_name: Optional[str] = typer.Option(None, "--run-name", help="Ray Train run name (default: derived from config, teacher and data)"),
) -> None:
    """Stage 2: learn the feature flow from the teacher (step A regression, step B semantic) with Ray Train; resumes."""
    from jobs.train_flow import FlowTrainingError, run as run_train_flow
    from semidff.cache.info import CacheError
    from semidff.checkpoint import ModelCheckpointError

    cfg = resolve_config(config, overrides)
    with exit_on(RuntimeError, code=1), exit_on(ConfigError, ModelCheckpointError, CacheError, FlowTrainingError):
        result = run_train_flow(
            cfg, cache, str(teacher), str(output), manifest_dir=str(manifest) if manifest else None, run_name=run_name,
            progress=lambda line: typer.echo(line, err=True),
        )
    losses = ", ".join(f"{k} {v:.4f}" for k, v in result.final_losses.items() if v)
    validation = "".join(f", {k} {v:.4f}" for k, v in result.validation.items())
    typer.echo(f"{result.flow_checkpoint}: {result.epochs} epochs, {result.global_step} steps, last epoch {losses}{validation}; sha256 {result.sha256}")


@app.command("tune")
def tune(
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    cache: str = typer.Option(..., "--cache", help="teacher cache folder (semidff cache): every trial trains on it"),
    teacher: Path = typer.Option(..., "--teacher", help="the teacher checkpoint the cache was built with"),
    output: Path = typer.Option(..., "--output", "-o", help="sweep folder: trials/, tune/, trials.md/.csv, plots/, best.json (rerun to resume)"),
    config: Optional[Path] = CONFIG_OPTION,
    no_resume: bool = typer.Option(False, "--no-resume", help="refuse to continue a sweep already in the output folder"),
) -> None:
    """Sweep tune.search_space (key interval, loss weights, lr, ...) with Ray Tune and ASHA; resumes an interrupted sweep."""
    from jobs.tune import SweepError, run as run_tune
    from semidff.cache.info import CacheError
    from semidff.checkpoint import ModelCheckpointError

    cfg = resolve_config(config, overrides)
    with exit_on(ConfigError, ModelCheckpointError, CacheError, SweepError):
        result = run_tune(cfg, cache, str(teacher), str(output), resume=not no_resume, progress=lambda line: typer.echo(line, err=True))
    typer.echo(result.files["trials_md"].read_text(), nl=False)
    if result.best is None:
        typer.echo(f"no trial reported {result.metric}; see {output / 'trials.md'} and each trial's error")
        raise typer.Exit(1)
    typer.echo(f"best: {result.best.trial_id} {result.best.values} {result.metric} {result.best.metric} -> "
               f"{result.best_flow_checkpoint or result.best.checkpoint_path} (MLflow run {result.best.run_id})")


@app.command("lineage")
def lineage(
    target: str = typer.Argument(..., help="an MLflow run id, a registered model (models:/name/1, name/1, name@alias, name), or an output folder"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow store (default: the folder's recorded store, else $MLFLOW_TRACKING_URI)"),
) -> None:
    """Print the chain of runs and inputs behind a model or run, back to the manifest and the teacher checkpoint."""
    from semidff.lineage import LineageError, format_lineage, trace_lineage

    with exit_on(LineageError):
        chain = trace_lineage(target, tracking_uri)
    typer.echo(format_lineage(chain))


@app.command("clips")
def clips(
    manifest_dir: str = typer.Argument(..., help="the manifest stage's output directory (or its manifest.parquet)"),
    config: Optional[Path] = CONFIG_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    examples: int = typer.Option(5, min=0, help="short videos without clips to name"),
) -> None:
    """Report the clip plan of a manifest (clips.* keys): clips, frames decoded per clip and in all, with
    keys as planned and on codec keyframes, and videos too short for any clip. Nothing is decoded."""
    from pipelines.clips import report_clip_plan

    cfg = resolve_config(config, overrides)
    with exit_on(ValueError):  # no manifest there, or a plan argument the config schema let through
        report = report_clip_plan(manifest_dir, cfg, examples=examples)
    typer.echo(report.format())


@benchmark_app.command("decode")
def benchmark_decode(
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    config: Optional[Path] = CONFIG_OPTION,
    videos: int = typer.Option(8, min=1, help="generated 1280x720 H.264 files per keyframe interval"),
    seconds: float = typer.Option(60.0, min=1.0, help="length of each file, in seconds (30 fps)"),
    gops: str = typer.Option("250,30", help="comma-separated keyframe intervals of the files"),
    repeats: int = typer.Option(3, min=1, help="timed rounds; medians are reported"),
    memory_videos: str = typer.Option("10,200", help="comma-separated corpus sizes for the peak-memory measure ('' to skip)"),
    cache_dir: Optional[Path] = typer.Option(None, help="where the generated videos are kept (default: ~/.cache/semidff/benchmark_decode)"),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1, help="CPUs of the local Ray (default: ray.num_cpus, else all)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="also write the result as JSON here"),
) -> None:
    """Clips/s and decoded frames/s of the clip stage vs ray.data.read_videos, the ffmpeg CLI and the
    decoding the codec forces (GOP 250 and 30), and peak memory on a small vs a large corpus."""
    from jobs.benchmark_decode import format_report, parse_ints, run as run_benchmark

    cfg = resolve_config(config, overrides)
    with exit_on(ValueError):
        gop_list, memory_list = parse_ints(gops), parse_ints(memory_videos)
    result = run_benchmark(
        cfg, videos=videos, seconds=seconds, gops=gop_list, repeats=repeats, memory_counts=memory_list,
        cache_dir=cache_dir, num_cpus=num_cpus, progress=lambda line: typer.echo(line, err=True),
        command="semidff benchmark decode " + " ".join(sys.argv[3:]),
    )
    typer.echo(format_report(result))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(result.to_json())


class _CacheGroup(typer.core.TyperGroup):
    """`semidff cache MANIFEST_DIR ...` builds (the `build` subcommand); `semidff cache inspect DIR` inspects."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["build", *args]
        return super().parse_args(ctx, args)


cache_app = typer.Typer(
    cls=_CacheGroup,
    no_args_is_help=True,
    help="The teacher cache: `semidff cache MANIFEST_DIR --teacher T.pt -o CACHE_DIR` computes the teacher's outputs on every "
    "planned clip once (resumable); `semidff cache inspect CACHE_DIR` reports what a cache holds.",
)
app.add_typer(cache_app, name="cache")


@cache_app.command("build")
def cache_build(
    manifest_dir: str = typer.Argument(..., help="the manifest stage's output folder (semidff manifest)"),
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    teacher: Path = typer.Option(..., "--teacher", help="teacher checkpoint (semidff train-teacher writes teacher.pt)"),
    output: str = typer.Option(..., "--output", "-o", help="cache folder or URI; a rerun skips the clips already written"),
    config: Optional[Path] = CONFIG_OPTION,
) -> None:
    """Run the frozen teacher on every planned clip (cache.*, clips.*, preprocess.* keys) into Parquet; resumable, exactly once per clip."""
    from jobs.cache import run as run_cache
    from semidff.cache.info import CacheError
    from semidff.checkpoint import ModelCheckpointError

    cfg = resolve_config(config, overrides)
    with exit_on(CacheError, ModelCheckpointError, ValueError):
        summary = run_cache(cfg, manifest_dir, str(teacher), output, progress=lambda line: typer.echo(line, err=True))
    typer.echo(summary.format())


@cache_app.command("inspect")
def cache_inspect(
    cache_dir: str = typer.Argument(..., help="a teacher cache folder or URI"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Counts (clips, pairs, videos, failures by reason), bytes per clip per column, metadata; exit 1 if a file is corrupt."""
    from jobs.cache import inspect

    raise typer.Exit(inspect(cache_dir, as_json))


@benchmark_app.command("cache")
def benchmark_cache(
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: jobs/configs/tiny.yaml)"),
    videos: int = typer.Option(6, min=1, help="synthetic videos"),
    frames: int = typer.Option(100, min=10, help="frames per synthetic video"),
    repeats: int = typer.Option(3, min=1, help="timed pipeline runs (each followed by a bare-loop run); medians are reported"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="also write the result as JSON here"),
) -> None:
    """Teacher cache: clips/s of the actor pool vs a bare torch loop, bytes per clip per precision, int8/fp16 loss change, 10M-clip sizing."""
    from jobs.benchmark_cache import TINY_CONFIG, format_report, run as run_benchmark

    cfg = resolve_config(config or TINY_CONFIG, overrides)
    result = run_benchmark(cfg, num_videos=videos, num_frames=frames, repeats=repeats, progress=lambda line: typer.echo(line, err=True))
    typer.echo(format_report(result))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(result.to_json())


@benchmark_app.command("train")
def benchmark_train(
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    output: Path = typer.Option(Path("runs/benchmark_train"), "--output", "-o", help="work folder: data, cache, Ray Train runs, report.json (data and cache reused)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: jobs/configs/tiny.yaml)"),
    workers: str = typer.Option("1,2", "--workers", help="comma-separated Ray Train worker counts"),
    epochs: int = typer.Option(3, min=1, help="epochs of each Ray Train run"),
    repeats: int = typer.Option(3, min=1, help="passes of the bare torch loop"),
    videos: int = typer.Option(4, min=1, help="synthetic videos"),
    frames: int = typer.Option(60, min=12, help="frames per synthetic video"),
) -> None:
    """Flow training pairs/s per worker: the Ray Train loop against a bare torch loop over the same cache."""
    from jobs.benchmark_train import PLAN_OVERRIDES, TINY_CONFIG, format_report, run as run_benchmark

    cfg = resolve_config(config or TINY_CONFIG, PLAN_OVERRIDES + list(overrides or []))
    try:
        counts = tuple(int(count) for count in workers.split(","))
    except ValueError:
        typer.echo(f"error: --workers {workers!r}: expected comma-separated integers, e.g. 1,2", err=True)
        raise typer.Exit(2) from None
    report = run_benchmark(cfg, output, counts, epochs, repeats, videos, frames, progress=lambda line: typer.echo(line, err=True))
    typer.echo(format_report(report))


@app.command("demo")
def demo(
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    output: Path = typer.Option(Path("runs/demo"), "--output", "-o", help="work folder; a rerun reuses every step it finished with the same settings"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: jobs/configs/tiny.yaml, the CPU model)"),
) -> None:
    """The whole system on this machine: synthetic videos → teacher → manifest → cache → flow training
    (regression, semantic, two-step) → evaluation of frame/copy/flow at ΔT 1, 5, 10, 20 → report.

    Local Ray, MLflow SQLite store in the output folder, no download, no GPU; about 8 minutes on 2 idle CPU cores.
    Sizes: demo.* keys (e.g. demo.unlabeled_videos=32); training.* and evaluation.key_intervals apply too.
    """
    from jobs.demo import DEMO_OVERRIDES, TINY_CONFIG, DemoError, format_result, run as run_demo

    cfg = resolve_config(config or TINY_CONFIG, DEMO_OVERRIDES + list(overrides or []))
    with exit_on(DemoError):
        result = run_demo(cfg, output, progress=lambda line: typer.echo(line, err=True))
    typer.echo(format_result(result))


def main() -> None:
    """Console-script entry point."""
    app(prog_name="semidff")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
