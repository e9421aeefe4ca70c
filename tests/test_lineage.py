"""semidff lineage: from an evaluation, a Tune trial, a registered model version or an output
folder back to the manifest, the labeled data and the teacher checkpoint, over real MLflow runs
made through semidff.tracking: the teacher and the cache each in their own default SQLite store
(the embedded layout), the sweep, its trials and the evaluation in one configured store."""
from pathlib import Path

import pytest
from typer.testing import CliRunner

from semidff.checkpoint import file_sha256
from jobs.cli import app
from semidff.config import load_config
from semidff.lineage import LineageError, format_lineage, trace_lineage
from semidff.tracking import log_input_dataset, record_output, stage_run, tracking_uri_for

MODEL = "semidff-flow-test"


def _stage(cfg, stage, output: Path, inputs, run_name=None, parent_run_id=None) -> str:
    """One stage run with its inputs [(name, source, digest, context, producer)], its folder marked."""
    output.mkdir(parents=True, exist_ok=True)
    with stage_run(cfg, stage, output, run_name=run_name, parent_run_id=parent_run_id) as active:
        for name, source, digest, context, producer in inputs:
            log_input_dataset(name, source, digest, context=context, producer_run_id=producer)
        run_id = active.info.run_id
    record_output(output, run_id, stage, tracking_uri_for(cfg, output))
    return run_id


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """manifest (no run) + labeled data -> train-teacher -> cache -> tune sweep with 2 trials -> evaluate."""
    import os

    saved_uri = os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = tmp_path_factory.mktemp("lineage")
    cfg = load_config("jobs/configs/tiny.yaml")
    ids: dict[str, str] = {}
    # Creating an MLflow SQLite schema takes seconds; make it once and copy the empty store into
    # each stage's folder (where tracking_uri_for puts it by default).
    import shutil

    from mlflow import MlflowClient

    template = root / "template" / "mlflow.db"
    template.parent.mkdir()
    MlflowClient(f"sqlite:///{template}").search_experiments()
    for folder in ("teacher", "cache", "sweep"):
        (root / folder).mkdir()
        shutil.copy(template, root / folder / "mlflow.db")

    labeled = root / "data" / "dataset.json"
    labeled.parent.mkdir()
    labeled.write_text('{"format": "semidff-video/1"}')
    teacher_dir = root / "teacher"
    ids["teacher"] = _stage(cfg, "train-teacher", teacher_dir, [("labeled_frames", labeled, "d" * 64, "training", None)])
    teacher = teacher_dir / "teacher.pt"
    teacher.write_bytes(b"teacher weights")
    teacher_sha = file_sha256(teacher)

    manifest = root / "manifest"
    manifest.mkdir()
    (manifest / "manifest.parquet").write_bytes(b"rows")
    cache = root / "cache"
    ids["cache"] = _stage(cfg, "cache", cache, [("manifest", manifest, "m" * 64, "videos", None),
                                                ("teacher", teacher, teacher_sha, "model", ids["teacher"])])

    sweep = root / "sweep"
    ids["tune"] = _stage(cfg, "tune", sweep, [("teacher_cache", cache, "c" * 64, "training", ids["cache"]),
                                              ("teacher", teacher, teacher_sha, "model", ids["teacher"])])
    trial_cfg = cfg.model_copy(deep=True)
    trial_cfg.mlflow.tracking_uri = tracking_uri_for(cfg, sweep)  # trials log to the sweep's store
    for trial in ("t1", "t2"):
        ids[trial] = _stage(trial_cfg, "train", sweep / "trials" / trial,
                            [("teacher_cache", cache, "c" * 64, "training", ids["cache"]),
                             ("teacher", teacher, teacher_sha, "model", ids["teacher"])],
                            run_name=f"trial-{trial}", parent_run_id=ids["tune"])
    flow = sweep / "trials" / "t1" / "flow.pt"
    flow.write_bytes(b"flow weights")

    client = MlflowClient(tracking_uri_for(cfg, sweep))
    client.set_tag(ids["tune"], "semidff.tune.best_run_id", ids["t1"])
    client.create_registered_model(MODEL)
    client.create_model_version(MODEL, source=f"runs:/{ids['t1']}/flow_checkpoint", run_id=ids["t1"])
    client.set_registered_model_alias(MODEL, "best", "1")

    evaluation = root / "evaluation"
    ids["evaluate"] = _stage(trial_cfg, "evaluate", evaluation, [("evaluation_data", labeled, "e" * 64, "evaluation", None),
                                                           ("flow", flow, file_sha256(flow), "model", ids["t1"]),
                                                           ("teacher", teacher, teacher_sha, "model", ids["teacher"])])
    yield {"root": root, "ids": ids, "cfg": cfg, "sweep": sweep, "evaluation": evaluation, "cache": cache, "teacher": teacher}
    if saved_uri is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved_uri


