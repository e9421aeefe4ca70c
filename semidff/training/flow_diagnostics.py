"""Has the feature flow learned motion? The predicted flow against the true motion, and the scale field.

    flow, scale = propagator(cur_images, key_images).flow, ...scale      # FlowNetS output
    sums = flow_error_sums(flow, true_flow, object_mask)                 # add over batches
    metrics = flow_metrics(sums) | scale_metrics(scale)
    metrics["flow/epe_object"], metrics["flow/cosine_object"], metrics["flow/epe_zero_object"]

Both flows are backward displacements on the current frame's feature grid, in feature cells
(stride 16), channel 0 = x, as ``semidff.ops.warp.warp_features`` reads them: the content at cell
(x, y) of the current frame sits at (x + u, y + v) in the key frame. The true motion comes from a
generator that knows it (synthetic video); ``object_mask`` marks the cells covered by an object
in the current frame, the rest is background. Reported per region: the mean endpoint error
(``epe``, cells), the same for zero flow (``epe_zero``: what copying the key features assumes,
so a flow that learned nothing has epe = epe_zero), and the mean cosine between predicted and true
vectors over cells whose true motion is at least ``min_motion`` cells (direction is undefined
for a still cell). Nobody else measures this; ``val/regression_error_vs_copy`` can fall while the
flow learns nothing (the scale field alone can shrink the error).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

REGIONS = ("object", "background")


@dataclass
class FlowErrorSums:
    """Running sums over cells, per region ("object", "background"): what :func:`flow_metrics` divides."""

    cells: dict[str, float] = field(default_factory=lambda: dict.fromkeys(REGIONS, 0.0))
    endpoint_error: dict[str, float] = field(default_factory=lambda: dict.fromkeys(REGIONS, 0.0))
    true_motion: dict[str, float] = field(default_factory=lambda: dict.fromkeys(REGIONS, 0.0))
    moving_cells: dict[str, float] = field(default_factory=lambda: dict.fromkeys(REGIONS, 0.0))
    cosine: dict[str, float] = field(default_factory=lambda: dict.fromkeys(REGIONS, 0.0))

    def add(self, other: "FlowErrorSums") -> "FlowErrorSums":
        for name in _FIELDS:
            mine, theirs = getattr(self, name), getattr(other, name)
            for region in REGIONS:
                mine[region] += theirs[region]
        return self

    def as_list(self) -> list[float]:
        """The sums in a fixed order (for a sum over workers), inverse of :meth:`from_list`."""
        return [getattr(self, name)[region] for name in _FIELDS for region in REGIONS]

    @classmethod
    def from_list(cls, values: list[float]) -> "FlowErrorSums":
        sums, values = cls(), list(values)
        for name in _FIELDS:
            for region in REGIONS:
                getattr(sums, name)[region] = float(values.pop(0))
        return sums


_FIELDS = ("cells", "endpoint_error", "true_motion", "moving_cells", "cosine")


@torch.no_grad()
def flow_error_sums(flow: torch.Tensor, true_flow: torch.Tensor, object_mask: torch.Tensor, min_motion: float = 0.1) -> FlowErrorSums:
    """Sums of endpoint error, true motion (= zero flow's endpoint error) and cosine over a batch, per region.

    flow, true_flow: (N, 2, h, w) backward flow in feature cells; object_mask: (N, h, w) bool,
    True on cells an object covers in the current frame. min_motion: cells whose true motion is
    shorter than this (cells) are left out of the cosine.
    """
    if flow.shape != true_flow.shape or flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow {tuple(flow.shape)} and true_flow {tuple(true_flow.shape)} must both be (N, 2, h, w)")
    if object_mask.shape != (flow.shape[0], *flow.shape[2:]):
        raise ValueError(f"object_mask {tuple(object_mask.shape)} must be (N, h, w) = {(flow.shape[0], *flow.shape[2:])}")
    flow, true_flow = flow.float(), true_flow.float()
    error = (flow - true_flow).norm(dim=1)  # (N, h, w)
    motion = true_flow.norm(dim=1)
    moving = motion >= min_motion
    cosine = (flow * true_flow).sum(dim=1) / (flow.norm(dim=1) * motion).clamp_min(1e-12)
    sums = FlowErrorSums()
    for region, mask in (("object", object_mask.bool()), ("background", ~object_mask.bool())):
        sums.cells[region] = float(mask.sum())
        sums.endpoint_error[region] = float(error[mask].sum())
        sums.true_motion[region] = float(motion[mask].sum())
        sums.moving_cells[region] = float((mask & moving).sum())
        sums.cosine[region] = float(cosine[mask & moving].sum())
    return sums


def flow_metrics(sums: FlowErrorSums, prefix: str = "flow/") -> dict[str, float]:
    """``<prefix>epe_<region>`` and ``epe_zero_<region>`` (mean cells; the latter is the mean true
    motion, zero flow's error) and ``cosine_<region>`` (mean over moving cells), per region with cells."""
    metrics = {}
    for region in REGIONS:
        cells = sums.cells[region]
        if cells > 0:
            metrics[f"{prefix}epe_{region}"] = sums.endpoint_error[region] / cells
            metrics[f"{prefix}epe_zero_{region}"] = sums.true_motion[region] / cells  # zero flow's error is the motion itself
        if sums.moving_cells[region] > 0:
            metrics[f"{prefix}cosine_{region}"] = sums.cosine[region] / sums.moving_cells[region]
    return metrics


@torch.no_grad()
def scale_metrics(scale: torch.Tensor, prefix: str = "scale/") -> dict[str, float]:
    """Statistics of a scale field (N, C, h, w) (Eq. 1's S): min, max, mean and the share of values
    below 0 (a negative scale flips the sign of a feature, which no motion explains)."""
    values = scale.detach().float()
    return {
        f"{prefix}min": float(values.min()),
        f"{prefix}max": float(values.max()),
        f"{prefix}mean": float(values.mean()),
        f"{prefix}share_negative": float((values < 0).float().mean()),
    }
