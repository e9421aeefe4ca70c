"""Talking to a Ray cluster's job API: the address and its auth, the working-directory upload, and
submitting, following, inspecting and stopping a job (``jobs/submit.py`` holds the commands).

    client = connect("http://127.0.0.1:8265")                 # probed within seconds, token auth checked
    job_id = submit_stage(client, StageCommand("manifest", ["manifest", "/shared/videos", "-o", "/shared/m"]),
                          Path("."), default_submission_id("manifest"))
    status = follow_job(client, job_id, write=print)          # SUCCEEDED | FAILED | STOPPED

What travels: the working directory, zipped by Ray without :data:`DEFAULT_EXCLUDES` nor what its
``.gitignore``/``.rayignore`` files name, uploaded to the head node and unpacked as the job's
current directory, first on ``PYTHONPATH``. A config file that the upload would not hold is
copied into ``<working dir>/``:data:`STAGING_DIR` for the submission and removed once Ray has it
(``StageCommand.staged_config``).

Address and auth. The address is the Ray dashboard's HTTP job server (``http://HEAD:8265``), from
the caller, else ``$RAY_API_SERVER_ADDRESS``, else ``$RAY_ADDRESS`` (as ``ray job submit``
does). It is checked for form and probed with a short timeout before Ray's SDK (whose requests
never time out) gets it, so a wrong address fails in seconds. A Ray 2.60 cluster started with a
token requires it, and Ray's client sends one only when ``RAY_AUTH_MODE=token``: when that variable is
unset and a token is at hand (``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH`` or
``~/.ray/auth_token``), :func:`use_token_auth_if_available` sets it for this process. Ray itself
is imported only by :func:`connect`, after that.
"""
from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import http.client
import json
import os
import shlex
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

DEFAULT_JOB_SERVER_PORT = 8265
PROBE_TIMEOUT_S = 3.0
AGENT_WAIT_S = 60.0  # how long a submission waits for a fresh head node's job agent
FINISHED_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
STAGING_DIR = ".semidff-submit"
# gitignore syntax, relative to the working directory (Ray's runtime_env "excludes").
DEFAULT_EXCLUDES = (
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".mypy_cache",
    ".ipynb_checkpoints",
    "*.egg-info",
    "/build",
    "/dist",
    "/outputs",  # stage outputs, MLflow stores and Ray results
    "/runs",
    "mlruns",
    "mlartifacts",
    "*.db",
    "ray_results",
    "*.parquet",  # manifests and teacher caches
    "_manifest_parts",
    "*.mp4",  # media and weights belong on shared storage, not in every job's upload
    "*.avi",
    "*.mkv",
    "*.mov",
    "*.webm",
    "*.m4v",
    "*.ts",
    "*.jpg",
    "*.jpeg",
    "*.png",
    "*.pth",
    "*.pt",
    "*.ckpt",
    "*.safetensors",
    "*.onnx",
    "*.zip",
    "*.tar",
    "*.tar.gz",
)
TOKEN_HELP = (
    "copy the cluster's token into ~/.ray/auth_token here (on the head node it is in ~/.ray/auth_token of the "
    "user who ran `ray start`, and `ray get-auth-token` prints it; on KubeRay it is the key auth_token of the "
    "Secret named in authOptions.secretName), or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH; then run with "
    "RAY_AUTH_MODE=token (semidff sets it when it finds a token and the variable is unset)"
)


class SubmitError(Exception):
    """A submission or job command that cannot go on; the message names the input and the fix."""


# ---------------------------------------------------------------------------------------------
# Address, auth and the connection


