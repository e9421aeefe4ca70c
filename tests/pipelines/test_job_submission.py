"""The Ray job API client of `semidff submit` (pipelines/job_submission.py), without a cluster:
address forms, the token switch, the excludes matched the way Ray's own packaging matches them,
the runtime env and the working-dir checks. The commands, on a real head node: tests/jobs/test_submit.py."""
from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from pipelines.job_submission import (
    DEFAULT_EXCLUDES,
    SubmitError,
    check_working_dir,
    is_excluded,
    load_runtime_env,
    resolve_address,
    use_token_auth_if_available,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "given, expected",
    [
        ("http://127.0.0.1:8265", "http://127.0.0.1:8265"),
        ("http://head.internal:8265/", "http://head.internal:8265"),
        ("127.0.0.1:9000", "http://127.0.0.1:9000"),
        ("head", "http://head:8265"),
        ("https://ray.example.org", "https://ray.example.org:8265"),
        ("http://[::1]:8265", "http://[::1]:8265"),
    ],
)
def test_resolve_address_forms(given, expected):
    assert resolve_address(given, environ={}) == expected


@pytest.mark.parametrize(
    "given, message",
    [
        ("ray://head:10001", "not ray://"),
        ("http://head:port", "port is not a number"),
        ("http://head:8265/api", "nothing after the port"),
        ("auto", "names no job server"),
        (None, "no cluster address"),
    ],
)
def test_resolve_address_rejects_with_the_fix(given, message):
    with pytest.raises(SubmitError, match=message):
        resolve_address(given, environ={})


def test_resolve_address_takes_the_environment_like_ray_job_submit():
    assert resolve_address(None, {"RAY_ADDRESS": "h:1", "RAY_API_SERVER_ADDRESS": "http://api:2"}) == "http://api:2"
    assert resolve_address(None, {"RAY_ADDRESS": "h:1"}) == "http://h:1"


def test_token_auth_switched_on_only_when_unset_and_a_token_exists(tmp_path):
    assert use_token_auth_if_available({"HOME": str(tmp_path)}) is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("x" * 64)
    environ = {"HOME": str(tmp_path)}
    assert use_token_auth_if_available(environ) == str(tmp_path / ".ray" / "auth_token")
    assert environ["RAY_AUTH_MODE"] == "token"
    disabled = {"HOME": str(tmp_path), "RAY_AUTH_MODE": "disabled"}
    assert use_token_auth_if_available(disabled) is None and disabled["RAY_AUTH_MODE"] == "disabled"
    from_env = {"HOME": "/nonexistent", "RAY_AUTH_TOKEN": "abc"}
    assert use_token_auth_if_available(from_env) == "$RAY_AUTH_TOKEN" and from_env["RAY_AUTH_MODE"] == "token"


def test_excludes_match_what_rays_packaging_leaves_out(tmp_path):
    """is_excluded (used to decide whether a config travels by copy) agrees with the zip Ray builds."""
    from ray._private.runtime_env.packaging import create_package

    files = [
        "jobs/cli.py", "semidff/data/synthetic.py", "jobs/configs/tiny.yaml", "cluster/README.md",
        "pipelines/__pycache__/manifest.cpython-311.pyc", ".git/HEAD", ".venv/bin/python", "outputs/run/config.yaml",
        "runs/manifest/manifest.parquet", "mlruns/1/meta.yaml", "store/mlflow.db", "data/clip.mp4", "weights/r101.pth",
        "semidff.egg-info/PKG-INFO", "nested/runs/keep.yaml", "ray_results/exp/params.json", "cache/part-0.parquet",
    ]
    root = tmp_path / "wd"
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    package = tmp_path / "package.zip"
    create_package(str(root), package, include_gitignore=False, excludes=list(DEFAULT_EXCLUDES))
    with zipfile.ZipFile(package) as archive:
        uploaded = {name for name in archive.namelist() if not name.endswith("/")}
    assert uploaded == {name for name in files if not is_excluded(name)}
    assert uploaded == {"jobs/cli.py", "semidff/data/synthetic.py", "jobs/configs/tiny.yaml", "cluster/README.md", "nested/runs/keep.yaml"}


def test_runtime_env_file_and_env_pairs_merge(tmp_path):
    path = tmp_path / "env.yaml"
    path.write_text("env_vars: {MLFLOW_TRACKING_URI: http://mlflow:5000, OMP_NUM_THREADS: 4}\nexcludes: [big/]\n")
    env = load_runtime_env(path, ["OMP_NUM_THREADS=8", "EXTRA=a=b"])
    assert env == {"env_vars": {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "OMP_NUM_THREADS": "8", "EXTRA": "a=b"}, "excludes": ["big/"]}
    path.write_text("working_dir: /elsewhere\n")
    with pytest.raises(SubmitError, match="use --working-dir"):
        load_runtime_env(path)
    with pytest.raises(SubmitError, match="expected KEY=VALUE"):
        load_runtime_env(None, ["NOVALUE"])


def test_shipped_runtime_env_loads():
    env = load_runtime_env(REPO / "cluster" / "runtime_env.yaml")
    assert "working_dir" not in env and env["env_vars"]


def test_working_dir_must_hold_the_project(tmp_path):
    with pytest.raises(SubmitError, match="lacks semidff/__init__.py, pipelines/__init__.py, jobs/cli.py"):
        check_working_dir(tmp_path)
    assert check_working_dir(REPO) == REPO
