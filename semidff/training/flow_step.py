"""The stage 2 training step of Semi-DFF (paper §3.4), top to bottom in one place: the student,
what a step optimises, its losses, and the optimiser step.

    teacher = build_teacher(load_model_checkpoint("teacher.pt", "teacher"))
    student = build_student(teacher, cfg.model, finetune="flow_heads")   # teacher is frozen in place
    params = student.set_step("regression")                           # step A: the propagator only
    objective = FlowObjective.from_config(cfg, "regression")          # step A; "semantic" = step B
    losses = train_step(student, optimizer, micro_batches, objective)  # one optimiser step
    error = regression_error_vs_copy(student, validation_batches)     # the validation number

The student R-FCN's RPN and PS heads start as copies of the teacher's (the official code merges
the teacher's weights under ``teacher_`` and plain names). Its feature extractor is the teacher's
own module, shared and frozen, unless ``finetune="flow_spatial"``: then the student has its own copy,
which trains in step B (Table 3e "temporal + spatial module"), its frozen stages (DFF: conv1 and
res2) excepted, and the key features are recomputed from the key frames with it.

A step: key-frame features → propagate them to the current frame (Eq. 1) → the feature
regression loss against the teacher's current-frame features (Eq. 4, or L1, or the steady-feature
triplet loss of Table 3b) and/or the student's task heads on the propagated features, pooled on
the teacher's RoIs, distilled from the teacher's outputs (Eq. 5-9); ``joint`` weighs both (Table 3f).
``Student.forward(batch, objective)`` returns these losses, so a DDP wrapper of the student
synchronises their gradients.

Pairs with d = 0 (the key frame itself, drawn by the semantic step's offsets [0, ΔT - 1]) keep
the key features unwarped, as DFF's ``eq_flag`` does: the heads still learn from them, the flow
net gets no gradient from them.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Iterable, Literal

import torch
from torch import nn

from semidff.config import Config, ConfigError, FlowTrainingConfig, ModelConfig
from semidff.models.build import build_propagator
from semidff.models.rfcn import RFCN
from semidff.losses.regression import feature_regression_loss, steady_feature_loss
from semidff.losses.semantic import joint_loss, semantic_loss
from semidff.teacher_targets import PairBatch

StepKind = Literal["regression", "semantic", "joint"]
STEP_KINDS: tuple[str, ...] = ("regression", "semantic", "joint")
LOSS_TERMS = ("total", "regression", "semantic", "rpn_cls", "rpn_box", "rfcn_cls", "rfcn_box")


def epoch_plan(training: FlowTrainingConfig) -> list[StepKind]:
    """The step kind of every epoch, in order (all steps run as consecutive epochs of one run).

    two_step: regression_epochs of step A, then semantic_epochs of step B (paper default);
    regression / semantic: that step alone for its epochs; joint: regression_epochs +
    semantic_epochs epochs of the joint loss (the same budget as two_step, Table 3f).
    Raises ConfigError when the schedule would train for 0 epochs.
    """
    a, b = training.regression_epochs, training.semantic_epochs
    if training.schedule == "two_step":
        if a == 0 or b == 0:
            raise ConfigError(
                f"training.schedule=two_step needs regression_epochs and semantic_epochs > 0 (got {a} and {b}); "
                "for one step alone use training.schedule=regression or training.schedule=semantic"
            )
        return ["regression"] * a + ["semantic"] * b
    counts = {"regression": a, "semantic": b, "joint": a + b}
    epochs = counts[training.schedule]
    if epochs == 0:
        needed = {"regression": "regression_epochs=0", "semantic": "semantic_epochs=0"}.get(
            training.schedule, "regression_epochs + semantic_epochs = 0"
        )
        raise ConfigError(f"training.schedule={training.schedule} with training.{needed} has no epoch to train; give it at least 1")
    return [training.schedule] * epochs


def step_offsets(step: StepKind, key_interval: int) -> tuple[int, int]:
    """Inclusive range of d = current - key the step trains on, at key interval ΔT.

    Step A (regression): d in [1, ΔT - 1]; step B (semantic) and joint: d in [0, ΔT - 1], d = 0
    being the key frame itself (official Semi-DFF: key = cur + offset, offset in [-9, -1] and
    [-9, 0] at ΔT = 10, dff-facts §3.2). These are exactly the frames the detector propagates to.
    """
    if key_interval < 2:
        raise ConfigError(
            f"video.key_interval={key_interval}: every frame is a key frame, so there is nothing to propagate; "
            "flow training needs key_interval >= 2"
        )
    return (1 if step == "regression" else 0, key_interval - 1)


def build_optimizer(parameters: list[nn.Parameter], name: str, lr: float) -> torch.optim.Optimizer:
    """The optimiser of ``training.optimizer`` over ``parameters`` at learning rate ``lr``.

    rmsprop: as the official code's MXNet RMSProp (decay 0.9, eps 1e-8, no momentum, no weight
    decay; dff-facts §3.2); sgd: momentum 0.9; adam: torch defaults.
    """
    if not parameters:
        raise ValueError("build_optimizer: no trainable parameters")
    if name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr, alpha=0.9, eps=1e-8)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr)
    raise ValueError(f"optimizer={name!r}: must be rmsprop, sgd or adam")


@dataclass(frozen=True)
class FlowObjective:
    """What one training step optimises (plain values: it travels to Ray workers).

    step: "regression" (step A: Eq. 4 only), "semantic" (step B: Eq. 5 only) or "joint" (Table 3f).
    regression_kind: "l2" (Eq. 4), "l1", or "steady" (Table 3b triplets k, k+d, k+2d).
    temperature, box_weight: T of Eq. 7 and λ of Eq. 6.
    class_knowledge, attention_knowledge, box_knowledge: the Table 3c switches of Eq. 5's terms.
    regression_weight, semantic_weight: the joint weights (used only when step == "joint").
    own_key_features: the key features come from the student's own (training) extractor rather
        than the teacher's cached ones (finetune=flow_spatial, outside step A).
    """

    step: StepKind
    regression_kind: str = "l2"
    temperature: float = 1.0
    box_weight: float = 1.0
    class_knowledge: bool = True
    attention_knowledge: bool = True
    box_knowledge: bool = True
    regression_weight: float = 1.0
    semantic_weight: float = 1.0
    own_key_features: bool = False

    @classmethod
    def from_config(cls, cfg: Config, step: StepKind) -> "FlowObjective":
        """The objective of ``step`` under ``cfg.loss`` and ``cfg.training``."""
        if step not in STEP_KINDS:
            raise ValueError(f"step={step!r}: must be one of {STEP_KINDS}")
        semantic = cfg.loss.semantic
        return cls(
            step=step,
            regression_kind=cfg.loss.regression.kind,
            temperature=semantic.temperature,
            box_weight=semantic.box_weight,
            class_knowledge=semantic.class_knowledge,
            attention_knowledge=semantic.attention_knowledge,
            box_knowledge=semantic.box_knowledge,
            regression_weight=cfg.training.joint_weights.regression,
            semantic_weight=cfg.training.joint_weights.semantic,
            own_key_features=cfg.training.finetune == "flow_spatial" and step != "regression",
        )

    @property
    def uses_regression(self) -> bool:
        return self.step in ("regression", "joint")

    @property
    def uses_semantic(self) -> bool:
        return self.step in ("semantic", "joint")

    @property
    def leaves_head_parameters_unused(self) -> bool:
        """A switched-off Eq. 5 term leaves a head conv without gradient (DDP must be told)."""
        return self.uses_semantic and not (self.class_knowledge and self.attention_knowledge and self.box_knowledge)


@dataclass
class FlowLosses:
    """The loss terms of one step (scalars). Terms a step does not compute are exact zeros.

    total: what is minimised: regression (step A), semantic (step B), or the joint weighted sum.
    regression: Eq. 4 (L2), its L1 variant, or the steady-feature loss.
    semantic: Eq. 5 = rpn_cls + rpn_box + rfcn_cls + rfcn_box (box terms already × λ).
    num_pairs: pairs in the batch; steady_triplets: (k, k+d, k+2d) triplets found (kind "steady").
    """

    total: torch.Tensor
    regression: torch.Tensor
    semantic: torch.Tensor
    rpn_cls: torch.Tensor
    rpn_box: torch.Tensor
    rfcn_cls: torch.Tensor
    rfcn_box: torch.Tensor
    num_pairs: int
    steady_triplets: int = 0

    def as_floats(self) -> dict[str, float]:
        """{"total": ..., "regression": ..., ...} as Python floats."""
        return {name: float(getattr(self, name).detach()) for name in LOSS_TERMS}


# ---------------------------------------------------------------------------------------------
# The student: a temporal module and a copy of the teacher's R-FCN (paper §3.4)


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
        """The step's losses on one same-size batch (:func:`flow_losses`)."""
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


