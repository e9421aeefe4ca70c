"""Submit a semidff stage to a Ray cluster as a Ray job, and follow, inspect or stop it.

    semidff submit --address http://127.0.0.1:8265 -- manifest /shared/videos -o /shared/runs/manifest
    semidff submit --address http://127.0.0.1:8265 --gpus 1 -- evaluate -c cluster/semidff-gpu.yaml ...
    semidff job status ID | semidff job logs ID --follow | semidff job stop ID | semidff job list

The recipe: the stage command line checked against the ``semidff`` app -> the working directory
checked -> the cluster's job server (``pipelines.job_submission``: address, auth, upload, job
API) -> the job's id, its streamed logs and exit status.

What travels: the working directory (``--working-dir``, default: the current one), less
``pipelines.job_submission.DEFAULT_EXCLUDES`` and what its ``.gitignore``/``.rayignore`` name; the
entry point is ``python -m jobs.cli <stage> <args>``, so the job runs the code submitted. The
stage's arguments and config (``-c`` plus ``key=value`` overrides) are checked here, before any
cluster time is spent; a ``-c`` file the upload would not hold travels as a copy in
``.semidff-submit/``. Every other path in the arguments is read on the cluster: give absolute
paths on shared storage or URIs (``s3://``, ``gs://``). Address (``--address``, else
``$RAY_API_SERVER_ADDRESS``, else ``$RAY_ADDRESS``) and token auth: ``pipelines/job_submission.py``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import typer

from jobs.cli_common import exit_on
from pipelines.job_submission import (
    FINISHED_STATUSES,
    STAGING_DIR,
    StageCommand,
    SubmitError,
    check_working_dir,
    connect,
    default_submission_id,
    describe_job,
    exit_code_for,
    follow_job,
    job_logs,
    list_jobs,
    load_runtime_env,
    path_in_upload,
    stop_job,
    submit_stage,
    use_token_auth_if_available,
)

# Stages the CLI has that make no sense as a job (they talk to the cluster themselves).
NOT_SUBMITTABLE = ("submit", "job")


# ---------------------------------------------------------------------------------------------
# The stage command


def parse_stage_command(stage_args: Sequence[str], working_dir: Path, submission_id: str, cli: Any) -> StageCommand:
    """Check ``stage_args`` against ``cli``, the semidff command line as a click command (stage name,
    options, config and overrides; ``semidff submit`` passes the app it runs in), and point a ``-c``
    file at where the job will find it. Raises SubmitError."""
    from semidff.config import ConfigError, load_config

    words = list(stage_args)
    root = cli
    choices = ", ".join(name for name in sorted(root.commands) if name not in NOT_SUBMITTABLE)
    if not words or words[0].startswith("-"):
        raise SubmitError(f"name the stage to run after --: one of {choices}")
    if words[0] in NOT_SUBMITTABLE or words[0] not in root.commands:
        raise SubmitError(f"unknown stage {words[0]!r}: one of {choices}")
    # Parse level by level exactly as the CLI will on the cluster (a group may rewrite its arguments,
    # e.g. `cache DIR` = `cache build DIR`), without running anything. typer.Exit after --help propagates.
    command, ctx, path, remaining = root, None, [], words
    try:
        while True:
            if _is_group(command) and path and not remaining:
                raise SubmitError(f"name the stage to run after `{' '.join(path)}`: one of {', '.join(sorted(command.commands))}")
            ctx = command.make_context(path[-1] if path else "semidff", list(remaining), parent=ctx)
            if not _is_group(command):
                break
            remaining = [*getattr(ctx, "_protected_args", getattr(ctx, "protected_args", [])), *ctx.args]
            name, command, remaining = command.resolve_command(ctx, remaining)
            path.append(name)
    except Exception as exc:  # click's usage errors (typer >= 0.20 vendors its own click): bad or missing parameters
        if not hasattr(exc, "format_message"):
            raise
        raise SubmitError(f"semidff {' '.join(path) or words[0]}: {exc.format_message()}") from None

    result = StageCommand(stage=" ".join(path), argv=words)
    config = ctx.params.get("config")
    if "config" in ctx.params or "overrides" in ctx.params:
        try:
            load_config(config, ctx.params.get("overrides") or [])
        except ConfigError as exc:
            raise SubmitError(f"checked before submitting (-c names a file on this machine): {exc}") from None
    if config is not None:
        result.config_file = Path(config)
        job_path = path_in_upload(result.config_file, working_dir)
        if job_path is None:
            digest = hashlib.sha256(result.config_file.read_bytes()).hexdigest()[:8]
            job_path = f"{STAGING_DIR}/{submission_id}-{digest}-{result.config_file.name}"
            result.staged_config = job_path
        result.argv = _replace_config_argument(words, job_path)
    for name, value in ctx.params.items():
        is_path = isinstance(value, Path) or (name in ("output", "output_dir", "out") and isinstance(value, str))
        if name != "config" and is_path and "://" not in str(value) and not os.path.isabs(os.path.expanduser(str(value))):
            result.warnings.append(
                f"warning: {value} is a relative path: the job runs in a temporary copy of the working directory on the "
                "cluster (without outputs, media and weights), so it is read or written there; give an absolute path "
                "on shared storage or a URI (s3://, gs://)"
            )
    return result


def _is_group(command) -> bool:
    """Whether a click command is a group of subcommands (duck-typed: typer may vendor its own click)."""
    return isinstance(getattr(command, "commands", None), dict) and hasattr(command, "resolve_command")


def _replace_config_argument(words: list[str], job_path: str) -> list[str]:
    """``words`` with the value of ``-c``/``--config`` (in any of click's spellings) set to ``job_path``."""
    out, i = [], 0
    while i < len(words):
        word = words[i]
        if word in ("-c", "--config") and i + 1 < len(words):
            out += [word, job_path]
            i += 2
            continue
        if word.startswith("--config="):
            word = "--config=" + job_path
        elif word.startswith("-c") and not word.startswith("--") and len(word) > 2:
            word = "-c" + job_path
        out.append(word)
        i += 1
    return out


# ---------------------------------------------------------------------------------------------
# Command line (`semidff submit`, `semidff job status|logs|stop|list`)
#
# No `python -m jobs.submit`: a stage is checked against the whole `semidff` app before it is
# submitted, and that app (jobs/cli.py) is what runs this module's commands.

SUBMIT_EXAMPLE = "semidff submit --address http://127.0.0.1:8265 -- manifest /shared/videos -o /shared/runs/manifest"
ADDRESS_OPTION = typer.Option(
    None, "--address", "-a", help="the cluster's Ray dashboard (job server), http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS)"
)
JOB_ID_ARGUMENT = typer.Argument(..., help="the submission id `semidff submit` printed")


def _warn(line: str) -> None:
    typer.echo(line, err=True)


def submit_command(
    ctx: typer.Context,
    stage_args: Optional[list[str]] = typer.Argument(None, help="the stage and its arguments (-c, key=value overrides, ...), after --"),
    address: Optional[str] = ADDRESS_OPTION,
    working_dir: Path = typer.Option(Path("."), "--working-dir", "-w", help="folder uploaded as the job's working directory (must hold semidff/, pipelines/, jobs/)"),
    gpus: Optional[float] = typer.Option(None, "--gpus", min=0.0, help="GPUs reserved for the entry-point process (stages that compute in the driver: evaluate, detect, benchmark)"),
    cpus: Optional[float] = typer.Option(None, "--cpus", min=0.0, help="CPUs reserved for the entry-point process (default: 1 with --gpus, else none)"),
    env: Optional[list[str]] = typer.Option(None, "--env", "-e", help="KEY=VALUE environment variable for the job (repeatable), e.g. MLFLOW_TRACKING_URI=http://mlflow:5000"),
    runtime_env: Optional[Path] = typer.Option(None, "--runtime-env", help="YAML runtime env merged into the job's (env_vars, excludes, pip; see cluster/runtime_env.yaml)"),
    submission_id: Optional[str] = typer.Option(None, "--submission-id", help="job id to use (default: semidff-<stage>-<UTC time>-<4 hex>)"),
    no_wait: bool = typer.Option(False, "--no-wait", help="print the job id and return instead of streaming the logs"),
) -> None:
    """Run a semidff stage as a Ray job on a cluster: upload the working dir, stream the logs, exit 0 if it SUCCEEDED, 1 if it FAILED or was STOPPED.

    Put the stage and its arguments after --, e.g. semidff submit --address http://127.0.0.1:8265 -- manifest /shared/videos -o /shared/runs/manifest
    """
    use_token_auth_if_available()  # before anything imports Ray (it reads RAY_AUTH_MODE once)
    if not stage_args:
        typer.echo(f"error: no stage to run. Put the stage and its arguments after --, e.g. {SUBMIT_EXAMPLE}", err=True)
        raise typer.Exit(2)
    with exit_on(SubmitError):
        job_id = submission_id or default_submission_id(stage_args[0])
        check_working_dir(working_dir)
        command = parse_stage_command(stage_args, working_dir, job_id, cli=ctx.find_root().command)
        job_env = load_runtime_env(runtime_env, env or [])
        for line in command.warnings:
            _warn(line)
        client = connect(address, warn=_warn)
        _warn(f"submitting {command.entrypoint!r} with working dir {working_dir.resolve()} to {client.get_address()}")
        job_id = submit_stage(client, command, working_dir, job_id, num_gpus=gpus, num_cpus=cpus, runtime_env=job_env)
    if no_wait:
        typer.echo(job_id)
        _warn(f"submitted {job_id}: `semidff job logs {job_id} --follow`, `semidff job status {job_id}`, `semidff job stop {job_id}`")
        return
    _warn(f"submitted {job_id}; streaming its logs (Ctrl-C stops following, not the job)")
    raise typer.Exit(_follow(client, job_id))


def _follow(client, job_id: str) -> int:
    """Stream a job's logs until it finishes; its exit code (Ctrl-C detaches with 130)."""
    try:
        status = follow_job(client, job_id, write=lambda text: typer.echo(text, nl=False), warn=_warn)
    except KeyboardInterrupt:
        typer.echo(f"\nstopped following {job_id}; it keeps running (`semidff job stop {job_id}` stops it)", err=True)
        return 130
    except SubmitError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    typer.echo(f"job {job_id} {status}", err=True)
    return exit_code_for(status)


def _job_client(address: Optional[str]):
    """The job server's client for the job commands, or exit 2 with the reason."""
    use_token_auth_if_available()
    with exit_on(SubmitError):
        return connect(address, warn=_warn)


def _job_command(address: Optional[str], action: Callable[[Any], str]) -> None:
    client = _job_client(address)
    with exit_on(SubmitError):
        output = action(client)
    if output:
        typer.echo(output)


def job_status_command(job_id: str = JOB_ID_ARGUMENT, address: Optional[str] = ADDRESS_OPTION) -> None:
    """Status, message, stage, entry point, times and exit code of a job."""
    _job_command(address, lambda client: describe_job(client, job_id))


def job_logs_command(
    job_id: str = JOB_ID_ARGUMENT,
    address: Optional[str] = ADDRESS_OPTION,
    follow: bool = typer.Option(False, "--follow", "-f", help="stream until the job finishes, then exit with its status (0 SUCCEEDED, 1 otherwise)"),
) -> None:
    """Print a job's logs (driver stdout and stderr)."""
    if follow:
        raise typer.Exit(_follow(_job_client(address), job_id))
    _job_command(address, lambda client: job_logs(client, job_id).rstrip("\n"))


def job_stop_command(
    job_id: str = JOB_ID_ARGUMENT,
    address: Optional[str] = ADDRESS_OPTION,
    wait: float = typer.Option(60.0, "--wait", min=0.0, help="seconds to wait for the job to stop"),
) -> None:
    """Stop a running job (SIGTERM, then SIGKILL after a few seconds) and print its final status."""
    client = _job_client(address)
    with exit_on(SubmitError):
        status = stop_job(client, job_id, wait_s=wait)
    typer.echo(f"{job_id}: {status}")
    if status not in FINISHED_STATUSES:
        typer.echo(f"error: {job_id} is still {status} after {wait:g} s", err=True)
        raise typer.Exit(1)


def job_list_command(address: Optional[str] = ADDRESS_OPTION) -> None:
    """The jobs submitted to the cluster, oldest first: id, status, stage, start time (UTC)."""
    _job_command(address, lambda client: list_jobs(client))
