"""The stage 2 student: a temporal module and a copy of the teacher's R-FCN (paper §3.4, dff-facts §3.2).

    teacher = build_teacher(load_model_checkpoint("teacher.pt", "teacher"))
    student = build_student(teacher, cfg.model, finetune="flow_heads")   # teacher is frozen in place
    params = student.set_step("regression")     # step A: the propagator only
    params = student.set_step("semantic")       # step B: propagator + what cfg.training.finetune says
    losses = student(batch, objective)          # FlowLosses (semidff.training.flow_step)

The student R-FCN's RPN and PS heads start as copies of the teacher's (the official code merges
the teacher's weights under ``teacher_`` and plain names). Its feature extractor is the teacher's
own module, shared and frozen, unless ``finetune="flow_spatial"``: then the student has its own copy,
which trains in step B (Table 3e "temporal + spatial module"), its frozen stages (DFF: conv1 and
res2) excepted, and the key features are recomputed from the key frames with it.
"""
from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

from semidff.config import ModelConfig
from semidff.models.build import build_propagator
from semidff.models.rfcn import RFCN
from semidff.teacher_targets import PairBatch
from semidff.training.flow_step import STEP_KINDS, FlowLosses, FlowObjective, StepKind, flow_losses

Finetune = Literal["flow", "flow_heads", "flow_spatial"]
FINETUNE_CHOICES: tuple[str, ...] = ("flow", "flow_heads", "flow_spatial")


class Student(nn.Module):
    """Temporal module + student R-FCN; ``forward(batch, objective)`` is the training step's losses.

    rfcn: the student R-FCN (teacher extractor, shared, or an own copy; heads copied from the teacher).
    propagator: FlowNetS + scale field (Eq. 1) or the residual predictor (Table 3a).
    finetune: what trains besides the propagator outside step A: "flow" nothing, "flow_heads"
        the RPN and PS heads (paper default), "flow_spatial" the heads and the own extractor.
    """

    def __init__(self, rfcn: RFCN, propagator: nn.Module, finetune: Finetune = "flow_heads"):
        super().__init__()
        if finetune not in FINETUNE_CHOICES:
            raise ValueError(f"finetune={finetune!r}: must be one of {FINETUNE_CHOICES}")
        self.rfcn = rfcn
        self.propagator = propagator
        self.finetune = finetune
        self.step: StepKind | None = None

    @property
    def owns_feature_extractor(self) -> bool:
        """Whether the key features come from the student's own (trainable) extractor."""
        return self.finetune == "flow_spatial"

    def trainable_modules(self, step: StepKind) -> dict[str, nn.Module]:
        """The modules that train in ``step``: step A ("regression") the propagator only; step B
        ("semantic") and "joint" also the heads / the extractor, as ``finetune`` says."""
        if step not in STEP_KINDS:
            raise ValueError(f"step={step!r}: must be one of {STEP_KINDS}")
        modules: dict[str, nn.Module] = {"propagator": self.propagator}
        if step != "regression" and self.finetune in ("flow_heads", "flow_spatial"):
            modules |= {"rpn_head": self.rfcn.rpn_head, "ps_roi_head": self.rfcn.ps_roi_head}
        if step != "regression" and self.finetune == "flow_spatial":
            modules["feature_extractor"] = self.rfcn.feature_extractor
        return modules

    def set_step(self, step: StepKind) -> list[nn.Parameter]:
        """Switch ``requires_grad`` for ``step`` and return the parameters that train, in a fixed order.

        The backbone's frozen stages (``model.backbone.frozen_stages``) stay frozen even when the
        extractor trains; train/eval modes follow (a frozen extractor stays in eval mode).
        """
        modules = self.trainable_modules(step)
        self.requires_grad_(False)
        for module in modules.values():
            module.requires_grad_(True)
        for frozen in _frozen_backbone_modules(self.rfcn.feature_extractor):
            frozen.requires_grad_(False)
        self.step = step
        self.train(self.training)
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> "Student":
        """Train/eval mode; the feature extractor is in train mode only while it trains."""
        super().train(mode)
        extractor_trains = self.step is not None and "feature_extractor" in self.trainable_modules(self.step)
        self.rfcn.feature_extractor.train(mode and extractor_trains)
        return self

    def forward(self, batch: PairBatch, objective: FlowObjective) -> FlowLosses:
        """The step's losses on one same-size batch (semidff.training.flow_step.flow_losses)."""
        return flow_losses(self, batch, objective)

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights that can differ from the teacher's: propagator, heads, and an own extractor.

        The shared teacher extractor is left out (it is in the teacher checkpoint), which keeps the
        periodic training checkpoints small.
        """
        skip = () if self.owns_feature_extractor else ("rfcn.feature_extractor.",)
        return {name: tensor for name, tensor in self.state_dict().items() if not name.startswith(skip)}

    def load_trained_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`trained_state_dict`: every key it writes must be there, and no other."""
        expected = set(self.trained_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"student weights do not fit this student (finetune={self.finetune}, "
                f"predictor={type(self.propagator).__name__}): missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        self.load_state_dict(state, strict=False)


def build_student(teacher: RFCN, model_cfg: ModelConfig, finetune: Finetune = "flow_heads") -> Student:
    """A Student for ``teacher`` (which is frozen in place: no gradients, eval mode).

    The propagator is new, N(0, model.flownet.init_std) (paper §3.5; the scale field starts at 1),
    built by ``model.predictor``; the heads are copies of the teacher's; the extractor is the
    teacher's own module unless finetune == "flow_spatial" (then a copy).
    """
    if finetune not in FINETUNE_CHOICES:
        raise ValueError(f"finetune={finetune!r}: must be one of {FINETUNE_CHOICES}")
    if teacher.feature_channels != model_cfg.feature_channels:
        raise ValueError(
            f"teacher features have {teacher.feature_channels} channels but model.feature_channels="
            f"{model_cfg.feature_channels}; use the teacher checkpoint's model config"
        )
    teacher.requires_grad_(False).eval()
    shared = {} if finetune == "flow_spatial" else {id(teacher.feature_extractor): teacher.feature_extractor}
    rfcn = copy.deepcopy(teacher, memo=shared)  # the memo hands back the teacher's extractor itself
    device = next(teacher.parameters()).device
    student = Student(rfcn, build_propagator(model_cfg).to(device), finetune)
    student.set_step("regression")
    return student


def _frozen_backbone_modules(feature_extractor: nn.Module) -> list[nn.Module]:
    """The backbone stages that ``model.backbone.frozen_stages`` keeps frozen (none for other extractors)."""
    backbone = getattr(feature_extractor, "backbone", None)
    frozen = getattr(backbone, "_frozen_modules", None)
    return list(frozen()) if callable(frozen) else []
