"""semidff tune on a local Ray against a real `mlflow server` on 127.0.0.1: a 4-trial sweep (ΔT x lr)
over a tiny real teacher cache is killed mid-sweep (SIGKILL of the driver, a subprocess) and
resumed; then ASHA's early stops, the resumed trials, the parent/child runs and the lineage chain
on the server, the tables, plots and best checkpoint are checked. Bad sweeps stop before Ray.

One sweep serves every test (module fixture, ~3 min on 2 idle cores): most of it is Ray Train and
Ray Data starting per trial."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.video_fixtures import write_video  # noqa: F401  (PyAV before decord, see tests/video_fixtures.py)

import ray
import yaml

from jobs.tune import SweepError, param_space, plan_concurrency
from semidff.config import ConfigError, load_config
from semidff.sweep_report import FINISHED, STOPPED_EARLY
from semidff.sweep_space import QUASI_POINT_KEY, SearchSpaceError, parse_search_space

REPO = Path(__file__).resolve().parents[2]
MODEL = "semidff-flow-sweep-test"
CACHE_OVERRIDES = [
    "preprocess.short_side=96", "preprocess.max_long_side=128", "clips.key_frames_per_video=2", "clips.currents_per_key=4",
    "clips.offset_range=[0,4]", "clips.num_cpus=0.5", "cache.clips_per_file=4", "cache.num_cpus_per_actor=0.5",
]
# lr 1e-9 hardly moves the flow net (error vs copy stays ~1); lr 0.3 wrecks it in its first epoch
# (error vs copy ~35). Tune runs the grid with the alphabetically first key fastest, so trials 0 and
# 2 have lr 1e-9 and 1 and 3 lr 0.3; with reduction factor 4 a trial goes past the one rung
# (epoch 1) only when its error is among the best quarter so far, so at least trial 3 stops there.
SWEEP = {
    "ray": {"num_cpus": 4},
    "video": {"key_interval": 4},
    "training": {"regression_epochs": 1, "semantic_epochs": 1, "batch_size": 4, "cpus_per_worker": 0.5,
                 "checkpoint_every_steps": 1000},
    "tune": {"search_space": {"training.lr": {"grid": [1.0e-9, 0.3]}, "video.key_interval": {"grid": [3, 4]}},
             "max_concurrent_trials": 2, "scheduler": {"kind": "asha", "grace_period": 1, "reduction_factor": 4}},
    "mlflow": {"registered_model": MODEL},
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """In the server's process: get SIGTERM when the test process dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, proxied artifacts), up until the module ends."""
    import urllib.request

    folder = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    log = (folder / "server.log").open("w")
    # No job-execution workers (MLflow 3 starts 7 consumer processes for them by default).
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination", str(folder / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, preexec_fn=_die_with_parent,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                if reply.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"mlflow server did not come up:\n{(folder / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield uri
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
    log.close()


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _validation_fraction(manifest: Path) -> float:
    """A held-out share that puts at least one video in each split (video ids depend on the tmp path)."""
    from pipelines.manifest import read_manifest_rows
    from semidff.cache.split import video_hash_fraction

    hashes = sorted(video_hash_fraction(row["video_id"]) for row in read_manifest_rows(str(manifest)).values())
    return (hashes[1] + hashes[2]) / 2  # two of the six videos are validation videos


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, local_ray, mlflow_server):
    """6 synthetic videos -> manifest -> a tiny teacher -> a teacher cache (its run on the server)."""
    import torch

    from jobs.cache import run as build_cache
    from pipelines.manifest import build_manifest
    from semidff.checkpoint import save_model_checkpoint
    from semidff.data.synthetic import generate_synthetic_dataset
    from semidff.models.build import build_rfcn

    root = tmp_path_factory.mktemp("tune")
    generate_synthetic_dataset(root / "data", num_videos=6, num_frames=24, width=128, height=96, num_classes=3)
    build_manifest([str(root / "data" / "videos")], str(root / "manifest"))
    cfg = load_config(REPO / "jobs/configs/tiny.yaml", CACHE_OVERRIDES + [f"mlflow.tracking_uri={mlflow_server}"])
    torch.manual_seed(0)
    teacher = root / "teacher" / "teacher.pt"
    save_model_checkpoint(teacher, "teacher", cfg, {"rfcn": build_rfcn(cfg.model).state_dict()})
    build_cache(cfg, str(root / "manifest"), str(teacher), str(root / "cache"), progress=lambda line: None)
    sweep_cfg = cfg.model_dump(mode="json")
    for section, values in SWEEP.items():
        sweep_cfg[section].update(values)
    sweep_cfg["training"]["validation_fraction"] = _validation_fraction(root / "manifest")
    config_file = root / "sweep.yaml"
    config_file.write_text(yaml.safe_dump(sweep_cfg))
    return {"root": root, "cache": root / "cache", "teacher": teacher, "config": config_file, "uri": mlflow_server}


def _epoch_end_checkpoints(output: Path) -> dict[str, int]:
    """{trial id: epochs with an epoch-end Train checkpoint} from the trials' folders."""
    done = {}
    for trial in sorted((output / "trials").glob("*")):
        done[trial.name] = len(list(trial.glob("ray_results/*/checkpoint_*_epoch_end")))
    return done


@pytest.fixture(scope="module")
def sweep(inputs, local_ray):
    """Phase 1: `python -m jobs.tune` in a subprocess, SIGKILLed once Tune has received a trial's
    first epoch (and saved its state). Phase 2: the same sweep resumed in this process."""
    from mlflow import MlflowClient

    from jobs.tune import run

    output = inputs["root"] / "sweep"
    log_path = inputs["root"] / "phase1.log"
    command = [sys.executable, "-m", "jobs.tune", "--cache", str(inputs["cache"]), "--teacher", str(inputs["teacher"]),
               "-o", str(output), "-c", str(inputs["config"])]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")} | {"OMP_NUM_THREADS": "1"}
    with log_path.open("w") as log:
        driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 400
        while True:  # cut once a trial has reported its first epoch and Tune has saved its state
            state_saved = list((output / "tune" / "sweep").glob("experiment_state-*.json"))
            if state_saved and any(_tune_rows(output).values()):
                break
            assert driver.poll() is None, f"the sweep ended before it could be cut:\n{log_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no trial finished an epoch in time:\n{log_path.read_text()[-4000:]}"
            time.sleep(0.5)
        at_kill = _epoch_end_checkpoints(output)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    client = MlflowClient(inputs["uri"])
    parent_id = json.loads((output / "tune" / "sweep.json").read_text())["parent_run_id"]
    runs_at_kill = {r.info.run_name: r.info.run_id for r in client.search_runs(
        [client.get_run(parent_id).info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")}
    lines: list[str] = []
    cfg = load_config(inputs["config"])
    time.sleep(3.0)  # the killed driver's local Ray goes down with it (fate sharing)
    resumed_at = time.time()
    result = run(cfg, str(inputs["cache"]), str(inputs["teacher"]), str(output), progress=lines.append)
    return {"result": result, "output": output, "at_kill": at_kill, "runs_at_kill": runs_at_kill, "lines": lines, "resumed_at": resumed_at,
            "phase1_log": log_path.read_text(), "cfg": cfg, "client": client, "parent_id": parent_id, **inputs}


def _tune_rows(output: Path) -> dict[str, list[tuple[int, float]]]:
    """{trial id: [(epoch, reported at)]} in report order over both phases (the trials' epoch
    result files, written by their Train runs as they report)."""
    from jobs.tune import TIME_ATTR, read_epoch_results

    rows: dict[str, list[tuple[int, float]]] = {}
    for record in read_epoch_results(output / "trials"):
        rows.setdefault(record["trial_id"], []).append((record[TIME_ATTR], record["reported_at"]))
    return rows


@pytest.mark.slow
def test_resumed_sweep_finishes_every_trial_and_asha_stopped_some_early(sweep):
    result = sweep["result"]
    assert result.resumed and sweep["at_kill"], sweep["phase1_log"][-3000:]
    assert len(result.trials) == 4 and {t.status for t in result.trials} <= {FINISHED, STOPPED_EARLY}, result.trials
    assert {json.dumps(t.values, sort_keys=True) for t in result.trials} == {
        json.dumps({"training.lr": lr, "video.key_interval": k}, sort_keys=True) for lr in (1e-9, 0.3) for k in (3, 4)
    }
    assert all(t.max_epochs == 2 for t in result.trials)
    stopped = [t for t in result.trials if t.status == STOPPED_EARLY]
    finished = [t for t in result.trials if t.status == FINISHED]
    # Every epoch's result is known, also one in flight at the cut (written by the trial's Train run).
    assert finished and all(t.epochs == 2 and [e for e, _ in t.history] == [1, 2] for t in finished)
    assert all(t.epochs == 1 and [e for e, _ in t.history] == [1] for t in stopped)
    assert any(t.values["training.lr"] == 0.3 for t in stopped), result.trials  # the wrecked flow nets stop at the rung
    assert result.best.values["training.lr"] == 1e-9 and result.best.metric < 2
    assert result.summary["epochs_run"] == sum(t.epochs for t in result.trials) < result.summary["epochs_full_budget"] == 8
    assert result.summary["compute_saved"] == pytest.approx(1 - result.summary["epochs_run"] / 8)
    assert any(line.startswith("tune: restoring the interrupted sweep") for line in sweep["lines"])
    assert any(line.startswith("tune: trial") and " epoch " in line for line in sweep["lines"])  # this process's callbacks
    assert any("stopped early by ASHA after 1/2 epochs" in line for line in sweep["lines"] + sweep["phase1_log"].splitlines())


@pytest.mark.slow
def test_no_trial_trained_an_epoch_twice_and_cut_trials_resumed_their_runs(sweep):
    rows = _tune_rows(sweep["output"])
    assert set(rows) == {t.trial_id for t in sweep["result"].trials}
    for trial_id, reported in rows.items():
        epochs = [epoch for epoch, _ in reported]
        assert epochs == sorted(set(epochs)), f"trial {trial_id} reported epochs {epochs}: an epoch ran twice"
    client, result = sweep["client"], sweep["result"]
    resumed = 0
    for trial in result.trials:
        epochs_at_kill = sweep["at_kill"].get(trial.trial_id, 0)
        after_resume = [epoch for epoch, reported_at in rows[trial.trial_id] if reported_at > sweep["resumed_at"]]
        if epochs_at_kill and after_resume:  # it had a checkpoint: it continued that Train run and MLflow run
            resumed += 1
            assert after_resume[0] == epochs_at_kill + 1
            assert sweep["runs_at_kill"][f"trial-{trial.trial_id}"] == trial.run_id
            assert int(client.get_run(trial.run_id).data.tags["semidff.train.resumed_at_step"]) > 0
        steps = [m.step for m in client.get_metric_history(trial.run_id, "train/total")]
        assert steps == sorted(set(steps)), f"trial {trial.trial_id} logged steps {steps} twice"
    assert resumed >= 1  # the first trial to report is never stopped, so it was still running at the cut


@pytest.mark.slow
def test_parent_and_child_runs_on_the_tracking_server(sweep):
    client, result = sweep["client"], sweep["result"]
    parent = client.get_run(result.parent_run_id)
    assert result.tracking_uri == sweep["uri"] and parent.data.tags["semidff.stage"] == "tune"
    assert parent.info.run_id == sweep["parent_id"]  # the resumed sweep continued its run
    inputs = {d.dataset.name for d in parent.inputs.dataset_inputs}
    assert inputs == {"teacher_cache", "teacher"}
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_id = {c.info.run_id: c for c in children}
    for trial in result.trials:
        child = by_id[trial.run_id]
        assert child.data.tags["semidff.stage"] == "train" and child.data.tags["semidff.tune.trial_id"] == trial.trial_id
        assert json.loads(child.data.tags["semidff.tune.values"]) == trial.values
        assert child.info.status == ("FINISHED" if trial.status == FINISHED else "KILLED")
        assert child.data.params["video.key_interval"] == str(trial.values["video.key_interval"])
        assert child.data.tags["semidff.input.teacher_cache.source"] == str(sweep["cache"])
    extra = [c for c in children if c.info.run_id not in {t.run_id for t in result.trials}]
    shown = [(c.info.run_name, c.info.status, c.data.tags.get("semidff.tune.status")) for c in extra]
    assert all(c.info.status == "KILLED" and c.data.tags.get("semidff.tune.status", "").startswith("superseded") for c in extra), shown
    assert len(extra) <= 2  # at most the runs of the two trials cut before their first checkpoint
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)} | {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"trials.md", "trials.csv", "best.json", "config.yaml", "plots/learning_curves.png",
            "plots/metric_vs_key_interval.png", "plots/metric_vs_swept_values.png"} <= artifacts
    metrics = parent.data.metrics
    assert metrics["sweep/trials"] == 4 and metrics["sweep/compute_saved"] == pytest.approx(result.summary["compute_saved"])
    assert parent.data.tags["semidff.tune.best_run_id"] == result.best.run_id


@pytest.mark.slow
def test_best_checkpoint_tables_and_registered_model(sweep):
    from semidff.checkpoint import file_sha256, load_model_checkpoint

    result = sweep["result"]
    best = result.best
    assert best.status == FINISHED and best.metric == min(t.metric for t in result.trials if t.status == FINISHED)
    flow = load_model_checkpoint(result.best_flow_checkpoint, expected_kind="flow")
    assert flow.meta["teacher_sha256"] == file_sha256(sweep["teacher"]) and flow.meta["key_interval"] == best.values["video.key_interval"]
    recorded = json.loads((sweep["output"] / "best.json").read_text())
    assert recorded["trial_id"] == best.trial_id and recorded["flow_checkpoint"] == str(result.best_flow_checkpoint)
    assert recorded["registered_model"] == MODEL and recorded["model_version"] == result.model_version
    version = sweep["client"].get_model_version(MODEL, result.model_version)
    assert version.run_id == best.run_id and version.tags["semidff.flow.sha256"] == flow.sha256
    rows = (sweep["output"] / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("trial,training.lr,video.key_interval,status,epochs,val/regression_error_vs_copy")
    assert len(rows) == 5
    assert f"**{best.trial_id}** (best)" in (sweep["output"] / "trials.md").read_text()
    for name in ("learning_curves", "metric_vs_key_interval", "metric_vs_swept_values"):
        assert (sweep["output"] / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_lineage_from_the_registered_model_reaches_the_cache_manifest_and_teacher(sweep):
    from semidff.checkpoint import file_sha256
    from semidff.lineage import format_lineage, trace_lineage

    result = sweep["result"]
    lineage = trace_lineage(f"models:/{MODEL}/{result.model_version}", sweep["uri"])
    root = lineage.root
    assert root.run_id == result.best.run_id and root.stage == "train"
    assert root.parent is not None and root.parent.run_id == result.parent_run_id and root.parent.stage == "tune"
    inputs = {i.name: i for i in root.inputs}
    assert inputs["teacher"].digest == file_sha256(sweep["teacher"])
    cache_run = inputs["teacher_cache"].producer
    assert cache_run is not None and cache_run.stage == "cache" and cache_run.tracking_uri == sweep["uri"]
    leaves = {i.name: i for i in lineage.leaf_inputs()}
    assert set(leaves) == {"manifest", "teacher"}
    assert leaves["manifest"].source == str(sweep["root"] / "manifest")
    text = format_lineage(lineage)
    assert f"trial of sweep: tune run {result.parent_run_id}" in text and f"cache run {cache_run.run_id}" in text
    sweep_lineage = trace_lineage(str(sweep["output"]))  # the sweep's folder: its parent run and trials
    assert sweep_lineage.root.run_id == result.parent_run_id
    assert {run_id for run_id, _, _ in sweep_lineage.root.trials} >= {t.run_id for t in result.trials}


@pytest.mark.slow
def test_no_placement_group_is_left_behind(sweep):
    from ray.util import placement_group_table

    live = [g for g in placement_group_table().values() if g["state"] != "REMOVED"]
    assert live == [], live


@pytest.mark.slow
def test_bad_sweeps_stop_before_ray_with_a_clear_error(sweep, tmp_path):
    from jobs.tune import run

    cfg = sweep["cfg"]
    cache, teacher = str(sweep["cache"]), str(sweep["teacher"])
    too_far = load_config(sweep["config"], ["tune.search_space={video.key_interval: {grid: [3, 8]}}"])
    with pytest.raises(SearchSpaceError, match=r"video.key_interval=8: video.key_interval=8 propagates up to d = 7 frames, but the cache .* sampled d in \[0, 4\]"):
        run(too_far, cache, teacher, str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="tune.metric='val/nothing' is not reported by a trial"):
        run(load_config(sweep["config"], ["tune.metric=val/nothing"]), cache, teacher, str(tmp_path / "b"))
    with pytest.raises(ConfigError, match="tune.metric=val/mAP needs labeled validation videos"):
        run(load_config(sweep["config"], ["tune.metric=val/mAP", "tune.mode=max"]), cache, teacher, str(tmp_path / "c"))
    changed = load_config(sweep["config"], ["training.batch_size=2"])
    with pytest.raises(SweepError, match="holds a sweep started with another config"):
        run(changed, cache, teacher, str(sweep["output"]))
    with pytest.raises(SweepError, match="already holds a sweep"):
        run(cfg, cache, teacher, str(sweep["output"]), resume=False)
    assert not (tmp_path / "a").exists()
    # The command line says the same with exit code 2.
    from typer.testing import CliRunner

    from jobs.cli import app

    reply = CliRunner().invoke(app, ["tune", "--cache", cache, "--teacher", teacher, "-o", str(tmp_path / "d"), "-c", str(sweep["config"]),
                                     "tune.search_space={video.key_intervl: {grid: [3]}}"])
    assert reply.exit_code == 2 and "'video.key_intervl' is not a config key. Did you mean: video.key_interval" in reply.output


def test_param_space_and_concurrency_plan():
    from ray import tune

    cfg = load_config(None, ["tune.search_space={video.key_interval: {grid: [5, 10]}, training.lr: {loguniform: [1.0e-5, 1.0e-3]}, "
                             "training.joint_weights.semantic: {quasi_uniform: [0.1, 1.0]}, training.semantic_epochs: {randint: [1, 2]}}",
                             "tune.num_samples=3"])
    space = parse_search_space(cfg)
    params, samples = param_space(space, cfg.tune.num_samples)
    assert params["video.key_interval"] == tune.grid_search([5, 10])
    assert params[QUASI_POINT_KEY] == tune.grid_search([0, 1, 2]) and samples == 1  # each quasi point once per grid cell
    assert (params["training.lr"].lower, params["training.lr"].upper) == (1e-5, 1e-3)
    assert (params["training.semantic_epochs"].lower, params["training.semantic_epochs"].upper) == (1, 3)  # Tune's end is exclusive
    assert "training.joint_weights.semantic" not in params
    assert param_space(parse_search_space(load_config(None, ["tune.search_space={training.lr: {choice: [1.0e-4]}}"])), 3)[1] == 3
    lines: list[str] = []
    small = load_config(None, ["tune.max_concurrent_trials=4", "training.cpus_per_worker=0.5", "tune.cpus_per_trial=0.1"])
    assert plan_concurrency(small, 4.0, lines.append) == 4 and lines == []  # 5 trials of 0.6 CPU fit beside 1 reader CPU
    assert plan_concurrency(small, 2.0, lines.append) == 1 and "running 1 at a time instead of tune.max_concurrent_trials=4" in lines[-1]
    with pytest.raises(SweepError, match=r"a trial needs 1.1 CPUs .* plus 1 CPU for the data readers, but the Ray cluster has 2"):
        plan_concurrency(load_config(None, ["training.cpus_per_worker=1.0"]), 2.0, lines.append)
    # A cluster may scale up (GPU workers from zero): the configured concurrency, with a note.
    assert plan_concurrency(small, 2.0, lines.append, local=False) == 4 and "wait for the autoscaler" in lines[-1]


def test_asha_replays_the_results_from_before_a_resume_and_never_stops_a_last_epoch(tmp_path):
    from ray.tune.experiment import Trial

    from jobs.tune import RESULTS_FILE, SweepASHA

    # Two trials' epoch results as their Train runs wrote them, the last line cut by the kill.
    results = [("ab_00000", 1, 1.0, 1.0), ("ab_00001", 1, 0.9, 2.0), ("ab_00005", 1, 5.0, 3.0), ("ab_00000", 2, 0.8, 4.0)]
    for trial_id, epoch, value, at in results:
        path = tmp_path / trial_id / RESULTS_FILE
        path.parent.mkdir(exist_ok=True)
        with path.open("a") as stream:
            stream.write(json.dumps({"trial_id": trial_id, "reported_at": at, "epoch": epoch, "val/error": value}) + "\n")
    with (tmp_path / "ab_00001" / RESULTS_FILE).open("a") as stream:
        stream.write('{"trial_id": "ab_0')
    scheduler = SweepASHA(lambda config: config["epochs"], str(tmp_path), time_attr="epoch", max_t=3, grace_period=1, reduction_factor=2)
    scheduler.set_search_properties("val/error", "min")

    def trial(index: int) -> Trial:
        new = Trial("run_trial", config={"epochs": 3}, trial_id=f"ab_{index:05d}", stub=True)
        scheduler.on_trial_add(None, new)
        return new

    worse, better, last, cut = trial(2), trial(3), trial(4), trial(5)
    # Rung 1 holds the replayed 1.0, 0.9 and 5.0: a worse first epoch stops, a better one goes on.
    assert scheduler.on_trial_result(None, worse, {"epoch": 1, "val/error": 5.5}) == "STOP"
    assert scheduler.on_trial_result(None, better, {"epoch": 1, "val/error": 0.5}) == "CONTINUE"
    # ab_00005's epoch 1 (5.0, worse than the rung) was reported but never reached Tune before the
    # cut: it is stopped at its next result, however good.
    assert scheduler.on_trial_result(None, cut, {"epoch": 2, "val/error": 0.1}) == "STOP"
    # A trial's last epoch never stops it (it ends by itself and writes flow.pt), however bad.
    assert scheduler.on_trial_result(None, last, {"epoch": 3, "val/error": 50.0}) == "CONTINUE"