def test_evaluation_traces_back_through_trial_sweep_cache_and_teacher_across_stores(chain):
    ids, cfg = chain["ids"], chain["cfg"]
    lineage = trace_lineage(ids["evaluate"], tracking_uri_for(cfg, chain["sweep"]))
    assert [(r.stage, r.run_id) for r in lineage.runs()] == [
        ("evaluate", ids["evaluate"]), ("train", ids["t1"]), ("tune", ids["tune"]), ("cache", ids["cache"]),
        ("train-teacher", ids["teacher"]),
    ]
    by_stage = {r.stage: r for r in lineage.runs()}
    # Each producer was read from its own store, found through the input folder's _semidff_run.json.
    assert by_stage["cache"].tracking_uri == tracking_uri_for(cfg, chain["cache"])
    assert by_stage["train-teacher"].tracking_uri == tracking_uri_for(cfg, chain["teacher"].parent)
    trial = by_stage["train"]
    assert trial.parent is not None and trial.parent.run_id == ids["tune"] and trial.name == "trial-t1"
    inputs = {i.name: i for i in trial.inputs}
    assert set(inputs) == {"teacher_cache", "teacher"}
    assert inputs["teacher_cache"].digest == "c" * 64 and inputs["teacher_cache"].context == "training"
    assert inputs["teacher_cache"].source == str(chain["cache"]) and inputs["teacher_cache"].producer.run_id == ids["cache"]
    assert inputs["teacher"].digest == file_sha256(chain["teacher"])
    leaves = {(i.name, i.digest) for i in lineage.leaf_inputs()}
    assert leaves == {("evaluation_data", "e" * 64), ("labeled_frames", "d" * 64), ("manifest", "m" * 64)}


def test_printed_chain_names_every_run_input_digest_and_producer_once(chain):
    ids, cfg = chain["ids"], chain["cfg"]
    text = format_lineage(trace_lineage(ids["evaluate"], tracking_uri_for(cfg, chain["sweep"])))
    assert text.splitlines()[0] == f"lineage of {ids['evaluate']} (run {ids['evaluate']})"
    assert f"evaluate run {ids['evaluate']}  'evaluate'  FINISHED" in text
    assert f"train run {ids['t1']}  'trial-t1'  FINISHED\n" in text  # the root's store: not repeated
    assert f"cache run {ids['cache']}  'cache'  FINISHED  [store {tracking_uri_for(cfg, chain['cache'])}]" in text
    assert f"trial of sweep: tune run {ids['tune']}" in text
    assert f"input teacher_cache (training): {chain['cache']}  digest {'c' * 12}" in text
    assert f"input manifest (videos): {chain['root'] / 'manifest'}  digest {'m' * 12}" in text
    assert "(no producing run recorded)" in text
    assert text.count(f"cache run {ids['cache']}") == 1
    assert text.count(f"train-teacher run {ids['teacher']}") >= 2 and "(shown above)" in text  # named again, not repeated
    assert "first inputs (produced by no run in this chain):" in text and f"manifest: {chain['root'] / 'manifest'}  digest {'m' * 64}" in text


def test_a_model_version_alias_or_latest_resolves_to_the_trial_run(chain):
    ids, cfg = chain["ids"], chain["cfg"]
    uri = tracking_uri_for(cfg, chain["sweep"])
    for target in (f"models:/{MODEL}/1", f"{MODEL}/1", f"models:/{MODEL}@best", MODEL, f"models:/{MODEL}/latest"):
        lineage = trace_lineage(target, uri)
        assert lineage.root.run_id == ids["t1"], target
    assert trace_lineage(f"models:/{MODEL}/1", uri).resolved == f"registered model {MODEL} version 1"


def test_an_output_folder_names_its_run_and_store_and_a_sweep_lists_its_trials(chain):
    ids = chain["ids"]
    trial = trace_lineage(str(chain["sweep"] / "trials" / "t1" / "flow.pt"))  # a file in the folder works too
    assert trial.root.run_id == ids["t1"] and trial.resolved.startswith("output folder")
    sweep = trace_lineage(str(chain["sweep"])).root
    assert sweep.stage == "tune"
    assert [(run_id, name) for run_id, name, _ in sweep.trials] == [(ids["t1"], "trial-t1"), (ids["t2"], "trial-t2")]
    assert f"{ids['t1']}  'trial-t1'  FINISHED  <- best" in format_lineage(trace_lineage(str(chain["sweep"])))


def test_unknown_targets_and_missing_stores_are_clear_errors(chain, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking_uri_for(chain["cfg"], chain["sweep"])
    with pytest.raises(LineageError, match="run 0123456789abcdef0123456789abcdef not found in"):
        trace_lineage("0123456789abcdef0123456789abcdef", uri)
    with pytest.raises(LineageError, match="which tracking store"):
        trace_lineage(chain["ids"]["t1"])
    with pytest.raises(LineageError, match="_semidff_run.json is missing"):
        trace_lineage(str(tmp_path))
    with pytest.raises(LineageError, match="no-such-model/3: no such registered model or version"):
        trace_lineage("models:/no-such-model/3", uri)


def test_a_producer_missing_from_its_store_is_reported_not_fatal(chain, tmp_path):
    cfg = chain["cfg"].model_copy(deep=True)
    cfg.mlflow.tracking_uri = tracking_uri_for(chain["cfg"], chain["sweep"])
    lonely = tmp_path / "lonely"
    run_id = _stage(cfg, "train", lonely, [("teacher_cache", tmp_path / "gone", "c" * 64, "training", "f" * 32)])
    lineage = trace_lineage(str(lonely))
    assert lineage.root.run_id == run_id
    assert lineage.root.inputs[0].producer is None
    assert f"run {'f' * 32} not found in {tracking_uri_for(cfg, lonely)}" in format_lineage(lineage)


def test_cli_prints_the_chain_and_exits_2_on_a_bad_target(chain, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["lineage", str(chain["evaluation"])])
    assert result.exit_code == 0, result.output
    assert f"cache run {chain['ids']['cache']}" in result.output and "first inputs" in result.output
    result = runner.invoke(app, ["lineage", str(tmp_path)])
    assert result.exit_code == 2 and "_semidff_run.json is missing" in result.output
