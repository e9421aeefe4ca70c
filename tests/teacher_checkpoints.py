"""A real teacher checkpoint for tests that need one but not a trained one.

    from tests.teacher_checkpoints import save_random_teacher
    sha256 = save_random_teacher(tmp_path / "teacher.pt", cfg)               # seeded random tiny R-FCN
    save_random_teacher(tmp_path / "broken.pt", cfg, poison=True)          # NaN in the class head

The checkpoint is what ``semidff train-teacher`` writes (``save_model_checkpoint`` kind "teacher",
state dicts ``{"rfcn": ...}``), with weights from ``torch.manual_seed(seed)``: every stage that reads
a teacher (cache, train, evaluate, detect) loads it like a trained one, and two calls with the same
config and seed give the same weights.
"""
from __future__ import annotations

from pathlib import Path

import torch

from semidff.checkpoint import save_model_checkpoint
from semidff.models.build import build_rfcn


def save_random_teacher(path: str | Path, cfg, poison: bool = False, seed: int = 0) -> str:
    """Write a randomly initialised teacher of ``cfg.model`` to ``path``; return its SHA-256.

    poison: put a NaN in the R-FCN class head (features and proposals stay finite), a teacher whose
    outputs a stage must refuse.
    """
    torch.manual_seed(seed)
    rfcn = build_rfcn(cfg.model)
    if poison:
        with torch.no_grad():
            rfcn.ps_roi_head.rfcn_cls.weight[0, 0] = float("nan")
    return save_model_checkpoint(Path(path), "teacher", cfg, {"rfcn": rfcn.state_dict()})
