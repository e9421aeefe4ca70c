"""Feature-regression losses (semidff/losses/regression.py): Eq. 4 and the steady-feature ablation."""
from __future__ import annotations

import pytest
import torch

from semidff.losses.regression import feature_regression_loss, steady_feature_loss


def _features(seed, shape=(2, 8, 5, 6)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_identical_features_give_zero(kind):
    features = _features(0)
    assert feature_regression_loss(features.clone(), features, kind).item() == 0.0


def test_hand_computed_l2_and_l1_values():
    predicted = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 0.0], [4.0, 7.0]]]])
    # differences 0, 2, −1, −3 → squares 0, 4, 1, 9 → mean 3.5; abs 0, 2, 1, 3 → mean 1.5
    assert feature_regression_loss(predicted, target).item() == pytest.approx(3.5)
    assert feature_regression_loss(predicted, target, kind="l1").item() == pytest.approx(1.5)


def test_mean_is_over_all_elements_including_batch_and_channels():
    predicted = torch.zeros(2, 3, 4, 5)
    target = torch.zeros(2, 3, 4, 5)
    target[1, 2, 3, 4] = 6.0
    assert feature_regression_loss(predicted, target).item() == pytest.approx(36.0 / 120)


def test_gradient_reaches_prediction_only():
    predicted = _features(1).requires_grad_()
    target = _features(2).requires_grad_()
    feature_regression_loss(predicted, target).backward()
    torch.testing.assert_close(predicted.grad, 2 * (predicted - target).detach() / predicted.numel())
    assert target.grad is None


def test_unknown_kind_and_shape_mismatch_raise():
    with pytest.raises(ValueError, match=r"'l2', 'l1'.*'huber'"):
        feature_regression_loss(_features(0), _features(1), kind="huber")
    with pytest.raises(ValueError, match="same shape"):
        feature_regression_loss(_features(0), _features(1, shape=(2, 8, 5, 5)))


def test_steady_loss_zero_for_features_linear_in_time():
    key, velocity = _features(3), _features(4)
    mid, far = key + velocity, key + 2 * velocity
    assert steady_feature_loss(key, mid, far).item() == pytest.approx(0.0, abs=1e-10)


def test_steady_loss_hand_computed_value():
    key = torch.tensor([0.0, 0.0])
    mid = torch.tensor([1.0, 1.0])
    far = torch.tensor([4.0, 2.0])
    # second differences (4 − 1) − (1 − 0) = 2 and (2 − 1) − (1 − 0) = 0 → mean of squares 2
    assert steady_feature_loss(key, mid, far).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="same shape"):
        steady_feature_loss(key, mid, torch.zeros(3))
