"""The main job: ``semidff demo`` reproduces the paper's comparison in miniature on one machine.

    semidff demo                                   # jobs/configs/tiny.yaml into runs/demo
    semidff demo -o runs/demo2 demo.unlabeled_videos=32 training.semantic_epochs=4
    python -m jobs.demo -o runs/demo               # the same function

No cluster, no download, no GPU: a local Ray started for the run (``ray`` section) and one MLflow
SQLite store, ``<out>/mlflow.db``, shared by every stage so ``semidff lineage`` follows the chain.
The steps call the stages' own ``run`` functions, in order:

1. ``data``: synthetic labeled videos (:func:`semidff.data.synthetic.generate_synthetic_dataset`):
   ``demo.train_videos`` for the teacher, ``demo.val_videos`` to evaluate on, and
   ``demo.unlabeled_videos`` more whose labels no stage reads (stage 2's unlabeled corpus);
2. ``teacher``: stage 1 (``semidff train-teacher``) on the labeled train videos;
3. ``manifest``: ``semidff manifest`` over the unlabeled videos;
4. ``cache``: ``semidff cache``, the frozen teacher's features and soft targets per clip;
5. ``flow/<variant>``: ``semidff train`` once per ``demo.variants`` (training.schedule regression,
   semantic, two_step: the paper's semi-DFF reg / sem / semi-DFF);
6. ``evaluation/teacher`` (``frame`` and ``copy``) and ``evaluation/<variant>`` (``flow``):
   ``semidff evaluate`` at every ΔT of ``evaluation.key_intervals`` on the val videos;
7. ``report``: ``report.md`` (Table 1 and 3g of the paper in miniature, the paper's qualitative
   claims checked one by one), ``map_fps_vs_interval.png``, annotated example frames
   (``frames/``) and ``report.json`` (:mod:`semidff.demo_report`).

Reuse (:mod:`semidff.demo_steps`): a step that finished writes ``_demo_step.json`` with a
fingerprint of its settings and its inputs' fingerprints; a rerun in the same folder skips every
step whose fingerprint still matches, rebuilds those whose settings changed (and everything
downstream), and resumes an interrupted one through its stage's own resume (teacher and flow
checkpoints, manifest and cache part files).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import typer

from jobs.cli_common import OVERRIDES_ARGUMENT, echo_progress, exit_on, resolve_config, run_module
from semidff.benchmarks.machine import machine_description
from semidff.config import Config
from semidff.demo_steps import DemoError, Progress, StepRecord, StepRunner, fingerprint, format_duration, write_json

TINY_CONFIG = Path(__file__).resolve().parent / "configs" / "tiny.yaml"
DEMO_OVERRIDES = [
    "clips.key_frames_per_video=10", "clips.currents_per_key=4",
    "training.lr=1e-4", "training.regression_epochs=6", "training.semantic_epochs=3",
]
"""Applied before the user's overrides. Clips: 10 key frames x 4 current frames per unlabeled
video (the default one key frame per second gives a 60-frame video 2 clips). Training: the
paper's lr 5e-5 is for ~10^5 iterations; in the demo's ~1,500 steps of step A it left the flow
near zero (val mAP at ΔT 10 below copy's), 1e-4 for 6 epochs learned object motion (48.7 against
copy's 42.0 in one measured run) and 2e-3 diverged (BENCHMARKS.md, "The demo")."""
DEFAULT_OUTPUT = "runs/demo"
TIMINGS_FILE = "demo_steps.json"
SEED_OFFSETS = {"train": 0, "val": 1, "unlabeled": 2}  # added to cfg.seed: three disjoint corpora
LABELS = {"frame": "R-FCN frame", "copy": "R-FCN copy", "regression": "semi-DFF reg",
          "semantic": "semi-DFF sem", "two_step": "semi-DFF (two-step)"}


@dataclass
class DemoResult:
    """What ``semidff demo`` produced: the report files and each step's record."""

    output_dir: Path
    report: Path
    plot: Path
    frames: list[Path]
    claims_reproduced: int
    claims_checked: int
    steps: list[StepRecord] = field(default_factory=list)
    wall_s: float = 0.0
    tracking_uri: str = ""


def run(cfg: Config, output_dir: str | Path = DEFAULT_OUTPUT, progress: Optional[Progress] = None) -> DemoResult:
    """Run (or finish, or refresh) the demo in ``output_dir``; see the module docstring.

    Raises DemoError naming the failed step (what finished stays for a rerun to reuse).
    """
    from jobs.cache import run as build_cache
    from jobs.evaluate import run as evaluate
    from jobs.train_flow import FLOW_FILE, run as train_flow
    from jobs.train_teacher import CHECKPOINT_NAME, run as train_teacher
    from pipelines.manifest import build_manifest
    from pipelines.ray_session import ray_session
    from semidff import demo_report
    from semidff.data.synthetic import DATASET_FILE, generate_synthetic_dataset

    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    started = time.perf_counter()
    out = Path(output_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfg.model_copy(deep=True)
    if cfg.mlflow.tracking_uri is None:
        cfg.mlflow.tracking_uri = f"sqlite:///{out / 'mlflow.db'}"
    demo = cfg.demo
    intervals = sorted(set(cfg.evaluation.key_intervals) | {demo.example_key_interval})
    cfg.evaluation.key_intervals = intervals
    data = out / "data"
    val_dataset = data / "val" / DATASET_FILE
    cfg.evaluation.data.format = cfg.teacher_training.data.format = "custom"
    cfg.teacher_training.data.path = str(data / "train" / DATASET_FILE)
    cfg.evaluation.data.path = None  # stage 2 validates by regression error only: no per-epoch mAP pass
    variants = list(demo.variants)
    steps = StepRunner(total=6 + 2 * len(variants), say=say)
    say(f"semidff demo in {out}: {demo.train_videos} + {demo.val_videos} labeled and {demo.unlabeled_videos} unlabeled "
        f"synthetic videos of {demo.frames_per_video} frames; variants {', '.join(variants)}; ΔT {intervals}; "
        f"MLflow {cfg.mlflow.tracking_uri}")

    # 1. data
    data_print = fingerprint("data", demo.model_dump(include={"train_videos", "val_videos", "unlabeled_videos",
                                                               "frames_per_video", "width", "height"}),
                             cfg.seed, cfg.model.num_classes)

    def make_data(say_step: Progress) -> None:
        for name, count in (("train", demo.train_videos), ("val", demo.val_videos), ("unlabeled", demo.unlabeled_videos)):
            generate_synthetic_dataset(data / name, num_videos=count, num_frames=demo.frames_per_video, width=demo.width,
                                       height=demo.height, num_classes=cfg.model.num_classes, seed=cfg.seed + SEED_OFFSETS[name])
            say_step(f"{count} {name} videos in {data / name / 'videos'}")

    steps.run("data", data, data_print, make_data)

    with ray_session(cfg.ray.num_cpus, cfg.ray.address):
        # 2. teacher (stage 1)
        teacher_dir = out / "teacher"
        teacher_print = fingerprint("teacher", data_print, cfg.seed, cfg.model, cfg.preprocess, cfg.loss,
                                    cfg.teacher_training.model_dump(exclude={"data"}))
        steps.run("teacher", teacher_dir, teacher_print, lambda s: train_teacher(cfg, teacher_dir, progress=s))
        teacher = str(teacher_dir / CHECKPOINT_NAME)

        # 3. manifest of the unlabeled videos
        manifest_dir = out / "manifest"
        manifest_print = fingerprint("manifest", data_print)
        steps.run("manifest", manifest_dir, manifest_print, lambda s: s(build_manifest(
            [str(data / "unlabeled" / "videos")], str(manifest_dir), address=cfg.ray.address, progress=s).format()))

        # 4. teacher cache
        cache_dir = out / "cache"
        cache_print = fingerprint("cache", manifest_print, teacher_print, cfg.clips, cfg.cache, cfg.video, cfg.preprocess)
        steps.run("cache", cache_dir, cache_print, lambda s: s(build_cache(cfg, str(manifest_dir), teacher, str(cache_dir), progress=s).format()))

        # 5. flow training, one run per variant
        flows: dict[str, str] = {}
        flow_prints: dict[str, str] = {}
        for variant in variants:
            variant_cfg = cfg.model_copy(deep=True)
            variant_cfg.training.schedule = variant
            folder = out / "flow" / variant
            flow_prints[variant] = fingerprint("flow", cache_print, variant_cfg.training, cfg.loss, cfg.video, cfg.seed)
            steps.run(f"train {variant}", folder, flow_prints[variant],
                      lambda s, c=variant_cfg, f=folder: train_flow(c, str(cache_dir), teacher, str(f), progress=s))
            flows[variant] = str(folder / FLOW_FILE)

    # 6. evaluation (one process, no Ray)
    eval_cfg = cfg.model_copy(deep=True)
    eval_cfg.evaluation.data.path = str(val_dataset)
    eval_settings = (eval_cfg.evaluation.model_dump(exclude={"modes"}), data_print)
    evaluations = {"teacher": out / "evaluation" / "teacher"}
    steps.run("evaluate frame+copy", evaluations["teacher"], fingerprint("eval", teacher_print, *eval_settings),
              lambda s: evaluate(eval_cfg, teacher, None, str(evaluations["teacher"]), modes=["frame", "copy"], progress=s))
    for variant in variants:
        evaluations[variant] = out / "evaluation" / variant
        steps.run(f"evaluate {variant}", evaluations[variant], fingerprint("eval", flow_prints[variant], *eval_settings),
                  lambda s, v=variant: evaluate(eval_cfg, teacher, flows[v], str(evaluations[v]), modes=["flow"], progress=s))

    # 7. report (always rewritten: cheap, and it reports this run's step times)
    report_dir = out / "report"

    def write_report(say_step: Progress) -> None:
        nonlocal written
        methods = demo_report.load_methods(evaluations, LABELS)
        frames = demo_report.draw_example_frames(
            val_dataset, teacher, flows.get("two_step") or flows[variants[-1]], report_dir / "frames",
            key_interval=demo.example_key_interval, count=demo.example_frames, device=cfg.device,
        )
        written = demo_report.write_report(
            report_dir, methods, key_interval=demo.example_key_interval, frames=frames, steps=steps.as_dicts(),
            machine=machine_description(), wall_s=time.perf_counter() - started, tracking_uri=cfg.mlflow.tracking_uri,
            command=" ".join(sys.argv), config_yaml=cfg.to_yaml(),
        )
        for claim in written.claims:
            say_step(claim.line())

    written: Optional[demo_report.WrittenReport] = None
    steps.run("report", report_dir, "", write_report, always=True)
    assert written is not None
    write_json(out / TIMINGS_FILE, steps.as_dicts())
    wall = time.perf_counter() - started
    result = DemoResult(
        output_dir=out, report=written.markdown, plot=written.plot, frames=written.frames,
        claims_reproduced=sum(c.reproduced is True for c in written.claims),
        claims_checked=sum(c.reproduced is not None for c in written.claims),
        steps=steps.records, wall_s=wall, tracking_uri=cfg.mlflow.tracking_uri,
    )
    say(f"semidff demo finished in {format_duration(wall)} ({sum(r.reused for r in steps.records)} of {len(steps.records)} steps reused)")
    return result


def format_result(result: DemoResult) -> str:
    """Where everything is, for the terminal."""
    db = result.tracking_uri.removeprefix("sqlite:///")
    return "\n".join([
        f"report:  {result.report}",
        f"plot:    {result.plot}",
        f"frames:  {result.frames[0].parent if result.frames else '-'} ({len(result.frames)} images)",
        f"claims:  {result.claims_reproduced} of {result.claims_checked} of the paper's qualitative claims reproduced (details in the report)",
        f"MLflow:  mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1" if db != result.tracking_uri
        else f"MLflow:  {result.tracking_uri}",
        f"lineage: semidff lineage <run id or models:/name/version> --tracking-uri {result.tracking_uri}",
        f"wall time: {format_duration(result.wall_s)}",
    ])


# ---------------------------------------------------------------------------------------------
# Command line (`semidff demo`, `python -m jobs.demo`)


def demo_command(
    overrides: Optional[List[str]] = OVERRIDES_ARGUMENT,
    output: Path = typer.Option(Path(DEFAULT_OUTPUT), "--output", "-o", help="work folder; a rerun reuses every step it finished with the same settings"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: jobs/configs/tiny.yaml, the CPU model)"),
) -> None:
    """The whole system on this machine: synthetic videos → teacher → manifest → cache → flow training
    (regression, semantic, two-step) → evaluation of frame/copy/flow at ΔT 1, 5, 10, 20 → report.

    Local Ray, MLflow SQLite store in the output folder, no download, no GPU; about 8 minutes on 2 idle CPU cores.
    Sizes: demo.* keys (e.g. demo.unlabeled_videos=32); training.* and evaluation.key_intervals apply too.
    """
    cfg = resolve_config(config or TINY_CONFIG, DEMO_OVERRIDES + list(overrides or []))
    with exit_on(DemoError):
        result = run(cfg, output, progress=echo_progress)
    typer.echo(format_result(result))


if __name__ == "__main__":  # pragma: no cover
    run_module(demo_command)