def resolve_address(address: Optional[str], environ: Optional[dict] = None) -> str:
    """``http(s)://host:port`` of the job server from ``address`` or the environment.

    A bare ``host`` or ``host:port`` gets ``http://`` (and port 8265). Raises SubmitError for a
    missing address, another scheme (``ray://`` is the Ray Client, ``host:6379`` the GCS: neither
    takes jobs), a bad port, or a path after the port.
    """
    environ = os.environ if environ is None else environ
    raw = address or environ.get("RAY_API_SERVER_ADDRESS") or environ.get("RAY_ADDRESS")
    if not raw or not raw.strip():
        raise SubmitError(
            "no cluster address: pass --address http://HEAD:8265 (the Ray dashboard, which serves the job API) "
            "or set RAY_API_SERVER_ADDRESS"
        )
    text = raw.strip().rstrip("/")
    if text in ("auto", "local"):
        raise SubmitError(f"address {raw!r} names no job server: pass --address http://HEAD:8265")
    scheme, sep, _ = text.partition("://")
    if not sep:
        text, scheme = "http://" + text, "http"
    if scheme not in ("http", "https"):
        raise SubmitError(
            f"address {raw!r}: jobs go to the Ray dashboard over HTTP, e.g. http://HEAD:8265, not {scheme}:// "
            "(ray://HEAD:10001 is the Ray Client, HEAD:6379 the GCS; neither takes jobs)"
        )
    parts = urllib.parse.urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise SubmitError(f"address {raw!r}: the port is not a number from 1 to 65535 (the dashboard's default is 8265)") from None
    if not parts.hostname:
        raise SubmitError(f"address {raw!r}: no host name (expected http://HEAD:8265)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise SubmitError(f"address {raw!r}: expected scheme://host:port with nothing after the port")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{scheme}://{host}:{port or DEFAULT_JOB_SERVER_PORT}"


def use_token_auth_if_available(environ: Optional[dict] = None) -> Optional[str]:
    """Set ``RAY_AUTH_MODE=token`` when it is unset and a token is at hand; return where the token
    comes from (for messages), or None when the client will send none.

    Must run before Ray's client is imported: Ray reads RAY_AUTH_MODE once per process.
    """
    environ = os.environ if environ is None else environ
    if environ.get("RAY_AUTH_TOKEN"):
        source = "$RAY_AUTH_TOKEN"
    elif environ.get("RAY_AUTH_TOKEN_PATH"):
        source = environ["RAY_AUTH_TOKEN_PATH"]
    elif (Path(environ.get("HOME") or Path.home()) / ".ray" / "auth_token").is_file():
        source = str(Path(environ.get("HOME") or Path.home()) / ".ray" / "auth_token")
    else:
        source = None
    mode = environ.get("RAY_AUTH_MODE")
    if mode is None and source is not None:
        environ["RAY_AUTH_MODE"] = "token"
        mode = "token"
    return source if (mode or "").lower() == "token" else None


@dataclass(frozen=True)
class JobServer:
    """What a short unauthenticated GET of ``/api/version`` told about the job server."""

    address: str
    ray_version: Optional[str]  # None when the server asked for a token first
    requires_token: bool


def probe_job_server(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> JobServer:
    """Check within ``timeout_s`` seconds that ``address`` is a Ray job server (HTTP 200 with a
    ``ray_version``, or 401 when it wants a token). Raises SubmitError saying what answered."""
    url = address + "/api/version"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status, body = response.status, response.read(65536)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(65536)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, (socket.timeout, TimeoutError)):
            what = f"no answer within {timeout_s:g} s (a firewall, or a host that is down)"
        elif isinstance(reason, ConnectionRefusedError):
            what = "connection refused (nothing listens on that port)"
        elif isinstance(reason, socket.gaierror):
            what = f"unknown host ({reason})"
        elif isinstance(reason, http.client.HTTPException) or isinstance(reason, ConnectionResetError):
            what = "it answered, but not over HTTP (the GCS port 6379? jobs go to the dashboard port, 8265 by default)"
        else:
            what = str(reason)
        raise SubmitError(
            f"cannot reach the Ray job server at {address}: {what}. Check that the head node runs and that this is "
            "its dashboard address: `ray start --head --dashboard-host=127.0.0.1` serves http://127.0.0.1:8265 on "
            "the head; from elsewhere open a tunnel first (an SSH tunnel to the head, see cluster/README.md, or "
            "`kubectl port-forward svc/<cluster>-head-svc 8265:8265`)"
        ) from None
    if status == 401:
        return JobServer(address, None, requires_token=True)
    if status == 200:
        try:
            version = json.loads(body)["ray_version"]
        except (ValueError, KeyError, TypeError):
            version = None
        if isinstance(version, str):
            return JobServer(address, version, requires_token=False)
    raise SubmitError(
        f"{url} answered HTTP {status} but not as a Ray job server: is {address} the Ray dashboard "
        "(port 8265 by default)?"
    )


def connect(address: Optional[str], warn: Callable[[str], None] = lambda line: None):
    """A ``ray.job_submission.JobSubmissionClient`` for the cluster at ``address`` (see
    :func:`resolve_address`), after a short probe and the auth checks; ``warn`` gets a line when
    the cluster's Ray version differs from this one."""
    resolved = resolve_address(address)
    token_source = use_token_auth_if_available()
    server = probe_job_server(resolved)
    if server.requires_token and token_source is None:
        if (os.environ.get("RAY_AUTH_MODE") or "").lower() == "token":
            problem = "RAY_AUTH_MODE=token is set but no token was found here"
        elif os.environ.get("RAY_AUTH_MODE"):
            problem = f"RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']} is set, so no token is sent"
        else:
            problem = "no token was found here"
        raise SubmitError(f"the Ray cluster at {resolved} requires an auth token and {problem}: {TOKEN_HELP}")

    import ray
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(resolved)
    except AuthenticationError:
        raise SubmitError(
            f"the Ray cluster at {resolved} rejected the auth token from {token_source}: it is not this cluster's "
            f"token; {TOKEN_HELP}"
        ) from None
    except ConnectionError as exc:
        raise SubmitError(f"lost the Ray job server at {resolved} right after probing it: {exc}") from None
    if server.ray_version and server.ray_version != ray.__version__:  # unknown when the server wanted a token first
        warn(f"warning: the cluster runs Ray {server.ray_version}, this machine Ray {ray.__version__} (semidff pins 2.60.0)")
    return client


# ---------------------------------------------------------------------------------------------
# What travels: the stage command, the working directory, the runtime env


@dataclass
class StageCommand:
    """The job's entry point for one semidff stage, and the local config file it needs uploaded."""

    stage: str  # e.g. "manifest", "benchmark detect"
    argv: list[str]  # arguments after ``python -m jobs.cli``, the config path already relative to the job
    config_file: Optional[Path] = None  # the local -c file, if any
    staged_config: Optional[str] = None  # its path inside the upload when it has to be copied there
    warnings: list[str] = field(default_factory=list)

    @property
    def entrypoint(self) -> str:
        return shlex.join(["python", "-m", "jobs.cli", *self.argv])


def path_in_upload(config: Path, working_dir: Path) -> Optional[str]:
    """The config's path relative to the working directory when Ray uploads it there, else None
    (outside it, or under one of :data:`DEFAULT_EXCLUDES`)."""
    try:
        relative = config.resolve().relative_to(working_dir.resolve())
    except ValueError:
        return None
    return None if is_excluded(relative.as_posix()) else relative.as_posix()


def is_excluded(relative_path: str, patterns: Sequence[str] = DEFAULT_EXCLUDES) -> bool:
    """Whether Ray's packaging leaves ``relative_path`` (posix, relative to the working directory)
    out under ``patterns``. Handles the two gitignore forms :data:`DEFAULT_EXCLUDES` uses: ``name``
    or ``*.ext`` (any path component) and ``/name`` (a top-level entry)."""
    parts = relative_path.split("/")
    for pattern in patterns:
        if pattern.startswith("/"):
            if fnmatch.fnmatchcase(parts[0], pattern[1:]):
                return True
        elif any(fnmatch.fnmatchcase(part, pattern) for part in parts):
            return True
    return False


def check_working_dir(working_dir: Path) -> Path:
    """``working_dir`` if it holds the project (the job imports semidff, pipelines and jobs from it)."""
    working_dir = Path(working_dir)
    if not working_dir.is_dir():
        raise SubmitError(f"--working-dir {working_dir}: not a directory")
    missing = [name for name in ("semidff/__init__.py", "pipelines/__init__.py", "jobs/cli.py") if not (working_dir / name).is_file()]
    if missing:
        raise SubmitError(
            f"--working-dir {working_dir.resolve()} lacks {', '.join(missing)}: the job runs the code uploaded from there, "
            "so run from the repository root or pass --working-dir <repository root>"
        )
    return working_dir


def load_runtime_env(path: Optional[Path], env: Sequence[str] = ()) -> dict:
    """A runtime_env dict from a YAML file (see cluster/runtime_env.yaml) plus ``KEY=VALUE`` pairs.

    ``working_dir`` is refused there (it is --working-dir); ``excludes`` add to the defaults.
    """
    runtime_env: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise SubmitError(f"runtime env file {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise SubmitError(f"runtime env file {path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise SubmitError(f"runtime env file {path} must hold a mapping (env_vars, excludes, pip, ...)")
        if "working_dir" in loaded:
            raise SubmitError(f"runtime env file {path}: remove working_dir and use --working-dir")
        runtime_env = dict(loaded)
    env_vars = {str(k): str(v) for k, v in (runtime_env.get("env_vars") or {}).items()}
    for pair in env:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SubmitError(f"--env {pair!r}: expected KEY=VALUE")
        env_vars[key] = value
    if env_vars:
        runtime_env["env_vars"] = env_vars
    return runtime_env


def default_submission_id(stage: str) -> str:
    """``semidff-<stage>-<UTC time>-<4 hex>``: readable in `ray job list` and unique."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"semidff-{stage.replace(' ', '-')}-{stamp}-{os.urandom(2).hex()}"


# ---------------------------------------------------------------------------------------------
# Submitting and following


def submit_stage(
    client,
    command: StageCommand,
    working_dir: Path,
    submission_id: str,
    *,
    num_gpus: Optional[float] = None,
    num_cpus: Optional[float] = None,
    runtime_env: Optional[dict] = None,
) -> str:
    """Upload ``working_dir`` and start ``command`` as job ``submission_id``; return its id.

    num_gpus/num_cpus reserve resources for the entry-point process itself (stages that compute in
    the driver: evaluate, detect, benchmark); with num_gpus and no num_cpus it gets 1 CPU.
    """
    working_dir = check_working_dir(working_dir)
    env = dict(runtime_env or {})
    env["working_dir"] = str(working_dir)
    env["excludes"] = [*DEFAULT_EXCLUDES, *(env.get("excludes") or [])]
    resources: dict[str, float] = {}
    if num_gpus:
        resources["entrypoint_num_gpus"] = num_gpus
        resources["entrypoint_num_cpus"] = 1 if num_cpus is None else num_cpus
    elif num_cpus is not None:
        resources["entrypoint_num_cpus"] = num_cpus
    staged = working_dir / command.staged_config if command.staged_config else None
    try:
        if staged is not None and command.config_file is not None:
            try:
                staged.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(command.config_file, staged)
            except OSError as exc:
                raise SubmitError(
                    f"cannot copy {command.config_file} into {staged.parent} for the upload ({exc.strerror or exc}): "
                    "put the config inside the working directory instead"
                ) from None
        agent_deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                return client.submit_job(
                    entrypoint=command.entrypoint,
                    submission_id=submission_id,
                    runtime_env=env,
                    metadata={"semidff_stage": command.stage, "submitted_by": "semidff submit"},
                    **resources,
                )
            except RuntimeError as exc:  # the SDK's HTTP errors (duplicate id, bad runtime env, ...)
                # A head node that just started answers before its job agent has registered: wait for it.
                if "No available agent" in str(exc) and time.monotonic() < agent_deadline:
                    time.sleep(2.0)
                    continue
                raise SubmitError(f"the cluster refused the job: {exc}") from None
    finally:
        if staged is not None:
            staged.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                staged.parent.rmdir()  # only when no other submission is staging there


def job_status(client, job_id: str) -> str:
    """The job's status name (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED); SubmitError when unknown."""
    return str(_job_call(client, job_id, client.get_job_status).value)


def _job_call(client, job_id: str, method, *args):
    try:
        return method(job_id, *args)
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            raise SubmitError(f"no job {job_id!r} on {client.get_address()}: `semidff job list` shows the jobs there") from None
        raise SubmitError(f"job {job_id}: {exc}") from None


def job_logs(client, job_id: str) -> str:
    """Everything the job's driver printed so far (stdout and stderr)."""
    return _job_call(client, job_id, client.get_job_logs)


def wait_until_finished(client, job_id: str, timeout_s: Optional[float] = None, poll_s: float = 1.0) -> str:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED; return that status (or the current one
    after ``timeout_s``)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = job_status(client, job_id)
        if status in FINISHED_STATUSES or (deadline is not None and time.monotonic() >= deadline):
            return status
        time.sleep(poll_s)


def follow_job(client, job_id: str, write: Callable[[str], None], warn: Callable[[str], None] = lambda line: None) -> str:
    """Stream the job's logs to ``write`` as they come until it finishes; return its final status."""
    job_status(client, job_id)  # a clear error for an unknown id before opening the stream

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except (OSError, RuntimeError) as exc:  # the log stream broke (head restarted, proxy timeout)
        warn(f"warning: the log stream of {job_id} broke ({exc}); waiting for the job to finish")
    return wait_until_finished(client, job_id)


def exit_code_for(status: str) -> int:
    """0 for SUCCEEDED, 1 for FAILED or STOPPED (and anything else)."""
    return 0 if status == "SUCCEEDED" else 1


def describe_job(client, job_id: str) -> str:
    """A few lines about the job: status and message, stage, entry point, times, driver exit code."""
    info = _job_call(client, job_id, client.get_job_info)

    def when(ms: Optional[int]) -> str:
        return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if ms else "-"

    lines = [
        f"{job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""),
        f"  stage:       {(info.metadata or {}).get('semidff_stage', '-')}",
        f"  entrypoint:  {info.entrypoint}",
        f"  started:     {when(info.start_time)}",
        f"  ended:       {when(info.end_time)}",
    ]
    if info.driver_exit_code is not None:
        lines.append(f"  exit code:   {info.driver_exit_code}")
    return "\n".join(lines)


def list_jobs(client) -> str:
    """One line per submitted job on the cluster, oldest first: id, status, stage, start time."""
    jobs = sorted((j for j in client.list_jobs() if j.submission_id), key=lambda j: j.start_time or 0)
    if not jobs:
        return "no submitted jobs"
    width = max(len(job.submission_id) for job in jobs)
    rows = []
    for job in jobs:
        started = datetime.fromtimestamp(job.start_time / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if job.start_time else "-"
        stage = (job.metadata or {}).get("semidff_stage", "-")
        rows.append(f"{job.submission_id:<{width}}  {job.status.value:<9}  {stage:<16}  {started}")
    return "\n".join(rows)


def stop_job(client, job_id: str, wait_s: float = 60.0) -> str:
    """Ask the job to stop and wait up to ``wait_s`` seconds for it; return its status then."""
    status = job_status(client, job_id)
    if status in FINISHED_STATUSES:
        return status
    _job_call(client, job_id, client.stop_job)
    return wait_until_finished(client, job_id, timeout_s=wait_s, poll_s=0.5)
