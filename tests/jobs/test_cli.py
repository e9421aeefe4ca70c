"""The console script as a user runs it: --help / -h / --version, config show, clear errors; and
every stage module's `python -m jobs.<stage>` being the same command as `semidff <stage>`."""
import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from jobs.cli import app
from jobs.cli_common import LazyCommand
from semidff.config import Config

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "jobs" / "configs" / "tiny.yaml"
BIN = Path(sys.executable).parent
SEMIDFF = [str(BIN / "semidff")] if (BIN / "semidff").exists() else [sys.executable, "-m", "jobs.cli"]
ENV = {**os.environ, "COLUMNS": "120", "TERMINAL_WIDTH": "120"}  # the same help layout in every process


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_subcommands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "config" in result.stdout and "benchmark" in result.stdout


def test_dash_h_is_help_and_version_is_the_installed_one():
    long, short = (subprocess.run([*SEMIDFF, flag], capture_output=True, text=True, timeout=120, env=ENV) for flag in ("--help", "-h"))
    assert long.returncode == short.returncode == 0 and short.stdout == long.stdout and "train-teacher" in short.stdout
    sub = subprocess.run([*SEMIDFF, "config", "show", "-h"], capture_output=True, text=True, timeout=120, env=ENV)
    assert sub.returncode == 0 and "--config" in sub.stdout
    shown = subprocess.run([*SEMIDFF, "--version"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and shown.stdout == f"semidff {version('semidff')}\n"


def test_help_imports_no_stage_module():
    """`semidff --help` lists every command from the source: no stage module, torch or Ray is imported."""
    code = (
        "import sys\nfrom jobs.cli import main\nsys.argv = ['semidff', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('IMPORTED', sorted(m for m in sys.modules if m in ('torch', 'ray', 'mlflow') or "
        "(m.startswith('jobs.') and m not in ('jobs.cli', 'jobs.cli_common'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "IMPORTED []" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]


def test_config_show_prints_resolved_yaml_with_overrides():
    result = run_cli("config", "show", "-c", str(TINY), "video.key_interval=5")
    assert result.returncode == 0, result.stderr
    shown = Config.model_validate(yaml.safe_load(result.stdout))
    assert shown.video.key_interval == 5
    assert shown.model.backbone.depth == 18


def test_config_show_bad_value_exits_2_with_the_key():
    result = run_cli("config", "show", "model.backbone.depth=7")
    assert result.returncode == 2
    assert "model.backbone.depth=7" in result.stderr and "18, 34, 50 or 101" in result.stderr
    assert "Traceback" not in result.stderr


def test_benchmark_detect_runs_both_modes_and_writes_json(tmp_path):
    out = tmp_path / "detect.json"
    result = run_cli(
        "benchmark", "detect", "-c", str(TINY), "video.key_interval=3",
        "--frames", "6", "--repeats", "2", "--height", "64", "--width", "96", "-o", str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "speed-up flow / frame at key interval 3" in result.stdout
    report = json.loads(out.read_text())
    assert report["frame"]["mode"] == "frame" and report["flow"]["mode"] == "flow"
    assert len(report["frame"]["runs_fps"]) == 2 and all(f > 0 for f in report["flow"]["runs_fps"])
    assert report["frame"]["propagated_frame_ms"] is None and report["flow"]["propagated_frame_ms"] > 0
    assert report["speedup"] == report["flow"]["fps"] / report["frame"]["fps"]
    assert report["network_size"] == [160, 240]  # tiny.yaml: short side 160, long side <= 288


# ---------------------------------------------------------------------------------------------
# One command, two ways to run it


def _lazy_commands(command=None, path=()) -> list[tuple[tuple[str, ...], LazyCommand]]:
    """(command path, command) of every stage command of the app, e.g. (("benchmark", "detect"), ...)."""
    command = command or typer.main.get_command(app)
    found = []
    for name, sub in getattr(command, "commands", {}).items():
        if isinstance(sub, LazyCommand):
            found.append(((*path, name), sub))
        else:
            found += _lazy_commands(sub, (*path, name))
    return found


def _module(command: LazyCommand) -> str:
    return command.target.partition(":")[0]


NOT_A_MODULE_COMMAND = {"jobs.submit"}  # a stage is checked against the whole app before it is submitted: `semidff submit` only
COMMANDS = [(path, command) for path, command in _lazy_commands() if _module(command) not in NOT_A_MODULE_COMMAND]


def _options(help_text: str) -> set[str]:
    """Every -x / --name in a help text but its usage line (``python -m`` there is no option)."""
    text = "\n".join(line for line in re.sub(r"\x1b\[[0-9;]*m", "", help_text).splitlines() if "Usage:" not in line)
    return set(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", text))


def test_every_command_of_the_app_lists_its_own_help_and_writes_to_dash_o():
    assert {path[-1] for path, _ in _lazy_commands()} >= {"manifest", "clips", "train-teacher", "build", "train", "tune", "evaluate", "detect", "demo"}
    for path, command in _lazy_commands():
        loaded = command.load()  # the module's function, as `python -m` builds it
        assert command.help == loaded.help, path  # what `semidff --help` lists without importing the module
        for param in loaded.params:
            if param.name == "output":
                assert {"-o", "--output"} <= set(param.opts), (path, param.opts)


@pytest.mark.slow  # one `python -m` per stage module, each importing its module (torch, Ray): ~1 min on 2 cores
@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(path) for path, _ in COMMANDS])
def test_python_m_stage_module_is_the_same_command_as_semidff(path, command):
    module = _module(command)
    in_module = [path[-1]] if sum(_module(other) == module for _, other in COMMANDS) > 1 else []  # jobs.cache build|inspect
    semidff = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "120", "TERMINAL_WIDTH": "120"}, prog_name="semidff")
    direct = subprocess.run([sys.executable, "-m", module, *in_module, "--help"], capture_output=True, text=True, timeout=300, env=ENV, cwd=REPO)
    assert semidff.exit_code == 0 and direct.returncode == 0, (semidff.output, direct.stderr[-3000:])
    assert f"Usage: semidff {' '.join(path)} " in semidff.output
    assert f"Usage: python -m {module} {' '.join(in_module)}".rstrip() + " " in direct.stdout
    assert _options(direct.stdout) == _options(semidff.output) and "-h" in _options(direct.stdout)
