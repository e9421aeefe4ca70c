"""The console script as a user runs it: --help, config show, clear errors."""
import subprocess
import sys
from pathlib import Path

import yaml

from semidff.config import Config

TINY = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "tiny.yaml"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "semidff.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_subcommands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "config" in result.stdout and "benchmark" in result.stdout


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
