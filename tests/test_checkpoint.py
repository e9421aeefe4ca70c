"""semidff/checkpoint.py: the same model content gives byte-identical files (the SHA-256 that
lineage records), whatever the file is called and in whichever process it is saved."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from semidff.checkpoint import file_sha256, load_model_checkpoint, save_model_checkpoint
from semidff.config import load_config
from semidff.models.build import build_propagator

TINY = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "tiny.yaml"

SAVE_IN_A_NEW_PROCESS = """
import sys, torch
from semidff.checkpoint import save_model_checkpoint
from semidff.config import load_config
from semidff.models.build import build_propagator
cfg = load_config(sys.argv[1])
torch.manual_seed(0)
print(save_model_checkpoint(sys.argv[2], "flow", cfg, {"propagator": build_propagator(cfg.model).state_dict()}, meta={"steps": 3}))
"""


def test_the_same_content_saved_twice_gives_the_same_bytes(tmp_path):
    cfg = load_config(TINY)
    torch.manual_seed(0)
    weights = {"propagator": build_propagator(cfg.model).state_dict()}
    first = save_model_checkpoint(tmp_path / "a" / "flow.pt", "flow", cfg, weights, meta={"steps": 3})
    second = save_model_checkpoint(tmp_path / "b" / "renamed_model.pt", "flow", cfg, weights, meta={"steps": 3})
    assert first == second == file_sha256(tmp_path / "a" / "flow.pt")
    assert (tmp_path / "a" / "flow.pt").read_bytes() == (tmp_path / "b" / "renamed_model.pt").read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["flow.pt"]  # no temporary file left behind

    in_new_process = subprocess.run(
        [sys.executable, "-c", SAVE_IN_A_NEW_PROCESS, str(TINY), str(tmp_path / "c.pt")], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert in_new_process == first

    loaded = load_model_checkpoint(tmp_path / "b" / "renamed_model.pt", expected_kind="flow")
    assert loaded.sha256 == first and loaded.meta == {"steps": 3}
    assert all(torch.equal(loaded.state_dicts["propagator"][k], v) for k, v in weights["propagator"].items())

    # Any change of content changes the checksum.
    assert save_model_checkpoint(tmp_path / "d.pt", "flow", cfg, weights, meta={"steps": 4}) != first
    changed = {"propagator": {k: v + 1 if v.is_floating_point() else v for k, v in weights["propagator"].items()}}
    assert save_model_checkpoint(tmp_path / "e.pt", "flow", cfg, changed, meta={"steps": 3}) != first


def test_check_same_model_names_differences_and_can_ignore_the_flow_network(tmp_path):
    import pytest

    from semidff.checkpoint import PROPAGATOR_KEYS, check_same_model
    from semidff.config import ConfigError

    save_model_checkpoint(tmp_path / "t.pt", "teacher", load_config(TINY), {"rfcn": {}})
    teacher = load_model_checkpoint(tmp_path / "t.pt")
    ablation = load_config(TINY, ["model.predictor=residual", "model.flownet.width_multiplier=0.25"])
    with pytest.raises(ConfigError, match=r"model\.flownet\.width_multiplier: checkpoint 0\.125, config 0\.25") as refused:
        check_same_model(teacher, ablation)
    assert "model.predictor: checkpoint 'flow', config 'residual'" in str(refused.value)
    check_same_model(teacher, ablation, ignore=PROPAGATOR_KEYS)  # a teacher serves any flow network
    with pytest.raises(ConfigError, match=r"model\.num_classes"):
        check_same_model(teacher, load_config(TINY, ["model.num_classes=5"]), ignore=PROPAGATOR_KEYS)
