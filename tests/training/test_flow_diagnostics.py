"""Flow diagnostics on hand-made flows with known answers."""
import pytest
import torch

from semidff.training.flow_diagnostics import FlowErrorSums, flow_error_sums, flow_metrics, scale_metrics


def _scene():
    """2 images of 4x5 cells: an object (2x2 cells) moving by (1.5, -2) cells on a background moving by (0.5, 0)."""
    true_flow = torch.zeros(2, 2, 4, 5)
    true_flow[:, 0] = 0.5
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[:, 1:3, 2:4] = True
    true_flow[:, 0][mask] = 1.5
    true_flow[:, 1][mask] = -2.0
    return true_flow, mask


def test_zero_flow_has_the_mean_true_motion_as_endpoint_error_and_the_true_flow_none():
    true_flow, mask = _scene()
    zero = flow_metrics(flow_error_sums(torch.zeros_like(true_flow), true_flow, mask))
    assert zero["flow/epe_object"] == pytest.approx(2.5) and zero["flow/epe_background"] == pytest.approx(0.5)
    assert zero["flow/epe_zero_object"] == pytest.approx(2.5) and zero["flow/epe_zero_background"] == pytest.approx(0.5)
    assert zero["flow/cosine_object"] == 0.0  # no direction at all
    exact = flow_metrics(flow_error_sums(true_flow, true_flow, mask))
    assert exact["flow/epe_object"] == pytest.approx(0.0, abs=1e-6) and exact["flow/cosine_object"] == pytest.approx(1.0)
    assert exact["flow/cosine_background"] == pytest.approx(1.0)
    opposite = flow_metrics(flow_error_sums(-true_flow, true_flow, mask))
    assert opposite["flow/cosine_object"] == pytest.approx(-1.0) and opposite["flow/epe_object"] == pytest.approx(5.0)


def test_sums_add_over_batches_and_travel_as_a_list():
    true_flow, mask = _scene()
    half = torch.zeros_like(true_flow)
    half[0] = true_flow[0]  # image 0 exact, image 1 zero flow
    whole = flow_error_sums(half, true_flow, mask)
    parts = flow_error_sums(half[:1], true_flow[:1], mask[:1]).add(flow_error_sums(half[1:], true_flow[1:], mask[1:]))
    assert flow_metrics(parts) == pytest.approx(flow_metrics(whole))
    assert flow_metrics(whole)["flow/epe_object"] == pytest.approx(1.25)
    assert flow_metrics(FlowErrorSums.from_list(whole.as_list())) == flow_metrics(whole)


def test_scale_statistics_count_the_sign_flips():
    scale = torch.tensor([-1.0, 0.5, 1.0, 2.0]).view(1, 4, 1, 1)
    assert scale_metrics(scale) == {"scale/min": -1.0, "scale/max": 2.0, "scale/mean": 0.625, "scale/share_negative": 0.25}


def test_shapes_are_checked():
    true_flow, mask = _scene()
    with pytest.raises(ValueError, match="object_mask"):
        flow_error_sums(true_flow, true_flow, mask[:, :3])
    with pytest.raises(ValueError, match=r"\(N, 2, h, w\)"):
        flow_error_sums(true_flow[:, :1], true_flow[:, :1], mask)
