"""Knowledge-distillation loss (semidff/losses/kd.py): values and gradients against closed forms."""
from __future__ import annotations

import math

import pytest
import torch

from semidff.losses.kd import kd_loss


def _logits(*shape, seed=0, scale=3.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def test_equal_logits_give_zero_loss_and_zero_gradient():
    student = _logits(300, 31).requires_grad_()
    loss = kd_loss(student, student.detach().clone(), temperature=2.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert student.grad.abs().max().item() < 1e-12


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_loss_is_non_negative(temperature):
    for seed in range(5):
        assert kd_loss(_logits(50, 7, seed=seed), _logits(50, 7, seed=seed + 100), temperature).item() >= 0.0


def test_t1_equals_mean_kl_per_distribution_by_hand():
    student = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    teacher = torch.tensor([[0.0, 3.0, -1.0], [2.0, 0.0, 1.0]], dtype=torch.float64)
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        z_s = sum(math.exp(v) for v in s_row)
        z_t = sum(math.exp(v) for v in t_row)
        p_s = [math.exp(v) / z_s for v in s_row]
        p_t = [math.exp(v) / z_t for v in t_row]
        expected += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    expected /= 2  # two distributions
    assert kd_loss(student, teacher, temperature=1.0).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 10.0])
def test_gradient_matches_official_closed_form(temperature):
    # knowledge_distillation.py backward: T · (p_s − p_t) / count (dff-facts §3.2).
    student = _logits(40, 31, seed=1).requires_grad_()
    teacher = _logits(40, 31, seed=2).requires_grad_()
    kd_loss(student, teacher, temperature).backward()
    p_s = torch.softmax(student.detach() / temperature, dim=1)
    p_t = torch.softmax(teacher.detach() / temperature, dim=1)
    expected = temperature * (p_s - p_t) / 40
    torch.testing.assert_close(student.grad, expected, rtol=1e-10, atol=1e-12)
    assert teacher.grad is None  # teacher is detached


def test_count_is_number_of_distributions_along_dim():
    # (N, 2, A, h, w) RPN layout with dim=1: count = N·A·h·w, not numel.
    student, teacher = _logits(2, 2, 3, 4, 5, seed=3), _logits(2, 2, 3, 4, 5, seed=4)
    log_p_s = torch.log_softmax(student, dim=1)
    p_t = torch.softmax(teacher, dim=1)
    expected = (p_t * (p_t.log() - log_p_s)).sum() / (2 * 3 * 4 * 5)
    torch.testing.assert_close(kd_loss(student, teacher, dim=1), expected)
    # The same distributions laid out last give the same value.
    torch.testing.assert_close(kd_loss(student.movedim(1, -1), teacher.movedim(1, -1), dim=-1), expected)


def test_temperature_squared_scaling():
    student, teacher = _logits(30, 5, seed=5), _logits(30, 5, seed=6)
    temperature = 3.0
    p_s = torch.softmax(student / temperature, dim=1)
    p_t = torch.softmax(teacher / temperature, dim=1)
    kl_mean = (p_t * (p_t.log() - p_s.log())).sum() / 30
    torch.testing.assert_close(kd_loss(student, teacher, temperature), temperature**2 * kl_mean)


def test_gradient_magnitude_comparable_across_temperatures():
    # With T² the gradient tends to (z_s − z_t)/(C·count) as T grows instead of vanishing like 1/T².
    student = (_logits(20, 6, seed=7, scale=0.5)).requires_grad_()
    teacher = _logits(20, 6, seed=8, scale=0.5)
    norms = []
    for temperature in (10.0, 100.0):
        student.grad = None
        kd_loss(student, teacher, temperature).backward()
        norms.append(student.grad.norm().item())
    assert norms[1] == pytest.approx(norms[0], rel=0.05)


def test_empty_input_gives_zero_and_bad_input_raises():
    assert kd_loss(torch.zeros(0, 31), torch.zeros(0, 31)).item() == 0.0
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(torch.zeros(3, 31), torch.zeros(4, 31))
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(torch.zeros(3, 31), torch.zeros(3, 31), temperature=0.0)