# ---------------------------------------------------------------------------------------------
# The losses of one batch (Student.forward)


def propagate_key_features(student: Student, batch: PairBatch, own_key_features: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(key features f_k, propagated features f̂_p), both (N, C, h, w).

    f_k: the teacher's cached key features, or the student's own extractor on the key frames.
    f̂_p = W(f_k, F(I_k, I_p)) * S(I_k, I_p) (Eq. 1), or f_k + residual for the Table 3a
    predictor; pairs with d = 0 keep f_k (DFF eq_flag).
    """
    key_features = student.rfcn.extract_features(batch.key_images) if own_key_features else batch.key_features
    propagated = student.propagator.propagate(key_features, batch.cur_images, batch.key_images)  # Eq. 1
    is_key_frame = (batch.offsets == 0).view(-1, 1, 1, 1)
    return key_features, torch.where(is_key_frame, key_features, propagated)


def flow_losses(student: Student, batch: PairBatch, objective: FlowObjective) -> FlowLosses:
    """The losses of one same-size batch of pairs (what ``Student.forward`` returns).

    batch: key/current images (N, 3, H, W), the teacher's key features (N, C, h, w) and its
    outputs on the current frames (features = Eq. 4 target; RoIs, logits, deltas = Eq. 5 targets).
    """
    key_features, propagated = propagate_key_features(student, batch, objective.own_key_features)  # Eq. 1
    zero = propagated.new_zeros(())
    regression, steady_triplets = zero, 0
    if objective.uses_regression:
        if objective.regression_kind == "steady":  # Table 3b: equal intervals k, k+d, k+2d
            mid, far = steady_triplets_of(batch)
            steady_triplets = len(mid)
            if steady_triplets:
                regression = steady_feature_loss(key_features[mid], propagated[mid], propagated[far])
            else:  # no triplet here: a zero that keeps the graph, so every DDP rank runs backward alike
                regression = propagated.sum() * 0.0
        else:
            target = batch.teacher.features  # f_p: the teacher's features of the current frame
            regression = feature_regression_loss(propagated, target, objective.regression_kind)  # Eq. 4
    sem = None
    if objective.uses_semantic:
        # The student's RPN and PS heads on f̂_p, pooled on the teacher's RoIs (row i ↔ row i).
        student_out = student.rfcn.forward_heads(propagated, batch.image_size, rois=batch.teacher.rois)
        sem = semantic_loss(  # Eq. 5-9: KD at temperature T on both classifiers, λ·L2 on both box outputs
            student_out,
            batch.teacher,
            temperature=objective.temperature,
            box_weight=objective.box_weight,
            class_knowledge=objective.class_knowledge,
            attention_knowledge=objective.attention_knowledge,
            box_knowledge=objective.box_knowledge,
        )
    if objective.step == "regression":
        total = regression
    elif objective.step == "semantic":
        total = sem.total
    else:  # Table 3f joint training
        total = joint_loss(regression, sem.total, objective.regression_weight, objective.semantic_weight)
    return FlowLosses(
        total=total,
        regression=regression,
        semantic=sem.total if sem else zero,
        rpn_cls=sem.rpn_cls if sem else zero,
        rpn_box=sem.rpn_box if sem else zero,
        rfcn_cls=sem.rfcn_cls if sem else zero,
        rfcn_box=sem.rfcn_box if sem else zero,
        num_pairs=int(batch.offsets.shape[0]),
        steady_triplets=steady_triplets,
    )


def steady_triplets_of(batch: PairBatch) -> tuple[list[int], list[int]]:
    """Rows (mid, far) forming steady-feature triplets k, k + d, k + 2d (d > 0) in one batch.

    Two pairs share their key frame when their key images are identical (pairs of one clip);
    a triplet needs one at offset d and one at 2d, so clips need ``clips.currents_per_key >= 2``.
    """
    offsets = batch.offsets.tolist()
    mid, far = [], []
    for i, d in enumerate(offsets):
        if d <= 0:
            continue
        for j, d_far in enumerate(offsets):
            if d_far == 2 * d and torch.equal(batch.key_images[i], batch.key_images[j]):
                mid.append(i)
                far.append(j)
                break
    return mid, far


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[PairBatch],
    objective: FlowObjective,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """One optimiser step over the same-size micro-batches of one batch; returns the loss terms.

    model: the Student, or its DistributedDataParallel wrapper (gradients of all micro-batches
        are accumulated locally and all-reduced once, on the last backward).
    Each micro-batch's loss is weighted by its share of the pairs, so the gradient is that of the
    pair-weighted mean. Returns {term: value} weighted the same way, plus "pairs".
    autocast_dtype: run the forward under autocast with this dtype on the batch's device (bf16
        on a GPU; None: full precision).
    """
    if not batches:
        raise ValueError("train_step: no micro-batches")
    total_pairs = sum(int(batch.offsets.shape[0]) for batch in batches)
    optimizer.zero_grad(set_to_none=True)
    sums = dict.fromkeys(LOSS_TERMS, 0.0)
    for index, batch in enumerate(batches):
        last = index == len(batches) - 1
        no_sync = model.no_sync() if (not last and hasattr(model, "no_sync")) else contextlib.nullcontext()
        device_type = batch.key_images.device.type
        autocast = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
        weight = batch.offsets.shape[0] / total_pairs
        with no_sync:
            with autocast:
                losses = model(batch, objective)
            (losses.total * weight).backward()
        for name, value in losses.as_floats().items():
            sums[name] += weight * value
    optimizer.step()
    return sums | {"pairs": float(total_pairs)}


@torch.no_grad()
def regression_error_terms(student: Student, batch: PairBatch) -> tuple[float, float]:
    """(Σ ||f̂_p - f_p||², Σ ||f_k - f_p||²) over the batch: the propagated error and the copy error.

    f_k: the key features the student's detector would warp (its own extractor's when it has one).
    """
    key_features, propagated = propagate_key_features(student, batch, own_key_features=student.owns_feature_extractor)
    target = batch.teacher.features.float()
    return float((propagated.float() - target).pow(2).sum()), float((key_features.float() - target).pow(2).sum())


def regression_error_vs_copy(student: Student, batches: Iterable[PairBatch]) -> float:
    """||f̂ - f_cur||² / ||f_key - f_cur||², each summed over all pairs of ``batches``.

    1.0: as good as reusing the key features (DFF's "copy"); below 1: propagation helps.
    """
    propagated_error = copy_error = 0.0
    for batch in batches:
        numerator, denominator = regression_error_terms(student, batch)
        propagated_error += numerator
        copy_error += denominator
    if copy_error <= 0.0:
        raise ValueError("regression_error_vs_copy: the key and current features are identical on every pair (only d = 0 pairs?)")
    return propagated_error / copy_error
