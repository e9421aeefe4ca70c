"""The demo's step bookkeeping: each step's fingerprint, reuse of a finished step, timings.

    steps = StepRunner(total=3, say=print)
    data_print = fingerprint("data", cfg.demo, cfg.seed)               # what the step's output depends on
    steps.run("data", out / "data", data_print, make_data)              # make_data(progress) does the work
    steps.run("teacher", out / "teacher", fingerprint("teacher", data_print, cfg.model), train)
    write_json(out / "demo_steps.json", steps.as_dicts())

A step that finished writes :data:`STEP_FILE` into its folder with its fingerprint; a later run
that asks for the same folder with the same fingerprint reuses it. A step whose fingerprint
changed has its folder removed and rebuilt (chain the inputs' fingerprints into a step's, and
everything downstream of a change is rebuilt too); a folder without :data:`STEP_FILE` but with
files is an interrupted step, handed to the work as it is (the stages resume from their own
checkpoints and part files).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from semidff.atomic import write_text_atomically

Progress = Callable[[str], None]
STEP_FILE = "_demo_step.json"


class DemoError(RuntimeError):
    """The demo cannot go on: the message names the step, what went wrong and what to do."""


@dataclass
class StepRecord:
    """One step of a demo run: where it wrote, whether a previous run's output was reused, the
    seconds it took in this run, and the seconds it took when it was built (a reused step's too)."""

    name: str
    folder: str
    reused: bool
    seconds: float
    built_seconds: float


def fingerprint(*parts: Any) -> str:
    """SHA-256 (hex, 16 chars) of JSON-encoded parts: what a step's output depends on."""
    def plain(value: Any) -> Any:
        return value.model_dump(mode="json") if hasattr(value, "model_dump") else str(value)

    text = json.dumps(parts, sort_keys=True, default=plain)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class StepRunner:
    """Runs the demo's steps in order, each one skipped when its folder holds a finished output of
    the same fingerprint (see the module docstring), with numbered progress lines."""

    def __init__(self, total: int, say: Progress) -> None:
        self.total = total
        self.say = say
        self.done = 0
        self.records: list[StepRecord] = []

    def run(self, name: str, folder: Path, print_: str, work: Callable[[Progress], Any], always: bool = False) -> bool:
        """Run ``work(progress)`` unless ``folder`` finished with fingerprint ``print_`` (or
        ``always``: a cheap step redone every time); returns whether the previous output was reused.

        Raises DemoError naming the step when ``work`` fails (what it finished stays in ``folder``).
        """
        self.done += 1
        prefix = f"[{self.done}/{self.total}] {name}"
        marker = folder / STEP_FILE
        previous = None if always else read_json(marker)
        if previous and previous.get("fingerprint") == print_:
            self.say(f"{prefix}: reusing {folder} (finished by a previous run with the same settings)")
            self.records.append(StepRecord(name, str(folder), True, 0.0, float(previous.get("seconds", 0.0))))
            return True
        if previous:
            self.say(f"{prefix}: settings or inputs changed since the previous run: rebuilding {folder}")
            shutil.rmtree(folder)
        elif always:
            self.say(f"{prefix}: writing")
        elif folder.exists() and any(folder.iterdir()):
            self.say(f"{prefix}: resuming the unfinished output in {folder}")
        else:
            self.say(f"{prefix}: starting")
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            work(lambda line: self.say(f"{prefix}: {line}"))
        except Exception as exc:
            raise DemoError(
                f"step {name} failed: {type(exc).__name__}: {exc}\n"
                f"what finished is kept: rerun the same command to resume, or delete {folder} to redo this step"
            ) from exc
        seconds = time.perf_counter() - started
        write_json(marker, {"step": name, "fingerprint": print_, "seconds": seconds, "finished_at": time.time()})
        self.say(f"{prefix}: done in {format_duration(seconds)}")
        self.records.append(StepRecord(name, str(folder), False, seconds, seconds))
        return False

    def as_dicts(self) -> list[dict[str, Any]]:
        """The records so far as plain dicts (the demo's ``demo_steps.json``, the report's step table)."""
        return [asdict(record) for record in self.records]


def format_duration(seconds: float) -> str:
    """``12.3 s`` below a minute, else ``4.5 min``."""
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def read_json(path: Path) -> Optional[dict]:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON, written atomically."""
    write_text_atomically(path, json.dumps(data, indent=2, default=str))
