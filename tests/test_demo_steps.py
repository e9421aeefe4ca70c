"""The demo's step bookkeeping (semidff/demo_steps.py): fingerprints, a finished step reused, a
changed one rebuilt, an interrupted one resumed, a failed one reported with its folder kept."""
import json

import pytest

from semidff.config import load_config
from semidff.demo_steps import STEP_FILE, DemoError, StepRunner, fingerprint, format_duration, read_json, write_json


def test_fingerprint_depends_on_every_part_and_reads_configs():
    cfg = load_config(None)
    assert fingerprint("data", cfg.model, 1) == fingerprint("data", load_config(None).model, 1)
    assert len(fingerprint("data")) == 16
    assert fingerprint("data", cfg.model, 1) != fingerprint("data", cfg.model, 2)
    assert fingerprint("data", cfg.model) != fingerprint("data", load_config(None, ["model.num_classes=7"]).model)


def _writer(calls):
    def work(say):
        calls.append(say)
        say("working")
    return work


def test_a_finished_step_is_reused_and_a_changed_one_rebuilt(tmp_path):
    folder = tmp_path / "step"
    lines, calls = [], []
    first = StepRunner(total=1, say=lines.append)
    assert first.run("data", folder, "print-1", lambda say: (folder / "x.txt").write_text("1") and say("wrote")) is False
    marker = read_json(folder / STEP_FILE)
    assert marker["step"] == "data" and marker["fingerprint"] == "print-1"
    assert lines[0] == "[1/1] data: starting" and lines[1] == "[1/1] data: wrote" and lines[2].startswith("[1/1] data: done in ")

    again = StepRunner(total=1, say=lines.append)
    assert again.run("data", folder, "print-1", _writer(calls)) is True
    assert not calls and again.records[0].reused and again.records[0].built_seconds == marker["seconds"]
    assert "reusing" in lines[-1]

    changed = StepRunner(total=1, say=lines.append)
    assert changed.run("data", folder, "print-2", _writer(calls)) is False
    assert len(calls) == 1 and not (folder / "x.txt").exists()  # the old output is removed first
    assert "rebuilding" in lines[-3] and read_json(folder / STEP_FILE)["fingerprint"] == "print-2"
    assert [r["reused"] for r in changed.as_dicts()] == [False]


def test_an_interrupted_step_resumes_and_a_failed_one_keeps_its_folder(tmp_path):
    folder = tmp_path / "step"
    folder.mkdir()
    (folder / "part-0").write_text("done before the cut")
    lines = []
    steps = StepRunner(total=2, say=lines.append)

    def fail(say):
        raise ValueError("disk full")

    with pytest.raises(DemoError, match=r"(?s)step cache failed: ValueError: disk full.*delete .*step to redo"):
        steps.run("cache", folder, "p", fail)
    assert lines == ["[1/2] cache: resuming the unfinished output in " + str(folder)]
    assert (folder / "part-0").exists() and not (folder / STEP_FILE).exists()

    assert steps.run("report", tmp_path / "report", "", _writer([]), always=True) is False
    assert steps.run("report", tmp_path / "report", "", _writer([]), always=True) is False  # always redone
    assert lines[1] == "[2/2] report: writing"


def test_json_helpers_and_durations(tmp_path):
    assert read_json(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{")
    assert read_json(tmp_path / "bad.json") is None
    write_json(tmp_path / "sub" / "a.json", {"path": tmp_path})
    assert json.loads((tmp_path / "sub" / "a.json").read_text()) == {"path": str(tmp_path)}
    assert format_duration(12.34) == "12.3 s" and format_duration(90) == "1.5 min"
