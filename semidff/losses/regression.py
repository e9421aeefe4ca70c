"""Feature-regression losses for the temporal module (Eq. 4 and the Table 3b ablations).

Step A of stage 2 regresses the flow-propagated feature onto the teacher's feature of the
current frame: the mean over all N·C·h·w elements of the squared difference (the official code's
normalisation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

REGRESSION_KINDS = ("l2", "l1")
"""Allowed ``kind`` values of :func:`feature_regression_loss` (Table 3b: L2 works best)."""


def feature_regression_loss(predicted: torch.Tensor, target: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Eq. 4: mean over all elements of (target − predicted)² ("l2") or |target − predicted| ("l1").

    predicted: (N, C, h, w) propagated features, scale · warp(key features) (Eq. 1).
    target: (N, C, h, w) teacher features of the current frame; detached.
    Returns a scalar in squared (or absolute) feature units.
    """
    if kind not in REGRESSION_KINDS:
        raise ValueError(f"feature_regression_loss: kind must be one of {REGRESSION_KINDS}, got {kind!r}")
    if predicted.shape != target.shape:
        raise ValueError(
            f"feature_regression_loss: predicted {tuple(predicted.shape)} and target {tuple(target.shape)} "
            "must have the same shape"
        )
    if kind == "l2":
        return F.mse_loss(predicted, target.detach())  # Eq. 4
    return F.l1_loss(predicted, target.detach())


def steady_feature_loss(
    key_features: torch.Tensor, predicted_mid: torch.Tensor, predicted_far: torch.Tensor
) -> torch.Tensor:
    """Steady-feature regulariser (Jayaraman & Grauman; paper Table 3b) on a triplet k, k+d, k+2d.

    Features should change the same way over both equal intervals, so the second temporal
    difference is pushed to 0: mean of ((far − mid) − (mid − key))² over all elements.
    All three are (N, C, h, w); gradients reach every input that requires them.
    """
    if not key_features.shape == predicted_mid.shape == predicted_far.shape:
        raise ValueError(
            "steady_feature_loss: key, mid and far features must have the same shape, got "
            f"{tuple(key_features.shape)}, {tuple(predicted_mid.shape)}, {tuple(predicted_far.shape)}"
        )
    second_difference = predicted_far - 2.0 * predicted_mid + key_features
    return second_difference.pow(2).mean()
