"""The console script as a user runs it: --help, config show, clear errors."""
import json
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
